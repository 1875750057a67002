"""Tracking benchmarks beside GOT-10k: LaSOT, LaSOT-ext, TrackingNet, OTB100, UAV123, NfS and
TNL2K. Each one's official layout read into sequences, result files laid out as the got10k
toolkit writes them (RESULTS/<sequence>.txt of x,y,w,h rows, RESULTS/times/<sequence>_time.txt),
and scores computed exactly as each benchmark's own toolkit computes them.

Two protocols cover them (GOT-10k's own lives in scoring.py):
- "otb" (OTB100, UAV123, NfS, TrackingNet): the got10k toolkit's ExperimentOTB. Continuous
  IoU, the first frame's box replaced by the truth, UAV123's frames without a box (NaN rows)
  left out, each sequence's curves the share of its frames, the overall curve their mean.
- "lasot" (LaSOT, LaSOT-ext, TNL2K, whose toolkit is LaSOT's): the LaSOT toolkit
  (calc_seq_err_robust.m, eval_tracker.m, plot_draw_save.m). Pixel-inclusive intersection
  (right = x + w - 1), an unusable box (NaN, w <= 0 or h <= 0) replaced by the previous one,
  frames where the target is absent (full occlusion or out of view) left out of the counts but
  not of the denominator, frames whose truth has a coordinate <= 0 counted as failures, and
  sequences whose curve is all zero left out of the mean.

Metrics, named so nobody confuses them: success curve over 21 overlap thresholds and its
area (`success_auc`), precision at 20 px (`precision_20px`), normalised precision (centre
error divided by the truth's width and height) over thresholds 0..0.5, both as the area under
that curve (`norm_precision_auc`, what the LaSOT and TrackingNet papers rank by) and as its
value at 0.2 (`norm_precision_at_0.2`, what pytracking-derived papers report as "P_norm").
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import numpy as np

import r1track
import scoring
from r1track import UserError

BENCHMARKS = ("got10k", "lasot", "lasot_ext", "trackingnet", "otb100", "uav123", "nfs", "tnl2k")
PROTOCOLS = {"lasot": "lasot", "lasot_ext": "lasot", "tnl2k": "lasot",
             "otb100": "otb", "uav123": "otb", "nfs": "otb", "trackingnet": "otb"}
TITLES = {"got10k": "GOT-10k", "lasot": "LaSOT", "lasot_ext": "LaSOT-ext", "trackingnet": "TrackingNet",
          "otb100": "OTB100", "uav123": "UAV123", "nfs": "NfS (30 fps)", "tnl2k": "TNL2K"}
TEST_SET_SIZES = {"lasot": 280, "lasot_ext": 150, "otb100": 100, "uav123": 123, "nfs": 100, "tnl2k": 700}



def matlab_colon(first: float, step: float, last: float) -> np.ndarray:
    """MATLAB's first:step:last, built from both ends as MATLAB builds it: 0:0.05:1 holds
    0.6499999999999999 where linspace holds 0.65, which decides an overlap of exactly 13/20."""
    count = int(round((last - first) / step))
    k = np.arange(count + 1)
    return np.where(k <= count / 2, first + k * step, last - (count - k) * step)


SUCCESS_THRESHOLDS = np.linspace(0, 1, 21)  # the got10k toolkit's
LASOT_SUCCESS_THRESHOLDS = matlab_colon(0, 0.05, 1)  # the LaSOT toolkit's
PRECISION_THRESHOLDS = np.arange(0, 51, dtype=float)  # pixels
NORM_PRECISION_THRESHOLDS = np.arange(0, 51) / 100

# -----------------------------------------------------------------------------
# Layouts. A sequence is a dict: name, frames (paths), boxes_xywh (one row a frame; TrackingNet's
# test set gives the first only), absent (bool per frame, or None), description (or None).


def read_sequences(benchmark: str, root, split=None) -> list[dict]:
    """Every sequence of `benchmark` under `root`, or UserError when the folder is not laid
    out as that benchmark ships."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    readers = {"lasot": _lasot, "lasot_ext": _lasot, "otb100": _otb, "uav123": _uav123, "nfs": _nfs,
               "tnl2k": _tnl2k, "trackingnet": lambda r: _trackingnet(r, split or "test")}
    sequences = readers[benchmark](root)
    if not sequences:
        raise UserError(f"{root} does not hold {TITLES[benchmark]} in its official layout: no {LAYOUTS[benchmark]}")
    return sequences


LAYOUTS = {"lasot": "<class>/<class>-<n>/groundtruth.txt", "lasot_ext": "<class>/<class>-<n>/groundtruth.txt",
           "otb100": "<Sequence>/groundtruth_rect.txt", "uav123": "anno/UAV123/<sequence>.txt",
           "nfs": "<sequence>/30/<sequence>.txt", "tnl2k": "<sequence>/groundtruth.txt with <sequence>/imgs/",
           "trackingnet": "TEST/anno/<sequence>.txt (or TRAIN_<k>/anno/ with --split train)"}


def _boxes(path: Path, separators=",") -> np.ndarray:
    """x,y,w,h rows; OTB's files separate them by commas, tabs or spaces. A row that is not
    four numbers is a UserError naming the file and the line."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for separator in separators:
            line = line.replace(separator, " ")
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise UserError(f"{path}, line {number}: not numbers: {line.strip()!r}") from None
        if len(values) != 4:
            raise UserError(f"{path}, line {number}: {len(values)} values, not x,y,w,h")
        rows.append(values)
    return np.array(rows, dtype=float).reshape(-1, 4)


def _flags(path: Path) -> np.ndarray:
    """LaSOT's full_occlusion.txt / out_of_view.txt: one line of comma-separated 0/1."""
    try:
        return np.array([int(v) for v in re.split(r"[,\s]+", path.read_text().strip()) if v], dtype=bool)
    except ValueError:
        raise UserError(f"{path}: not a line of 0/1 flags") from None


def _lasot(root: Path) -> list[dict]:
    """root/<class>/<class>-<n>/{img/00000001.jpg..., groundtruth.txt, full_occlusion.txt,
    out_of_view.txt, nlp.txt}. A testing_set.txt at the root (as the toolkit ships) chooses the
    sequences; otherwise every sequence found is read."""
    listed = root / "testing_set.txt"
    if listed.is_file():
        names = [n.strip() for n in listed.read_text().split() if n.strip()]
        folders = [root / n.rsplit("-", 1)[0] / n for n in names]
    else:
        found = (Path(p).parent for p in glob.glob(str(root / "*" / "*" / "groundtruth.txt")))
        folders = sorted((f for f in found if f.name.rsplit("-", 1)[0] == f.parent.name), key=lambda f: f.name)
    sequences = []
    for folder in folders:
        boxes = _boxes(folder / "groundtruth.txt")
        absent = np.zeros(len(boxes), bool)
        for flag in ("full_occlusion", "out_of_view"):
            if (folder / f"{flag}.txt").is_file():
                flags = _flags(folder / f"{flag}.txt")
                if len(flags) != len(boxes):
                    raise UserError(f"{folder / f'{flag}.txt'}: {len(flags)} flags for {len(boxes)} boxes")
                absent |= flags
        nlp = folder / "nlp.txt"
        sequences.append({"name": folder.name, "frames": sorted((folder / "img").glob("*.jpg")), "boxes_xywh": boxes,
                          "absent": absent, "description": nlp.read_text().strip() if nlp.is_file() else None})
    return sequences


# OTB's sequences that use part of their folder's images (the benchmark's own configuration)
OTB_FRAME_RANGES = {"david": (300, 770), "football1": (1, 74), "freeman3": (1, 460), "freeman4": (1, 283),
                    "diving": (1, 215)}


def _otb(root: Path) -> list[dict]:
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
            sequences.append({"name": name, "frames": frames, "boxes_xywh": _boxes(file, ",\t"), "absent": None,
                              "description": None})
    return sequences


def _uav123(root: Path) -> list[dict]:
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
        sequences.append({"name": name, "frames": frames, "boxes_xywh": _boxes(file), "absent": None,
                          "description": None})
    return sequences


def _nfs(root: Path) -> list[dict]:
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
            raise UserError(f"{file}: not an NfS annotation file ({r1track.first_line(error)})") from None
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


def _tnl2k(root: Path) -> list[dict]:
    """root/<sequence>/{imgs/00001.png (or .jpg)..., groundtruth.txt, language.txt}."""
    sequences = []
    for file in sorted(root.glob("*/groundtruth.txt")):
        folder = file.parent
        if not (folder / "imgs").is_dir():
            continue
        frames = sorted(p for p in (folder / "imgs").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        language = folder / "language.txt"
        sequences.append({"name": folder.name, "frames": frames, "boxes_xywh": _boxes(file), "absent": None,
                          "description": language.read_text().strip() if language.is_file() else None})
    return sequences


def _trackingnet(root: Path, split: str) -> list[dict]:
    """root/TEST/{anno/<sequence>.txt (the first box only), frames/<sequence>/0.jpg...}; the
    train chunks TRAIN_0 ... TRAIN_11 the same with every box."""
    if split not in ("test", "train"):
        raise UserError(f"TrackingNet has the splits test and train, not {split!r}")
    chunks = ["TEST"] if split == "test" else sorted(p.name for p in root.glob("TRAIN_*") if p.is_dir())
    sequences = []
    for chunk in chunks:
        for file in sorted((root / chunk / "anno").glob("*.txt")):
            frames = sorted((root / chunk / "frames" / file.stem).glob("*.jpg"), key=lambda p: int(p.stem))
            sequences.append({"name": file.stem, "frames": frames, "boxes_xywh": _boxes(file), "absent": None,
                              "description": None})
    return sequences


# -----------------------------------------------------------------------------
# Result files, as the got10k toolkit's ExperimentOTB writes them (pytracking writes the same
# names with tabs; both are read)


def result_files(results: Path, name: str) -> tuple[Path, Path]:
    return results / f"{name}.txt", results / "times" / f"{name}_time.txt"


def times_file(results: Path, name: str) -> Path:
    """Seconds per frame: in times/ as the got10k toolkit writes them, or beside the boxes as
    pytracking does."""
    ours = result_files(results, name)[1]
    return ours if ours.is_file() else results / f"{name}_time.txt"


def fallbacks_file(results: Path, name: str) -> Path:
    return results / "fallbacks" / f"{name}_fallbacks.txt"


def write_sequence(results: Path, name: str, boxes_xywh, seconds, answer_codes=None):
    scoring.write_result_files(*result_files(results, name), fallbacks_file(results, name), boxes_xywh, seconds,
                               answer_codes)


def is_complete(results: Path, name: str, frames: int) -> bool:
    boxes = result_files(results, name)[0]
    return boxes.is_file() and len(boxes.read_text().splitlines()) == frames


def read_result(results: Path, name: str, rows: int) -> np.ndarray:
    path = result_files(results, name)[0]
    if not path.is_file():
        raise UserError(f"{path}: no such result file")
    boxes = _boxes(path, ",\t")
    if len(boxes) != rows:
        raise UserError(f"{path}: expected {rows} rows of x,y,w,h, found {len(boxes)}")
    return boxes


# -----------------------------------------------------------------------------
# Per-frame errors, one function per protocol


def _centers(boxes_xywh):
    return boxes_xywh[:, :2] + (boxes_xywh[:, 2:] - 1) / 2  # both toolkits' pixel centre


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
    offset = _centers(boxes) - _centers(truth)
    with np.errstate(divide="ignore", invalid="ignore"):  # a truth of no size: an error no threshold accepts
        norm_errors = np.linalg.norm(offset / truth[:, 2:], axis=1)
    norm_errors[np.isnan(norm_errors)] = np.inf
    return ious, np.linalg.norm(offset, axis=1), norm_errors, len(ious)


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
    offset = _centers(boxes) - _centers(truth)
    errors = np.linalg.norm(offset, axis=1)
    scored = (truth > 0).all(axis=1)  # the others are marked -1 below, whatever was computed for them
    with np.errstate(divide="ignore", invalid="ignore"):
        norm_errors = np.linalg.norm(_centers(boxes) / truth[:, 2:] - _centers(truth) / truth[:, 2:], axis=1)
    # MATLAB's max and min pass over NaN, hence fmax and fmin
    right = np.fmin(boxes[:, 0] + boxes[:, 2] - 1, truth[:, 0] + truth[:, 2] - 1)
    bottom = np.fmin(boxes[:, 1] + boxes[:, 3] - 1, truth[:, 1] + truth[:, 3] - 1)
    inter = (np.fmax(0, right - np.fmax(boxes[:, 0], truth[:, 0]) + 1)
             * np.fmax(0, bottom - np.fmax(boxes[:, 1], truth[:, 1]) + 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ious = inter / (boxes[:, 2] * boxes[:, 3] + truth[:, 2] * truth[:, 3] - inter)
    ious, errors, norm_errors = (np.where(scored, v, -1.0) for v in (ious, errors, norm_errors))
    return ious, errors, norm_errors, len(truth_xywh) + np.finfo(float).eps


def sequence_curves(ious, errors, norm_errors, frames, protocol="otb") -> dict:
    """A sequence's success, precision and normalised precision curves: the share of its
    `frames` above each overlap threshold and within each distance."""
    overlaps = LASOT_SUCCESS_THRESHOLDS if protocol == "lasot" else SUCCESS_THRESHOLDS
    return {"success": (ious[:, None] > overlaps).sum(0) / frames,
            "precision": (errors[:, None] <= PRECISION_THRESHOLDS).sum(0) / frames,
            "norm_precision": (norm_errors[:, None] <= NORM_PRECISION_THRESHOLDS).sum(0) / frames}


def mean_curve(curves: np.ndarray, protocol: str) -> np.ndarray:
    """The benchmark's curve from its sequences' curves. The LaSOT toolkit leaves out
    sequences whose curve is zero everywhere (plot_draw_save.m)."""
    if protocol == "lasot":
        kept = curves[curves.sum(axis=1) > np.finfo(float).eps]
        curves = kept if len(kept) else curves[:1] * 0
    return curves.mean(axis=0)


def scores(curves: dict) -> dict:
    return {"success_auc": float(np.mean(curves["success"])),
            "success_rate_50": float(curves["success"][10]),
            "precision_20px": float(curves["precision"][20]),
            "norm_precision_auc": float(np.mean(curves["norm_precision"])),
            "norm_precision_at_0.2": float(curves["norm_precision"][20])}


def score(results: Path, benchmark: str, sequences: list[dict], attributes=None) -> dict:
    """The report of one result folder: the benchmark's scores and curves, FPS, and the same
    per sequence, and per attribute where `attributes` (read_attributes) are given. Every
    result file is checked before anything is computed."""
    protocol = PROTOCOLS[benchmark]
    if not results.is_dir():
        raise UserError(f"{results}: no such folder")
    missing = [s["name"] for s in sequences if not result_files(results, s["name"])[0].is_file()]
    if missing:
        raise UserError(f"{results}: no results for {len(missing)} of {len(sequences)} sequences "
                        f"(first: {missing[0]}); track them first or pass --sequences")
    tracked = [read_result(results, s["name"], len(s["boxes_xywh"])) for s in sequences]
    per_sequence, curves, speeds = {}, {"success": [], "precision": [], "norm_precision": []}, []
    for sequence, boxes in zip(sequences, tracked):
        truth = sequence["boxes_xywh"]
        if protocol == "lasot":
            errors = lasot_errors(boxes, truth, sequence.get("absent"))
        else:
            errors = otb_errors(boxes, truth)
        curve = sequence_curves(*errors, protocol=protocol)
        for key in curves:
            curves[key].append(curve[key])
        times = scoring.read_times(times_file(results, sequence["name"]))
        fps = float(np.mean(1.0 / times)) if len(times) else -1.0
        speeds.append(fps)
        answers = _answer_counts(results, sequence["name"], len(truth))
        per_sequence[sequence["name"]] = {**scores(curve), "fps": fps, "frames": len(truth), **answers}
    overall = {key: mean_curve(np.array(values), protocol) for key, values in curves.items()}
    measured = [s for s in speeds if s > 0]
    report = {"benchmark": benchmark, "protocol": protocol, **scores(overall),
              "fps": float(np.mean(measured)) if measured else -1.0,
              **{f"{key}_curve": values.tolist() for key, values in overall.items()}}
    for count in ("fallbacks", "edge_holds"):  # None when some sequence has no fallbacks file
        values = [row[count] for row in per_sequence.values()]
        report[count] = None if None in values else sum(values)
    report["tracked_frames"] = sum(row["frames"] - 1 for row in per_sequence.values())
    report["init_not_found"] = [name for name, row in per_sequence.items() if row.pop("start_not_found")]
    if attributes:
        report["per_attribute"] = attribute_scores(attributes, sequences, curves, protocol)
    return {**report, "per_sequence": per_sequence}


# LaSOT's attributes in the order of its toolkit's annos/att/<sequence>.txt flags
# (run_tracker_performance_evaluation.m); LaSOT-ext uses the same
LASOT_ATTRIBUTES = (("IV", "Illumination Variation"), ("POC", "Partial Occlusion"), ("DEF", "Deformation"),
                    ("MB", "Motion Blur"), ("CM", "Camera Motion"), ("ROT", "Rotation"),
                    ("BC", "Background Clutter"), ("VC", "Viewpoint Change"), ("SV", "Scale Variation"),
                    ("FOC", "Full Occlusion"), ("FM", "Fast Motion"), ("OV", "Out-of-View"),
                    ("LR", "Low Resolution"), ("ARC", "Aspect Ratio Change"))
ATTRIBUTE_NAMES = {"lasot": LASOT_ATTRIBUTES, "lasot_ext": LASOT_ATTRIBUTES}


def read_attributes(folder, benchmark: str, sequences: list[dict]) -> dict:
    """Per-sequence attribute flags from a folder of <sequence>.txt files, one line of 0/1
    values each (the layout of LaSOT's toolkit, annos/att/): {"names": [(short, long)...],
    "flags": {sequence: bool array}}. Benchmarks without known names get A1, A2 ..."""
    folder = Path(folder)
    flags = {}
    for sequence in sequences:
        path = folder / f"{sequence['name']}.txt"
        if not path.is_file():
            raise UserError(f"{path}: no attribute file for {sequence['name']}")
        flags[sequence["name"]] = _flags(path)
    counts = {len(f) for f in flags.values()}
    if len(counts) != 1:
        raise UserError(f"{folder}: attribute files of different lengths ({sorted(counts)})")
    count = counts.pop()
    names = ATTRIBUTE_NAMES.get(benchmark)
    if names is None or len(names) != count:
        names = tuple((f"A{k + 1}", f"attribute {k + 1}") for k in range(count))
    return {"names": names, "flags": flags}


def attribute_scores(attributes: dict, sequences: list[dict], curves: dict, protocol: str) -> dict:
    """Each attribute's scores: the benchmark's curves over the sequences that have it."""
    table = {}
    for k, (short, name) in enumerate(attributes["names"]):
        having = np.array([bool(attributes["flags"][s["name"]][k]) for s in sequences])
        if not having.any():
            continue
        overall = {key: mean_curve(np.array(values)[having], protocol) for key, values in curves.items()}
        table[short] = {"name": name, "sequences": int(having.sum()), **scores(overall)}
    return table


def _answer_counts(results: Path, name: str, frames: int) -> dict:
    path = fallbacks_file(results, name)
    counts = scoring.read_answer_codes_file(path, frames) if path.is_file() else None
    return counts or {"fallbacks": None, "edge_holds": None, "start_not_found": False}


def pack_trackingnet(results: Path, names: list[str]) -> Path:
    """RESULTS.zip with one <sequence>.txt of x,y,w,h rows at its top, as TrackingNet's
    evaluation server takes it."""
    import zipfile

    archive = results.with_name(results.name + ".zip")
    tmp = results.with_name(f".{results.name}.zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as packed:
        for name in names:
            packed.write(result_files(results, name)[0], f"{name}.txt")
    os.replace(tmp, archive)
    return archive


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


# -----------------------------------------------------------------------------
# Reports: a table, success / precision / normalised precision plots


METRICS = (("success_auc", "AUC"), ("success_rate_50", "SR0.5"), ("precision_20px", "P@20px"),
           ("norm_precision_auc", "Pnorm AUC"), ("norm_precision_at_0.2", "Pnorm@0.2"), ("fps", "FPS"))


def print_reports(reports: dict, per_sequence=True):
    labels = list(reports)
    if per_sequence and len(reports) == 1:
        table = reports[labels[0]]["per_sequence"]
        width = max(len(n) for n in table)
        print(f"{'sequence':<{width}}  frames  " + "  ".join(f"{title:>9}" for _, title in METRICS))
        for name, row in table.items():
            print(f"{name:<{width}}  {row['frames']:>6}  " + "  ".join(f"{row[key]:>9.3f}" for key, _ in METRICS))
    first = reports[labels[0]]
    if first.get("per_attribute"):
        print(f"{'attribute':<26} seqs  " + "  ".join(f"{title:>9}" for _, title in METRICS[:-1]))
        for short, row in first["per_attribute"].items():
            print(f"{short + ' ' + row['name']:<26} {row['sequences']:>4}  "
                  + "  ".join(f"{row[key]:>9.3f}" for key, _ in METRICS[:-1]))
    print(f"{TITLES[first['benchmark']]}, {first['protocol']} protocol, started from the "
          f"{'description' if first.get('init') == 'text' else 'first box'}")
    width = max(12, *(len(label) for label in labels))
    print(f"{'':<11}" + "".join(f"{label:>{width + 2}}" for label in labels))
    for key, title in METRICS:
        print(f"{title:<11}" + "".join(f"{reports[label][key]:>{width + 2}.3f}" for label in labels))
    for key, title in (("fallbacks", "fallbacks"), ("edge_holds", "edge holds")):
        print(f"{title:<11}" + "".join(f"{scoring._share(reports[label], key):>{width + 2}}" for label in labels))


def plot_reports(reports: dict, folder: Path) -> list[Path]:
    title = TITLES[next(iter(reports.values()))["benchmark"]]
    plots = [("success_plot.png", SUCCESS_THRESHOLDS, "success_curve", "success_auc", "AUC", "overlap threshold",
              "success rate", f"Success plot on {title}"),
             ("precision_plot.png", PRECISION_THRESHOLDS, "precision_curve", "precision_20px", "P@20", "location error "
              "threshold (px)", "precision", f"Precision plot on {title}"),
             ("norm_precision_plot.png", NORM_PRECISION_THRESHOLDS, "norm_precision_curve", "norm_precision_auc",
              "AUC", "normalised location error threshold", "normalised precision",
              f"Normalised precision plot on {title}")]
    for file, *spec in plots:
        scoring.plot_curves(reports, folder / file, *spec)
    return [folder / file for file, *_ in plots]
