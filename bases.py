"""What differs between the model families R1-Track runs on, in the one place every path asks.

  base = bases.named(config["model_type"])     # e.g. bases.named("qwen3_vl")
  base.model_class, base.boxes, base.crop_size_problem(336), base.lora_targets(vision=True), ...

A base is a family of checkpoints that share a transformers class, an image-token grid, a box
convention, a chat template, layer names and a licence policy: Qwen2.5-VL (the published
R1-Track models), Qwen3-VL and Qwen3.5. A checkpoint says which it is by its config's
`model_type`. What the bases share but a later one may not (their 3D rope positions, the
modules FSDP shards, whether a prompt's cache is only keys and values) is asked of this module
too, so that a base that differs there is an addition here; how a cache is cut, stacked and
repeated is the fast decoder's (fast_decoder.py), how a prompt is shared by GRPO's answers
shared_prompt.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# How a box crosses the model boundary (TrackSettings.boxes): "pixels" of the crop the model
# sees (Qwen2.5-VL grounds in pixels of its input), or "relative": thousandths of the crop's
# side, 0 to 1000 (Qwen3-VL grounds so, and any resize of the image leaves such a box valid).
# Everything outside the prompt and the answer works in crop pixels.
BOX_CONVENTIONS = ("pixels", "relative")


RELATIVE_RANGE = 1000


def box_to_model(box_xyxy, crop_side: float, boxes: str) -> list[float]:
    """A box in pixels of a square crop of side `crop_side` as the model reads and writes it:
    unchanged in pixels, whole thousandths of the side (rounded) when relative."""
    if boxes == "pixels":
        return [float(v) for v in box_xyxy]
    return [float(round(float(v) * RELATIVE_RANGE / _side(crop_side))) for v in box_xyxy]


def box_from_model(box, crop_side: float, boxes: str) -> list[float]:
    """A box as the model wrote it, back in pixels of the crop of side `crop_side`."""
    if boxes == "pixels":
        return [float(v) for v in box]
    return [float(v) * _side(crop_side) / RELATIVE_RANGE for v in box]


def _side(crop_side) -> float:
    if not crop_side:
        raise ValueError("a relative box needs the side of the crop it is relative to")
    return float(crop_side)


@dataclass(frozen=True)
class Base:
    """One model family. Hub ids in `licences` carry their own licence (the family's default
    is `licence`); `example` is the hub id the help and the README name."""

    model_type: str            # config.model_type
    name: str                  # as users write it
    model_class: str           # the transformers class of its checkpoints
    patch_size: int            # pixels of a vision patch's side
    merge_size: int            # patches per side merged into one language-model token
    image_mean: tuple          # its image processor's normalisation (its checkpoints carry their own)
    image_std: tuple
    crop_size: int             # the default tracking crop, a whole number of tokens a side
    boxes: str                 # its grounding's box convention (BOX_CONVENTIONS)
    chat_template: str         # its own, for a tokenizer that carries a text-only one
    vision_mlp: tuple          # the linear layers of a vision block's MLP
    example: str
    # recurrent: its language model has linear-attention layers (Qwen3.5's Gated DeltaNet),
    # whose cache is a state per sequence, not keys and values per token: a prompt's cache is
    # cut back by restoring the state saved at that point, and answers that share a prompt
    # each run on their own copy of its state (no mask can keep them apart in one row).
    recurrent: bool = False
    # what its chat template is asked beside the messages (Qwen3.5 thinks unless told not to:
    # the box comes after the empty thought its template then writes)
    chat_template_kwargs: dict = field(default_factory=dict)
    licence: dict = field(default_factory=dict)
    licences: dict = field(default_factory=dict)

    @property
    def token_side(self) -> int:
        """Pixels of a square's side that one image token stands for."""
        return self.patch_size * self.merge_size

    def transformers_class(self):
        import transformers

        return getattr(transformers, self.model_class)

    def crop_size_problem(self, size: int, image_processor=None):
        """Why a square crop of `size` pixels cannot go to this base unchanged (None when it can):
        its side must be a whole number of image tokens, and, given the image processor, its
        area within the processor's pixel bounds; either would make the processor resize it."""
        side = self.token_side
        if size % side:
            below, above = size // side * side, (size // side + 1) * side
            fits = f"{below} or {above}" if below else f"{above}"
            return (f"{size}-px crops do not fit {self.name}'s image tokens of {side} px ({self.patch_size}-px "
                    f"patches, {self.merge_size}x{self.merge_size} merged): take {fits}")
        if image_processor is not None:
            low, high = image_processor.size["shortest_edge"], image_processor.size["longest_edge"]
            if size * size < low:
                smallest = -(-int(low ** 0.5) // side) * side
                return (f"{size}-px crops are under the {low:,} pixels {self.name}'s image processor enlarges "
                        f"images to: take {smallest} or more")
            if size * size > high:
                largest = int(high ** 0.5) // side * side
                return (f"{size}-px crops are over the {high:,} pixels {self.name}'s image processor shrinks "
                        f"images to: take {largest} or less")
        return None

    def lora_targets(self, vision: bool) -> str:
        """peft's target_modules: every linear layer of the language model, and with `vision`
        those of the vision tower's blocks (the published recipe trains both)."""
        language = (r"(?!.*visual).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
                    + ("|in_proj_qkv|in_proj_z|in_proj_a|in_proj_b|out_proj" if self.recurrent else "") + ")")
        mlp = "|".join(f"mlp\\.{name}" for name in self.vision_mlp)
        return language + (rf"|.*visual\.blocks\.\d+\.(attn\.qkv|attn\.proj|{mlp})" if vision else "")

    def licence_of(self, hub_id: str | None) -> dict:
        """The licence fields of a hub model of this family, as its own card gives them."""
        return dict(self.licences.get(hub_id or "", self.licence))


def vision_tower(model):
    """The vision tower of a (peft-wrapped) model of any base."""
    return unwrapped(model).model.visual


def fsdp_units(model) -> list:
    """The modules FSDP shards one by one: each vision block and each decoder layer, then the
    vision tower as a whole (generate runs it alone, before the whole model's forward)."""
    inner = unwrapped(model).model
    return [*inner.visual.blocks, *inner.language_model.layers, inner.visual]


def unwrapped(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def rope_positions(model, inputs, attention_mask=True):
    """The 3D (M-RoPE) positions of (left-padded) model inputs, [3, B, L]: a function of the
    token ids, the token types and the image grids alone, so worked out once for every pass
    over them. attention_mask=False: of a row without padding."""
    positions, _ = unwrapped(model).model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"] if attention_mask else None)
    return positions


# -----------------------------------------------------------------------------
# The bases


# Qwen2.5-VL's own chat template (the processor's chat_template.json on the hub): a user turn
# first gets the default system message "You are a helpful assistant.".
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Qwen3-VL-Instruct's chat template without its tool-calling parts: no default system message;
# a system message's text parts, user and assistant turns as Qwen2.5-VL's template renders them.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}"
    "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{%- if message.role == 'user' or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


QWEN2_5_VL = Base(
    model_type="qwen2_5_vl", name="Qwen2.5-VL", model_class="Qwen2_5_VLForConditionalGeneration",
    patch_size=14, merge_size=2, image_mean=(0.48145466, 0.4578275, 0.40821073),  # CLIP's
    image_std=(0.26862954, 0.26130258, 0.27577711), crop_size=336, boxes="pixels",
    chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    vision_mlp=("gate_proj", "up_proj", "down_proj"), example="Qwen/Qwen2.5-VL-3B-Instruct",
    licences={
        "Qwen/Qwen2.5-VL-3B-Instruct": {"license": "other", "license_name": "qwen-research",
                                        "license_link": "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/LICENSE"},
        "Qwen/Qwen2.5-VL-7B-Instruct": {"license": "apache-2.0"},
        "Qwen/Qwen2.5-VL-32B-Instruct": {"license": "apache-2.0"},
        "Qwen/Qwen2.5-VL-72B-Instruct": {"license": "other", "license_name": "qwen",
                                         "license_link": "https://huggingface.co/Qwen/Qwen2.5-VL-72B-Instruct/blob/main/LICENSE"},
    })


QWEN3_VL = Base(
    # 352 px: the nearest whole number of 32-px tokens at or above the published 336 (121 tokens a crop)
    model_type="qwen3_vl", name="Qwen3-VL", model_class="Qwen3VLForConditionalGeneration",
    patch_size=16, merge_size=2, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), crop_size=352,
    boxes="relative", chat_template=QWEN3_VL_CHAT_TEMPLATE,
    vision_mlp=("linear_fc1", "linear_fc2"), example="Qwen/Qwen3-VL-2B-Instruct",
    licence={"license": "apache-2.0"})  # every Qwen3-VL model (2B to 235B, Instruct and Thinking)


# Qwen3.5's chat template without its tool-calling parts, as for Qwen3-VL; the generation prompt
# opens the assistant's turn with a thought, empty when `enable_thinking` is false, and an
# assistant's answer without a thought is written after an empty one (as it was generated).
QWEN3_5_CHAT_TEMPLATE = QWEN3_VL_CHAT_TEMPLATE.replace(
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}{{- '<think>\\n' }}{%- endif %}{%- endif %}").replace(
    "{{- '<|im_start|>' + message.role + '\\n' }}",
    "{{- '<|im_start|>' + message.role + '\\n' }}{%- if message.role == 'assistant' and message.content is string "
    "and '</think>' not in message.content %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}")


QWEN3_5 = Base(
    # its vision tower is Qwen3-VL's (16-px patches, 2x2 merge, mean = std = 0.5); its language
    # model is hybrid: three of every four layers Gated DeltaNet, the fourth full attention
    model_type="qwen3_5", name="Qwen3.5", model_class="Qwen3_5ForConditionalGeneration",
    patch_size=16, merge_size=2, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), crop_size=352,
    boxes="relative", chat_template=QWEN3_5_CHAT_TEMPLATE,
    vision_mlp=("linear_fc1", "linear_fc2"), example="Qwen/Qwen3.5-2B", recurrent=True,
    chat_template_kwargs={"enable_thinking": False},
    licence={"license": "apache-2.0"})  # every Qwen3.5 model, dense and MoE


BASES = {base.model_type: base for base in (QWEN2_5_VL, QWEN3_VL, QWEN3_5)}


class UnknownBase(ValueError):
    """A checkpoint of a model family the project does not know."""


def named(model_type: str) -> Base:
    try:
        return BASES[model_type]
    except KeyError:
        known = ", ".join(f"{b.name} ({b.model_type})" for b in BASES.values())
        what = f"a {model_type} checkpoint" if model_type else "a checkpoint whose config names no model_type"
        raise UnknownBase(f"{what}: R1-Track tracks with {known}") from None
