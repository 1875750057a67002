"""The tiny checkpoint, loading, and model inputs (compared with transformers' own processor)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import BASES, ROOT, crop_of
from PIL import Image

import bases
import r1track
import synthetic
from answers import answer_confidence
from prompts import (
    WORDINGS,
    _normalised_patches,
    build_inputs,
    build_messages,
    collate,
    greedy_config,
    image_patches,
    vision_token_ids,
)
from settings import PUBLISHED_SETTINGS, LoadError, TrackSettings, load_settings, read_settings

BOX = [12.7, 30, 80, 99.9]


def random_image(seed, size=112):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


# Qwen3.5 checkpoints name Qwen3-VL's processor (transformers has no Qwen3.5 one)
OFFICIAL_PROCESSORS = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor", "qwen3_5": "Qwen3VLProcessor"}


@pytest.fixture(scope="module")
def official_processor_of(tiny_of, monkeypatch_module):
    """base -> transformers' own processor of that base (Qwen2_5_VLProcessor, Qwen3VLProcessor)
    over the same tokenizer and image processor, with the base's chat template. Its constructor
    checks for a torchvision video processor; that check alone is bypassed."""
    import transformers
    from transformers.processing_utils import ProcessorMixin

    monkeypatch_module.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: type(arg))

    def get(base):
        _, processor = tiny_of(base)
        return getattr(transformers, OFFICIAL_PROCESSORS[base])(
            image_processor=processor.image_processor, tokenizer=processor.tokenizer, video_processor=None,
            chat_template=bases.named(base).chat_template)

    return get


@pytest.fixture(scope="module")
def official_processor(official_processor_of):
    return official_processor_of("qwen2_5_vl")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("wording", WORDINGS)
@pytest.mark.parametrize("think", [False, True])
def test_inputs_equal_the_official_processor(tiny_of, official_processor_of, wording, think, base):
    """The base's own processor, given the chat (its box in the base's convention), makes the
    same ids, token types, pixels and grids as build_inputs; Qwen2.5-VL's chat template puts in
    its default system message, Qwen3-VL's none."""
    _, processor = tiny_of(base)
    side = crop_of(base)
    template, search = random_image(0, side), random_image(1, side)
    convention = bases.named(base).boxes
    messages = build_messages(BOX, think=think, wording=wording, images=(template, search), boxes=convention,
                              crop_side=side)
    official = official_processor_of(base).apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                               return_dict=True, return_tensors="pt",
                                                               **bases.named(base).chat_template_kwargs)
    ours = build_inputs(processor, template, search, BOX, think=think, wording=wording)
    assert set(ours) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    for key in ours:
        assert torch.equal(ours[key], official[key]), key
    assert int((ours["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 2 * 16
    text = processor.tokenizer.decode(ours["input_ids"][0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>") == (base == "qwen2_5_vl")
    assert ("[12,30,80,99]" if convention == "pixels" else "[99,234,625,780]") in text
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n" if base == "qwen3_5"
                         else "<|im_start|>assistant\n")  # Qwen3.5 answers after an empty thought


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("wording", WORDINGS)
def test_a_memory_frame_is_a_third_image_the_official_processor_reads_alike(tiny_of, official_processor_of, wording,
                                                                              base):
    """With a memory frame the question has three images (template, memory, search) and names
    both boxes in the base's convention; the base's own processor makes the same inputs, and
    the model reads them (its 3D positions over three images)."""
    model, processor = tiny_of(base)
    side = crop_of(base)
    template, memory, search = random_image(0, side), random_image(2, side), random_image(1, side)
    convention = bases.named(base).boxes
    memory_box = [20, 10, 60, 50]
    messages = build_messages(BOX, wording=wording, images=(template, memory, search), boxes=convention,
                              crop_side=side, memory_box_xyxy=memory_box)
    official = official_processor_of(base).apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                               return_dict=True, return_tensors="pt",
                                                               **bases.named(base).chat_template_kwargs)
    ours = build_inputs(processor, template, search, BOX, wording=wording, memory_img=memory,
                        memory_box_xyxy=memory_box)
    for key in ours:
        assert torch.equal(ours[key], official[key]), key
    assert int((ours["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 3 * 16
    text = processor.tokenizer.decode(ours["input_ids"][0])
    boxes = ("[12,30,80,99]", "[20,10,60,50]") if convention == "pixels" else \
        ("[99,234,625,780]", "[" + ",".join(str(round(v * 1000 / side)) for v in memory_box) + "]")
    assert text.index(boxes[0]) < text.index(boxes[1])
    assert ("third image" if wording == "seed" else "<image_3>") in text
    with torch.inference_mode():
        logits = model(**ours).logits
    assert logits.shape[1] == ours["input_ids"].shape[1] and torch.isfinite(logits).all()


@pytest.mark.parametrize("base", BASES)
def test_pixels_sent_as_bytes_become_the_processors_pixel_values(tiny_of, official_processor_of, base):
    """Training examples travel from the data workers with their pixels as bytes (an eighth
    of the floats); on the model's device they become the official processor's pixel_values,
    to the last bit."""
    import training

    _, processor = tiny_of(base)
    official_processor = official_processor_of(base)
    pad = processor.tokenizer.pad_token_id
    side = crop_of(base)
    crops = [(random_image(10 + 2 * k, side), random_image(11 + 2 * k, side)) for k in range(3)]
    sent = [build_inputs(processor, t, s, BOX, answer="[1,2,3,4]", return_tensors=False,
                                 pixels_as_bytes=True) for t, s in crops]
    assert "pixel_values" not in sent[0] and sent[0]["patch_bytes"].dtype == torch.uint8
    batch = training.to_device(collate(sent, pad), "cpu", processor.image_processor)
    official = official_processor.image_processor(images=[image for pair in crops for image in pair],
                                                  return_tensors="pt")
    assert "patch_bytes" not in batch and torch.equal(batch["pixel_values"], official["pixel_values"])
    assert torch.equal(batch["image_grid_thw"], official["image_grid_thw"])
    assert sent[0]["patch_bytes"].nbytes * 8 == batch["pixel_values"].nbytes // 3


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("tokens_high, tokens_wide", [(12, 12), (3, 6), (6, 2)])
def test_cpu_patches_of_any_kept_size_equal_the_processors(tiny_of, official_processor_of, tokens_high, tokens_wide,
                                                           base):
    """The CPU path (_normalised_patches: lookup planes gathered into patch order) on the
    tracking size (336 px for Qwen2.5-VL, 384 for Qwen3-VL), on crops wider or taller than
    high, several at once: the official processor's pixel_values to the last bit, in its order."""
    _, processor = tiny_of(base)
    official_processor = official_processor_of(base)
    height, width = (tokens * bases.named(base).token_side for tokens in (tokens_high, tokens_wide))
    rng = np.random.default_rng(height * width)
    arrays = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(3)]
    ours = image_patches(arrays, processor.image_processor)
    official = official_processor.image_processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")
    assert torch.equal(ours["image_grid_thw"], official["image_grid_thw"])
    assert torch.equal(ours["pixel_values"], official["pixel_values"])
    # and the CPU path itself, which image_patches takes only for sizes the processor keeps
    assert torch.equal(_normalised_patches(arrays, processor.image_processor), official["pixel_values"])


@pytest.mark.parametrize("base", BASES)
def test_answer_tokens_and_labels(tiny_of, official_processor_of, base):
    _, processor = tiny_of(base)
    template, search = random_image(2, crop_of(base)), random_image(3, crop_of(base))
    messages = build_messages(BOX, images=(template, search), boxes=bases.named(base).boxes,
                              crop_side=crop_of(base)) + [{"role": "assistant", "content": "[3,40,57,99]"}]
    official = official_processor_of(base).apply_chat_template(messages, tokenize=True, return_dict=True,
                                                               return_tensors="pt")
    ours = build_inputs(processor, template, search, BOX, answer="[3,40,57,99]")
    # the official rendering ends the turn with "<|im_end|>\n"; training stops at the end token
    assert torch.equal(ours["input_ids"], official["input_ids"][:, :-1])
    labels = ours["labels"][0]
    trained = labels != -100
    assert torch.equal(labels[trained], ours["input_ids"][0][trained])
    assert trained.nonzero().min() == len(labels) - trained.sum()  # one run at the very end
    assert processor.tokenizer.decode(labels[trained]) == "[3,40,57,99]<|im_end|>"


def test_tiny_tokenizer_is_qwen_shaped(tiny):
    model, processor = tiny
    tokenizer = processor.tokenizer
    assert tokenizer.tokenize("[241,66,329,154]") == list("[241,66,329,154]")
    for token in synthetic.QWEN_SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
        assert tokenizer.tokenize(token) == [token]
    config = model.config
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.decode(tokenizer("any text, even 中文!")["input_ids"]) == "any text, even 中文!"


def test_tiny_checkpoint_is_small_and_safetensors(tiny_model_dir, tiny):
    model, _ = tiny
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert not list(tiny_model_dir.glob("*.bin")) and not list(tiny_model_dir.glob("*.pt"))
    settings = json.loads((tiny_model_dir / "r1track.json").read_text())
    assert settings["crop_size"] == 112 and settings["wording"] == "seed"


@pytest.mark.parametrize("base", BASES)
def test_tiny_checkpoint_loads_with_plain_transformers(tiny_dir_of, tiny_of, base):
    """The folder is a checkpoint as the hub has them: plain transformers loads the same weights
    into its own class for the config (AutoModelForImageTextToText), and its own tokenizer and
    image processor encode a question as ours do."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    folder = tiny_dir_of(base)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert type(model).__name__ == bases.named(base).model_class
    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    ours, processor = tiny_of(base)
    assert model.config.text_config.vocab_size == len(tokenizer)
    weights = dict(ours.named_parameters())
    assert {n for n, _ in model.named_parameters()} == set(weights)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    template, search = random_image(1, crop_of(base)), random_image(2, crop_of(base))
    messages = build_messages(BOX, images=(template, search))
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.count("<|vision_start|><|image_pad|><|vision_end|>") == 2  # its template keeps the images
    vision = image_processor(images=[template, search], return_tensors="pt")
    inputs = build_inputs(processor, template, search, BOX)
    assert torch.equal(vision["image_grid_thw"], inputs["image_grid_thw"])
    assert torch.equal(vision["pixel_values"], inputs["pixel_values"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ours(**inputs).logits)


def test_same_seed_same_weights(tmp_path, tiny):
    model, _ = tiny
    again, _ = r1track.load_model(str(synthetic.save_tiny_model(tmp_path / "again", seed=0)), device="cpu")
    other, _ = r1track.load_model(str(synthetic.save_tiny_model(tmp_path / "other", seed=1)), device="cpu")
    weights = dict(model.named_parameters())
    assert all(torch.equal(p, weights[n]) for n, p in again.named_parameters())
    assert not all(torch.equal(p, weights[n]) for n, p in other.named_parameters())


def test_generate_answers_decodes_the_greedy_tokens_and_their_confidence(sft_warm, pairs16):
    """generate_answers on build_inputs gives the text of the tokens a forward pass at a time
    chooses greedily (vision tokens never), up to the end of the turn, and answer_confidence of
    the log-probabilities of those choices (a trained model: its answer is a box, with digits)."""
    import data

    model, processor = r1track.load_model(str(sft_warm), device="cpu")
    tokenizer = processor.tokenizer
    pair = data.open_pairs(str(pairs16), 112).load(0)
    inputs = build_inputs(processor, pair.template, pair.search, pair.template_box_xyxy)
    texts, confidences = r1track.generate_answers(model, processor, inputs, greedy_config(processor, 48),
                                                  confidences=True)
    ids, chosen, logprobs = inputs["input_ids"], [], []
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        while not chosen or chosen[-1] != end:
            batch = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids),
                     "mm_token_type_ids": torch.nn.functional.pad(inputs["mm_token_type_ids"], (0, len(chosen)))}
            logits = model(**batch).logits[0, -1].float()
            logits[vision_token_ids(tokenizer)] = float("-inf")
            chosen.append(int(logits.argmax()))
            logprobs.append(float(logits.log_softmax(-1)[chosen[-1]]))
            ids = torch.cat([ids, torch.tensor([[chosen[-1]]])], 1)
    assert texts == [tokenizer.decode(chosen, skip_special_tokens=True)]
    assert any(c.isdigit() for c in texts[0])
    assert confidences[0] == pytest.approx(answer_confidence(tokenizer, chosen, logprobs), abs=1e-5)


@pytest.mark.parametrize("base", BASES)
def test_left_padded_batch_equals_rows_one_by_one(tiny_of, base):
    """A batch of prompts of different lengths gives each row the logits it gets alone,
    which needs the 3D positions to skip the padding."""
    model, processor = tiny_of(base)
    pad = processor.tokenizer.pad_token_id
    side = crop_of(base)
    examples = [
        build_inputs(processor, random_image(6, side), random_image(7, side), BOX, return_tensors=False),
        build_inputs(processor, random_image(8, side), random_image(9, side), BOX, think=True, return_tensors=False),
    ]
    assert len(examples[0]["input_ids"]) != len(examples[1]["input_ids"])
    with torch.no_grad():
        alone = torch.cat([model(**collate([e], pad)).logits[:, -1] for e in examples])
        batched = model(**collate(examples, pad)).logits[:, -1]
    assert torch.allclose(alone, batched, atol=1e-5)
    batch = collate(examples, pad)
    batch.pop("mm_token_type_ids")
    with torch.no_grad():
        if base != "qwen2_5_vl":  # it needs the token types for its positions, and says so
            with pytest.raises(ValueError, match="mm_token_type_ids"):
                model(**batch)
            return
        without_types = model(**batch).logits[:, -1]
    assert not torch.allclose(alone, without_types, atol=1e-5)  # the check above can fail


def test_left_padding_ends_every_row_with_its_answer(tiny):
    _, processor = tiny
    pad = processor.tokenizer.pad_token_id
    examples = [build_inputs(processor, random_image(i), random_image(i + 1), BOX, answer=answer,
                                     return_tensors=False)
                for i, answer in ((10, "[1,2,3,4]"), (12, "[100,200,300,310]"))]
    batch = collate(examples, pad)
    width = batch["input_ids"].shape[1]
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        assert batch["input_ids"][row, width - n:].tolist() == example["input_ids"]
        assert batch["labels"][row, width - n:].tolist() == example["labels"]
        assert (batch["labels"][row, :width - n] == -100).all() and (batch["attention_mask"][row, :width - n] == 0).all()
        assert batch["input_ids"][row, :width - n].eq(pad).all()
    assert len(examples[0]["input_ids"]) != len(examples[1]["input_ids"])  # so one row really is padded
    assert batch["pixel_values"].shape[0] == 4 * 64


def test_settings_round_trip_and_published_defaults(tmp_path):
    TrackSettings(wording="r1track-100k", think=True, crop_size=224, loop="lenient").save(tmp_path)
    assert load_settings(str(tmp_path)) == TrackSettings("r1track-100k", True, 224, loop="lenient")
    assert load_settings(str(tmp_path / "r1track.json")).crop_size == 224  # the file itself
    assert load_settings("WangBiao/R1-Track-GRPO-wo-Think-100k").wording == "r1track-100k"
    assert load_settings("WangBiao/R1-Track-GRPO-5k").think is True
    assert load_settings("WangBiao/R1-Track-SFT-5k-lora") == TrackSettings()
    assert all(s.loop == "published" for s in PUBLISHED_SETTINGS.values())


def test_a_settings_file_from_before_loops_means_the_lenient_loop(tmp_path):
    """Checkpoints saved before the loop setting existed were trained on antialiased crops."""
    (tmp_path / "r1track.json").write_text('{"wording": "seed", "think": false, "crop_size": 112}')
    assert load_settings(str(tmp_path)).loop == "lenient"


def test_a_checkpoint_without_settings_gets_the_defaults_said_on_stderr(tmp_path, capsys):
    assert read_settings(str(tmp_path)) is None
    assert load_settings(str(tmp_path)) == TrackSettings()
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and str(tmp_path) in note[0] and "default settings (wording seed" in note[0]


@pytest.mark.parametrize("text, message", [
    ('{"wording": "nonsense"}', "wording"), ("{not json", "not valid tracking settings"),
    ('{"wording": "seed", "crop": 336}', "unknown tracking settings crop"), ('{"loop": "mine"}', "loop"),
    ('{"think": "yes"}', "think"), ('{"crop_size": 0}', "crop_size"), ('{"search_factor": -4}', "factors"),
    ("[1, 2]", "JSON object"),
])
def test_unreadable_settings_are_an_error_not_the_defaults(tmp_path, text, message):
    (tmp_path / "r1track.json").write_text(text)
    with pytest.raises(LoadError, match=message) as error:
        load_settings(str(tmp_path))
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


HUB_SCRIPT = """
import json
from settings import LoadError, read_settings
out = {}
for repo in ["org/with-settings", "org/no-settings", "org/private"]:
    try:
        out[repo] = read_settings(repo).describe() if read_settings(repo) else None
    except LoadError as error:
        out[repo] = "LoadError: " + str(error)
print(json.dumps(out))
"""


def test_hub_settings_through_a_hub_on_this_machine(tmp_path):
    """huggingface_hub itself asks a hub served on 127.0.0.1: a repository with settings, one
    without (404, EntryNotFound: the defaults), and one the user may not read (401: an error)."""
    import http.server
    import threading

    settings = json.dumps({"wording": "r1track-100k", "crop_size": 224, "loop": "lenient"}).encode()

    class Hub(http.server.BaseHTTPRequestHandler):
        def answer(self, with_body):
            repo, file = "/".join(self.path.strip("/").split("/")[:2]), self.path.rsplit("/", 1)[-1]
            code, body, headers = 500, b"", {}
            if repo == "org/with-settings" and file == "r1track.json":
                code, body, headers = 200, settings, {"X-Repo-Commit": "a" * 40, "ETag": '"e1"'}
            elif repo == "org/no-settings":
                code, body, headers = 404, b"Entry not found", {"X-Error-Code": "EntryNotFound"}
            elif repo == "org/private":
                code, body, headers = 401, b"Invalid credentials", {"X-Error-Code": "RepoNotFound"}
            self.send_response(code)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_HEAD(self):
            self.answer(False)

        def do_GET(self):
            self.answer(True)

        def log_message(self, *args):
            pass

    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}", "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "hf")}
        result = subprocess.run([sys.executable, "-c", HUB_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
    finally:
        hub.shutdown()
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)
    assert found["org/with-settings"].startswith("wording r1track-100k, think off, 224-px crops")
    assert found["org/no-settings"] is None
    assert found["org/private"].startswith("LoadError: cannot read r1track.json of org/private: 401")

OFFLINE_SCRIPT = """
import json, r1track
from settings import LoadError, read_settings
out = {}
for repo in ["org/full", "org/adapter", "org/with-settings", "org/known-absent", "org/uncached"]:
    try:
        found = read_settings(repo)
        out[repo] = found.describe() if found else None
    except LoadError as error:
        out[repo] = "LoadError: " + str(error)
out["adapter base"] = r1track._adapter_base("org/adapter")
print(json.dumps(out))
"""


def test_offline_settings_come_from_the_hub_cache(tmp_path):
    """HF_HUB_OFFLINE=1 with repositories laid out in huggingface_hub's own cache: a cached
    model or adapter without r1track.json has none (the defaults), a cached r1track.json is
    read, and a name that is not in the cache at all is an error rather than a guess."""
    commit = "0123456789abcdef0123456789abcdef01234567"

    def cached(repo, files, absent=()):
        folder = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(commit)
        for name, text in files.items():
            (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
            (folder / "snapshots" / commit / name).write_text(text)
        for name in absent:
            (folder / ".no_exist" / commit).mkdir(parents=True, exist_ok=True)
            (folder / ".no_exist" / commit / name).touch()

    cached("org/full", {"config.json": "{}"})
    cached("org/adapter", {"adapter_config.json": json.dumps({"base_model_name_or_path": "org/full"})})
    cached("org/with-settings", {"config.json": "{}", "r1track.json": json.dumps({"crop_size": 224, "loop": "lenient"})})
    cached("org/known-absent", {}, absent=["r1track.json"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)
    assert found["org/full"] is None and found["org/adapter"] is None and found["org/known-absent"] is None
    assert found["org/with-settings"].startswith("wording seed, think off, 224-px crops")
    assert found["org/uncached"].startswith("LoadError: org/uncached is not in the local hub cache")
    assert found["adapter base"] == "org/full"
