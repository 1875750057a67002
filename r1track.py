"""R1-Track: load a checkpoint and track with it.

  tracker = r1track.Tracker("WangBiao/R1-Track-GRPO-wo-Think-100k")   # or Tracker(server=URL)
  tracker.init(first_frame, box_xywh)
  box_xywh = tracker.update(next_frame)

load_model (a full checkpoint or a peft adapter of any base bases.py knows, every weight
checked), the answerers (a
local model through the fast decoder or plain `generate`, an OpenAI-compatible server, any
function), the Tracker behind the GOT-10k toolkit's interface (init/update, and
request/accept to share one model call among many trackers), PytrackingTracker,
update_batch, and locate_text (a first box from a description). The vocabulary it speaks
lives in modules named by their job: boxes (box maths, crops), frames (reading, read-ahead),
prompts (the question and the model inputs), answers (parsing, rewards, confidence),
settings (tracking settings, the hub), cli (the one-line error, parsers, thread policy).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import threading
from pathlib import Path

import numpy as np
from PIL import Image

import bases
import frame_loop
from answers import Answer, answer_box, answer_confidence, parse_answer, pieces_confidence
from boxes import (
    check_init_box,
    clamp_box_xywh_to_frame,
    clamp_box_xyxy,
    crop_around,
    crop_to_frame,
    jpeg_round_trip,
    touches_frame_edge,
    xyxy_to_xywh,
)
from cli import first_line, leave_a_core_for_reading, opencv_on_one_thread
from fast_decoder import FastAnswerer
from frame_loop import update_batch
from frames import as_array, as_pil
from prompts import (
    Processor,
    Request,
    answer_token_limit,
    build_inputs,
    build_messages,
    collate,
    encode_chat,
    greedy_config,
    image_side,
    load_processor,
)
from settings import (
    LOOPS,
    LoadError,
    TrackSettings,
    default_settings,
    hub_file,
    load_settings,
    read_settings,
    say_default_settings,
)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _adapter_base(name_or_path: str):
    """The base model named by a peft adapter folder or hub id, or None for a full model."""
    local = Path(name_or_path)
    if local.exists():
        config = local / "adapter_config.json"
        if not config.is_file():
            return None
    else:
        config = hub_file(name_or_path, "adapter_config.json")
        if config is None:
            return None
    try:
        return json.loads(config.read_text())["base_model_name_or_path"]
    except (ValueError, KeyError, TypeError) as error:
        raise LoadError(f"{config}: not a peft adapter config ({first_line(error)})") from None


def checkpoint_base(name_or_path: str) -> bases.Base:
    """The base (bases.py) of a checkpoint, from the model_type of its config.json (an
    adapter's: its base model's), read before transformers is asked to make sense of it.
    LoadError when it cannot be read or is of a family the project does not know."""
    from transformers import PretrainedConfig

    name = name_or_path
    try:
        while (below := _adapter_base(name)) is not None:
            name = below
        config, _ = PretrainedConfig.get_config_dict(name)
    except (OSError, ValueError, KeyError) as error:  # no config, or no readable one
        raise LoadError(f"cannot load the model {name_or_path}: {first_line(error)}") from None
    try:
        return bases.named(config.get("model_type", ""))
    except bases.UnknownBase as error:
        raise LoadError(f"{name_or_path} is {error}") from None


def load_model(name_or_path: str, dtype=None, device=None, load_in_4bit=False, attn=None,
               merge_adapter=True, trainable=False):
    """A model of any base (Qwen2.5-VL, Qwen3-VL, Qwen3.5: its config says) and its processor from a
    hub id or folder: a full checkpoint or a peft adapter, whose base (read from the adapter
    config) may itself be an adapter, as a GRPO adapter trained over an SFT adapter is.

    dtype: default_dtype(device) unless given. attn: default_attention(device) unless given.
    merge_adapter folds the adapter into the weights for speed (not with 4-bit weights);
    trainable keeps it a trainable peft adapter. The checkpoint's tracking settings are at
    `model.r1track_settings` (None when it has none). Whatever cannot be loaded is a LoadError
    that says so in one line: a checkpoint or adapter whose weights do not all load (never
    random values), a missing or unreadable file, a hub that cannot be asked, a model family
    the project does not know, tracking settings that do not fit the base (its box convention,
    a crop its image processor would resize).
    """
    from transformers import BitsAndBytesConfig

    base = checkpoint_base(name_or_path)
    settings = read_settings(name_or_path)  # None: the checkpoint has none
    problem = settings and settings.problem_with(base)  # said before any weight is read
    if problem:
        raise LoadError(f"{name_or_path}: {problem}")
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    # Straight onto the device: a 3B model never passes through CPU memory on its way.
    kwargs = {"dtype": dtype, "attn_implementation": attn or default_attention(device), "device_map": {"": str(device)}}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    try:
        model = _load_weights(name_or_path, base, kwargs, trainable=trainable,
                              merge=merge_adapter and not trainable and not load_in_4bit)
        if not trainable:
            model.eval()
        processor = _load_processor_of(name_or_path, base)
    except (OSError, ValueError) as error:  # transformers' and peft's own errors included
        raise LoadError(f"cannot load the model {name_or_path}: {first_line(error)}") from None
    model.r1track_settings = settings
    problem = settings and settings.problem_with(base, processor.image_processor)  # its pixel bounds
    if problem:
        raise LoadError(f"{name_or_path}: {problem}")
    return model, processor


def default_dtype(device):
    """bfloat16 on a GPU, float32 on a CPU."""
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def default_attention(device) -> str:
    """flash_attention_2 on a GPU when the flash-attn package is installed, else sdpa."""
    import importlib.util

    return "flash_attention_2" if str(device).startswith("cuda") and importlib.util.find_spec("flash_attn") else "sdpa"


def _load_weights(name_or_path: str, base: bases.Base, from_pretrained_kwargs: dict, trainable=False, merge=True):
    """Every weight of a checkpoint or adapter, or LoadError naming those that do not fit."""
    below = _adapter_base(name_or_path)
    if below is None:
        model, report = base.transformers_class().from_pretrained(
            name_or_path, output_loading_info=True, **from_pretrained_kwargs)
        _refuse_partial_load(name_or_path, base, report["missing_keys"], report["unexpected_keys"],
                             [key for key, *_ in report.get("mismatched_keys", ())])
        return model
    import warnings

    from peft import PeftModel

    model = _load_weights(below, base, from_pretrained_kwargs, trainable=False, merge=True)  # lower adapters: merged
    key_mapping = older_layout_key_mapping(model)
    with warnings.catch_warnings():  # peft warns of missing keys; they are checked below, and refused
        warnings.filterwarnings("ignore", message="Found missing adapter keys")
        model = PeftModel.from_pretrained(model, name_or_path, is_trainable=trainable, key_mapping=key_mapping)
    _check_adapter_weights(model, name_or_path, base, key_mapping)
    return model.merge_and_unload() if merge else model


def older_layout_key_mapping(model) -> dict:
    """transformers' renaming rules for checkpoints saved before 4.52, when Qwen2.5-VL kept
    the text model at `model.` and the vision tower at `visual.` (the published R1-Track
    LoRA adapters were saved so), as the `key_mapping` peft applies to adapter keys."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    mapping = {}
    for rule in get_model_conversion_mapping(model):
        if type(rule) is WeightRenaming:  # plain renames; peft applies the first that matches
            mapping.update(zip(rule.source_patterns, rule.target_patterns))
    return mapping


def _check_adapter_weights(model, name_or_path: str, base: bases.Base, key_mapping: dict) -> None:
    """Every weight of the adapter file went into the model, and every adapter weight of the
    model came from the file: peft itself only warns, and leaves the rest at their initial values."""
    from peft import get_peft_model_state_dict
    from peft.utils import load_peft_weights

    stored = set(load_peft_weights(name_or_path, device="cpu", key_mapping=key_mapping))
    expected = set(get_peft_model_state_dict(model))
    _refuse_partial_load(name_or_path, base, expected - stored, stored - expected, [], kind="adapter")


def _refuse_partial_load(name, base: bases.Base, missing, unexpected, mismatched, kind="checkpoint") -> None:
    def listed(keys):
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    problems = [f"{len(keys)} {what} ({listed(keys)})" for keys, what in (
        (missing, "weights missing from it"), (unexpected, "weights the model has no place for"),
        (mismatched, "weights of the wrong shape")) if keys]
    if problems:
        raise LoadError(f"{name}: not every weight of this {kind} loads into {base.name}: {'; '.join(problems)}")


def _load_processor_of(name_or_path: str, base: bases.Base) -> Processor:
    """The processor saved with a checkpoint, or with the nearest base below it (a hub
    adapter may carry none)."""
    while True:
        try:
            return load_processor(name_or_path, base)
        except (OSError, ValueError, TypeError):
            below = _adapter_base(name_or_path)
            if below is None:
                raise
            name_or_path = below


def generate_answers(model, processor, batch: dict, generation_config=None, synced=False, confidences=False):
    """Decoded answers of a (left-padded) batch; greedy unless told otherwise. synced: every
    rank steps until all ranks are done (a sharded model's forward is a collective).
    confidences: also each answer's answer_confidence, from the scores generate computes."""
    import torch

    generation_config = copy.copy(generation_config or greedy_config(processor, answer_token_limit(think=False)))
    # in the config, not beside it: generate warns that passing both is deprecated
    generation_config.return_dict_in_generate, generation_config.output_scores = True, confidences
    batch = {k: v.to(model.device) for k, v in batch.items() if k != "labels"}
    # a sharded model's gathered weights must not become inference tensors: training writes them later
    with torch.no_grad() if synced else torch.inference_mode():
        out = model.generate(**batch, generation_config=generation_config, synced_gpus=synced)
    new_tokens = out.sequences[:, batch["input_ids"].shape[1]:]
    texts = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    if not confidences:
        return texts
    # scores: one [rows, vocabulary] tensor per generated position; the chosen tokens' log-probabilities
    chosen = torch.stack([step.float().log_softmax(-1).gather(1, new_tokens[:, i:i + 1])[:, 0]
                          for i, step in enumerate(out.scores)], 1)
    pad = processor.tokenizer.pad_token_id
    rows = [[t for t in row if t != pad] for row in new_tokens.tolist()]
    return texts, [answer_confidence(processor.tokenizer, ids, chosen[r, :len(ids)].tolist())
                   for r, ids in enumerate(rows)]


class ModelAnswerer:
    """Greedy answers from a local model through `generate`, the whole prompt every
    frame, batched with left padding, each with its confidence (answer_confidence, from the
    scores generate already computes). min_new_tokens holds the end back (for timing random
    weights with answers of a realistic length)."""

    def __init__(self, model, processor, settings: TrackSettings, max_new_tokens=None, min_new_tokens=0):
        self.model, self.processor, self.settings = model, processor, settings
        self.config = greedy_config(processor, max_new_tokens or answer_token_limit(settings.think))
        self.config.min_new_tokens = min_new_tokens

    def __call__(self, requests: list[Request]) -> list[Answer]:
        s = self.settings
        examples = [build_inputs(self.processor, r.template, r.search, r.template_box_xyxy, think=s.think,
                                 wording=s.wording, return_tensors=False, as_published_client=s.asks_as_client)
                    for r in requests]
        batch = collate(examples, self.processor.tokenizer.pad_token_id)
        texts, confidences = generate_answers(self.model, self.processor, batch, self.config, confidences=True)
        return [Answer(text, confidence) for text, confidence in zip(texts, confidences)]


def served_defaults(served_name: str) -> TrackSettings:
    """The tracking settings of a served model that has none of its own, said on stderr: its
    base's defaults where its name leads to a checkpoint whose config says the base (vLLM names
    a served model by its hub id or folder), else the published ones."""
    try:
        settings = default_settings(checkpoint_base(served_name))
    except LoadError:  # a name that is not a checkpoint: it cannot say
        settings = TrackSettings()
    say_default_settings(served_name, settings)
    return settings


def served_chat_template_kwargs(served_name: str) -> dict:
    """What a served model's chat template is asked beside the messages: its base's, where its
    name leads to a checkpoint (Qwen3.5: no thinking before the box), else nothing."""
    try:
        return dict(checkpoint_base(served_name).chat_template_kwargs)
    except LoadError:
        return {}


class ServerError(ConnectionError):
    """An answer server that cannot be reached or does not answer as OpenAI's chat API does
    (an OSError: every script says it in one line)."""


def _post_json(url: str, payload=None, timeout=120):
    import urllib.error
    import urllib.request

    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace").strip().splitlines()
        raise ServerError(f"{url} answered HTTP {error.code}{': ' + detail[0][:200] if detail else ''}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ServerError(f"cannot reach {url}: {getattr(error, 'reason', error)}") from None
    except ValueError:
        raise ServerError(f"{url} did not answer JSON") from None


def server_v1_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def served_model_name(url: str, timeout=120) -> str:
    """The first model an OpenAI-compatible server serves (its /v1/models)."""
    listing = _post_json(server_v1_url(url) + "/models", timeout=timeout)
    try:
        return listing["data"][0]["id"]
    except (KeyError, IndexError, TypeError):
        raise ServerError(f"{url}/models lists no model") from None


class ServerAnswerer:
    """Answers from an OpenAI-compatible chat server (vLLM, SGLang, ...), the deployment the
    published R1-Track scripts used, temperature 0. The published loop sends what the
    published client sent: its spacing of the question, the crops as JPEG data URLs; the
    lenient loop sends lossless PNG crops. No system message: the served model's chat template
    puts in its own default. The template box is written in the settings' box convention. A
    server that fails is a ServerError (the published client quietly reused the previous
    answer instead)."""

    def __init__(self, url: str, settings: TrackSettings, model_name=None, max_new_tokens=None, timeout=120,
                 chat_template_kwargs=None):
        self.url = server_v1_url(url)
        self.settings, self.timeout = settings, timeout
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.max_tokens = max_new_tokens or answer_token_limit(settings.think, settings.asks_as_client)
        self.model_name = model_name or served_model_name(url, timeout)
        self.lock, self.said_no_logprobs = threading.Lock(), False

    @staticmethod
    def _data_url(image, jpeg: bytes | None) -> str:
        import base64
        import io

        if jpeg is not None:
            return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        buffer = io.BytesIO()
        as_pil(image).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    def _chat(self, request: Request) -> Answer:
        s = self.settings
        # the images stand as their index (0 template, 1 search) until they become data URLs
        messages = build_messages(request.template_box_xyxy, think=s.think, wording=s.wording, images=(0, 1),
                                  as_published_client=s.asks_as_client, boxes=s.boxes,
                                  crop_side=image_side(request.template))
        crops, jpegs = (request.template, request.search), request.jpegs or (None, None)
        messages[-1]["content"] = [
            {"type": "image_url", "image_url": {"url": self._data_url(crops[part["image"]], jpegs[part["image"]])}}
            if part["type"] == "image" else part for part in messages[-1]["content"]]
        # the answer tokens' log-probabilities (OpenAI's `logprobs`): the confidence a local model gives
        payload = {"model": self.model_name, "messages": messages, "temperature": 0.0, "max_tokens": self.max_tokens,
                   "logprobs": True}
        if self.chat_template_kwargs:  # vLLM's and SGLang's way to pass them to the served template
            payload["chat_template_kwargs"] = self.chat_template_kwargs
        reply = _post_json(self.url + "/chat/completions", payload, self.timeout)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"{self.url}/chat/completions answered without a message: {str(reply)[:200]}") from None
        return Answer(text, self._confidence(choice))

    def _confidence(self, choice: dict) -> float | None:
        """The answer's confidence from the reply's token log-probabilities; None (said once)
        where the server gives none."""
        tokens = (choice.get("logprobs") or {}).get("content") or []
        try:
            pieces, logprobs = [t["token"] for t in tokens], [float(t["logprob"]) for t in tokens]
        except (KeyError, TypeError, ValueError):
            pieces = []
        if pieces:
            return pieces_confidence(pieces, logprobs)
        with self.lock:
            if not self.said_no_logprobs:
                self.said_no_logprobs = True
                print(f"{self.url} gives no token log-probabilities with its answers: the confidence and the lost "
                      "flag are unknown (nan)", file=sys.stderr)
        return None

    def __call__(self, requests: list[Request]) -> list[Answer]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, len(requests))) as pool:
            return list(pool.map(self._chat, requests))


def function_answerer(answer_fn):
    """An answerer over `answer_fn(template_img, search_img, template_box_xyxy) -> str`."""
    return lambda requests: [Answer(answer_fn(as_pil(r.template), as_pil(r.search), r.template_box_xyxy))
                             for r in requests]


# Target-loss recovery (off by default, as the published loop has none): after an answer
# that fails, or one less sure than LOST_BELOW, the search square grows by this factor per
# frame, up to the largest factor.
RECOVERY_GROWTH = 1.5


RECOVERY_MAX_FACTOR = 12.0


LOST_BELOW = 0.5  # a frame whose answer's confidence is lower counts the target as lost


class Tracker:
    """The R1-Track loop behind the GOT-10k toolkit's interface (init, update, track over a
    sequence's files, name, is_deterministic); PytrackingTracker is the same behind pytracking's.

    Built from a model name or folder (`Tracker("WangBiao/R1-Track-GRPO-wo-Think-100k")`),
    a loaded `(model, processor)`, an OpenAI-compatible server (`Tracker(server=URL)`),
    `answer_fn(template_img, search_img, template_box_xyxy) -> str`, or any `answerer`: a
    callable from a list of requests (prompts.Request) to their answers (answers.Answer, or
    plain texts). The prompt wording, think mode, crop size, factors and loop come from
    `settings` (a TrackSettings, or the checkpoint folder, hub id or r1track.json to read them
    from), else from the model's own, else (a server) from the served model's name, else its
    base's defaults (said on stderr); keyword arguments override single values. Settings a
    local model's base cannot take (another box convention, a crop its image processor would
    resize) are a LoadError. A local model answers through FastAnswerer (template
    reuse, drafting; the same greedy answers); fast=False asks plain `generate` with the whole
    prompt every frame.

    Each frame: search crop around the previous box -> answer -> box clamped to the crop; an
    unusable or empty answer reuses the previous answer -> back to the frame. loop="published"
    then applies the published frame-edge rule (a box touching the frame's edge is not taken:
    the previous box and answer stay); "lenient" clamps the box into the frame. `fallbacks`
    counts the answers of the sequence that could not be used, `edge_holds` the boxes refused
    by the frame-edge rule. After each frame `confidence` says how sure the model was of its
    box (answer_confidence; None where the answerer cannot say) and `lost` whether that is
    below `lost_below`; with recover=True a lost frame, like an unusable answer, keeps the last
    box and widens the next search.
    """

    is_deterministic = True  # greedy decoding

    def __init__(self, model=None, *, server=None, answer_fn=None, answerer=None, server_model=None, settings=None,
                 crop_size=None, template_factor=None, search_factor=None, think=None, wording=None, loop=None,
                 device=None, dtype=None, recover=False, max_new_tokens=None, name=None, fast=True,
                 lost_below=None):
        if sum(x is not None for x in (model, server, answer_fn, answerer)) != 1:
            raise ValueError("give exactly one of: a model (name, folder or (model, processor)), server=, answer_fn=, "
                             "answerer=")
        loaded = None
        if isinstance(model, (str, os.PathLike)):
            loaded = load_model(str(model), dtype=dtype, device=device)
            name = name or f"R1-Track[{Path(str(model)).name}]"
        elif model is not None:
            loaded = model
        if server is not None and server_model is None:
            server_model = served_model_name(server)
        own = getattr(loaded[0], "r1track_settings", None) if loaded is not None else None
        base = loaded[1].base if loaded is not None else None
        if isinstance(settings, TrackSettings):
            settings = dataclasses.replace(settings)
        elif settings is not None:
            settings = load_settings(str(settings))
        elif own is not None:
            settings = dataclasses.replace(own)
        elif server is not None:
            settings = read_settings(server_model) or served_defaults(server_model)
        elif base is not None:
            settings = default_settings(base)
            say_default_settings(getattr(loaded[0], "name_or_path", None) or "the model", settings)
        else:
            settings = TrackSettings()
        overrides = dict(crop_size=crop_size, template_factor=template_factor, search_factor=search_factor,
                         think=think, wording=wording, loop=loop)
        self.settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        if self.settings.loop not in LOOPS:
            raise ValueError(f"unknown loop {self.settings.loop!r}; choose one of {', '.join(LOOPS)}")
        problem = base and self.settings.problem_with(base, loaded[1].image_processor)
        if problem:
            raise LoadError(f"cannot track with {getattr(loaded[0], 'name_or_path', None) or 'the model'}: {problem}")
        if self.settings.memory:
            print("note: this model was trained with a memory frame (three-image questions); this tracker asks it "
                  "with the template and search crops only", file=sys.stderr)
        if loaded is not None:
            answerer = (FastAnswerer if fast else ModelAnswerer)(*loaded, self.settings, max_new_tokens)
        elif server is not None:
            answerer = ServerAnswerer(server, self.settings, server_model, max_new_tokens,
                                      chat_template_kwargs=served_chat_template_kwargs(server_model))
        elif answer_fn is not None:
            answerer = function_answerer(answer_fn)
        self.answerer = answerer
        self.name = name or "R1-Track"
        # the flag, else the threshold fitted to this model (its settings), else LOST_BELOW
        self.recover, self.lost_below = recover, next(
            x for x in (lost_below, self.settings.lost_below, LOST_BELOW) if x is not None)
        self.fallbacks = self.edge_holds = 0
        self.confidence, self.lost = 1.0, False

    # -- the GOT-10k toolkit's interface --

    def init(self, image, box_xywh):
        frame = self._frame(image)
        box_xywh = check_init_box(box_xywh, *_frame_size(frame))
        s = self.settings
        crop, self.template_box_xyxy, _, _ = crop_around(frame, box_xywh, s.template_factor, s.crop_size, loop=s.loop)
        self.template, self.template_jpeg = self._model_image(crop)
        self.previous_answer_xyxy = self.template_box_xyxy  # the answer reused before a first good one
        self.box_xywh = box_xywh
        self.fallbacks = self.edge_holds = self.misses = 0
        self.confidence, self.lost = 1.0, False  # the given box
        self.state = {}  # the answerer's per-sequence cache (e.g. the template's keys and values)

    def update(self, image) -> list[float]:
        return update_batch([self], [image])[0]

    def track(self, img_files, box_xywh, visualize=False):
        """The GOT-10k toolkit's run of a whole sequence: (boxes_xywh, seconds per frame)."""
        boxes, times = np.zeros((len(img_files), 4)), np.zeros(len(img_files))

        def keep(result):
            boxes[result.index], times[result.index] = result.targets[0].box_xywh, result.seconds

        frame_loop.run([frame_loop.Sequence(list(img_files), [frame_loop.Start(self, box_xywh)])], keep)
        return boxes, times

    # -- one frame in two halves, so that many sequences can share one model call --

    def request(self, image) -> Request:
        """The question for this frame: template, search crop around the last box, template box."""
        frame = self._frame(image)
        s = self.settings
        factor = s.search_factor
        if self.recover and self.misses:
            factor = min(s.search_factor * RECOVERY_GROWTH ** self.misses, max(RECOVERY_MAX_FACTOR, s.search_factor))
        crop, _, scale, origin = crop_around(frame, self.box_xywh, factor, s.crop_size, loop=s.loop)
        search, search_jpeg = self._model_image(crop)
        self.search_crop = (scale, origin, _frame_size(frame))
        jpegs = (self.template_jpeg, search_jpeg) if search_jpeg else None
        return Request(self.template, search, self.template_box_xyxy, self.state, jpegs, self.search_crop)

    def accept(self, answer) -> list[float]:
        """The frame box (x, y, w, h) from the answer (an Answer, or its text) to the last
        request. `confidence` becomes the answer's (0 for an unusable answer; None where the
        answerer cannot say, as a server or a function), and `lost` whether it is below `lost_below`."""
        answer = answer if isinstance(answer, Answer) else Answer(answer)
        s = self.settings
        published = s.loop == "published"
        box = answer_box(answer.text, s.crop_size, s.boxes, think=s.think, strict=published)
        if box is not None:
            box = clamp_box_xyxy(box, s.crop_size)
            if box[2] <= box[0] or box[3] <= box[1]:
                box = None
        self.confidence = answer.confidence if box is not None else 0.0
        self.lost = self.confidence is not None and self.confidence < self.lost_below
        if box is None:
            self.fallbacks += 1
            if self.recover:  # keep the last box and look wider next frame
                self.misses += 1
                return list(self.box_xywh)
            box = self.previous_answer_xyxy
        elif self.recover and self.lost:  # an answer the model doubts: hold the box, look wider
            self.misses += 1
            return list(self.box_xywh)
        self.misses = 0
        scale, origin, (width, height) = self.search_crop
        box_xywh = crop_to_frame(box, scale, origin)
        if published and touches_frame_edge(box_xywh, width, height):
            self.edge_holds += 1  # the published rule: keep the last box, and the last answer
            return list(self.box_xywh)
        self.previous_answer_xyxy = box
        self.box_xywh = box_xywh if published else clamp_box_xywh_to_frame(box_xywh, width, height)
        return list(self.box_xywh)

    def move_to(self, box_xywh) -> None:
        """Go on from `box_xywh`, as if the last frame had ended there (the next search crop is
        cut around it); the template and the answer reused after an unusable one stay."""
        self.box_xywh = [float(v) for v in box_xywh]

    def _frame(self, image):
        """Frames as each loop cuts them: arrays for OpenCV, PIL images for PIL."""
        return as_array(image) if self.settings.loop == "published" else as_pil(image)

    def _model_image(self, crop: np.ndarray):
        """(the crop as the model sees it, its JPEG bytes or None)."""
        if self.settings.loop == "published":
            return jpeg_round_trip(crop)
        return Image.fromarray(crop), None


class PytrackingTracker(Tracker):
    """The Tracker behind pytracking's interface: initialize(image, info), track(image)."""

    def initialize(self, image, info: dict) -> dict:
        self.init(image, info["init_bbox"])
        return {}

    def track(self, image, info=None):
        return {"target_bbox": self.update(image)}


def _frame_size(frame) -> tuple[int, int]:
    return frame.size if isinstance(frame, Image.Image) else (frame.shape[1], frame.shape[0])


def tracker_from_args(args, device=None, name=None, lost_below=None):
    """(the Tracker the tracking scripts' flags ask for, the loaded (model, processor) or None
    with a server): --model or --server and --server-model, the settings flags
    (add_settings_args), --recover, --dtype. What cannot be loaded is a UserError."""
    import torch

    options = dict(think=args.think, recover=args.recover, loop=args.loop, settings=args.settings,
                   lost_below=lost_below)
    opencv_on_one_thread()  # the crops are cut here, whoever answers
    if args.server:
        try:
            return Tracker(server=args.server, server_model=args.server_model, **options), None
        except LoadError as error:
            raise LoadError(f"{error}; name the tracking settings with --settings") from None
    loaded = load_model(args.model, dtype=getattr(torch, args.dtype) if args.dtype else None, device=device)
    if loaded[0].device.type == "cpu":
        leave_a_core_for_reading()
    return Tracker(loaded, name=name, **options), loaded


GROUNDING_TOKENS = 1024  # a frame is shown to the model in about a thousand image tokens


def locate_text(model, processor, image, description: str):
    """The box (x, y, w, h) of `description` in the image, or None. The frame is shrunk to a
    thousand image tokens first; Qwen2.5-VL answers in pixels of the image it saw, Qwen3-VL in
    thousandths of its width and height (the base's box convention)."""
    frame = as_pil(image)
    shown, side = frame, processor.base.token_side
    most = GROUNDING_TOKENS * side * side
    if frame.width * frame.height > most:
        ratio = math.sqrt(most / (frame.width * frame.height))
        shown = frame.resize((max(side, int(frame.width * ratio)), max(side, int(frame.height * ratio))),
                             Image.BILINEAR)
    messages = [{"role": "user", "content": [
        {"type": "image", "image": shown},
        {"type": "text", "text": f"Locate {description} in the image and output its bbox coordinates in JSON format."}]}]
    inputs = encode_chat(processor, messages, [shown])
    answer = generate_answers(model, processor, inputs, greedy_config(processor, 128))[0]
    if processor.base.boxes == "relative":
        seen = (bases.RELATIVE_RANGE, bases.RELATIVE_RANGE)
    else:  # the size the model saw after its own resizing
        _, grid_h, grid_w = inputs["image_grid_thw"][0].tolist()
        seen = (grid_w * processor.image_processor.patch_size, grid_h * processor.image_processor.patch_size)
    return grounding_box_xywh(answer, seen, frame.size)


def grounding_box_xywh(answer: str, seen_size, frame_size):
    """A grounding answer (`{"bbox_2d": [x1, y1, x2, y2], ...}` in units of which the image is
    `seen_size`: its pixels as the model saw it, or 1000 x 1000 in relative coordinates) as a
    frame box, or None when it holds no usable box."""
    box = parse_answer(answer)
    if box is None:
        return None
    sx, sy = frame_size[0] / seen_size[0], frame_size[1] / seen_size[1]
    x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    if x2 <= x1 or y2 <= y1:
        return None
    return clamp_box_xywh_to_frame(xyxy_to_xywh([x1, y1, x2, y2]), *frame_size)
