"""The benchmarks of the LaSOT toolkit's protocol: LaSOT, LaSOT-ext and TNL2K (whose toolkit
is LaSOT's). Each one's official layout read into sequences (with their descriptions, for
--init text); scored as the LaSOT toolkit scores them (calc_seq_err_robust.m,
eval_tracker.m, plot_draw_save.m): pixel-inclusive intersection (right = x + w - 1), an
unusable box (NaN, w <= 0 or h <= 0) replaced by the previous one, frames where the target is
absent (full occlusion or out of view) left out of the counts but not of the denominator,
frames whose truth has a coordinate <= 0 counted as failures, and sequences whose curve is
all zero left out of the mean.
"""

from __future__ import annotations

import functools
import glob
from pathlib import Path

import numpy as np

from benchmarks.curves import Protocol, official_layout, pixel_centres, read_flags, result_files, score, show_reports
from benchmarks.results import Benchmark, read_box_rows
from cli import UserError


def matlab_colon(first: float, step: float, last: float) -> np.ndarray:
    """MATLAB's first:step:last, built from both ends as MATLAB builds it: 0:0.05:1 holds
    0.6499999999999999 where linspace holds 0.65, which decides an overlap of exactly 13/20."""
    count = int(round((last - first) / step))
    k = np.arange(count + 1)
    return np.where(k <= count / 2, first + k * step, last - (count - k) * step)


LASOT_SUCCESS_THRESHOLDS = matlab_colon(0, 0.05, 1)  # the LaSOT toolkit's


# -----------------------------------------------------------------------------
# Layouts. A sequence is a dict: name, frames (paths), boxes_xywh (one row a frame), absent
# (bool per frame, or None), description (or None).


# LaSOT's test set (its protocol II: 4 sequences of each of its 70 classes, 280 in all), as the
# toolkit's testing_set.txt lists it; the other 1,120 are its training set
_LASOT_TEST = """
airplane 1 9 13 15; basketball 1 6 7 11; bear 2 4 6 17; bicycle 2 7 9 18; bird 2 3 15 17; boat 3 4 12 17;
book 3 10 11 19; bottle 1 12 14 18; bus 2 5 17 19; car 2 6 9 17; cat 1 3 18 20; cattle 2 7 12 13;
chameleon 3 6 11 20; coin 3 6 7 18; crab 3 6 12 18; crocodile 3 4 10 14; cup 1 4 7 17; deer 4 8 10 14;
dog 1 7 15 19; drone 2 7 13 15; electricfan 1 10 18 20; elephant 1 12 16 18; flag 2 3 5 9; fox 2 3 5 20;
frog 3 4 9 20; gametarget 1 2 7 13; gecko 1 5 16 19; giraffe 2 10 13 15; goldfish 3 7 8 10; gorilla 4 6 9 13;
guitar 3 8 10 16; hand 2 3 9 16; hat 1 2 5 18; helmet 5 11 13 19; hippo 1 7 9 20; horse 1 4 12 15;
kangaroo 2 5 11 14; kite 4 6 10 15; leopard 1 7 16 20; licenseplate 6 12 13 15; lion 1 5 12 20; lizard 1 3 6 13;
microphone 2 6 14 16; monkey 3 4 9 17; motorcycle 1 3 9 18; mouse 1 8 9 17; person 1 5 10 12; pig 2 10 13 18;
pool 3 7 12 15; rabbit 10 13 17 19; racing 10 15 16 20; robot 1 5 8 19; rubicCube 1 6 14 19; sepia 6 8 13 16;
shark 2 3 5 6; sheep 3 5 7 9; skateboard 3 8 16 19; spider 14 16 18 20; squirrel 8 11 13 19; surfboard 4 5 8 12;
swing 10 14 17 20; tank 6 9 14 16; tiger 4 6 12 18; train 1 7 11 20; truck 3 6 7 16; turtle 5 8 9 16;
umbrella 2 9 17 19; volleyball 1 13 18 19; yoyo 7 15 17 19; zebra 10 14 16 17
"""
LASOT_TEST_SET = frozenset(f"{name}-{k}" for entry in _LASOT_TEST.replace("\n", " ").split(";")
                           for name, *numbers in [entry.split()] for k in numbers)
LASOT_CLASSES = frozenset(name.rsplit("-", 1)[0] for name in LASOT_TEST_SET)


def lasot_folders(root: Path) -> list[Path]:
    """Every <class>/<class>-<n> folder with a groundtruth.txt under a LaSOT root, by name."""
    found = (Path(p).parent for p in glob.glob(str(root / "*" / "*" / "groundtruth.txt")))
    return sorted((f for f in found if f.name.rsplit("-", 1)[0] == f.parent.name), key=lambda f: f.name)


def read_lasot_sequence(folder: Path) -> dict:
    """One LaSOT sequence folder's annotation: boxes_xywh, absent (full occlusion or out of
    view, per frame) and description (nlp.txt, or None); its frames are not listed."""
    boxes = read_box_rows(folder / "groundtruth.txt")
    absent = np.zeros(len(boxes), bool)
    for flag in ("full_occlusion", "out_of_view"):
        if (folder / f"{flag}.txt").is_file():
            flags = read_flags(folder / f"{flag}.txt")
            if len(flags) != len(boxes):
                raise UserError(f"{folder / f'{flag}.txt'}: {len(flags)} flags for {len(boxes)} boxes")
            absent |= flags
    nlp = folder / "nlp.txt"
    return {"name": folder.name, "boxes_xywh": boxes, "absent": absent,
            "description": nlp.read_text().strip() if nlp.is_file() else None}


def _lasot(root: Path, split=None, tested=None) -> list[dict]:
    """root/<class>/<class>-<n>/{img/00000001.jpg..., groundtruth.txt, full_occlusion.txt,
    out_of_view.txt, nlp.txt}. A testing_set.txt at the root (as the toolkit ships) chooses the
    sequences; otherwise those found there whose name `tested` accepts (LaSOT's 280 in the full
    dataset, whose training sequences lie beside them; LaSOT-ext's classes beside LaSOT's),
    else every sequence found."""
    listed = root / "testing_set.txt"
    if listed.is_file():
        names = [n.strip() for n in listed.read_text().split() if n.strip()]
        folders = [root / n.rsplit("-", 1)[0] / n for n in names]
    else:
        found = lasot_folders(root)
        folders = [folder for folder in found if tested and tested(folder.name)] or found
    return [{**read_lasot_sequence(folder), "frames": sorted((folder / "img").glob("*.jpg"))} for folder in folders]


def _tnl2k(root: Path, split=None) -> list[dict]:
    """root/<sequence>/{imgs/00001.png (or .jpg)..., groundtruth.txt, language.txt}."""
    sequences = []
    for file in sorted(root.glob("*/groundtruth.txt")):
        folder = file.parent
        if not (folder / "imgs").is_dir():
            continue
        frames = sorted(p for p in (folder / "imgs").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        language = folder / "language.txt"
        sequences.append({"name": folder.name, "frames": frames, "boxes_xywh": read_box_rows(file), "absent": None,
                          "description": language.read_text().strip() if language.is_file() else None})
    return sequences


# -----------------------------------------------------------------------------
# Per-frame errors


def lasot_errors(boxes_xywh, truth_xywh, absent=None):
    """(IoU, centre error, normalised centre error, frames) as the LaSOT toolkit computes them:
    -1 marks a frame that can only fail; `frames` counts every frame, absent ones too."""
    boxes = np.array(boxes_xywh, dtype=float)[:len(truth_xywh)]  # the toolkit cuts longer results
    for i in range(1, len(boxes)):
        # the toolkit's `(bad box) & ~isnan(truth row)` is true only when no truth value is NaN
        unusable = np.isnan(boxes[i]).any() or boxes[i, 2] <= 0 or boxes[i, 3] <= 0
        if unusable and not np.isnan(truth_xywh[i]).any():
            boxes[i] = boxes[i - 1]
    boxes[0] = truth_xywh[0]
    present = ~np.asarray(absent, bool) if absent is not None else np.ones(len(truth_xywh), bool)
    boxes, truth = boxes[present], truth_xywh[present]
    offset = pixel_centres(boxes) - pixel_centres(truth)
    errors = np.linalg.norm(offset, axis=1)
    scored = (truth > 0).all(axis=1)  # the others are marked -1 below, whatever was computed for them
    with np.errstate(divide="ignore", invalid="ignore"):
        norm_errors = np.linalg.norm(pixel_centres(boxes) / truth[:, 2:] - pixel_centres(truth) / truth[:, 2:], axis=1)
    # MATLAB's max and min pass over NaN, hence fmax and fmin
    right = np.fmin(boxes[:, 0] + boxes[:, 2] - 1, truth[:, 0] + truth[:, 2] - 1)
    bottom = np.fmin(boxes[:, 1] + boxes[:, 3] - 1, truth[:, 1] + truth[:, 3] - 1)
    inter = (np.fmax(0, right - np.fmax(boxes[:, 0], truth[:, 0]) + 1)
             * np.fmax(0, bottom - np.fmax(boxes[:, 1], truth[:, 1]) + 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ious = inter / (boxes[:, 2] * boxes[:, 3] + truth[:, 2] * truth[:, 3] - inter)
    ious, errors, norm_errors = (np.where(scored, v, -1.0) for v in (ious, errors, norm_errors))
    return ious, errors, norm_errors, len(truth_xywh) + np.finfo(float).eps


# LaSOT's attributes in the order of its toolkit's annos/att/<sequence>.txt flags
# (run_tracker_performance_evaluation.m); LaSOT-ext uses the same
LASOT_ATTRIBUTES = (("IV", "Illumination Variation"), ("POC", "Partial Occlusion"), ("DEF", "Deformation"),
                    ("MB", "Motion Blur"), ("CM", "Camera Motion"), ("ROT", "Rotation"),
                    ("BC", "Background Clutter"), ("VC", "Viewpoint Change"), ("SV", "Scale Variation"),
                    ("FOC", "Full Occlusion"), ("FM", "Fast Motion"), ("OV", "Out-of-View"),
                    ("LR", "Low Resolution"), ("ARC", "Aspect Ratio Change"))


LASOT = Protocol("lasot", lambda boxes, truth, sequence: lasot_errors(boxes, truth, sequence.get("absent")),
                 LASOT_SUCCESS_THRESHOLDS, drops_zero_curves=True)


def _benchmark(name: str, title: str, read, layout: str, **kwargs) -> Benchmark:
    return Benchmark(name, title, official_layout(read, title, layout), result_files,
                     functools.partial(score, protocol=LASOT), show_reports, descriptions=True, **kwargs)


BENCHMARKS = (
    _benchmark("lasot", "LaSOT", functools.partial(_lasot, tested=LASOT_TEST_SET.__contains__),
               "<class>/<class>-<n>/groundtruth.txt", test_set_size=280,
               attribute_names=LASOT_ATTRIBUTES),
    _benchmark("lasot_ext", "LaSOT-ext", functools.partial(_lasot, tested=lambda name: name.rsplit("-", 1)[0]
                                                          not in LASOT_CLASSES),
               "<class>/<class>-<n>/groundtruth.txt", test_set_size=150,
               attribute_names=LASOT_ATTRIBUTES),
    _benchmark("tnl2k", "TNL2K", _tnl2k, "<sequence>/groundtruth.txt with <sequence>/imgs/", test_set_size=700),
)
