"""Make demo_model/, the small tracker behind `python track.py --demo`, from nothing.

  python tools/make_demo_model.py                      # about half an hour on 2 CPU cores
  python tools/make_demo_model.py --work runs/demo-recipe --out demo_model
  python tools/make_demo_model.py --base qwen3_vl       # the same recipe on a tiny Qwen3-VL (or qwen3_5)
  python tools/make_demo_model.py --base qwen2_5_vl qwen3_vl --work runs/demo-bases   # both, side by side

Each step runs one of the project's own scripts, so this is also the whole recipe in small:
  1. prepare_data.py synthetic: training clips and validation clips (flat background, one
     moving target of a random shape and colour);
  2. a random tiny model of --base (about a million weights) to start from, with crops of
     four image tokens a side (112 px for Qwen2.5-VL, 128 for Qwen3-VL and Qwen3.5);
  3. train_sft.py, full fine-tuning on pairs sampled afresh every step from the training clips,
     in two stages: first with the published jitter (crops of any scale, the target anywhere),
     which makes the model look for the target; then with pairs cut as the tracker asks
     (--tracking-pairs 1), which teaches the small, exact step each frame needs;
  4. eval_got10k.py on held-out clips, the score the demo prints too, and on clips whose
     target hides at times, to fit the confidence below which a frame counts as lost;
  5. the final model copied to --out.
A stopped run continues where it was when started again (data is kept, training resumes from
its last checkpoint).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the project: a tool runs from tools/ on its modules
sys.path.insert(0, str(ROOT))

import bases  # noqa: E402
import synthetic  # noqa: E402
from cli import ArgumentParser, UserError, script_main  # noqa: E402
from settings import DEMO_MODEL, SETTINGS_FILE  # noqa: E402

TRAIN_CLIPS = dict(split="train", sequences=1000, frames=30, seed=100)
VAL_CLIPS = dict(split="val", sequences=12, frames=40, seed=200)
LOST_CLIPS = dict(split="val", sequences=12, frames=40, seed=31, hiding=True)  # to fit the lost threshold on
# the lenient loop: antialiased crops, which this small model learns from more easily
COMMON_FLAGS = ["--full", "--batch-size", "16", "--grad-accum", "1", "--save-every", "250", "--loop", "lenient"]
CROP_TOKENS = 4  # image tokens a side of a crop: 16 tokens an image, as the tests' tiny models
STAGES = {  # name: (steps, flags)
    "sft-published-jitter": (4000, ["--lr", "1e-3", "--eval-every", "500"]),
    "sft-tracking-pairs": (1000, ["--lr", "3e-4", "--eval-every", "200", "--tracking-pairs", "1"]),
}
MODEL_FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json", SETTINGS_FILE]


def run(script: str, *args) -> None:
    command = [sys.executable, str(ROOT / script), *map(str, args)]
    print("$", " ".join(command[1:]), flush=True)
    if subprocess.run(command).returncode != 0:
        raise UserError(f"{script} failed; fix the cause and run tools/make_demo_model.py again to continue")


def make_clips(root: Path, clips: dict) -> None:
    if (root / clips["split"] / "list.txt").is_file():
        return
    run("prepare_data.py", "synthetic", "--out", root, "--split", clips["split"], "--sequences", clips["sequences"],
        "--frames", clips["frames"], "--seed", clips["seed"], "--style", "plain",
        *(["--hiding"] if clips.get("hiding") else []))


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--base", nargs="+", choices=list(bases.BASES), default=["qwen2_5_vl"],
                        help="the model family; several: the same recipe on each, on the same clips, their AO side by "
                        "side (each in WORK/BASE, its model in WORK/BASE/model)")
    parser.add_argument("--work", default=None, help="folder for the clips, the training runs and the evaluations "
                        "(default: runs/demo-recipe, or runs/demo-recipe-BASE for one other --base)")
    parser.add_argument("--out", default=None, help="where the model goes, with one --base (default: demo_model/, "
                        "the bundled one; for another base: WORK/model)")
    parser.add_argument("--steps", type=float, default=1.0, help="scale every stage's number of steps by this")
    return parser


def make(args) -> int:
    chosen = [bases.named(name) for name in dict.fromkeys(args.base)]
    bundled = chosen == [bases.QWEN2_5_VL]
    if len(chosen) > 1 and args.out:
        raise UserError("--out names one model's folder: with several --base each goes to WORK/BASE/model")
    work = Path(args.work or ("runs/demo-recipe" if bundled or len(chosen) > 1 else
                              f"runs/demo-recipe-{chosen[0].model_type}"))
    make_clips(work / "clips", TRAIN_CLIPS)
    make_clips(work / "clips", VAL_CLIPS)
    scores = {}
    for base in chosen:
        home = work / base.model_type if len(chosen) > 1 else work
        out = Path(args.out or (DEMO_MODEL if bundled else home / "model"))
        scores[base.name] = train_and_score(base, work / "clips", home, out, args.steps)
        print(f"demo model ({base.name}) in {out}: AO {scores[base.name]:.3f} on {VAL_CLIPS['sequences']} held-out "
              "synthetic clips")
    if len(chosen) > 1:
        print("the same recipe on the same clips: " + ", ".join(f"{name} AO {ao:.3f}" for name, ao in scores.items()))
    return 0


def train_and_score(base, clips: Path, home: Path, out: Path, scale: float) -> float:
    """The recipe's stages for one base in `home`, the final model copied to `out`; its AO on
    the held-out clips."""
    start = home / "tiny-random"
    if not (start / "config.json").is_file():
        synthetic.save_tiny_model(start, seed=0, base=base)
    model = start
    crop = ["--crop-size", CROP_TOKENS * base.token_side]
    for name, (steps, flags) in STAGES.items():
        run("train_sft.py", "--model", model, "--data", clips / "train", "--val-data", clips / "val",
            "--out", home / name, "--max-steps", max(1, round(steps * scale)), "--resume", *COMMON_FLAGS, *crop,
            *flags)
        model = home / name
    run("eval_got10k.py", "--data", clips, "--split", "val", "--model", model, "--out", home / "eval",
        "--batch", VAL_CLIPS["sequences"], "--no-progress")
    # the confidence below which a frame counts as lost, fitted on clips whose target hides at times
    make_clips(clips.parent / "lost-clips", LOST_CLIPS)
    run("eval_got10k.py", "--data", clips.parent / "lost-clips", "--split", "val", "--model", model,
        "--out", home / "eval-lost", "--batch", LOST_CLIPS["sequences"], "--no-progress", "--fit-lost-below")
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copy2(model / name, out / name)
    return json.loads((home / "eval/report.json").read_text())["ao"]


def main(argv=None) -> int:
    return script_main(make, build_parser().parse_args(argv), quiet=False)


if __name__ == "__main__":
    sys.exit(main())
