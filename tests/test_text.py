"""Prompts (exact published text) and answer parsing."""
import random
import re

import pytest

from answers import answer_tag_content, parse_answer, parse_prompt_box, think_format_ok
from prompts import build_messages

SEED_TEXT = ("Please identify the target specified by the bounding box [241,66,329,154] in the first image "
             "and locate it in the second image. \n Return the coordinates in [x_min,y_min,x_max,y_max] format.")
THINK_TEXT = ("You FIRST think about the reasoning process as an internal monologue and then provide the final "
              "answer. \n The reasoning process MUST BE enclosed within <think> </think> tags. The final answer "
              "MUST BE put in <answer> </answer> tags. \n " + SEED_TEXT)
TEXT_100K = ("Given two images, you need to:\n1. Analyze and Identify the target object marked by bounding box "
             "[241,66,329,154] in <image_1>;\n2. Re-locate this target in <image_2>;\n3. Return [x_min, y_min, "
             "x_max, y_max] coordinates of the target in <image_2>.")


# The question the published inference client sent (infer_script/r1track.py): the seed wording
# with single spaces, the think instruction stripped and joined with one space, no system message.
CLIENT_TEXT = SEED_TEXT.replace(" \n ", " ")
CLIENT_THINK_TEXT = ("You FIRST think about the reasoning process as an internal monologue and then provide the "
                     "final answer. \n The reasoning process MUST BE enclosed within <think> </think> tags. The final "
                     "answer MUST BE put in <answer> </answer> tags. " + CLIENT_TEXT)


def test_seed_messages_are_the_readme_ones():
    """A user turn alone: the base's chat template adds its own system message (Qwen2.5-VL's
    is the README's "You are a helpful assistant."; test_model renders it)."""
    assert build_messages([241, 66, 329, 154], images=("T", "S")) == [
        {"role": "user", "content": [{"type": "image", "image": "T"}, {"type": "image", "image": "S"},
                                     {"type": "text", "text": SEED_TEXT}]},
    ]
    assert build_messages([241, 66, 329, 154], think=True)[0]["content"][2]["text"] == THINK_TEXT


def test_a_relative_box_is_written_in_thousandths_of_the_crop():
    """Qwen3-VL's convention: the template box in 0-1000 of the crop's side, rounded; the same
    box in pixels is written as it is (truncated, as the published pairs)."""
    text = build_messages([35.2, 0, 176, 351.9], boxes="relative", crop_side=352)[0]["content"][2]["text"]
    assert "[100,0,500,1000]" in text
    assert "[35,0,176,351]" in build_messages([35.2, 0, 176, 351.9])[0]["content"][2]["text"]


def test_the_published_client_asked_with_single_spaces_and_no_system_message():
    assert build_messages([241, 66, 329, 154], images=("T", "S"), as_published_client=True) == [
        {"role": "user", "content": [{"type": "image", "image": "T"}, {"type": "image", "image": "S"},
                                     {"type": "text", "text": CLIENT_TEXT}]},
    ]
    assert build_messages([241, 66, 329, 154], think=True, as_published_client=True)[0]["content"][2]["text"] \
        == CLIENT_THINK_TEXT


@pytest.mark.parametrize("client", [False, True])
def test_100k_wording_has_a_space_between_the_images(client):
    content = build_messages([241, 66, 329, 154], wording="r1track-100k", images=("T", "S"),
                             as_published_client=client)[-1]["content"]
    assert content == [{"type": "image", "image": "T"}, {"type": "text", "text": " "},
                       {"type": "image", "image": "S"}, {"type": "text", "text": TEXT_100K}]


def test_box_is_written_as_integers():
    text = build_messages([241.9, 66.2, 329.5, 154.0])[-1]["content"][2]["text"]
    assert "[241,66,329,154]" in text


def test_unknown_wording_is_refused():
    with pytest.raises(ValueError, match="wording"):
        build_messages([1, 2, 3, 4], wording="other")


@pytest.mark.parametrize("text", [SEED_TEXT, THINK_TEXT, TEXT_100K, CLIENT_TEXT, CLIENT_THINK_TEXT])
def test_template_box_is_read_back_from_either_wording(text):
    assert parse_prompt_box(text) == [241, 66, 329, 154]
    assert parse_prompt_box(text.replace("<image>", "")) == [241, 66, 329, 154]


def test_prompt_without_box():
    assert parse_prompt_box("Where is the cat?") is None


@pytest.mark.parametrize("text, box", [
    ("[1,2,3,4]", [1, 2, 3, 4]),
    ("[ 10 , 20,30 ,  40 ]", [10, 20, 30, 40]),
    ("[1.5,2.25,3,4.0]", [1.5, 2.25, 3, 4]),
    ("[-5,-2,30,40]", [-5, -2, 30, 40]),
    ("The target is at [12,34,56,78] in the second image.", [12, 34, 56, 78]),
    ("first [1,2,3,4] then [5,6,7,8]", [1, 2, 3, 4]),
    ("[1,2,3] and [9,8,7,6]", [9, 8, 7, 6]),
    ('```json\n[100, 200, 150, 260]\n```', [100, 200, 150, 260]),
])
def test_lenient_parse_finds_the_first_list_of_four_numbers(text, box):
    assert parse_answer(text) == box


@pytest.mark.parametrize("text", ["", "1,2,3,4", "(1,2,3,4)", "[1,2,3]", "[1,2,3,4,5]", "[a,b,c,d]",
                                  "[1,2,3,4", "no box here"])
def test_lenient_parse_gives_none_without_a_list_of_four(text):
    assert parse_answer(text) is None


@pytest.mark.parametrize("text, box", [
    ("[1,2,3,4]", [1, 2, 3, 4]),
    (" [1, 2.5, 3, 4]\n", [1, 2.5, 3, 4]),
])
def test_strict_parse_takes_a_whole_json_list(text, box):
    assert parse_answer(text, strict=True) == box


@pytest.mark.parametrize("text", ["box: [1,2,3,4]", "[1,2,3,4] done", '[1,2,3,"4"]', "[1,2,3]",
                                  "[1,2,3,4,5]", "[true,2,3,4]", "[NaN,2,3,4]", "{}", "[[1,2,3,4]]"])
def test_strict_parse_refuses_anything_else(text):
    assert parse_answer(text, strict=True) is None


GOOD_THINK = "<think> It moved left. </think>\n<answer>[1,2,3,4]</answer>"


@pytest.mark.parametrize("text, box", [
    (GOOD_THINK, [1, 2, 3, 4]),
    ("  <think>a</think><answer> [5, 6, 7, 8] </answer>\n", [5, 6, 7, 8]),       # lenient: whitespace forgiven
    ("<think>x</think> so <answer>[1,2,3,4]</answer>", [1, 2, 3, 4]),            # text between, as published
    ("<think>x</think><answer>[9,9,9,9]</answer><answer>[1,2,3,4]</answer>", [1, 2, 3, 4]),  # the last answer
])
def test_think_parse_reads_the_answer_tag(text, box):
    assert parse_answer(text, think=True) == box


@pytest.mark.parametrize("text", [
    "[1,2,3,4]",                                                         # no tags
    "<think>x</think>[1,2,3,4]",                                          # no answer tag
    "<answer>[1,2,3,4]</answer>",                                         # no think tag
    "<think>[1,2,3,4]</think><answer>none</answer>",                      # box only in the thinking
    "<answer>[1,2,3,4]</answer><think>x</think>",                         # wrong order
    "<think>x</think><answer>[1,2,3,4]",                                  # unclosed
])
def test_think_parse_refuses_malformed_responses(text):
    assert parse_answer(text, think=True) is None


def test_strict_think_parse_needs_json_inside_the_answer():
    assert parse_answer("<think>x</think><answer>[1,2,3,4]</answer>", think=True, strict=True) == [1, 2, 3, 4]
    assert parse_answer("<think>x</think><answer>box [1,2,3,4]</answer>", think=True, strict=True) is None
    # strict is the published loop: the response must start and end with its tags
    assert parse_answer(" <think>x</think><answer>[1,2,3,4]</answer>", think=True, strict=True) is None


# The published patterns (infer_script/r1track.py and EasyR1/verl/utils/reward_score/track.py),
# the specification our tag handling must agree with on every response.
PUBLISHED_EXTRACT = re.compile(r"^<think>.*</think>.*<answer>(.*?)</answer>$", re.DOTALL)
PUBLISHED_FORMAT = re.compile(r"^<think>(?:(?!<think>|</think>).)*</think>(?:(?!<think>|</think>|<answer>|</answer>)"
                              r".)*<answer>(?:(?!<answer>|</answer>).)*</answer>$", re.DOTALL)
PIECES = ["<think>", "</think>", "<answer>", "</answer>", "x", " ", "\n", "[1,2,3,4]", "<think", "answer>"]


def random_responses(count=20000, seed=0):
    """Free strings of tag pieces, and the four parts of a think response each filled with
    random pieces (so that well-formed, nearly well-formed and broken ones all come up)."""
    rng = random.Random(seed)

    def filler():
        return "".join(rng.choice(PIECES) for _ in range(rng.choice([0, 0, 1, 1, 2, 3])))

    for _ in range(count):
        if rng.random() < 0.3:
            yield "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 9)))
        else:
            yield (f"{filler() if rng.random() < 0.1 else ''}<think>{filler()}</think>{filler()}<answer>{filler()}"
                   f"</answer>{filler() if rng.random() < 0.1 else ''}")


def test_answer_extraction_agrees_with_the_published_pattern():
    checked = 0
    for text in random_responses():
        match = PUBLISHED_EXTRACT.fullmatch(text)
        assert answer_tag_content(text) == (match.group(1) if match else None), repr(text)
        checked += match is not None
    assert checked > 5000  # the generator reaches well-formed responses, not only rejections


def test_think_format_check_agrees_with_the_published_reward():
    accepted = 0
    for text in random_responses():
        assert think_format_ok(text) == bool(PUBLISHED_FORMAT.fullmatch(text)), repr(text)
        accepted += think_format_ok(text)
    assert accepted > 2000
