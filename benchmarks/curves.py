"""The benchmarks scored by success, precision and normalised precision curves: those of the
got10k toolkit's ExperimentOTB (otb.py: OTB100, UAV123, NfS, TrackingNet) and of the LaSOT
toolkit (lasot.py: LaSOT, LaSOT-ext, TNL2K). Their result files are laid out as the got10k
toolkit writes them: RESULTS/<sequence>.txt of x,y,w,h rows, RESULTS/times/<sequence>_time.txt
(pytracking's <sequence>_time.txt beside the boxes is read too), RESULTS/fallbacks/.

Metrics, named so nobody confuses them: success curve over 21 overlap thresholds and its
area (`success_auc`), precision at 20 px (`precision_20px`), normalised precision (centre
error divided by the truth's width and height) over thresholds 0..0.5, both as the area under
that curve (`norm_precision_auc`, what the LaSOT and TrackingNet papers rank by) and as its
value at 0.2 (`norm_precision_at_0.2`, what pytracking-derived papers report as "P_norm").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from benchmarks.results import (
    count_answers,
    plot_curves,
    print_answer_counts,
    read_answer_codes,
    read_box_rows,
    read_times,
)
from cli import UserError

SUCCESS_THRESHOLDS = np.linspace(0, 1, 21)  # the got10k toolkit's
PRECISION_THRESHOLDS = np.arange(0, 51, dtype=float)  # pixels
NORM_PRECISION_THRESHOLDS = np.arange(0, 51) / 100


class Protocol(NamedTuple):
    """How a toolkit scores: per-frame errors(boxes_xywh, truth_xywh, sequence) -> (IoU, centre
    error, normalised centre error, frames counted), its overlap thresholds, and whether the
    mean curve leaves out sequences whose curve is zero everywhere."""

    name: str
    errors: Callable
    overlaps: np.ndarray
    drops_zero_curves: bool = False


def official_layout(read, title: str, layout: str):
    """read(root, split), refusing a folder that does not hold the benchmark in its official layout."""
    def read_checked(root: Path, split=None, wanted=None) -> list[dict]:  # all read; Benchmark picks the wanted
        if not root.is_dir():
            raise UserError(f"{root}: no such folder")
        sequences = read(root, split)
        if not sequences:
            raise UserError(f"{root} does not hold {title} in its official layout: no {layout}")
        return sequences

    return read_checked


def read_flags(path: Path) -> np.ndarray:
    """LaSOT's full_occlusion.txt / out_of_view.txt and attribute files: one line of comma-separated 0/1."""
    try:
        return np.array([int(v) for v in re.split(r"[,\s]+", path.read_text().strip()) if v], dtype=bool)
    except ValueError:
        raise UserError(f"{path}: not a line of 0/1 flags") from None


# -----------------------------------------------------------------------------
# Result files, as the got10k toolkit's ExperimentOTB writes them (pytracking writes the same
# names with tabs; both are read)


def result_files(results: Path, name: str) -> tuple[Path, Path, Path]:
    return results / f"{name}.txt", results / "times" / f"{name}_time.txt", \
        results / "fallbacks" / f"{name}_fallbacks.txt"


def times_file(results: Path, name: str) -> Path:
    """Seconds per frame: in times/ as the got10k toolkit writes them, or beside the boxes as
    pytracking does."""
    ours = result_files(results, name)[1]
    return ours if ours.is_file() else results / f"{name}_time.txt"


def read_result(results: Path, name: str, rows: int) -> np.ndarray:
    path = result_files(results, name)[0]
    if not path.is_file():
        raise UserError(f"{path}: no such result file")
    boxes = read_box_rows(path, ",\t")
    if len(boxes) != rows:
        raise UserError(f"{path}: expected {rows} rows of x,y,w,h, found {len(boxes)}")
    return boxes


# -----------------------------------------------------------------------------
# Curves and scores


def pixel_centres(boxes_xywh):
    return boxes_xywh[:, :2] + (boxes_xywh[:, 2:] - 1) / 2  # both toolkits' pixel centre


def sequence_curves(ious, errors, norm_errors, frames, overlaps=SUCCESS_THRESHOLDS) -> dict:
    """A sequence's success, precision and normalised precision curves: the share of its
    `frames` above each overlap threshold and within each distance."""
    return {"success": (ious[:, None] > overlaps).sum(0) / frames,
            "precision": (errors[:, None] <= PRECISION_THRESHOLDS).sum(0) / frames,
            "norm_precision": (norm_errors[:, None] <= NORM_PRECISION_THRESHOLDS).sum(0) / frames}


def mean_curve(curves: np.ndarray, protocol: Protocol) -> np.ndarray:
    """The benchmark's curve from its sequences' curves. The LaSOT toolkit leaves out
    sequences whose curve is zero everywhere (plot_draw_save.m)."""
    if protocol.drops_zero_curves:
        kept = curves[curves.sum(axis=1) > np.finfo(float).eps]
        curves = kept if len(kept) else curves[:1] * 0
    return curves.mean(axis=0)


def scores(curves: dict) -> dict:
    return {"success_auc": float(np.mean(curves["success"])),
            "success_rate_50": float(curves["success"][10]),
            "precision_20px": float(curves["precision"][20]),
            "norm_precision_auc": float(np.mean(curves["norm_precision"])),
            "norm_precision_at_0.2": float(curves["norm_precision"][20])}


def score(results: Path, benchmark, sequences: list[dict], attributes=None, protocol: Protocol = None) -> dict:
    """The report of one result folder: the benchmark's scores and curves, FPS, and the same
    per sequence, and per attribute where `attributes` (read_attributes) are given. Every
    result file is checked before anything is computed."""
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
        curve = sequence_curves(*protocol.errors(boxes, truth, sequence), overlaps=protocol.overlaps)
        for key in curves:
            curves[key].append(curve[key])
        times = read_times(times_file(results, sequence["name"]))
        fps = float(np.mean(1.0 / times)) if len(times) else -1.0
        speeds.append(fps)
        answers = _answer_counts(results, sequence["name"], len(truth))
        per_sequence[sequence["name"]] = {**scores(curve), "fps": fps, "frames": len(truth), **answers}
    overall = {key: mean_curve(np.array(values), protocol) for key, values in curves.items()}
    measured = [s for s in speeds if s > 0]
    report = {"benchmark": benchmark.name, "protocol": protocol.name, **scores(overall),
              "fps": float(np.mean(measured)) if measured else -1.0,
              **{f"{key}_curve": values.tolist() for key, values in overall.items()}}
    count_answers(report, per_sequence)
    report["init_not_found"] = [name for name, row in per_sequence.items() if row.pop("start_not_found")]
    if attributes:
        report["per_attribute"] = attribute_scores(attributes, sequences, curves, protocol)
    return {**report, "per_sequence": per_sequence}


def read_attributes(folder, benchmark, sequences: list[dict]) -> dict:
    """Per-sequence attribute flags from a folder of <sequence>.txt files, one line of 0/1
    values each (the layout of LaSOT's toolkit, annos/att/): {"names": [(short, long)...],
    "flags": {sequence: bool array}}. Benchmarks without known names get A1, A2 ..."""
    folder = Path(folder)
    flags = {}
    for sequence in sequences:
        path = folder / f"{sequence['name']}.txt"
        if not path.is_file():
            raise UserError(f"{path}: no attribute file for {sequence['name']}")
        flags[sequence["name"]] = read_flags(path)
    counts = {len(f) for f in flags.values()}
    if len(counts) != 1:
        raise UserError(f"{folder}: attribute files of different lengths ({sorted(counts)})")
    count = counts.pop()
    names = benchmark.attribute_names
    if len(names) != count:
        names = tuple((f"A{k + 1}", f"attribute {k + 1}") for k in range(count))
    return {"names": names, "flags": flags}


def attribute_scores(attributes: dict, sequences: list[dict], curves: dict, protocol: Protocol) -> dict:
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
    counts = read_answer_codes(result_files(results, name)[2], frames)
    return counts or {"fallbacks": None, "edge_holds": None, "start_not_found": False}


# -----------------------------------------------------------------------------
# Reports: a table, success / precision / normalised precision plots


METRICS = (("success_auc", "AUC"), ("success_rate_50", "SR0.5"), ("precision_20px", "P@20px"),
           ("norm_precision_auc", "Pnorm AUC"), ("norm_precision_at_0.2", "Pnorm@0.2"), ("fps", "FPS"))


def print_reports(reports: dict, title: str, per_sequence=True):
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
    print(f"{title}, {first['protocol']} protocol, started from the "
          f"{'description' if first.get('init') == 'text' else 'first box'}")
    width = max(12, *(len(label) for label in labels))
    print(f"{'':<11}" + "".join(f"{label:>{width + 2}}" for label in labels))
    for key, name in METRICS:
        print(f"{name:<11}" + "".join(f"{reports[label][key]:>{width + 2}.3f}" for label in labels))
    print_answer_counts(reports, width)


def show_reports(reports: dict, folder: Path, benchmark) -> list[Path]:
    """The table printed, the success, precision and normalised precision plots drawn into `folder`."""
    title = benchmark.title
    print_reports(reports, title)
    plots = [("success_plot.png", SUCCESS_THRESHOLDS, "success_curve", "success_auc", "AUC", "overlap threshold",
              "success rate", f"Success plot on {title}"),
             ("precision_plot.png", PRECISION_THRESHOLDS, "precision_curve", "precision_20px", "P@20", "location error "
              "threshold (px)", "precision", f"Precision plot on {title}"),
             ("norm_precision_plot.png", NORM_PRECISION_THRESHOLDS, "norm_precision_curve", "norm_precision_auc",
              "AUC", "normalised location error threshold", "normalised precision",
              f"Normalised precision plot on {title}")]
    for file, *spec in plots:
        plot_curves(reports, folder / file, *spec)
    return [folder / file for file, *_ in plots]
