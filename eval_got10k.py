"""Run and score R1-Track on GOT-10k by the official rules, or on another benchmark by its own.

  python eval_got10k.py --data GOT-10k --split val --model runs/sft --out results/sft
  torchrun --nproc_per_node 8 eval_got10k.py --data GOT-10k --split test --out results/r1 --batch 8
  python eval_got10k.py --data GOT-10k --split val --eval-only results/sft results/grpo
  python eval_got10k.py --benchmark lasot --data LaSOTTest --model runs/grpo --out results/lasot --batch 8
  python eval_got10k.py --benchmark tnl2k --data TNL2K_test --init text --out results/tnl2k-text

Tracking writes the official layout, RESULTS/<seq>/<seq>_001.txt (x,y,w,h per frame, the
first row the given box) and <seq>_time.txt (seconds per frame), and beside them
<seq>_fallbacks.txt: one number per frame, 1 where the model's answer could not be used
(the previous answer was reused, whatever the frame-edge rule then did), 2 where the
published frame-edge rule refused the box of a usable answer, else 0. A finished sequence
is skipped when the run is started again, and every file is written whole or not at all,
so a killed run resumes losing nothing. --batch B tracks B sequences at once through one
batched model call per frame; under torchrun the ranks share the sequences. The loop is
the published one unless the model's settings or --loop say.

Scoring (val; --eval-only for any result folders) follows the official toolkit: frame 1
left out, only frames where the target is visible (cover > 0), both boxes clipped to the
image, IoUs pooled over all frames of all sequences. It reports AO, SR0.5, SR0.75, the
success curve (101 thresholds), FPS, the fallbacks and edge holds and a per-sequence table,
and writes success_plot.png. The test split's results are packed into RESULTS.zip for the
evaluation server.

--benchmark lasot, lasot_ext, trackingnet, otb100, uav123, nfs or tnl2k reads that benchmark's
official layout from --data and writes results as the got10k toolkit lays them out for it:
RESULTS/<seq>.txt, RESULTS/times/<seq>_time.txt (and RESULTS/fallbacks/). Scores follow each
benchmark's toolkit (see benchmarks/): success AUC, SR0.5, precision at 20 px, normalised
precision as the area over [0, 0.5] (Pnorm AUC) and at 0.2 (Pnorm@0.2), with success,
precision and normalised precision plots. TrackingNet's test split is packed into
RESULTS.zip for its server. --init text starts every sequence from its description (LaSOT's
nlp.txt, TNL2K's language.txt) found by the model's grounding, instead of the first box.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import r1track
from benchmarks import BENCHMARKS
from benchmarks.curves import read_attributes
from benchmarks.results import track_sequences
from cli import ArgumentParser, UserError, script_main, write_atomic
from settings import DEFAULT_MODEL, add_settings_args


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--benchmark", default="got10k", choices=BENCHMARKS,
                        help="the benchmark --data holds, in its official layout (default: got10k)")
    parser.add_argument("--data", required=True, help="the benchmark's root (for GOT-10k: the folder holding val/ "
                        "and test/)")
    parser.add_argument("--split", choices=["val", "test", "train"], help="the split: GOT-10k's val (default), test "
                        "or train; TrackingNet's test (default) or train; the other benchmarks have one")
    parser.add_argument("--init", default="box", choices=["box", "text"], help="start each sequence from its first "
                        "box (default) or from its description (lasot, lasot_ext, tnl2k; a local model)")
    parser.add_argument("--sequences", nargs="+", metavar="NAME", help="only these sequences (default: all in list.txt)")
    parser.add_argument("--out", help="result folder (default: results/<model name>)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--server", help="an OpenAI-compatible server URL to ask instead of a local model")
    parser.add_argument("--server-model", help="the model name the server serves (default: its first); also "
                        "where the tracking settings are read from, unless --settings says")
    add_settings_args(parser)
    parser.add_argument("--batch", type=int, default=1, help="sequences tracked at once, in one batched call (default: 1)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available; under torchrun the "
                        "LOCAL_RANK GPU)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--recover", action="store_true", help="widen the search after a failed answer")
    parser.add_argument("--eval-only", nargs="+", metavar="RESULTS", help="score these result folders, track nothing")
    parser.add_argument("--attributes", metavar="DIR", help="a folder of <sequence>.txt attribute flags (one line of "
                        "0/1 each, as LaSOT's toolkit ships them in annos/att/): scores per attribute too")
    parser.add_argument("--fit-lost-below", action="store_true", help="GOT-10k layout with truth: fit the confidence "
                        "threshold that best tells the tracked boxes of IoU >= 0.5 from the others (balanced accuracy; "
                        "a frame whose target is hidden counts as bad) and save it in the model folder's tracking "
                        "settings, where track.py and the page take it as --lost-below")
    parser.add_argument("--report", help="write the report(s) as JSON here (default: RESULTS/report.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(args) -> int:
    benchmark = BENCHMARKS[args.benchmark]
    check_args(args, benchmark)
    sequences = benchmark.sequences(Path(args.data), args.split, args.sequences)
    attributes = read_attributes(args.attributes, benchmark, sequences) if args.attributes else None

    if args.eval_only:
        print(benchmark.described(sequences))
        reports = {Path(folder).name: score(benchmark, Path(folder), sequences, attributes) for folder in args.eval_only}
        return finish(args, benchmark, reports, Path(args.eval_only[0]))

    results = Path(args.out or f"results/{Path(args.model.rstrip('/')).name}")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if _cuda() else "cpu")
    check_init(results, args.init)
    todo = [s for s in sequences[rank::world] if not benchmark.is_complete(results, s)]  # each rank its share
    if rank == 0:
        done = sum(benchmark.is_complete(results, s) for s in sequences)
        print(f"{benchmark.described(sequences)}; {done} already tracked in {results}")
    if todo:
        check_frames(todo)
        tracker, loaded = r1track.tracker_from_args(args, device)
        if rank == 0:
            print(f"tracking settings: {tracker.settings.describe()}; started from the "
                  f"{'description' if args.init == 'text' else 'first box'}")
        start = start_from_text(loaded) if args.init == "text" else None
        track_sequences(tracker, benchmark, todo, results, args.batch, progress=not args.no_progress and rank == 0,
                        start=start)
    if world > 1:
        _barrier()
    if rank != 0:
        return 0
    if args.split in benchmark.truthless:
        archive = benchmark.pack(results, [s["name"] for s in sequences])
        print(f"results for the evaluation server: {archive}")
        return 0
    code = finish(args, benchmark, {results.name: score(benchmark, results, sequences, attributes)}, results)
    if args.fit_lost_below:
        fit_lost_below(args, benchmark, results, sequences)
    return code


def fit_lost_below(args, benchmark, results: Path, sequences) -> float | None:
    """The lost threshold fitted to these results (answers.fit_lost_below over every frame
    after the first: good where the box overlaps the visible target by IoU >= 0.5), said with
    its balanced accuracy beside the default's, and saved in the model folder's settings. Boxes
    all good or all bad fit nothing (said)."""
    import dataclasses

    import numpy as np

    from answers import fit_lost_below as fit, lost_accuracy
    from benchmarks.got10k import bounded_iou
    from benchmarks.results import read_box_rows
    from settings import SETTINGS_FILE, read_settings

    confidences, good, missing = [], [], []
    for sequence in sequences:
        name = sequence["name"]
        path = benchmark.confidence_file(results, name)
        if not path.is_file():  # tracked before confidences were written, or by another tracker
            missing.append(name)
            continue
        boxes = read_box_rows(benchmark.result_files(results, name)[0])
        iou = bounded_iou(boxes[1:], sequence["boxes_xywh"][1:], *sequence["resolution"])
        confidences.append(np.loadtxt(path, ndmin=1)[1:])
        good.append((iou >= 0.5) & (sequence["cover"][1:] > 0))
    if missing:
        print(f"warning: {len(missing)} sequences have no confidences in {results} (e.g. {missing[0]}): left out of "
              "the fit; track them again in a new --out to include them", file=sys.stderr)
    confidences, good = np.concatenate(confidences or [np.zeros(0)]), np.concatenate(good or [np.zeros(0, bool)])
    try:
        threshold = fit(confidences, good)
    except ValueError as error:
        print(f"warning: --fit-lost-below: {error} (here {int(good.sum())} good, {int((~good).sum())} bad): no threshold "
              "fitted, nothing saved", file=sys.stderr)
        return None
    known = ~np.isnan(confidences)
    print(f"lost threshold fitted on {int(known.sum())} frames ({int(good[known].sum())} good boxes): {threshold:.3f}, "
          f"balanced accuracy {lost_accuracy(confidences[known], good[known], threshold):.3f} "
          f"(at {r1track.LOST_BELOW}: {lost_accuracy(confidences[known], good[known], r1track.LOST_BELOW):.3f})")
    folder = Path(args.model)
    own = read_settings(str(folder)) if not args.server and folder.is_dir() else None
    if own is None:
        print(f"not saved (no model folder with a {SETTINGS_FILE}): give track.py --lost-below {threshold:.3f}")
    else:
        dataclasses.replace(own, lost_below=round(threshold, 4)).save(folder)
        print(f"saved in {folder / SETTINGS_FILE}: track.py and the page mark a frame lost below it")
    return threshold


def check_args(args, benchmark) -> None:
    """Everything about the flags that can be refused before anything is read; args.split
    becomes the benchmark's default split where none was given."""
    if args.batch < 1:
        raise UserError("--batch must be at least 1")
    if args.split and not benchmark.splits:
        raise UserError(f"--split: {benchmark.title} has one set; leave --split out")
    if args.split and args.split not in benchmark.splits:
        raise UserError(f"--split: {benchmark.title} has the splits {' and '.join(benchmark.splits)}")
    args.split = args.split or (benchmark.splits[0] if benchmark.splits else None)
    if args.init == "text" and not benchmark.descriptions:
        described = [b.name for b in BENCHMARKS.values() if b.descriptions]
        raise UserError(f"--init text needs sequences with descriptions: {', '.join(described[:-1])} or "
                        f"{described[-1]}, not {benchmark.name}")
    if args.init == "text" and args.server:
        raise UserError("--init text needs a local model; with --server start from the first box")
    if args.eval_only and args.split in benchmark.truthless:
        raise UserError(f"the {args.split} split has no ground truth: its RESULTS.zip goes to the evaluation server")
    if args.fit_lost_below and (benchmark.name != "got10k" or args.split in benchmark.truthless):
        raise UserError("--fit-lost-below fits on clips with truth in the GOT-10k layout (--split val or train)")
    if args.fit_lost_below and args.eval_only:
        raise UserError("--fit-lost-below saves the threshold in the tracked model's folder: track with --model, "
                        "not --eval-only")
    if args.attributes and not benchmark.attributes:
        raise UserError(f"--attributes: {benchmark.title} is scored as its toolkit scores it, without attributes")


def check_frames(sequences):
    """Every sequence to track has its frames, as many as its boxes where it has them all."""
    for sequence in sequences:
        frames, boxes = sequence["frames"], len(sequence["boxes_xywh"])
        if not frames or not Path(frames[0]).is_file():
            raise UserError(f"{sequence['name']}: no frames ({frames[0] if frames else 'none found'})")
        if boxes > 1 and boxes != len(frames):
            raise UserError(f"{sequence['name']}: {len(frames)} frames but {boxes} boxes")


INIT_FILE = "initialisation.json"  # how the sequences of a result folder were started


def check_init(results: Path, init: str):
    """Results started from boxes and from descriptions never mix in one folder."""
    record = results / INIT_FILE
    if record.is_file():
        before = json.loads(record.read_text()).get("init", "box")
        if before != init:
            raise UserError(f"{results} holds results started with --init {before}; give another --out")
    else:
        write_atomic(record, json.dumps({"init": init}, indent=2))


def score(benchmark, results: Path, sequences, attributes=None) -> dict:
    """The benchmark's report of one result folder, with how its sequences were started."""
    report = benchmark.score(results, sequences, attributes)
    report.setdefault("benchmark", benchmark.name)
    record = results / INIT_FILE
    report["init"] = json.loads(record.read_text()).get("init", "box") if record.is_file() else "box"
    return report


def start_from_text(loaded):
    """`start` for benchmarks.results.track_sequences: the box the model finds for the sequence's
    description in its first frame. Where it finds none, the sequence starts from the middle
    quarter of the frame, said at once and marked in its fallbacks file (code 3 on frame 1)."""
    def start(sequence, frame):
        box = r1track.locate_text(*loaded, frame, sequence["description"]) if sequence.get("description") else None
        if box is not None:
            return box, True
        height, width = frame.shape[:2]
        print(f"warning: {sequence['name']}: the description was not found in the first frame; started from the "
              "middle of the frame", file=sys.stderr)
        return [width / 4, height / 4, width / 2, height / 2], False

    return start


def finish(args, benchmark, reports: dict, folder: Path) -> int:
    report_file = Path(args.report) if args.report else folder / "report.json"
    single = len(reports) == 1
    plots = benchmark.show(reports, report_file.parent)
    for label, report in reports.items():
        if report.get("init_not_found"):
            print(f"warning: {label}: {len(report['init_not_found'])} sequences started from the middle of the frame: "
                  "their description was not found", file=sys.stderr)
    write_atomic(report_file, json.dumps(next(iter(reports.values())) if single else reports, indent=2))
    print(f"report: {report_file}, plots: {', '.join(str(p) for p in plots)}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _barrier():
    import torch.distributed as torch_dist

    if not torch_dist.is_initialized():
        torch_dist.init_process_group("gloo")
    torch_dist.barrier()
    torch_dist.destroy_process_group()


def main(argv=None) -> int:
    return script_main(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
