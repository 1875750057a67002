"""Box maths and the crops cut around boxes: format conversions (a box's format is in its
name: `box_xywh` (x, y, width, height) as GOT-10k files and frames use, `box_xyxy` (x_min,
y_min, x_max, y_max) as prompts, answers and rewards use), IoU and GIoU, clamps, the
published square crop (zero padding outside the frame) and the published JPEG round trip."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from frames import _opencv_rgb, as_array, as_pil


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


def touches_frame_edge(box_xywh, width: int, height: int) -> bool:
    """The published frame-edge rule: a box that, clamped into the frame, starts at its left or
    top edge, ends at its right or bottom edge, or is one pixel wide or high, is not taken."""
    x, y, w, h = box_xywh
    left, top = max(0, x), max(0, y)
    clamped_w, clamped_h = max(1, min(w, width - left)), max(1, min(h, height - top))
    return (left == 0 or top == 0 or clamped_w == 1 or clamped_h == 1
            or clamped_w == width - left or clamped_h == height - top)
