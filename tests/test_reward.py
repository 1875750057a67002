"""The published R1-Track reward, values worked out by hand.

Ground truth [0,0,10,10]; a prediction [0,0,10,a] inside it has IoU = GIoU = a/10, which
makes each band of the shaping easy to reach: (0,0.4) -> 0, (0.75,0.95) -> +0.2, >=0.95 -> +0.5.
"""
import pytest

from answers import reward

GT = [0, 0, 10, 10]


def think(answer, thought="the target moved"):
    return f"<think>{thought}</think><answer>{answer}</answer>"


@pytest.mark.parametrize("answer, overall", [
    ("[0,0,10,2]", 0.0),          # g = 0.2: no credit
    ("[0,0,10,4]", 0.4),          # g = 0.4: the band is open, kept
    ("[0,0,10,5]", 0.5),
    ("[0,0,10,7.5]", 0.75),       # g = 0.75: kept
    ("[0,0,10,8]", 1.0),          # g = 0.8: +0.2
    ("[0,0,10,9.6]", 1.46),       # g = 0.96: +0.5
    ("[0,0,10,10]", 1.5),         # g = 1
    ("[20,0,30,10]", -1 / 3),     # disjoint: g = -(300-200)/300, negative is kept
])
def test_no_think_shaped_giou(answer, overall):
    assert reward(answer, GT)["overall"] == pytest.approx(overall)


@pytest.mark.parametrize("answer", ["", "box [0,0,10,10]", "[0,0,10,10] ok", "[0,0,10,10"])
def test_not_json_scores_minus_one(answer):
    assert reward(answer, GT) == {"overall": -1.0, "format": 0.0, "iou": 0.0, "giou": -1.0}


@pytest.mark.parametrize("answer", ["[0,0,10]", "[0,0,10,10,1]", '["0",0,10,10]', "[10,0,0,10]",
                                    "[0,10,10,0]", "[5,5,5,9]", "{}", "42"])
def test_json_that_is_not_a_valid_box_scores_minus_one(answer):
    assert reward(answer, GT)["overall"] == -1.0


def test_reports_iou_and_giou():
    result = reward("[0,0,10,5]", GT)
    assert result["iou"] == pytest.approx(0.5) and result["giou"] == pytest.approx(0.5)
    assert result["format"] == 1.0


def test_think_adds_format_term():
    assert reward(think("[0,0,10,5]"), GT, think=True, response_len=200)["overall"] == pytest.approx(0.55)
    assert reward(think("[0,0,10,10]"), GT, think=True, response_len=448)["overall"] == pytest.approx(1.55)


def test_think_length_penalty_past_448_tokens():
    # L = 512: length = (448 - 512) / 64 = -1; overall = 0.5 + 0.05 - 0.1
    assert reward(think("[0,0,10,5]"), GT, think=True, response_len=512)["overall"] == pytest.approx(0.45)


def test_think_response_under_128_tokens_scores_minus_one():
    assert reward(think("[0,0,10,10]"), GT, think=True, response_len=127)["overall"] == -1.0
    assert reward(think("[0,0,10,10]"), GT, think=True, response_len=128)["overall"] == pytest.approx(1.55)


@pytest.mark.parametrize("text", ["[0,0,10,10]", "<think>x</think>[0,0,10,10]",
                                  "<think>a</think><think>b</think><answer>[0,0,10,10]</answer>",
                                  "<think>a</think> <answer> </answer> <answer>[0,0,10,10]</answer>",
                                  " <think>a</think><answer>[0,0,10,10]</answer>",      # the published check
                                  "<think>a</think><answer>[0,0,10,10]</answer>\n"])    # is anchored at both ends
def test_think_malformed_scores_minus_one(text):
    assert reward(text, GT, think=True, response_len=200)["overall"] == -1.0


def test_think_text_between_the_tags_is_accepted_as_the_published_check_does():
    text = "<think>the target moved</think>\nSo:\n<answer>[0,0,10,10]</answer>"
    assert reward(text, GT, think=True, response_len=200)["overall"] == pytest.approx(1.55)


def test_think_answer_not_json_scores_minus_one():
    assert reward(think("around [0,0,10,10]"), GT, think=True, response_len=200)["overall"] == -1.0


def test_think_invalid_box_keeps_format_and_length_terms():
    # g = -1 for a JSON list that is not a box; + 0.05 format + 0.1 * (448 - 512) / 64
    assert reward(think("[10,0,0,10]"), GT, think=True, response_len=200)["overall"] == pytest.approx(-0.95)
    assert reward(think("[10,0,0,10]"), GT, think=True, response_len=512)["overall"] == pytest.approx(-1.05)


def test_iou_kind_is_plain_iou_plus_format():
    assert reward("[0,0,10,5]", GT, kind="iou")["overall"] == pytest.approx(1.5)
    assert reward("the box is [0,0,10,5]", GT, kind="iou")["overall"] == pytest.approx(0.5)
    assert reward("nothing", GT, kind="iou")["overall"] == 0.0
    assert reward(think("[0,0,10,10]"), GT, think=True, kind="iou")["overall"] == pytest.approx(2.0)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        reward("[0,0,10,10]", GT, kind="other")
