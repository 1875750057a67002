"""The plumbing both trainers share, so that train_sft.py and train_grpo.py read as their
algorithms: the flags common to both, ranks (the same script under python and torchrun),
the model (LoRA, QLoRA or full; DDP or FSDP2), the optimizer, data and validation,
checkpoints that are whole or absent (each with its model card, from reports.py), Ctrl-C, and the `main` both
scripts run (through cli.script_main: bad input is one line).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import re
import shutil
import signal
from pathlib import Path

import torch

import bases
import r1track
import reports
from answers import answer_box
from boxes import iou_xyxy
from cli import UserError, first_line, positive_int, script_main, write_atomic
from data import check_memory_loop, check_weights
from prompts import (
    WORDINGS,
    answer_text,
    answer_token_limit,
    collate,
    greedy_config,
    image_side,
    pixels_from_bytes,
)
from settings import LOOPS, LoadError, default_settings, load_settings, read_settings
from tracking_pairs import pair_inputs

# -----------------------------------------------------------------------------
# Command line


def share(text):
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text}")
    return value


def add_model_args(parser, default_model="Qwen/Qwen2.5-VL-3B-Instruct", default_lr=1e-5,
                   default_attn="flash_attention_2 when installed on GPU, else sdpa"):
    group = parser.add_argument_group("model")
    known = " or ".join(f"{base.name} (e.g. {base.example})" for base in bases.BASES.values())
    group.add_argument("--model", default=default_model, help=f"base model: hub id or folder of a {known} "
                       "checkpoint; its config says which")
    group.add_argument("--full", action="store_true", help="train every weight instead of LoRA adapters")
    group.add_argument("--fsdp", action="store_true", help="with --full under torchrun: shard weights, gradients "
                       "and optimizer state across ranks (FSDP2) when one GPU cannot hold them")
    group.add_argument("--lora-rank", type=positive_int, default=12, help="LoRA rank")
    group.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: twice the rank)")
    group.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout")
    group.add_argument("--lora-vision", action=argparse.BooleanOptionalAction, default=True,
                       help="LoRA on the vision tower's linear layers too (the published recipe trains it)")
    group.add_argument("--load-in-4bit", action="store_true", help="QLoRA: 4-bit NF4 base weights (GPU, bitsandbytes)")
    group.add_argument("--freeze-vision", action="store_true", help="with --full: keep the vision tower fixed")
    group.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                       help="recompute activations in the backward pass to save memory (default: on; GRPO on "
                       "Qwen3.5: off, as it drops the cache each question's prompt is shared through)")
    group.add_argument("--attn", default=None, choices=["sdpa", "flash_attention_2", "eager"],
                       help=f"attention kernel (default: {default_attn})")
    group.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available; "
                       "under torchrun each rank takes its LOCAL_RANK GPU)")
    group.add_argument("--lr", type=float, default=default_lr, help="peak learning rate")


def add_data_args(parser, default_data="r1track5k", inherited=""):
    group = parser.add_argument_group("data")
    group.add_argument("--data", nargs="+", default=default_data, metavar="DATA",
                       help="r1track5k | r1track100k (hub datasets) | a parquet file or folder (EasyR1 layout) | a "
                       "ShareGPT .json | a GOT-10k split folder with list.txt | KIND:FOLDER, a tracking set's "
                       "training split, KIND one of got10k, lasot (its 280 test sequences never read), trackingnet "
                       "(TRAIN_<k> chunks), coco (2017 instances, both crops from one image): a GOT-10k folder and "
                       "every KIND give fresh pairs sampled on the fly. Several: mixed by --data-weights, e.g. "
                       "got10k:GOT-10k/train lasot:LaSOT trackingnet:TrackingNet coco:COCO "
                       f"(default: {default_data})")
    group.add_argument("--data-weights", nargs="+", type=float, default=None, metavar="W",
                       help="with several --data: each one's share of the pairs, in their order (default: equal)")
    group.add_argument("--val-data", default=None, help="validation data, any form --data takes (default: the "
                       "dataset's own val split when it has one, else --val-fraction of --data)")
    group.add_argument("--val-fraction", type=float, default=0.0, help="hold out this fraction of a stored --data")
    group.add_argument("--val-size", type=positive_int, default=64, help="validation pairs per evaluation")
    sizes = ", ".join(f"{base.crop_size} for {base.name}" for base in bases.BASES.values())
    group.add_argument("--crop-size", type=positive_int, default=None, help="crop side in pixels, a whole number of "
                       f"the base's image tokens (default: {inherited}{sizes})")
    group.add_argument("--wording", default=None, choices=WORDINGS,
                       help=f"question wording (default: {inherited}seed)")
    group.add_argument("--loop", default=None, choices=LOOPS,
                       help="how pairs cut from a GOT-10k folder look, saved as the model's tracking loop: "
                       "published (OpenCV crops stored as JPEG, as R1-Track-5k was made) or lenient (antialiased "
                       f"crops) (default: {inherited}published)")
    group.add_argument("--data-workers", type=int, default=None, metavar="N",
                       help="processes that load and prepare training pairs ahead of the model (default: 4 on a "
                       "GPU, 0 on a CPU, where they would take the model's cores); any number gives the same pairs")
    group.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                       help="train on three-image questions: the template, a recent look of the target (a crop of a "
                       "frame shortly before the search frame, around a slightly wrong box, as a tracker's own "
                       "answer), the search crop; stored rows of three images are used (without it they are "
                       "left out, and said); saved with the model's tracking settings "
                       f"(default: {inherited}off)")
    group.add_argument("--tracking-pairs", type=share, default=0.0, metavar="SHARE",
                       help="with a tracking set (a GOT-10k folder or KIND:FOLDER): this share of the pairs cut as "
                       "the tracker asks (both crops factor 4, the search around a slightly wrong box) instead of "
                       "with the published jitter")


def add_run_args(parser, default_out="runs/sft", default_batch=4, default_accum=4, default_save=100, default_eval=50,
                 batch_help="pairs per micro-batch, per rank", accum_help="micro-batches per optimizer step"):
    group = parser.add_argument_group("run")
    group.add_argument("--out", default=default_out, help=f"output folder: final model, checkpoints, metrics (default: {default_out})")
    group.add_argument("--max-steps", type=positive_int, default=None, help="optimizer steps (default: --epochs over the data)")
    group.add_argument("--epochs", type=float, default=2.0, help="passes over the training data, if no --max-steps")
    group.add_argument("--batch-size", type=positive_int, default=default_batch, help=batch_help)
    group.add_argument("--grad-accum", type=positive_int, default=default_accum, help=accum_help)
    group.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    group.add_argument("--decay-biases-and-norms", action=argparse.BooleanOptionalAction, default=True,
                       help="apply the weight decay to biases and norm weights too (default, as the published "
                       "EasyR1 runs; --no-decay-biases-and-norms: matrices only, as transformers' Trainer)")
    group.add_argument("--warmup-ratio", type=float, default=0.1, help="share of the steps with a linear warmup; cosine decay after")
    group.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this")
    group.add_argument("--seed", type=int, default=0, help="random seed (data order, sampled pairs, adapter init)")
    group.add_argument("--eval-every", type=positive_int, default=default_eval, help="evaluate every N steps (and at the end)")
    group.add_argument("--save-every", type=positive_int, default=default_save, help="checkpoint every N steps (and at the end)")
    group.add_argument("--keep-checkpoints", type=positive_int, default=2, help="checkpoints kept on disk")
    group.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                       help="continue from a checkpoint folder, or with no value from the latest in --out")
    group.add_argument("--merge-lora", action="store_true", help="also export adapter + base merged into OUT/merged")
    group.add_argument("--no-save", action="store_true", help="save no checkpoint and no final model (to measure "
                       "speed: a checkpoint of the 3B model's full fine-tuning is tens of GB)")
    group.add_argument("--timeout-minutes", type=positive_int, default=30,
                       help="under torchrun, how long a rank waits for the others in any one exchange before the run "
                       "ends (a rank that hangs; one that dies ends the run at once)")
    reports.add_report_args(parser)


def check_common_args(parser, args):
    if args.fsdp and not args.full:
        parser.error("--fsdp shards full fine-tuning; add --full (LoRA runs use DDP)")
    if args.load_in_4bit and args.full:
        parser.error("--load-in-4bit trains LoRA adapters on 4-bit weights; it cannot go with --full")
    if args.freeze_vision and not args.full:
        parser.error("--freeze-vision is for --full; with LoRA use --no-lora-vision")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error("--val-fraction must be in [0, 1)")
    if args.data_workers is not None and args.data_workers < 0:
        parser.error("--data-workers must be 0 or more")
    if isinstance(args.data, list) and len(args.data) == 1:
        args.data = args.data[0]  # one source is a string, as runs saved it before --data took several
    try:
        check_weights(args.data_weights, len(args.data) if isinstance(args.data, list) else 1)
    except UserError as error:
        parser.error(str(error))
    reports.check_report_args(parser, args)


def fill_settings(parser, args, start: str, inherit: bool):
    """Tracking settings not given as flags: those of `start`, the model training starts from,
    when `inherit` and it has some, else its base's defaults. A crop size its base cannot take
    is refused, naming the sizes that fit. Returns the base of `start`."""
    try:
        base = r1track.checkpoint_base(start)
        settings = (read_settings(start) if inherit else None) or default_settings(base)
    except LoadError as error:
        parser.error(str(error))
    if settings.boxes != base.boxes:  # the weights are never loaded for a run that load_model refuses
        parser.error(f"{start}: {settings.problem_with(base)}")
    args.crop_size = args.crop_size or settings.crop_size
    args.wording = args.wording or settings.wording
    args.loop = args.loop or settings.loop
    args.memory = settings.memory if args.memory is None else args.memory
    try:
        check_memory_loop(args.memory, args.loop)
    except UserError as error:
        parser.error(str(error))
    problem = base.crop_size_problem(args.crop_size)
    if problem:
        parser.error(f"--crop-size: {problem}")
    return base


def check_crop_size(args, processor) -> None:
    """The crop size against the loaded image processor's pixel bounds (which the base's grid
    alone cannot tell): a crop it would resize is refused, never resized silently."""
    problem = processor.base.crop_size_problem(args.crop_size, processor.image_processor)
    if problem:
        raise UserError(f"--crop-size: {problem}")


# -----------------------------------------------------------------------------
# Ranks: the same file runs under python and torchrun


class Dist:
    """This process's place in the run: rank, world size, device."""

    def __init__(self, device_flag=None, timeout_minutes=30):
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device_flag is None:
            device_flag = "cuda" if torch.cuda.is_available() else "cpu"
        if device_flag == "cuda":
            device_flag = f"cuda:{local_rank}"
        self.device = torch.device(device_flag)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, device_id=self.device if backend == "nccl" else None,
                                                 timeout=datetime.timedelta(minutes=timeout_minutes))
        self.main = self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

    def close(self):
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# -----------------------------------------------------------------------------
# Model: LoRA, QLoRA or full; resumed from a checkpoint when asked


def lora_config(args, base: bases.Base):
    from peft import LoraConfig

    return LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha or 2 * args.lora_rank,
                      lora_dropout=args.lora_dropout, target_modules=base.lora_targets(args.lora_vision), bias="none")


def weights_dtype(args, device):
    """Frozen LoRA bases in bf16 on GPU; trained full weights stay fp32 under bf16 autocast."""
    if device.type != "cuda":
        return torch.float32
    return torch.float32 if args.full else torch.bfloat16


def build_model(args, dist, init=None, resume_dir=None, fresh_adapter=False):
    """The trainable model and its processor. `init` (default --model) is where the weights
    start: a full model, or an adapter that is trained on (fresh_adapter=False) or merged
    into its base under a new adapter (fresh_adapter=True). `resume_dir`: a checkpoint of
    this run to continue."""
    init = str(init or args.model)
    # a sharded checkpoint holds no model folder: the weights start as `init` and come from its shards
    source = str(init if resume_dir is None or is_sharded_checkpoint(resume_dir) else resume_dir)
    trainable = not (fresh_adapter and resume_dir is None)
    model, processor = r1track.load_model(source, dtype=weights_dtype(args, dist.device), device=dist.device,
                                          load_in_4bit=args.load_in_4bit, attn=args.attn, trainable=trainable)
    settings = model.r1track_settings
    check_crop_size(args, processor)
    is_adapter = hasattr(model, "peft_config")
    # peft imported only where used: with bitsandbytes it costs seconds of start-up
    if args.load_in_4bit and not is_adapter:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    if not args.full and not is_adapter:
        from peft import get_peft_model

        torch.manual_seed(args.seed)  # the same adapter initialisation on every rank and rerun
        model = get_peft_model(model, lora_config(args, processor.base))
        # the weights under the adapter are `init` (an adapter chain is merged when loaded)
        model.peft_config["default"].base_model_name_or_path = init
    if args.full:
        model.requires_grad_(True)
        if args.freeze_vision:
            bases.vision_tower(model).requires_grad_(False)
    if args.gradient_checkpointing:  # non-reentrant: frozen inputs need no requires_grad trick
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.activation_checkpointing_enable({"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    model.r1track_settings = settings
    return model, processor


def wrap_distributed(model, args, dist):
    """DDP for LoRA and full fine-tuning; FSDP2 for --fsdp. Returns (wrapped, raw model)."""
    if dist.world == 1:
        return model, model
    if args.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if dist.device.type == "cuda" else MixedPrecisionPolicy()
        # the vision tower is a unit of its own (after its blocks), so that its hooks gather its
        # patch embedding when generate runs it alone; the root is settled now, as its first
        # forward would settle it
        for unit in bases.fsdp_units(model):
            fully_shard(unit, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        model._get_fsdp_state()._lazy_init()
        return model, model
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    return ddp, model


def trainable_parameters(model):
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model, args, dist, total_steps, schedule_kind="cosine"):
    params = trainable_parameters(model)
    if not params:
        raise UserError("nothing to train: every weight is frozen")
    if getattr(args, "decay_biases_and_norms", True):
        groups = [{"params": params, "weight_decay": args.weight_decay}]
    else:  # biases and norm weights are the 1-D ones
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), fused=dist.device.type == "cuda")
    warmup = int(round(args.warmup_ratio * total_steps))

    def schedule(step):  # linear warmup, then cosine to zero (or constant)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule_kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def data_workers(args, dist) -> int:
    """--data-workers, or its default for this device."""
    if args.data_workers is not None:
        return args.data_workers
    return 4 if dist.device.type == "cuda" else 0


def autocast(dist):
    if dist.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch, device, image_processor=None):
    """The batch on `device`; patch_bytes (prompts.image_patches) become pixel_values there."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if "patch_bytes" in batch:
        batch["pixel_values"] = pixels_from_bytes(batch.pop("patch_bytes"), image_processor)
    return batch


# -----------------------------------------------------------------------------
# Examples and evaluation


def sft_example(processor, wording, pair):
    """A pair as the model inputs of an SFT step, whose labels are the answer box
    `[x1,y1,x2,y2]` in the base's box convention (stored pairs hold pixels); the pixels still
    bytes (they become floats on the model's device, in to_device)."""
    answer = answer_text(pair.search_box_xyxy, image_side(pair.search), processor.base.boxes)
    return pair_inputs(processor, pair, answer=answer, wording=wording, return_tensors=False, pixels_as_bytes=True)


@torch.no_grad()
def evaluate(model, processor, pairs, args, dist, think=False, loss_sum=None):
    """(mean validation loss, mean IoU of greedy answers, the lost threshold they fit): the
    loss given `loss_sum(model, pairs) -> (summed loss, answer tokens)`, else None; an unusable
    answer counts IoU 0; the threshold is answers.fit_lost_below over the answers' confidences
    (to a thousandth) and whether their IoU is at least 0.5, None where all are good or all
    bad. Each rank takes its share of the pairs; the results are the whole set's.

    Under FSDP every forward pass is a collective: every rank runs the same number of batches
    (a rank whose share ran out runs a stand-in batch whose results are not counted) and
    generates in step with the others (synced_gpus), whatever the answers' lengths."""
    was_training = model.training
    model.eval()
    pad = processor.tokenizer.pad_token_id
    mine = pairs[dist.rank::dist.world]
    in_step = dist.world > 1 and args.fsdp
    batches = math.ceil(math.ceil(len(pairs) / dist.world) / args.batch_size) if in_step else \
        math.ceil(len(mine) / args.batch_size)
    loss_total = tokens = iou_sum = 0.0
    good, bad = [0.0] * LOST_BINS, [0.0] * LOST_BINS  # answers by confidence, a thousandth a bin
    config = greedy_config(processor, answer_token_limit(think))
    for start in range(0, batches * args.batch_size, args.batch_size):
        chunk = mine[start:start + args.batch_size]
        counted = bool(chunk)
        chunk = chunk or pairs[:1]  # the stand-in
        with autocast(dist):
            if loss_sum is not None:
                chunk_loss, chunk_tokens = loss_sum(model, chunk)
                if counted:
                    loss_total, tokens = loss_total + chunk_loss, tokens + chunk_tokens
            prompts = [pair_inputs(processor, p, think=think, wording=args.wording, return_tensors=False)
                       for p in chunk]
            answers, confidences = r1track.generate_answers(model, processor, collate(prompts, pad), config,
                                                            synced=in_step, confidences=True)
        for pair, answer, confidence in zip(chunk if counted else [], answers, confidences):
            box = answer_box(answer, image_side(pair.search), processor.base.boxes, think=think)
            iou = iou_xyxy(box, pair.search_box_xyxy) if box else 0.0
            iou_sum += iou
            kind = good if iou >= 0.5 else bad
            kind[min(LOST_BINS - 1, int((confidence or 0.0) * LOST_BINS))] += 1  # no number: as sure as 0
    loss_total, tokens, iou_sum, count, *counts = dist.all_sum([loss_total, tokens, iou_sum, float(len(mine)),
                                                                *good, *bad])
    model.train(was_training)
    return (loss_total / max(tokens, 1.0) if loss_sum is not None else None), iou_sum / max(count, 1.0), \
        _fitted_lost_below(counts[:LOST_BINS], counts[LOST_BINS:])


LOST_BINS = 1000


def _fitted_lost_below(good_counts, bad_counts) -> float | None:
    """answers.fit_lost_below over answers counted by confidence bin (each at its bin's middle)."""
    import numpy as np

    from answers import fit_lost_below

    middles = (np.arange(LOST_BINS) + 0.5) / LOST_BINS
    good, bad = np.asarray(good_counts, int), np.asarray(bad_counts, int)
    confidences = np.concatenate([np.repeat(middles, good), np.repeat(middles, bad)])
    try:
        return round(fit_lost_below(confidences, np.arange(len(confidences)) < good.sum()), 4)
    except ValueError:  # all good or all bad: nothing to tell apart
        return None


# -----------------------------------------------------------------------------
# Checkpoints, metrics, signals


STATE_FILE = "trainer_state.json"


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (their state file is written last), oldest first."""
    found = [p for p in out.glob("checkpoint-*") if (p / STATE_FILE).is_file() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


# Flags that change how a run is carried out, not what it computes: free to change on --resume.
RUN_PLUMBING = {"out", "resume", "eval_every", "save_every", "keep_checkpoints", "merge_lora", "no_save", "device",
                "timeout_minutes",
                "data_workers", "val_data", "val_size", "attn", "gradient_checkpointing", "ref_on_cpu",
                *reports.PLUMBING}


def run_flags(args) -> dict:
    """The flags that decide what a run computes, as saved with its checkpoints."""
    return {key: value for key, value in sorted(vars(args).items()) if key not in RUN_PLUMBING}


def check_same_flags(resume_dir: Path, args) -> None:
    """--resume continues the run the checkpoint belongs to: its optimizer state, schedule and
    data stream were made for that run's flags, so a changed one is an error, not ignored."""
    saved = json.loads((resume_dir / STATE_FILE).read_text()).get("flags")
    if saved is None:  # a checkpoint from before flags were saved
        return
    now = json.loads(json.dumps(run_flags(args)))  # as the file holds them (tuples as lists)
    # a flag newer than the checkpoint is not in it: the run had that flag's behaviour before it existed
    changed = [f"--{key.replace('_', '-')} {saved.get(key)!r} -> {now.get(key)!r}"
               for key in sorted(saved) if saved.get(key) != now.get(key)]
    if changed:
        raise UserError(f"{resume_dir} was saved by a run with other flags ({'; '.join(changed)}); resume with "
                        "the run's own flags, or start a new run in another --out")


def find_resume(args, dist) -> Path | None:
    """The checkpoint to continue from (None: start afresh), checked against the flags."""
    path = _resume_folder(args, dist)
    if path is not None:
        check_same_flags(path, args)
    return path


def _resume_folder(args, dist) -> Path | None:
    out = Path(args.out)
    if args.resume is None:
        if checkpoints(out):
            raise UserError(f"{out} already holds checkpoints; pass --resume to continue, or choose another --out")
        return None
    if args.resume == "latest":
        found = checkpoints(out)
        if not found:
            if dist.main:
                print(f"no checkpoint in {out}: starting from the beginning")
            return None
        return found[-1]
    path = Path(args.resume)
    if not (path / STATE_FILE).is_file():
        raise UserError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def full_state_dicts(model, optimizer):
    """Model and optimizer state as plain full tensors, whatever the wrapping (DDP, FSDP2)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_model_folder(folder: Path, model, processor, settings, state_dict=None, card=None):
    """A save_pretrained folder: adapter or full weights (safetensors), processor, settings,
    and the model card (README.md; after the weights, as peft writes a blank one)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    processor.save_pretrained(folder)
    settings.save(folder)
    if card is not None:
        card.save(folder / "README.md")


def trainable_state(raw, model_state):
    """The part of a full state dict that a save_pretrained folder of this model holds."""
    if hasattr(raw, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(raw, state_dict=model_state)
    return model_state


SHARDS = "shards"  # a sharded (FSDP) checkpoint's weights and optimizer, torch.distributed.checkpoint's layout


def is_sharded_checkpoint(folder: Path) -> bool:
    return (Path(folder) / SHARDS).is_dir()


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def save_checkpoint(out: Path, step: int, raw, model, optimizer, scheduler, processor, settings, state, dist, keep,
                    report=None):
    """checkpoint-<step>/: model folder with the card `report` writes for it, optimizer +
    scheduler + RNG, state file last; built in a temporary folder and renamed into place, so it
    is whole or absent. Under FSDP the weights and optimizer state are written by every rank,
    each its own shard (no rank holds more than its share), in SHARDS/ beside the configuration."""
    card = report.card(step, out / f"checkpoint-{step}") if report is not None else None
    if is_sharded(model):
        return save_sharded_checkpoint(out, step, raw, model, optimizer, scheduler, processor, settings, state, dist,
                                       keep, card)
    model_state, optimizer_state = full_state_dicts(model, optimizer)
    if dist.main:
        final, tmp = out / f"checkpoint-{step}", out / f".checkpoint-{step}.tmp"
        if not final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            save_model_folder(tmp, raw, processor, settings, state_dict=trainable_state(raw, model_state), card=card)
            torch.save({"optimizer": optimizer_state, **schedule_and_rng(scheduler)}, tmp / "optimizer.pt")
            commit_checkpoint(tmp, final, state)
        forget_old_checkpoints(out, keep)
    dist.barrier()


def schedule_and_rng(scheduler) -> dict:
    return {"scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def commit_checkpoint(tmp: Path, final: Path, state: dict):
    """The state file last, then the folder renamed into place: a checkpoint is whole or absent."""
    write_atomic(tmp / STATE_FILE, json.dumps(state, indent=2))
    os.replace(tmp, final)


def forget_old_checkpoints(out: Path, keep: int):
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def save_sharded_checkpoint(out, step, raw, model, optimizer, scheduler, processor, settings, state, dist, keep,
                            card=None):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final, tmp = out / f"checkpoint-{step}", out / f".checkpoint-{step}.tmp"
    if final.exists():
        return
    if dist.main:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)  # each rank's shards only
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp / SHARDS)
    if dist.main:
        raw.config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        settings.save(tmp)
        if card is not None:
            card.save(tmp / "README.md")
        torch.save(schedule_and_rng(scheduler), tmp / "scheduler.pt")
        commit_checkpoint(tmp, final, state)
        forget_old_checkpoints(out, keep)
    dist.barrier()


def start_state(resume_dir: Path | None, model, optimizer, scheduler, dist, args) -> dict:
    """The run's position (step, data position, skipped rows) and flags: restored with the
    weights and optimizer from `resume_dir`, or the beginning."""
    if resume_dir is None:
        return {"step": 0, "position": 0, "skipped": 0, "flags": run_flags(args)}
    state = restore_checkpoint(resume_dir, model, optimizer, scheduler, dist)
    if dist.main:
        print(f"resumed from {resume_dir} at step {state['step']}")
    return {**state, "flags": run_flags(args)}


def restore_checkpoint(resume_dir: Path, model, optimizer, scheduler, dist) -> dict:
    """Optimizer, scheduler and RNG from a checkpoint (the weights came with the model)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    if is_sharded_checkpoint(resume_dir):
        if not is_sharded(model):
            raise UserError(f"{resume_dir} holds the shards of an --fsdp run: resume it with --fsdp on "
                            "several ranks")
        saved = load_sharded_checkpoint(resume_dir, model, optimizer)
    else:
        saved = torch.load(resume_dir / "optimizer.pt", map_location="cpu", weights_only=True)
        set_optimizer_state_dict(model, optimizer, saved["optimizer"], options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return json.loads((resume_dir / STATE_FILE).read_text())


def load_sharded_checkpoint(resume_dir: Path, model, optimizer) -> dict:
    """Each rank's shards of the weights and optimizer state into the sharded model; returns
    the scheduler and RNG state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    shards = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(shards, checkpoint_id=resume_dir / SHARDS)
    set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])
    return torch.load(resume_dir / "scheduler.pt", map_location="cpu", weights_only=True)


def save_final(out: Path, raw, model, processor, settings, dist, card=None):
    """The final model in OUT itself, each file replaced atomically."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    model_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.main:
        tmp = out / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model_folder(tmp, raw, processor, settings, state_dict=trainable_state(raw, model_state), card=card)
        for path in tmp.iterdir():
            os.replace(path, out / path.name)
        tmp.rmdir()
    dist.barrier()


def merge_lora(out: Path, dist, card=None):
    """OUT/merged: the adapter folded into a bf16 copy of its base, a plain full model."""
    if not dist.main:
        return
    model, processor = r1track.load_model(str(out), dtype=torch.bfloat16, device="cpu")
    save_model_folder(out / "merged", model, processor, load_settings(str(out)), card=card)
    print(f"merged model: {out / 'merged'}")


class StopFlag:
    """Set by SIGINT/SIGTERM; checked between steps so a checkpoint can be saved first."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self, dist) -> bool:
        """True on every rank when any rank was asked to stop."""
        return dist.all_sum([float(self.requested)])[0] > 0


def after_step(step, total_steps, stop, save, args, dist, bar) -> bool:
    """The end of every step: a checkpoint when one is due (`save(step)`); when any rank was
    asked to stop, a checkpoint and True, and the run ends with status 130."""
    if stop.agreed(dist):
        if not args.no_save:
            save(step)
        bar.close()
        if dist.main:
            print("interrupted: nothing saved (--no-save)" if args.no_save else
                  f"interrupted: saved {Path(args.out) / f'checkpoint-{step}'}; rerun with --resume to continue")
        return True
    if (step % args.save_every == 0 or step == total_steps) and not args.no_save:
        save(step)
    return False


def finish(raw, model, processor, settings, args, dist, report, step, summary="") -> int:
    """The end of a run: the final model in OUT with its card, OUT/merged when asked, and
    OUT on the hub when asked (only once it is safely on disk)."""
    out = Path(args.out)
    report.finish()
    if args.no_save:
        if dist.main:
            print(f"done, nothing saved (--no-save){summary}")
        return 0
    save_final(out, raw, model, processor, settings, dist, card=report.card(step, out))
    if dist.main:
        print(f"final model: {out}{summary}")
    if args.merge_lora and hasattr(raw, "peft_config"):
        merge_lora(out, dist, card=report.card(step, out / "merged", merged=True))
    if args.push_to_hub and dist.main:
        reports.push_to_hub(reports.pushed_folder(args), args.push_to_hub, args.hub_private)
    return 0


def lost_the_others(error: RuntimeError) -> bool:
    """Whether an error is a collective that failed because another rank died or hung
    (gloo says so in plain RuntimeErrors)."""
    return isinstance(error, torch.distributed.DistError) or bool(re.search(
        r"closed by peer|reset by peer|broken pipe|timed out|timeout|NCCL communicator was aborted", str(error), re.I))


def main(build_parser, check_args, train, argv=None) -> int:
    """The `main` of both trainers: parse and check the flags, join the ranks, train."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)

    def train_on_this_rank(args):
        dist = Dist(args.device, args.timeout_minutes)
        try:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            return train(args, dist)
        except RuntimeError as error:
            if dist.world > 1 and lost_the_others(error):
                raise UserError(f"rank {dist.rank} lost the other ranks ({first_line(error)[:160]}): "
                                "torchrun's summary names the rank that failed; --resume continues from the last "
                                "checkpoint") from None
            raise
        finally:
            dist.close()

    return script_main(train_on_this_rank, args)
