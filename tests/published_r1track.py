"""Reference transcription of the published R1-Track inference script.

What this is
------------
A re-statement, in our own words and structure, of the inference script that
the R1-Track authors published for GOT-10k evaluation (GitHub repository
``Wangbiao2/R1-Track``, files ``infer_script/r1track.py`` and
``infer_script/crop_image.py``).  Compatibility tests use it as an independent
yardstick: another implementation of the tracking loop must reproduce, frame by
frame, what the published script does - crops, prompt text, request bodies,
answer parsing, fallbacks and the frame-edge rule.

Every behaviour is kept identical to the published script, including the odd
ones, for example:

* the frame list is ordered by the integer formed from all digits of the file
  name (``0`` when there are none; ties keep ``os.listdir`` order);
* the "first ground-truth row" is obtained by stripping the WHOLE of
  ``groundtruth.txt`` and splitting it on commas, so a file holding more than
  one row yields ``[]`` (and the run then fails, exactly as the script does);
* the crop drops the last column/row of the frame when the square reaches the
  right/bottom edge (the ``+ 1`` in the far padding) and pads with zeros;
* the ``<BBOXFLAG>`` of the prompt is filled with the ``int()``-truncated
  template box, ``[a,b,c,d]`` without spaces;
* an answer that is unusable (HTTP error, bad JSON, failed ``<answer>`` match,
  list of the wrong length) falls back on the previous answer, while an answer
  that is a length-4 JSON value of the wrong kind (e.g. ``"abcd"`` or a list of
  strings) makes the clamp raise, just as it does in the script;
* a degenerate clamped answer reuses the previous answer; a mapped-back box
  that touches the frame edge (or collapses to width/height 1) is discarded:
  the previous frame box is repeated and the previous answer is NOT updated.

Deviations from the published script, and why
---------------------------------------------
* HTTP goes through ``urllib.request`` instead of ``requests`` (which may not
  be installed).  Same URL path, same ``Content-Type: application/json``
  header, the same body bytes (``json.dumps`` of the same dict, default
  separators), no timeout, and - as in the script - any exception while
  posting or parsing gives back the previous answer.  (Minor transport details
  differ: ``User-Agent``/keep-alive headers, and 3xx handling, which the
  script never relies on.)  The script built its URL from host and port;
  here it is ``base_url`` (a trailing "/" dropped) + ``/v1/chat/completions``.
* ``fail_count`` is initialised to 0 before the loop.  The published script
  only assigns it inside the loop, so ``fail_count += 1`` raised
  ``UnboundLocalError`` when a degenerate answer came before any usable one.
  The counter is never read, so initialising it has no other effect.
* No printing, no thread pool, no tqdm, no timing, no result files: one
  sequence is tracked and the results are returned (``result_rows`` gives the
  text the script would write into ``<seq>_001.txt``).

Only cv2 (opencv-python-headless) and the standard library are used; numpy
arrays are accepted wherever the script accepted them.
"""

import base64
import json
import math
import os
import re
import urllib.request

import cv2

# Sampling settings hard-wired in the published script's constructor defaults.
TEMPERATURE = 0
TOP_P = 0.5
TOP_K = 20

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

# The think-mode instruction as written in the script.  The "\n" is a real
# newline surrounded by single spaces; only its ends are stripped before it is
# joined to the task prompt with one space.
THINK_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and "
    "then provide the final answer. \n The reasoning process MUST BE enclosed "
    "within <think> </think> tags. The final answer MUST BE put in <answer> "
    "</answer> tags."
)
TASK_PROMPT = (
    "Please identify the target specified by the bounding box <BBOXFLAG> in "
    "the first image and locate it in the second image. Return the "
    "coordinates in [x_min,y_min,x_max,y_max] format."
)
ANSWER_PATTERN = r"^<think>.*</think>.*<answer>(.*?)</answer>$"


# --------------------------------------------------------------------------
# crop_image.py
# --------------------------------------------------------------------------

def sample_target(frame_bgr, box_xywh, factor, size):
    """Square crop around ``box_xywh`` of side ceil(sqrt(w*h)*factor), resized.

    Returns ``(crop, resize_factor, box_in_crop_xyxy, [x1, y1])`` where
    ``[x1, y1]`` is the (possibly negative) top-left corner of the square in
    frame coordinates and ``box_in_crop_xyxy`` holds floats.
    """
    if isinstance(box_xywh, list):
        x, y, w, h = box_xywh
    else:
        x, y, w, h = box_xywh.tolist()

    side = math.ceil(math.sqrt(w * h) * factor)
    if side < 1:
        raise Exception("Too small bounding box.")

    # Python round() (ties to even), not numpy.
    left = round(x + 0.5 * w - side * 0.5)
    top = round(y + 0.5 * h - side * 0.5)
    right = left + side
    bottom = top + side

    pad_left = max(0, -left)
    pad_top = max(0, -top)
    # The "+ 1" means the square never reaches the last column/row: that
    # column/row is replaced by padding instead.
    pad_right = max(right - frame_bgr.shape[1] + 1, 0)
    pad_bottom = max(bottom - frame_bgr.shape[0] + 1, 0)

    # Same slice bounds as the script (negative stops wrap around like numpy
    # does there, should a square lie completely outside the frame).
    window = frame_bgr[top + pad_top:bottom - pad_bottom,
                       left + pad_left:right - pad_right, :]
    crop = cv2.copyMakeBorder(window, pad_top, pad_bottom, pad_left, pad_right,
                              cv2.BORDER_CONSTANT)

    if size is None:
        scale = 1.0
    else:
        scale = size / side
        crop = cv2.resize(crop, (size, size))

    bx_min = (x - left) * scale
    by_min = (y - top) * scale
    bx_max = bx_min + w * scale
    by_max = by_min + h * scale
    return crop, scale, [bx_min, by_min, bx_max, by_max], [left, top]


def map_bbox_back(resize_factor, corner_xy, box_xyxy):
    """Map an x1y1x2y2 box of the resized crop back to frame x,y,w,h."""
    left, top = corner_xy
    bx_min, by_min, bx_max, by_max = box_xyxy
    fx_min = bx_min / resize_factor + left
    fy_min = by_min / resize_factor + top
    fx_max = bx_max / resize_factor + left
    fy_max = by_max / resize_factor + top
    return [fx_min, fy_min, fx_max - fx_min, fy_max - fy_min]


# --------------------------------------------------------------------------
# r1track.py
# --------------------------------------------------------------------------

def _frame_paths(video_dir):
    """Image files of the folder ordered by the digits of their names."""
    try:
        names = [n for n in os.listdir(video_dir)
                 if os.path.splitext(n.lower())[1] in IMAGE_EXTENSIONS]

        def digits_key(name):
            return int("".join(c for c in name if c.isdigit()) or 0)

        names = sorted(names, key=digits_key)
        return [os.path.abspath(os.path.join(video_dir, n)) for n in names]
    except Exception:
        return []


def _first_groundtruth(path):
    """The whole file, stripped, split on commas, as floats ([] on failure)."""
    try:
        with open(path, "r") as handle:
            text = handle.read().strip()
        return [float(part) for part in text.split(",")]
    except Exception:
        return []


def _build_prompt(think, template_box_int):
    text = TASK_PROMPT
    if think:
        text = " ".join((THINK_INSTRUCTION.strip(), text))
    return text.replace("<BBOXFLAG>", "[{},{},{},{}]".format(*template_box_int))


def _jpeg_data_url(image):
    _, encoded = cv2.imencode(".jpg", image)  # OpenCV default JPEG quality
    return "data:image/jpeg;base64," + base64.b64encode(encoded).decode("utf-8")


def _extract_answer(content):
    found = re.fullmatch(ANSWER_PATTERN, content, flags=re.DOTALL)
    return found.group(1) if found else 0.0


def _ask(url, body, think, previous):
    """POST the body and parse the answer; any failure gives ``previous``."""
    try:
        request = urllib.request.Request(
            url, data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request) as response:  # no timeout, as requests
            reply = json.loads(response.read())
        content = reply["choices"][0]["message"]["content"]
        if think:
            inner = _extract_answer(content)
            answer = json.loads(inner) if inner else previous
        else:
            answer = json.loads(content)
        if len(answer) != 4:
            return previous
        return answer
    except Exception:  # the script's bare except
        return previous


def track_video(video_dir, base_url, model_name="R1-Track", think=False, crop_size=336,
                template_factor=4.0, search_factor=4.0, max_tokens=512):
    """Track one GOT-10k-layout sequence folder (frames + groundtruth.txt) as the published script does,
    asking the OpenAI-compatible server at base_url (e.g. "http://127.0.0.1:8123").
    Returns {"boxes_xywh": [[x, y, w, h] per frame, the first the ground-truth row],
             "template_crop": BGR uint8 array (before JPEG), "template_box_xyxy": float list,
             "search_crops": [BGR uint8 array per tracked frame, before JPEG],
             "payloads": [the JSON body (dict) posted for each tracked frame]}"""
    url = "{}/v1/chat/completions".format(base_url.rstrip("/"))

    # --- initialisation at the first frame ---
    paths = _frame_paths(video_dir)
    first_box = _first_groundtruth(os.path.join(video_dir, "groundtruth.txt"))
    frame_box = first_box                   # last accepted box, x,y,w,h
    boxes = [first_box]

    first_frame = cv2.imread(paths[0])
    template_crop, _, template_box, _ = sample_target(
        first_frame, first_box, template_factor, crop_size)
    previous_answer = template_box          # last accepted answer, crop x1y1x2y2

    template_box_int = list(map(int, template_box))
    prompt = _build_prompt(think, template_box_int)
    template_url = _jpeg_data_url(template_crop)

    search_crops = []
    payloads = []

    # The published script never initialises fail_count and so raised
    # UnboundLocalError on a degenerate answer before any usable one; it is
    # initialised here.  It is never read, so this changes nothing else.
    fail_count = 0

    # --- tracking ---
    for path in paths[1:]:
        frame = cv2.imread(path)
        frame_h, frame_w, _ = frame.shape

        search_crop, scale, _, corner = sample_target(
            frame, frame_box, search_factor, crop_size)
        search_crops.append(search_crop)

        body = {
            "model": model_name,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "top_k": TOP_K,
            "max_tokens": max_tokens,
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": template_url}},
                    {"type": "image_url", "image_url": {"url": _jpeg_data_url(search_crop)}},
                    {"type": "text", "text": prompt},
                ],
            }],
        }
        payloads.append(body)
        answer = _ask(url, body, think, previous_answer)

        # Clamp every coordinate to [0, crop_size] (same expression order as
        # the script, so odd JSON values behave - or raise - the same way).
        clamped = [max(0, min(answer[0], crop_size)),
                   max(0, min(answer[1], crop_size)),
                   max(0, min(answer[2], crop_size)),
                   max(0, min(answer[3], crop_size))]
        if clamped[0] >= clamped[2] or clamped[1] >= clamped[3]:
            clamped = previous_answer
            fail_count += 1
        else:
            fail_count = 0

        mapped = map_bbox_back(scale, corner, clamped)

        x_min = max(0, mapped[0])
        y_min = max(0, mapped[1])
        box_w = max(1, min(mapped[2], frame_w - x_min))
        box_h = max(1, min(mapped[3], frame_h - y_min))
        touches_edge = (x_min == 0 or y_min == 0 or box_w == 1 or box_h == 1
                        or box_w == frame_w - x_min or box_h == frame_h - y_min)
        if touches_edge:
            # Keep the previous frame box; the previous answer stays as it was.
            boxes.append(frame_box)
            continue

        frame_box = mapped                  # the unclamped mapped-back box
        previous_answer = clamped
        boxes.append(frame_box)

    return {
        "boxes_xywh": [list(b) for b in boxes],
        "template_crop": template_crop,
        "template_box_xyxy": list(template_box),
        "search_crops": search_crops,
        "payloads": payloads,
    }


def result_rows(boxes_xywh):
    """The text the script writes into ``<seq>_001.txt``: str() of each value,
    comma-joined, one line per frame, each ending with a newline."""
    return "".join(",".join(map(str, row)) + "\n" for row in boxes_xywh)


__all__ = ["track_video", "sample_target", "map_bbox_back", "result_rows"]
