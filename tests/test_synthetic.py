"""Synthetic GOT-10k data: the official layout, readable by the official toolkit, with
labels that describe what is drawn."""
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import synthetic
from benchmarks import got10k

ROOT = Path(__file__).resolve().parents[1]


def test_official_toolkit_reads_it(got10k_root):
    from got10k.datasets import GOT10k

    dataset = GOT10k(str(got10k_root), subset="val", return_meta=True)
    assert len(dataset) == 6
    for frames, boxes_xywh, meta in dataset:
        assert len(frames) == len(boxes_xywh) == 24
        assert meta["resolution"] == "(320, 240)"
        for label in ("cover", "absence", "cut_by_image"):
            assert meta[label].shape == (24,)
        assert np.array_equal(meta["absence"] == 1, meta["cover"] == 0)
        assert meta["cover"][0] == 8  # the first frame shows the whole target
        assert Image.open(frames[0]).size == (320, 240)


def test_targets_move_change_scale_and_get_hidden(got10k_root):
    sequences = [got10k.read_got10k_sequence(got10k_root / "val" / n) for n in got10k.read_got10k_split(got10k_root / "val")]
    for s in sequences:
        boxes = s["boxes_xywh"]
        assert np.ptp(boxes[:, 0]) > 5 or np.ptp(boxes[:, 1]) > 5
        assert np.ptp(boxes[:, 2] * boxes[:, 3]) > 0.1 * boxes[0, 2] * boxes[0, 3]
        assert s["resolution"] == (320, 240)
    covers = np.concatenate([s["cover"] for s in sequences])
    assert (covers == 0).any() and ((covers > 0) & (covers < 8)).any() and (covers == 8).any()
    assert any(s["cut_by_image"].any() for s in sequences)


def _patch(frame_path, box_xywh):
    x, y, w, h = box_xywh
    region = (round(x) + 1, round(y) + 1, round(x + w) - 1, round(y + h) - 1)
    return np.asarray(Image.open(frame_path).convert("RGB").crop(region).resize((24, 24), Image.BILINEAR), float)


def test_ground_truth_follows_the_drawn_target(got10k_root):
    """In fully visible frames the patch under the ground-truth box looks like the first
    frame's target; the same box moved by its own width does not."""
    for name in got10k.read_got10k_split(got10k_root / "val"):
        s = got10k.read_got10k_sequence(got10k_root / "val" / name)
        target = _patch(s["frames"][0], s["boxes_xywh"][0])
        same, moved = [], []
        for t in np.nonzero(s["cover"] == 8)[0][1:]:
            x, y, w, h = s["boxes_xywh"][t]
            same.append(np.abs(_patch(s["frames"][t], (x, y, w, h)) - target).mean())
            moved.append(np.abs(_patch(s["frames"][t], (x + w, y, w, h)) - target).mean())
        assert np.mean(same) < 0.5 * np.mean(moved), name


def test_the_changing_style_drifts_from_the_first_look_beside_a_look_alike(tmp_path):
    """style="changing": by the last frame the target under its box no longer looks like its
    first frame (in the plain style it still does), its shape has stretched, and an object
    with the target's first look is elsewhere in the frame."""
    def first_and_last(style):
        split = synthetic.make_synthetic_got10k(tmp_path / style, "val", sequences=3, frames=12, size=(160, 120),
                                                seed=8, style=style)
        for name in got10k.read_got10k_split(split):
            s = got10k.read_got10k_sequence(split / name)
            yield s, _patch(s["frames"][0], s["boxes_xywh"][0]), _patch(s["frames"][-1], s["boxes_xywh"][-1])

    assert all(np.abs(first - last).mean() < 20 for _, first, last in first_and_last("plain"))
    stretched = []
    for s, first, last in first_and_last("changing"):
        assert np.abs(first - last).mean() > 50
        (w0, h0), (w1, h1) = s["boxes_xywh"][0, 2:], s["boxes_xywh"][-1, 2:]
        stretched.append(abs(np.log((w1 / h1) / (w0 / h0))))
        # the look-alike: pixels of the target's first colours outside its last box
        frame = np.asarray(Image.open(s["frames"][-1]).convert("RGB"), float)
        x, y, w, h = s["boxes_xywh"][-1]
        outside = np.ones(frame.shape[:2], bool)
        outside[max(int(y) - 1, 0):int(y + h) + 2, max(int(x) - 1, 0):int(x + w) + 2] = False
        found, counts = np.unique(first.reshape(-1, 3).round(-1), axis=0, return_counts=True)
        colours = found[np.argsort(-counts)[:2]]  # its two colours (the pattern's)
        near = np.min([np.abs(frame - c).max(axis=2) for c in colours], axis=0) < 40
        assert (near & outside).sum() > 50, s["name"]
    assert max(stretched) > 0.1  # width over height changed by more than 10%


def test_same_seed_same_data(tmp_path):
    a = synthetic.make_synthetic_got10k(tmp_path / "a", "val", sequences=2, frames=5, seed=3)
    b = synthetic.make_synthetic_got10k(tmp_path / "b", "val", sequences=2, frames=5, seed=3)
    c = synthetic.make_synthetic_got10k(tmp_path / "c", "val", sequences=2, frames=5, seed=4)
    name = got10k.read_got10k_split(a)[0]
    assert (a / name / "groundtruth.txt").read_text() == (b / name / "groundtruth.txt").read_text()
    assert (a / name / "00000003.jpg").read_bytes() == (b / name / "00000003.jpg").read_bytes()
    assert (a / name / "groundtruth.txt").read_text() != (c / name / "groundtruth.txt").read_text()


def test_test_split_has_only_the_first_box(tmp_path):
    split = synthetic.make_synthetic_got10k(tmp_path, "test", sequences=2, frames=6)
    s = got10k.read_got10k_sequence(split / got10k.read_got10k_split(split)[0])
    assert s["boxes_xywh"].shape == (1, 4) and len(s["frames"]) == 6 and "cover" not in s


def test_prepare_data_synthetic_command(tmp_path):
    result = subprocess.run([sys.executable, "prepare_data.py", "synthetic", "--out", str(tmp_path), "--split", "train",
                             "--sequences", "3", "--frames", "4", "--size", "160x120", "--seed", "5"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names = got10k.read_got10k_split(tmp_path / "train")
    assert names == ["GOT-10k_Train_000001", "GOT-10k_Train_000002", "GOT-10k_Train_000003"]
    assert Image.open(tmp_path / "train" / names[0] / "00000004.jpg").size == (160, 120)


def test_prepare_data_bad_size_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "prepare_data.py", "synthetic", "--out", str(tmp_path), "--size", "big"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "WIDTHxHEIGHT" in result.stderr and "Traceback" not in result.stderr
