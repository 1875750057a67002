"""A question's prompt once for all of its answers: GRPO's sampling and training passes.

GRPO asks every question G times. Repeating the prompt in each of its G rows makes the vision
tower encode the question's two crops G times and the language model run its prompt (~360
tokens at 336 px, against ~17 of a no-think answer) G times, in each of a step's four passes:
the rollout, the sampling policy's and the reference's log-probabilities, and the update.
Here each question's prompt goes through the model once per pass:

- Sampling (`sample_answers`): the prompts' forward once; their KV cache repeated G times
  (`Cache.batch_repeat_interleave`); the G answers decoded on it, token by token, at the 3D
  positions a full-row forward gives them.
- Log-probabilities (`grouped_inputs`): one row per question, its prompt then its G answers
  one after another; a block mask lets each answer see the prompt and itself only, and each
  answer starts at the position just after the prompt (Prefix Grouper's layout, arXiv
  2506.05433). One plain forward pass: gradients reach the prompt from all G answers, and
  gradient checkpointing and FSDP work as in any other pass.

A language model with linear-attention layers (Qwen3.5) reads the tokens before it through a
state, not through a mask: in one row the second answer would read the first. Its training
passes (`stated_inputs`) run each question's prompt once, repeat its cache (keys, values and
states) G times, and run the G answers on it, one row each; gradients reach the prompt through
the repeated cache. Its sampling repeats the cache as the others' does.
"""

from __future__ import annotations

import torch

import caches
from bases import rope_positions

# attention kernels that take the block mask; flash-attention takes no 4D mask
BLOCK_MASK_KERNELS = ("sdpa", "eager")


def next_positions(positions: torch.Tensor) -> torch.Tensor:
    """Where a left-padded prompt's first answer token goes, [B]: after its last token, a text
    token, whose three position components agree."""
    return positions[0, :, -1] + 1


# -----------------------------------------------------------------------------
# Sampling


def sample_answers(model, inputs, group_size, max_new_tokens, end_ids, suppressed, temperature=1.0, top_p=1.0,
                   keep_going=None) -> list[list[int]]:
    """G answers to each of the B prompts of `inputs` (collated, left-padded), [B*G] token lists
    in prompt order, each up to and with its first end token, or max_new_tokens long.
    Temperature 0 is greedy. keep_going(all_done) -> bool decides whether to run another
    pass (under FSDP every pass is a collective: a rank whose answers are done keeps stepping
    while any rank's are not)."""
    keep_going = keep_going or (lambda all_done: not all_done)
    positions = rope_positions(model, inputs)                                        # [3, B, L]
    out = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.cache
    caches.repeat_rows(cache, group_size)                                           # [B*G, heads, L, d]
    logits = out.logits[:, -1].repeat_interleave(group_size, 0)                      # [B*G, V]
    mask = inputs["attention_mask"].repeat_interleave(group_size, 0)                 # [B*G, L]
    position = next_positions(positions).repeat_interleave(group_size)               # [B*G]
    rows = logits.shape[0]
    answers, done = [[] for _ in range(rows)], [False] * rows
    for length in range(1, max_new_tokens + 1):
        tokens = pick_tokens(logits, suppressed, temperature, top_p)                 # [B*G]
        for row, token in enumerate(tokens.tolist()):
            if not done[row]:
                answers[row].append(token)
                done[row] = token in end_ids
        if length == max_new_tokens or not keep_going(all(done)):
            break
        mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, cache=cache, use_cache=True,
                    position_ids=position.view(1, rows, 1).expand(3, -1, -1))               # [3, B*G, 1]
        cache, logits, position = out.cache, out.logits[:, -1], position + 1
    return answers


def pick_tokens(logits, suppressed, temperature, top_p) -> torch.Tensor:
    """One token per row from logits [rows, V]: argmax at temperature 0, else a draw from
    softmax(sampling_scores(...)); the tokens generation may not emit (`suppressed`) never."""
    scores = sampling_scores(logits, suppressed, temperature, top_p)
    if temperature == 0:
        return scores.argmax(-1)
    return torch.multinomial(scores.softmax(-1), 1).squeeze(-1)


def sampling_scores(logits, suppressed, temperature, top_p) -> torch.Tensor:
    """The scores `generate` samples from, [rows, V] in float32: the suppressed tokens at -inf,
    divided by the temperature (not at 0), outside the top-p nucleus at -inf, as transformers'
    SuppressTokens, Temperature and TopP processors leave them."""
    scores = logits.float().clone()
    scores[:, suppressed] = float("-inf")
    if temperature == 0:
        return scores
    scores = scores / temperature
    if top_p < 1:
        ascending, order = scores.sort(-1)
        outside = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        outside[:, -1] = False                                                       # keep the likeliest
        scores = scores.scatter(-1, order, ascending.masked_fill(outside, float("-inf")))
    return scores


# -----------------------------------------------------------------------------
# Training passes: one row per question, its prompt then its G answers


def grouped_inputs(prompts, positions, answer, group_size, additive_mask=False) -> dict:
    """Model inputs that score k questions' G answers each with one row per question.

    prompts: k collated (left-padded) prompts, [k, L]; positions: their rope_positions;
    answer: the k*G answers' token ids, [k*G, T], question-major, right-padded.
    The row is the prompt, then each answer's first T-1 tokens (the last token is scored,
    never fed); `logits_to_keep` picks, for each answer, the position before each of its
    tokens, so the logits come out as [k, G*T, V], i.e. [k*G, T, V] answer by answer.
    The mask is [k, 1, S, S], True where a token may attend (additive_mask: 0 / -inf-like
    floats, as eager attention adds it)."""
    k, length = prompts["input_ids"].shape
    width = answer.shape[1] - 1                                                      # fed per answer
    fed = answer[:, :width].reshape(k, group_size * width)                           # [k, G*(T-1)]
    input_ids = torch.cat([prompts["input_ids"], fed], 1)                            # [k, S]
    size = input_ids.shape[1]
    after = next_positions(positions)[:, None] + torch.arange(width).repeat(group_size)  # [k, G*(T-1)]
    position_ids = torch.cat([positions, after.expand(3, -1, -1)], 2)               # [3, k, S]
    # which answer each place belongs to (-1: the prompt), and whether a prompt place is padding
    slot = torch.cat([torch.full((length,), -1), torch.arange(group_size).repeat_interleave(width)])   # [S]
    real = torch.cat([prompts["attention_mask"].bool(), torch.ones(k, group_size * width, dtype=torch.bool)], 1)
    causal = torch.ones(size, size, dtype=torch.bool).tril()                         # [S(query), S(key)]
    sees_prompt = (slot[None, :] == -1) & real[:, None, :]                           # [k, 1, S]
    own_answer = (slot[:, None] == slot[None, :]) & (slot[:, None] >= 0)             # [S, S]
    # the diagonal too: a padding place attends to itself (a row with nothing to see is NaN)
    mask = (causal & (sees_prompt | own_answer)) | torch.eye(size, dtype=torch.bool)  # [k, S, S]
    if additive_mask:
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    scored = [length - 1 if i == 0 else length + j * width + i - 1 for j in range(group_size)
              for i in range(width + 1)]                                              # [G*T]
    return {"input_ids": input_ids, "attention_mask": mask[:, None], "position_ids": position_ids,
            "pixel_values": prompts["pixel_values"], "image_grid_thw": prompts["image_grid_thw"],
            "logits_to_keep": torch.tensor(scored)}


def repeated_inputs(prompts, answer, answer_mask) -> dict:
    """The same scores with every answer in a row of its own after its whole prompt (the
    layout TRL and the other GRPO stacks use): prompts [k*G, L] collated one per answer
    row, answer and answer_mask [k*G, T]; logits come out as [k*G, T, V]."""
    size = prompts["input_ids"].shape[1] + answer.shape[1]
    return {"input_ids": torch.cat([prompts["input_ids"], answer], 1),
            "attention_mask": torch.cat([prompts["attention_mask"], answer_mask.long()], 1),
            "mm_token_type_ids": torch.cat([prompts["mm_token_type_ids"], torch.zeros_like(answer)], 1),
            "pixel_values": prompts["pixel_values"], "image_grid_thw": prompts["image_grid_thw"],
            "logits_to_keep": torch.arange(size - answer.shape[1] - 1, size - 1)}


def stated_inputs(prompts, positions, answer, group_size) -> dict:
    """The same scores for a model whose layers read the past through a state (Qwen3.5): the k
    prompts [k, L] once (their rope `positions`), then each of the k*G answers [k*G, T] in a
    row of its own on a copy of its prompt's cache (answer_logits runs both); logits come out
    as [k*G, T, V]."""
    k, length = prompts["input_ids"].shape
    width = answer.shape[1] - 1                                                      # fed per answer
    after = next_positions(positions).repeat_interleave(group_size)[:, None] + torch.arange(width)   # [k*G, T-1]
    return {**{key: prompts[key] for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                                              "image_grid_thw")},
            "position_ids": positions, "answer_ids": answer[:, :width], "answer_positions": after.expand(3, -1, -1),
            "group_size": torch.tensor(group_size)}


def answer_logits(model, inputs) -> torch.Tensor:
    """The logits that score the answers of grouped_inputs, repeated_inputs or stated_inputs
    (one forward for the first two; for the last, the prompts' forward, then the answers' on
    their prompt's cache repeated), [k*G, T, V]."""
    if "answer_ids" not in inputs:
        return model(**inputs).logits
    prompts = {key: value for key, value in inputs.items() if key not in ("answer_ids", "answer_positions",
                                                                          "group_size")}
    group_size, fed = int(inputs["group_size"]), inputs["answer_ids"]
    out = model(**prompts, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1:].repeat_interleave(group_size, 0)                      # [k*G, 1, V]
    if fed.shape[1] == 0:
        return first
    cache = caches.repeated_for_gradients(out.cache, group_size)                     # [k*G, ...]
    mask = torch.cat([prompts["attention_mask"].repeat_interleave(group_size, 0), torch.ones_like(fed)], 1)
    rest = model(input_ids=fed, attention_mask=mask, position_ids=inputs["answer_positions"], cache=cache,
                 use_cache=True).logits                                               # [k*G, T-1, V]
    return torch.cat([first, rest], 1)
