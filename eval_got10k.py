"""Run and score R1-Track on GOT-10k by the official rules.

  python eval_got10k.py --data GOT-10k --split val --model runs/sft --out results/sft
  torchrun --nproc_per_node 8 eval_got10k.py --data GOT-10k --split test --out results/r1 --batch 8
  python eval_got10k.py --data GOT-10k --split val --eval-only results/sft results/grpo

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
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import r1track
import scoring
from data import read_got10k_sequence
from r1track import UserError


def build_parser():
    parser = r1track.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="the GOT-10k root (holding val/ and test/)")
    parser.add_argument("--split", default="val", choices=["val", "test", "train"], help="the split (default: val)")
    parser.add_argument("--sequences", nargs="+", metavar="NAME", help="only these sequences (default: all in list.txt)")
    parser.add_argument("--out", help="result folder (default: results/<model name>)")
    parser.add_argument("--model", default=r1track.DEFAULT_MODEL, help=f"hub id or folder (default: {r1track.DEFAULT_MODEL})")
    parser.add_argument("--server", help="an OpenAI-compatible server URL to ask instead of a local model")
    parser.add_argument("--server-model", help="the model name the server serves (default: its first); also "
                        "where the tracking settings are read from, unless --settings says")
    r1track.add_settings_args(parser)
    parser.add_argument("--batch", type=int, default=1, help="sequences tracked at once, in one batched call (default: 1)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available; under torchrun the "
                        "LOCAL_RANK GPU)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--recover", action="store_true", help="widen the search after a failed answer")
    parser.add_argument("--eval-only", nargs="+", metavar="RESULTS", help="score these result folders, track nothing")
    parser.add_argument("--report", help="write the report(s) as JSON here (default: RESULTS/report.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(args) -> int:
    if args.eval_only and args.split == "test":
        raise UserError("the test split has no ground truth: its RESULTS.zip goes to the evaluation server")
    if args.batch < 1:
        raise UserError("--batch must be at least 1")
    root = Path(args.data)
    names = scoring.load_sequences(root, args.split, args.sequences)
    split_dir = root / args.split

    if args.eval_only:
        reports = {Path(folder).name: scoring.score(Path(folder), split_dir, names) for folder in args.eval_only}
        first = Path(args.eval_only[0])
        return finish(args, reports, first)

    results = Path(args.out or f"results/{Path(args.model.rstrip('/')).name}")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if _cuda() else "cpu")
    todo = []
    for name in names[rank::world]:  # each rank its share
        frames = len(read_got10k_sequence(split_dir / name)["frames"])
        if not scoring.is_complete(results, name, frames):
            todo.append(name)
    if rank == 0:
        print(f"{len(names)} sequences in {split_dir}; {_done(results, split_dir, names)} already tracked in {results}")
    if todo:
        tracker, _ = r1track.tracker_from_args(args, device)
        if rank == 0:
            print(f"tracking settings: {tracker.settings.describe()}")
        scoring.track_sequences(tracker, split_dir, todo, results, args.batch, progress=not args.no_progress and rank == 0)
    if world > 1:
        _barrier()
    if rank != 0:
        return 0
    if args.split == "test":
        archive = scoring.pack_for_server(results, names)
        print(f"results for the evaluation server: {archive}")
        return 0
    return finish(args, {results.name: scoring.score(results, split_dir, names)}, results)


def finish(args, reports: dict, folder: Path) -> int:
    scoring.print_reports(reports)
    report_file = Path(args.report) if args.report else folder / "report.json"
    single = len(reports) == 1
    r1track.write_atomic(report_file, json.dumps(next(iter(reports.values())) if single else reports, indent=2))
    scoring.plot_success(reports, report_file.with_name("success_plot.png"))
    print(f"report: {report_file}, plot: {report_file.with_name('success_plot.png')}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _done(results: Path, split_dir: Path, names) -> int:
    return sum(scoring.is_complete(results, n, len(read_got10k_sequence(split_dir / n)["frames"])) for n in names)


def _barrier():
    import torch.distributed as torch_dist

    if not torch_dist.is_initialized():
        torch_dist.init_process_group("gloo")
    torch_dist.barrier()
    torch_dist.destroy_process_group()


def main(argv=None) -> int:
    return r1track.script_main(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
