"""The benchmarks of the got10k toolkit's ExperimentOTB protocol: OTB100, UAV123, NfS (30 fps)
and TrackingNet. Each one's official layout read into sequences; scored as ExperimentOTB
scores them: continuous IoU, the first frame's box replaced by the truth, UAV123's frames
without a box (NaN rows) left out, each sequence's curves the share of its frames, the
overall curve their mean. TrackingNet's test split is packed into RESULTS.zip for its server.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from benchmarks.curves import (
    SUCCESS_THRESHOLDS,
    Protocol,
    official_layout,
    pixel_centres,
    result_files,
    score,
    show_reports,
)
from benchmarks.results import Benchmark, pack_zip, read_box_rows
from cli import UserError, first_line

# -----------------------------------------------------------------------------
# Layouts. A sequence is a dict: name, frames (paths), boxes_xywh (one row a frame; TrackingNet's
# test set gives the first only), absent (None here), description (None here).


# OTB's sequences that use part of their folder's images (the benchmark's own configuration)
OTB_FRAME_RANGES = {"david": (300, 770), "football1": (1, 74), "freeman3": (1, 460), "freeman4": (1, 283),
                    "diving": (1, 215)}


def _otb(root: Path, split=None) -> list[dict]:
    """root/<Sequence>/{img/0001.jpg..., groundtruth_rect.txt}; a folder with two targets
    (Jogging, Skating2) has groundtruth_rect.1.txt and .2.txt, named <Sequence>.1 and .2 as
    the got10k toolkit names them. Empty annotation files are skipped, as the toolkit does."""
    files = sorted(f for f in root.glob("*/groundtruth_rect*.txt") if f.read_text().strip())
    per_folder = {}
    for file in files:
        per_folder.setdefault(file.parent, []).append(file)
    sequences = []
    for folder, targets in sorted(per_folder.items(), key=lambda item: item[0].name):
        frames = sorted((folder / "img").glob("*.jpg"))
        first, last = OTB_FRAME_RANGES.get(folder.name.lower(), (1, len(frames)))
        frames = frames[first - 1:last]
        for index, file in enumerate(targets, 1):
            name = folder.name if len(targets) == 1 else f"{folder.name}.{index}"
            sequences.append({"name": name, "frames": frames, "boxes_xywh": read_box_rows(file, ",\t"), "absent": None,
                              "description": None})
    return sequences


def _uav123(root: Path, split=None) -> list[dict]:
    """root/anno/UAV123/<sequence>.txt (NaN rows where the target is out of sight) and
    root/data_seq/UAV123/<folder>/000001.jpg...; a sequence's frames are the range of its
    folder given by UAV123's configuration (UAV123_RANGES)."""
    sequences = []
    for file in sorted((root / "anno" / "UAV123").glob("*.txt")):
        name = file.stem
        if name not in UAV123_RANGES:
            raise UserError(f"{file}: {name!r} is not one of UAV123's 123 sequences")
        folder, first, last = UAV123_RANGES[name]
        frames = [root / "data_seq" / "UAV123" / folder / f"{i:06d}.jpg" for i in range(first, last + 1)]
        sequences.append({"name": name, "frames": frames, "boxes_xywh": read_box_rows(file), "absent": None,
                          "description": None})
    return sequences


def _nfs(root: Path, split=None) -> list[dict]:
    """The 30-fps version: root/<sequence>/30/<sequence>/00001.jpg... and
    root/<sequence>/30/<sequence>.txt, which holds the 240-fps annotation (`id xmin ymin xmax
    ymax frame lost occluded generated "label"`): every 8th row is kept when there are about 8
    rows a frame, and a length off by one is trimmed, as the got10k toolkit does."""
    sequences = []
    for file in sorted(root.glob("*/30/*.txt")):
        frames = sorted((file.parent / file.stem).glob("*.jpg"))
        try:
            corners = np.array([[float(v) for v in line.split()[1:5]] for line in file.read_text().splitlines()
                                if line.strip()])
        except ValueError as error:
            raise UserError(f"{file}: not an NfS annotation file ({first_line(error)})") from None
        if corners.ndim != 2 or corners.shape[1] != 4:
            raise UserError(f"{file}: not an NfS annotation file (id xmin ymin xmax ymax ... per row)")
        boxes = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
        if frames and len(boxes) != len(frames):
            if abs(len(boxes) / len(frames) - 8) < 1:
                boxes = boxes[0::8]
            if 0 < abs(len(frames) - len(boxes)) <= 1:
                count = min(len(frames), len(boxes))
                boxes, frames = boxes[:count], frames[:count]
        sequences.append({"name": file.stem, "frames": frames, "boxes_xywh": boxes, "absent": None,
                          "description": None})
    return sequences


def _trackingnet(root: Path, split=None) -> list[dict]:
    """root/TEST/{anno/<sequence>.txt (the first box only), frames/<sequence>/0.jpg...}; the
    train chunks TRAIN_0 ... TRAIN_11 the same with every box."""
    split = split or "test"
    if split not in ("test", "train"):
        raise UserError(f"TrackingNet has the splits test and train, not {split!r}")
    chunks = ["TEST"] if split == "test" else sorted(p.name for p in root.glob("TRAIN_*") if p.is_dir())
    sequences = []
    for chunk in chunks:
        for file in sorted((root / chunk / "anno").glob("*.txt")):
            frames = sorted((root / chunk / "frames" / file.stem).glob("*.jpg"), key=lambda p: int(p.stem))
            sequences.append({"name": file.stem, "frames": frames, "boxes_xywh": read_box_rows(file), "absent": None,
                              "description": None})
    return sequences


# -----------------------------------------------------------------------------
# Per-frame errors


def otb_errors(boxes_xywh, truth_xywh):
    """(IoU, centre error, normalised centre error) of the frames with a box in the truth, as
    the got10k toolkit's ExperimentOTB (and ExperimentUAV123 for NaN rows) computes them."""
    boxes = np.array(boxes_xywh, dtype=float)
    boxes[0] = truth_xywh[0]
    valid = ~np.isnan(truth_xywh).any(axis=1)
    boxes, truth = boxes[valid], truth_xywh[valid]
    x1 = np.maximum(boxes[:, 0], truth[:, 0])
    y1 = np.maximum(boxes[:, 1], truth[:, 1])
    x2 = np.minimum(boxes[:, 0] + boxes[:, 2], truth[:, 0] + truth[:, 2])
    y2 = np.minimum(boxes[:, 1] + boxes[:, 3], truth[:, 1] + truth[:, 3])
    inter = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    union = boxes[:, 2] * boxes[:, 3] + truth[:, 2] * truth[:, 3] - inter
    ious = np.clip(inter / (union + np.finfo(float).eps), 0.0, 1.0)
    offset = pixel_centres(boxes) - pixel_centres(truth)
    with np.errstate(divide="ignore", invalid="ignore"):  # a truth of no size: an error no threshold accepts
        norm_errors = np.linalg.norm(offset / truth[:, 2:], axis=1)
    norm_errors[np.isnan(norm_errors)] = np.inf
    return ious, np.linalg.norm(offset, axis=1), norm_errors, len(ious)


def pack_trackingnet(results: Path, names: list[str]) -> Path:
    """RESULTS.zip with one <sequence>.txt of x,y,w,h rows at its top, as TrackingNet's
    evaluation server takes it."""
    return pack_zip(results, [(result_files(results, name)[0], f"{name}.txt") for name in names])


# -----------------------------------------------------------------------------
# UAV123's configuration: each sequence's folder and frame range (configSeqs.m of the benchmark)

_UAV123 = """
bike1 bike1 1 3085; bike2 bike2 1 553; bike3 bike3 1 433; bird1_1 bird1 1 253; bird1_2 bird1 775 1477;
bird1_3 bird1 1573 2437; boat1 boat1 1 901; boat2 boat2 1 799; boat3 boat3 1 901; boat4 boat4 1 553;
boat5 boat5 1 505; boat6 boat6 1 805; boat7 boat7 1 535; boat8 boat8 1 685; boat9 boat9 1 1399;
building1 building1 1 469; building2 building2 1 577; building3 building3 1 829; building4 building4 1 787;
building5 building5 1 481; car1_1 car1 1 751; car1_2 car1 751 1627; car1_3 car1 1627 2629; car2 car2 1 1321;
car3 car3 1 1717; car4 car4 1 1345; car5 car5 1 745; car6_1 car6 1 487; car6_2 car6 487 1807;
car6_3 car6 1807 2953; car6_4 car6 2953 3925; car6_5 car6 3925 4861; car7 car7 1 1033; car8_1 car8 1 1357;
car8_2 car8 1357 2575; car9 car9 1 1879; car10 car10 1 1405; car11 car11 1 337; car12 car12 1 499;
car13 car13 1 415; car14 car14 1 1327; car15 car15 1 469; car16_1 car16 1 415; car16_2 car16 415 1993;
car17 car17 1 1057; car18 car18 1 1207; group1_1 group1 1 1333; group1_2 group1 1333 2515;
group1_3 group1 2515 3925; group1_4 group1 3925 4873; group2_1 group2 1 907; group2_2 group2 907 1771;
group2_3 group2 1771 2683; group3_1 group3 1 1567; group3_2 group3 1567 2827; group3_3 group3 2827 4369;
group3_4 group3 4369 5527; person1 person1 1 799; person2_1 person2 1 1189; person2_2 person2 1189 2623;
person3 person3 1 643; person4_1 person4 1 1501; person4_2 person4 1501 2743; person5_1 person5 1 877;
person5_2 person5 877 2101; person6 person6 1 901; person7_1 person7 1 1249; person7_2 person7 1249 2065;
person8_1 person8 1 1075; person8_2 person8 1075 1525; person9 person9 1 661; person10 person10 1 1021;
person11 person11 1 721; person12_1 person12 1 601; person12_2 person12 601 1621; person13 person13 1 883;
person14_1 person14 1 847; person14_2 person14 847 1813; person14_3 person14 1813 2923;
person15 person15 1 1339; person16 person16 1 1147; person17_1 person17 1 1501; person17_2 person17 1501 2347;
person18 person18 1 1393; person19_1 person19 1 1243; person19_2 person19 1243 2791;
person19_3 person19 2791 4357; person20 person20 1 1783; person21 person21 1 487; person22 person22 1 199;
person23 person23 1 397; truck1 truck1 1 463; truck2 truck2 1 385; truck3 truck3 1 535; truck4_1 truck4 1 577;
truck4_2 truck4 577 1261; uav1_1 uav1 1 1555; uav1_2 uav1 1555 2377; uav1_3 uav1 2473 3469; uav2 uav2 1 133;
uav3 uav3 1 265; uav4 uav4 1 157; uav5 uav5 1 139; uav6 uav6 1 109; uav7 uav7 1 373; uav8 uav8 1 301;
wakeboard1 wakeboard1 1 421; wakeboard2 wakeboard2 1 733; wakeboard3 wakeboard3 1 823;
wakeboard4 wakeboard4 1 697; wakeboard5 wakeboard5 1 1675; wakeboard6 wakeboard6 1 1165;
wakeboard7 wakeboard7 1 199; wakeboard8 wakeboard8 1 1543; wakeboard9 wakeboard9 1 355;
wakeboard10 wakeboard10 1 469; car1_s car1_s 1 1475; car2_s car2_s 1 320; car3_s car3_s 1 1300;
car4_s car4_s 1 830; person1_s person1_s 1 1600; person2_s person2_s 1 250; person3_s person3_s 1 505
"""


UAV123_RANGES = {name: (folder, int(first), int(last))
                 for name, folder, first, last in (entry.split() for entry in _UAV123.replace("\n", " ").split(";"))}


OTB = Protocol("otb", lambda boxes, truth, sequence: otb_errors(boxes, truth), SUCCESS_THRESHOLDS)


def _benchmark(name: str, title: str, read, layout: str, **kwargs) -> Benchmark:
    return Benchmark(name, title, official_layout(read, title, layout), result_files,
                     functools.partial(score, protocol=OTB), show_reports, **kwargs)


BENCHMARKS = (
    _benchmark("trackingnet", "TrackingNet", _trackingnet,
               "TEST/anno/<sequence>.txt (or TRAIN_<k>/anno/ with --split train)", splits=("test", "train"),
               truthless=("test",), pack=pack_trackingnet),
    _benchmark("otb100", "OTB100", _otb, "<Sequence>/groundtruth_rect.txt", test_set_size=100),
    _benchmark("uav123", "UAV123", _uav123, "anno/UAV123/<sequence>.txt", test_set_size=123),
    _benchmark("nfs", "NfS (30 fps)", _nfs, "<sequence>/30/<sequence>.txt", test_set_size=100),
)
