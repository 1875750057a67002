"""Synthetic clips in the layouts of other tracking benchmarks (LaSOT, LaSOT_ext, TrackingNet,
OTB-100, UAV123, NfS, TNL2K): read back with the got10k toolkit's readers where it has one,
and compared with the clips make_synthetic_got10k draws with the same arguments."""
import json
import os
import re
from pathlib import Path

import benchmark_layouts
import numpy as np
import pytest
from benchmark_layouts import SYNTHETIC_BENCHMARKS, make_synthetic_benchmark
from PIL import Image

import synthetic

SIZE = (32, 24)
GOT10K_DATASETS = Path(__import__("got10k.datasets", fromlist=["_"]).__file__).parent


def _clips(folder, count, frames, seed=0, style="plain") -> list[dict]:
    """What the generator drew: clip i of make_synthetic_got10k with these arguments."""
    split = synthetic.make_synthetic_got10k(folder, "val", count, frames, SIZE, seed, style=style)
    clips = []
    for name in (split / "list.txt").read_text().split():
        clips.append({"frames": sorted((split / name).glob("*.jpg")),
                      "boxes": np.loadtxt(split / name / "groundtruth.txt", delimiter=",", ndmin=2),
                      "cover": np.loadtxt(split / name / "cover.label", dtype=int, ndmin=1)})
    return clips


def _assert_boxes(read, drawn, integers=True):
    """Boxes read back are the drawn ones: integer files hold the rounded corners (each within
    half a pixel, and the 4 decimals of groundtruth.txt), others the values themselves."""
    read, drawn = np.asarray(read, float), np.asarray(drawn, float)
    assert read.shape == drawn.shape
    if not integers:
        np.testing.assert_allclose(read, drawn, atol=1e-4)
        return
    assert np.array_equal(read, np.round(read))
    assert np.abs(_corners(read) - _corners(drawn)).max() <= 0.5 + 1e-3


def _corners(boxes) -> np.ndarray:
    return np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]]


def _region(path, box) -> np.ndarray:
    x, y, w, h = (int(v) for v in box)
    frame = np.asarray(Image.open(path).convert("RGB"), float)
    return frame[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)]


def _outside(boxes) -> np.ndarray:
    """Per frame: the drawn target's pixels lie wholly outside the image."""
    x1, y1 = np.round(boxes[:, 0]), np.round(boxes[:, 1])
    x2, y2 = np.round(boxes[:, 0] + boxes[:, 2]), np.round(boxes[:, 1] + boxes[:, 3])
    return (x2 <= 0) | (y2 <= 0) | (x1 >= SIZE[0]) | (y1 >= SIZE[1])


def _got10k_lasot(root, seq_names):
    """got10k 0.1.3's LaSOT(root, subset='test', return_meta=True) cannot be built on any
    folder: its __init__ calls _check_integrity with one argument too many, then takes the
    basename of a generator. Its reading (__getitem__, _fetch_meta) works: set what __init__
    sets, with its own expressions, and read with that."""
    from got10k.datasets import LaSOT

    dataset = LaSOT.__new__(LaSOT)
    dataset.root_dir, dataset.subset, dataset.return_meta = str(root), "test", True
    dataset.seq_names = list(seq_names)
    dataset.seq_dirs = [os.path.join(str(root), n[:n.rfind("-")], n, "img") for n in dataset.seq_names]
    dataset.anno_files = [os.path.join(os.path.dirname(d), "groundtruth.txt") for d in dataset.seq_dirs]
    return dataset


def _check_lasot(dataset, names, drawn):
    """Frames, boxes and flags of a LaSOT layout, read by got10k, against the drawn clips:
    full occlusion where the target is hidden inside the image, out of view where its box
    left it or where it was erased (then the frame really no longer shows it). Returns the
    out-of-view flags and how many frames were erased."""
    flags = []
    for name, clip in zip(names, drawn):
        frames, boxes, meta = dataset[name]
        n = len(clip["frames"])
        assert [Path(f).name for f in frames] == [f"{t + 1:08d}.jpg" for t in range(n)]
        _assert_boxes(boxes, clip["boxes"])
        occluded, out = meta["full_occlusion"], meta["out_of_view"]
        assert occluded.shape == out.shape == (n,) and set(occluded) | set(out) <= {0, 1}
        outside = _outside(clip["boxes"])
        assert np.array_equal(occluded == 1, (clip["cover"] == 0) & ~outside)
        assert np.all(out[outside] == 1)
        for t in range(n):
            if out[t] and not outside[t]:  # erased: the target is no longer there
                box = boxes[t]
                assert np.abs(_region(frames[t], box) - _region(clip["frames"][t], box)).mean() > 20
                assert _region(frames[t], box).std() < 0.5 * _region(clip["frames"][t], box).std()
            else:
                assert Path(frames[t]).read_bytes() == clip["frames"][t].read_bytes()
        nlp = meta["nlp"]
        assert "\n" not in nlp and re.fullmatch(r"a [a-z ]*patterned box moving on a (grey|textured) background", nlp)
        flags.append(out)
    erased = sum(int(((f == 1) & ~_outside(c["boxes"])).sum()) for f, c in zip(flags, drawn))
    return flags, erased


def test_lasot_reads_back_with_got10k(tmp_path):
    root = make_synthetic_benchmark(tmp_path / "lasot", "lasot", sequences=3, frames=8, size=SIZE)
    names = ["airplane-1", "basketball-1", "bear-2"]
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("*/*")) == sorted(
        f"{n.split('-')[0]}/{n}" for n in names)
    test_set = json.loads((GOT10K_DATASETS / "lasot.json").read_text())["test"]
    assert set(names) <= set(test_set)
    flags, erased = _check_lasot(_got10k_lasot(root, test_set), names, _clips(tmp_path / "drawn", 3, 8))
    # plain targets never leave the image: one frame is made out of view by erasing the target
    assert sum(int(f.sum()) for f in flags) == 1 and erased == 1
    assert flags[-1][-1] == 1 and (root / "bear" / "bear-2" / "out_of_view.txt").read_text().count("\n") == 1


def test_lasot_ext_flags_follow_what_is_drawn(tmp_path):
    # seed 1 at this size: the first target walks out of the image, the third is hidden once
    root = make_synthetic_benchmark(tmp_path / "ext", "lasot_ext", sequences=3, frames=16, size=SIZE,
                                              seed=1, style="clutter")
    names = ["atv-1", "badminton-1", "cosplay-1"]
    drawn = _clips(tmp_path / "drawn", 3, 16, seed=1, style="clutter")
    flags, erased = _check_lasot(_got10k_lasot(root, names), names, drawn)
    occlusion = [np.loadtxt(root / n.split("-")[0] / n / "full_occlusion.txt", delimiter=",") for n in names]
    assert sum(int(o.sum()) for o in occlusion) >= 1 and sum(int(f.sum()) for f in flags) >= 1
    assert erased == 0  # targets left the image by themselves: nothing to erase


def test_trackingnet_files(tmp_path):
    """got10k's TrackingNet reader sorts frames by int() of their whole path and looks for
    them in <chunk>/<seq>, not <chunk>/frames/<seq>: check the files directly."""
    root = make_synthetic_benchmark(tmp_path / "tn", "trackingnet", sequences=2, frames=5, size=SIZE)
    drawn = _clips(tmp_path / "drawn", 4, 5)
    test_names = sorted(p.stem for p in (root / "TEST" / "anno").glob("*.txt"))
    train_names = sorted(p.stem for p in (root / "TRAIN_0" / "anno").glob("*.txt"))
    assert len(test_names) == len(train_names) == 2 and not set(test_names) & set(train_names)
    for chunk, names, chunk_drawn in (("TEST", test_names, drawn[:2]), ("TRAIN_0", train_names, drawn[2:])):
        used = []
        for name in names:
            assert re.fullmatch(r"[A-Za-z0-9_-]{11}_\d+", name)
            boxes = np.loadtxt(root / chunk / "anno" / f"{name}.txt", delimiter=",", ndmin=2)
            # which clip it is: the one whose first box this is
            used += [i for i, c in enumerate(chunk_drawn) if np.allclose(c["boxes"][0], boxes[0], atol=1e-4)]
            clip = chunk_drawn[used[-1]]
            _assert_boxes(boxes, clip["boxes"][:1] if chunk == "TEST" else clip["boxes"], integers=False)
            frames = sorted((root / chunk / "frames" / name).iterdir(), key=lambda p: int(p.stem))
            assert [p.name for p in frames] == [f"{t}.jpg" for t in range(5)]
            assert [p.read_bytes() for p in frames] == [p.read_bytes() for p in clip["frames"]]
        assert sorted(used) == [0, 1]


def test_otb_reads_back_with_got10k_and_jogging_has_two_targets(tmp_path):
    from got10k.datasets import OTB

    root = make_synthetic_benchmark(tmp_path / "otb", "otb100", sequences=3, frames=6, size=SIZE)
    drawn = _clips(tmp_path / "drawn", 3, 6)
    dataset = OTB(str(root), version="tb100", download=False)
    assert sorted(dataset.seq_names) == ["Basketball", "Biker", "Jogging.1", "Jogging.2"]
    # OTB's separators: commas, tabs and spaces, one each here
    assert "," in (root / "Basketball" / "groundtruth_rect.txt").read_text()
    assert "\t" in (root / "Biker" / "groundtruth_rect.txt").read_text()
    for target in ("1", "2"):
        text = (root / "Jogging" / f"groundtruth_rect.{target}.txt").read_text()
        assert " " in text and "," not in text and "\t" not in text
    for name, clip in (("Basketball", drawn[0]), ("Biker", drawn[1])):
        frames, boxes = dataset[name]
        assert [Path(f).name for f in frames] == [f"{t + 1:04d}.jpg" for t in range(6)]
        assert [Path(f).read_bytes() for f in frames] == [p.read_bytes() for p in clip["frames"]]
        _assert_boxes(boxes, clip["boxes"])
    frames, first = dataset["Jogging.1"]
    frames_2, second = dataset["Jogging.2"]
    assert frames == frames_2 and len(first) == len(second) == 6
    _assert_boxes(first, drawn[2]["boxes"])
    assert not np.array_equal(first, second)
    for t, (path, drawn_path) in enumerate(zip(frames, drawn[2]["frames"])):
        # the first target's pixels are the clip's (up to one more JPEG round trip) ...
        assert np.abs(_region(path, first[t]) - _region(drawn_path, first[t])).mean() < 4
        # ... and where the second box does not meet the first, a second object was drawn
        x, y, w, h = second[t].astype(int)
        mask = np.ones((h, w), bool)
        fx, fy, fw, fh = first[t].astype(int)
        mask[max(fy - y, 0):max(fy + fh - y, 0), max(fx - x, 0):max(fx + fw - x, 0)] = False
        if mask.sum() >= 4:
            assert np.abs(_region(path, second[t]) - _region(drawn_path, second[t]))[mask].mean() > 20


@pytest.fixture
def uav123_reader(monkeypatch):
    """got10k's UAV123 reader refuses a root with fewer than 4 entries, and the dataset's
    root holds anno/ and data_seq/ only: skip that check, read with the rest."""
    from got10k.datasets import UAV123

    monkeypatch.setattr(UAV123, "_check_integrity", lambda self, root_dir, version: None)
    return UAV123


def test_names_and_uav123_configuration_are_the_real_ones():
    from got10k.datasets import OTB

    assert set(benchmark_layouts.LASOT_TEST_NAMES) <= set(json.loads((GOT10K_DATASETS / "lasot.json").read_text())["test"])
    assert set(benchmark_layouts.OTB_NAMES) | {"Jogging"} <= set(OTB._OTB__tb100_seqs)
    config = json.loads((GOT10K_DATASETS / "uav123.json").read_text())["UAV123"]
    for name, (start, end, folder) in benchmark_layouts.UAV123_SEQUENCES.items():
        assert config[name] == {"start_frame": start, "end_frame": end, "folder_name": folder}


def test_uav123_reads_back_with_got10k_with_nan_rows(tmp_path, uav123_reader):
    root = make_synthetic_benchmark(tmp_path / "uav", "uav123", sequences=3, size=SIZE, style="clutter")
    dataset = uav123_reader(str(root))
    assert sorted(dataset.seq_names) == ["uav2", "uav5", "uav6"]
    hidden = 0
    for k, (name, length) in enumerate((("uav6", 109), ("uav2", 133), ("uav5", 139))):
        clip = _clips(tmp_path / f"drawn{k}", 1, length, seed=k, style="clutter")[0]  # folder k: seed + k
        frames, boxes = dataset[name]
        assert frames == [str(root / "data_seq" / "UAV123" / name / f"{f:06d}.jpg") for f in range(1, length + 1)]
        assert [Path(f).read_bytes() for f in frames] == [p.read_bytes() for p in clip["frames"]]
        nan = np.isnan(boxes).all(axis=1)
        assert np.array_equal(nan, clip["cover"] == 0) and not np.isnan(boxes[~nan]).any()
        lines = (root / "anno" / "UAV123" / f"{name}.txt").read_text().splitlines()
        assert all(lines[t] == "NaN,NaN,NaN,NaN" for t in np.nonzero(nan)[0])
        _assert_boxes(boxes[~nan], clip["boxes"][~nan])
        hidden += int(nan.sum())
    assert hidden > 0


def test_uav123_subsequence_without_images(tmp_path, uav123_reader):
    # bird1_2 is frames 775..1477 of the video folder bird1; `frames` does not change that
    root = make_synthetic_benchmark(tmp_path / "uav", "uav123", names=["bird1_2"], frames=5, size=SIZE,
                                              images=False)
    frames, boxes = uav123_reader(str(root))["bird1_2"]
    folder = root / "data_seq" / "UAV123" / "bird1"
    assert frames == [str(folder / f"{f:06d}.jpg") for f in range(775, 1478)]
    assert folder.is_dir() and not any(folder.iterdir())
    _assert_boxes(boxes, _clips(tmp_path / "drawn", 1, 703)[0]["boxes"])


def test_nfs_reads_back_with_got10k_from_240_fps_rows(tmp_path):
    from got10k.datasets import NfS

    root = make_synthetic_benchmark(tmp_path / "nfs", "nfs", sequences=3, frames=6, size=SIZE)
    drawn = _clips(tmp_path / "drawn", 3, 6)
    dataset = NfS(str(root), fps=30)
    assert dataset.seq_names == ["airboard_1", "basketball_1", "bee"]
    moving = 0
    for name, clip in zip(dataset.seq_names, drawn):
        frames, boxes = dataset[name]
        assert [Path(f).name for f in frames] == [f"{t + 1:05d}.jpg" for t in range(6)]
        assert [Path(f).read_bytes() for f in frames] == [p.read_bytes() for p in clip["frames"]]
        _assert_boxes(boxes, clip["boxes"])  # got10k keeps every 8th row, corners made sizes
        rows = [line.split(" ") for line in (root / name / "30" / f"{name}.txt").read_text().splitlines()]
        assert len(rows) == 8 * 6 and all(len(row) == 10 and row[9] == '"box"' for row in rows)
        assert [int(row[5]) for row in rows] == list(range(1, 49))  # 240-fps frame numbers
        assert [int(row[8]) for row in rows] == [0, 1, 1, 1, 1, 1, 1, 1] * 6  # in-between rows are generated
        corners = np.array([[int(v) for v in row[1:5]] for row in rows])
        assert np.all(corners[:, 2:] > corners[:, :2])  # xmax, ymax: corners
        assert np.array_equal(corners[0::8], _corners(boxes))
        keys = corners[0::8]
        for t in range(5):  # the 240-fps rows in between go from one 30-fps box to the next
            between = corners[8 * t:8 * t + 8]
            low, high = np.minimum(keys[t], keys[t + 1]), np.maximum(keys[t], keys[t + 1])
            assert np.all(between >= low) and np.all(between <= high)
        moving += int((corners != np.repeat(keys, 8, axis=0)).any(axis=1).sum())
    assert moving > 0


def test_tnl2k_files(tmp_path):
    root = make_synthetic_benchmark(tmp_path / "tnl2k", "tnl2k", sequences=3, frames=5, size=SIZE)
    drawn = _clips(tmp_path / "drawn", 3, 5)
    names = [name for name, _, _ in benchmark_layouts.TNL2K_SEQUENCES[:3]]
    assert sorted(p.name for p in root.iterdir()) == sorted(names)
    suffixes = set()
    for (name, ext, digits), clip in zip(benchmark_layouts.TNL2K_SEQUENCES, drawn):
        frames = sorted((root / name / "imgs").iterdir())
        assert [p.name for p in frames] == [f"{t + 1:0{digits}d}.{ext}" for t in range(5)]
        for path, drawn_path in zip(frames, clip["frames"]):
            if ext == "png":  # the decoded JPEG, losslessly
                assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(drawn_path)))
            else:
                assert path.read_bytes() == drawn_path.read_bytes()
        suffixes.add(ext)
        _assert_boxes(np.loadtxt(root / name / "groundtruth.txt", delimiter=",", ndmin=2), clip["boxes"])
        language = (root / name / "language.txt").read_text()
        assert language.count("\n") == 1 and "patterned box" in language
    assert suffixes == {"png", "jpg"}


def _is_frame(path) -> bool:
    return path.suffix in (".jpg", ".png")


@pytest.mark.parametrize("benchmark", SYNTHETIC_BENCHMARKS)
def test_frames_written_empty_or_left_out(tmp_path, benchmark):
    """images="empty" gives the same files with no bytes, images=False the same folders with
    no frame files; the annotations are the same in all three."""
    kwargs = {"names": ["uav6"]} if benchmark == "uav123" else {"sequences": 3}
    layouts = {}
    for images in (True, "empty", False):
        root = make_synthetic_benchmark(tmp_path / str(images), benchmark, frames=4, size=SIZE,
                                                  images=images, **kwargs)
        layouts[images] = {p.relative_to(root): p for p in root.rglob("*")}
    frames = {r for r, p in layouts[True].items() if _is_frame(r)}
    assert frames and all(layouts[True][r].stat().st_size > 0 for r in frames)
    assert {r for r in layouts["empty"] if _is_frame(r)} == frames
    assert all(layouts["empty"][r].stat().st_size == 0 for r in frames)
    assert not any(_is_frame(r) for r in layouts[False])
    assert set(layouts[False]) == {r for r in layouts[True] if not _is_frame(r)}
    for relative, path in layouts[True].items():
        if path.is_file() and not _is_frame(relative):
            assert layouts[False][relative].read_bytes() == layouts["empty"][relative].read_bytes() == path.read_bytes()


def test_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark"):
        make_synthetic_benchmark(tmp_path, "vot2018")
    with pytest.raises(ValueError, match="images"):
        make_synthetic_benchmark(tmp_path, "lasot", images="some")
    with pytest.raises(ValueError, match="UAV123"):
        make_synthetic_benchmark(tmp_path, "uav123", names=["not_a_sequence"])
