"""GRPO side by side: this project's train_grpo.py and Hugging Face TRL's GRPOTrainer, from the
same warm start, on the same pairs, with the same reward and matched settings, over seeds.

  pip install trl                      # a development dependency: never needed to train
  python tools/bench_grpo.py --seeds 0 1 2 --json grpo-peer.json --plot grpo-peer.png
  python tools/bench_grpo.py --seeds 0 1 2 --only ours --variant seq-mean="--loss-agg seq-mean"
  python tools/bench_grpo.py --warm-step 60 --questions 8 --rollouts 30 --seeds 0 1 2 3 4 5

The warm start is the tiny Qwen2.5-VL (synthetic.save_tiny_model) after --sft-steps steps of
full SFT on --pairs synthetic pairs (train_sft.py), or its checkpoint at --warm-step; both
trainers then fine-tune all its weights on those pairs with the published reward
(answers.reward): --questions questions a rollout, --group answers to each at --temperature,
--updates optimizer steps a rollout, KL --kl to the starting weights, clip 0.2, AdamW at --lr
with weight decay 0.01, for --rollouts rollouts. Reported per run: the mean reward and the
format rate of every rollout, the KL, and the final greedy reward on the pairs; per trainer,
the means over the seeds.
--variant NAME="FLAGS" adds a run of train_grpo.py with extra flags (repeatable).

--step-cost measures what a GRPO step costs with each question's prompt once for its G answers
against a copy of the prompt in every answer's row (--repeat-prompts, as TRL does), at the
published shape: 336-px crops (a prompt of ~360 tokens against answers of 17), random weights
of a model wide enough that compute, not Python, sets the time (or of the 3B itself):

  python tools/bench_grpo.py --step-cost --json step-cost.json                     # CPU, a wide model
  python tools/bench_grpo.py --step-cost --base qwen3_vl --json step-cost-qwen3vl.json   # a wide Qwen3-VL
  python tools/bench_grpo.py --step-cost --architecture 3b --device cuda --json step-cost-3b.json
  python tools/bench_grpo.py --step-cost --base qwen3_vl --architecture 4b --device cuda --json step-cost-4b.json
  python tools/bench_grpo.py --step-cost --base qwen3_5 --json step-cost-qwen35.json     # a wide Qwen3.5
  python tools/bench_grpo.py --step-cost --base qwen3_5 --architecture Qwen/Qwen3.5-2B --device cuda

Each mode runs train_grpo.py as a user runs it, in turns (--repeats), for --steps steps, the
first left out; its metrics give each stage's seconds (rollout, the sampling policy's and the
reference's log-probabilities, the updates) and the whole step's, and the process its peak
memory (GPU: torch's peak allocation; CPU: the process's peak resident size). One more step of
each, counted by torch's FlopCounterMode, gives the FLOP ratio. Both run sdpa attention (the
shared layout's block mask needs it; a copy per answer could use flash-attention on a GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the project: a tool runs from tools/ on its modules
sys.path.insert(0, str(ROOT))

import bases  # noqa: E402
import r1track  # noqa: E402
import synthetic  # noqa: E402
from answers import reward  # noqa: E402
from cli import ArgumentParser, UserError, script_main, write_atomic  # noqa: E402
from data import open_pairs  # noqa: E402
from prompts import build_inputs, build_messages, image_side  # noqa: E402

ARCHITECTURES = ("3b", "2b", "4b", "0.8b")  # the published sizes in synthetic.SHAPES, by base


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--work", default="runs/grpo-peer", help="where the warm start and the runs go")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the GRPO runs")
    parser.add_argument("--only", choices=["ours", "trl"], help="run one trainer only")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="FLAGS"',
                        help="another run of train_grpo.py with these extra flags")
    parser.add_argument("--pairs", type=int, default=16, help="synthetic training pairs")
    parser.add_argument("--sft-steps", type=int, default=100, help="SFT steps of the warm start")
    parser.add_argument("--warm-step", type=int, help="start from the warm start's checkpoint at this SFT step, "
                        "a multiple of 20 (60 of 100: a model that has not memorised its pairs)")
    parser.add_argument("--warm", help="start from this checkpoint instead (made on the same --pairs)")
    parser.add_argument("--rollouts", type=int, default=40)
    parser.add_argument("--questions", type=int, default=4, help="questions per rollout")
    parser.add_argument("--group", type=int, default=5, help="answers per question")
    parser.add_argument("--updates", type=int, default=4, help="optimizer steps per rollout")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--kl", type=float, default=0.01)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="longest answer (default: 24; with --step-cost 17, the 3B's answer of a box)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="write reward and format curves here (png)")
    cost = parser.add_argument_group("--step-cost: the shared prompt against the repeated prompt")
    cost.add_argument("--step-cost", action="store_true", help="measure a step's stages, memory and FLOPs "
                      "with the prompt shared and repeated (with --questions, --group, --updates, --max-new-tokens)")
    cost.add_argument("--base", choices=list(bases.BASES), default="qwen2_5_vl", help="the model family")
    cost.add_argument("--architecture", default="wide",
                      help="random weights: wide (hidden 512, 4 layers; vision 256 x 4: minutes on a CPU), the tests' "
                      "tiny model (a smoke test: Python's overhead, not compute, sets its times), a published "
                      "model's shape: 3b (Qwen2.5-VL), 2b or 4b (Qwen3-VL), 0.8b (Qwen3.5), or a hub id or folder "
                      "whose config.json gives the shape and the base (e.g. Qwen/Qwen3.5-2B: its config alone is read)")
    cost.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    cost.add_argument("--crop-size", type=int, default=None, help="crop side in pixels (default: the base's, 336 "
                      "for Qwen2.5-VL as published, 352 for Qwen3-VL)")
    cost.add_argument("--steps", type=int, default=3, help="steps a run; the first is left out")
    cost.add_argument("--repeats", type=int, default=2, help="runs of each mode, in turns")
    cost.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True,
                      help="LoRA, the recipe's default (--no-lora: full fine-tuning, a frozen reference copy)")
    return parser


def run_script(*args):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise UserError(f"{args[0]} failed: {result.stderr.strip().splitlines()[-1:]}")
    return result


# -----------------------------------------------------------------------------
# The common ground: pairs, a warm start, the greedy reward


def warm_start(args) -> tuple[Path, Path]:
    """(the SFT checkpoint, the pairs' parquet), made once in --work."""
    work = Path(args.work)
    pairs, warm = work / f"pairs{args.pairs}.parquet", work / f"sft{args.sft_steps}"
    if not pairs.is_file():
        clips = synthetic.make_synthetic_got10k(work / "clips", "val", sequences=6, frames=24, seed=1)
        run_script("prepare_data.py", "pairs", "--got10k", clips, "--out", pairs, "--num", args.pairs, "--size", 112,
                   "--seed", 0)
    if args.warm:
        return Path(args.warm), pairs
    if not (warm / "config.json").is_file():  # checkpoints every 20 steps, all kept, for --warm-step
        tiny = synthetic.save_tiny_model(work / "tiny")
        run_script("train_sft.py", "--model", tiny, "--data", pairs, "--out", warm, "--crop-size", 112, "--full",
                   "--lr", "1e-3", "--batch-size", 16, "--grad-accum", 1, "--max-steps", args.sft_steps,
                   "--no-gradient-checkpointing", "--save-every", 20, "--keep-checkpoints", args.sft_steps // 20 + 1)
    if args.warm_step is None:
        return warm, pairs
    checkpoint = warm / f"checkpoint-{args.warm_step}"
    if not (checkpoint / "config.json").is_file():
        raise UserError(f"no {checkpoint}: --warm-step takes a multiple of 20 up to --sft-steps (a warm "
                                f"start made before checkpoints were kept: remove {warm} to make it again)")
    return checkpoint, pairs


def greedy_reward(model, processor, pairs) -> float:
    """The mean published reward of the greedy answers to the pairs."""
    rewards = []
    for pair in pairs:
        inputs = build_inputs(processor, pair.template, pair.search, pair.template_box_xyxy)
        answer = r1track.generate_answers(model, processor, inputs)[0]
        rewards.append(reward(answer, pair.search_box_xyxy, boxes=processor.base.boxes,
                              crop_side=image_side(pair.search))["overall"])
    return float(np.mean(rewards))


def load_pairs(path: Path) -> list:
    source = open_pairs(str(path), 112)
    return [source.load(i) for i in range(len(source))]


# -----------------------------------------------------------------------------
# Ours: train_grpo.py as a user runs it


def run_ours(args, warm, pairs_file, pairs, seed, out, extra=()) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time
    started = time.perf_counter()
    run_script("train_grpo.py", "--init", warm, "--data", pairs_file, "--out", out, "--full", "--crop-size", 112,
               "--lr", args.lr, "--weight-decay", "0.01", "--temperature", args.temperature,
               "--prompts-per-step", args.questions, "--group-size", args.group, "--updates-per-batch", args.updates,
               "--batch-size", args.questions * args.group // args.updates, "--kl-coef", args.kl, "--clip", "0.2",
               "--max-steps", args.rollouts, "--max-new-tokens", args.max_new_tokens, "--seed", seed,
               "--save-every", 100000, "--no-gradient-checkpointing", *extra)
    seconds = time.perf_counter() - started
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "reward_mean" in s]
    model, processor = r1track.load_model(str(out), device="cpu")
    # the loop's time per step (bookkeeping included) against the GRPO step's own, after the first
    loop_s = (steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]) / (len(steps) - 1) if len(steps) > 1 else float("nan")
    return {"reward": [s["reward_mean"] for s in steps], "format": [s["format_rate"] for s in steps],
            "kl": [s["kl"] for s in steps], "greedy_reward": greedy_reward(model, processor, pairs),
            "step_s": float(np.mean([s["step_s"] for s in steps[1:]])), "loop_s_per_step": loop_s,
            "run_s_per_step": seconds / len(steps)}


# -----------------------------------------------------------------------------
# TRL's GRPOTrainer on the same questions


def trl_processor(processor):
    """Qwen2.5-VL's processor, built without a video processor (transformers cannot build one
    without torchvision, and tracking shows no videos)."""
    from transformers import Qwen2_5_VLProcessor

    class WithoutVideo(Qwen2_5_VLProcessor):
        def check_argument_for_proper_class(self, name, argument):
            return None if name == "video_processor" else super().check_argument_for_proper_class(name, argument)

    return WithoutVideo(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                        video_processor=None, chat_template=processor.tokenizer.chat_template)


def trl_example(pair) -> dict:
    """The tracking question as build_messages words it (Qwen2.5-VL's: the peer bench's warm
    start), for TRL: every message's content a list of parts, the images as placeholders there
    and in an "images" column, the true box in "truth"."""
    from PIL import Image

    messages = build_messages(pair.template_box_xyxy)
    prompt = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str)
               else [{"type": part["type"], **({"text": part["text"]} if part["type"] == "text" else {})}
                     for part in m["content"]]} for m in messages]
    images = [Image.fromarray(i) if isinstance(i, np.ndarray) else i for i in (pair.template, pair.search)]
    return {"prompt": prompt, "images": images, "truth": list(pair.search_box_xyxy)}


def run_trl(args, warm, pairs, seed, out) -> dict:
    import torch
    import trl
    from transformers import PrinterCallback, TrainerCallback

    model, processor = r1track.load_model(str(warm), device="cpu")
    rollouts = []  # per reward call (one rollout): mean reward, format rate

    def published_reward(prompts, completions, completion_ids, truth, **_):  # not `reward`: that is answers.reward
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores = [reward(text, box, response_len=len(ids)) for text, box, ids in zip(texts, truth, completion_ids)]
        rollouts.append((float(np.mean([s["overall"] for s in scores])), float(np.mean([s["format"] for s in scores]))))
        return [s["overall"] for s in scores]

    kls = []  # per optimizer step

    class Logs(TrainerCallback):
        def on_log(self, arguments, state, control, logs=None, **kwargs):
            if logs and "kl" in logs:
                kls.append(float(logs["kl"]))

    from datasets import Dataset

    dataset = Dataset.from_list([trl_example(p) for p in pairs])
    config = trl.GRPOConfig(
        output_dir=str(out), learning_rate=args.lr, weight_decay=0.01, lr_scheduler_type="constant", warmup_steps=0,
        temperature=args.temperature, top_p=1.0, top_k=0, num_generations=args.group,
        per_device_train_batch_size=args.questions * args.group // args.updates, steps_per_generation=args.updates,
        gradient_accumulation_steps=1, max_steps=args.rollouts * args.updates, beta=args.kl, epsilon=0.2,
        loss_type="grpo", scale_rewards="group", max_completion_length=args.max_new_tokens, logging_steps=1,
        report_to=[], save_strategy="no", seed=seed, use_cpu=True, bf16=False, remove_unused_columns=False,
        max_grad_norm=1.0, disable_tqdm=True)
    trainer = trl.GRPOTrainer(model=model, processing_class=trl_processor(processor), reward_funcs=[published_reward],
                              args=config, train_dataset=dataset, callbacks=[Logs()])
    trainer.remove_callback(PrinterCallback)  # it prints every step's log dictionary
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        greedy = greedy_reward(model, processor, pairs)
    per_rollout_kl = [float(np.mean(kls[i:i + args.updates])) for i in range(0, len(kls), args.updates)]
    return {"reward": [r for r, _ in rollouts], "format": [f for _, f in rollouts], "kl": per_rollout_kl,
            "greedy_reward": greedy, "run_s_per_step": seconds / max(len(rollouts), 1)}


# -----------------------------------------------------------------------------
# Report


def summary(runs: list[dict]) -> dict:
    """Means over the seeds: first and last 5 rollouts' reward, format, final KL, greedy reward."""
    def mean(values):
        return float(np.mean(values))

    return {"reward_first5": mean([np.mean(r["reward"][:5]) for r in runs]),
            "reward_last5": mean([np.mean(r["reward"][-5:]) for r in runs]),
            "format_first5": mean([np.mean(r["format"][:5]) for r in runs]),
            "format_last5": mean([np.mean(r["format"][-5:]) for r in runs]),
            "kl_last5": mean([np.mean(r["kl"][-5:]) for r in runs]),
            "greedy_reward": mean([r["greedy_reward"] for r in runs]),
            "greedy_reward_per_seed": [r["greedy_reward"] for r in runs]}


def plot(results: dict, png: Path):
    """Per trainer, the mean over the seeds of each rollout's reward and format rate, as a
    moving average over 5 rollouts (single rollouts of 20 answers are noisy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, entry in results.items():
        for ax, key in zip(axes, ("reward", "format")):
            mean = np.mean([run[key] for run in entry["runs"]], axis=0)
            smooth = np.convolve(mean, np.ones(5) / 5, mode="valid")
            ax.plot(np.arange(5, len(mean) + 1), smooth, label=f"{name} ({len(entry['runs'])} seeds)")
    for ax, title in zip(axes, ("mean reward per rollout", "format rate per rollout")):
        ax.set(title=f"{title} (mean over seeds, 5-rollout average)", xlabel="rollout")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# -----------------------------------------------------------------------------
# A step's cost: the prompt shared against the prompt repeated


STAGES = ("rollout_s", "logprobs_s", "update_s", "step_s")


def bench_step_cost(args) -> dict:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model = cost_model(folder / "model", args.architecture, device, bases.named(args.base))
        clips = synthetic.make_synthetic_got10k(folder / "clips", "train", sequences=8, frames=10, seed=0,
                                                style="plain")
        pairs = folder / "pairs.parquet"
        run_script("prepare_data.py", "pairs", "--got10k", clips, "--out", pairs, "--num", 4 * args.questions,
                   "--size", args.crop_size, "--seed", 0)
        flags = ["--init", model, "--data", pairs, "--crop-size", args.crop_size, "--device", device,
                 "--prompts-per-step", args.questions, "--group-size", args.group, "--updates-per-batch", args.updates,
                 "--batch-size", args.questions // args.updates * args.group, "--max-new-tokens", args.max_new_tokens,
                 "--temperature", "1.0", "--no-save", "--seed", 0, *([] if args.lora else ["--full"]),
                 "--attn", "sdpa",  # one kernel for both: the layouts are compared, not the kernels
                 # and both without gradient checkpointing where the shared prompt needs the cache (Qwen3.5)
                 *(["--no-gradient-checkpointing"] if bases.named(args.base).recurrent else [])]
        modes = {"repeated": ["--repeat-prompts"], "shared": []}
        runs = {mode: [] for mode in modes}
        for turn in range(args.repeats):
            for mode, extra in modes.items():
                runs[mode].append(timed_run([*flags, *extra, "--out", folder / f"{mode}{turn}",
                                             "--max-steps", args.steps]))
                print(f"{mode:<9} run {turn + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[mode][-1].items()),
                      flush=True)
        flops = {mode: counted_flops([*flags, *extra, "--out", folder / f"{mode}-flops", "--max-steps", 1])
                 for mode, extra in modes.items()}
        shape = prompt_shape(model, pairs, args)
    result = {mode: {key: statistics.median(run[key] for run in runs[mode]) for key in runs[mode][0]}
              for mode in modes}
    for mode in modes:
        result[mode]["flops"] = flops[mode]
    result["speedup"] = {key: result["repeated"][key] / result["shared"][key] for key in STAGES}
    result["flop_ratio"] = flops["repeated"] / flops["shared"]
    result["memory_ratio"] = result["shared"]["peak_memory_gib"] / result["repeated"]["peak_memory_gib"]
    result["shape"] = shape
    print(f"prompt {shape['prompt_tokens']:.0f} tokens, answers {shape['answer_tokens']:.0f}: the prompt is "
          f"{shape['prompt_share']:.1%} of a row")
    print(f"{'seconds':<10}" + "".join(f"{key:>12}" for key in (*STAGES, "peak GiB", "TFLOPs")))
    for mode in modes:
        r = result[mode]
        print(f"{mode:<10}" + "".join(f"{r[key]:12.2f}" for key in STAGES)
              + f"{r['peak_memory_gib']:12.2f}{r['flops'] / 1e12:12.3f}")
    print(f"{'speed-up':<10}" + "".join(f"{result['speedup'][key]:11.2f}x" for key in STAGES)
          + f"{'':12}{result['flop_ratio']:11.2f}x")
    print(f"peak memory, shared over repeated: {result['memory_ratio']:.2f}")
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    return {"step_cost": result, "device": device, "device_name": name, "threads": torch.get_num_threads(),
            "architecture": args.architecture, "base": args.base}


def cost_model(path, architecture, device, base) -> Path:
    """Random weights of `base` saved as a checkpoint: the wide CPU model, a published model's
    shape or the tiny one."""
    import torch

    if architecture in ARCHITECTURES or re.fullmatch(r"[\d.]+b", architecture):
        shape = synthetic.SHAPES.get(f"{base.model_type}-{architecture}")
        if shape is None:
            sizes = [name.split("-")[1] for name in synthetic.SHAPES if name.startswith(base.model_type + "-")]
            raise UserError(f"no {architecture} {base.name} in synthetic.SHAPES: {', '.join(sizes)}")
        return synthetic.save_tiny_model(path, shape=shape, dtype=torch.bfloat16, device=device, base=base)
    if architecture == "tiny":
        return synthetic.save_tiny_model(path, base=base)
    if architecture == "wide":
        return synthetic.save_tiny_model(path, hidden_size=512, num_layers=4, vision_hidden_size=256, vision_depth=4,
                                         base=base)
    return synthetic.save_tiny_model(path, shape=architecture, dtype=torch.bfloat16, device=device,
                                     base=r1track.checkpoint_base(architecture))


def timed_run(flags) -> dict:
    """train_grpo.py in a process of its own: the median seconds of each stage over the steps
    after the first, and the peak memory (GPU: torch's; CPU: the process's resident size)."""
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([sys.executable, str(ROOT / "train_grpo.py"), *map(str, flags)], cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            log.seek(0)
            raise UserError(f"train_grpo.py failed: {log.read().strip().splitlines()[-1:]}")
    out = Path(flags[flags.index("--out") + 1])
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    result = {key: statistics.median(step[key] for step in steps) for key in STAGES}
    gpu = max((step.get("peak_memory_gib", 0.0) for step in steps), default=0.0)
    result["peak_memory_gib"] = gpu or usage.ru_maxrss / 2 ** 20  # ru_maxrss: KiB on Linux
    return result


def counted_flops(flags) -> float:
    """The FLOPs of one step of train_grpo.py (run in this process: no FLOPs before the step)."""
    from torch.utils.flop_counter import FlopCounterMode

    import train_grpo

    with FlopCounterMode(display=False) as counter:
        if train_grpo.main([str(flag) for flag in flags]):
            raise UserError("train_grpo.py failed while its FLOPs were counted")
    return float(counter.get_total_flops())


def prompt_shape(model, pairs, args) -> dict:
    """The mean prompt length in tokens, the answers' (--max-new-tokens: random weights seldom end
    sooner), and the prompt's share of a row."""
    _, processor = r1track.load_model(str(model), device="cpu")
    source = open_pairs(str(pairs), args.crop_size)
    lengths = []
    for index in range(min(len(source), 8)):
        pair = source.load(index)
        lengths.append(len(build_inputs(processor, pair.template, pair.search, pair.template_box_xyxy,
                                        return_tensors=False)["input_ids"]))
    prompt = float(np.mean(lengths))
    return {"prompt_tokens": prompt, "answer_tokens": args.max_new_tokens,
            "prompt_share": prompt / (prompt + args.max_new_tokens), "crop_size": args.crop_size,
            "questions": args.questions, "group": args.group, "updates": args.updates, "lora": args.lora}


def run(args) -> int:
    if args.step_cost and args.questions % args.updates:
        raise UserError("--updates must divide --questions: an update takes whole groups")
    if args.step_cost:
        args.max_new_tokens = args.max_new_tokens or 17
        args.crop_size = args.crop_size or bases.named(args.base).crop_size
        report = {"date": datetime.date.today().isoformat(), **bench_step_cost(args)}
        if args.json:
            write_atomic(args.json, json.dumps(report, indent=2))
        return 0
    args.max_new_tokens = args.max_new_tokens or 24
    if args.only != "ours":
        try:
            import trl  # noqa: F401
        except ImportError:
            raise UserError("TRL is not installed: pip install trl (or --only ours)") from None
    warm, pairs_file = warm_start(args)
    pairs = load_pairs(pairs_file)
    model, processor = r1track.load_model(str(warm), device="cpu")
    print(f"warm start {warm}: greedy reward {greedy_reward(model, processor, pairs):.3f} on its {len(pairs)} pairs")
    trainers = {}
    if args.only != "trl":
        trainers["ours"] = lambda seed, out: run_ours(args, warm, pairs_file, pairs, seed, out)
    for spec in args.variant:
        name, _, flags = spec.partition("=")
        trainers[name] = lambda seed, out, flags=flags: run_ours(args, warm, pairs_file, pairs, seed, out,
                                                                 shlex.split(flags))
    if args.only != "ours":
        trainers["trl"] = lambda seed, out: run_trl(args, warm, pairs, seed, out)
    results = {}
    for name, trainer in trainers.items():
        runs = []
        for seed in args.seeds:
            runs.append(trainer(seed, Path(args.work) / f"{name}-seed{seed}"))
            r = runs[-1]
            print(f"{name:<12} seed {seed}: reward {np.mean(r['reward'][:5]):+.3f} -> {np.mean(r['reward'][-5:]):+.3f}, "
                  f"format {np.mean(r['format'][:5]):.2f} -> {np.mean(r['format'][-5:]):.2f}, "
                  f"KL {np.mean(r['kl'][-5:]):.3f}, greedy reward {r['greedy_reward']:.3f}", flush=True)
        results[name] = {"runs": runs, "mean": summary(runs)}
    for name, entry in results.items():
        m = entry["mean"]
        print(f"{name:<12} mean over {len(args.seeds)} seeds: reward {m['reward_first5']:+.3f} -> "
              f"{m['reward_last5']:+.3f}, format {m['format_first5']:.2f} -> {m['format_last5']:.2f}, "
              f"KL {m['kl_last5']:.3f}, greedy reward {m['greedy_reward']:.3f}")
    report = {"date": datetime.date.today().isoformat(), "settings": {k: v for k, v in vars(args).items()
                                                                     if k not in ("json", "plot")}, "results": results}
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=2))
    if args.plot:
        plot(results, Path(args.plot))
    return 0


def main(argv=None) -> int:
    return script_main(run, build_parser().parse_args(argv), quiet=False)


if __name__ == "__main__":
    sys.exit(main())
