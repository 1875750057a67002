"""What the model is asked: the prompt text (exactly as the published checkpoints were trained
on it), one frame's request, and its encoding into the model inputs of its base (bases.py:
chat template, image tokens expanded as the official processor expands them, pixel patches),
collated into batches, with the greedy generation settings every answerer shares. A box
crosses into the model here, in its base's convention (bases.box_to_model)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from bases import Base, box_to_model

# Qwen2.5-VL's default system message: its chat template puts it before a chat that has none
# (the published models were trained and asked with it). No question sends a system message:
# each base's template adds its own default (Qwen3-VL's adds none).
SYSTEM_PROMPT = "You are a helpful assistant."


THINK_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide "
    "the final answer. \n The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer MUST BE put in <answer> </answer> tags. \n "
)


QUESTIONS = {
    # The wording of the R1-Track README and of the 5k models.
    "seed": (
        "Please identify the target specified by the bounding box {box} in the first image "
        "and locate it in the second image. \n Return the coordinates in "
        "[x_min,y_min,x_max,y_max] format."
    ),
    # The wording the published 100k-pair models were trained on.
    "r1track-100k": (
        "Given two images, you need to:\n"
        "1. Analyze and Identify the target object marked by bounding box {box} in <image_1>;\n"
        "2. Re-locate this target in <image_2>;\n"
        "3. Return [x_min, y_min, x_max, y_max] coordinates of the target in <image_2>."
    ),
}


WORDINGS = tuple(QUESTIONS)


# The question with a memory frame: the template (the first frame), a crop of a recent frame
# around the target's box there, then the search crop. In each wording's own style; no
# published model was trained on it.
MEMORY_QUESTIONS = {
    "seed": (
        "Please identify the target specified by the bounding box {box} in the first image, "
        "seen a moment ago in the bounding box {memory_box} in the second image, and locate it "
        "in the third image. \n Return the coordinates in [x_min,y_min,x_max,y_max] format."
    ),
    "r1track-100k": (
        "Given three images, you need to:\n"
        "1. Analyze and Identify the target object marked by bounding box {box} in <image_1>, "
        "and as it looked a moment ago, marked by bounding box {memory_box} in <image_2>;\n"
        "2. Re-locate this target in <image_3>;\n"
        "3. Return [x_min, y_min, x_max, y_max] coordinates of the target in <image_3>."
    ),
}


IMAGE_PAD = "<|image_pad|>"


VISION_START = "<|vision_start|>"


END_OF_TURN = "<|im_end|>"


def format_box_xyxy(box_xyxy) -> str:
    """`[241,66,329,154]`: integers (truncated, as the published pairs were), no spaces."""
    return "[" + ",".join(str(int(v)) for v in box_xyxy) + "]"


def question_text(box_xyxy, think=False, wording="seed", as_published_client=False, boxes="pixels",
                  crop_side=None, memory_box_xyxy=None) -> str:
    """The text of one tracking question about the target at `box_xyxy` (pixels of the template
    crop, of side `crop_side`) in image 1, the box written in the `boxes` convention; with
    `memory_box_xyxy` (pixels of the memory crop, of the same side) the three-image question
    (MEMORY_QUESTIONS).

    The text the published models were trained on (the README's), unless
    `as_published_client`: then the seed wording as the published inference client sent it,
    which is how the published 5k models were scored: single spaces where the README has
    " \\n ", and the think instruction stripped, then joined with one space.
    """
    if wording not in QUESTIONS:
        raise ValueError(f"unknown wording {wording!r}; choose one of {', '.join(WORDINGS)}")
    box = format_box_xyxy(box_to_model(box_xyxy, crop_side, boxes))
    if memory_box_xyxy is None:
        text = QUESTIONS[wording].format(box=box)
    else:
        if as_published_client:
            raise ValueError("the published client asks with two images: no memory frame")
        text = MEMORY_QUESTIONS[wording].format(box=box, memory_box=format_box_xyxy(
            box_to_model(memory_box_xyxy, crop_side, boxes)))
    if as_published_client and wording == "seed":
        text = text.replace(" \n ", " ")
        return f"{THINK_INSTRUCTION.strip()} {text}" if think else text
    return THINK_INSTRUCTION + text if think else text


def build_messages(box_xyxy, think=False, wording="seed", images=(None, None), as_published_client=False,
                   boxes="pixels", crop_side=None, memory_box_xyxy=None) -> list[dict]:
    """The chat of one tracking question: image 1 is the template crop with the target at
    `box_xyxy` (template-crop pixels; the crop's side `crop_side`), the last image the search
    crop, and with a memory frame (three `images`, `memory_box_xyxy` in its crop's pixels) the
    memory crop between them; a user turn alone (see SYSTEM_PROMPT). The published client
    asked with its own spacing of the question (question_text)."""
    if (len(images) == 3) != (memory_box_xyxy is not None):
        raise ValueError("a memory frame is a third image and its box, given together")
    text = question_text(box_xyxy, think, wording, as_published_client, boxes, crop_side, memory_box_xyxy)
    shown = [{"type": "image", "image": image} for image in images]
    if wording != "seed":  # the 100k data put a space between its images
        shown = [part for image in shown for part in (image, {"type": "text", "text": " "})][:-1]
    return [{"role": "user", "content": [*shown, {"type": "text", "text": text}]}]


def answer_text(box_xyxy, crop_side, boxes="pixels") -> str:
    """The answer that gives `box_xyxy` (pixels of a search crop of side `crop_side`), as a
    model of the `boxes` convention writes it: what SFT teaches."""
    return format_box_xyxy(box_to_model(box_xyxy, crop_side, boxes))


@dataclass
class Processor:
    """A base's tokenizer and image processor, and the base: what build_inputs needs of the
    official processor (Qwen2_5_VLProcessor, Qwen3VLProcessor), which cannot be built where
    torchvision is missing."""

    tokenizer: object
    image_processor: object
    base: Base

    def save_pretrained(self, folder) -> None:
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)


def load_processor(name_or_path: str, base: Base) -> Processor:
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    # Hub checkpoints keep the vision chat template beside the processor; a tokenizer
    # with a text-only template would drop the images.
    if IMAGE_PAD not in (tokenizer.chat_template or ""):
        tokenizer.chat_template = base.chat_template
    # The PIL backend gives the same pixels on every machine, torchvision or not.
    image_processor = AutoImageProcessor.from_pretrained(name_or_path, backend="pil")
    return Processor(tokenizer, image_processor, base)


def build_inputs(processor, template_img, search_img, box_xyxy, answer=None, think=False,
                 wording="seed", return_tensors=True, as_published_client=False, pixels_as_bytes=False,
                 memory_img=None, memory_box_xyxy=None) -> dict:
    """The model inputs of one tracking question (a batch of one), `box_xyxy` in pixels of the
    template crop, written in the convention of the processor's base; `answer` as the model
    writes it (answer_text); with `memory_img` (a crop of a recent frame, cut as the template
    is) and `memory_box_xyxy` in its pixels, the three-image question.

    Keys: input_ids, attention_mask, mm_token_type_ids (1 on image tokens: the bases need
    them for their 3D positions), pixel_values, image_grid_thw; with an `answer` also
    labels, -100 everywhere but the answer and its end-of-turn token. Image tokens are
    expanded as the base's own processor expands them. pixels_as_bytes: patch_bytes instead
    of pixel_values (see image_patches), an eighth of their size to send to a trainer.
    """
    images = [template_img, search_img] if memory_img is None else [template_img, memory_img, search_img]
    messages = build_messages(box_xyxy, think=think, wording=wording, images=images,
                              as_published_client=as_published_client, boxes=processor.base.boxes,
                              crop_side=image_side(template_img), memory_box_xyxy=memory_box_xyxy)
    return encode_chat(processor, messages, images, answer=answer, return_tensors=return_tensors,
                       pixels_as_bytes=pixels_as_bytes)


def encode_chat(processor, messages, images, answer=None, return_tensors=True, pixels_as_bytes=False) -> dict:
    """Any chat with images, rendered by the tokenizer's chat template and encoded as the
    base's processor does; see build_inputs."""
    import torch

    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                           **processor.base.chat_template_kwargs)
    vision = image_patches(images, image_processor, as_bytes=pixels_as_bytes)
    merge = image_processor.merge_size ** 2
    for grid in vision["image_grid_thw"]:
        prompt = prompt.replace(IMAGE_PAD, "<|placeholder|>" * int(grid.prod() // merge), 1)
    prompt = prompt.replace("<|placeholder|>", IMAGE_PAD)

    input_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    labels = None
    if answer is not None:
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        answer_ids.append(tokenizer.convert_tokens_to_ids(END_OF_TURN))
        labels = [-100] * len(input_ids) + answer_ids
        input_ids = input_ids + answer_ids

    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "mm_token_type_ids": [int(t == image_token_id) for t in input_ids],
    }
    if labels is not None:
        inputs["labels"] = labels
    if return_tensors:
        inputs = {key: torch.tensor([value]) for key, value in inputs.items()}
    inputs.update(vision)
    return inputs


def image_side(image) -> int:
    """The width of an image (PIL or array): the side of a square crop."""
    return image.width if isinstance(image, Image.Image) else np.asarray(image).shape[1]


def image_patches(images, image_processor, device=None, as_bytes=False) -> dict:
    """{"pixel_values", "image_grid_thw"} of RGB images (PIL or uint8 arrays) as the base's
    image processor (Qwen2VLImageProcessor, with its patch size, merge and normalisation)
    makes them, computed with torch (on `device`: on a GPU the per-frame part of a tracked
    frame costs microseconds). The processor itself (resampling, one image at a time in numpy)
    is asked only for images whose size it would change; tracking crops, whose side is a
    whole number of image tokens (bases.Base.crop_size_problem), are kept as they are by it.

    as_bytes: {"patch_bytes", "image_grid_thw"} instead, the patches still as bytes in the
    processor's order ([patches, 3 * p * p] uint8; pixels_from_bytes makes them pixel_values),
    where the processor would not resize: an eighth of the floats' bytes."""
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    p, m = image_processor.patch_size, image_processor.merge_size
    arrays = [np.asarray(image) for image in images]
    shapes = {array.shape for array in arrays}
    (height, width, channels), = shapes if len(shapes) == 1 else [(0, 0, 0)]
    kept = channels == 3 and arrays[0].dtype == np.uint8 and smart_resize(
        height, width, factor=p * m, min_pixels=image_processor.size["shortest_edge"],
        max_pixels=image_processor.size["longest_edge"]) == (height, width)
    if not kept:
        return image_processor(images=images, return_tensors="pt")
    n, gh, gw = len(arrays), height // p, width // p
    grid = torch.tensor([[1, gh, gw]] * n, device=device)
    if not as_bytes and torch.device(device or "cpu").type == "cpu":
        return {"pixel_values": _normalised_patches(arrays, image_processor), "image_grid_thw": grid}
    pixels = torch.from_numpy(np.stack(arrays)).to(device)                                  # [N, H, W, C] uint8
    # the processor's patch order: merge blocks row by row, 2x2 patches within, each patch C x p x p;
    # reordered while still bytes (a quarter of the floats' memory traffic)
    patches = pixels.view(n, gh // m, m, p, gw // m, m, p, 3).permute(0, 1, 4, 2, 5, 7, 3, 6).contiguous()
    patches = patches.view(n * gh * gw, 3 * p * p)
    if as_bytes:
        return {"patch_bytes": patches, "image_grid_thw": grid}
    return {"pixel_values": pixels_from_bytes(patches, image_processor), "image_grid_thw": grid}


def _normalised_patches(arrays, image_processor):
    """image_patches' pixel_values on the CPU: each channel of an image normalised through a
    lookup table into a float plane (OpenCV), then the planes' patch rows (p floats, the
    longest run the two orders share) gathered in the processor's order and repeated in time
    by one index_select. A 336-px crop takes ~0.3 ms this way against ~0.45 ms as a strided
    copy of the planes and ~0.7 ms as bytes reordered, then normalised in float passes
    (pixels_from_bytes), whose channel-interleaved reads cannot be vectorised. One image at a
    time, so that its planes stay in the cache."""
    import cv2
    import torch

    p, m, t = image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size
    (height, width, _), n = arrays[0].shape, len(arrays)
    tables = _pixel_tables(tuple(image_processor.image_mean), tuple(image_processor.image_std),
                           image_processor.rescale_factor)
    order = _patch_row_order(height, width, p, m, t)
    planes = torch.empty(3, height, width, dtype=torch.float32)                              # [C, H, W]
    pixels = torch.empty(n, len(order), p, dtype=torch.float32)                              # [N, patch rows, p]
    for image, image_pixels in zip(arrays, pixels):
        for table, channel, plane in zip(tables, cv2.split(image), planes.numpy()):
            if cv2.LUT(channel, table, dst=plane) is not plane:  # an OpenCV that would not write in place
                plane[...] = cv2.LUT(channel, table)
        torch.index_select(planes.view(-1, p), 0, order, out=image_pixels)
    return pixels.view(n * (height // p) * (width // p), 3 * t * p * p)


@functools.lru_cache(maxsize=8)
def _patch_row_order(height: int, width: int, p: int, m: int, t: int):
    """For each p-float run of pixel_values, in the processor's patch order (merge blocks row by
    row, 2x2 patches within, each patch C x t x p x p), the index of its run in the channel
    planes [C, H, W] viewed as [C * H * W / p, p]."""
    import torch

    gh, gw = height // p, width // p
    runs = torch.arange(3 * height * width // p, dtype=torch.int32).view(3, gh // m, m, p, gw // m, m, 1)  # [C, H, W / p]
    return runs.permute(1, 4, 2, 5, 0, 3, 6).unsqueeze(5).expand(
        gh // m, gw // m, m, m, 3, t, p, 1).reshape(-1)


@functools.lru_cache(maxsize=8)
def _pixel_tables(mean, std, rescale_factor) -> list[np.ndarray]:
    """Per channel, the normalised value of each byte as a [1, 256] float32 lookup table,
    computed as the processor computes it (rescaled in float64, normalised in float32)."""
    rescaled = (np.arange(256) * rescale_factor).astype(np.float32)
    return [((rescaled - np.float32(mu)) / np.float32(sigma)).reshape(1, 256) for mu, sigma in zip(mean, std)]


def pixels_from_bytes(patch_bytes, image_processor):
    """The processor's pixel_values [patches, 3 * 2 * p * p] float32 from image_patches'
    patch_bytes, on their device, equal to the last bit: each byte looked up in its channel's
    table (_pixel_tables, as _normalised_patches does on the CPU), repeated in time."""
    import torch

    t, device = image_processor.temporal_patch_size, patch_bytes.device
    tables = _pixel_tables(tuple(image_processor.image_mean), tuple(image_processor.image_std),
                           image_processor.rescale_factor)
    table = torch.from_numpy(np.concatenate(tables, axis=1)).to(device).view(-1)                # [3 * 256]
    channels = torch.arange(0, 3 * 256, 256, device=device).view(1, 3, 1)
    pixels = table[patch_bytes.view(len(patch_bytes), 3, -1).long() + channels]               # [P, C, p * p]
    return pixels.unsqueeze(2).expand(-1, -1, t, -1).reshape(len(pixels), -1)


def collate(examples: list[dict], pad_token_id: int) -> dict:
    """Pad a list of build_inputs(..., return_tensors=False) results into one batch, on the
    left: every row ends where its answer begins (generation) or ends (training), so the
    answers of all rows sit in the same last columns."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    pads = {"input_ids": pad_token_id, "attention_mask": 0, "mm_token_type_ids": 0, "labels": -100}
    batch = {}
    for key, pad in pads.items():
        if key not in examples[0]:
            continue
        rows = []
        for e in examples:
            filler = [pad] * (width - len(e[key]))
            rows.append(filler + e[key])
        batch[key] = torch.tensor(rows)
    pixels = "patch_bytes" if "patch_bytes" in examples[0] else "pixel_values"
    batch[pixels] = torch.cat([e[pixels] for e in examples])
    batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in examples])
    return batch


VISION_TOKENS = (IMAGE_PAD, "<|video_pad|>", VISION_START, "<|vision_end|>")


def vision_token_ids(tokenizer) -> list[int]:
    """Placeholders an answer must never contain: fed back to the model (as GRPO does),
    an <|image_pad|> would stand for image features that are not there."""
    return [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]


def answer_token_limit(think: bool, as_published_client=False) -> int:
    """The longest answer asked for: a box is about 20 tokens; reasoning gets the 512 the
    published think models were trained with, which the published client asked for always
    (a greedy answer is the same, only never cut short)."""
    return 512 if think or as_published_client else 48


def greedy_config(processor, max_new_tokens: int):
    """Plain greedy decoding, whatever sampling defaults the checkpoint ships with."""
    from transformers import GenerationConfig

    tokenizer = processor.tokenizer
    end_ids = [tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.pad_token_id]
    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=end_ids,
                            pad_token_id=tokenizer.pad_token_id, repetition_penalty=1.0,
                            suppress_tokens=vision_token_ids(tokenizer))


class Request(NamedTuple):
    """One frame's question, as a tracker asks it of an answerer (r1track.Tracker.request)."""

    template: np.ndarray | Image.Image  # the crops as the model sees them: RGB arrays (published loop) or PIL
    search: np.ndarray | Image.Image
    template_box_xyxy: list
    state: dict | None = None  # the answerer's cache for the sequence (e.g. the template's keys and values)
    jpegs: tuple | None = None  # the crops' JPEG bytes (the published loop): what a server is sent
    search_crop: tuple | None = None  # where the search crop lies: (crop pixels per frame pixel, its corner, frame size)
