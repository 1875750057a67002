"""The synthetic world: a tiny model of each base (Qwen2.5-VL, Qwen3-VL, Qwen3.5) with its own small
tokenizer, the published models' shapes with random weights, and synthetic clips in the
GOT-10k layout.

The demo model, the benchmarks and the tests live here, not the product: everything a
real user runs works the same with the published models and the real GOT-10k, and is
proven with these on a machine with no GPU and no downloads. A tiny model is its base's
real model class, saved and loaded through the same `from_pretrained` path a hub model takes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

import bases
from prompts import END_OF_TURN, QUESTIONS, SYSTEM_PROMPT, THINK_INSTRUCTION, WORDINGS, format_box_xyxy
from settings import TrackSettings, default_settings

# -----------------------------------------------------------------------------
# A tiny model of each base that runs anywhere: the real model class and loading path,
# random weights, a small tokenizer with Qwen's special tokens, digit-by-digit numbers and
# the base's chat template.


QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]


def _tokenizer_corpus() -> list[str]:
    rng = np.random.default_rng(0)
    texts = [SYSTEM_PROMPT, "user", "assistant", "system", THINK_INSTRUCTION,
             "<think> The target moved to the right. </think> <answer> [1,2,3,4] </answer>"]
    for wording in WORDINGS:
        for _ in range(20):
            box = rng.integers(0, 336, size=4)
            texts.append(QUESTIONS[wording].format(box=format_box_xyxy(box)))
            texts.append(format_box_xyxy(box) + " " + json.dumps([int(v) for v in box]))
    return texts


def build_tiny_tokenizer(vocab_size=400, base=bases.QWEN2_5_VL):
    """A byte-level BPE tokenizer shaped like Qwen2's (same pre-tokenizer: digits one by
    one) with a small vocabulary learnt from this project's prompts, and `base`'s chat template."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_tokenizer_corpus(), trainer)
    learnt = json.loads(bpe.to_str())["model"]
    vocab = dict(learnt["vocab"])
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[tuple(m) for m in learnt["merges"]],
                               eos_token=END_OF_TURN, pad_token="<|endoftext|>", unk_token=None)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = base.chat_template
    return tokenizer


# The published architectures (their config.json on the hub), for timing random weights of the
# real size: text and vision shapes, each base's builder adds what all its models share.
_QWEN3_VL_TEXT = {"num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 262144, "rope_theta": 5000000.0,
                  "mrope_section": [24, 20, 20]}
_QWEN3_VL_SMALL_VISION = {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
                          "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17]}  # 2B and 4B


SHAPES = {
    "qwen2_5_vl-3b": {  # Qwen2.5-VL-3B-Instruct
        "text": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                 "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000,
                 "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                   "fullatt_block_indexes": [7, 15, 23, 31]},
    },
    "qwen3_vl-2b": {  # Qwen3-VL-2B-Instruct
        "text": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                 "num_attention_heads": 16, **_QWEN3_VL_TEXT},
        "vision": _QWEN3_VL_SMALL_VISION,
    },
    "qwen3_vl-4b": {  # Qwen3-VL-4B-Instruct
        "text": {"vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                 "num_attention_heads": 32, **_QWEN3_VL_TEXT},
        "vision": _QWEN3_VL_SMALL_VISION,
    },
    "qwen3_5-0.8b": {  # Qwen3.5-0.8B: its language model as published; its vision tower's depth and
        # width as published, its heads (64 wide) and MLP (4x) as its larger siblings'
        "text": {"vocab_size": 248320, "hidden_size": 1024, "intermediate_size": 3584, "num_hidden_layers": 24,
                 "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256,
                 "max_position_embeddings": 262144, "rope_theta": 10000000.0, "mrope_section": [11, 11, 10],
                 "linear_num_key_heads": 16, "linear_num_value_heads": 16, "linear_key_head_dim": 128,
                 "linear_value_head_dim": 128},
        "vision": {"depth": 12, "hidden_size": 768, "intermediate_size": 3072, "num_heads": 12},
    },
}


def tiny_shape(vocab_size: int, hidden_size=128, num_layers=4, vision_hidden_size=64, vision_depth=2) -> dict:
    """About a million weights, in the published models' proportions where they matter
    (M-RoPE sections [16, 24, 24] of a 64-wide half head in the 3B; 2 key/value heads)."""
    heads = 4
    third = hidden_size // heads // 2 // 8
    return {
        "text": {"vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": hidden_size * 2,
                 "num_hidden_layers": num_layers, "num_attention_heads": heads, "num_key_value_heads": 2,
                 "max_position_embeddings": 4096, "rope_theta": 1000000.0,
                 "mrope_section": [2 * third, 3 * third, 3 * third]},
        "vision": {"depth": vision_depth, "hidden_size": vision_hidden_size, "intermediate_size": vision_hidden_size * 2,
                   "num_heads": 4},
    }


def _token_ids(tokenizer) -> dict:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def _text_config(tokenizer, shape: dict) -> dict:
    text = {key: value for key, value in shape["text"].items() if key not in ("mrope_section", "rope_theta")}
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    return {**text, "rms_norm_eps": 1e-6, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"]}


def qwen2_5_vl_config(tokenizer, shape: dict):
    """A Qwen2_5_VLConfig of `shape` (tiny_shape or SHAPES): what every Qwen2.5-VL shares, and
    this tokenizer's special token ids."""
    from transformers import Qwen2_5_VLConfig

    vision = {"fullatt_block_indexes": [shape["vision"]["depth"] - 1], **shape["vision"]}
    return Qwen2_5_VLConfig(
        text_config={**_text_config(tokenizer, shape), "rope_parameters": {
            "rope_type": "default", "rope_theta": shape["text"]["rope_theta"],
            "mrope_section": shape["text"]["mrope_section"]}},
        vision_config={**vision, "out_hidden_size": shape["text"]["hidden_size"],
                       "patch_size": bases.QWEN2_5_VL.patch_size, "spatial_merge_size": bases.QWEN2_5_VL.merge_size,
                       "temporal_patch_size": 2, "window_size": 112},
        tie_word_embeddings=True, **_token_ids(tokenizer),
    )


def qwen3_vl_config(tokenizer, shape: dict):
    """A Qwen3VLConfig of `shape` (tiny_shape or SHAPES): what every Qwen3-VL shares
    (interleaved M-RoPE, 16-px patches, DeepStack from the first vision blocks unless the
    shape says), and this tokenizer's special token ids."""
    from transformers import Qwen3VLConfig

    text, vision = shape["text"], shape["vision"]
    vision = {"num_position_embeddings": 256, "deepstack_visual_indexes": list(range(min(vision["depth"], 3))),
              **{key: value for key, value in vision.items() if key != "fullatt_block_indexes"}}
    return Qwen3VLConfig(
        text_config={"head_dim": text["hidden_size"] // text["num_attention_heads"], **_text_config(tokenizer, shape),
                     "rope_parameters": {"rope_type": "default", "rope_theta": text["rope_theta"],
                                         "mrope_section": text["mrope_section"], "mrope_interleaved": True}},
        vision_config={**vision, "out_hidden_size": text["hidden_size"], "patch_size": bases.QWEN3_VL.patch_size,
                       "spatial_merge_size": bases.QWEN3_VL.merge_size, "temporal_patch_size": 2},
        tie_word_embeddings=True, **_token_ids(tokenizer),
    )


def qwen3_5_config(tokenizer, shape: dict):
    """A Qwen3_5Config of `shape` (tiny_shape or SHAPES): what every Qwen3.5 shares (three
    Gated DeltaNet layers to one of full attention, rope on a quarter of each head, interleaved
    M-RoPE, Qwen3-VL's vision tower without DeepStack). A tiny shape's linear-attention heads:
    2 keys and 4 values of 32."""
    from transformers import Qwen3_5Config

    text, vision = shape["text"], shape["vision"]
    head_dim = text.get("head_dim", text["hidden_size"] // text["num_attention_heads"])
    rotary_half = head_dim // 8  # a quarter of the head rotates; M-RoPE splits its half
    section = text["mrope_section"] if "linear_num_key_heads" in text else \
        [rotary_half - 2 * (rotary_half // 4), rotary_half // 4, rotary_half // 4]
    linear = {"linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 32,
              "linear_value_head_dim": 32, "linear_conv_kernel_dim": 4}
    linear.update({key: value for key, value in text.items() if key.startswith("linear_")})
    vision = {"num_position_embeddings": 256,
              **{key: value for key, value in vision.items() if key not in ("fullatt_block_indexes",
                                                                             "deepstack_visual_indexes")}}
    return Qwen3_5Config(
        text_config={"head_dim": head_dim, **_text_config(tokenizer, shape), **linear,
                     "rope_parameters": {"rope_type": "default", "rope_theta": text["rope_theta"],
                                         "partial_rotary_factor": 0.25, "mrope_section": section,
                                         "mrope_interleaved": True}},
        vision_config={**vision, "out_hidden_size": text["hidden_size"], "patch_size": bases.QWEN3_5.patch_size,
                       "spatial_merge_size": bases.QWEN3_5.merge_size, "temporal_patch_size": 2},
        tie_word_embeddings=True, **_token_ids(tokenizer),
    )


MODEL_CONFIGS = {"qwen2_5_vl": qwen2_5_vl_config, "qwen3_vl": qwen3_vl_config, "qwen3_5": qwen3_5_config}


def random_model(base: bases.Base, tokenizer, shape):
    """A randomly initialised model of `base` and `shape` (a SHAPES-like dict, or a config of
    architecture_config's), on the current default device."""
    config = shape if not isinstance(shape, dict) else MODEL_CONFIGS[base.model_type](tokenizer, shape)
    return base.transformers_class()(config)


def architecture_config(name_or_path: str, tokenizer):
    """The config.json of a hub model or folder (only that file is read) with `tokenizer`'s
    special token ids: random weights of a published model that SHAPES does not hold (a
    benchmark's `--architecture Qwen/Qwen3.5-2B`). Its base is its model_type's."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path)
    bases.named(config.model_type)  # a family the project knows, or one line saying which it does
    for key, value in _token_ids(tokenizer).items():
        setattr(config, key, value)
    text = config.get_text_config()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    text.bos_token_id, text.eos_token_id, text.pad_token_id = ids["<|endoftext|>"], ids["<|im_end|>"], ids["<|endoftext|>"]
    return config


def save_tiny_model(path, seed=0, hidden_size=128, num_layers=4, vision_hidden_size=64,
                    vision_depth=2, settings: TrackSettings | None = None, shape=None,
                    dtype=None, device="cpu", base=bases.QWEN2_5_VL) -> Path:
    """Write a randomly initialised model of `base` (about a million parameters), its
    tokenizer, image-processor config and tracking settings (the base's defaults with crops of
    four image tokens a side: 112 px for Qwen2.5-VL, 128 for Qwen3-VL and Qwen3.5) to `path`.
    shape: another architecture instead (e.g. SHAPES["qwen2_5_vl-3b"], or the name of a hub
    model or folder whose config.json gives it: architecture_config), made on `device` and
    saved in `dtype` (default float32)."""
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(path)
    tokenizer = build_tiny_tokenizer(base=base)
    if isinstance(shape, (str, Path)):
        shape = architecture_config(str(shape), tokenizer)
    shape = shape or tiny_shape(len(tokenizer), hidden_size, num_layers, vision_hidden_size, vision_depth)
    torch.manual_seed(seed)
    with torch.device(device):
        model = random_model(base, tokenizer, shape).to(dtype or torch.float32)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    side = base.token_side
    Qwen2VLImageProcessorPil(
        min_pixels=4 * side * side, max_pixels=side * side * 16384, patch_size=base.patch_size, temporal_patch_size=2,
        merge_size=base.merge_size, image_mean=list(base.image_mean), image_std=list(base.image_std),
    ).save_pretrained(path)
    (settings or dataclasses.replace(default_settings(base), crop_size=4 * side)).save(path)
    return path


# -----------------------------------------------------------------------------
# Synthetic clips in the GOT-10k layout


def _smooth_noise(rng, width, height, cells, channels=3) -> np.ndarray:
    grid = rng.uniform(0, 255, size=(cells[1], cells[0], channels)).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), dtype=np.float32)


def saturated_colour(rng) -> np.ndarray:
    """A random fully saturated colour (a random hue)."""
    import colorsys

    return np.array(colorsys.hsv_to_rgb(rng.uniform(), 1.0, rng.uniform(0.7, 1.0))) * 255


def patterned_patch(rng, colours) -> np.ndarray:
    """A 32x32 two-colour pattern (stripes or checks) that identifies an object."""
    yy, xx = np.mgrid[0:32, 0:32]
    period = int(rng.integers(4, 11))
    if rng.random() < 0.5:
        mask = ((xx // period + yy // period) % 2).astype(bool)
    else:
        mask = (((xx + yy) if rng.random() < 0.5 else xx) // period % 2).astype(bool)
    return np.where(mask[..., None], colours[0], colours[1]).astype(np.float32)


def paste(frame, patch, box_xywh):
    x, y, w, h = box_xywh
    x1, y1, x2, y2 = int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return
    resized = np.asarray(Image.fromarray(patch.astype(np.uint8)).resize((x2 - x1, y2 - y1), Image.NEAREST))
    H, W = frame.shape[:2]
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
    if cx2 > cx1 and cy2 > cy1:
        frame[cy1:cy2, cx1:cx2] = resized[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]


def _cover_level(visible_fraction: float) -> int:
    """GOT-10k's cover label: 0 absent, 1-7 for visible ratios in steps of 15%, 8 fully visible."""
    if visible_fraction <= 0:
        return 0
    if visible_fraction >= 1:
        return 8
    return min(7, 1 + int(visible_fraction / 0.15))


def random_walk(rng, frames, start, low, high, speed):
    position, velocity, path = np.array(start, float), rng.normal(0, speed, 2), []
    for _ in range(frames):
        velocity = 0.8 * velocity + rng.normal(0, speed * 0.5, 2)
        position = position + velocity
        for axis in range(2):  # bounce off the walls of the allowed region
            if position[axis] < low[axis] or position[axis] > high[axis]:
                velocity[axis] = -velocity[axis]
                position[axis] = min(max(position[axis], low[axis]), high[axis])
        path.append(position.copy())
    return np.array(path)


SYNTHETIC_STYLES = ("clutter", "plain", "changing")


def make_synthetic_got10k(root, split="val", sequences=8, frames=30, size=(320, 240), seed=0,
                          distractors=None, style="clutter", speed=(1.0, 4.0), hiding=None) -> Path:
    """Write a small dataset in the official GOT-10k layout under `root/split`.

    style="clutter": each sequence has a patterned target that moves and changes scale over
    a textured background, look-alike distractors (2 unless given), an occluder that
    sometimes passes over the target, and, in some sequences, frames where the target leaves
    the image or is fully hidden. style="plain": the target alone on a flat background (no
    distractors unless given, no occluder), the easy case a very small model can learn.
    style="changing": on the plain style's flat background, a target whose look drifts far
    from its first frame (its two colours and pattern fade into others, its shape stretches
    by up to 2x one way), a look-alike that keeps the target's first look (1 unless given;
    the first frame alone then points at the wrong object), and a narrow occluder that
    sometimes passes over part of the target: the world where a recent look of the target
    helps.
    speed: the range of the objects' typical speed, in pixels per frame.
    hiding: whether the occluder and the walks out of the image happen (default: in the
    clutter style only); hiding=True gives the plain style's easy target the same absences.
    Labels (cover, absence, cut_by_image) are computed from what is really drawn.
    """
    if style not in SYNTHETIC_STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(SYNTHETIC_STYLES)}")
    changing = style == "changing"
    plain = style in ("plain", "changing")  # a flat background
    hiding = style == "clutter" if hiding is None else hiding
    distractors = {"clutter": 2, "plain": 0, "changing": 1}[style] if distractors is None else distractors
    width, height = size
    split_dir = Path(root) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(sequences):
        rng = np.random.default_rng([seed, index])
        name = f"GOT-10k_{split.capitalize()}_{index + 1:06d}"
        names.append(name)
        seq_dir = split_dir / name
        seq_dir.mkdir(exist_ok=True)

        if plain:  # a grey background and targets in saturated colours: easy to tell apart
            background = np.full((height, width, 3), rng.uniform(60, 190), dtype=np.float32)
            colours = np.array([[saturated_colour(rng), saturated_colour(rng)] for _ in range(distractors + 1)])
        else:
            background = 0.7 * _smooth_noise(rng, width, height, (8, 6)) + 0.3 * _smooth_noise(rng, width, height, (40, 30))
            colours = rng.uniform(0, 255, size=(distractors + 1, 2, 3))
        patches = [patterned_patch(rng, c) for c in colours]
        base_w = rng.uniform(0.08, 0.25) * width
        base_h = min(base_w * rng.uniform(0.5, 2.0), height / 1.5)  # wide frames: the target fits in height
        scale_wave = 1 + 0.3 * np.sin(np.linspace(0, rng.uniform(1, 4), frames) + rng.uniform(0, 6))
        margin = np.array([base_w, base_h]) * 0.5
        leaves = rng.random() < 0.3 and hiding  # this target walks out of the image for a while
        low = -margin * (2.5 if leaves else 0.0)
        high = np.array([width, height]) - margin * (1.0 if not leaves else -1.5) - np.array([base_w, base_h]) * 0.3
        start = rng.uniform([base_w * 0.2, base_h * 0.2], [width - base_w * 1.2, height - base_h * 1.2])
        pace = rng.uniform(*speed)
        path = random_walk(rng, frames, start, low, high, pace)
        path[0] = start  # the first frame always shows the whole target
        others = [random_walk(rng, frames, rng.uniform([0, 0], [width * 0.8, height * 0.8]),
                               (0, 0), (width * 0.85, height * 0.85), pace) for _ in range(distractors)]
        occluder_on = rng.random() < 0.6 and (hiding or changing)
        occluder_w = rng.uniform(0.6, 1.6) * base_w
        occluder_x = np.linspace(-occluder_w, width, frames) if rng.random() < 0.5 else np.linspace(width, -occluder_w, frames)
        occluder_colour = rng.uniform(60, 200, size=3)
        if changing:
            late_patch = patterned_patch(rng, np.array([saturated_colour(rng), saturated_colour(rng)]))
            stretch_end = math.exp(rng.uniform(-math.log(2), math.log(2)))  # width over height, by the last frame
            if distractors:
                patches[1] = patches[0].copy()  # a look-alike of the target's first look
            if not hiding:  # a part of the target hidden at times, never the whole
                occluder_w = rng.uniform(0.25, 0.5) * base_w
                occluder_x = np.linspace(-occluder_w, width, frames) if occluder_x[0] < 0 else \
                    np.linspace(width, -occluder_w, frames)

        rows, cover, cut = [], [], []
        for t in range(frames):
            frame = background + rng.normal(0, 4, size=background.shape)
            for k, other in enumerate(others):
                paste(frame, patches[k + 1], (other[t][0], other[t][1], base_w, base_h))
            w, h = base_w * scale_wave[t], base_h * scale_wave[t]
            patch = patches[0]
            if changing:  # the look drifts from the first frame's to another, a little every frame
                progress = t / max(frames - 1, 1)
                patch = (1 - progress) * patches[0] + progress * late_patch
                stretch = math.sqrt(stretch_end ** progress)
                w, h = min(w * stretch, 0.9 * width), min(h / stretch, 0.9 * height)
            x, y = path[t]
            if t == 0:
                x, y = min(max(x, 0), width - w - 1), min(max(y, 0), height - h - 1)
            paste(frame, patch, (x, y, w, h))
            target = np.zeros((height, width), bool)
            target[max(int(round(y)), 0):max(int(round(y + h)), 0), max(int(round(x)), 0):max(int(round(x + w)), 0)] = True
            visible = target.copy()
            if occluder_on and t > 0:
                ox = occluder_x[t]
                x1, x2 = max(int(round(ox)), 0), max(int(round(ox + occluder_w)), 0)
                frame[:, x1:x2] = occluder_colour
                visible[:, x1:x2] = False
            full_area = max(int(round(x + w)) - int(round(x)), 1) * max(int(round(y + h)) - int(round(y)), 1)
            rows.append(f"{x:.4f},{y:.4f},{w:.4f},{h:.4f}")
            cover.append(_cover_level(visible.sum() / full_area))
            cut.append(int(x < 0 or y < 0 or x + w > width or y + h > height))
            Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(seq_dir / f"{t + 1:08d}.jpg", quality=92)

        if split == "test":  # the test split only gives the first box
            (seq_dir / "groundtruth.txt").write_text(rows[0] + "\n")
        else:
            (seq_dir / "groundtruth.txt").write_text("\n".join(rows) + "\n")
            (seq_dir / "cover.label").write_text("\n".join(map(str, cover)) + "\n")
            (seq_dir / "absence.label").write_text("\n".join(str(int(c == 0)) for c in cover) + "\n")
            (seq_dir / "cut_by_image.label").write_text("\n".join(map(str, cut)) + "\n")
        (seq_dir / "meta_info.ini").write_text(
            "[METAINFO]\nurl: synthetic\nbegin: 00:00:00\nend: 00:00:03\nanno_fps: 10Hz\n"
            "object_class: patterned box\nmotion_class: random walk\nmajor_class: synthetic\n"
            f"root_class: synthetic\nmotion_adverb: smoothly\nresolution: ({width}, {height})\n")
    (split_dir / "list.txt").write_text("\n".join(names) + "\n")
    return split_dir


def make_synthetic_video(path, frames=40, seed=0, size=(320, 240), fps=10.0, style="plain") -> Path:
    """One synthetic clip (as make_synthetic_got10k draws them) as an H.264 mp4 at `path`,
    written as track.py writes its videos; the target's true boxes (x,y,w,h a frame) beside
    it in PATH.truth.txt."""
    import shutil
    import tempfile

    from frames import read_frame
    from video_tracking import VideoWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        clips = make_synthetic_got10k(folder, "val", sequences=1, frames=frames, size=size, seed=seed, style=style)
        clip = next(p for p in clips.iterdir() if p.is_dir())
        writer = VideoWriter(path, size, fps)
        for frame in sorted(clip.glob("*.jpg")):
            writer.write(Image.fromarray(read_frame(frame)))
        writer.close()
        shutil.copy(clip / "groundtruth.txt", path.with_suffix(".truth.txt"))
    return path


def write_pairs_parquet(path, rows: int, seed=0) -> float:
    """A parquet of `rows` pairs in the EasyR1 layout whose images are 50 distinct ~2.5 KB
    JPEGs, repeated, in one row group (as pyarrow writes a table by default): R1-Track-100k's
    size in rows at a fraction of its size on disk. Returns the bytes its images would take
    held as Python bytes."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    jpegs = []
    for _ in range(50):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=40)
        jpegs.append(buffer.getvalue())
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    blobs = pa.array([jpegs[k % 50] for k in range(2 * rows)], pa.binary())
    structs = pa.StructArray.from_arrays([blobs, pa.nulls(2 * rows, pa.string())], fields=list(image))
    images = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * rows + 1, 2, dtype=np.int32)), structs)
    problem = pa.array(["<image><image>" + QUESTIONS["seed"].format(box="[10,20,30,40]")] * rows)
    pq.write_table(pa.table({"images": images, "problem": problem, "answer": pa.array(["[50,60,70,80]"] * rows)}), path)
    return sum(len(j) for j in jpegs) / len(jpegs) * 2 * rows
