"""What every benchmark shares: its record (Benchmark), the runner that tracks its sequences
into result files through the frame loop, the result files themselves (written whole or not
at all, so a killed run resumes losing nothing), and the parts of the report they all print.

Beside each sequence's boxes and times a fallbacks file holds one answer code per frame:
0 the answer was used, 1 it could not be used (the previous answer was reused, whatever the
frame-edge rule then did), 2 the published frame-edge rule refused the box of a usable
answer; 3 on frame 1 only: started from a description the model did not find (--init text).
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import frame_loop
from cli import UserError, first_line, write_atomic

ANSWER_USED, ANSWER_UNUSABLE, EDGE_HOLD = 0, 1, 2  # the codes of a fallbacks file
START_NOT_FOUND = 3  # frame 1 only: started from a description the model did not find (--init text)
ANSWER_CODES = {frame_loop.STARTED: ANSWER_USED, frame_loop.NOT_FOUND: START_NOT_FOUND,
                frame_loop.ANSWERED: ANSWER_USED, frame_loop.UNUSABLE: ANSWER_UNUSABLE,
                frame_loop.EDGE_HOLD: EDGE_HOLD}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how its sequences are read, where their results go, and how they are
    scored, reported and packed for an evaluation server. A sequence is a dict: name, frames
    (paths), boxes_xywh (one row a frame; only the first where the truth is withheld), and
    what the benchmark has beside (GOT-10k: cover, resolution; LaSOT: absent, description)."""

    name: str                  # as --benchmark takes it
    title: str
    read: Callable             # read(root, split, wanted) -> [sequence] (it may leave out the unwanted)
    result_files: Callable     # result_files(results, name) -> (boxes, times, fallbacks) paths
    scorer: Callable           # scorer(results, benchmark, sequences, attributes) -> report
    reporter: Callable         # reporter(reports, folder, benchmark) -> [plot files]: the table printed, plots drawn
    splits: tuple = ()         # its splits, the default first; () where it has one set
    truthless: tuple = ()      # the splits whose truth is withheld (their results are packed instead)
    pack: Callable | None = None   # pack(results, names) -> the archive for the evaluation server
    test_set_size: int | None = None
    descriptions: bool = False     # its sequences describe their target (--init text)
    attributes: bool = True        # may be scored per attribute (--attributes)
    attribute_names: tuple = ()    # ((short, long), ...) in the order of its attribute files' flags

    def sequences(self, root, split=None, wanted=None) -> list[dict]:
        """Its sequences under `root` (only `wanted`, by name, when given)."""
        sequences = self.read(Path(root), split, wanted)
        if wanted:
            known = {s["name"] for s in sequences}
            unknown = [n for n in wanted if n not in known]
            if unknown:
                raise UserError(f"not among the {self.title} sequences in {root}: {', '.join(unknown)}")
            sequences = [s for s in sequences if s["name"] in wanted]
        return sequences

    def described(self, sequences) -> str:
        """`280 sequences of LaSOT`, with the size of the benchmark's test set where they differ."""
        full = self.test_set_size
        note = f" (its test set has {full})" if full and len(sequences) != full else ""
        return f"{len(sequences)} sequences of {self.title}{note}"

    def score(self, results: Path, sequences: list[dict], attributes=None) -> dict:
        """The report of one result folder of these sequences (per attribute too, where given)."""
        return self.scorer(results, self, sequences, attributes)

    def show(self, reports: dict, folder: Path) -> list[Path]:
        """The reports (a label each) printed as a table, their plots drawn into `folder`."""
        return self.reporter(reports, folder, self)

    def is_complete(self, results: Path, sequence: dict) -> bool:
        boxes, times, _ = self.result_files(results, sequence["name"])
        return boxes.is_file() and times.is_file() and len(boxes.read_text().splitlines()) == len(sequence["frames"])

    def confidence_file(self, results: Path, name: str) -> Path:
        """Beside a sequence's answer codes: each frame's confidence (nan where the answerer
        cannot say; 1 at the first frame, the given box)."""
        return self.result_files(results, name)[2].with_name(f"{name}_confidence.txt")

    def write(self, results: Path, name: str, boxes_xywh, seconds, answer_codes=None, confidences=None) -> None:
        """A sequence's result files, each whole or not at all; the boxes last: a sequence counts
        as done once they are there. No answer codes: none written (as another tracker's results)."""
        boxes, times, codes = self.result_files(results, name)
        if answer_codes is not None:
            write_atomic(codes, "".join(f"{code}\n" for code in answer_codes))
        if confidences is not None:
            write_atomic(self.confidence_file(results, name),
                         "".join(f"{float('nan') if c is None else c:.6f}\n" for c in confidences))
        write_atomic(times, "".join(f"{t:.8f}\n" for t in seconds))
        write_atomic(boxes, "".join(",".join(f"{v:.3f}" for v in box) + "\n" for box in boxes_xywh))


# -----------------------------------------------------------------------------
# The runner: a benchmark's sequences through the frame loop, batched, into result files


def track_sequences(tracker, benchmark: Benchmark, sequences: list[dict], results: Path, batch: int, progress=True,
                    readers=4, start=None):
    """Track `sequences`, B at a time, each with its own copy of `tracker` (all sharing its
    answerer: one batched call per frame step), while `readers` threads decode the frames
    to come (0: each frame read in its turn). A sequence's files are written as soon as it
    ends. `start(sequence, first_frame) -> (box_xywh, found)` gives its first box (default:
    its first true box)."""
    tracked = [([], [], [], []) for _ in sequences]  # per sequence: boxes, seconds, answer codes, confidences

    def on_frame(result):
        boxes, seconds, codes, confidences = tracked[result.sequence]
        target = result.targets[0]
        boxes.append(target.box_xywh)
        seconds.append(result.seconds)
        codes.append(ANSWER_CODES[target.outcome])
        confidences.append(target.confidence)
        sequence = sequences[result.sequence]
        if len(boxes) == len(sequence["frames"]):
            benchmark.write(results, sequence["name"], boxes, seconds, codes, confidences)

    frame_loop.run([frame_loop.Sequence(list(s["frames"]), [frame_loop.Start(
        copy.copy(tracker), functools.partial(start, s) if start else s["boxes_xywh"][0])]) for s in sequences],
        on_frame, batch=batch, readers=readers, progress="tracking" if progress else None,
        croppers=min(batch, os.cpu_count() or 1))


# -----------------------------------------------------------------------------
# Result files read back


def read_box_rows(path: Path, separators=",") -> np.ndarray:
    """x,y,w,h rows (an annotation or a result file); OTB's files separate them by commas, tabs
    or spaces. A row that is not four numbers is a UserError naming the file and the line."""
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


def read_times(path: Path) -> np.ndarray:
    """The positive seconds per frame of a times file (none when there is no file)."""
    if not path.is_file():
        return np.zeros(0)
    try:
        times = np.loadtxt(path, delimiter=",", ndmin=1)
    except ValueError as error:
        raise UserError(f"{path}: not a file of seconds per frame ({first_line(error)})") from None
    times = times.reshape(-1)
    return times[np.isfinite(times) & (times > 0)]


def read_answer_codes(path: Path, frames: int):
    """A fallbacks file as counts: {fallbacks, edge_holds, start_not_found}, or None when
    there is none (results from another tracker)."""
    if not path.is_file():
        return None
    try:
        codes = np.loadtxt(path, dtype=int, ndmin=1)
    except ValueError as error:
        raise UserError(f"{path}: not a file of answer codes ({first_line(error)})") from None
    if codes.shape != (frames,):
        raise UserError(f"{path}: expected {frames} rows, found {codes.shape[0]}")
    return {"fallbacks": int((codes == ANSWER_UNUSABLE).sum()), "edge_holds": int((codes == EDGE_HOLD).sum()),
            "start_not_found": bool(codes[0] == START_NOT_FOUND)}


def count_answers(report: dict, per_sequence: dict) -> None:
    """The fallbacks and edge holds of all sequences (None when some sequence has no
    fallbacks file), and the frames tracked after the first, into `report`."""
    for count in ("fallbacks", "edge_holds"):
        values = [row[count] for row in per_sequence.values()]
        report[count] = None if None in values else sum(values)
    report["tracked_frames"] = sum(row["frames"] - 1 for row in per_sequence.values())


# -----------------------------------------------------------------------------
# What every report prints and draws


def share_of_tracked(report, key) -> str:
    """`12 (0.5%)` of the tracked frames; `-` for results without fallback files."""
    if report.get(key) is None:
        return "-"
    return f"{report[key]} ({100 * report[key] / max(report.get('tracked_frames') or 0, 1):.1f}%)"


def print_answer_counts(reports: dict, width: int) -> None:
    for key, title in (("fallbacks", "fallbacks"), ("edge_holds", "edge holds")):
        print(f"{title:<11}" + "".join(f"{share_of_tracked(reports[label], key):>{width + 2}}" for label in reports))


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


def pack_zip(results: Path, files) -> Path:
    """RESULTS.zip beside the results folder, holding `files` ((path, name in the archive)),
    written whole or not at all."""
    import zipfile

    archive = results.with_name(results.name + ".zip")
    tmp = results.with_name(f".{results.name}.zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as packed:
        for path, name in files:
            packed.write(path, name)
    os.replace(tmp, archive)
    return archive
