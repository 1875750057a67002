"""Compatibility with what the R1-Track authors published, built the way their tools built it:
LoRA adapters saved in the older module layout, full checkpoints with the older flat config,
parquet files written by the `datasets` library, and their inference loop (transcribed with
OpenCV in published_r1track.py) on frames of GOT-10k's real size."""
import base64
import io
import json
import shutil

import cv2
import numpy as np
import published_r1track
import pytest
import torch
from conftest import ChatServer, run_main, run_script
from PIL import Image
from safetensors.torch import load_file, save_file

import data
import r1track
from benchmarks import got10k
from boxes import crop_around
from frames import read_frame
from prompts import build_inputs
from settings import LoadError, TrackSettings

# -----------------------------------------------------------------------------
# Checkpoints as published


def random_pair_inputs(processor, seed=0, size=112):
    rng = np.random.default_rng(seed)
    template, search = (Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(2))
    return build_inputs(processor, template, search, [10, 12, 60, 70])


def logits_of(model, processor, seed=0):
    with torch.no_grad():
        return model(**random_pair_inputs(processor, seed)).logits


# LLaMA-Factory's `lora_target: all` on Qwen2.5-VL: every linear layer, by its short name
LLAMA_FACTORY_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv", "proj"]


def older_layout(key: str) -> str:
    """An adapter key as peft saved it over transformers < 4.52, whose Qwen2.5-VL class held the
    text model at `model.` and the vision tower at `visual.`."""
    return (key.replace("base_model.model.model.language_model.", "base_model.model.model.")
               .replace("base_model.model.model.visual.", "base_model.model.visual."))


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter of the tiny model with non-zero weights, saved by today's peft and again
    with its keys in the older layout; and the logits of the adapter applied in memory."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("adapters")
    model, processor = r1track.load_model(str(tiny_model_dir), device="cpu")
    base_logits = logits_of(model, processor)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LLAMA_FACTORY_TARGETS))
    for name, weight in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: an adapter that changes nothing proves nothing
            torch.nn.init.normal_(weight, std=0.3)
    expected = logits_of(peft_model, processor)
    assert (expected - base_logits).abs().max() > 0.1
    today = folder / "today"
    peft_model.save_pretrained(today)
    config = json.loads((today / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_model_dir)
    (today / "adapter_config.json").write_text(json.dumps(config))
    older = folder / "older"
    shutil.copytree(today, older)
    weights = load_file(today / "adapter_model.safetensors")
    save_file({older_layout(k): v for k, v in weights.items()}, older / "adapter_model.safetensors",
              metadata={"format": "pt"})
    assert any(k.startswith("base_model.model.visual.") for k in load_file(older / "adapter_model.safetensors"))
    return {"today": today, "older": older, "logits": expected, "processor": processor}


@pytest.mark.parametrize("layout", ["today", "older"])
@pytest.mark.parametrize("merge", [True, False])
def test_adapter_loads_with_every_weight_applied(adapters, layout, merge):
    model, processor = r1track.load_model(str(adapters[layout]), device="cpu", merge_adapter=merge)
    assert (logits_of(model, processor) - adapters["logits"]).abs().max() < 1e-4


def test_adapter_whose_keys_match_nothing_is_an_error(adapters, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(adapters["today"], broken)
    weights = load_file(broken / "adapter_model.safetensors")
    save_file({k.replace("base_model.model.", "base_model.model.decoder."): v for k, v in weights.items()},
              broken / "adapter_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LoadError, match="not every weight of this adapter") as error:
        r1track.load_model(str(broken), device="cpu")
    assert "\n" not in str(error.value) and "weights missing from it" in str(error.value)


def test_adapter_missing_one_tensor_is_an_error(adapters, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(adapters["older"], broken)
    weights = load_file(broken / "adapter_model.safetensors")
    gone = sorted(weights)[5]
    del weights[gone]
    save_file(weights, broken / "adapter_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LoadError, match="1 weights missing"):
        r1track.load_model(str(broken), device="cpu")


def flat_config(nested: dict) -> dict:
    """config.json as transformers < 4.52 wrote it for Qwen2.5-VL (the published checkpoints):
    text settings at the top level, rope_scaling with type mrope, a vision_config of its own."""
    text, vision = nested["text_config"], nested["vision_config"]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0, "bos_token_id": text["bos_token_id"], "eos_token_id": text["eos_token_id"],
        "vision_start_token_id": nested["vision_start_token_id"], "vision_end_token_id": nested["vision_end_token_id"],
        "vision_token_id": nested["image_token_id"] - 1, "image_token_id": nested["image_token_id"],
        "video_token_id": nested["video_token_id"], "hidden_act": "silu", "hidden_size": text["hidden_size"],
        "initializer_range": 0.02, "intermediate_size": text["intermediate_size"],
        "max_position_embeddings": text["max_position_embeddings"], "max_window_layers": 70,
        "num_attention_heads": text["num_attention_heads"], "num_hidden_layers": text["num_hidden_layers"],
        "num_key_value_heads": text["num_key_value_heads"], "rms_norm_eps": 1e-06,
        "rope_theta": text["rope_parameters"]["rope_theta"], "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "float32", "transformers_version": "4.49.0", "use_cache": True, "use_sliding_window": False,
        "vision_config": {
            "depth": vision["depth"], "hidden_act": "silu", "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"], "num_heads": vision["num_heads"], "in_chans": 3,
            "out_hidden_size": vision["out_hidden_size"], "patch_size": 14, "spatial_merge_size": 2,
            "spatial_patch_size": 14, "window_size": vision["window_size"],
            "fullatt_block_indexes": vision["fullatt_block_indexes"], "tokens_per_second": 2,
            "temporal_patch_size": 2},
        "rope_scaling": {"type": "mrope", "mrope_section": text["rope_parameters"]["mrope_section"]},
        "vocab_size": text["vocab_size"],
    }


OLD_PREPROCESSOR = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                    "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                    "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor",
                    "processor_class": "Qwen2_5_VLProcessor"}


def test_full_checkpoint_in_the_older_layout_gives_the_same_logits(tiny, tiny_model_dir, tmp_path):
    older = tmp_path / "older"
    shutil.copytree(tiny_model_dir, older)
    (older / "config.json").write_text(json.dumps(flat_config(json.loads((tiny_model_dir / "config.json").read_text()))))
    (older / "preprocessor_config.json").write_text(json.dumps(OLD_PREPROCESSOR))
    weights = load_file(older / "model.safetensors")
    assert any(k.startswith("visual.") for k in weights) and any(k.startswith("model.layers.") for k in weights)
    model, processor = r1track.load_model(str(older), device="cpu")
    assert torch.equal(logits_of(model, processor), logits_of(*tiny))


def test_checkpoint_with_a_removed_tensor_is_a_one_line_error(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LoadError, match=r"1 weights missing from it \(model.language_model.layers.1.mlp"):
        r1track.load_model(str(broken), device="cpu")
    clip = tmp_path / "frames"
    clip.mkdir()
    Image.new("RGB", (64, 48), "white").save(clip / "0001.png")
    result = run_script("track.py", "--video", clip, "--box", "10,10,30,30", "--model", broken, "--out", tmp_path / "o")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "down_proj.weight" in lines[0], result.stderr


# -----------------------------------------------------------------------------
# Data as published


def published_pair_folders(got10k_root, folder, count, seed=0):
    """Pairs cut as the published sampling_data.py cut R1-Track-5k: OpenCV crops (factor in
    [2, 8], centre moved by up to a fifth of the side), written with cv2.imwrite, boxes as
    int-truncated x1,y1,x2,y2 text files, one pair_NNNNNN folder each."""
    rng = np.random.default_rng(seed)
    names = got10k.read_got10k_split(got10k_root / "val")
    for index in range(count):
        sequence = got10k.read_got10k_sequence(got10k_root / "val" / names[index % len(names)])
        pair = folder / f"pair_{index + 1:06d}"
        pair.mkdir(parents=True)
        frames = rng.choice(np.nonzero(sequence["cover"] > 0)[0], size=2, replace=False)
        for number, frame in enumerate(frames, start=1):
            image = cv2.imread(str(sequence["frames"][frame]))
            crop, scale, box, corner = published_r1track.sample_target(
                image, list(sequence["boxes_xywh"][frame]), rng.uniform(2, 8), 336)
            cv2.imwrite(str(pair / f"image_{number}.jpg"), crop)
            (pair / f"bbox_{number}.txt").write_text(",".join(str(int(v)) for v in box))


def write_with_datasets(pair_root, parquet):
    """gen_huggingface_data.py: Dataset.from_generator over the pair folders, the 100k wording
    after `<image> <image>`, shuffled with seed 42, to_parquet."""
    from datasets import Dataset

    def rows():
        for pair in sorted(pair_root.iterdir()):
            box_1, box_2 = ((pair / f"bbox_{n}.txt").read_text().strip() for n in (1, 2))
            yield {"images": [{"bytes": (pair / f"image_{n}.jpg").read_bytes(), "path": f"image_{n}.jpg"}
                              for n in (1, 2)],
                   "problem": "<image> <image>Given two images, you need to:\n1. Analyze and Identify the target "
                              f"object marked by bounding box [{box_1}] in <image_1>;\n2. Re-locate this target in "
                              "<image_2>;\n3. Return [x_min, y_min, x_max, y_max] coordinates of the target in <image_2>.",
                   "answer": f"[{box_2}]"}

    parquet.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_generator(rows).shuffle(seed=42).to_parquet(str(parquet))


@pytest.fixture(scope="module")
def published_dataset(got10k_root, tmp_path_factory):
    """A dataset folder as the published scripts made it: train/R1-Track-336-v0.parquet, and a
    validation file beside it in val/."""
    root = tmp_path_factory.mktemp("hf")
    published_pair_folders(got10k_root, root / "pairs-train", 12, seed=0)
    published_pair_folders(got10k_root, root / "pairs-val", 4, seed=1)
    write_with_datasets(root / "pairs-train", root / "data" / "train" / "R1-Track-336-v0.parquet")
    write_with_datasets(root / "pairs-val", root / "data" / "val" / "R1-Track-336-v0.parquet")
    return root


def test_datasets_parquet_reads_as_the_published_pairs(published_dataset):
    train = data.open_pairs(str(published_dataset / "data"), 336, split="train")
    val = data.open_pairs(str(published_dataset / "data"), 336, split="val")
    assert (len(train), len(val), train.skipped) == (12, 4, 0)  # no validation row in training
    expected = {}
    for pair in sorted((published_dataset / "pairs-train").iterdir()):
        boxes = [[float(v) for v in (pair / f"bbox_{n}.txt").read_text().split(",")] for n in (1, 2)]
        expected[(pair / "image_2.jpg").read_bytes()] = (boxes, (pair / "image_1.jpg").read_bytes())
    for index in range(len(train)):  # rows are shuffled: find each one's pair folder by its search image
        loaded = train.load(index)
        boxes, template_bytes = next(value for key, value in expected.items() if np.array_equal(
            np.asarray(Image.open(io.BytesIO(key)).convert("RGB")), np.asarray(loaded.search)))
        assert [loaded.template_box_xyxy, loaded.search_box_xyxy] == boxes
        assert np.array_equal(np.asarray(loaded.template), np.asarray(Image.open(io.BytesIO(template_bytes))))


def test_sft_trains_on_the_datasets_parquet_folder(published_dataset, tiny_model_dir, tmp_path):
    result = run_main("train_sft.py", "--model", tiny_model_dir, "--data", published_dataset / "data",
                      "--wording", "r1track-100k", "--crop-size", "112", "--out", tmp_path / "sft", "--full",
                      "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1", "--val-size", "2",
                      "--no-gradient-checkpointing")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training data: " in result.stdout and ": 12 usable" in result.stdout
    assert "validation data: " in result.stdout and ": 4 usable" in result.stdout


@pytest.mark.parametrize("files, message", [
    (["train/a.parquet", "extra/b.parquet"], "cannot tell the split of extra/b.parquet"),
    (["train_val.parquet"], "cannot tell the split of train_val.parquet"),
])
def test_a_parquet_file_of_no_split_is_refused(published_dataset, tmp_path, files, message):
    source = published_dataset / "data" / "train" / "R1-Track-336-v0.parquet"
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, tmp_path / name)
    with pytest.raises(ValueError, match=message) as error:
        data.open_pairs(str(tmp_path), 336)
    assert "files found" in str(error.value)


@pytest.mark.parametrize("name, split", [
    ("data/train-00000-of-00001.parquet", "train"), ("data/validation-00000-of-00002.parquet", "val"),
    ("val/R1-Track-336-v0.parquet", "val"), ("test/part.parquet", "test"), ("R1-Track_train.parquet", "train"),
    ("training/x.parquet", "train"), ("retrain/x.parquet", None), ("constrain.parquet", None),
])
def test_split_is_told_by_a_word_of_the_file_or_folder_name(tmp_path, name, split):
    from data import _split_of

    assert _split_of(tmp_path / name, tmp_path) == split
    # inside a folder given as the data, say data/train, a name without a split word is of that folder's split
    assert _split_of(tmp_path / "train" / name, tmp_path / "train") == (split or "train")


# -----------------------------------------------------------------------------
# The published inference loop, detail by detail


def edge_clip(folder, frames=18, size=(1920, 1080)):
    """A GOT-10k test-split sequence at GOT-10k's real frame size: a textured frame with a
    patterned target, the first box in groundtruth.txt, frames as JPEG."""
    rng = np.random.default_rng(7)
    base = cv2.resize(rng.integers(0, 256, (27, 48, 3), dtype=np.uint8), size, interpolation=cv2.INTER_CUBIC)
    folder.mkdir(parents=True)
    for t in range(frames):
        frame = np.roll(base, 9 * t, axis=1)
        x, y = 860 + 80 * t, 470 - 40 * t
        frame[max(y, 0):max(y + 150, 0), x:x + 200] = (40 + 10 * t, 200, 90)
        cv2.imwrite(str(folder / f"{t + 1:08d}.jpg"), frame)
    (folder / "groundtruth.txt").write_text("860.0000,470.0000,200.0000,150.0000\n")
    return folder


# Scripted answers (search-crop pixels of a 336-px crop): moves that drive the box into the
# right and top frame edges, floats, negatives, the whole crop, and answers the published
# loop must not use: unparsable, the wrong length, degenerate, empty after clamping.
ANSWERS = ["[250,40,330,100]", "[240,30,320,95]", "garbage", "[250.5,10.25,335,70]", "[1,2,3]",
           "[100,100,100,150]", "[0,0,336,336]", "[400,400,500,500]", " [200, 140, 260, 190] \n",
           "[-30,-20,60,50]", '{"bbox": [1, 2, 3, 4]}', "[100,100,100.2,150]", "[150,150,190,180]",
           "[5,300,80,335]", "[120,130,200,190]", "[300,10,336,60]", "[10,10,60,60]"]
THINK_ANSWERS = [f"<think>the target moved</think><answer>{a}</answer>" if i % 4 else a
                 for i, a in enumerate(ANSWERS)] + [
    "<think>a</think> so: <answer>[150,150,200,200]</answer>", " <think>a</think><answer>[1,1,9,9]</answer>"]


def scripted(answers):
    return lambda index, payload=None: answers[index % len(answers)]


@pytest.mark.parametrize("think", [False, True])
def test_published_loop_reproduces_the_published_script(tmp_path, think):
    """Frame for frame against the transcription of the published script: the same boxes to
    the last bit, the same requests (question, JPEG bytes of both crops, answer length), the
    same crops as OpenCV's; through a server and through an answer function alike."""
    clip = edge_clip(tmp_path / "GOT-10k_Test_000001")
    answers = THINK_ANSWERS if think else ANSWERS
    with ChatServer(scripted(answers), model="R1-Track") as server:
        theirs = published_r1track.track_video(clip, server.url, model_name="R1-Track", think=think)
    assert len(theirs["boxes_xywh"]) == 18

    sequence = got10k.read_got10k_sequence(clip)
    frames = [read_frame(path) for path in sequence["frames"]]
    settings = TrackSettings(think=think)  # the published defaults: seed wording, 336 px, factors 4
    with ChatServer(scripted(answers), model="R1-Track") as server:
        tracker = r1track.Tracker(server=server.url, settings=settings)
        tracker.init(frames[0], sequence["boxes_xywh"][0])
        ours = [list(tracker.box_xywh)] + [tracker.update(frame) for frame in frames[1:]]
        payloads = server.payloads
    assert ours == theirs["boxes_xywh"] and len(payloads) == len(theirs["payloads"]) == 17
    assert tracker.fallbacks >= 5 and tracker.edge_holds >= 3  # the script reached every rule
    for mine, published in zip(payloads, theirs["payloads"]):
        assert mine["messages"] == published["messages"]
        assert (mine["temperature"], mine["max_tokens"]) == (published["temperature"], published["max_tokens"])

    seen = []

    def answer_fn(template, search, template_box):
        seen.append((np.asarray(template), np.asarray(search)))
        return answers[len(seen) - 1]

    tracker = r1track.Tracker(answer_fn=answer_fn, settings=settings)
    tracker.init(frames[0], sequence["boxes_xywh"][0])
    assert [list(tracker.box_xywh)] + [tracker.update(frame) for frame in frames[1:]] == theirs["boxes_xywh"]
    for (template, search), payload in zip(seen, theirs["payloads"]):  # the model sees the JPEG-decoded crops
        template_url, search_url = (part["image_url"]["url"] for part in payload["messages"][0]["content"][:2])
        assert np.array_equal(template, decode_data_url(template_url))
        assert np.array_equal(search, decode_data_url(search_url))

    for t, their_crop in enumerate(theirs["search_crops"], start=1):  # before JPEG: OpenCV's crop
        crop, _, _, _ = crop_around(frames[t], ours[t - 1], 4, 336)
        assert np.array_equal(crop, their_crop[..., ::-1])


def decode_data_url(url):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_frame_edge_rule_keeps_the_previous_box_and_answer():
    """A box mapped onto the frame's edge is not taken, and the next fallback reuses the last
    answer that was taken (here the template box), not the refused one; the lenient loop
    clamps the box into the frame instead."""
    frame = np.full((200, 300, 3), 128, np.uint8)
    answers = iter(["[0,100,40,140]", "garbage"])
    tracker = r1track.Tracker(answer_fn=lambda *a: next(answers), crop_size=112)
    tracker.init(frame, [5, 60, 20, 20])  # an 80-px square at (-25, 30): scale 1.4
    assert tracker.update(frame) == [5, 60, 20, 20] and tracker.edge_holds == 1  # x = -25: the left edge
    assert tracker.update(frame) == pytest.approx([5, 60, 20, 20])
    assert (tracker.fallbacks, tracker.edge_holds) == (1, 1)  # the reused answer was not the refused one
    lenient = r1track.Tracker(answer_fn=lambda *a: "[0,100,40,140]", crop_size=112, loop="lenient")
    lenient.init(frame, [5, 60, 20, 20])
    assert lenient.update(frame) == pytest.approx([0, 30 + 100 / 1.4, 40 / 1.4 - 25, 12 / 1.4])  # y2 clamped to 112
