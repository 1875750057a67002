"""Measure R1-Track's tracking speed: the naive loop against template reuse, drafting and
batched streams, in one process, on one model and the same clips, checking that every
variant gives exactly the naive loop's boxes.

  python tools/bench.py                                 # the demo checkpoint on this machine
  python tools/bench.py --model runs/sft --device cuda --json bench.json
  python tools/bench.py --architecture 3b --device cuda # Qwen2.5-VL-3B's shape, random weights
  python tools/bench.py --base qwen3_vl --architecture 4b --device cuda   # Qwen3-VL-4B's shape
  python tools/bench.py --base qwen3_5 --architecture wide --frames 10 --repeats 3   # a wide Qwen3.5 on a CPU
  python tools/bench.py --architecture Qwen/Qwen3.5-2B --device cuda   # the shape its hub config.json gives
  python tools/bench.py --train --device cuda           # SFT tokens/s and peak memory: LoRA, QLoRA, full
  python tools/bench.py --reports --train-steps 40      # what --report-to tensorboard wandb trackio costs a step
  python tools/bench.py --recovery                      # AO with and without target-loss recovery
  python tools/bench.py --confidence --json conf.json   # how well the confidence tells good frames from lost ones
  python tools/bench.py --pipeline --json pipeline.json # host ms per frame at 1080p, read-ahead overlap, data workers

Variants (per-frame latency and frames/s, medians of --repeats runs):
  naive           the whole prompt through `generate` every frame, one sequence at a time
  template_reuse  the template's KV cache computed once per sequence
  draft           the answer guessed from the last one and checked in one pass
  fast            both
  naive_batch     --streams sequences per `generate` call
  fast_batch      --streams sequences per call, template reuse and drafting
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the project: a tool runs from tools/ on its modules
sys.path.insert(0, str(ROOT))

import bases  # noqa: E402
import frame_loop  # noqa: E402
import r1track  # noqa: E402
import synthetic  # noqa: E402
from answers import lost_accuracy  # noqa: E402
from benchmarks import got10k  # noqa: E402
from benchmarks.got10k import GOT10K  # noqa: E402
from benchmarks.results import track_sequences  # noqa: E402
from cli import (ArgumentParser, UserError, frame_readers, leave_a_core_for_reading, opencv_on_one_thread,  # noqa: E402
                 script_main, write_atomic)
from data import WORKER_CHUNK, PairStream, open_pairs  # noqa: E402
from tracking_pairs import Got10kPairs  # noqa: E402
from fast_decoder import FastAnswerer  # noqa: E402
from frames import read_frame  # noqa: E402
from prompts import load_processor  # noqa: E402
from settings import DEMO_MODEL, TrackSettings, default_settings, load_settings  # noqa: E402

TRAIN_BATCH = 4  # pairs per step in the training benchmark, as train_sft.py's default


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(DEMO_MODEL), help="hub id or folder (default: the demo checkpoint)")
    parser.add_argument("--architecture", help="instead of --model: random weights in the shape of a published "
                        "model of --base: 3b (Qwen2.5-VL-3B), 2b or 4b (Qwen3-VL), 0.8b (Qwen3.5); wide (hidden "
                        "512, 4 layers; vision 256 x 4: compute sets a CPU's time); or a hub id or folder whose "
                        "config.json gives the shape and the base (e.g. Qwen/Qwen3.5-2B: its config alone is read). "
                        "Answers held to --answer-tokens tokens; crops of the base's default size")
    parser.add_argument("--base", choices=list(bases.BASES), default="qwen2_5_vl", help="the family of --architecture")
    parser.add_argument("--answer-tokens", type=int, default=17, help="answer length forced on random weights")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--streams", type=int, default=8, help="sequences, and the batch of the batched variants")
    parser.add_argument("--frames", type=int, default=30, help="frames per sequence")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each variant; medians are reported")
    parser.add_argument("--train", action="store_true", help="measure SFT throughput instead of tracking")
    parser.add_argument("--pipeline", action="store_true", help="measure the host's share of a frame at GOT-10k's "
                        "frame size (1080p JPEGs, 336-px crops; answers held to --answer-tokens): per-stage ms, "
                        "frames/s with frames read ahead or in turn, training examples/s by data workers, and "
                        "the peak memory of reading a parquet of 100 and of 100,000 pairs")
    parser.add_argument("--recovery", action="store_true", help="measure target-loss recovery: AO with and without "
                        "--recover on synthetic clips with occlusion and absence, answered by an ideal detector")
    parser.add_argument("--confidence", action="store_true", help="measure the answers' confidence on synthetic clips "
                        "with occlusion and absence: ROC AUC against IoU >= 0.5 and against the target being visible, "
                        "and AO with and without confidence-driven recovery")
    parser.add_argument("--reports", action="store_true", help="measure what live reports cost: train_sft.py's "
                        "time per step in the loop, reporting to none against tensorboard, wandb (offline) and "
                        "trackio at once, --repeats runs of each in turns")
    parser.add_argument("--train-steps", type=int, default=10, help="optimizer steps timed per training mode")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--read-parquet", help=argparse.SUPPRESS)  # the process peak_memory_reading measures
    return parser


# -----------------------------------------------------------------------------
# Models


def load(args):
    """(model, processor, settings): a checkpoint, or random weights of a published architecture."""
    import torch

    device = args.device or r1track.default_device()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if not args.architecture:
        model, processor = r1track.load_model(args.model, dtype=dtype, device=device)
        return model, processor, model.r1track_settings or load_settings(args.model, processor.base)
    base = bases.named(args.base)
    shape = synthetic.SHAPES.get(f"{base.model_type}-{args.architecture}")
    if shape is None and re.fullmatch(r"[\d.]+b", args.architecture):
        sizes = [name.split("-")[1] for name in synthetic.SHAPES if name.startswith(base.model_type + "-")]
        raise UserError(f"--architecture {args.architecture}: no published {base.name} of that size in "
                        f"synthetic.SHAPES ({', '.join(sizes)}); a hub id gives any other (e.g. {base.example})")
    if shape is None and args.architecture != "wide":
        base = r1track.checkpoint_base(args.architecture)  # a hub id or folder: its config says the base
    with tempfile.TemporaryDirectory() as folder:  # its tokenizer and image processor, with no download
        tiny = synthetic.save_tiny_model(Path(folder) / "tiny", base=base)
        processor = load_processor(str(tiny), base)
    if args.architecture == "wide":
        shape = synthetic.tiny_shape(len(processor.tokenizer), 512, 4, 256, 4)
    config = synthetic.architecture_config(args.architecture, processor.tokenizer) if shape is None else \
        synthetic.MODEL_CONFIGS[base.model_type](processor.tokenizer, shape)
    with torch.device(device):
        model = base.transformers_class()._from_config(
            config, dtype=dtype or r1track.default_dtype(device), attn_implementation=r1track.default_attention(device))
    args.base = base.model_type
    return model.eval(), processor, default_settings(base)


# -----------------------------------------------------------------------------
# Tracking speed


def make_clips(streams, frames, seed=0):
    """Synthetic sequences (frames as RGB arrays, first boxes) made on the spot."""
    with tempfile.TemporaryDirectory() as folder:
        split = synthetic.make_synthetic_got10k(folder, "val", sequences=streams, frames=frames, seed=seed, style="plain")
        return [([read_frame(f) for f in sequence["frames"]], sequence["boxes_xywh"][0])
                for sequence in GOT10K.sequences(split.parent, split.name)]


def in_memory(frames):
    """Decoded frames as a frame source of the frame loop."""
    return frame_loop.Sequence(((index, frame, None) for index, frame in enumerate(frames)), [], len(frames))


def run_variant(answerer, settings, clips, batch):
    """Track every clip, `batch` of them per answerer call, through the frame loop; returns
    (boxes, seconds per frame after the first, answerer calls)."""
    calls = [0]

    def counted(requests):
        calls[0] += 1
        return answerer(requests)

    tracker = r1track.Tracker(answerer=counted, settings=settings)
    boxes, elapsed = [[] for _ in clips], [0.0]

    def keep(result):
        boxes[result.sequence].append(result.targets[0].box_xywh)
        elapsed[0] += result.seconds if result.index else 0.0

    frame_loop.run([in_memory(frames)._replace(starts=[frame_loop.Start(copy.copy(tracker), first_box)])
                    for frames, first_box in clips], keep, batch=batch)
    return boxes, elapsed[0] / sum(len(frames) - 1 for frames, _ in clips), calls[0]


def count_forwards(model):
    """A counter of the model's forward calls (for the naive loop's decode steps)."""
    calls = {"n": 0}

    def hook(module, args, kwargs):
        calls["n"] += 1

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


def bench_tracking(args) -> dict:
    model, processor, settings = load(args)
    forced = args.answer_tokens if args.architecture else 0
    clips = make_clips(args.streams, args.frames)

    def naive():
        return r1track.ModelAnswerer(model, processor, settings, max_new_tokens=forced or None, min_new_tokens=forced)

    def fast(**kwargs):
        return FastAnswerer(model, processor, settings, max_new_tokens=forced or None, min_new_tokens=forced,
                            **kwargs)

    variants = {
        "naive": (naive, 1), "template_reuse": (lambda: fast(draft=False), 1),
        "draft": (lambda: fast(reuse_template=False), 1), "fast": (fast, 1),
        "naive_batch": (naive, args.streams), "fast_batch": (fast, args.streams),
    }
    results, boxes, passes = {}, {}, {}
    run_variant(fast(), settings, clips[:1], 1)  # warm up (allocator, kernels)
    for name, (make, batch) in variants.items():
        timings = []
        for _ in range(args.repeats):
            answerer = make()
            forwards, hook = count_forwards(model)
            boxes[name], seconds, calls = run_variant(answerer, settings, clips, batch)
            hook.remove()
            timings.append(seconds)
            # forward passes after the first token, per answerer call (a call answers a whole batch)
            if isinstance(answerer, FastAnswerer):
                passes[name] = answerer.decode_passes / calls
            else:  # generate: one forward for the prompt, then one per further token
                passes[name] = (forwards["n"] - calls) / calls
        ms = 1000 * statistics.median(timings)
        results[name] = {"ms_per_frame": ms, "frames_per_s": 1000 / ms, "decode_steps_per_frame": passes[name],
                         "batch": batch}
        print(f"{name:<15} batch {batch:>2}  {ms:8.2f} ms/frame  {1000 / ms:8.2f} frames/s  "
              f"{passes[name]:5.2f} decode passes per call", flush=True)
    identical = all(boxes[name] == boxes["naive"] for name in boxes)
    speed = {name: results[name]["frames_per_s"] for name in results}
    summary = {
        "template_reuse_speedup": speed["template_reuse"] / speed["naive"],
        "draft_speedup": speed["draft"] / speed["naive"],
        "fast_speedup": speed["fast"] / speed["naive"],
        "batch8_speedup": speed["fast_batch"] / speed["fast"],
        "naive_batch8_speedup": speed["naive_batch"] / speed["naive"],
        "all_speedup": speed["fast_batch"] / speed["naive"],
        "identical_boxes": identical,
        "decode_steps_per_frame": {"naive": passes["naive"], "draft": passes["fast"]},
    }
    print("\n".join(f"{key}: {value:.2f}x" for key, value in summary.items() if key.endswith("speedup")))
    print(f"identical boxes: {identical}")
    return {**summary, "variants": results, "streams": args.streams, "frames": args.frames, "repeats": args.repeats}


# -----------------------------------------------------------------------------
# The host path at the real size


def time_forward(model):
    """A running total of the seconds spent in the model's forward (hooks around it), and when
    the first forward since `first` was last cleared began."""
    spent = {"s": 0.0, "start": 0.0, "first": None}

    def before(module, args, kwargs):
        spent["start"] = time.perf_counter()
        spent["first"] = spent["first"] or spent["start"]

    def after(module, args, kwargs, output):
        spent["s"] += time.perf_counter() - spent["start"]

    hooks = (model.register_forward_pre_hook(before, with_kwargs=True),
             model.register_forward_hook(after, with_kwargs=True))
    return spent, hooks


def run_streams(tracker, sequences, batch, spent, readers=0, croppers=1, stages=None) -> float:
    """Track the sequences `batch` at a time through the frame loop and return the seconds it
    took (first frames left out). The model answers every frame (and is timed), but the box
    kept is the ideal detector's (oracle_answer): a model that never saw 336-px crops would
    otherwise wander into crops of any size. `readers` threads read the frames ahead (0: in
    turn), `croppers` cut a step's crops at once, as eval_got10k.py cuts them. With `stages`
    (a dict of lists), each stage's milliseconds per frame are added to it: decode (reading
    the frame), crop (the search crop and its JPEG round trip), inputs (from the answerer's
    call to the model's first pass: the crop's pixel tensors, the rows' ids), model (forward
    passes), decode_loop (the fast decoder between passes), answer (parsing, mapping back)."""
    truths = {}  # per tracker: the true boxes of the frames it will be asked about
    timings, inside = {}, {"inputs": [], "model": [], "oracle": []}

    def answer_then_oracle(trackers, requests):
        called = time.perf_counter()
        spent["s"], spent["first"] = 0.0, None
        tracker.answerer(requests)
        # inputs: from the call to the model's first pass (the crops' pixel tensors, the rows' ids);
        # at a sequence's first frame that pass is its prefix's, and the rest falls in decode_loop
        inside["inputs"].append((spent["first"] - called) / len(requests))
        inside["model"].append(spent["s"] / len(requests))
        clock = time.perf_counter()
        answers = [oracle_answer(request, each.settings.crop_size, next(truths[id(each)]))
                   for each, request in zip(trackers, requests)]
        inside["oracle"].append((time.perf_counter() - clock) / len(requests))
        return answers

    runs = []
    for sequence in sequences:
        each = copy.copy(tracker)
        truths[id(each)] = iter(sequence["boxes_xywh"][1:])
        runs.append(frame_loop.Sequence(list(sequence["frames"]), [frame_loop.Start(each, sequence["boxes_xywh"][0])]))
    elapsed = [0.0]

    def add(result):
        elapsed[0] += result.seconds if result.index else 0.0

    frame_loop.run(runs, add, batch=batch, readers=readers, answer=answer_then_oracle, timings=timings,
                   croppers=croppers)
    if stages is not None:
        answered = [total - inputs - model - oracle for total, inputs, model, oracle in
                    zip(timings["answer"], inside["inputs"], inside["model"], inside["oracle"])]
        for name, values in (("decode", timings["read"]), ("crop", timings["crop"]), ("inputs", inside["inputs"]),
                             ("model", inside["model"]), ("decode_loop", [max(v, 0.0) for v in answered]),
                             ("answer", [a + o for a, o in zip(timings["accept"], inside["oracle"])])):
            stages.setdefault(name, []).extend(1000 * v for v in values)
    return elapsed[0]


def example_rate(source, processor, workers, count) -> float:
    """Training examples per second: pairs cut from the frames (OpenCV crops, JPEG) and turned
    into model inputs by `workers` DataLoader processes (0: in this process), as train_sft.py
    prepares them."""
    import functools

    import training

    stream = PairStream(source, 0, prepare=functools.partial(training.sft_example, processor, "seed"), workers=workers)
    # the workers started and busy: what they began ahead at the start (two chunks each) is
    # taken before the clock starts, so that it does not count for more workers more
    stream.next_pairs(max(2 * WORKER_CHUNK * workers, 2))
    started = time.perf_counter()
    stream.next_pairs(count)
    rate = count / (time.perf_counter() - started)
    stream.close()
    return rate


def peak_memory_reading(path, cache=None) -> tuple[int, int]:
    """(rows, peak resident MB) of a fresh process (this script with --read-parquet) that opens
    a parquet of pairs as training does and loads 40 pairs spread over it; `cache`: its
    R1TRACK_CACHE (where the images' Arrow copy is made)."""
    env = dict(os.environ, **({"R1TRACK_CACHE": str(cache)} if cache else {}))
    result = subprocess.run([sys.executable, __file__, "--read-parquet", str(path)], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"reading {path} failed: {result.stderr[-2000:]}")
    rows, megabytes = map(int, result.stdout.split())
    return rows, megabytes


def read_parquet_and_report_memory(path) -> int:
    """--read-parquet: open a parquet as training does, load 40 pairs spread over it, print the
    rows and this process's peak resident MB (VmHWM: its own, where ru_maxrss would carry the
    caller's over exec)."""
    source = open_pairs(path, 112)
    [source.load(index) for index in range(0, len(source), max(1, len(source) // 40))]
    peak_kb = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    print(len(source), peak_kb // 1024)
    return 0


def bench_pipeline(args) -> dict:
    """The host's share of a tracked frame at GOT-10k's real frame size (1920x1080 JPEGs) and
    the base's crops (336 px for Qwen2.5-VL, as published), one stream and --streams streams;
    how much reading ahead hides."""
    import dataclasses

    import cv2
    import torch

    model, processor, settings = load(args)
    if model.device.type == "cpu":
        leave_a_core_for_reading()  # as track.py and eval_got10k.py do
    opencv_on_one_thread()  # as they do
    # the published loop (OpenCV crops, JPEG), the one the published checkpoints run; the demo
    # model, taught on 112-px lenient crops, only lends its weights and processor here
    crop = processor.base.crop_size
    settings = dataclasses.replace(settings, crop_size=crop, loop="published")
    forced = args.answer_tokens  # a box's length: the demo model was never taught 336-px crops
    tracker = r1track.Tracker(answerer=FastAnswerer(model, processor, settings, max_new_tokens=forced,
                                                    min_new_tokens=forced), settings=settings)
    spent, hooks = time_forward(model)
    readers = frame_readers(model.device.type == "cpu", most=4)  # as eval_got10k.py reads ahead
    croppers = min(args.streams, os.cpu_count() or 1)  # as eval_got10k.py cuts a step's crops
    results = {"threads": torch.get_num_threads(), "readers": readers, "opencv_threads": cv2.getNumThreads()}
    with tempfile.TemporaryDirectory() as folder:
        split = synthetic.make_synthetic_got10k(folder, "val", sequences=args.streams, frames=args.frames,
                                                size=(1920, 1080), style="plain", seed=11)
        sequences = GOT10K.sequences(split.parent, split.name)
        tracked = sum(len(s["frames"]) - 1 for s in sequences)
        for batch in (1, args.streams):
            stages, in_turn, ahead = {}, [], []
            for _ in range(args.repeats):
                run_streams(tracker, sequences, batch, spent, stages=stages)
                in_turn.append(tracked / run_streams(tracker, sequences, batch, spent, croppers=croppers))
                ahead.append(tracked / run_streams(tracker, sequences, batch, spent, readers, croppers))
            # the model's rate from its total time, as the loops' rates are (its slow frames count)
            model_alone = 1000 / sum(statistics.mean(stages[name]) for name in ("model", "decode_loop", "inputs"))
            stages = {name: statistics.median(values) for name, values in stages.items()}
            host = stages["crop"] + stages["inputs"] + stages["answer"]
            rates = {"in_turn": statistics.median(in_turn), "read_ahead": statistics.median(ahead),
                     "model_alone": model_alone}
            results[f"batch_{batch}"] = {"stages_ms_per_frame": stages, "host_ms_per_frame": host, "frames_per_s": rates,
                                         "read_ahead_over_model_alone": rates["read_ahead"] / model_alone}
            print(f"batch {batch:>2}: " + "  ".join(f"{k} {v:.2f}" for k, v in stages.items()) +
                  f"  ms/frame; host {host:.2f} ms; {rates['in_turn']:.1f} frames/s read in turn, "
                  f"{rates['read_ahead']:.1f} read ahead, {model_alone:.1f} the model alone", flush=True)
        train_split = synthetic.make_synthetic_got10k(folder, "train", sequences=8, frames=10, size=(1920, 1080),
                                                      style="plain", seed=12)
        source = Got10kPairs(train_split, crop, loop="published")
        # the worker counts taken in turn within each repeat, so that they compare under the
        # same conditions (this machine's speed drifts by 10-30 % over minutes); 192 examples,
        # so that what the workers had begun ahead (two chunks each) is a small part of each count
        samples = {workers: [] for workers in (0, 1, 2, 4)}
        for _ in range(args.repeats):
            for workers, rates in samples.items():
                rates.append(example_rate(source, processor, workers, 192))
        rates = {workers: statistics.median(values) for workers, values in samples.items()}
        results["training_examples_per_s"] = rates
        print("training examples/s by workers: " + "  ".join(f"{k}: {v:.1f}" for k, v in rates.items()), flush=True)
        peaks = {}
        for rows in (100, 100_000):  # R1-Track-100k's rows, in one row group as pyarrow writes a table
            path = Path(folder) / f"pairs-{rows}.parquet"
            synthetic.write_pairs_parquet(path, rows)
            peaks[rows] = peak_memory_reading(path, cache=Path(folder) / "cache")[1]
        results["parquet_peak_resident_mb"] = peaks
        print("peak resident MB reading a parquet of 100 / 100,000 pairs: "
              f"{peaks[100]} / {peaks[100_000]}", flush=True)
    for hook in hooks:
        hook.remove()
    return {"pipeline": results, "frames": args.frames, "streams": args.streams, "repeats": args.repeats,
            "frame_size": [1920, 1080], "crop_size": crop, "loop": "published", "answer_tokens": forced}


# -----------------------------------------------------------------------------
# Target-loss recovery


def oracle_answer(request, size: int, box_xywh, visible=True) -> str:
    """What an ideal detector answers: the true box in the request's search crop (of `size`
    pixels), rounded as a model writes it, or nothing when the target is hidden or outside it."""
    scale, origin, _ = request.search_crop
    x, y, w, h = box_xywh
    box = [(x - origin[0]) * scale, (y - origin[1]) * scale, (x + w - origin[0]) * scale, (y + h - origin[1]) * scale]
    in_view = visible and box[0] < size and box[1] < size and box[2] > 0 and box[3] > 0
    return json.dumps([round(v) for v in box]) if in_view else "I cannot see the target."


def bench_recovery(args) -> dict:
    """AO of the published loop, of that loop with recovery, and of the lenient loop, all
    answered by the ideal detector, on synthetic clutter clips where targets get occluded,
    hidden or leave the view."""
    results = {}
    for motion, speed in (("usual motion", (1.0, 4.0)), ("fast motion", (6.0, 12.0))):
        results[motion] = recovery_on_clips(args, speed)
    return {"recovery": results, "sequences": args.streams, "frames": args.frames}


LOOP_VARIANTS = {"published_loop": ("published", False), "with_recovery": ("published", True),
                 "lenient_loop": ("lenient", False)}


def oracle_tracker(truth, cover, loop, recover):
    """A Tracker of one sequence answered by the ideal detector: its n-th request is about frame n."""
    settings = TrackSettings(loop=loop)
    frame = iter(range(1, len(truth)))

    def answer(requests):
        return [oracle_answer(request, settings.crop_size, truth[t], cover[t] > 0)
                for request, t in zip(requests, frame)]

    return r1track.Tracker(answerer=answer, settings=settings, recover=recover)


def recovery_on_clips(args, speed) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        split = synthetic.make_synthetic_got10k(folder, "val", sequences=args.streams, frames=args.frames, seed=7,
                                                speed=speed)
        sequences = GOT10K.sequences(split.parent, split.name)
        for key, (loop, recover) in LOOP_VARIANTS.items():
            out = Path(folder) / key
            trackers = [oracle_tracker(s["boxes_xywh"], s["cover"], loop, recover) for s in sequences]
            for tracker, sequence in zip(trackers, sequences):
                track_sequences(tracker, GOT10K, [sequence], out, batch=1, progress=False, readers=0)
            report = GOT10K.score(out, sequences)
            results[key] = {"ao": report["ao"], "sr50": report["sr50"], "sr75": report["sr75"],
                            "fallbacks": report["fallbacks"], "edge_holds": report["edge_holds"]}
            print(f"speed {speed[0]:g}-{speed[1]:g} px/frame  {key:<15} AO {report['ao']:.3f}  "
                  f"SR0.5 {report['sr50']:.3f}  SR0.75 {report['sr75']:.3f}  ({report['fallbacks']} frames without "
                  f"an answer, {report['edge_holds']} boxes held at the frame edge)", flush=True)
    return results


# -----------------------------------------------------------------------------
# Confidence: does it tell the frames the tracker got right from the others?


def roc_auc(scores, positive) -> float:
    """The chance that a random positive frame scores above a random negative one (ties
    count half): the area under the ROC curve. NaN when either class is empty."""
    import numpy as np

    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    above, below = scores[positive], scores[~positive]
    if not len(above) or not len(below):
        return float("nan")
    wins = (above[:, None] > below[None]).sum() + 0.5 * (above[:, None] == below[None]).sum()
    return float(wins / (len(above) * len(below)))


CONFIDENCE_VARIANTS = {"no recovery": (False, r1track.LOST_BELOW), "recovery after unusable answers": (True, 0.0),
                       "recovery below 0.5": (True, 0.5), "recovery below 0.6": (True, 0.6)}


def bench_confidence(args) -> dict:
    """Per frame after the first: the tracker's confidence, its IoU with the truth and whether
    the target is visible, on clips with an occluder and targets that leave the view (the
    demo model's plain world, and the clutter style it never saw); all sequences batched."""
    import numpy as np

    model, processor, settings = load(args)
    results = {}
    for style in ("plain", "clutter"):
        with tempfile.TemporaryDirectory() as folder:
            split = synthetic.make_synthetic_got10k(folder, "val", sequences=args.streams, frames=args.frames,
                                                  seed=11, style=style, hiding=True)
            sequences = GOT10K.sequences(split.parent, split.name)
            decoded = [[read_frame(path) for path in s["frames"]] for s in sequences]  # once, for all variants
            for variant, (recover, lost_below) in CONFIDENCE_VARIANTS.items():
                tracker = r1track.Tracker((model, processor), settings=settings, recover=recover, lost_below=lost_below)
                boxes, confidence = [[] for _ in sequences], [[] for _ in sequences]

                def keep(result):
                    if result.index:
                        boxes[result.sequence].append(result.targets[0].box_xywh)
                        confidence[result.sequence].append(result.targets[0].confidence)

                frame_loop.run([in_memory(frames)._replace(starts=[frame_loop.Start(copy.copy(tracker),
                                                                                    sequence["boxes_xywh"][0])])
                                for frames, sequence in zip(decoded, sequences)], keep, batch=len(sequences))
                ious = np.concatenate([got10k.bounded_iou(np.array(b), s["boxes_xywh"][1:], *s["resolution"])
                                       for b, s in zip(boxes, sequences)])
                visible = np.concatenate([s["cover"][1:] > 0 for s in sequences])
                scores = np.concatenate(confidence).astype(float)
                good = (ious >= 0.5) & visible
                row = {"ao": float(ious.mean()), "roc_auc_iou50": roc_auc(scores, ious >= 0.5),
                       # how well "below the threshold" marks the bad boxes: at the default, at the model's own
                       "lost_accuracy_default": lost_accuracy(scores, good, r1track.LOST_BELOW),
                       "lost_accuracy_fitted": lost_accuracy(scores, good, settings.lost_below)
                       if settings.lost_below is not None else None,
                       "roc_auc_visible": roc_auc(scores, visible), "lost_frames": int((scores < lost_below).sum()),
                       "mean_confidence_visible": float(scores[visible].mean()),
                       "mean_confidence_hidden": float(scores[~visible].mean()) if (~visible).any() else None,
                       "frames": len(scores)}
                results.setdefault(style, {})[variant] = row
                fitted = "" if settings.lost_below is None else \
                    f" fitted {settings.lost_below:.3f}: {row['lost_accuracy_fitted']:.3f}"
                print(f"{style:<8} {variant:<32} AO {row['ao']:.3f}  ROC AUC (IoU >= 0.5) {row['roc_auc_iou50']:.3f}  "
                      f"(visible) {row['roc_auc_visible']:.3f}  lost frames {row['lost_frames']}/{row['frames']}  "
                      f"balanced accuracy of lost at {r1track.LOST_BELOW}: {row['lost_accuracy_default']:.3f}{fitted}",
                      flush=True)
    return {"confidence": results, "sequences": args.streams, "frames": args.frames}


# -----------------------------------------------------------------------------
# Training throughput


def bench_training(args) -> dict:
    """Tokens/s and peak GPU memory of train_sft.py itself, a few steps in each mode on
    synthetic pairs: its own per-step metrics, the first step (warm-up) left out."""
    import subprocess

    device = args.device or r1track.default_device()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        split = synthetic.make_synthetic_got10k(folder, "train", sequences=8, frames=10, style="plain")
        model_source = args.model
        if args.architecture:  # random weights of a published shape, saved once, loaded like any checkpoint
            model, processor, _ = load(args)
            model_source = str(Path(folder) / "model")
            model.save_pretrained(model_source)
            processor.save_pretrained(model_source)
            del model
        modes = {"lora": [], "full": ["--full"]}
        if str(device).startswith("cuda"):
            modes["qlora"] = ["--load-in-4bit"]
        for mode, flags in modes.items():
            out = Path(folder) / mode
            command = [sys.executable, str(ROOT / "train_sft.py"), "--model", model_source, "--data", str(split),
                       "--out", str(out), "--device", str(device), "--max-steps", str(args.train_steps + 1),
                       "--batch-size", str(TRAIN_BATCH), "--grad-accum", "1", "--no-save", *flags]
            run = subprocess.run(command, capture_output=True, text=True)
            if run.returncode != 0:
                raise UserError(f"train_sft.py {mode} failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
            steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            timed = [record for record in steps if "tokens_per_s" in record and record["step"] > 1]
            peak = max((record.get("peak_memory_gib", 0.0) for record in timed), default=0.0) or None
            weights = re.search(r"training ([\d,]+) weights", run.stdout)
            results[mode] = {"tokens_per_s": statistics.median(record["tokens_per_s"] for record in timed),
                             "peak_memory_gib": peak, "batch_size": TRAIN_BATCH,
                             "trained_weights": int(weights.group(1).replace(",", "")) if weights else None}
            print(f"{mode:<6} {results[mode]['tokens_per_s']:10.0f} tokens/s  peak memory "
                  f"{'n/a (CPU)' if peak is None else f'{peak:.1f} GiB'}", flush=True)
    return {"training": results}


def bench_reports(args) -> dict:
    """train_sft.py's loop time per step (elapsed_s from step to step: the step, its metrics
    line, the reports and the curves) with no live reports and with all three, in turns; the
    first two steps left out (warm-up, and the reporters' start)."""
    device = args.device or r1track.default_device()
    modes = {"none": ["none"], "tensorboard+wandb+trackio": ["tensorboard", "wandb", "trackio"]}
    per_step = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as folder:
        split = synthetic.make_synthetic_got10k(folder, "train", sequences=8, frames=10, style="plain")
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TRACKIO_DIR": str(Path(folder) / "tk")}
        for turn in range(args.repeats):
            for mode, reporters in modes.items():
                out = Path(folder) / f"{mode}-{turn}"
                command = [sys.executable, str(ROOT / "train_sft.py"), "--model", args.model, "--data", str(split),
                           "--out", str(out), "--device", str(device), "--max-steps", str(args.train_steps + 2),
                           "--batch-size", str(TRAIN_BATCH), "--grad-accum", "1", "--no-save",
                           "--report-to", *reporters, "--run-name", out.name]
                run = subprocess.run(command, capture_output=True, text=True, env=env)
                if run.returncode != 0:
                    raise UserError(f"train_sft.py --report-to {' '.join(reporters)} failed: "
                                    f"{(run.stderr.strip().splitlines() or ['?'])[-1]}")
                elapsed = [json.loads(line)["elapsed_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
                per_step[mode].append(statistics.median(b - a for a, b in zip(elapsed[2:], elapsed[3:])))
                print(f"{mode:<28} run {turn + 1}: {per_step[mode][-1] * 1000:8.1f} ms a step", flush=True)
    medians = {mode: statistics.median(runs) for mode, runs in per_step.items()}
    cost = medians["tensorboard+wandb+trackio"] / medians["none"] - 1
    print(f"reporting to all three: {cost * 100:+.1f}% of a step ({medians['none'] * 1000:.1f} ms without)")
    return {"reports": {"seconds_per_step": medians, "runs": per_step, "cost_share": cost,
                        "steps_timed": args.train_steps, "batch_size": TRAIN_BATCH}}


def run(args) -> int:
    if not args.architecture and not args.recovery and args.model == str(DEMO_MODEL) \
            and not DEMO_MODEL.is_dir():
        raise UserError(f"no demo checkpoint at {DEMO_MODEL}; make it with tools/make_demo_model.py or "
                                "pass --model")
    if args.streams < 1 or args.frames < 2 or args.repeats < 1:
        raise UserError("--streams and --repeats must be at least 1, --frames at least 2")
    if args.recovery:
        result = bench_recovery(args)
    elif args.confidence:
        result = bench_confidence(args)
    elif args.pipeline:
        result = bench_pipeline(args)
    elif args.reports:
        result = bench_reports(args)
    else:
        result = bench_training(args) if args.train else bench_tracking(args)
    import torch

    device = args.device or r1track.default_device()
    result.update(date=datetime.date.today().isoformat(), device=str(device),
                  device_name=torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "CPU",
                  threads=torch.get_num_threads(),
                  model=f"{args.base}-{args.architecture}" if args.architecture else args.model)
    if args.json:
        write_atomic(args.json, json.dumps(result, indent=2))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.read_parquet:  # before script_main: its quiet_libraries would import transformers into the measure
        return read_parquet_and_report_memory(args.read_parquet)
    return script_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
