"""Minimal GRPO for tracking: group sampling, format and IoU rewards, KL to the reference.

  torchrun --nproc_per_node 4 train_grpo.py --init runs/sft --out runs/grpo
  python train_grpo.py --init runs/sft --think          # reason in <think>, answer in <answer>

Each step: take --prompts-per-step tracking questions; sample --group-size answers to each
(temperature 1.0); score every answer with the published R1-Track reward (or plain IoU);
turn rewards into advantages within each group; then --updates-per-batch PPO-clip updates
against the sampling policy, with a KL penalty to the reference model (the --init weights).
A question's prompt goes through the model once for its G answers in every pass
(shared_prompt.py; --repeat-prompts gives each answer a copy, as TRL does).

With LoRA (the default) a fresh adapter goes on top of the --init weights (an SFT adapter
is merged into its base first), and the reference is the same model with the adapter off:
no second copy. With --full or --continue-adapter the reference is a frozen copy
(--ref-on-cpu keeps it off the GPU).

Outputs and run-time contract as train_sft.py: OUT holds the final model, checkpoint-<step>/
folders (sampling resumes identically), metrics.jsonl and curves.png; Ctrl-C saves.
"""

from __future__ import annotations

import argparse
import dataclasses
import contextlib
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import r1track
import reports
import training
from answers import reward
from bases import rope_positions
from cli import ArgumentParser, UserError, first_line, positive_int
from data import PairStream, data_share, open_data, validation_set
from prompts import END_OF_TURN, answer_token_limit, collate, greedy_config, vision_token_ids
from settings import TrackSettings
from tracking_pairs import pair_inputs
from caches import has_states
from shared_prompt import (BLOCK_MASK_KERNELS, answer_logits, grouped_inputs, repeated_inputs, sample_answers,
                           stated_inputs)
from training import autocast, to_device, trainable_parameters

# -----------------------------------------------------------------------------
# The GRPO maths, importable and tested on their own


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6, scale=True) -> torch.Tensor:
    """(r - group mean) / (group std + eps), std with Bessel's correction; a group of one
    has mean 0 and std 1. A group of equal rewards gets zero advantage, never NaN.
    scale=False: r - group mean (Dr. GRPO: no division by the std)."""
    groups = rewards.view(-1, group_size).double()                           # [prompts, G]
    if group_size == 1:
        mean, std = torch.zeros_like(groups), torch.ones_like(groups)
    else:
        mean, std = groups.mean(1, keepdim=True), groups.std(1, keepdim=True)  # unbiased
    if not scale:
        std, eps = torch.ones_like(std), 0.0
    return ((groups - mean) / (std + eps)).view(-1).to(rewards.dtype)


def kl_low_var(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate to the reference, "low_var_kl": exp(d) - d - 1 with
    d = ref_logp - logp, clamped to [-10, 10]. Non-negative; zero where they agree."""
    d = ref_logp - logp
    return (torch.exp(d) - d - 1).clamp(-10, 10)


LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean")


def masked_mean(values, mask, aggregation="token-mean"):
    """The mean of values [B, T] over the answer tokens (mask): token-mean weighs every token
    of the batch alike (EasyR1's default, the published runs'); seq-mean-token-mean takes each
    answer's token mean, then their mean (TRL's "grpo" loss), so short answers weigh more."""
    if aggregation == "token-mean":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return ((values * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def policy_loss(logp, old_logp, advantages, mask, clip=0.2, aggregation="token-mean"):
    """PPO-clip loss as a masked mean (masked_mean), and the share of tokens where clipping
    took over. logp, old_logp, mask: [B, T]; advantages: [B]."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages[:, None] * ratio
    clipped = -advantages[:, None] * ratio.clamp(1 - clip, 1 + clip)
    per_token = torch.maximum(unclipped, clipped)
    return masked_mean(per_token, mask, aggregation), masked_mean((clipped > unclipped).float(), mask)


# -----------------------------------------------------------------------------
# Command line


def build_parser():
    parser = ArgumentParser(description=__doc__)
    training.add_model_args(parser, default_lr=1e-6, default_attn="sdpa, which takes the block mask that "
                            "shares each question's prompt among its answers; flash-attention takes none")
    parser.add_argument("--init", default=None, help="where the policy and the reference start: an SFT output "
                        "folder (adapter or full), a hub id or a base model (default: --model)")
    parser.add_argument("--continue-adapter", action="store_true", help="with an adapter --init: train that adapter "
                        "on (the reference is then a frozen copy) instead of a fresh one over it")
    parser.add_argument("--ref-on-cpu", action="store_true", help="keep a frozen reference copy in CPU memory")
    training.add_data_args(parser, inherited="as --init was trained, else ")
    training.add_run_args(parser, default_out="runs/grpo", default_batch=10, default_accum=1, default_save=20,
                          default_eval=10, accum_help=argparse.SUPPRESS, batch_help="answers per micro-batch of the log-probabilities and "
                          "updates, per rank, in whole groups: rounded down to a multiple of --group-size, at least "
                          "one question")
    # gradient checkpointing: on, except where the prompt is shared through the cache (Qwen3.5)
    parser.set_defaults(weight_decay=1e-2, warmup_ratio=0.0, epochs=1.0, gradient_checkpointing=None)
    group = parser.add_argument_group("GRPO")
    group.add_argument("--prompts-per-step", type=positive_int, default=32, help="questions per step, per rank")
    group.add_argument("--group-size", type=positive_int, default=5, help="answers sampled per question")
    group.add_argument("--updates-per-batch", type=positive_int, default=4, help="PPO updates per step: the sampled "
                       "answers are split into this many mini-batches (the published run: 512 / 128)")
    group.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling")
    group.add_argument("--max-new-tokens", type=positive_int, default=None,
                       help=f"longest answer (default: {answer_token_limit(False)}, or "
                       f"{answer_token_limit(True)} with --think)")
    group.add_argument("--clip", type=float, default=0.2, help="PPO clip range")
    group.add_argument("--kl-coef", type=float, default=1e-2, help="weight of the KL-to-reference loss")
    group.add_argument("--loss-agg", choices=LOSS_AGGREGATIONS, default="token-mean", help="how the per-token loss "
                       "becomes one number: token-mean over all answer tokens of an update (EasyR1, the published "
                       "runs; default) or seq-mean-token-mean, each answer's mean then their mean (TRL's grpo)")
    group.add_argument("--scale-rewards", choices=["group", "none"], default="group", help="divide the advantages "
                       "by the group's reward std (default, as published) or not (Dr. GRPO)")
    group.add_argument("--reward", choices=["r1track", "iou"], default="r1track",
                       help="r1track: the published shaped-GIoU reward; iou: plain IoU + a 0/1 format term")
    group.add_argument("--think", action="store_true", help="ask for <think> reasoning then an <answer>; "
                       "scores the format and length as the published think models were")
    group.add_argument("--rollout-batch", type=positive_int, default=64, help="answers sampled at once "
                       "(whole groups: at least one question)")
    group.add_argument("--repeat-prompts", action="store_true", help="give every answer its own row with its "
                       "whole prompt, as TRL does (about G times the work; a reference for checking), instead of "
                       "each question's prompt once for its G answers")
    return parser


def check_args(parser, args):
    args.init = args.init or args.model
    training.check_common_args(parser, args)
    if args.group_size < 2:
        parser.error("--group-size must be at least 2: advantages compare answers to the same question")
    if args.prompts_per_step % args.updates_per_batch:  # each update takes whole groups
        parser.error("--updates-per-batch must divide --prompts-per-step")
    if args.grad_accum != 1:
        parser.error("--grad-accum is SFT's: a GRPO optimizer step takes --prompts-per-step / --updates-per-batch "
                     "questions, in micro-batches of --batch-size answers")
    if args.temperature <= 0:
        parser.error("--temperature must be above 0: GRPO compares different answers to one question")
    if args.attn is None and not args.repeat_prompts:
        args.attn = "sdpa"  # flash-attention takes no block mask: the shared prompt needs one
    args.max_new_tokens = args.max_new_tokens or answer_token_limit(args.think)
    # the questions the --init model was trained on, unless the flags say otherwise
    base = training.fill_settings(parser, args, args.init, inherit=True)
    if args.gradient_checkpointing is None:  # it would drop the cache a recurrent base shares its prompts through
        args.gradient_checkpointing = not base.recurrent or args.repeat_prompts


# -----------------------------------------------------------------------------
# Rollout: sample answers through the KV cache, each question's prompt once for its G answers


def rollout(raw, processor, pairs, args, dist, step):
    """G sampled answers per question, through the KV cache. Returns the questions' prompts
    (model inputs, P), the answers' token ids ([P*G] lists, question-major, each with its end
    token when it has one), their decoded texts, and their lengths in tokens (the end token
    not counted). Greedy at temperature 0 (a test's setting: every answer the same)."""
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id
    end_ids = (tokenizer.convert_tokens_to_ids(END_OF_TURN), pad)
    # sampling is a function of (seed, step, rank): a resumed run draws the same answers
    torch.manual_seed(int(np.random.SeedSequence([args.seed, step, dist.rank]).generate_state(1)[0]))
    prompts = [pair_inputs(processor, p, think=args.think, wording=args.wording, return_tensors=False)
               for p in pairs]
    per_call = max(1, args.rollout_batch // args.group_size)                    # questions per call
    answers = []
    was_training = raw.training
    raw.eval()
    for start in range(0, len(prompts), per_call):
        questions = prompts[start:start + per_call]
        # no_grad, not inference_mode: FSDP's gathered weights made in inference mode could not be
        # written by the training steps that follow
        with torch.no_grad(), autocast(dist):
            if args.repeat_prompts:
                answers += generate_repeated(raw, processor, questions, end_ids, args, dist)
            else:
                # under FSDP every forward is a collective: all ranks step until the last is done
                synced = args.fsdp and dist.world > 1
                keep_going = (lambda done: dist.all_sum([float(not done)])[0] > 0) if synced else None
                answers += sample_answers(raw, to_device(collate(questions, pad), dist.device), args.group_size,
                                          args.max_new_tokens, end_ids, vision_token_ids(tokenizer),
                                          args.temperature, args.top_p, keep_going)
    raw.train(was_training)
    texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
    return prompts, answers, texts, [len(a) - (a[-1] in end_ids) for a in answers]


def generate_repeated(raw, processor, questions, end_ids, args, dist):
    """The rollout as TRL and VLM-R1 do it: every prompt repeated G times through `generate`
    (--repeat-prompts; the reference the shared path is checked against)."""
    config = greedy_config(processor, args.max_new_tokens)
    if args.temperature > 0:  # sample from the policy itself: temperature and top-p only, no library top-k
        config.do_sample, config.temperature, config.top_p, config.top_k = True, args.temperature, args.top_p, 0
    batch = to_device(collate(repeated(questions, args.group_size), processor.tokenizer.pad_token_id), dist.device)
    out = raw.generate(**batch, generation_config=config, synced_gpus=args.fsdp and dist.world > 1)
    answers = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        stop = next((i + 1 for i, token in enumerate(row) if token in end_ids), len(row))  # keep the end, drop padding
        answers.append(row[:stop])
    return answers


def repeated(questions, group_size):
    return [q for q in questions for _ in range(group_size)]


def sample_batches(raw, prompts, answers, updates, pad, args) -> dict:
    """Every micro-batch as model inputs, collated once (on the CPU) for both passes that use
    it: the sampling log-probabilities and the update. Keyed by its question indices."""
    return {tuple(chunk): sample_batch(raw, [prompts[q] for q in chunk], [answers[r] for r in answer_rows(chunk, args)],
                                       pad, args)
            for update in updates for chunk in update}


def answer_rows(chunk, args):
    """The answers (rows of the rollout) to the questions of a micro-batch."""
    return [q * args.group_size + j for q in chunk for j in range(args.group_size)]


def sample_batch(raw, prompts, answers, pad, args):
    """k questions and their k*G answers as (model inputs, answer ids, answer mask), [k*G, T]
    each, T the longest of these answers: each prompt once in a row with its G answers
    (shared_prompt.grouped_inputs), or with --repeat-prompts one row per answer."""
    width = max(len(a) for a in answers)
    answer = torch.tensor([a + [pad] * (width - len(a)) for a in answers])
    mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers])
    if not shares_prompts(raw, args):
        return repeated_inputs(collate(repeated(prompts, args.group_size), pad), answer, mask), answer, mask.float()
    batch = collate(prompts, pad)
    if has_states(raw.config):
        return stated_inputs(batch, rope_positions(raw, batch), answer, args.group_size), answer, mask.float()
    inputs = grouped_inputs(batch, rope_positions(raw, batch), answer, args.group_size,
                            additive_mask=attention_kernel(raw) == "eager")
    return inputs, answer, mask.float()


def attention_kernel(raw) -> str:
    return raw.config._attn_implementation


def shares_prompts(raw, args):
    """Whether the training passes score each prompt once: not with --repeat-prompts, nor with
    flash-attention, which takes no block mask; a model with linear-attention layers shares it
    through its cache instead, which gradient checkpointing drops (train says so at the start)."""
    if has_states(raw.config):
        return not args.repeat_prompts and not args.gradient_checkpointing
    return not args.repeat_prompts and attention_kernel(raw) in BLOCK_MASK_KERNELS


def on_device(sample, device):
    """A sample_batch's (inputs, answer ids, answer mask) on `device`."""
    batch, answer, mask = sample
    return to_device(batch, device), answer.to(device), mask.to(device)


def token_logprobs(model, inputs, answer, temperature, suppressed, with_entropy=False):
    """Log-probabilities of the answer tokens, [B, T] (and their entropy), under the
    distribution the rollout sampled from: logits / temperature, without the tokens
    generation may not emit. Logits only where an answer token is predicted (the inputs'
    logits_to_keep)."""
    logits = answer_logits(model, inputs).float().reshape(*answer.shape, -1) / temperature   # [B, T, V]
    logits[..., suppressed] = float("-inf")
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, answer[..., None]).squeeze(-1)
    if not with_entropy:
        return logp, None
    return logp, -(logp_all.exp() * logp_all.masked_fill(logp_all.isinf(), 0)).sum(-1)


# -----------------------------------------------------------------------------
# One step: rollout -> reward -> advantage -> loss


def grpo_step(step, model, raw, reference, processor, optimizer, scheduler, stream, args, dist):
    started = time.perf_counter()
    pairs = stream.next_pairs(args.prompts_per_step)                           # P questions

    # 1. rollout: G sampled answers to each question                              P*G rows
    prompts, answers, texts, lengths = rollout(raw, processor, pairs, args, dist, step)
    rolled_out = time.perf_counter()

    # 2. reward: the published R1-Track reward (or plain IoU) of every answer      [P*G]
    truths = [pairs[k // args.group_size].search_box_xyxy for k in range(len(texts))]
    scores, failure = score_answers(texts, lengths, truths, args, processor.base.boxes)
    if dist.all_sum([float(failure is not None)])[0]:  # every rank stops, not only the one whose reward broke
        raise UserError(failure or "the reward raised on another rank (its message names the answer)")
    rewards = torch.tensor([s["overall"] for s in scores])

    # 3. advantage: each answer against the other answers to the same question     [P*G]
    advantages = group_advantages(rewards, args.group_size, scale=args.scale_rewards == "group").to(dist.device)

    # 4. loss: PPO-clip against the sampling policy + KL to the reference, token-level
    #    mean; the answers are split into --updates-per-batch mini-batches, a step each
    #    (made of whole groups: a question's prompt goes through the model once a pass)
    updates = split_updates(len(prompts), args)                                 # [U][micro][question]
    batches = sample_batches(raw, prompts, answers, updates, processor.tokenizer.pad_token_id, args)  # used twice
    scored = time.perf_counter()
    old, ref, sampling = sampling_logprobs(raw, reference, batches, updates, processor, args, dist)
    logprobs_done = time.perf_counter()
    trained = ppo_updates(model, optimizer, batches, updates, old, ref, advantages, processor, args, dist)
    scheduler.step()
    updated = time.perf_counter()

    totals = dist.all_sum([float(rewards.sum()), float((rewards ** 2).sum()), float(len(rewards)),
                           sum(s["iou"] for s in scores), sum(s["format"] for s in scores),
                           float(sum(lengths)), *sampling.values(), *trained.values()])
    (reward_sum, reward_sq, n, iou, fmt, length, kl, entropy, tokens, loss, clip, grad_norm) = totals
    mean = reward_sum / n
    return {"step": step, "reward_mean": mean, "reward_std": math.sqrt(max(reward_sq / n - mean ** 2, 0.0)),
            "iou_mean": iou / n, "format_rate": fmt / n,
            "kl": kl / max(tokens, 1.0), "entropy": entropy / max(tokens, 1.0), "response_len": length / n,
            "loss": loss / dist.world, "clip_frac": clip / dist.world, "grad_norm": grad_norm / dist.world,
            "lr": scheduler.get_last_lr()[0], "step_s": time.perf_counter() - started,
            # the stages' own seconds (verl's timing_s/gen, old_log_prob + ref, update_actor)
            "rollout_s": rolled_out - started, "logprobs_s": logprobs_done - scored,
            "update_s": updated - logprobs_done,
            **peak_memory(dist)}


def peak_memory(dist) -> dict:
    if dist.device.type != "cuda":
        return {}
    return {"peak_memory_gib": torch.cuda.max_memory_allocated(dist.device) / 2 ** 30}


def score_answers(texts, lengths, truths, args, boxes):
    """(the rewards of the answers, None or what broke), the answers read in the `boxes`
    convention of the model's base, scored in crop pixels. A reward that raises is a broken
    reward, not a bad answer: scored on, it would leave the KL term alone training the model,
    so the run stops, naming the first answer it broke on."""
    scores, failure = [], None
    for text, length, truth in zip(texts, lengths, truths):
        try:
            scores.append(reward(text, truth, think=args.think, response_len=length, kind=args.reward, boxes=boxes,
                                 crop_side=args.crop_size))
        except Exception as error:
            failure = failure or (f"the reward raised {type(error).__name__}: {first_line(error)}, "
                                  f"on the answer {text!r} (true box {truth})")
            scores.append(None)
    return scores, failure


def split_updates(questions, args):
    """Question indices in a random order, cut into mini-batches (one optimizer step each) of
    micro-batches (one forward/backward each) of at most --batch-size answers, at least one
    question: whole groups, so that each question's prompt is scored once for its G answers."""
    order = torch.randperm(questions).tolist()
    per_update = questions // args.updates_per_batch
    per_micro = max(1, args.batch_size // args.group_size)
    return [[order[u + i:u + min(i + per_micro, per_update)] for i in range(0, per_update, per_micro)]
            for u in range(0, questions, per_update)]


@torch.no_grad()
def sampling_logprobs(raw, reference, batches, updates, processor, args, dist):
    """The sampling policy's and the reference's log-probs of every answer token, on the
    very micro-batches the updates will use, so that before any update ratio = 1 and
    KL = 0 exactly. Also the rollout's summed KL and entropy, and its answer tokens."""
    suppressed = vision_token_ids(processor.tokenizer)
    old, ref, kl_sum, entropy_sum, tokens = {}, {}, 0.0, 0.0, 0.0
    raw.eval()
    with autocast(dist):
        for chunk in (chunk for update in updates for chunk in update):
            key = tuple(chunk)
            batch, answer, mask = on_device(batches[key], dist.device)
            old[key], entropy = token_logprobs(raw, batch, answer, args.temperature, suppressed, with_entropy=True)
            with reference(raw) as ref_model:
                ref[key], _ = token_logprobs(ref_model, batch, answer, args.temperature, suppressed)
            kl_sum += float((kl_low_var(old[key], ref[key]) * mask).sum())
            entropy_sum += float((entropy * mask).sum())
            tokens += float(mask.sum())
    raw.train()
    return old, ref, {"kl": kl_sum, "entropy": entropy_sum, "tokens": tokens}


def ppo_updates(model, optimizer, batches, updates, old, ref, advantages, processor, args, dist):
    """One optimizer step per mini-batch; returns the mean loss, clip fraction and gradient norm."""
    suppressed = vision_token_ids(processor.tokenizer)
    losses, clip_fracs, grad_norms = [], [], []
    for update in updates:
        tokens = sum(float(batches[tuple(chunk)][2].sum()) for chunk in update)
        answers = sum(len(chunk) for chunk in update) * args.group_size
        for c, chunk in enumerate(update):
            key = tuple(chunk)
            batch, answer, mask = on_device(batches[key], dist.device)
            syncing = c == len(update) - 1 or dist.world == 1 or args.fsdp
            with (contextlib.nullcontext() if syncing else model.no_sync()), autocast(dist):
                logp, _ = token_logprobs(model, batch, answer, args.temperature, suppressed)          # [B, T]
                pg, clip_frac = policy_loss(logp, old[key], advantages[answer_rows(chunk, args)], mask, args.clip,
                                            args.loss_agg)
                kl = masked_mean(kl_low_var(logp, ref[key]), mask, args.loss_agg)
                # micro-batch means, weighted into the update's mean over its tokens (or its answers)
                share = float(mask.sum()) / tokens if args.loss_agg == "token-mean" else len(answer) / answers
                loss = (pg + args.kl_coef * kl) * share
            loss.backward()
            losses.append(float(loss.detach()) / share)
            clip_fracs.append(float(clip_frac))
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(trainable_parameters(model), args.grad_clip)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"loss": float(np.mean(losses)), "clip_frac": float(np.mean(clip_fracs)),
            "grad_norm": float(np.mean(grad_norms))}


# -----------------------------------------------------------------------------
# The reference model


def make_reference(raw, args, dist):
    """reference(policy) -> a context giving the reference model: the policy with its
    adapter switched off when that adapter is fresh over the --init weights, else a frozen
    copy of --init (kept on the CPU with --ref-on-cpu)."""
    if hasattr(raw, "disable_adapter") and not args.continue_adapter:
        return adapter_off
    device = torch.device("cpu") if args.ref_on_cpu else dist.device
    frozen, _ = r1track.load_model(args.init, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                                   device=device, attn=args.attn)
    frozen.requires_grad_(False)
    model = frozen if device == dist.device else _DeviceBridge(frozen, dist.device)
    return lambda policy: contextlib.nullcontext(model)


@contextlib.contextmanager
def adapter_off(policy):
    with policy.disable_adapter():
        yield policy


class _DeviceBridge:
    """Runs a CPU-kept reference on inputs from the GPU and hands its logits back there."""

    def __init__(self, model, device):
        self.model, self.device = model, device

    def __call__(self, **batch):
        out = self.model(**{k: v.to("cpu") if torch.is_tensor(v) else v for k, v in batch.items()})
        out.logits = out.logits.float().to(self.device)
        return out


# -----------------------------------------------------------------------------
# The training loop


def train(args, dist):
    from tqdm import tqdm

    out = Path(args.out)
    resume_dir = training.find_resume(args, dist)
    train_source, val_source = open_data(args, dist)
    model, processor = training.build_model(args, dist, init=args.init, resume_dir=resume_dir,
                                            fresh_adapter=not (args.full or args.continue_adapter))
    settings = TrackSettings(wording=args.wording, think=args.think, crop_size=args.crop_size, loop=args.loop,
                             boxes=processor.base.boxes, memory=args.memory)
    model, raw = training.wrap_distributed(model, args, dist)
    reference = make_reference(raw, args, dist)

    total_steps = args.max_steps or max(1, math.ceil(args.epochs * len(train_source) /
                                                      (args.prompts_per_step * dist.world)))
    optimizer, scheduler = training.make_optimizer(model, args, dist, total_steps, schedule_kind="constant")
    state = training.start_state(resume_dir, model, optimizer, scheduler, dist, args)
    stream = PairStream(train_source, args.seed, dist.rank, dist.world, state["position"], state["skipped"],
                        workers=training.data_workers(args, dist))
    val_pairs = validation_set(val_source, args, dist)
    report = reports.Report(out, dist, args, state["step"], "grpo", total_steps, settings, processor.base)
    stop = training.StopFlag()
    if dist.main:
        print(f"GRPO: {sum(p.numel() for p in trainable_parameters(raw)):,} weights, {total_steps} steps of "
              f"{args.prompts_per_step} questions x {args.group_size} answers on {dist.world} x {dist.device}")
        if not args.repeat_prompts and not shares_prompts(raw, args):
            print("GRPO: " + (f"gradient checkpointing drops the cache {processor.base.name} shares a prompt through"
                              if has_states(raw.config) else f"{attention_kernel(raw)} takes no block mask") +
                  ": the log-probabilities and updates score each answer with its own copy of the prompt (G times "
                  "the work; " + ("--no-gradient-checkpointing" if has_states(raw.config) else "--attn sdpa") +
                  " shares it)")

    def checkpoint(step):
        training.save_checkpoint(out, step, raw, model, optimizer, scheduler, processor, settings, state, dist,
                                 args.keep_checkpoints, report)

    step = state["step"]
    bar = tqdm(total=total_steps, initial=step, desc="grpo", unit="step", disable=not dist.main, dynamic_ncols=True)
    started = time.perf_counter() - report.latest.get("elapsed_s", 0.0)  # a resumed run's clock goes on
    while step < total_steps:
        step += 1
        record = grpo_step(step, model, raw, reference, processor, optimizer, scheduler, stream, args, dist)
        record["elapsed_s"] = time.perf_counter() - started  # the steps' own time against the run's (bookkeeping)
        record.update(data_share(train_source, stream.position, args, dist))
        report.log(record)
        bar.update()
        bar.set_postfix(reward=f"{record['reward_mean']:.3f}", iou=f"{record['iou_mean']:.3f}", kl=f"{record['kl']:.4f}")
        if val_pairs and (step % args.eval_every == 0 or step == total_steps):
            _, val_iou, lost_below = training.evaluate(model if args.fsdp else raw, processor, val_pairs, args, dist,
                                                       think=args.think)
            settings = dataclasses.replace(settings, lost_below=lost_below)  # saved with the model (train_sft.py)
            report.log({"step": step, "val_iou": val_iou, "val_lost_below": lost_below})
            if dist.main:
                bar.write(f"step {step}: val_iou {val_iou:.3f}")
        report.plot()
        state.update(step=step, position=stream.position, skipped=stream.skipped, epoch=stream.epoch())
        if training.after_step(step, total_steps, stop, checkpoint, args, dist, bar):
            report.finish()
            return 130
    bar.close()
    return training.finish(raw, model, processor, settings, args, dist, report, step)


def main(argv=None) -> int:
    return training.main(build_parser, check_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())
