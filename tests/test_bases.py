"""The base is a choice (bases.py): a checkpoint's config picks Qwen2.5-VL or Qwen3-VL, each
path asks the base what differs (box convention, crop sizes, chat template, LoRA targets,
licence), and what it cannot take is one line. The equivalences both bases hold (fast path,
shared-prompt GRPO, DDP and FSDP, resume) are parametrized over BASES in their own files."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import BASES, ChatServer, crop_of, main_in_process, run_main
from PIL import Image

import bases
import r1track
import reports
import synthetic
import tracking_pairs
import training
from answers import answer_box, reward
from benchmark_layouts import make_synthetic_benchmark
from prompts import answer_text, build_inputs, image_patches
from settings import LoadError, TrackSettings

# -----------------------------------------------------------------------------
# The box convention: at the prompt and at the answer, nowhere else


def test_relative_boxes_round_trip_through_the_crop():
    """0-1000 of the crop's side, whole thousandths: a box in pixels of a 352-px crop comes back
    within half a thousandth of the side; pixels pass through unchanged."""
    box = [35.2, 0.0, 176.0, 351.9]
    relative = bases.box_to_model(box, 352, "relative")
    assert relative == [100.0, 0.0, 500.0, 1000.0]
    assert bases.box_from_model(relative, 352, "relative") == pytest.approx(box, abs=0.352 / 2)
    assert bases.box_to_model(box, 352, "pixels") == box == bases.box_from_model(box, 352, "pixels")


def test_the_reward_scores_a_relative_answer_in_pixels():
    """The reward and the trackers read an answer in the model's convention and score it in crop
    pixels: the same box written both ways scores alike; read in the wrong one it would not."""
    truth = [88.0, 88.0, 264.0, 264.0]  # pixels of a 352-px crop
    pixels, relative = reward("[88,88,264,264]", truth), reward("[250,250,750,750]", truth, boxes="relative",
                                                                crop_side=352)
    assert pixels == relative and relative["iou"] == 1.0 and relative["overall"] == 1.5
    assert reward("[250,250,750,750]", truth)["iou"] < 0.3  # the same text taken as pixels
    assert answer_box("[250,250,750,750]", 352, "relative") == truth
    assert reward("[1,2,3]", truth, boxes="relative", crop_side=352)["overall"] == -1.0  # malformed: as ever


def test_sft_labels_and_questions_are_written_in_the_bases_convention(tiny_of):
    """Stored pairs hold pixels: a Qwen3-VL model is asked and taught in thousandths of each crop
    (the template box in the question, the answer in the labels), a Qwen2.5-VL model in pixels."""
    rng = np.random.default_rng(0)
    crops = [Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)) for _ in range(2)]
    pair = tracking_pairs.Pair(template=crops[0], template_box_xyxy=[32, 32, 96, 96], search=crops[1],
                     search_box_xyxy=[12.8, 0, 64, 128])
    _, processor = tiny_of("qwen3_vl")
    example = training.sft_example(processor, "seed", pair)
    tokenizer = processor.tokenizer
    labels = [t for t in example["labels"] if t != -100]
    assert tokenizer.decode(labels) == "[100,0,500,1000]<|im_end|>"
    assert "bounding box [250,250,750,750] in the first image" in tokenizer.decode(example["input_ids"])
    assert answer_text(pair.search_box_xyxy, 128, "pixels") == "[12,0,64,128]"


def test_stored_pixel_pairs_train_a_qwen3_vl_model_and_their_resize_is_said(tiny_dir_of, pairs16, tmp_path):
    """prepare_data.py's 112-px pairs (boxes in pixels) train a Qwen3-VL at its 128-px tiny crop:
    the resize is said, the answers it is taught are relative (test above), and so are its settings."""
    out = tmp_path / "sft"
    result = run_main("train_sft.py", "--model", tiny_dir_of("qwen3_vl"), "--data", pairs16, "--out", out,
                      "--crop-size", "128", "--max-steps", "1", "--batch-size", "2", "--grad-accum", "1",
                      "--lora-rank", "2", "--no-gradient-checkpointing")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "16 usable, 0 skipped; 112-px pairs (of its first rows) resized to 128 px" in result.stdout
    assert json.loads((out / "r1track.json").read_text())["boxes"] == "relative"


def test_a_server_is_asked_and_answered_in_the_settings_convention():
    """A Qwen3-VL model behind a server (its r1track.json says relative boxes): the question
    states the template box in 0-1000 of the template crop, and a relative answer comes back as
    the right box in the frame."""
    settings = TrackSettings(crop_size=352, boxes="relative", loop="lenient")
    with ChatServer(lambda index, payload: "[250,250,750,750]", model="qwen3-vl-tracker") as server:
        tracker = r1track.Tracker(server=server.url, settings=settings)
        frame = Image.new("RGB", (640, 480), "white")
        tracker.init(frame, [300, 200, 44, 44])  # a square of side 176 around (322, 222): 2 crop px a frame px
        box = tracker.update(frame)
    text = server.payloads[0]["messages"][-1]["content"][-1]["text"]
    assert "bounding box [375,375,625,625] in the first image" in text  # pixels 132..220 of 352
    assert box == pytest.approx([234 + 44, 134 + 44, 88, 88])  # the answer: pixels 88..264 of the search crop


def test_grounding_reads_a_relative_box_in_thousandths_of_the_frame(tiny_of, monkeypatch):
    """--text: Qwen3-VL answers a description in 0-1000 of the image's width and height
    (Qwen2.5-VL in pixels of the image it saw, test_track)."""
    model, processor = tiny_of("qwen3_vl")
    monkeypatch.setattr(r1track, "generate_answers", lambda *a, **k: ['{"bbox_2d": [250, 100, 500, 600]}'])
    frame = Image.new("RGB", (640, 480))
    assert r1track.locate_text(model, processor, frame, "the box") == pytest.approx([160, 48, 160, 240])


# -----------------------------------------------------------------------------
# One clear line for what a base cannot take


@pytest.mark.parametrize("base, size, sizes", [
    ("qwen3_vl", 336, "take 320 or 352"), ("qwen2_5_vl", 352, "take 336 or 364"), ("qwen3_vl", 16, "take 32")])
def test_a_crop_the_patch_grid_cannot_take_names_the_sizes_that_fit(tiny_dir_of, pairs16, tmp_path, capsys, base,
                                                                     size, sizes):
    import train_sft

    code, err = main_in_process(train_sft.main, ["--model", tiny_dir_of(base), "--data", pairs16, "--out", tmp_path,
                                                 "--crop-size", size], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and sizes in err, err


def test_a_crop_the_image_processor_would_resize_is_refused(tiny_dir_of, tmp_path):
    """Qwen3-VL's own image processor enlarges images under 256 x 256 pixels: a 128-px crop would
    reach the model resized, so a checkpoint whose settings ask for it is refused, not resized."""
    folder = shutil.copytree(tiny_dir_of("qwen3_vl"), tmp_path / "model")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["size"]["shortest_edge"] = 65536  # as Qwen/Qwen3-VL-2B-Instruct's
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="take 256 or more") as error:
        r1track.load_model(str(folder), device="cpu")
    assert "\n" not in str(error.value)


def as_the_hub_stores_qwen3_vl(folder):
    """A tiny Qwen3-VL folder rewritten in the layout of the hub's Qwen3-VL checkpoints: the
    config as transformers 4.57 saved them (rope_scaling and rope_theta in the text config,
    torch_dtype, the vision config's model_type "qwen3_vl"), their preprocessor_config.json
    (the fast image processor's name, its 65,536-pixel floor), no r1track.json."""
    config = json.loads((folder / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    rope = text.pop("rope_parameters")
    text.update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope)
    vision["model_type"] = "qwen3_vl"
    for part in (config, text, vision):
        part.pop("dtype", None)
    config.update(torch_dtype="float32", transformers_version="4.57.0.dev0")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast"}))
    (folder / "r1track.json").unlink()
    return folder


def test_a_qwen3_vl_checkpoint_as_the_hub_stores_it_loads_and_tracks_with_its_defaults(tiny_dir_of, tiny_of,
                                                                                        tmp_path, capsys):
    """The hub's layout gives the same model (the same logits on a question at 352 px) and the
    base's tracking defaults, said on stderr: 352-px crops (over the processor's floor), relative
    boxes; a 128-px crop, under the floor, is refused."""
    folder = as_the_hub_stores_qwen3_vl(shutil.copytree(tiny_dir_of("qwen3_vl"), tmp_path / "hub"))
    model, processor = r1track.load_model(str(folder), device="cpu")
    assert model.r1track_settings is None and processor.image_processor.size["shortest_edge"] == 65536
    tracker = r1track.Tracker((model, processor))
    assert (tracker.settings.crop_size, tracker.settings.boxes) == (352, "relative")
    assert "has no r1track.json; tracking with the default settings" in capsys.readouterr().err
    rng = np.random.default_rng(3)
    crops = [Image.fromarray(rng.integers(0, 255, (352, 352, 3), dtype=np.uint8)) for _ in range(2)]
    ours, ours_processor = tiny_of("qwen3_vl")
    inputs = build_inputs(processor, *crops, [100, 100, 200, 220])
    same = build_inputs(ours_processor, *crops, [100, 100, 200, 220])
    assert torch.equal(inputs["pixel_values"], same["pixel_values"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ours(**inputs).logits)
    with pytest.raises(LoadError, match="under the 65,536 pixels"):
        r1track.Tracker((model, processor), crop_size=128)


def test_settings_for_another_base_are_refused(tiny_dir_of, pairs16, tmp_path, capsys, monkeypatch):
    """A Qwen3-VL folder with Qwen2.5-VL tracking settings (boxes in pixels): one line, before any
    weight is loaded (load_model, GRPO's --init), and when a tracker is given such settings or
    crops."""
    import train_grpo

    folder = shutil.copytree(tiny_dir_of("qwen3_vl"), tmp_path / "model")
    TrackSettings(crop_size=128).save(folder)
    monkeypatch.setattr(r1track, "_load_weights", lambda *a, **k: pytest.fail("weights loaded before the refusal"))
    with pytest.raises(LoadError, match="write boxes in pixels but Qwen3-VL grounds in relative"):
        r1track.load_model(str(folder), device="cpu")
    code, err = main_in_process(train_grpo.main, ["--init", folder, "--data", pairs16, "--out", tmp_path / "grpo"],
                                capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "grounds in relative" in err, err
    monkeypatch.undo()
    loaded = r1track.load_model(str(tiny_dir_of("qwen3_vl")), device="cpu")
    with pytest.raises(LoadError, match="do not fit Qwen3-VL's image tokens of 32 px"):
        r1track.Tracker(loaded, crop_size=112)
    with pytest.raises(LoadError, match="write boxes in pixels but Qwen3-VL grounds in relative"):
        r1track.Tracker(loaded, settings=TrackSettings(crop_size=128))


def test_a_served_model_without_settings_is_asked_as_its_base_asks(tiny_dir_of, tmp_path, capsys):
    """vLLM names a served model by its folder or hub id: a Qwen3-VL one without r1track.json is
    asked with Qwen3-VL's defaults (352-px crops, relative boxes), said on stderr; a name that
    leads to no checkpoint gets the published defaults, as before."""
    folder = shutil.copytree(tiny_dir_of("qwen3_vl"), tmp_path / "served")
    (folder / "r1track.json").unlink()
    with ChatServer(lambda index, payload: "[250,250,750,750]", model=str(folder)) as server:
        tracker = r1track.Tracker(server=server.url)
    assert (tracker.settings.crop_size, tracker.settings.boxes) == (352, "relative")
    assert f"note: {folder} has no r1track.json" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()  # a folder with no config in it
    with ChatServer(lambda index, payload: "[1,2,3,4]", model=str(tmp_path / "bare")) as server:
        assert r1track.Tracker(server=server.url).settings == TrackSettings()


@pytest.mark.parametrize("model_type", ["qwen2_vl", "foo_vl", None])
def test_a_model_family_the_project_does_not_know_is_one_line(pairs16, tmp_path, capsys, model_type):
    """A checkpoint transformers knows but R1-Track does not track with (Qwen2-VL), one neither
    knows, one whose config names no family: one line naming the families it does, before any
    weight is read."""
    import train_sft

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type} if model_type else {}))
    what = f"a {model_type} checkpoint" if model_type else "a checkpoint whose config names no model_type"
    known = f"{what}: R1-Track tracks with Qwen2.5-VL (qwen2_5_vl), Qwen3-VL (qwen3_vl)"
    with pytest.raises(LoadError) as error:
        r1track.load_model(str(folder), device="cpu")
    assert known in str(error.value)
    code, err = main_in_process(train_sft.main, ["--model", folder, "--data", pairs16, "--out", tmp_path / "out"],
                                capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and known in err, err


# -----------------------------------------------------------------------------
# What each base's model is made of


@pytest.mark.parametrize("base", BASES)
def test_lora_goes_on_every_linear_layer_of_the_language_model_and_the_vision_blocks(tiny_of, base):
    """The published recipe's LoRA (every linear layer, the vision tower's blocks too) on each
    base's own layer names (Qwen3-VL's vision MLP is linear_fc1/linear_fc2), and nowhere else."""
    from peft import get_peft_model

    import train_sft

    model, processor = tiny_of(base)
    args = train_sft.build_parser().parse_args(["--lora-rank", "2"])
    fresh = synthetic.random_model(bases.named(base), processor.tokenizer, _shape(model))  # the shared one stays bare
    adapted = get_peft_model(fresh, training.lora_config(args, bases.named(base)))
    wrapped = {name.split(".lora_A")[0].replace("base_model.model.", "") for name, _ in adapted.named_parameters()
               if "lora_A" in name}
    linear = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
              and "lm_head" not in name and "merger" not in name}
    assert wrapped == linear
    assert any("visual.blocks.0.mlp" in name for name in linear)


def _shape(model):
    """The shape of a loaded tiny model, as synthetic.tiny_shape gives it."""
    text, vision = model.config.text_config, model.config.vision_config
    return synthetic.tiny_shape(text.vocab_size, text.hidden_size, text.num_hidden_layers, vision.hidden_size,
                                vision.depth)


def test_the_published_qwen3_vl_shapes_have_their_sizes(tiny_of):
    """synthetic.SHAPES, for timing random weights of the real size: Qwen3-VL-2B and -4B."""
    _, processor = tiny_of("qwen3_vl")
    for name, (low, high) in {"qwen3_vl-2b": (2.0e9, 2.25e9), "qwen3_vl-4b": (4.3e9, 4.5e9)}.items():
        with torch.device("meta"):
            model = synthetic.random_model(bases.QWEN3_VL, processor.tokenizer, synthetic.SHAPES[name])
        params = sum(p.numel() for p in model.parameters())
        assert low < params < high, (name, params)


def test_the_published_qwen3_5_shape_has_its_size_and_a_hub_config_gives_another(tiny_of, tiny_dir_of, tmp_path):
    """Qwen3.5-0.8B's shape in synthetic.SHAPES; a shape SHAPES does not hold comes from a hub
    model's or folder's config.json alone (a benchmark's `--architecture Qwen/Qwen3.5-2B`), with
    the tiny tokenizer's special ids, and loads like any checkpoint."""
    _, processor = tiny_of("qwen3_5")
    with torch.device("meta"):
        model = synthetic.random_model(bases.QWEN3_5, processor.tokenizer, synthetic.SHAPES["qwen3_5-0.8b"])
    assert 0.8e9 < sum(p.numel() for p in model.parameters()) < 0.9e9
    assert model.config.text_config.layer_types[:4] == ["linear_attention"] * 3 + ["full_attention"]
    config = json.loads((tiny_dir_of("qwen3_5") / "config.json").read_text())
    config["text_config"].update(hidden_size=96, num_hidden_layers=8, layer_types=None)
    config.update(image_token_id=5, vision_start_token_id=6)  # a hub model's own ids, not the tiny tokenizer's
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "config.json").write_text(json.dumps(config))
    saved = synthetic.save_tiny_model(tmp_path / "random", shape=tmp_path / "hub", base=bases.QWEN3_5)
    loaded, loaded_processor = r1track.load_model(str(saved), device="cpu")
    text = loaded.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.layer_types[-1]) == (96, 8, "full_attention")
    assert loaded.config.image_token_id == loaded_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_a_qwen3_5_card_and_a_served_qwen3_5_say_what_the_base_needs(tiny_dir_of, tmp_path):
    """A Qwen3.5 run's card carries its licence (Apache 2.0) and tag; a served Qwen3.5 is asked
    not to think before the box (vLLM's chat_template_kwargs), a served Qwen3-VL is asked nothing
    of the kind."""
    import train_sft

    args = train_sft.build_parser().parse_args(["--model", "Qwen/Qwen3.5-2B", "--out", str(tmp_path)])
    card = reports.model_card(args, "sft", 3, 10, {"loss": 1.0}, tmp_path, settings=TrackSettings(
        crop_size=352, boxes="relative"), base=bases.QWEN3_5)
    data = card.data.to_dict()
    assert data["base_model"] == "Qwen/Qwen3.5-2B" and data["license"] == "apache-2.0" and "qwen3_5" in data["tags"]
    frame = np.zeros((120, 160, 3), np.uint8)
    for base, expected in (("qwen3_5", {"enable_thinking": False}), ("qwen3_vl", None)):
        with ChatServer(lambda index, payload: "[250,250,750,750]", model=str(tiny_dir_of(base))) as server:
            tracker = r1track.Tracker(server=server.url)
            tracker.init(frame, [40, 30, 40, 30])
            tracker.update(frame)
        assert server.payloads[-1].get("chat_template_kwargs") == expected, base


def test_a_qwen3_vl_card_names_its_base_licence_and_tags(tmp_path):
    """The model card of a run from a hub Qwen3-VL: its base model, the family's licence
    (Apache 2.0, where Qwen2.5-VL-3B has a research licence) and tag, and its box convention."""
    import train_sft

    args = train_sft.build_parser().parse_args(["--model", "Qwen/Qwen3-VL-2B-Instruct", "--out", str(tmp_path)])
    card = reports.model_card(args, "sft", 3, 10, {"loss": 1.0}, tmp_path, settings=TrackSettings(
        crop_size=352, boxes="relative"), base=bases.QWEN3_VL)
    data = card.data.to_dict()
    assert data["base_model"] == "Qwen/Qwen3-VL-2B-Instruct" and data["license"] == "apache-2.0"
    assert "qwen3_vl" in data["tags"] and "qwen2_5_vl" not in data["tags"]
    assert "Qwen3-VL reads a template crop" in card.text and "in thousandths of the crop's side" in card.text
    qwen25 = reports.model_card(train_sft.build_parser().parse_args(["--out", str(tmp_path)]), "sft", 3, 10, {},
                                tmp_path, settings=TrackSettings(), base=bases.QWEN2_5_VL)
    assert qwen25.data.to_dict()["license_name"] == "qwen-research"


# -----------------------------------------------------------------------------
# Every path on Qwen3-VL


@pytest.mark.parametrize("base", ["qwen3_vl", "qwen3_5"])
def test_a_relative_model_trains_tracks_and_evaluates(sft_run_of, got10k_root, tmp_path, base):
    """The Qwen3-VL and Qwen3.5 SFT runs (conftest; test_train_sft: they memorised their pairs)
    saved their settings with relative boxes; eval_got10k.py tracks and scores them on GOT-10k,
    batched, and Qwen3-VL on TNL2K started from each clip's description (its grounding, in
    thousandths of the frame)."""
    out = sft_run_of(base)
    settings = json.loads((out / "r1track.json").read_text())
    assert settings["boxes"] == "relative" and settings["crop_size"] == crop_of(base)
    names = (got10k_root / "val" / "list.txt").read_text().split()[:2]
    result = run_main("eval_got10k.py", "--data", got10k_root, "--split", "val", "--model", out, "--out",
                      tmp_path / "got10k", "--device", "cpu", "--no-progress", "--batch", "2", "--sequences", *names)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "boxes in 0-1000 of the crop" in result.stdout
    report = json.loads((tmp_path / "got10k" / "report.json").read_text())
    assert set(report["per_sequence"]) == set(names)
    if base != "qwen3_vl":  # grounding reads thousandths of the frame alike on both: checked once
        return
    root = make_synthetic_benchmark(tmp_path / "tnl2k", "tnl2k", sequences=2, frames=4, size=(96, 72))
    result = run_main("eval_got10k.py", "--benchmark", "tnl2k", "--data", root, "--init", "text", "--model", out,
                      "--out", tmp_path / "tnl2k-out", "--device", "cpu", "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "tnl2k-out" / "report.json").read_text())["init"] == "text"


def test_qwen3_vl_inputs_hold_its_patches_and_types(tiny_of):
    """A 352-px crop is 11 x 11 tokens of 32 px; 16-px patches normalised by mean = std = 0.5."""
    _, processor = tiny_of("qwen3_vl")
    crop = np.full((352, 352, 3), 255, np.uint8)
    patches = image_patches([crop], processor.image_processor)
    assert patches["image_grid_thw"].tolist() == [[1, 22, 22]]
    assert patches["pixel_values"].shape == (22 * 22, 3 * 2 * 16 * 16) and (patches["pixel_values"] == 1.0).all()
    inputs = build_inputs(processor, Image.fromarray(crop), Image.fromarray(crop), [10, 10, 100, 100])
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_token).sum()) == 2 * 121
    assert torch.equal(inputs["mm_token_type_ids"], (inputs["input_ids"] == image_token).long())


def test_grpo_on_qwen3_vl_scores_its_relative_answers_in_pixels(sft_run_of, pairs16, tmp_path):
    """GRPO from the Qwen3-VL SFT run, which answers its pairs in thousandths of the crop: the
    reward reads them so and scores them in pixels (read as pixels of the 128-px crop they would
    miss), the prompt shared by each group; the saved model keeps the relative convention and
    its card its base."""
    out = tmp_path / "grpo"
    result = run_main("train_grpo.py", "--init", sft_run_of("qwen3_vl"), "--data", pairs16, "--out", out,
                      "--prompts-per-step", "4", "--group-size", "2", "--updates-per-batch", "2", "--max-steps", "2",
                      "--temperature", "0.3", "--max-new-tokens", "24", "--no-gradient-checkpointing")
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "reward_mean" in line]
    assert steps[0]["kl"] == 0.0 and steps[0]["iou_mean"] > 0.8 and steps[0]["reward_mean"] > 1.0, steps[0]
    settings = json.loads((out / "r1track.json").read_text())
    assert (settings["boxes"], settings["crop_size"]) == ("relative", crop_of("qwen3_vl"))  # inherited from --init
    assert "qwen3_vl" in (out / "README.md").read_text()
