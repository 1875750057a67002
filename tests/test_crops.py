"""The published crop: a square of side ceil(sqrt(w*h)*factor) around the box
centre, zero padding outside the frame, resized to size x size; in the published loop cut as
OpenCV cuts it, in the lenient loop with PIL's antialiasing."""
import math
import random

import numpy as np
import published_r1track
import pytest
from PIL import Image

from boxes import crop_around, crop_to_frame

RED = (255, 0, 0)


def frame_with_box(width, height, box_xywh, background=(255, 255, 255)):
    frame = np.full((height, width, 3), background, np.uint8)
    x, y, w, h = (int(v) for v in box_xywh)
    frame[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = RED
    return Image.fromarray(frame)


def reference_geometry(box_xywh, factor, size):
    x, y, w, h = box_xywh
    side = math.ceil(math.sqrt(w * h) * factor)
    x1 = round(x + w / 2 - side / 2)
    y1 = round(y + h / 2 - side / 2)
    scale = size / side
    return [(x - x1) * scale, (y - y1) * scale, (x - x1 + w) * scale, (y - y1 + h) * scale], scale, (x1, y1)


def red_extent(crop):
    pixels = np.asarray(crop).astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 128) & (pixels[..., 2] < 128)  # nearer red than white
    ys, xs = np.nonzero(red)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_geometry_matches_reference_on_random_boxes():
    rng = random.Random(0)
    for _ in range(200):
        box = [rng.uniform(-40, 600), rng.uniform(-40, 400), rng.uniform(2, 200), rng.uniform(2, 200)]
        factor, size = rng.uniform(2, 8), rng.choice([112, 336])
        crop, box_in_crop, scale, origin = crop_around(Image.new("RGB", (640, 480)), box, factor, size)
        expected_box, expected_scale, expected_origin = reference_geometry(box, factor, size)
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
        assert box_in_crop == pytest.approx(expected_box)
        assert scale == pytest.approx(expected_scale)
        assert tuple(origin) == expected_origin


@pytest.mark.parametrize("loop", ["published", "lenient"])
def test_target_pixels_land_on_the_box_in_crop(loop):
    rng = random.Random(1)
    for _ in range(40):
        w, h = rng.randrange(10, 80), rng.randrange(10, 80)
        box = [rng.randrange(0, 320 - w), rng.randrange(0, 240 - h), w, h]
        factor = rng.uniform(2, 5)
        crop, box_in_crop, _, _ = crop_around(frame_with_box(320, 240, box), box, factor, 336, loop=loop)
        assert red_extent(crop) == pytest.approx(box_in_crop, abs=1.5)


@pytest.mark.parametrize("loop", ["published", "lenient"])
def test_outside_the_frame_is_black_padding(loop):
    box = [0, 0, 40, 40]  # in the top-left corner: the crop's top-left part lies outside
    crop, box_in_crop, scale, origin = crop_around(frame_with_box(200, 200, box), box, 4, 160, loop=loop)
    assert origin == (-60, -60)
    pixels = np.asarray(crop)
    pad = round(60 * scale)
    assert (pixels[:pad - 1, :] == 0).all() and (pixels[:, :pad - 1] == 0).all()
    assert (pixels[pad + 1:, pad + 1:].sum(-1) > 0).all()  # the frame itself: red or white


@pytest.mark.parametrize("loop", ["published", "lenient"])
@pytest.mark.parametrize("box", [[500, 500, 20, 20], [40, -300, 20, 20], [-300, 40, 20, 20]])
def test_box_wholly_outside_the_frame_gives_a_black_crop(loop, box):
    crop, _, _, _ = crop_around(Image.new("RGB", (100, 100), "white"), box, 4, 112, loop=loop)
    assert not np.asarray(crop).any()


@pytest.mark.parametrize("loop", ["published", "lenient"])
def test_huge_crop_does_not_allocate_the_square(loop):
    # a factor-8 square of a 4000 x 3000 box is 27,713 px a side (2.3 GB padded)
    crop, box_in_crop, _, _ = crop_around(Image.new("RGB", (4000, 3000), "white"), [0, 0, 4000, 3000], 8, 336,
                                          loop=loop)
    assert crop.shape == (336, 336, 3)
    x1, y1, x2, y2 = (round(v) for v in box_in_crop)
    assert (crop[y1 + 2:y2 - 2, x1 + 2:x2 - 2] == 255).all()  # the frame, white
    assert not crop[:y1 - 2].any() and not crop[y2 + 2:].any()  # black around it


def test_huge_published_crop_samples_as_opencv_resize(monkeypatch):
    """Above MAX_OPENCV_SIDE the square is not padded first; its pixels are still OpenCV's
    bilinear samples of the frame (nearly to the grey level: the warp's coordinates are
    fixed-point)."""

    frame = np.random.default_rng(4).integers(0, 256, size=(700, 900, 3), dtype=np.uint8)
    box = [600, -40, 300, 250]  # the square hangs over the top and right edges
    exact, _, _, _ = crop_around(frame, box, 4, 336)
    monkeypatch.setattr("boxes.MAX_OPENCV_SIDE", 100)
    warped, _, _, _ = crop_around(frame, box, 4, 336)
    difference = np.abs(exact.astype(int) - warped.astype(int))
    assert difference.mean() < 0.5 and np.percentile(difference, 99) <= 2


def test_published_crop_equals_the_published_scripts_opencv_crop():
    """Bit for bit, boxes and pixels, against the transcription of the published crop (the
    far-edge padding included), on boxes everywhere in a 1920x1080 frame and off it."""
    rng = np.random.default_rng(3)
    frame_rgb = rng.integers(0, 256, size=(1080, 1920, 3), dtype=np.uint8)
    frame_bgr = np.ascontiguousarray(frame_rgb[..., ::-1])
    for _ in range(60):
        w, h = rng.uniform(4, 700), rng.uniform(4, 500)
        box = [float(rng.uniform(-w, 1920)), float(rng.uniform(-h, 1080)), float(w), float(h)]
        factor = float(rng.uniform(2, 8))
        ours, box_in_crop, scale, origin = crop_around(frame_rgb, box, factor, 336)
        theirs, their_scale, their_box, their_corner = published_r1track.sample_target(frame_bgr, box, factor, 336)
        assert box_in_crop == their_box and scale == their_scale and list(origin) == their_corner
        assert np.array_equal(ours, theirs[..., ::-1]), box
        assert crop_to_frame(box_in_crop, scale, origin) == published_r1track.map_bbox_back(
            their_scale, their_corner, their_box)


def test_big_published_crop_fills_only_the_rows_it_reads(monkeypatch):
    """Squares much bigger than the crop are padded only in the rows the resize reads; the
    rows left unwritten are filled with junk here, and the pixels still equal the published
    crop's, bit for bit."""

    empty, junk_squares = np.empty, []

    def junk_empty(shape, dtype=float):
        array = empty(shape, dtype)
        array.fill(len(junk_squares) % 2 * 255 or 77)
        junk_squares.append(shape)
        return array

    rng = np.random.default_rng(8)
    frame_rgb = rng.integers(0, 256, size=(1080, 1920, 3), dtype=np.uint8)
    frame_bgr = np.ascontiguousarray(frame_rgb[..., ::-1])
    monkeypatch.setattr("boxes.np.empty", junk_empty)
    for _ in range(150):
        w, h = rng.uniform(100, 1500), rng.uniform(100, 1000)
        box = [float(rng.uniform(-w, 1920)), float(rng.uniform(-h, 1080)), float(w), float(h)]
        factor, size = float(rng.uniform(3, 8)), int(rng.choice([112, 336, 448]))
        ours = crop_around(frame_rgb, box, factor, size)[0]
        theirs = published_r1track.sample_target(frame_bgr, box, factor, size)[0]
        assert np.array_equal(ours, theirs[..., ::-1]), (box, factor, size)
    assert len(junk_squares) > 80  # the rows path ran


def test_lenient_crop_is_antialiased():
    """A one-pixel checkerboard shrunk threefold: PIL's filter averages it to grey, OpenCV's
    two-tap resize keeps sampling single pixels."""
    board = (np.indices((1008, 1008)).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, 2)
    box = [252, 252, 504, 504]
    lenient, _, _, _ = crop_around(board, box, 2, 336, loop="lenient")
    published, _, _, _ = crop_around(board, box, 2, 336)
    assert np.abs(lenient.astype(int) - 128).max() <= 2
    assert np.abs(published.astype(int) - 128).mean() > 60


@pytest.mark.parametrize("box", [[10, 10, 0, 5], [10, 10, 5, 0], [10, 10, -3, 5], [10, 10, float("nan"), 5]])
def test_box_without_area_is_refused(box):
    with pytest.raises(ValueError, match="area"):
        crop_around(Image.new("RGB", (100, 100)), box, 4, 112)


def test_crop_to_frame_inverts_the_crop():
    rng = random.Random(2)
    for _ in range(100):
        box = [rng.uniform(-40, 600), rng.uniform(-40, 400), rng.uniform(2, 200), rng.uniform(2, 200)]
        _, box_in_crop, scale, origin = crop_around(Image.new("RGB", (64, 48)), box, rng.uniform(2, 8), 336)
        assert crop_to_frame(box_in_crop, scale, origin) == pytest.approx(box)


def test_shift_moves_the_square_by_a_fraction_of_its_side():
    box = [100, 100, 50, 50]
    _, _, _, origin = crop_around(Image.new("RGB", (400, 400)), box, 2, 112)
    _, _, _, shifted = crop_around(Image.new("RGB", (400, 400)), box, 2, 112, shift_xy=(0.2, -0.1))
    assert shifted[0] - origin[0] == 20 and shifted[1] - origin[1] == -10


def test_jpeg_round_trip_decodes_as_pil_decodes(tmp_path):
    """The crop the model sees is decoded by OpenCV; a vLLM server (and the training data's
    readers) decode the same JPEG bytes with PIL: the pixels must be the same, on noise, smooth
    gradients, flat colour and a synthetic 1080p clip's crops, at 336 and 112 px."""
    import io

    import synthetic
    from benchmarks.got10k import read_got10k_sequence, read_got10k_split
    from boxes import jpeg_round_trip
    from frames import read_frame

    rng = np.random.default_rng(9)
    ramp = np.linspace(0, 255, 336, dtype=np.float32)
    crops = [rng.integers(0, 256, size=(336, 336, 3), dtype=np.uint8),
             np.stack([ramp[None, :].repeat(336, 0), ramp[:, None].repeat(336, 1), 255 - ramp[None, :].repeat(336, 0)],
                      -1).astype(np.uint8),
             np.full((112, 112, 3), (12, 200, 99), np.uint8)]
    split = synthetic.make_synthetic_got10k(tmp_path, "val", sequences=2, frames=3, size=(1920, 1080), seed=5)
    for name in read_got10k_split(split):
        sequence = read_got10k_sequence(split / name)
        for path, box in zip(sequence["frames"], sequence["boxes_xywh"]):
            crops += [crop_around(read_frame(path), box, factor, size)[0] for factor, size in ((4, 336), (2, 112))]
    for crop in crops:
        decoded, jpeg = jpeg_round_trip(crop)
        assert decoded.dtype == np.uint8 and decoded.shape == crop.shape
        assert np.array_equal(decoded, np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
        # RGB, not BGR: each channel's mean as the crop's
        assert np.abs(decoded.mean(axis=(0, 1)) - crop.mean(axis=(0, 1))).max() < 3


@pytest.mark.parametrize("direct_rgb", [True, False], ids=["opencv-4.11", "older-opencv"])
def test_frames_and_crops_decode_as_pil_with_or_without_direct_rgb(tmp_path, monkeypatch, direct_rgb):
    """OpenCV before 4.11 has no IMREAD_COLOR_RGB: frames and crops are then decoded as BGR and
    converted. Either way a frame file reads as PIL reads it, a crop's JPEG decodes as PIL
    decodes it, and a file that is no image is the usual one-line error."""
    import io

    import cv2

    from boxes import jpeg_round_trip
    from cli import UserError
    from frames import read_frame

    if not direct_rgb:
        monkeypatch.delattr(cv2, "IMREAD_COLOR_RGB", raising=False)
    rng = np.random.default_rng(3)
    frame = np.clip(rng.normal(128, 60, (120, 160, 3)), 0, 255).astype(np.uint8)
    frame[:, :80, 0] = 250  # a red left half: a swap of R and B would show
    path = tmp_path / "frame.jpg"
    Image.fromarray(frame).save(path, quality=90)
    read = read_frame(path)
    assert np.array_equal(read, np.asarray(Image.open(path).convert("RGB")))
    assert read[:, :80, 0].mean() > 200
    decoded, jpeg = jpeg_round_trip(frame)
    assert np.array_equal(decoded, np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="cannot decode"):
        read_frame(tmp_path / "broken.jpg")
