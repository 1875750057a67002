"""GOT-10k: its folder layout, its result files, and scoring by the official toolkit's rules.

The layout: SPLIT/list.txt, SPLIT/<sequence>/00000001.jpg ..., groundtruth.txt, cover.label,
absence.label, cut_by_image.label, meta_info.ini. Results are laid out as the official toolkit
writes them: RESULTS/<seq>/<seq>_001.txt (x,y,w,h per frame, the first row the given box),
<seq>_time.txt (seconds per frame), and beside them <seq>_fallbacks.txt (answer codes, see
benchmarks.results). Scoring follows the toolkit: frame 1 left out, only frames where the
target is visible, both boxes clipped to the image, IoUs pooled over all frames. The test
split's results are packed into RESULTS.zip for the evaluation server.
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

import numpy as np

from benchmarks.results import (
    Benchmark,
    count_answers,
    pack_zip,
    plot_curves,
    print_answer_counts,
    read_answer_codes,
    read_times,
)
from cli import UserError, first_line

# -----------------------------------------------------------------------------
# The layout


def read_got10k_split(split_dir) -> list[str]:
    """Sequence names of a GOT-10k split folder (its list.txt)."""
    list_file = Path(split_dir) / "list.txt"
    if not list_file.is_file():
        raise UserError(f"{split_dir} is not a GOT-10k split folder: no list.txt")
    return [line.strip() for line in list_file.read_text().splitlines() if line.strip()]


def read_got10k_sequence(seq_dir) -> dict:
    """One sequence: frame paths, ground truth (x, y, w, h per frame; only the first on the
    test split), the labels that exist (cover, absence, cut_by_image) and the resolution."""
    seq_dir = Path(seq_dir)
    frames = sorted(seq_dir.glob("*.jpg"))
    boxes_xywh = np.loadtxt(seq_dir / "groundtruth.txt", delimiter=",", ndmin=2)
    sequence = {"name": seq_dir.name, "frames": frames, "boxes_xywh": boxes_xywh}
    for label in ("cover", "absence", "cut_by_image"):
        label_file = seq_dir / f"{label}.label"
        if label_file.is_file():
            sequence[label] = np.loadtxt(label_file, ndmin=1)
    meta = seq_dir / "meta_info.ini"
    if meta.is_file():
        parser = configparser.ConfigParser()
        parser.read_string(meta.read_text())
        values = dict(parser.items(parser.sections()[0])) if parser.sections() else {}
        if "resolution" in values:
            sequence["resolution"] = tuple(int(v) for v in re.findall(r"\d+", values["resolution"])[:2])
    return sequence


def read_split(root: Path, split: str, wanted=None) -> list[dict]:
    """The sequences of the split folder root/<split> (only `wanted`, by name, when given), in
    its list.txt order; the others are not read."""
    split_dir = Path(root) / split
    names = read_got10k_split(split_dir)
    if wanted:
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise UserError(f"not in {split_dir / 'list.txt'}: {', '.join(unknown)}")
        names = [n for n in names if n in wanted]
    return [read_got10k_sequence(split_dir / name) for name in names]


def result_files(results: Path, name: str) -> tuple[Path, Path, Path]:
    """(boxes, times, answer codes) of a sequence: RESULTS/<seq>/<seq>_001.txt, _time.txt, _fallbacks.txt."""
    folder = results / name
    return folder / f"{name}_001.txt", folder / f"{name}_time.txt", folder / f"{name}_fallbacks.txt"


# -----------------------------------------------------------------------------
# Result files


def read_boxes(path: Path, rows: int) -> np.ndarray:
    """An x,y,w,h result file, or UserError naming the file and what is wrong with it."""
    try:
        boxes = np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a file of x,y,w,h rows ({first_line(error)})") from None
    if boxes.shape != (rows, 4):
        raise UserError(f"{path}: expected {rows} rows of x,y,w,h, found {boxes.shape[0]} rows of {boxes.shape[1]}")
    if not np.isfinite(boxes).all():
        raise UserError(f"{path}: holds NaN or infinite values")
    return boxes


# -----------------------------------------------------------------------------
# Scoring, by the official toolkit's rules


def bounded_iou(boxes_a, boxes_b, width, height) -> np.ndarray:
    """IoU of x,y,w,h rows after clipping both to the image exactly as the official toolkit
    does: x into [0, W], then w into [0, W - x] (so a box hanging over the left edge keeps
    its width), likewise y and h."""
    clipped = []
    for boxes in (boxes_a, boxes_b):
        boxes = np.array(boxes, dtype=float)
        boxes[:, 0] = np.clip(boxes[:, 0], 0, width)
        boxes[:, 1] = np.clip(boxes[:, 1], 0, height)
        boxes[:, 2] = np.clip(boxes[:, 2], 0, width - boxes[:, 0])
        boxes[:, 3] = np.clip(boxes[:, 3], 0, height - boxes[:, 1])
        clipped.append(boxes)
    a, b = clipped
    w = np.maximum(np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0)
    h = np.maximum(np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0)
    inter = w * h
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.clip(inter / (union + np.finfo(float).eps), 0.0, 1.0)


THRESHOLDS = np.linspace(0, 1, 101)


def summarise(ious: np.ndarray, times: np.ndarray) -> dict:
    return {"ao": float(np.mean(ious)) if len(ious) else 0.0,
            "sr50": float(np.mean(ious > 0.5)) if len(ious) else 0.0,
            "sr75": float(np.mean(ious > 0.75)) if len(ious) else 0.0,
            "fps": float(np.mean(1.0 / times)) if len(times) else -1.0,
            "succ_curve": [float(np.mean(ious > t)) if len(ious) else 0.0 for t in THRESHOLDS]}


def score(results: Path, benchmark, sequences: list[dict], attributes=None) -> dict:
    """The report of one result folder: overall AO, SR0.5, SR0.75, FPS, success curve, and
    the same per sequence. Every result file is checked before anything is computed."""
    pooled_ious, pooled_times, per_sequence, missing = [], [], {}, []
    checked = []
    for sequence in sequences:
        name, truth = sequence["name"], sequence["boxes_xywh"]
        repetitions = sorted((results / name).glob(f"{name}_[0-9][0-9][0-9].txt"))
        if not repetitions:
            missing.append(name)
            continue
        checked.append((name, sequence, [read_boxes(f, len(truth)) for f in repetitions]))
    if missing:
        raise UserError(f"{results}: no results for {len(missing)} of {len(sequences)} sequences "
                        f"(first: {missing[0]}); track them first or pass --sequences")
    for name, sequence, runs in checked:
        truth = sequence["boxes_xywh"]
        if "resolution" not in sequence:
            folder = Path(sequence["frames"][0]).parent if sequence["frames"] else Path(name)
            raise UserError(f"{folder / 'meta_info.ini'}: no resolution")
        width, height = sequence["resolution"]
        visible = sequence["cover"][1:] > 0 if "cover" in sequence else np.ones(len(truth) - 1, bool)
        ious = np.concatenate([bounded_iou(run[1:], truth[1:], width, height)[visible] for run in runs])
        _, times_file, codes_file = result_files(results, name)
        times = read_times(times_file)
        pooled_ious.append(ious)
        pooled_times.append(times)
        report = summarise(ious, times)
        del report["succ_curve"]
        answers = read_answer_codes(codes_file, len(truth)) or {"fallbacks": None, "edge_holds": None}
        answers.pop("start_not_found", None)  # GOT-10k sequences start from their box
        per_sequence[name] = {**report, "frames": len(truth), **answers}
    report = summarise(np.concatenate(pooled_ious), np.concatenate(pooled_times))
    count_answers(report, per_sequence)
    return {**report, "per_sequence": per_sequence}


def print_reports(reports: dict, per_sequence=True):
    labels = list(reports)
    if per_sequence and len(reports) == 1:
        table = reports[labels[0]]["per_sequence"]
        width = max(len(n) for n in table)
        print(f"{'sequence':<{width}}  frames     AO  SR0.5  SR0.75     FPS  fallbacks  edge holds")
        for name, row in table.items():
            print(f"{name:<{width}}  {row['frames']:>6}  {row['ao']:.3f}  {row['sr50']:.3f}   {row['sr75']:.3f}  "
                  f"{row['fps']:>6.2f}  {_count(row.get('fallbacks')):>9}  {_count(row.get('edge_holds')):>10}")
    width = max(12, *(len(label) for label in labels))
    print(f"{'':<11}" + "".join(f"{label:>{width + 2}}" for label in labels))
    for key, title in (("ao", "AO"), ("sr50", "SR0.5"), ("sr75", "SR0.75"), ("fps", "FPS")):
        print(f"{title:<11}" + "".join(f"{reports[label][key]:>{width + 2}.3f}" for label in labels))
    print_answer_counts(reports, width)
    for label, report in reports.items():
        held = (report.get("fallbacks") or 0) + (report.get("edge_holds") or 0)
        if held > 0.5 * (report.get("tracked_frames") or 0):
            print(f"warning: {label}: most answers could not be used or were refused at the frame edge; its boxes "
                  "are mostly held, not tracked", file=sys.stderr)


def _count(value) -> str:
    return "-" if value is None else str(value)


def plot_success(reports: dict, png: Path):
    plot_curves(reports, png, THRESHOLDS, "succ_curve", "ao", "AO", "overlap threshold", "success rate",
                "Success plot on GOT-10k")


def show_reports(reports: dict, folder: Path, benchmark=None) -> list[Path]:
    """The table printed, the success plot drawn into `folder`."""
    print_reports(reports)
    plot_success(reports, folder / "success_plot.png")
    return [folder / "success_plot.png"]


def pack_for_server(results: Path, names: list[str]) -> Path:
    """RESULTS.zip: <seq>/<seq>_001.txt and <seq>_time.txt, as the evaluation server takes
    them, and nothing else."""
    return pack_zip(results, [(file, f"{name}/{file.name}") for name in names
                              for file in result_files(results, name)[:2]])


GOT10K = Benchmark("got10k", "GOT-10k", read_split, result_files, score, show_reports, splits=("val", "test", "train"),
                   truthless=("test",), pack=pack_for_server, attributes=False)
