"""Box maths, checked against areas counted cell by cell on a grid (not the formulas)."""
import math
import random

import numpy as np
import pytest

from boxes import clamp_box_xywh_to_frame, clamp_box_xyxy, giou_xyxy, iou_xyxy, xywh_to_xyxy, xyxy_to_xywh


def raster(box, size=60):
    grid = np.zeros((size, size), bool)
    x1, y1, x2, y2 = box
    grid[y1:y2, x1:x2] = True
    return grid


def counted_iou_giou(a, b):
    A, B = raster(a), raster(b)
    inter, union = (A & B).sum(), (A | B).sum()
    hull = raster((min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))).sum()
    iou = inter / union
    return iou, iou - (hull - union) / hull


def random_box(rng):
    x1, y1 = rng.randrange(0, 50), rng.randrange(0, 50)
    return (x1, y1, rng.randrange(x1 + 1, 60), rng.randrange(y1 + 1, 60))


def test_iou_and_giou_match_counted_areas_on_random_boxes():
    rng = random.Random(0)
    for _ in range(300):
        a, b = random_box(rng), random_box(rng)
        iou, giou = counted_iou_giou(a, b)
        assert iou_xyxy(a, b) == pytest.approx(iou, abs=1e-9)
        assert giou_xyxy(a, b) == pytest.approx(giou, abs=1e-9)
        assert iou_xyxy(a, b) == pytest.approx(iou_xyxy(b, a))


def test_identical_boxes():
    assert iou_xyxy([3, 4, 10, 20], [3, 4, 10, 20]) == 1.0
    assert giou_xyxy([3, 4, 10, 20], [3, 4, 10, 20]) == 1.0


def test_disjoint_boxes_have_zero_iou_and_negative_giou():
    # union 200, enclosing box 30 x 10 = 300: GIoU = 0 - 100 / 300
    assert iou_xyxy([0, 0, 10, 10], [20, 0, 30, 10]) == 0.0
    assert giou_xyxy([0, 0, 10, 10], [20, 0, 30, 10]) == pytest.approx(-1 / 3)
    # far apart, the GIoU tends to -1
    assert -1 < giou_xyxy([0, 0, 1, 1], [1000, 1000, 1001, 1001]) < -0.99


@pytest.mark.parametrize("empty", [[5, 5, 5, 10], [5, 5, 10, 5], [5, 5, 5, 5], [10, 10, 5, 5], [10, 5, 5, 10]])
def test_empty_or_inverted_boxes_have_zero_iou(empty):
    for other in ([0, 0, 20, 20], empty):
        value = iou_xyxy(empty, other)
        assert value == 0.0 and not math.isnan(value)


def test_giou_of_inverted_box_is_minus_one_and_never_nan():
    assert giou_xyxy([10, 10, 5, 5], [0, 0, 20, 20]) == -1.0
    for a, b in [([5, 5, 5, 5], [5, 5, 5, 5]), ([5, 5, 5, 10], [0, 0, 20, 20])]:
        assert not math.isnan(giou_xyxy(a, b))
        assert -1.0 <= giou_xyxy(a, b) <= 1.0


def test_box_format_round_trip():
    rng = random.Random(1)
    for _ in range(50):
        box = [rng.uniform(-50, 500) for _ in range(2)] + [rng.uniform(0.1, 300) for _ in range(2)]
        assert xyxy_to_xywh(xywh_to_xyxy(box)) == pytest.approx(box)
    assert xywh_to_xyxy([10, 20, 5, 7]) == [10, 20, 15, 27]
    assert xyxy_to_xywh([10, 20, 15, 27]) == [10, 20, 5, 7]


def test_clamp_answer_to_crop():
    assert clamp_box_xyxy([-5, 10, 400, 336.5], 336) == [0, 10, 336, 336]


@pytest.mark.parametrize("box, expected", [
    ([10, 20, 30, 40], [10, 20, 30, 40]),          # inside: unchanged
    ([-10, -5, 30, 40], [0, 0, 20, 35]),            # over the top-left corner
    ([90, 50, 30, 80], [90, 50, 10, 50]),           # over the bottom-right corner
    ([150, 150, 10, 10], [99, 99, 1, 1]),           # wholly outside: one pixel in the corner
    ([10, 20, 0, 0], [10, 20, 1, 1]),               # no area: one pixel
])
def test_clamp_to_frame(box, expected):
    assert clamp_box_xywh_to_frame(box, 100, 100) == pytest.approx(expected)
