"""The tiny checkpoint, loading, and model inputs (compared with transformers' own processor)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import r1track

BOX = [12.7, 30, 80, 99.9]


def random_image(seed, size=112):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def official_processor(tiny, monkeypatch_module):
    """transformers' Qwen2_5_VLProcessor over the same tokenizer and image processor. Its
    constructor checks for a torchvision video processor; that check alone is bypassed."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    monkeypatch_module.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: type(arg))
    _, processor = tiny
    return Qwen2_5_VLProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                               video_processor=None, chat_template=r1track.QWEN2_5_VL_CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("wording", r1track.WORDINGS)
@pytest.mark.parametrize("think", [False, True])
def test_inputs_equal_the_official_processor(tiny, official_processor, wording, think):
    _, processor = tiny
    template, search = random_image(0), random_image(1)
    messages = r1track.build_messages(BOX, think=think, wording=wording, images=(template, search))
    official = official_processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                      return_dict=True, return_tensors="pt")
    ours = r1track.build_inputs(processor, template, search, BOX, think=think, wording=wording)
    assert set(ours) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    for key in ours:
        assert torch.equal(ours[key], official[key]), key
    assert int((ours["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 2 * 16


def test_answer_tokens_and_labels(tiny, official_processor):
    _, processor = tiny
    template, search = random_image(2), random_image(3)
    messages = r1track.build_messages(BOX, images=(template, search)) + [
        {"role": "assistant", "content": "[3,40,57,99]"}]
    official = official_processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    ours = r1track.build_inputs(processor, template, search, BOX, answer="[3,40,57,99]")
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
    for token in r1track.QWEN_SPECIAL_TOKENS:
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


def test_tiny_checkpoint_loads_with_plain_transformers(tiny_model_dir):
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.text_config.vocab_size == len(tokenizer)


def test_same_seed_same_weights(tmp_path, tiny):
    model, _ = tiny
    again, _ = r1track.load_model(str(r1track.save_tiny_model(tmp_path / "again", seed=0)), device="cpu")
    other, _ = r1track.load_model(str(r1track.save_tiny_model(tmp_path / "other", seed=1)), device="cpu")
    weights = dict(model.named_parameters())
    assert all(torch.equal(p, weights[n]) for n, p in again.named_parameters())
    assert not all(torch.equal(p, weights[n]) for n, p in other.named_parameters())


def test_generate_from_build_inputs(tiny):
    model, processor = tiny
    inputs = r1track.build_inputs(processor, random_image(4), random_image(5), BOX)
    answers = r1track.generate_answers(model, processor, inputs, r1track.greedy_config(processor, 6))
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_left_padded_batch_equals_rows_one_by_one(tiny):
    """A batch of prompts of different lengths gives each row the logits it gets alone,
    which needs the 3D positions to skip the padding."""
    model, processor = tiny
    pad = processor.tokenizer.pad_token_id
    examples = [
        r1track.build_inputs(processor, random_image(6), random_image(7), BOX, return_tensors=False),
        r1track.build_inputs(processor, random_image(8), random_image(9), BOX, think=True, return_tensors=False),
    ]
    assert len(examples[0]["input_ids"]) != len(examples[1]["input_ids"])
    with torch.no_grad():
        alone = torch.cat([model(**r1track.collate([e], pad, "left")).logits[:, -1] for e in examples])
        batched = model(**r1track.collate(examples, pad, "left")).logits[:, -1]
        batch = r1track.collate(examples, pad, "left")
        batch.pop("mm_token_type_ids")
        without_types = model(**batch).logits[:, -1]
    assert torch.allclose(alone, batched, atol=1e-5)
    assert not torch.allclose(alone, without_types, atol=1e-5)  # the check above can fail


def test_right_padding_keeps_labels_aligned(tiny):
    _, processor = tiny
    pad = processor.tokenizer.pad_token_id
    examples = [r1track.build_inputs(processor, random_image(i), random_image(i + 1), BOX, answer=answer,
                                     return_tensors=False)
                for i, answer in ((10, "[1,2,3,4]"), (12, "[100,200,300,310]"))]
    batch = r1track.collate(examples, pad, "right")
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == example["input_ids"]
        assert (batch["labels"][row, n:] == -100).all() and (batch["attention_mask"][row, n:] == 0).all()
    assert batch["pixel_values"].shape[0] == 4 * 64


def test_settings_round_trip_and_published_defaults(tmp_path):
    r1track.TrackSettings(wording="r1track-100k", think=True, crop_size=224).save(tmp_path)
    assert r1track.load_settings(str(tmp_path)) == r1track.TrackSettings("r1track-100k", True, 224)
    assert r1track.load_settings("WangBiao/R1-Track-GRPO-wo-Think-100k").wording == "r1track-100k"
    assert r1track.load_settings("WangBiao/R1-Track-GRPO-5k").think is True
    assert r1track.load_settings("WangBiao/R1-Track-SFT-5k-lora") == r1track.TrackSettings()
    (tmp_path / "r1track.json").write_text('{"wording": "nonsense"}')
    with pytest.raises(ValueError, match="wording"):
        r1track.load_settings(str(tmp_path))
