"""GRPO with each question's prompt once for its G answers (shared_prompt.py) against the
layout every other GRPO stack uses, each answer in a row of its own after a copy of its prompt
(--repeat-prompts): the same answers, log-probabilities, loss and gradients, for a fraction of
the work."""
import argparse
import copy
import hashlib

import pytest
import torch
from conftest import BASES, run_main
from PIL import Image

import data
import r1track
import shared_prompt
import train_grpo
import tracking_pairs
import training
from prompts import END_OF_TURN, collate, vision_token_ids

GROUP = 3


def grpo_namespace(repeat, **overrides):
    values = dict(group_size=GROUP, repeat_prompts=repeat, temperature=1.0, top_p=1.0, clip=0.2,
                  loss_agg="token-mean", kl_coef=0.05, grad_clip=1e9, rollout_batch=64, fsdp=False, seed=0,
                  think=False, wording="seed", max_new_tokens=10, gradient_checkpointing=False)
    return argparse.Namespace(**{**values, **overrides})


def questions(processor, pairs16, count, think, memory=False):
    """(pairs, their prompts); with `memory`, triples: each pair's template, mirrored, as its
    memory crop (a third image of the same size, its box mirrored with it)."""
    pairs = [data.open_pairs(str(pairs16), 4 * processor.base.token_side).load(i) for i in range(count)]
    if memory:
        side = pairs[0].template.width
        pairs = [p._replace(memory=p.template.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                            memory_box_xyxy=[side - p.template_box_xyxy[2], p.template_box_xyxy[1],
                                             side - p.template_box_xyxy[0], p.template_box_xyxy[3]]) for p in pairs]
    return pairs, [tracking_pairs.pair_inputs(processor, p, think=think, return_tensors=False) for p in pairs]


def test_sampling_scores_are_those_of_transformers_processors():
    """generate samples from scores its processors made: suppressed tokens, then temperature, then
    top-p. The shared rollout samples from the same scores."""
    from transformers import (
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9), (1.3, 0.5)):
        processors = [SuppressTokensLogitsProcessor([3, 7]), TemperatureLogitsWarper(temperature)]
        if top_p < 1:
            processors.append(TopPLogitsWarper(top_p))
        expected = logits.clone()
        for processor in processors:
            expected = processor(torch.zeros(6, 1, dtype=torch.long), expected)
        ours = shared_prompt.sampling_scores(logits, [3, 7], temperature, top_p)
        assert torch.equal(ours.isinf(), expected.isinf())
        assert torch.allclose(ours.softmax(-1), expected.softmax(-1), atol=1e-7)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("think", [False, True])
def test_greedy_rollout_answers_equal_generate_on_repeated_prompts(sft_run_of, pairs16, think, base):
    """The prompt prefilled once, its cache repeated G times, the answers decoded at the
    positions a full-row forward gives them: the greedy answers of `generate` over G copies."""
    model, processor = r1track.load_model(str(sft_run_of(base)), device="cpu")
    pairs, _ = questions(processor, pairs16, 4, think)
    dist = training.Dist("cpu")
    found = {}
    for repeat in (True, False):
        args = grpo_namespace(repeat, temperature=0, think=think, max_new_tokens=24 if think else 16,
                              rollout_batch=2 * GROUP)  # two calls of two questions: left padding differs
        _, answers, texts, lengths = train_grpo.rollout(model, processor, pairs, args, dist, step=1)
        found[repeat] = answers, texts, lengths
    assert found[False] == found[True]
    answers, texts, _ = found[False]
    assert len(answers) == 4 * GROUP and any("[" in text for text in texts)  # boxes, not noise


def trained_answers(sft_run, prompts):
    """Answers to the prompts sampled by the trained model (the shared rollout), of several
    lengths: some ended with the end token, some cut at the token limit."""
    model, processor = r1track.load_model(str(sft_run), device="cpu")
    end = processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)
    limit = 10 if processor.base.boxes == "pixels" else 16  # thousandths take more digits than 112 px
    for seed in range(1, 11):  # the first seed whose answers have both kinds of ends
        torch.manual_seed(seed)
        with torch.no_grad():
            answers = shared_prompt.sample_answers(model, collate(prompts, processor.tokenizer.pad_token_id), GROUP,
                                                   limit, (end, processor.tokenizer.pad_token_id),
                                                   vision_token_ids(processor.tokenizer), temperature=1.0)
        lengths = {len(a) for a in answers}
        if len(lengths) > 1 and any(a[-1] == end for a in answers) and any(a[-1] != end for a in answers):
            return answers
    raise AssertionError("no seed gave answers both ended and cut at the token limit")


class RecordingOptimizer:
    """An optimizer that changes nothing and keeps each step's gradients (ppo_updates' steps)."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def step(self):
        self.steps.append({name: p.grad.detach().clone() for name, p in self.model.named_parameters()
                           if p.requires_grad and p.grad is not None})

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def policy_and_reference(sft_run, kind):
    """(policy, reference(policy) context, processor): full fine-tuning with a frozen copy of an
    earlier checkpoint as the reference; or a LoRA adapter (random, so that it changes the
    answers) with the adapter switched off as the reference."""
    model, processor = r1track.load_model(str(sft_run), device="cpu")
    if kind == "full":
        frozen, _ = r1track.load_model(str(sft_run / "checkpoint-60"), device="cpu")
        frozen.requires_grad_(False)
        return model, (lambda policy: _same(frozen)), processor
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    policy = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                              init_lora_weights=False))
    return policy, train_grpo.adapter_off, processor


class _same:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        return self.model

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("base, kind, think, memory", [
    *[("qwen2_5_vl", kind, think, False) for kind in ("full", "lora") for think in (False, True)],
    ("qwen3_vl", "full", False, False), ("qwen3_vl", "lora", False, False), ("qwen3_vl", "lora", True, False),
    # Qwen3.5: the prompt's cache (keys, values and linear-attention states) repeated, gradients through it
    ("qwen3_5", "full", False, False), ("qwen3_5", "lora", True, False),
    # three-image questions (a memory frame)
    ("qwen2_5_vl", "full", False, True),
])
def test_shared_prompt_scores_and_gradients_equal_the_repeated_prompts(sft_run_of, pairs16, base, kind, think, memory):
    """For the same sampled answers: the sampling policy's and the reference's log-probabilities
    within 1e-5, and each update's loss and every trainable weight's gradient within 1e-5
    relative, with gradient accumulation (two micro-batches of whole groups in one update)."""
    sft_run = sft_run_of(base)
    policy, reference, processor = policy_and_reference(sft_run, kind)
    pairs, prompts = questions(processor, pairs16, 3, think, memory)
    answers = trained_answers(sft_run, prompts)
    pad, dist = processor.tokenizer.pad_token_id, training.Dist("cpu")
    torch.manual_seed(2)
    advantages = torch.randn(len(answers))
    updates = [[[2, 0], [1]]]  # one update, two micro-batches: questions 2 and 0, then question 1
    found = {}
    for repeat in (True, False):
        args = grpo_namespace(repeat, think=think)
        batches = train_grpo.sample_batches(policy, prompts, answers, updates, pad, args)
        old, ref, sampling = train_grpo.sampling_logprobs(policy, reference, batches, updates, processor, args, dist)
        # the policy has moved since sampling (a later update): ratios away from 1, clipping at work
        noise = torch.Generator().manual_seed(3)
        old = {key: value + 0.2 * torch.randn(value.shape, generator=noise) for key, value in old.items()}
        optimizer = RecordingOptimizer(policy)
        trained = train_grpo.ppo_updates(policy, optimizer, batches, updates, old, ref, advantages, processor, args,
                                         dist)
        found[repeat] = batches, old, ref, sampling, trained, optimizer.steps
    repeated, shared = found[True], found[False]
    assert shared[0].keys() == repeated[0].keys()
    for key in shared[0]:
        mask = shared[0][key][2]
        assert torch.equal(mask, repeated[0][key][2])
        for logprobs in (1, 2):  # the sampling policy's (before the noise), the reference's
            assert ((shared[logprobs][key] - repeated[logprobs][key]).abs() * mask).max() < 1e-5
    assert shared[3]["kl"] > 0 and shared[3]["kl"] == pytest.approx(repeated[3]["kl"], rel=1e-5)
    assert shared[4]["clip_frac"] > 0 and shared[4]["clip_frac"] == repeated[4]["clip_frac"]
    assert shared[4]["loss"] == pytest.approx(repeated[4]["loss"], rel=1e-5)
    (shared_grads,), (repeated_grads,) = shared[5], repeated[5]
    assert shared_grads.keys() == repeated_grads.keys() and len(shared_grads) > 10
    # Qwen3.5's decays (A_log, dt_bias, in_proj_a) get gradients of ill-conditioned sums in the
    # chunked gated delta rule: in float64, its layer 0's A_log gradient moves by 3% when the loss
    # is scaled by 3 rather than 2. Those are held to 1e-5 of the whole gradient's norm.
    whole = torch.cat([grad.flatten() for grad in repeated_grads.values()]).norm()
    for name, grad in repeated_grads.items():
        assert grad.norm() > 0, name
        decay = any(part in name for part in ("linear_attn.A_log", "linear_attn.dt_bias", "linear_attn.in_proj_a"))
        assert (shared_grads[name] - grad).norm() <= 1e-5 * (whole if decay else grad.norm()), name


def image_digests(pixel_values, grid_thw):
    sizes = grid_thw.prod(-1).tolist()
    return [hashlib.sha1(image.detach().float().numpy().tobytes()).hexdigest()
            for image in pixel_values.split(sizes)]


def counted_step(monkeypatch, sft_warm, pairs16, out, *extra):
    """One GRPO step of 4 questions x 5 answers, with the images each vision-tower call sees
    and the tokens of the language model's passes over more than one position (prefill and
    training passes; a decoding step feeds one token a row) counted by forward hooks."""
    seen = {"vision_calls": [], "tokens": 0}
    real = training.build_model

    def build_and_count(*args, **kwargs):
        model, processor = real(*args, **kwargs)
        qwen = model.get_base_model() if hasattr(model, "get_base_model") else model

        def vision(module, args, kwargs):
            pixels = args[0] if args else kwargs["hidden_states"]
            grid = args[1] if len(args) > 1 else kwargs["grid_thw"]
            seen["vision_calls"].append(image_digests(pixels, grid))

        def language(module, args, kwargs):
            embeds = kwargs.get("inputs_embeds")
            if embeds is not None and embeds.shape[1] > 1:
                seen["tokens"] += embeds.shape[0] * embeds.shape[1]

        qwen.model.visual.register_forward_pre_hook(vision, with_kwargs=True)
        qwen.model.language_model.register_forward_pre_hook(language, with_kwargs=True)
        return model, processor

    monkeypatch.setattr(training, "build_model", build_and_count)
    result = run_main("train_grpo.py", "--init", sft_warm, "--data", pairs16, "--out", out, "--crop-size", "112",
                      "--no-gradient-checkpointing", "--prompts-per-step", "4", "--group-size", "5",
                      "--updates-per-batch", "2", "--batch-size", "10", "--max-steps", "1", "--max-new-tokens", "16",
                      "--no-save", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.setattr(training, "build_model", real)
    return seen


def test_no_vision_call_sees_a_question_twice_and_the_language_model_does_half_the_work(
        sft_warm, pairs16, tmp_path, monkeypatch):
    repeated = counted_step(monkeypatch, sft_warm, pairs16, tmp_path / "repeated", "--repeat-prompts")
    shared = counted_step(monkeypatch, sft_warm, pairs16, tmp_path / "shared")
    # the rollout, the sampling policy's and the reference's log-probabilities, the update
    assert sum(map(len, repeated["vision_calls"])) == 4 * 4 * 5 * 2  # 160 images: each crop 5 times a pass
    assert any(len(set(call)) < len(call) for call in repeated["vision_calls"])
    assert sum(map(len, shared["vision_calls"])) == 4 * 4 * 2  # 32: each question's 2 crops once a pass
    assert all(len(set(call)) == len(call) for call in shared["vision_calls"])
    assert shared["tokens"] <= repeated["tokens"] / 2, (shared["tokens"], repeated["tokens"])
    print(f"language-model tokens in prefill and training passes: {repeated['tokens']} repeated, "
          f"{shared['tokens']} shared")


def test_eager_attention_shares_the_prompt_with_an_additive_mask(sft_warm, pairs16):
    """Eager attention adds its mask to the scores: the block mask goes in as 0 / -inf-like
    floats, and the scores are those of sdpa on repeated prompts."""
    processor = r1track.load_model(str(sft_warm), device="cpu")[1]
    _, prompts = questions(processor, pairs16, 2, think=False)
    answers = trained_answers(sft_warm, prompts)
    pad, suppressed = processor.tokenizer.pad_token_id, vision_token_ids(processor.tokenizer)
    scores = {}
    for kernel, repeat in (("sdpa", True), ("eager", False)):
        model, _ = r1track.load_model(str(sft_warm), device="cpu", attn=kernel)
        assert train_grpo.attention_kernel(model) == kernel
        inputs, answer, mask = train_grpo.sample_batch(model, prompts, answers, pad, grpo_namespace(repeat))
        with torch.no_grad():
            scores[kernel] = train_grpo.token_logprobs(model, inputs, answer, 1.0, suppressed)[0] * mask
    assert inputs["attention_mask"].dtype == torch.float32
    assert (scores["eager"] - scores["sdpa"]).abs().max() < 1e-5


def test_grpo_asks_for_a_kernel_that_takes_the_block_mask(sft_warm):
    """sdpa by default (flash-attention, the tracking default on a GPU, takes no block mask);
    asked for flash-attention, the training passes fall back to a copy of the prompt per answer."""
    parser = train_grpo.build_parser()

    def checked(*flags):
        args = parser.parse_args(["--init", str(sft_warm), *flags])
        train_grpo.check_args(parser, args)
        return args

    assert checked().attn == "sdpa"
    assert checked("--repeat-prompts").attn is None  # the loader's own default, as before
    model, _ = r1track.load_model(str(sft_warm), device="cpu")
    assert train_grpo.shares_prompts(model, checked())
    assert not train_grpo.shares_prompts(model, checked("--repeat-prompts"))
    flash = copy.copy(model.config)
    flash._attn_implementation = "flash_attention_2"
    assert not train_grpo.shares_prompts(argparse.Namespace(config=flash), checked("--attn", "flash_attention_2"))


@pytest.mark.benchmark  # a development tool's run (half a minute): on demand, not in the suite
def test_step_cost_bench_smoke(tmp_path):
    """tools/bench_grpo.py --step-cost on the tiny model: both layouts run as train_grpo.py,
    each stage timed within its step, the shared one doing fewer FLOPs; the report carries the
    prompt's share of a row."""
    import json

    report = tmp_path / "cost.json"
    result = run_main("tools/bench_grpo.py", "--step-cost", "--architecture", "tiny", "--crop-size", "112",
                      "--questions", "2", "--updates", "1", "--steps", "2", "--repeats", "1", "--device", "cpu",
                      "--json", report)
    assert result.returncode == 0, result.stderr[-3000:]
    cost = json.loads(report.read_text())["step_cost"]
    for mode in ("repeated", "shared"):
        stages = cost[mode]
        assert stages["rollout_s"] + stages["logprobs_s"] + stages["update_s"] <= stages["step_s"]
        assert stages["peak_memory_gib"] > 0
    assert cost["shared"]["flops"] < cost["repeated"]["flops"] / 2
    assert cost["flop_ratio"] == pytest.approx(cost["repeated"]["flops"] / cost["shared"]["flops"])
    shape = cost["shape"]
    assert shape["prompt_share"] == pytest.approx(shape["prompt_tokens"] / (shape["prompt_tokens"] + 17))
    assert "speed-up" in result.stdout
