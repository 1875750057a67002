"""Supervised fine-tuning of a Qwen2.5-VL, Qwen3-VL or Qwen3.5 model on tracking pairs, in one readable loop.

  python train_sft.py --data r1track5k --out runs/sft
  torchrun --nproc_per_node 4 train_sft.py --data r1track5k --out runs/sft
  python train_sft.py --model Qwen/Qwen3-VL-2B-Instruct --data r1track5k --out runs/sft-qwen3vl

The model reads a template crop with the target's box and a search crop, and learns to
answer the target's box in the search crop, `[x1,y1,x2,y2]`: in crop pixels for Qwen2.5-VL,
in thousandths of the crop's side for Qwen3-VL and Qwen3.5 (their grounding's convention; stored pairs,
written in pixels, are converted). The base's default crop is 336 px, or 352 for Qwen3-VL and Qwen3.5.
The loss covers the answer and its end-of-turn token only. LoRA on every linear layer by
default (the published recipe), QLoRA with --load-in-4bit, or full fine-tuning with --full
(--fsdp to shard it).

--out receives the final model (a save_pretrained folder: adapter or full weights,
processor, tracking settings), resumable checkpoint-<step>/ folders, metrics.jsonl and
curves.png. A checkpoint is written to a temporary folder and renamed, so a kill never
leaves half of one; Ctrl-C or SIGTERM saves one before exiting; --resume continues.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

import reports
import training
from cli import ArgumentParser
from data import PairStream, data_share, open_data, validation_set
from prompts import collate
from settings import TrackSettings
from training import autocast, to_device


def build_parser():
    parser = ArgumentParser(description=__doc__)
    training.add_model_args(parser)
    training.add_data_args(parser)
    training.add_run_args(parser)
    return parser


def check_args(parser, args):
    training.check_common_args(parser, args)
    training.fill_settings(parser, args, args.model, inherit=False)


# -----------------------------------------------------------------------------
# The loss: cross-entropy on the answer and its end-of-turn token


def answer_loss_sum(model, batch):
    """Summed cross-entropy over the answer tokens of a left-padded batch, where every
    answer ends its row: logits are computed for the answer tail only, never for the
    ~300 prompt tokens times the 152k-word vocabulary."""
    labels = batch["labels"]
    keep = int((labels != -100).sum(1).max()) + 1
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep).logits          # [B, keep, V]
    targets = labels[:, -(keep - 1):]                              # [B, keep-1]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")


# -----------------------------------------------------------------------------
# The training loop


def train(args, dist):
    from tqdm import tqdm

    out = Path(args.out)
    resume_dir = training.find_resume(args, dist)
    train_source, val_source = open_data(args, dist)
    model, processor = training.build_model(args, dist, resume_dir=resume_dir)
    settings = TrackSettings(wording=args.wording, think=False, crop_size=args.crop_size, loop=args.loop,
                             boxes=processor.base.boxes, memory=args.memory)
    model, raw = training.wrap_distributed(model, args, dist)

    per_step = args.batch_size * args.grad_accum * dist.world
    total_steps = args.max_steps or max(1, math.ceil(args.epochs * len(train_source) / per_step))
    optimizer, scheduler = training.make_optimizer(model, args, dist, total_steps)
    state = training.start_state(resume_dir, model, optimizer, scheduler, dist, args)
    # pairs become model inputs where they are loaded (in --data-workers processes, or the prefetch thread)
    stream = PairStream(train_source, args.seed, dist.rank, dist.world, state["position"], state["skipped"],
                        prepare=functools.partial(training.sft_example, processor, args.wording),
                        workers=training.data_workers(args, dist))
    val_pairs = validation_set(val_source, args, dist)
    report = reports.Report(out, dist, args, state["step"], "sft", total_steps, settings, processor.base)
    stop = training.StopFlag()
    pad = processor.tokenizer.pad_token_id
    if dist.main:
        trained = sum(p.numel() for p in training.trainable_parameters(raw))
        print(f"training {trained:,} weights for {total_steps} steps of {per_step} pairs on {dist.world} x {dist.device}")

    def next_step_batches():  # built in a background thread while the model works
        examples = stream.next_pairs(args.batch_size * args.grad_accum)
        batches = [collate(examples[i:i + args.batch_size], pad) for i in range(0, len(examples), args.batch_size)]
        # where the stream stands once these are consumed (it runs ahead while prefetching)
        return batches, {"position": stream.position, "skipped": stream.skipped, "epoch": stream.epoch()}

    def validation_loss(model, pairs):  # (summed loss, answer tokens)
        examples = [training.sft_example(processor, args.wording, p) for p in pairs]
        batch = to_device(collate(examples, pad), dist.device, processor.image_processor)
        return float(answer_loss_sum(model, batch)), float((batch["labels"] != -100).sum())

    def checkpoint(step):
        state.update(step=step, **consumed)
        training.save_checkpoint(out, step, raw, model, optimizer, scheduler, processor, settings, state, dist,
                                 args.keep_checkpoints, report)

    step = state["step"]
    consumed = {"position": stream.position, "skipped": stream.skipped, "epoch": stream.epoch()}
    bar = tqdm(total=total_steps, initial=step, desc="sft", unit="step", disable=not dist.main, dynamic_ncols=True)
    model.train()
    run_started = time.perf_counter() - report.latest.get("elapsed_s", 0.0)  # a resumed run's clock goes on
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        upcoming = prefetch.submit(next_step_batches)
        while step < total_steps:
            started = time.perf_counter()
            batches, consumed = upcoming.result()
            if step + 1 < total_steps:
                upcoming = prefetch.submit(next_step_batches)
            # the step's loss is the mean over all its answer tokens, on every rank together, whatever
            # the micro-batches hold: the ranks' gradients are averaged, so each rank's sum is scaled
            # by world / (all ranks' tokens), and 2 ranks of b pairs step as 1 rank of 2b
            answer_tokens = dist.all_sum([float(sum(int((b["labels"] != -100).sum()) for b in batches))])[0] / dist.world
            loss_total = 0.0
            for i, batch in enumerate(batches):
                syncing = i == len(batches) - 1 or dist.world == 1 or args.fsdp
                with (contextlib.nullcontext() if syncing else model.no_sync()), autocast(dist):
                    loss = answer_loss_sum(model, to_device(batch, dist.device, processor.image_processor)) / answer_tokens
                loss.backward()
                loss_total += float(loss.detach())
            grad_norm = torch.nn.utils.clip_grad_norm_(training.trainable_parameters(model), args.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            tokens = sum(int(b["attention_mask"].sum()) for b in batches)
            loss_mean, tokens = dist.all_sum([loss_total / dist.world, float(tokens)])
            seconds = time.perf_counter() - started
            record = {"step": step, "loss": loss_mean, "lr": scheduler.get_last_lr()[0],
                      "grad_norm": float(grad_norm), "tokens_per_s": tokens / seconds, "epoch": consumed["epoch"],
                      # the run's time so far: its steps against the steps' own time show the bookkeeping
                      "elapsed_s": time.perf_counter() - run_started,
                      **data_share(train_source, consumed["position"], args, dist)}
            if dist.device.type == "cuda":
                record["peak_memory_gib"] = torch.cuda.max_memory_allocated(dist.device) / 2 ** 30
            report.log(record)
            bar.update()
            bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{record['lr']:.2e}")

            if val_pairs and (step % args.eval_every == 0 or step == total_steps):
                val_loss, val_iou, lost_below = training.evaluate(model if args.fsdp else raw, processor, val_pairs,
                                                                  args, dist, loss_sum=validation_loss)
                # saved with the model: where its confidence best tells its good boxes from its bad ones
                settings = dataclasses.replace(settings, lost_below=lost_below)
                report.log({"step": step, "val_loss": val_loss, "val_iou": val_iou, "val_lost_below": lost_below})
                report.plot()
                if dist.main:
                    bar.write(f"step {step}: val_loss {val_loss:.4f}  val_iou {val_iou:.3f}")
            if training.after_step(step, total_steps, stop, checkpoint, args, dist, bar):
                report.finish()
                return 130
        upcoming.cancel()
    bar.close()
    return training.finish(raw, model, processor, settings, args, dist, report, step,
                           summary=f"  ({consumed['skipped']} unusable rows skipped)")


def main(argv=None) -> int:
    return training.main(build_parser, check_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())
