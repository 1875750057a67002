"""Boxes read out of text: a model's answers (lenient or strict as the published loop; in
crop pixels whatever its base's box convention), the published R1-Track reward, the
confidence of an answer from its tokens' probabilities, and the template box written in a
stored question."""

from __future__ import annotations

import json
import math
import re
from typing import NamedTuple

from bases import box_from_model
from boxes import giou_xyxy, iou_xyxy


class Answer(NamedTuple):
    """An answerer's answer to one request: its text, and how sure the model was of the box in
    it (answer_confidence; None where the answerer cannot say, as a server or a function)."""

    text: str
    confidence: float | None = None


_NUMBER = r"-?\d+(?:\.\d+)?"


_PROMPT_BOX = re.compile(r"bounding box\s*\[\s*(" + r"\s*,\s*".join([_NUMBER] * 4) + r")\s*\]")


def parse_prompt_box(problem_text: str):
    """The template box written in a question of either published wording, or None."""
    boxes = parse_prompt_boxes(problem_text)
    return boxes[0] if boxes else None


def parse_prompt_boxes(problem_text: str) -> list:
    """Every box a question names ("bounding box [...]"), in order: the template's, then a
    memory frame's (prompts.MEMORY_QUESTIONS)."""
    return [[float(v) for v in match.group(1).split(",")] for match in _PROMPT_BOX.finditer(problem_text)]


_LIST_OF_FOUR = re.compile(r"\[\s*(" + r"\s*,\s*".join([_NUMBER] * 4) + r")\s*\]")


_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def answer_tag_content(text: str):
    """What the published scripts read out of a think response: the text between the last
    `<answer>` and the closing `</answer>`, in a response that starts with `<think>`, has a
    `</think>` before that `<answer>` and ends with `</answer>` (anything else may stand
    between). None when the response is not of that shape."""
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return None
    body = text[len("<think>"):-len("</answer>")]
    answer_start = body.rfind("<answer>")
    think_end = body.find("</think>")
    if answer_start < 0 or think_end < 0 or think_end + len("</think>") > answer_start:
        return None
    return body[answer_start + len("<answer>"):]


def think_format_ok(text: str) -> bool:
    """The published reward's format check: `<think>…</think>…<answer>…</answer>` and nothing
    around it; no think tag inside the thinking, no tag at all between the two parts, no
    answer tag inside the answer (text without tags may stand between them)."""
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return False
    thinking, closed, rest = text[len("<think>"):-len("</answer>")].partition("</think>")
    if not closed or "<think>" in thinking:
        return False
    between, opened, answer = rest.partition("<answer>")
    return bool(opened) and not any(tag in between for tag in _TAGS) \
        and "<answer>" not in answer and "</answer>" not in answer


def _json_box(text: str):
    """`text` as a JSON list of four numbers, else None."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list) or len(value) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    if not all(math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value]


def parse_answer(text: str, think=False, strict=False):
    """The box in a model's answer, or None.

    Lenient: the first `[a, b, c, d]` of numbers anywhere in the text.
    Strict (the published loop, rewards): the whole answer must be a JSON list of four numbers.
    think=True: only from the <answer> of a think response, read as the published scripts
    read it (answer_tag_content); lenient parsing forgives whitespace around the response.
    """
    if think:
        text = answer_tag_content(text if strict else text.strip())
        if text is None:
            return None
    if strict:
        return _json_box(text)
    match = _LIST_OF_FOUR.search(text)
    return [float(v) for v in match.group(1).split(",")] if match else None


def answer_box(text: str, crop_side: float, boxes="pixels", think=False, strict=False):
    """The box of a model's answer (parse_answer) in pixels of the search crop of side
    `crop_side`, read in the `boxes` convention the model writes (bases.box_from_model), or None."""
    box = parse_answer(text, think=think, strict=strict)
    return None if box is None else box_from_model(box, crop_side, boxes)


def _shaped_giou(g: float) -> float:
    # The published shaping: no credit for a poor overlap, a bonus for a tight one.
    if 0.0 < g < 0.4:
        return 0.0
    if 0.75 < g < 0.95:
        return g + 0.2
    if g >= 0.95:
        return g + 0.5
    return g


def reward(text: str, gt_xyxy, think=False, response_len=None, kind="r1track", boxes="pixels",
           crop_side=None) -> dict:
    """Score one response against the ground-truth box (search-crop pixels); the response's
    box is read in the `boxes` convention of the model (relative: thousandths of the crop's
    side `crop_side`) and scored in pixels.

    kind="r1track": the published reward. The answer (or the <answer> content) must be a
    JSON list, else -1. A list that is not four numbers with x2 > x1 and y2 > y1 has
    g = -1, otherwise g = GIoU, shaped. Think mode: a malformed tag structure, or fewer
    than 128 response tokens, scores -1; otherwise overall = shaped g + 0.05 * format
    + 0.1 * length, with length = (448 - L) / 64 when L > 448, else 0. `response_len` is
    the response's token count; without it the think-mode length rules are skipped.
    kind="iou": plain IoU of the leniently parsed box plus 1 for a strictly valid answer.

    Returns {"overall", "format", "iou", "giou"}; iou and giou are 0 and -1 when there
    is no usable box.
    """
    if kind == "iou":
        box = answer_box(text, crop_side, boxes, think=think)
        ok = parse_answer(text, think=think, strict=True) is not None
        iou = iou_xyxy(box, gt_xyxy) if box else 0.0
        return {"overall": iou + float(ok), "format": float(ok), "iou": iou,
                "giou": giou_xyxy(box, gt_xyxy) if box else -1.0}
    if kind != "r1track":
        raise ValueError(f"unknown reward kind {kind!r}; choose r1track or iou")

    failed = {"overall": -1.0, "format": 0.0, "iou": 0.0, "giou": -1.0}
    content = text
    if think:
        if not think_format_ok(text):
            return failed
        content = answer_tag_content(text)
        if response_len is not None and response_len < 128:
            return {**failed, "format": 1.0}
    try:
        json.loads(content)
    except (ValueError, RecursionError):
        return {**failed, "format": float(think)}
    box = _json_box(content)
    if box is None or not (box[2] > box[0] and box[3] > box[1]):
        g, iou = -1.0, 0.0
    else:
        box = box_from_model(box, crop_side, boxes)
        g, iou = giou_xyxy(box, gt_xyxy), iou_xyxy(box, gt_xyxy)
    overall = _shaped_giou(g)
    if think:
        length = (448 - response_len) / 64 if response_len is not None and response_len > 448 else 0.0
        overall += 0.05 * 1.0 + 0.1 * length
    return {"overall": overall, "format": 1.0 if (think or box is not None) else 0.0, "iou": iou, "giou": g}


def answer_confidence(tokenizer, token_ids, logprobs) -> float | None:
    """How sure the model was of the box it answered: the geometric mean of the probabilities
    of the tokens that carry its numbers (those after the answer's last "["; digits elsewhere,
    as in reasoning, do not count), from the log-probabilities of the chosen tokens. None when
    the answer holds no number."""
    return pieces_confidence(tokenizer.convert_ids_to_tokens(list(token_ids)), logprobs)


def pieces_confidence(pieces, logprobs) -> float | None:
    """answer_confidence from the answer's tokens as text (a server's log-probabilities name
    each token by its text: "[" and digits read the same as in the tokenizer's pieces)."""
    opened = [i for i, piece in enumerate(pieces) if "[" in piece]
    start = opened[-1] if opened else 0
    numbers = [logprob for piece, logprob in zip(pieces[start:], logprobs[start:])
               if any(c.isdigit() for c in piece)]
    if not numbers:
        return None
    return float(math.exp(sum(numbers) / len(numbers)))


def lost_accuracy(confidences, good, lost_below: float) -> float:
    """How well "confidence below `lost_below`" tells the bad boxes from the good: balanced
    accuracy, the mean of the share of bad boxes it marks lost and of good boxes it keeps
    (0.5 marks at random; frames of one kind only: the share of that kind)."""
    import numpy as np

    scores, good = np.asarray(confidences, dtype=float), np.asarray(good, dtype=bool)
    lost = scores < lost_below
    shares = [share for share in (lost[~good].mean() if (~good).any() else None,
                                  (~lost[good]).mean() if good.any() else None) if share is not None]
    return float(np.mean(shares))


def fit_lost_below(confidences, good) -> float:
    """The threshold on the confidence that best tells bad boxes (lost) from good ones, by
    balanced accuracy (lost_accuracy): halfway between the two confidences it falls between.
    Frames with no confidence (nan) are left out."""
    import numpy as np

    scores, good = np.asarray(confidences, dtype=float), np.asarray(good, dtype=bool)
    known = ~np.isnan(scores)
    scores, good = scores[known], good[known]
    if not len(scores) or good.all() or not good.any():
        raise ValueError("fitting a lost threshold takes both good and bad boxes with a confidence")
    order = np.argsort(scores, kind="stable")
    scores, good = scores[order], good[order]
    # a threshold between scores[i - 1] and scores[i] marks the first i lost
    bad_lost = np.concatenate([[0], np.cumsum(~good)]) / (~good).sum()
    good_kept = 1 - np.concatenate([[0], np.cumsum(good)]) / good.sum()
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(scores) > 0) + 1, [len(scores)]])  # between distinct scores
    best = cuts[np.argmax((bad_lost + good_kept)[cuts] / 2)]
    if best == 0:
        return float(scores[0] / 2)
    if best == len(scores):
        return float(min(1.0, (scores[-1] + 1) / 2))
    return float((scores[best - 1] + scores[best]) / 2)
