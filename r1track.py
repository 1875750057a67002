"""R1-Track's core: the vocabulary every script and module of this project speaks.

Prompts, box maths, crops, answer parsing and rewards, tracking settings, model and
processor loading, model inputs, the Tracker with its answerers (a local model, an
OpenAI-compatible server, any function) and text grounding, and what every script shares:
its parser, the tracking flags and the one-line error (script_main). The scripts beside
this file import it, and the other modules build on it; it imports none of them, except
fast_decoder when a Tracker is built on a local model.

Box formats are always in the name: `box_xywh` is (x, y, width, height), as GOT-10k
files and frames use; `box_xyxy` is (x_min, y_min, x_max, y_max), as prompts, answers
and rewards use. Frames are RGB (PIL images or uint8 arrays); crops are uint8 arrays when
cut and PIL images when the model sees them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image


class UserError(ValueError):
    """Input that cannot be used as given (a flag, a file, a model, a server): every script
    says it in one line and exits with status 2 (script_main), never with a traceback."""


# -----------------------------------------------------------------------------
# Prompts. The exact text matters: the published checkpoints were trained on it.

SYSTEM_PROMPT = "You are a helpful assistant."

THINK_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide "
    "the final answer. \n The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer MUST BE put in <answer> </answer> tags. \n "
)

QUESTIONS = {
    # The wording of the R1-Track README and of the 5k models.
    "seed": (
        "Please identify the target specified by the bounding box {box} in the first image "
        "and locate it in the second image. \n Return the coordinates in "
        "[x_min,y_min,x_max,y_max] format."
    ),
    # The wording the published 100k-pair models were trained on.
    "r1track-100k": (
        "Given two images, you need to:\n"
        "1. Analyze and Identify the target object marked by bounding box {box} in <image_1>;\n"
        "2. Re-locate this target in <image_2>;\n"
        "3. Return [x_min, y_min, x_max, y_max] coordinates of the target in <image_2>."
    ),
}
WORDINGS = tuple(QUESTIONS)

# How a tracker cuts its crops, asks and reads the answers (TrackSettings.loop):
# - "published": the published inference loop detail by detail: crops cut and resized as
#   OpenCV does (no antialiasing), sent through a JPEG quality-95 round trip, the question as
#   the published client sent it, strict JSON answers, the frame-edge rule. The published
#   checkpoints were trained on such crops and scored this way.
# - "lenient": antialiased crops without JPEG, the README's question, the first [a,b,c,d]
#   anywhere in the answer, no frame-edge rule (a box may follow the target up to the border).
LOOPS = ("published", "lenient")

# Qwen2.5-VL's own chat template (the processor's chat_template.json on the hub). Used
# when a tokenizer carries a text-only template, and written into the tiny checkpoint.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
END_OF_TURN = "<|im_end|>"


def format_box_xyxy(box_xyxy) -> str:
    """`[241,66,329,154]`: integers (truncated, as the published pairs were), no spaces."""
    return "[" + ",".join(str(int(v)) for v in box_xyxy) + "]"


def question_text(box_xyxy, think=False, wording="seed", as_published_client=False) -> str:
    """The text of one tracking question about the target at `box_xyxy` in image 1.

    The text the published models were trained on (the README's), unless
    `as_published_client`: then the seed wording as the published inference client sent it,
    which is how the published 5k models were scored: single spaces where the README has
    " \\n ", and the think instruction stripped, then joined with one space.
    """
    if wording not in QUESTIONS:
        raise ValueError(f"unknown wording {wording!r}; choose one of {', '.join(WORDINGS)}")
    text = QUESTIONS[wording].format(box=format_box_xyxy(box_xyxy))
    if as_published_client and wording == "seed":
        text = text.replace(" \n ", " ")
        return f"{THINK_INSTRUCTION.strip()} {text}" if think else text
    return THINK_INSTRUCTION + text if think else text


def build_messages(box_xyxy, think=False, wording="seed", images=(None, None), as_published_client=False) -> list[dict]:
    """The chat of one tracking question: image 1 is the template crop with the target at
    `box_xyxy` (template-crop pixels), image 2 the search crop. The published client sent
    no system message (Qwen2.5-VL's chat template then puts in the same default one) and
    its own spacing of the question (question_text)."""
    text = question_text(box_xyxy, think, wording, as_published_client)
    template, search = ({"type": "image", "image": image} for image in images)
    if wording == "seed":
        content = [template, search, {"type": "text", "text": text}]
    else:
        content = [template, {"type": "text", "text": " "}, search, {"type": "text", "text": text}]
    user = {"role": "user", "content": content}
    return [user] if as_published_client else [{"role": "system", "content": SYSTEM_PROMPT}, user]


_NUMBER = r"-?\d+(?:\.\d+)?"
_PROMPT_BOX = re.compile(r"bounding box\s*\[\s*(" + r"\s*,\s*".join([_NUMBER] * 4) + r")\s*\]")


def parse_prompt_box(problem_text: str):
    """The template box written in a question of either published wording, or None."""
    match = _PROMPT_BOX.search(problem_text)
    if match is None:
        return None
    return [float(v) for v in match.group(1).split(",")]


# -----------------------------------------------------------------------------
# Boxes


def xywh_to_xyxy(box_xywh) -> list[float]:
    x, y, w, h = (float(v) for v in box_xywh)
    return [x, y, x + w, y + h]


def xyxy_to_xywh(box_xyxy) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return [x1, y1, x2 - x1, y2 - y1]


def _area_xyxy(box_xyxy) -> float:
    x1, y1, x2, y2 = box_xyxy
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def _intersection_xyxy(a, b) -> float:
    return _area_xyxy((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou_xyxy(a, b) -> float:
    """Intersection over union; 0 when either box is empty or inverted."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    inter = _intersection_xyxy(a, b)
    union = _area_xyxy(a) + _area_xyxy(b) - inter
    return inter / union if union > 0 and inter > 0 else 0.0


def giou_xyxy(a, b) -> float:
    """Generalised IoU in [-1, 1]: IoU minus the share of the enclosing box that neither
    box covers. -1 for an inverted box (x2 < x1 or y2 < y1), which has no extent."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if a[2] < a[0] or a[3] < a[1] or b[2] < b[0] or b[3] < b[1]:
        return -1.0
    inter = _intersection_xyxy(a, b)
    union = _area_xyxy(a) + _area_xyxy(b) - inter
    hull = _area_xyxy((min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])))
    if hull <= 0:  # both boxes are one and the same point or line
        return 0.0
    iou = inter / union if union > 0 else 0.0
    return iou - (hull - union) / hull


def clamp_box_xyxy(box_xyxy, size: float) -> list[float]:
    """Each coordinate into [0, size] (an answer in a size x size crop)."""
    return [min(max(float(v), 0.0), float(size)) for v in box_xyxy]


def clamp_box_xywh_to_frame(box_xywh, width: int, height: int) -> list[float]:
    """Inside the frame with at least one pixel of width and height."""
    x1, y1, x2, y2 = xywh_to_xyxy(box_xywh)
    x1 = min(max(x1, 0.0), width - 1.0)
    y1 = min(max(y1, 0.0), height - 1.0)
    x2 = min(max(x2, x1 + 1.0), float(width))
    y2 = min(max(y2, y1 + 1.0), float(height))
    return [x1, y1, x2 - x1, y2 - y1]


# -----------------------------------------------------------------------------
# Crops: the published square crop, zero padding outside the frame.


def crop_around(frame, box_xywh, factor: float, size: int, shift_xy=(0.0, 0.0), loop="published"):
    """A `size` x `size` crop of a square of side ceil(sqrt(w*h) * factor) centred on the
    box (moved by `shift_xy` times the side, for training jitter), black outside the frame.

    loop="published": cut and resized as the published scripts do with OpenCV (bilinear, no
    antialiasing, the far edge padded one pixel early); "lenient": PIL's antialiased resize.
    `frame`: an RGB uint8 array or a PIL image. Returns (crop as an RGB uint8 array,
    box_xyxy_in_crop, scale, origin_xy): the box in crop pixels, crop pixels per frame pixel,
    and the square's top-left corner in the frame.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    if not (w > 0 and h > 0) or not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"cannot crop around a box without area: {list(box_xywh)}")
    side = math.ceil(math.sqrt(w * h) * factor)
    x1 = round(x + w / 2 + shift_xy[0] * side - side / 2)
    y1 = round(y + h / 2 + shift_xy[1] * side - side / 2)
    scale = size / side
    if loop == "published":
        crop = _opencv_square(as_array(frame), x1, y1, side, size)
    else:
        crop = np.asarray(_antialiased_square(as_pil(frame), x1, y1, side, size))
    # the same float operations as the published scripts, so boxes agree to the last bit
    left, top = (x - x1) * scale, (y - y1) * scale
    return crop, [left, top, left + w * scale, top + h * scale], scale, (x1, y1)


MAX_OPENCV_SIDE = 16384  # the published crop pads the whole square first: 800 MB at this side


def _opencv_square(frame: np.ndarray, x1: int, y1: int, side: int, size: int) -> np.ndarray:
    import cv2

    height, width = frame.shape[:2]
    x2, y2 = x1 + side, y1 + side
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:  # the square lies off the frame
        return np.zeros((size, size, 3), np.uint8)
    # As the published crop: where the square reaches the right or bottom edge, the padding
    # starts one pixel early (the frame's last column or row is replaced by black).
    left, top = max(0, -x1), max(0, -y1)
    right, bottom = max(x2 - width + 1, 0), max(y2 - height + 1, 0)
    inside = frame[y1 + top:y2 - bottom, x1 + left:x2 - right]
    if inside.shape[0] <= 0 or inside.shape[1] <= 0:
        return np.zeros((size, size, 3), np.uint8)
    if side > MAX_OPENCV_SIDE:  # too big to pad: the same bilinear samples, without the padded copy
        ratio = side / size
        to_frame = np.array([[ratio, 0, x1 + 0.5 * ratio - 0.5], [0, ratio, y1 + 0.5 * ratio - 0.5]])
        return cv2.warpAffine(frame[:height - (bottom > 0), :width - (right > 0)], to_frame, (size, size),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
    if not (top or bottom or left or right):  # inside the frame: resized straight from it, no copy
        return cv2.resize(inside, (size, size))
    if side > 4 * size:  # most of the padded square's rows are never read: fill only the others
        return cv2.resize(_rows_read_square(inside, top, bottom, left, right, side, size), (size, size))
    square = cv2.copyMakeBorder(inside, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)
    return cv2.resize(square, (size, size))


def _rows_read_square(inside, top, bottom, left, right, side: int, size: int) -> np.ndarray:
    """The zero-padded square of side `side` as copyMakeBorder makes it, but with only the rows
    that OpenCV's bilinear resize to `size` reads filled in; the others are left unwritten. For
    a 2,300-px square this copies a third of the bytes and halves the crop's time."""
    # OpenCV's own source rows: floor of a float32 coordinate, and the row below it
    sample_y = ((np.arange(size) + 0.5) * (1.0 / (size / side)) - 0.5).astype(np.float32)
    rows = np.floor(sample_y).astype(np.int64)
    rows = np.unique(np.clip(np.concatenate([rows, rows + 1]), 0, side - 1))
    square = np.empty((side, side, 3), np.uint8)  # untouched pages cost nothing
    in_frame = (rows >= top) & (rows < side - bottom)
    square[rows[~in_frame]] = 0
    rows = rows[in_frame]
    square[rows, :left] = 0
    square[rows, side - right:] = 0
    square[rows, left:side - right] = inside[rows - top]
    return square


def _antialiased_square(image: Image.Image, x1: int, y1: int, side: int, size: int) -> Image.Image:
    # Resample only the part of the square inside the frame and paste it on black: the
    # same picture as padding the frame first, without allocating side x side pixels.
    crop = Image.new("RGB", (size, size))
    left, top = max(x1, 0), max(y1, 0)
    right, bottom = min(x1 + side, image.width), min(y1 + side, image.height)
    if right <= left or bottom <= top:
        return crop
    scale = size / side
    dest = [round((left - x1) * scale), round((top - y1) * scale),
            round((right - x1) * scale), round((bottom - y1) * scale)]
    if dest[2] > dest[0] and dest[3] > dest[1]:
        part = image.resize((dest[2] - dest[0], dest[3] - dest[1]), Image.BILINEAR,
                            box=(left, top, right, bottom))
        crop.paste(part, (dest[0], dest[1]))
    return crop


def crop_to_frame(box_xyxy_in_crop, scale: float, origin_xy) -> list[float]:
    """A box in crop pixels back to a frame box (x, y, w, h), with the published float operations."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy_in_crop)
    left, top = x1 / scale + origin_xy[0], y1 / scale + origin_xy[1]
    right, bottom = x2 / scale + origin_xy[0], y2 / scale + origin_xy[1]
    return [left, top, right - left, bottom - top]


JPEG_QUALITY = 95  # what the published client (cv2.imencode) and data (cv2.imwrite) used


def jpeg_round_trip(crop: np.ndarray):
    """An RGB crop as the published pipeline handed it to the model: encoded as JPEG quality
    95 (as OpenCV encodes it), then decoded. Returns (the decoded RGB uint8 array, the JPEG
    bytes). The decoding is OpenCV's, straight to RGB: the same pixels as PIL's (and so a vLLM
    server's), both being libjpeg-turbo's default decoder (a test holds them equal), in two
    thirds of the time and without a PIL image to convert back to an array."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("OpenCV could not encode a crop as JPEG")
    return _opencv_rgb(cv2.imdecode, encoded), encoded.tobytes()


def _opencv_rgb(decode, source):
    """`decode(source, flags)` (cv2.imread or cv2.imdecode) as an RGB array, or None where
    OpenCV cannot decode it: straight to RGB where OpenCV can (>= 4.11; the same pixels, a
    pass fewer), else decoded as BGR and converted."""
    import cv2

    if hasattr(cv2, "IMREAD_COLOR_RGB"):
        return decode(source, cv2.IMREAD_COLOR_RGB)
    image = decode(source, cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def as_array(image) -> np.ndarray:
    """A frame as an RGB uint8 array (PIL images and arrays are accepted)."""
    if isinstance(image, Image.Image):
        image = image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 1:  # grey
        array = np.repeat(array, 3, axis=2)
    return array[..., :3]  # RGBA: the colour without the alpha


def as_pil(image) -> Image.Image:
    """A frame as a PIL RGB image (PIL images and RGB arrays are accepted)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    return Image.fromarray(as_array(image))


def read_frame(path) -> np.ndarray:
    """A frame's image file as an RGB uint8 array, decoded by OpenCV as the published scripts
    read frames; UserError when it cannot be decoded."""
    import cv2

    frame = _opencv_rgb(cv2.imread, str(path))
    if frame is None:
        raise UserError(f"cannot decode the image {path}")
    return frame


def open_image(source) -> Image.Image:
    """A stored image (JPEG or PNG bytes, or a path) as a PIL RGB image, decoded by PIL as the
    training data's images are (EasyR1, vLLM); UserError when it cannot be decoded."""
    import io

    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        image.load()  # decoded here, so that a broken file fails here
        return image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"unreadable image: {error}") from None


# -----------------------------------------------------------------------------
# Reading ahead: frames decoded by background threads while the model works (OpenCV, PIL and
# PyAV release the GIL while they decode).


def read_ahead(paths, pool, read=read_frame, ahead=4):
    """read(path) for each path, in order, each decoded by `pool` (a ThreadPoolExecutor, may
    be shared) up to `ahead` frames before it is needed. An error of read is raised when its
    frame's turn comes."""
    from collections import deque

    paths, pending = iter(paths), deque()
    for path in paths:  # submitted now, not at the first frame's turn: a reader made early reads early
        pending.append(pool.submit(read, path))
        if len(pending) >= ahead:
            break
    return _frames_in_turn(paths, pending, pool, read)


def _frames_in_turn(paths, pending, pool, read):
    try:
        while pending:
            frame = pending.popleft().result()
            for path in paths:  # one more in flight for the one taken
                pending.append(pool.submit(read, path))
                break
            yield frame
    finally:
        for future in pending:
            future.cancel()


def in_background(items, ahead=8):
    """The items of an iterator, in order, produced by a background thread up to `ahead`
    items before they are needed (a video decoder, for one). Its errors are raised in turn."""
    import queue
    import threading

    handed, stopped = queue.Queue(maxsize=ahead), threading.Event()
    end = object()

    def hand(item, error=None) -> bool:  # False once the user of the items has gone
        while not stopped.is_set():
            try:
                handed.put((item, error), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not hand(item):
                    return
            hand(end)
        except BaseException as error:  # handed over, raised where the items are used
            hand(end, error)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item, error = handed.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stopped.set()

# -----------------------------------------------------------------------------
# Answers and rewards

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


def _shaped_giou(g: float) -> float:
    # The published shaping: no credit for a poor overlap, a bonus for a tight one.
    if 0.0 < g < 0.4:
        return 0.0
    if 0.75 < g < 0.95:
        return g + 0.2
    if g >= 0.95:
        return g + 0.5
    return g


def reward(text: str, gt_xyxy, think=False, response_len=None, kind="r1track") -> dict:
    """Score one response against the ground-truth box (both in search-crop pixels).

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
        box = parse_answer(text, think=think)
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
        g, iou = giou_xyxy(box, gt_xyxy), iou_xyxy(box, gt_xyxy)
    overall = _shaped_giou(g)
    if think:
        length = (448 - response_len) / 64 if response_len is not None and response_len > 448 else 0.0
        overall += 0.05 * 1.0 + 0.1 * length
    return {"overall": overall, "format": 1.0 if (think or box is not None) else 0.0, "iou": iou, "giou": g}


# -----------------------------------------------------------------------------
# Tracking settings: saved with every checkpoint so a tracker asks the question the
# model was trained on.

SETTINGS_FILE = "r1track.json"


class LoadError(UserError):
    """A model, adapter or settings file that cannot be used as it is: said in one line,
    never replaced by defaults or random weights."""


@dataclass
class TrackSettings:
    wording: str = "seed"
    think: bool = False
    crop_size: int = 336
    template_factor: float = 4.0
    search_factor: float = 4.0
    loop: str = "published"

    def save(self, folder) -> None:
        write_atomic(Path(folder) / SETTINGS_FILE, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @property
    def asks_as_client(self) -> bool:
        """Whether a tracker words its questions as the published inference client did."""
        return self.loop == "published"

    def describe(self) -> str:
        return (f"wording {self.wording}, think {'on' if self.think else 'off'}, {self.crop_size}-px crops, "
                f"template/search factors {self.template_factor:g}/{self.search_factor:g}, loop {self.loop}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrackSettings":
        if not isinstance(values, dict):
            raise ValueError("tracking settings are a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown tracking settings {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        # a file from before loops existed: its model was trained on antialiased crops, the lenient loop's
        settings = cls(**{"loop": "lenient", **values})
        if settings.wording not in QUESTIONS:
            raise ValueError(f"unknown wording {settings.wording!r}; choose one of {', '.join(WORDINGS)}")
        if settings.loop not in LOOPS:
            raise ValueError(f"unknown loop {settings.loop!r}; choose one of {', '.join(LOOPS)}")
        if not isinstance(settings.think, bool):
            raise ValueError(f"think is true or false, not {settings.think!r}")
        if not (isinstance(settings.crop_size, int) and settings.crop_size >= 28):
            raise ValueError(f"crop_size is a whole number of pixels (at least 28), not {settings.crop_size!r}")
        for factor in (settings.template_factor, settings.search_factor):
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
                raise ValueError(f"crop factors are positive numbers, not {factor!r}")
        return settings


PUBLISHED_SETTINGS = {
    "WangBiao/R1-Track-SFT": TrackSettings(),
    "WangBiao/R1-Track-SFT-5k-lora": TrackSettings(),
    "WangBiao/R1-Track-GRPO-5k": TrackSettings(think=True),
    "WangBiao/R1-Track-GRPO-wo-Think-5k": TrackSettings(),
    "WangBiao/R1-Track-SFT-100k-lora": TrackSettings(wording="r1track-100k"),
    "WangBiao/R1-Track-GRPO-wo-Think-100k": TrackSettings(wording="r1track-100k"),
}
DEFAULT_MODEL = "WangBiao/R1-Track-GRPO-wo-Think-100k"
DEMO_MODEL = Path(__file__).resolve().parent / "demo_model"  # made by make_demo_model.py; ships with the project


def hub_file(repo_id: str, filename: str):
    """The local path of one file of a hub repository, downloaded if need be, or None when
    the repository has no such file. Offline (HF_HUB_OFFLINE=1): what the local copy of the
    repository has. LoadError for everything else: no such repository, no access, no
    network, nothing of it cached while offline."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        if constants.HF_HUB_OFFLINE:
            cached = try_to_load_from_cache(repo_id, filename)
            if isinstance(cached, str):
                return Path(cached)
            # without the file: known absent, or a local copy of the repository (a model or an adapter) lacks it
            if cached is not None or any(isinstance(try_to_load_from_cache(repo_id, name), str)
                                         for name in ("config.json", "adapter_config.json")):
                return None
            raise LoadError(f"{repo_id} is not in the local hub cache and the hub may not be asked "
                            f"(HF_HUB_OFFLINE=1): cannot tell whether it has {filename}")
        return Path(hf_hub_download(repo_id, filename))
    except LoadError:
        raise
    except LocalEntryNotFoundError:
        raise LoadError(f"cannot reach the Hugging Face hub for {filename} of {repo_id}, and no copy is cached "
                        "(set HF_HUB_OFFLINE=1 to use only local copies)") from None
    except EntryNotFoundError:
        return None
    except (OSError, ValueError) as error:  # no such repository, no access, a bad id, the network
        raise LoadError(f"cannot read {filename} of {repo_id}: {first_line(error)}") from None


def first_line(error) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


def read_settings(name_or_path: str):
    """The tracking settings saved with a checkpoint: its r1track.json (in a folder, the file
    itself, or on the hub), or the built-in settings of a published R1-Track id; None when
    the checkpoint has none. LoadError when they exist but cannot be read."""
    path = Path(name_or_path)
    if path.is_dir() and (path / SETTINGS_FILE).is_file():
        path = path / SETTINGS_FILE
    elif name_or_path in PUBLISHED_SETTINGS:
        return dataclasses.replace(PUBLISHED_SETTINGS[name_or_path])
    elif path.is_dir():
        return None
    elif not path.is_file():
        if path.is_absolute() or name_or_path.startswith((".", "~")) or path.suffix == ".json":
            raise LoadError(f"{name_or_path}: no such file or folder")
        path = hub_file(name_or_path, SETTINGS_FILE)
        if path is None:
            return None
    try:
        return TrackSettings.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise LoadError(f"{path}: not valid tracking settings ({first_line(error)})") from None


def load_settings(name_or_path: str) -> TrackSettings:
    """read_settings, or the published defaults when the checkpoint has no settings, which
    is said on stderr (the model may have been trained for another question)."""
    settings = read_settings(name_or_path)
    if settings is None:
        settings = TrackSettings()
        say_default_settings(name_or_path, settings)
    return settings


def say_default_settings(name, settings: TrackSettings) -> None:
    print(f"note: {name} has no {SETTINGS_FILE}; tracking with the default settings ({settings.describe()})",
          file=sys.stderr)


def write_atomic(path, data) -> None:
    """Write a file so that readers see the old content or the new, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # as an ordinary file, not mkstemp's owner-only mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help for the project's scripts: the description as written, and every option's
    default after its help unless the help already says it (or there is none to say)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or not action.option_strings \
                or action.default == argparse.SUPPRESS:
            return text
        return f"{text} (default: {action.default})"


class ArgumentParser(argparse.ArgumentParser):
    """The project's scripts' parser: HelpFormatter, and a bad flag said in one line."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive_int(text) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def script_main(run, args, quiet=True) -> int:
    """Every script's body runs here: `run(args)`'s exit status; bad input (UserError) or a
    file that cannot be read or written (OSError) is one line on stderr and status 2."""
    if quiet:
        quiet_libraries()
    try:
        return run(args)
    except (UserError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def add_settings_args(parser) -> None:
    """The flags of the tracking scripts that choose or override the tracking settings."""
    parser.add_argument("--settings", help="where the tracking settings (wording, think, crop size, loop) come from: "
                        "a checkpoint folder, a hub id or an r1track.json (default: the model's own; with --server, "
                        "those of the served model's name)")
    parser.add_argument("--loop", choices=LOOPS, help="published: crops, JPEG, question, answer parsing and frame-edge "
                        "rule as the published inference script; lenient: antialiased crops, lenient parsing, no "
                        "edge rule (default: as the settings say)")
    parser.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                        help="ask for reasoning before the answer (default: as the settings say)")


# -----------------------------------------------------------------------------
# Model and processor


def quiet_libraries():
    """Keep the terminal for our own progress: no per-shard bars or info lines from the libraries."""
    import logging
    import warnings

    import transformers

    # bitsandbytes (imported by peft) warns on CPU-only machines about a kernel it only needs on GPU
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # peft still calls transformers' old checkpointing names; nothing a user can act on
    warnings.filterwarnings("ignore", message=".*(is_gradient_checkpointing|gradient_checkpointing_enable)",
                            category=FutureWarning)
    # FSDP2 warns on every forward that the model returns a view; we never modify it in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@dataclass
class Processor:
    """Qwen2.5-VL's tokenizer and image processor: what build_inputs needs of the official
    Qwen2_5_VLProcessor, which cannot be built where torchvision is missing."""

    tokenizer: object
    image_processor: object

    def save_pretrained(self, folder) -> None:
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)


def load_processor(name_or_path: str) -> Processor:
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    # Hub checkpoints keep the vision chat template beside the processor; a tokenizer
    # with a text-only template would drop the images.
    if IMAGE_PAD not in (tokenizer.chat_template or ""):
        tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    # The PIL backend gives the same pixels on every machine, torchvision or not.
    image_processor = AutoImageProcessor.from_pretrained(name_or_path, backend="pil")
    return Processor(tokenizer, image_processor)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _adapter_base(name_or_path: str):
    """The base model named by a peft adapter folder or hub id, or None for a full model."""
    local = Path(name_or_path)
    if local.exists():
        config = local / "adapter_config.json"
        if not config.is_file():
            return None
    else:
        config = hub_file(name_or_path, "adapter_config.json")
        if config is None:
            return None
    try:
        return json.loads(config.read_text())["base_model_name_or_path"]
    except (ValueError, KeyError, TypeError) as error:
        raise LoadError(f"{config}: not a peft adapter config ({first_line(error)})") from None


def load_model(name_or_path: str, dtype=None, device=None, load_in_4bit=False, attn=None,
               merge_adapter=True, trainable=False):
    """A Qwen2.5-VL model and its processor from a hub id or folder: a full checkpoint or a
    peft adapter, whose base (read from the adapter config) may itself be an adapter, as a
    GRPO adapter trained over an SFT adapter is.

    dtype: default_dtype(device) unless given. attn: default_attention(device) unless given.
    merge_adapter folds the adapter into the weights for speed (not with 4-bit weights);
    trainable keeps it a trainable peft adapter. The checkpoint's tracking settings are at
    `model.r1track_settings` (None when it has none). Whatever cannot be loaded is a LoadError
    that says so in one line: a checkpoint or adapter whose weights do not all load (never
    random values), a missing or unreadable file, a hub that cannot be asked.
    """
    from transformers import BitsAndBytesConfig

    device = device or default_device()
    dtype = dtype or default_dtype(device)
    # Straight onto the device: a 3B model never passes through CPU memory on its way.
    kwargs = {"dtype": dtype, "attn_implementation": attn or default_attention(device), "device_map": {"": str(device)}}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    try:
        model = _load_weights(name_or_path, kwargs, trainable=trainable,
                              merge=merge_adapter and not trainable and not load_in_4bit)
        if not trainable:
            model.eval()
        model.r1track_settings = read_settings(name_or_path)  # None: the checkpoint has none
        return model, _load_processor_of(name_or_path)
    except (OSError, ValueError) as error:  # transformers' and peft's own errors included
        raise LoadError(f"cannot load the model {name_or_path}: {first_line(error)}") from None


def default_dtype(device):
    """bfloat16 on a GPU, float32 on a CPU."""
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def default_attention(device) -> str:
    """flash_attention_2 on a GPU when the flash-attn package is installed, else sdpa."""
    import importlib.util

    return "flash_attention_2" if str(device).startswith("cuda") and importlib.util.find_spec("flash_attn") else "sdpa"


def _load_weights(name_or_path: str, from_pretrained_kwargs: dict, trainable=False, merge=True):
    """Every weight of a checkpoint or adapter, or LoadError naming those that do not fit."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    base = _adapter_base(name_or_path)
    if base is None:
        model, report = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            name_or_path, output_loading_info=True, **from_pretrained_kwargs)
        _refuse_partial_load(name_or_path, report["missing_keys"], report["unexpected_keys"],
                             [key for key, *_ in report.get("mismatched_keys", ())])
        return model
    import warnings

    from peft import PeftModel

    model = _load_weights(base, from_pretrained_kwargs, trainable=False, merge=True)  # lower adapters: merged
    key_mapping = older_layout_key_mapping(model)
    with warnings.catch_warnings():  # peft warns of missing keys; they are checked below, and refused
        warnings.filterwarnings("ignore", message="Found missing adapter keys")
        model = PeftModel.from_pretrained(model, name_or_path, is_trainable=trainable, key_mapping=key_mapping)
    _check_adapter_weights(model, name_or_path, key_mapping)
    return model.merge_and_unload() if merge else model


def older_layout_key_mapping(model) -> dict:
    """transformers' renaming rules for checkpoints saved before 4.52, when Qwen2.5-VL kept
    the text model at `model.` and the vision tower at `visual.` (the published R1-Track
    LoRA adapters were saved so), as the `key_mapping` peft applies to adapter keys."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    mapping = {}
    for rule in get_model_conversion_mapping(model):
        if type(rule) is WeightRenaming:  # plain renames; peft applies the first that matches
            mapping.update(zip(rule.source_patterns, rule.target_patterns))
    return mapping


def _check_adapter_weights(model, name_or_path: str, key_mapping: dict) -> None:
    """Every weight of the adapter file went into the model, and every adapter weight of the
    model came from the file: peft itself only warns, and leaves the rest at their initial values."""
    from peft import get_peft_model_state_dict
    from peft.utils import load_peft_weights

    stored = set(load_peft_weights(name_or_path, device="cpu", key_mapping=key_mapping))
    expected = set(get_peft_model_state_dict(model))
    _refuse_partial_load(name_or_path, expected - stored, stored - expected, [], kind="adapter")


def _refuse_partial_load(name, missing, unexpected, mismatched, kind="checkpoint") -> None:
    def listed(keys):
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    problems = [f"{len(keys)} {what} ({listed(keys)})" for keys, what in (
        (missing, "weights missing from it"), (unexpected, "weights the model has no place for"),
        (mismatched, "weights of the wrong shape")) if keys]
    if problems:
        raise LoadError(f"{name}: not every weight of this {kind} loads into Qwen2.5-VL: {'; '.join(problems)}")


def _load_processor_of(name_or_path: str) -> Processor:
    """The processor saved with a checkpoint, or with the nearest base below it (a hub
    adapter may carry none)."""
    while True:
        try:
            return load_processor(name_or_path)
        except (OSError, ValueError, TypeError):
            base = _adapter_base(name_or_path)
            if base is None:
                raise
            name_or_path = base


def build_inputs(processor, template_img, search_img, box_xyxy, answer=None, think=False,
                 wording="seed", return_tensors=True, as_published_client=False, pixels_as_bytes=False) -> dict:
    """The model inputs of one tracking question (a batch of one).

    Keys: input_ids, attention_mask, mm_token_type_ids (1 on image tokens: Qwen2.5-VL
    needs them for its 3D positions), pixel_values, image_grid_thw; with an `answer`
    also labels, -100 everywhere but the answer and its end-of-turn token. Image tokens
    are expanded as Qwen2.5-VL's own processor expands them. pixels_as_bytes: patch_bytes
    instead of pixel_values (see image_patches), an eighth of their size to send to a trainer.
    """
    messages = build_messages(box_xyxy, think=think, wording=wording, images=(template_img, search_img),
                              as_published_client=as_published_client)
    return encode_chat(processor, messages, [template_img, search_img], answer=answer, return_tensors=return_tensors,
                       pixels_as_bytes=pixels_as_bytes)


def encode_chat(processor, messages, images, answer=None, return_tensors=True, pixels_as_bytes=False) -> dict:
    """Any chat with images, rendered by the tokenizer's chat template and encoded as
    Qwen2.5-VL's processor does; see build_inputs."""
    import torch

    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    vision = image_patches(images, image_processor, as_bytes=pixels_as_bytes)
    merge = image_processor.merge_size ** 2
    for grid in vision["image_grid_thw"]:
        prompt = prompt.replace(IMAGE_PAD, "<|placeholder|>" * int(grid.prod() // merge), 1)
    prompt = prompt.replace("<|placeholder|>", IMAGE_PAD)

    input_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    labels = None
    if answer is not None:
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        answer_ids.append(tokenizer.convert_tokens_to_ids(END_OF_TURN))
        labels = [-100] * len(input_ids) + answer_ids
        input_ids = input_ids + answer_ids

    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "mm_token_type_ids": [int(t == image_token_id) for t in input_ids],
    }
    if labels is not None:
        inputs["labels"] = labels
    if return_tensors:
        inputs = {key: torch.tensor([value]) for key, value in inputs.items()}
    inputs.update(vision)
    return inputs


def image_patches(images, image_processor, device=None, as_bytes=False) -> dict:
    """{"pixel_values", "image_grid_thw"} of RGB images (PIL or uint8 arrays) as Qwen2.5-VL's
    image processor makes them, computed with torch (on `device`: on a GPU the per-frame
    part of a tracked frame costs microseconds). The processor itself (resampling, one image
    at a time in numpy) is asked only for images whose size it would change; tracking crops,
    whose side is a multiple of 28, are kept as they are by it.

    as_bytes: {"patch_bytes", "image_grid_thw"} instead, the patches still as bytes in the
    processor's order ([patches, 3 * 14 * 14] uint8; pixels_from_bytes makes them
    pixel_values), where the processor would not resize: an eighth of the floats' bytes."""
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    p, m = image_processor.patch_size, image_processor.merge_size
    arrays = [np.asarray(image) for image in images]
    shapes = {array.shape for array in arrays}
    (height, width, channels), = shapes if len(shapes) == 1 else [(0, 0, 0)]
    kept = channels == 3 and arrays[0].dtype == np.uint8 and smart_resize(
        height, width, factor=p * m, min_pixels=image_processor.size["shortest_edge"],
        max_pixels=image_processor.size["longest_edge"]) == (height, width)
    if not kept:
        return image_processor(images=images, return_tensors="pt")
    n, gh, gw = len(arrays), height // p, width // p
    grid = torch.tensor([[1, gh, gw]] * n, device=device)
    if not as_bytes and torch.device(device or "cpu").type == "cpu":
        return {"pixel_values": _normalised_patches(arrays, image_processor), "image_grid_thw": grid}
    pixels = torch.from_numpy(np.stack(arrays)).to(device)                                  # [N, H, W, C] uint8
    # the processor's patch order: merge blocks row by row, 2x2 patches within, each patch C x p x p;
    # reordered while still bytes (a quarter of the floats' memory traffic)
    patches = pixels.view(n, gh // m, m, p, gw // m, m, p, 3).permute(0, 1, 4, 2, 5, 7, 3, 6).contiguous()
    patches = patches.view(n * gh * gw, 3 * p * p)
    if as_bytes:
        return {"patch_bytes": patches, "image_grid_thw": grid}
    return {"pixel_values": pixels_from_bytes(patches, image_processor), "image_grid_thw": grid}


def _normalised_patches(arrays, image_processor):
    """image_patches' pixel_values on the CPU: each channel of an image normalised through a
    lookup table into a float plane (OpenCV), then the planes' patch rows (p floats, the
    longest run the two orders share) gathered in the processor's order and repeated in time
    by one index_select. A 336-px crop takes ~0.3 ms this way against ~0.45 ms as a strided
    copy of the planes and ~0.7 ms as bytes reordered, then normalised in float passes
    (pixels_from_bytes), whose channel-interleaved reads cannot be vectorised. One image at a
    time, so that its planes stay in the cache."""
    import cv2
    import torch

    p, m, t = image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size
    (height, width, _), n = arrays[0].shape, len(arrays)
    tables = _pixel_tables(tuple(image_processor.image_mean), tuple(image_processor.image_std),
                           image_processor.rescale_factor)
    order = _patch_row_order(height, width, p, m, t)
    planes = torch.empty(3, height, width, dtype=torch.float32)                              # [C, H, W]
    pixels = torch.empty(n, len(order), p, dtype=torch.float32)                              # [N, patch rows, p]
    for image, image_pixels in zip(arrays, pixels):
        for table, channel, plane in zip(tables, cv2.split(image), planes.numpy()):
            if cv2.LUT(channel, table, dst=plane) is not plane:  # an OpenCV that would not write in place
                plane[...] = cv2.LUT(channel, table)
        torch.index_select(planes.view(-1, p), 0, order, out=image_pixels)
    return pixels.view(n * (height // p) * (width // p), 3 * t * p * p)


@functools.lru_cache(maxsize=8)
def _patch_row_order(height: int, width: int, p: int, m: int, t: int):
    """For each p-float run of pixel_values, in the processor's patch order (merge blocks row by
    row, 2x2 patches within, each patch C x t x p x p), the index of its run in the channel
    planes [C, H, W] viewed as [C * H * W / p, p]."""
    import torch

    gh, gw = height // p, width // p
    runs = torch.arange(3 * height * width // p, dtype=torch.int32).view(3, gh // m, m, p, gw // m, m, 1)  # [C, H, W / p]
    return runs.permute(1, 4, 2, 5, 0, 3, 6).unsqueeze(5).expand(
        gh // m, gw // m, m, m, 3, t, p, 1).reshape(-1)


@functools.lru_cache(maxsize=8)
def _pixel_tables(mean, std, rescale_factor) -> list[np.ndarray]:
    """Per channel, the normalised value of each byte as a [1, 256] float32 lookup table,
    computed as the processor computes it (rescaled in float64, normalised in float32)."""
    rescaled = (np.arange(256) * rescale_factor).astype(np.float32)
    return [((rescaled - np.float32(mu)) / np.float32(sigma)).reshape(1, 256) for mu, sigma in zip(mean, std)]


def pixels_from_bytes(patch_bytes, image_processor):
    """The processor's pixel_values [patches, 3 * 2 * 14 * 14] float32 from image_patches'
    patch_bytes, on their device, equal to the last bit: each byte looked up in its channel's
    table (_pixel_tables, as _normalised_patches does on the CPU), repeated in time."""
    import torch

    t, device = image_processor.temporal_patch_size, patch_bytes.device
    tables = _pixel_tables(tuple(image_processor.image_mean), tuple(image_processor.image_std),
                           image_processor.rescale_factor)
    table = torch.from_numpy(np.concatenate(tables, axis=1)).to(device).view(-1)                # [3 * 256]
    channels = torch.arange(0, 3 * 256, 256, device=device).view(1, 3, 1)
    pixels = table[patch_bytes.view(len(patch_bytes), 3, -1).long() + channels]               # [P, C, p * p]
    return pixels.unsqueeze(2).expand(-1, -1, t, -1).reshape(len(pixels), -1)


def collate(examples: list[dict], pad_token_id: int) -> dict:
    """Pad a list of build_inputs(..., return_tensors=False) results into one batch, on the
    left: every row ends where its answer begins (generation) or ends (training), so the
    answers of all rows sit in the same last columns."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    pads = {"input_ids": pad_token_id, "attention_mask": 0, "mm_token_type_ids": 0, "labels": -100}
    batch = {}
    for key, pad in pads.items():
        if key not in examples[0]:
            continue
        rows = []
        for e in examples:
            filler = [pad] * (width - len(e[key]))
            rows.append(filler + e[key])
        batch[key] = torch.tensor(rows)
    pixels = "patch_bytes" if "patch_bytes" in examples[0] else "pixel_values"
    batch[pixels] = torch.cat([e[pixels] for e in examples])
    batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in examples])
    return batch


VISION_TOKENS = (IMAGE_PAD, "<|video_pad|>", VISION_START, "<|vision_end|>")


def vision_token_ids(tokenizer) -> list[int]:
    """Placeholders an answer must never contain: fed back to the model (as GRPO does),
    an <|image_pad|> would stand for image features that are not there."""
    return [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]


def answer_token_limit(think: bool, as_published_client=False) -> int:
    """The longest answer asked for: a box is about 20 tokens; reasoning gets the 512 the
    published think models were trained with, which the published client asked for always
    (a greedy answer is the same, only never cut short)."""
    return 512 if think or as_published_client else 48


def greedy_config(processor, max_new_tokens: int):
    """Plain greedy decoding, whatever sampling defaults the checkpoint ships with."""
    from transformers import GenerationConfig

    tokenizer = processor.tokenizer
    end_ids = [tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.pad_token_id]
    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=end_ids,
                            pad_token_id=tokenizer.pad_token_id, repetition_penalty=1.0,
                            suppress_tokens=vision_token_ids(tokenizer))


def generate_answers(model, processor, batch: dict, generation_config=None, synced=False, confidences=False):
    """Decoded answers of a (left-padded) batch; greedy unless told otherwise. synced: every
    rank steps until all ranks are done (a sharded model's forward is a collective).
    confidences: also each answer's answer_confidence, from the scores generate computes."""
    import torch

    generation_config = copy.copy(generation_config or greedy_config(processor, answer_token_limit(think=False)))
    # in the config, not beside it: generate warns that passing both is deprecated
    generation_config.return_dict_in_generate, generation_config.output_scores = True, confidences
    batch = {k: v.to(model.device) for k, v in batch.items() if k != "labels"}
    # a sharded model's gathered weights must not become inference tensors: training writes them later
    with torch.no_grad() if synced else torch.inference_mode():
        out = model.generate(**batch, generation_config=generation_config, synced_gpus=synced)
    new_tokens = out.sequences[:, batch["input_ids"].shape[1]:]
    texts = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    if not confidences:
        return texts
    # scores: one [rows, vocabulary] tensor per generated position; the chosen tokens' log-probabilities
    chosen = torch.stack([step.float().log_softmax(-1).gather(1, new_tokens[:, i:i + 1])[:, 0]
                          for i, step in enumerate(out.scores)], 1)
    pad = processor.tokenizer.pad_token_id
    rows = [[t for t in row if t != pad] for row in new_tokens.tolist()]
    return texts, [answer_confidence(processor.tokenizer, ids, chosen[r, :len(ids)].tolist())
                   for r, ids in enumerate(rows)]


# -----------------------------------------------------------------------------
# Tracking: the published loop. Each frame is a request (template crop, search crop,
# template box) to an answerer (a local model, an OpenAI-compatible server, or any
# function), and the answer becomes the next box. Answerers take a list of requests, so
# several sequences can share one batched model call.


class Request(NamedTuple):
    template: np.ndarray | Image.Image  # the crops as the model sees them: RGB arrays (published loop) or PIL
    search: np.ndarray | Image.Image
    template_box_xyxy: list
    state: dict | None = None  # the sequence's scratch space, kept by its tracker for the answerer
    jpegs: tuple | None = None  # the crops' JPEG bytes (the published loop): what a server is sent


def answer_confidence(tokenizer, token_ids, logprobs) -> float | None:
    """How sure the model was of the box it answered: the geometric mean of the probabilities
    of the tokens that carry its numbers (those after the answer's last "["; digits elsewhere,
    as in reasoning, do not count), from the log-probabilities of the chosen tokens. None when
    the answer holds no number."""
    pieces = tokenizer.convert_ids_to_tokens(list(token_ids))
    opened = [i for i, piece in enumerate(pieces) if "[" in piece]
    start = opened[-1] if opened else 0
    numbers = [logprob for piece, logprob in zip(pieces[start:], logprobs[start:])
               if any(c.isdigit() for c in piece)]
    if not numbers:
        return None
    return float(math.exp(sum(numbers) / len(numbers)))


class ModelAnswerer:
    """Greedy answers from a local Qwen2.5-VL through `generate`, the whole prompt every
    frame, batched with left padding. min_new_tokens holds the end back (for timing
    random weights with answers of a realistic length). Each answer's confidence
    (answer_confidence, from the scores generate already computes) goes to its request's state."""

    def __init__(self, model, processor, settings: TrackSettings, max_new_tokens=None, min_new_tokens=0):
        self.model, self.processor, self.settings = model, processor, settings
        self.config = greedy_config(processor, max_new_tokens or answer_token_limit(settings.think))
        self.config.min_new_tokens = min_new_tokens

    def __call__(self, requests: list[Request]) -> list[str]:
        s = self.settings
        examples = [build_inputs(self.processor, r.template, r.search, r.template_box_xyxy, think=s.think,
                                 wording=s.wording, return_tensors=False, as_published_client=s.asks_as_client)
                    for r in requests]
        batch = collate(examples, self.processor.tokenizer.pad_token_id)
        texts, confidences = generate_answers(self.model, self.processor, batch, self.config, confidences=True)
        for request, confidence in zip(requests, confidences):
            if request.state is not None:
                request.state["confidence"] = confidence
        return texts


class ServerError(ConnectionError):
    """An answer server that cannot be reached or does not answer as OpenAI's chat API does
    (an OSError: every script says it in one line)."""


def _post_json(url: str, payload=None, timeout=120):
    import urllib.error
    import urllib.request

    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace").strip().splitlines()
        raise ServerError(f"{url} answered HTTP {error.code}{': ' + detail[0][:200] if detail else ''}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ServerError(f"cannot reach {url}: {getattr(error, 'reason', error)}") from None
    except ValueError:
        raise ServerError(f"{url} did not answer JSON") from None


def server_v1_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def served_model_name(url: str, timeout=120) -> str:
    """The first model an OpenAI-compatible server serves (its /v1/models)."""
    listing = _post_json(server_v1_url(url) + "/models", timeout=timeout)
    try:
        return listing["data"][0]["id"]
    except (KeyError, IndexError, TypeError):
        raise ServerError(f"{url}/models lists no model") from None


class ServerAnswerer:
    """Answers from an OpenAI-compatible chat server (vLLM, SGLang, ...), the deployment the
    published R1-Track scripts used, temperature 0. The published loop sends what the
    published client sent: no system message, the crops as JPEG data URLs; the lenient loop
    sends the system message and lossless PNG crops. A server that fails is a ServerError
    (the published client quietly reused the previous answer instead)."""

    def __init__(self, url: str, settings: TrackSettings, model_name=None, max_new_tokens=None, timeout=120):
        self.url = server_v1_url(url)
        self.settings, self.timeout = settings, timeout
        self.max_tokens = max_new_tokens or answer_token_limit(settings.think, settings.asks_as_client)
        self.model_name = model_name or served_model_name(url, timeout)

    @staticmethod
    def _data_url(image, jpeg: bytes | None) -> str:
        import base64
        import io

        if jpeg is not None:
            return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        buffer = io.BytesIO()
        as_pil(image).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    def _chat(self, request: Request) -> str:
        s = self.settings
        # the images stand as their index (0 template, 1 search) until they become data URLs
        messages = build_messages(request.template_box_xyxy, think=s.think, wording=s.wording,
                                  images=(0, 1), as_published_client=s.asks_as_client)
        crops, jpegs = (request.template, request.search), request.jpegs or (None, None)
        messages[-1]["content"] = [
            {"type": "image_url", "image_url": {"url": self._data_url(crops[part["image"]], jpegs[part["image"]])}}
            if part["type"] == "image" else part for part in messages[-1]["content"]]
        payload = {"model": self.model_name, "messages": messages, "temperature": 0.0, "max_tokens": self.max_tokens}
        reply = _post_json(self.url + "/chat/completions", payload, self.timeout)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"{self.url}/chat/completions answered without a message: {str(reply)[:200]}") from None

    def __call__(self, requests: list[Request]) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, len(requests))) as pool:
            return list(pool.map(self._chat, requests))


def function_answerer(answer_fn):
    """An answerer over `answer_fn(template_img, search_img, template_box_xyxy) -> str`."""
    return lambda requests: [answer_fn(as_pil(r.template), as_pil(r.search), r.template_box_xyxy) for r in requests]


def check_init_box(box_xywh, width: int, height: int) -> list[float]:
    """The initial box as floats, or ValueError saying what is wrong with it."""
    try:
        box = [float(v) for v in box_xywh]
    except (TypeError, ValueError):
        raise ValueError(f"a box is four numbers, got {box_xywh!r}") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise ValueError(f"a box is four finite numbers, got {box_xywh!r}")
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise ValueError(f"the box has no area (width {w:g}, height {h:g})")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise ValueError(f"the box {box} lies outside the {width}x{height} frame")
    return box


# Target-loss recovery (off by default, as the published loop has none): after an answer
# that fails, or one less sure than LOST_BELOW, the search square grows by this factor per
# frame, up to the largest factor.
RECOVERY_GROWTH = 1.5
RECOVERY_MAX_FACTOR = 12.0
LOST_BELOW = 0.5  # a frame whose answer's confidence is lower counts the target as lost


class Tracker:
    """The R1-Track loop behind the GOT-10k toolkit's interface (init, update, track over a
    sequence's files, name, is_deterministic); PytrackingTracker is the same behind pytracking's.

    Built from a model name or folder (`Tracker("WangBiao/R1-Track-GRPO-wo-Think-100k")`),
    a loaded `(model, processor)`, an OpenAI-compatible server (`Tracker(server=URL)`), or
    `answer_fn(template_img, search_img, template_box_xyxy) -> str`. The prompt wording,
    think mode, crop size, factors and loop come from `settings` (a TrackSettings, or the
    checkpoint folder, hub id or r1track.json to read them from), else from the model's own,
    else (a server) from the served model's name; keyword arguments override single values.
    A local model answers through FastAnswerer (template reuse, drafting; the same greedy
    answers); fast=False asks plain `generate` with the whole prompt every frame.

    Each frame: search crop around the previous box -> answer -> box clamped to the crop; an
    unusable or empty answer reuses the previous answer -> back to the frame. loop="published"
    then applies the published frame-edge rule (a box touching the frame's edge is not taken:
    the previous box and answer stay); "lenient" clamps the box into the frame. `fallbacks`
    counts the answers of the sequence that could not be used, `edge_holds` the boxes refused
    by the frame-edge rule. After each frame `confidence` says how sure the model was of its
    box (answer_confidence; None where the answerer cannot say) and `lost` whether that is
    below `lost_below`; with recover=True a lost frame, like an unusable answer, keeps the last
    box and widens the next search.
    """

    is_deterministic = True  # greedy decoding

    def __init__(self, model=None, *, server=None, answer_fn=None, server_model=None, settings=None, crop_size=None,
                 template_factor=None, search_factor=None, think=None, wording=None, loop=None, device=None,
                 dtype=None, recover=False, max_new_tokens=None, name=None, fast=True, lost_below=LOST_BELOW):
        if sum(x is not None for x in (model, server, answer_fn)) != 1:
            raise ValueError("give exactly one of: a model (name, folder or (model, processor)), server=, answer_fn=")
        loaded = None
        if isinstance(model, (str, os.PathLike)):
            loaded = load_model(str(model), dtype=dtype, device=device)
            name = name or f"R1-Track[{Path(str(model)).name}]"
        elif model is not None:
            loaded = model
        if server is not None and server_model is None:
            server_model = served_model_name(server)
        own = getattr(loaded[0], "r1track_settings", None) if loaded is not None else None
        if isinstance(settings, TrackSettings):
            settings = dataclasses.replace(settings)
        elif settings is not None:
            settings = load_settings(str(settings))
        elif own is not None:
            settings = dataclasses.replace(own)
        elif server is not None:
            settings = load_settings(server_model)
        else:
            settings = TrackSettings()
            if loaded is not None:
                say_default_settings(getattr(loaded[0], "name_or_path", None) or "the model", settings)
        overrides = dict(crop_size=crop_size, template_factor=template_factor, search_factor=search_factor,
                         think=think, wording=wording, loop=loop)
        self.settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        if self.settings.loop not in LOOPS:
            raise ValueError(f"unknown loop {self.settings.loop!r}; choose one of {', '.join(LOOPS)}")
        if loaded is not None:
            from fast_decoder import FastAnswerer  # it builds on this module

            answerer = FastAnswerer if fast else ModelAnswerer
            self.answerer = answerer(*loaded, self.settings, max_new_tokens)
        elif server is not None:
            self.answerer = ServerAnswerer(server, self.settings, server_model, max_new_tokens)
        else:
            self.answerer = function_answerer(answer_fn)
        self.name = name or "R1-Track"
        self.recover, self.lost_below = recover, lost_below
        self.fallbacks = self.edge_holds = 0
        self.confidence, self.lost = 1.0, False

    # -- the GOT-10k toolkit's interface --

    def init(self, image, box_xywh):
        frame = self._frame(image)
        box_xywh = check_init_box(box_xywh, *_frame_size(frame))
        s = self.settings
        crop, self.template_box_xyxy, _, _ = crop_around(frame, box_xywh, s.template_factor, s.crop_size, loop=s.loop)
        self.template, self.template_jpeg = self._model_image(crop)
        self.previous_answer_xyxy = self.template_box_xyxy  # the answer reused before a first good one
        self.box_xywh = box_xywh
        self.fallbacks = self.edge_holds = self.misses = 0
        self.confidence, self.lost = 1.0, False  # the given box
        self.state = {}  # the answerer's per-sequence cache (e.g. the template's keys and values)

    def update(self, image) -> list[float]:
        return update_batch([self], [image])[0]

    def track(self, img_files, box_xywh, visualize=False):
        """The GOT-10k toolkit's run of a whole sequence: (boxes_xywh, seconds per frame)."""
        import time

        boxes, times = np.zeros((len(img_files), 4)), np.zeros(len(img_files))
        for f, path in enumerate(img_files):
            image = read_frame(path)
            start = time.perf_counter()
            if f == 0:
                self.init(image, box_xywh)
                boxes[0] = self.box_xywh
            else:
                boxes[f] = self.update(image)
            times[f] = time.perf_counter() - start
        return boxes, times

    # -- one frame in two halves, so that many sequences can share one model call --

    def request(self, image) -> Request:
        """The question for this frame: template, search crop around the last box, template box."""
        frame = self._frame(image)
        s = self.settings
        factor = s.search_factor
        if self.recover and self.misses:
            factor = min(s.search_factor * RECOVERY_GROWTH ** self.misses, max(RECOVERY_MAX_FACTOR, s.search_factor))
        crop, _, scale, origin = crop_around(frame, self.box_xywh, factor, s.crop_size, loop=s.loop)
        search, search_jpeg = self._model_image(crop)
        self.search_geometry = (scale, origin, _frame_size(frame))  # the crop's scale, corner and frame size
        jpegs = (self.template_jpeg, search_jpeg) if search_jpeg else None
        return Request(self.template, search, self.template_box_xyxy, self.state, jpegs)

    def accept(self, answer: str) -> list[float]:
        """The frame box (x, y, w, h) from the answer to the last request. `confidence` becomes
        the answer's (answer_confidence; 0 for an unusable answer; None where the answerer
        cannot say, as a server or a function), and `lost` whether it is below `lost_below`."""
        published = self.settings.loop == "published"
        box = parse_answer(answer, think=self.settings.think, strict=published)
        if box is not None:
            box = clamp_box_xyxy(box, self.settings.crop_size)
            if box[2] <= box[0] or box[3] <= box[1]:
                box = None
        self.confidence = self.state.pop("confidence", None) if box is not None else 0.0
        self.lost = self.confidence is not None and self.confidence < self.lost_below
        if box is None:
            self.fallbacks += 1
            if self.recover:  # keep the last box and look wider next frame
                self.misses += 1
                return list(self.box_xywh)
            box = self.previous_answer_xyxy
        elif self.recover and self.lost:  # an answer the model doubts: hold the box, look wider
            self.misses += 1
            return list(self.box_xywh)
        self.misses = 0
        scale, origin, (width, height) = self.search_geometry
        box_xywh = crop_to_frame(box, scale, origin)
        if published and touches_frame_edge(box_xywh, width, height):
            self.edge_holds += 1  # the published rule: keep the last box, and the last answer
            return list(self.box_xywh)
        self.previous_answer_xyxy = box
        self.box_xywh = box_xywh if published else clamp_box_xywh_to_frame(box_xywh, width, height)
        return list(self.box_xywh)

    def _frame(self, image):
        """Frames as each loop cuts them: arrays for OpenCV, PIL images for PIL."""
        return as_array(image) if self.settings.loop == "published" else as_pil(image)

    def _model_image(self, crop: np.ndarray):
        """(the crop as the model sees it, its JPEG bytes or None)."""
        if self.settings.loop == "published":
            return jpeg_round_trip(crop)
        return Image.fromarray(crop), None


class PytrackingTracker(Tracker):
    """The Tracker behind pytracking's interface: initialize(image, info), track(image)."""

    def initialize(self, image, info: dict) -> dict:
        self.init(image, info["init_bbox"])
        return {}

    def track(self, image, info=None):
        return {"target_bbox": self.update(image)}


def _frame_size(frame) -> tuple[int, int]:
    return frame.size if isinstance(frame, Image.Image) else (frame.shape[1], frame.shape[0])


def touches_frame_edge(box_xywh, width: int, height: int) -> bool:
    """The published frame-edge rule: a box that, clamped into the frame, starts at its left or
    top edge, ends at its right or bottom edge, or is one pixel wide or high, is not taken."""
    x, y, w, h = box_xywh
    left, top = max(0, x), max(0, y)
    clamped_w, clamped_h = max(1, min(w, width - left)), max(1, min(h, height - top))
    return (left == 0 or top == 0 or clamped_w == 1 or clamped_h == 1
            or clamped_w == width - left or clamped_h == height - top)


def update_batch(trackers: list[Tracker], images, pool=None) -> list[list[float]]:
    """One frame for each of several trackers (copies of one tracker, one per sequence,
    sharing its answerer) in a single answerer call: a batch for a local model. With `pool`
    (a ThreadPoolExecutor) the crops are cut by its threads at once (OpenCV lets go of the GIL)."""
    answers = trackers[0].answerer(batch_requests(trackers, images, pool))
    return [tracker.accept(answer) for tracker, answer in zip(trackers, answers)]


def batch_requests(trackers: list[Tracker], images, pool=None) -> list[Request]:
    """Each tracker's request for its frame; with `pool`, cut by its threads at once."""
    if pool is None or len(trackers) == 1:
        return [tracker.request(image) for tracker, image in zip(trackers, images)]
    return list(pool.map(lambda tracker, image: tracker.request(image), trackers, images))


def tracker_from_args(args, device=None, name=None):
    """(the Tracker the tracking scripts' flags ask for, the loaded (model, processor) or None
    with a server): --model or --server and --server-model, the settings flags
    (add_settings_args), --recover, --dtype. What cannot be loaded is a UserError."""
    import torch

    options = dict(think=args.think, recover=args.recover, loop=args.loop, settings=args.settings)
    opencv_on_one_thread()  # the crops are cut here, whoever answers
    if args.server:
        try:
            return Tracker(server=args.server, server_model=args.server_model, **options), None
        except LoadError as error:
            raise LoadError(f"{error}; name the tracking settings with --settings") from None
    loaded = load_model(args.model, dtype=getattr(torch, args.dtype) if args.dtype else None, device=device)
    if loaded[0].device.type == "cpu":
        leave_a_core_for_reading()
    return Tracker(loaded, name=name, **options), loaded


def leave_a_core_for_reading() -> None:
    """For a model on the CPU: one core fewer for torch's threads, left to the threads that
    decode frames ahead. Torch's threads wait for each other at every operation, so one of
    them sharing its core with a decoder stalls them all: on 2 cores, the demo model at 336 px
    took 24 ms a frame with 2 threads, 52 ms while frames were decoded beside it, and 30 ms
    with 1 thread beside the decoder. OMP_NUM_THREADS, when set, is left as it is."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > 1:
        torch.set_num_threads(torch.get_num_threads() - 1)


def opencv_on_one_thread() -> None:
    """OpenCV's own thread pool off for tracking: each call runs on its caller's thread. A
    crop and its JPEG round trip are too small to share out: at 1080p, a crop took 0.76-0.82 ms
    and 1.4 ms of CPU time on OpenCV's 2 threads against 0.55-0.63 ms on one, the JPEG round
    trip 0.92-1.35 ms against 0.66-0.97 (in the tracking loop, after the model's pass, the
    two are even in time), and the second thread spins on the core frames are read on. The
    crops of a batch are cut in parallel by Python threads instead (batch_requests)."""
    import cv2

    cv2.setNumThreads(1)


def frame_readers(model_on_cpu: bool, most: int) -> int:
    """How many threads decode frames ahead of the tracker: `most`, but with the model on the
    CPU only as many as the cores torch's threads leave free (at least one): a decoder more
    preempts the model's own thread. On 2 cores, the demo model at 336 px with 1 torch thread
    ran at 0.78 of its rate alone with 4 readers and 0.95 with 1 (one stream of 1080p JPEGs;
    one reader decodes a frame in ~7 ms, faster than the model answers)."""
    if not model_on_cpu:
        return most
    import torch

    return max(1, min(most, (os.cpu_count() or 1) - torch.get_num_threads()))


# -----------------------------------------------------------------------------
# Text grounding: a box from a description, with Qwen2.5-VL's own grounding skill.

GROUNDING_MAX_PIXELS = 1024 * 28 * 28  # about a thousand image tokens


def locate_text(model, processor, image, description: str):
    """The box (x, y, w, h) of `description` in the image, or None. Qwen2.5-VL answers in
    pixels of the image it was shown; the frame is shrunk to a thousand image tokens first."""
    frame = as_pil(image)
    shown = frame
    if frame.width * frame.height > GROUNDING_MAX_PIXELS:
        ratio = math.sqrt(GROUNDING_MAX_PIXELS / (frame.width * frame.height))
        shown = frame.resize((max(28, int(frame.width * ratio)), max(28, int(frame.height * ratio))), Image.BILINEAR)
    messages = [{"role": "user", "content": [
        {"type": "image", "image": shown},
        {"type": "text", "text": f"Locate {description} in the image and output its bbox coordinates in JSON format."}]}]
    inputs = encode_chat(processor, messages, [shown])
    answer = generate_answers(model, processor, inputs, greedy_config(processor, 128))[0]
    _, grid_h, grid_w = inputs["image_grid_thw"][0].tolist()
    seen_w, seen_h = grid_w * 14, grid_h * 14  # the size the model saw after its own resizing
    return grounding_box_xywh(answer, (seen_w, seen_h), frame.size)


def grounding_box_xywh(answer: str, seen_size, frame_size):
    """A grounding answer (`{"bbox_2d": [x1, y1, x2, y2], ...}` in pixels of the image the
    model saw) as a frame box, or None when it holds no usable box."""
    box = parse_answer(answer)
    if box is None:
        return None
    sx, sy = frame_size[0] / seen_size[0], frame_size[1] / seen_size[1]
    x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    if x2 <= x1 or y2 <= y1:
        return None
    return clamp_box_xywh_to_frame(xyxy_to_xywh([x1, y1, x2, y2]), *frame_size)
