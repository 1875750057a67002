"""A prompt's cache kept, cut back, stacked, repeated and rolled back: the one place that
reaches into transformers' cache layers (a transformers upgrade is checked here).

A cache layer is one of two kinds. Attention layers keep keys and values per token: cut back
by slicing, stacked and repeated along the batch, and a token the model should not have seen
is masked out. Linear-attention layers (Qwen3.5's Gated DeltaNet) keep a state per sequence: a
short window of the convolution's inputs and a recurrent matrix, where every token fed is
folded in for good. Such a layer is cut back by restoring the state saved at that point
(`cut_back`, `restore_states`: a row whose drafts were rejected goes back to before the pass
and is fed its kept tokens again), and a pass whose rows end at different places (padding)
records the state after each of its last tokens (transformers' `activate_past_recording`) so
that each row keeps the state after its own last real token (`keep_first`).

fast_decoder.py (tracking) and shared_prompt.py (GRPO) use these; a base whose language model
has no linear-attention layer gets exactly the cache it got before.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer, LinearAttentionCacheLayerMixin, LinearAttentionLayer


def has_states(config) -> bool:
    """Whether a model's language model has linear-attention (state) layers."""
    return "linear_attention" in (getattr(config.get_text_config(), "layer_types", None) or ())


def new_cache(config) -> DynamicCache:
    """An empty cache for a model: one layer of each layer's kind where the model mixes kinds."""
    return DynamicCache(config=config) if has_states(config) else DynamicCache()


def is_state(layer) -> bool:
    return isinstance(layer, LinearAttentionCacheLayerMixin)


def snapshot(cache) -> list[tuple]:
    """Each layer's content: (keys, values) of an attention layer, (conv window, recurrent
    state) of a linear-attention one (copies: the cache writes over its states in place)."""
    return [(layer.conv_states[0].clone(), layer.recurrent_states[0].clone()) if is_state(layer)
            else (layer.keys, layer.values) for layer in cache.layers]


def stacked(config, snapshots: list[list[tuple]]) -> DynamicCache:
    """One cache whose rows are the given snapshots (one row each, of equal lengths)."""
    cache = new_cache(config)
    for index, layer in enumerate(zip(*snapshots)):
        first, second = torch.cat([a for a, _ in layer]), torch.cat([b for _, b in layer])
        if index < len(cache.layers) and is_state(cache.layers[index]):
            fill_state(cache.layers[index], first, second)
        else:
            cache.update(first, second, index)
    return cache


def fill_state(layer, conv, recurrent) -> None:
    """A linear-attention layer holding (conv window, recurrent state), as after a prefill
    (the layer copies both into tensors of its own)."""
    layer.update_conv_state(conv, conv_kernel_size=conv.shape[-1])
    layer.update_recurrent_state(recurrent)


def cut_back(cache, prefix: int, snapshots: list[tuple]) -> None:
    """The cache as it was after the first `prefix` tokens, whose snapshot (of all rows, as
    `stacked` made them) is given: keys and values sliced, states restored."""
    for layer, (first, second) in zip(cache.layers, snapshots):
        if is_state(layer):
            layer.record_past = False
            layer.conv_states[0], layer.recurrent_states[0] = first.clone(), second.clone()
        else:
            layer.keys, layer.values = layer.keys[..., :prefix, :], layer.values[..., :prefix, :]


def record(cache, tokens: int) -> None:
    """Make the next pass keep its state layers' states after each of its last `tokens`
    tokens (and the convolution's whole input), so that keep_first can take tokens back."""
    for layer in cache.layers:
        if is_state(layer):
            layer.activate_past_recording(recurrent_states_to_keep=tokens)


def keep_first(cache, fed: int, kept: list[int]) -> None:
    """After a recorded pass that fed `fed` tokens to each row, each state layer as if row r
    had been fed only its first kept[r] (at least fed - tokens + 1, `tokens` as recorded).
    Keys and values stay: the tokens taken back are masked out by the caller."""
    for layer in cache.layers:
        if not is_state(layer):
            continue
        before, *between = layer.recurrent_states_history[0]
        # after_n[i]: the state after fed - len(after_n) + 1 + i tokens of this pass
        after_n = torch.stack([*between, layer.recurrent_states[0]])
        first = fed - len(after_n) + 1
        rows = torch.arange(len(kept))
        index = torch.tensor(kept) - first
        state = after_n[index.clamp(min=0), rows]
        if (index < 0).any():  # a row that keeps none of this pass's tokens
            state[index < 0] = before[index < 0]
        window = layer.conv_states[0]                    # [B, C, K + fed]: the K before, then those fed
        size = layer.conv_kernel_size[0]
        columns = (torch.tensor(kept)[:, None] + torch.arange(size)).to(window.device)   # [B, K]
        conv = window.gather(2, columns[:, None, :].expand(-1, window.shape[1], -1))
        layer.record_past = False
        layer.recurrent_states_history[0] = []
        layer.conv_states[0], layer.recurrent_states[0] = conv.contiguous(), state.contiguous()


def restore_states(cache, saved: list[tuple], rows: list[int]) -> None:
    """The given rows of every state layer as in `saved` (a snapshot); keys and values stay
    (the caller masks the tokens those rows should not see)."""
    for layer, (conv, recurrent) in zip(cache.layers, saved):
        if is_state(layer):
            layer.conv_states[0][rows] = conv[rows]
            layer.recurrent_states[0][rows] = recurrent[rows]


def repeat_rows(cache, times: int) -> None:
    """Every row `times` times in a row (Cache.batch_repeat_interleave, state layers too)."""
    for layer in cache.layers:
        if is_state(layer):
            layer.conv_states[0] = layer.conv_states[0].repeat_interleave(times, 0)
            layer.recurrent_states[0] = layer.recurrent_states[0].repeat_interleave(times, 0)
        else:
            layer.batch_repeat_interleave(times)


class _ReadOnlyStates(LinearAttentionLayer):
    """A state layer that hands each pass a new tensor instead of writing over the one it read:
    a pass with gradients reads the state in its backward pass (transformers' layers write
    their states in place, for CUDA graphs)."""

    def __init__(self, conv, recurrent):
        super().__init__()
        self.record_past, self.recurrent_states_to_keep = True, 0  # every conv update through update_conv_state
        self.lazy_initialization(conv_states=conv, recurrent_states=recurrent, conv_kernel_size=conv.shape[-1])
        self.conv_states[0], self.recurrent_states[0] = conv, recurrent
        self.has_previous_state[0] = True

    def update_conv_state(self, conv_states, state_idx=0, **kwargs):
        full = torch.cat([self.conv_states[state_idx], conv_states], -1)
        self.conv_states[state_idx] = full[..., -self.conv_kernel_size[state_idx]:]
        return full

    def update_recurrent_state(self, recurrent_states, state_idx=0, **kwargs):
        self.recurrent_states[state_idx] = recurrent_states
        return recurrent_states


def repeated_for_gradients(cache, times: int) -> Cache:
    """A new cache of every row of `cache` `times` times in a row, through which gradients reach
    the pass that made it (the prompt's forward of a GRPO training pass)."""
    layers = []
    for layer in cache.layers:
        if is_state(layer):
            layers.append(_ReadOnlyStates(layer.conv_states[0].repeat_interleave(times, 0),
                                          layer.recurrent_states[0].repeat_interleave(times, 0)))
        else:
            kept = DynamicLayer()
            kept.update(layer.keys.repeat_interleave(times, 0), layer.values.repeat_interleave(times, 0))
            layers.append(kept)
    return Cache(layers=layers)
