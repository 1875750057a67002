"""GOT-10k: its result files, a tracker run over a split, and scoring by the official rules.

Results are laid out as the official toolkit writes them: RESULTS/<seq>/<seq>_001.txt (x,y,w,h
per frame, the first row the given box), <seq>_time.txt (seconds per frame), and beside them
<seq>_fallbacks.txt (one code per frame: 0 the answer was used, 1 it could not be used, 2 the
frame-edge rule refused its box). Every file is written whole or not at all, so a killed run
resumes losing nothing. Scoring follows the toolkit: frame 1 left out, only frames where the
target is visible, both boxes clipped to the image, IoUs pooled over all frames.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import numpy as np

import r1track
from data import read_got10k_sequence, read_got10k_split
from r1track import UserError

# -----------------------------------------------------------------------------
# Result files


def result_files(results: Path, name: str) -> tuple[Path, Path]:
    return results / name / f"{name}_001.txt", results / name / f"{name}_time.txt"


def fallbacks_file(results: Path, name: str) -> Path:
    return results / name / f"{name}_fallbacks.txt"


ANSWER_USED, ANSWER_UNUSABLE, EDGE_HOLD = 0, 1, 2  # the codes of a fallbacks file
START_NOT_FOUND = 3  # frame 1 only: started from a description the model did not find (--init text)


def is_complete(results: Path, name: str, frames: int) -> bool:
    boxes, times = result_files(results, name)
    if not (boxes.is_file() and times.is_file()):
        return False
    return len(boxes.read_text().splitlines()) == frames


def write_sequence(results: Path, name: str, boxes_xywh, seconds, answer_codes=None):
    write_result_files(*result_files(results, name), fallbacks_file(results, name), boxes_xywh, seconds, answer_codes)


def write_result_files(boxes_file: Path, times_file: Path, codes_file: Path, boxes_xywh, seconds, answer_codes=None):
    """A sequence's result files, each whole or not at all; the boxes last: a sequence counts
    as done once they are there."""
    if answer_codes is not None:
        r1track.write_atomic(codes_file, "".join(f"{code}\n" for code in answer_codes))
    r1track.write_atomic(times_file, "".join(f"{t:.8f}\n" for t in seconds))
    r1track.write_atomic(boxes_file, "".join(",".join(f"{v:.3f}" for v in box) + "\n" for box in boxes_xywh))


def read_boxes(path: Path, rows: int) -> np.ndarray:
    """An x,y,w,h result file, or UserError naming the file and what is wrong with it."""
    try:
        boxes = np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a file of x,y,w,h rows ({r1track.first_line(error)})") from None
    if boxes.shape != (rows, 4):
        raise UserError(f"{path}: expected {rows} rows of x,y,w,h, found {boxes.shape[0]} rows of {boxes.shape[1]}")
    if not np.isfinite(boxes).all():
        raise UserError(f"{path}: holds NaN or infinite values")
    return boxes


def read_times(path: Path) -> np.ndarray:
    if not path.is_file():
        return np.zeros(0)
    try:
        times = np.loadtxt(path, delimiter=",", ndmin=1)
    except ValueError as error:
        raise UserError(f"{path}: not a file of seconds per frame ({r1track.first_line(error)})") from None
    times = times.reshape(-1)
    return times[np.isfinite(times) & (times > 0)]


def read_answer_codes(results: Path, name: str, frames: int):
    """The fallbacks file of a sequence as counts, or None when there is none (results from
    another tracker)."""
    path = fallbacks_file(results, name)
    return read_answer_codes_file(path, frames) if path.is_file() else None


def read_answer_codes_file(path: Path, frames: int) -> dict:
    try:
        codes = np.loadtxt(path, dtype=int, ndmin=1)
    except ValueError as error:
        raise UserError(f"{path}: not a file of answer codes ({r1track.first_line(error)})") from None
    if codes.shape != (frames,):
        raise UserError(f"{path}: expected {frames} rows, found {codes.shape[0]}")
    return {"fallbacks": int((codes == ANSWER_UNUSABLE).sum()), "edge_holds": int((codes == EDGE_HOLD).sum()),
            "start_not_found": bool(codes[0] == START_NOT_FOUND)}


# -----------------------------------------------------------------------------
# Running a tracker over a split: batched, resumable


def load_sequences(root: Path, split: str, wanted=None) -> list[str]:
    split_dir = root / split
    names = read_got10k_split(split_dir)
    if wanted:
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise UserError(f"not in {split_dir / 'list.txt'}: {', '.join(unknown)}")
        names = [n for n in names if n in wanted]
    return names


class SequenceRun:
    """One sequence being tracked: its frames (read ahead), its tracker and what it has produced."""

    def __init__(self, tracker, sequence: dict, frames, start=None):
        self.name, self.total, self.tracker, self.frames = sequence["name"], len(sequence["frames"]), tracker, frames
        started = time.perf_counter()
        first = next(frames)
        box, found = start(sequence, first) if start else (sequence["boxes_xywh"][0], True)
        tracker.init(first, box)
        self.boxes, self.seconds = [list(box)], [time.perf_counter() - started]
        self.answer_codes = [ANSWER_USED if found else START_NOT_FOUND]

    def add(self, box_xywh, seconds, fallbacks_before: int, edge_holds_before: int):
        self.boxes.append(box_xywh)
        self.seconds.append(seconds)
        code = ANSWER_USED
        if self.tracker.fallbacks > fallbacks_before:
            code = ANSWER_UNUSABLE
        elif self.tracker.edge_holds > edge_holds_before:
            code = EDGE_HOLD
        self.answer_codes.append(code)

    @property
    def done(self):
        return len(self.boxes) == self.total


def track_sequences(tracker, sequences: list[dict], results: Path, batch: int, progress=True, readers=4,
                    write=None, start=None):
    """Track `sequences` (dicts with name, frames, boxes_xywh) B at a time: each frame step
    asks the answerer about the next frame of every active sequence in one call, while
    `readers` threads decode the frames to come (0: each frame read when its turn comes).
    A sequence's files are written by `write` (default: GOT-10k's layout) when it ends;
    `start(sequence, first_frame)` gives its first box and whether it was found (default:
    its first true box)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    write = write or write_sequence
    pending, active, finished = list(sequences), [], 0
    bar = tqdm(total=sum(len(s["frames"]) for s in sequences), desc="tracking", unit="frame", disable=not progress,
               dynamic_ncols=True)
    croppers = min(batch, os.cpu_count() or 1)  # the batch's crops cut at once, between the model's passes
    model = getattr(tracker.answerer, "model", None)  # None: answers come from a server or a function
    readers = r1track.frame_readers(model is not None and model.device.type == "cpu", readers) if readers else 0
    with ThreadPoolExecutor(max_workers=max(readers, 1)) as pool, ThreadPoolExecutor(max_workers=croppers) as cutting:
        def frames_of(sequence):
            if readers:
                return r1track.read_ahead(sequence["frames"], pool)
            return map(r1track.read_frame, sequence["frames"])

        upcoming = frames_of(pending[0]) if pending else None  # the next sequence's frames, read while it waits
        while pending or active:
            while pending and len(active) < batch:
                # every sequence has its own tracker state; all share one answerer (one model)
                sequence, frames = pending.pop(0), upcoming
                upcoming = frames_of(pending[0]) if pending else None
                active.append(SequenceRun(copy.copy(tracker), sequence, frames, start))
                bar.update()
            tracking = [run for run in active if not run.done]  # a sequence of one frame is done at once
            started = time.perf_counter()
            frames = [next(run.frames) for run in tracking]
            before = [(run.tracker.fallbacks, run.tracker.edge_holds) for run in tracking]
            boxes = r1track.update_batch([run.tracker for run in tracking], frames, cutting) if tracking else []
            seconds = (time.perf_counter() - started) / max(len(tracking), 1)  # the batch's time, shared out
            for run, box, counts in zip(tracking, boxes, before):
                run.add(box, seconds, *counts)
            bar.update(len(tracking))
            for run in [run for run in active if run.done]:
                write(results, run.name, run.boxes, run.seconds, run.answer_codes)
                active.remove(run)
                finished += 1
                bar.set_postfix_str(f"{finished}/{len(sequences)} sequences")
    bar.close()


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


def score(results: Path, split_dir: Path, names: list[str]) -> dict:
    """The report of one result folder: overall AO, SR0.5, SR0.75, FPS, success curve, and
    the same per sequence. Every result file is checked before anything is computed."""
    pooled_ious, pooled_times, per_sequence, missing = [], [], {}, []
    checked = []
    for name in names:
        sequence = read_got10k_sequence(split_dir / name)
        truth = sequence["boxes_xywh"]
        repetitions = sorted((results / name).glob(f"{name}_[0-9][0-9][0-9].txt"))
        if not repetitions:
            missing.append(name)
            continue
        checked.append((name, sequence, [read_boxes(f, len(truth)) for f in repetitions]))
    if missing:
        raise UserError(f"{results}: no results for {len(missing)} of {len(names)} sequences "
                        f"(first: {missing[0]}); track them first or pass --sequences")
    for name, sequence, runs in checked:
        truth = sequence["boxes_xywh"]
        if "resolution" not in sequence:
            raise UserError(f"{split_dir / name / 'meta_info.ini'}: no resolution")
        width, height = sequence["resolution"]
        visible = sequence["cover"][1:] > 0 if "cover" in sequence else np.ones(len(truth) - 1, bool)
        ious = np.concatenate([bounded_iou(run[1:], truth[1:], width, height)[visible] for run in runs])
        times = read_times(result_files(results, name)[1])
        pooled_ious.append(ious)
        pooled_times.append(times)
        report = summarise(ious, times)
        del report["succ_curve"]
        answers = read_answer_codes(results, name, len(truth)) or {"fallbacks": None, "edge_holds": None}
        answers.pop("start_not_found", None)  # GOT-10k sequences start from their box
        per_sequence[name] = {**report, "frames": len(truth), **answers}
    report = summarise(np.concatenate(pooled_ious), np.concatenate(pooled_times))
    for count in ("fallbacks", "edge_holds"):  # None when some sequence has no fallbacks file
        values = [row[count] for row in per_sequence.values()]
        report[count] = None if None in values else sum(values)
    report["tracked_frames"] = sum(row["frames"] - 1 for row in per_sequence.values())
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
    for key, title in (("fallbacks", "fallbacks"), ("edge_holds", "edge holds")):
        print(f"{title:<11}" + "".join(f"{_share(reports[label], key):>{width + 2}}" for label in labels))
    for label, report in reports.items():
        held = (report.get("fallbacks") or 0) + (report.get("edge_holds") or 0)
        if held > 0.5 * _tracked(report):
            print(f"warning: {label}: most answers could not be used or were refused at the frame edge; its boxes "
                  "are mostly held, not tracked", file=sys.stderr)


def _count(value) -> str:
    return "-" if value is None else str(value)


def _tracked(report) -> int:
    return report.get("tracked_frames") or 0


def _share(report, key) -> str:
    """`12 (0.5%)` of the tracked frames; `-` for results without fallback files."""
    if report.get(key) is None:
        return "-"
    return f"{report[key]} ({100 * report[key] / max(_tracked(report), 1):.1f}%)"


def plot_success(reports: dict, png: Path):
    plot_curves(reports, png, THRESHOLDS, "succ_curve", "ao", "AO", "overlap threshold", "success rate",
                "Success plot on GOT-10k")


def plot_curves(reports: dict, png: Path, thresholds, curve_key: str, score_key: str, score_name: str, xlabel: str,
                ylabel: str, title: str):
    """One curve per report, best first, its score in the legend; written whole or not at all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, report in sorted(reports.items(), key=lambda item: -item[1][score_key]):
        ax.plot(thresholds, report[curve_key], label=f"{label} [{score_name} {report[score_key]:.3f}]")
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(thresholds[0], thresholds[-1]), ylim=(0, 1), title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left" if "succ" in curve_key else "lower right", fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, png)


def pack_for_server(results: Path, names: list[str]) -> Path:
    """RESULTS.zip: <seq>/<seq>_001.txt and <seq>_time.txt, as the evaluation server takes
    them, and nothing else."""
    import zipfile

    archive = results.with_name(results.name + ".zip")
    tmp = results.with_name(f".{results.name}.zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as packed:
        for name in names:
            for file in result_files(results, name):
                packed.write(file, f"{name}/{file.name}")
    os.replace(tmp, archive)
    return archive
