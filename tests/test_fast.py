"""The fast answerer (template reuse, batching, drafting) gives the naive loop's greedy
answers on every frame, with fewer decode passes; bench.py runs and checks it too."""
import json
import os

import pytest
import torch

import bench
import fast_decoder
import r1track
import synthetic
from conftest import run_main


@pytest.fixture(scope="module")
def trained(sft_warm):
    model, processor = r1track.load_model(str(sft_warm), device="cpu")
    return model, processor


@pytest.fixture(scope="module")
def clips():
    return bench.make_clips(streams=3, frames=8, seed=5)


def answers_on_every_frame(answerer, settings, clips, batch):
    """Track the clips, recording every answer text (not only the boxes), per sequence."""
    seen, states, confidences = {}, [], []

    def recording(requests):
        texts = answerer(requests)
        for request, text in zip(requests, texts):
            states.append(request.state)  # kept alive: a finished sequence's id must not be reused
            seen.setdefault(id(request.state), []).append(text)  # one state per sequence
            confidences.append(request.state.get("confidence"))
        return texts

    boxes, _, _ = bench.run_variant(recording, settings, clips, batch)
    answers_on_every_frame.confidences = confidences  # in answering order, for the test that wants them
    return boxes, list(seen.values())


@pytest.mark.parametrize("options, batch", [
    ({}, 1), ({}, 3), ({"draft": False}, 1), ({"reuse_template": False}, 3), ({"draft": False}, 3),
])
def test_fast_answers_equal_generate(trained, clips, options, batch):
    model, processor = trained
    settings = model.r1track_settings
    naive = r1track.ModelAnswerer(model, processor, settings)
    forwards, hook = bench.count_forwards(model)
    reference_boxes, reference = answers_on_every_frame(naive, settings, clips, 1)
    reference_confidences = answers_on_every_frame.confidences
    hook.remove()
    frames = sum(len(answers) for answers in reference)
    assert forwards["n"] / frames > 8  # real answers: many decode steps per frame
    fast = fast_decoder.FastAnswerer(model, processor, settings, **options)
    boxes, answers = answers_on_every_frame(fast, settings, clips, batch)
    assert answers == reference and boxes == reference_boxes
    if batch == 1:  # the same answers in the same order: the same confidence, from either decoder's logits
        assert None not in reference_confidences
        assert answers_on_every_frame.confidences == pytest.approx(reference_confidences, abs=1e-4)
    if options.get("draft", True):
        assert fast.decode_passes / frames * batch < forwards["n"] / frames - 1


@pytest.mark.parametrize("settings", [
    r1track.TrackSettings(crop_size=112, wording="r1track-100k"),
    r1track.TrackSettings(crop_size=112, think=True),
])
def test_other_wordings_and_think_mode(trained, clips, settings):
    model, processor = trained
    naive = r1track.ModelAnswerer(model, processor, settings, max_new_tokens=20)
    fast = fast_decoder.FastAnswerer(model, processor, settings, max_new_tokens=20)
    assert answers_on_every_frame(fast, settings, clips, 2)[1] == answers_on_every_frame(naive, settings, clips, 1)[1]


def test_forced_answer_length_is_the_same_on_both_paths(tiny, clips):
    model, processor = tiny  # random weights: answers end at once unless held back
    settings = r1track.TrackSettings(crop_size=112)
    naive = r1track.ModelAnswerer(model, processor, settings, max_new_tokens=6, min_new_tokens=6)
    fast = fast_decoder.FastAnswerer(model, processor, settings, max_new_tokens=6, min_new_tokens=6)
    expected = answers_on_every_frame(naive, settings, clips[:2], 1)[1]
    assert answers_on_every_frame(fast, settings, clips[:2], 2)[1] == expected
    tokens = processor.tokenizer(expected[0][0], add_special_tokens=False)["input_ids"]
    assert len(tokens) == 6


def test_tracker_uses_the_fast_path_by_default(trained):
    model, processor = trained
    assert isinstance(r1track.Tracker((model, processor)).answerer, fast_decoder.FastAnswerer)
    assert isinstance(r1track.Tracker((model, processor), fast=False).answerer, r1track.ModelAnswerer)


def test_bench_smoke(sft_warm, tmp_path):
    out = tmp_path / "bench.json"
    result = run_main("bench.py", "--model", sft_warm, "--streams", "2", "--frames", "4", "--repeats", "1",
                      "--device", "cpu", "--json", out)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["identical_boxes"] is True
    for key in ("template_reuse_speedup", "batch8_speedup", "fast_speedup"):
        assert report[key] > 0
    assert set(report["decode_steps_per_frame"]) == {"naive", "draft"}
    assert report["decode_steps_per_frame"]["draft"] < report["decode_steps_per_frame"]["naive"]
    assert report["date"] and report["device"] == "cpu"


def test_bench_training_smoke(tiny_model_dir, tmp_path):
    out = tmp_path / "train.json"
    result = run_main("bench.py", "--train", "--model", tiny_model_dir, "--train-steps", "2", "--device", "cpu",
                      "--json", out)
    assert result.returncode == 0, result.stderr[-2000:]
    training = json.loads(out.read_text())["training"]
    assert set(training) == {"lora", "full"} and all(m["tokens_per_s"] > 0 for m in training.values())
    assert training["lora"]["trained_weights"] < training["full"]["trained_weights"]


def test_bench_recovery_smoke(tmp_path):
    out = tmp_path / "recovery.json"
    result = run_main("bench.py", "--recovery", "--streams", "3", "--frames", "20", "--json", out)
    assert result.returncode == 0, result.stderr[-2000:]
    recovery = json.loads(out.read_text())["recovery"]
    for motion in ("usual motion", "fast motion"):
        for loop in ("published_loop", "with_recovery", "lenient_loop"):
            assert 0 <= recovery[motion][loop]["ao"] <= 1
    # an ideal detector on usual motion: the published loop follows the target closely
    assert recovery["usual motion"]["published_loop"]["ao"] > 0.8


def test_the_3b_shape_matches_the_published_model(tiny):
    from transformers import Qwen2_5_VLForConditionalGeneration

    _, processor = tiny
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(synthetic.qwen2_5_vl_config(processor.tokenizer, synthetic.QWEN2_5_VL_3B_SHAPE))
    params = sum(p.numel() for p in model.parameters())
    assert 3.70e9 < params < 3.80e9, params  # Qwen2.5-VL-3B-Instruct: 3.75 billion
    assert len(model.model.language_model.layers) == 36 and len(model.model.visual.blocks) == 32


def test_bench_pipeline_smoke(tmp_path):
    out = tmp_path / "pipeline.json"
    result = run_main("bench.py", "--pipeline", "--streams", "2", "--frames", "3", "--repeats", "1", "--json", out)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["frame_size"] == [1920, 1080] and report["crop_size"] == 336
    # frames read by the cores the model's threads leave free
    threads, readers = report["pipeline"]["threads"], report["pipeline"]["readers"]
    assert readers == max(1, min(4, (os.cpu_count() or 1) - threads)), (threads, readers)
    assert report["pipeline"]["opencv_threads"] == 1  # crops cut on the calling thread, as the scripts cut them
    for batch in ("batch_1", "batch_2"):
        stages = report["pipeline"][batch]["stages_ms_per_frame"]
        assert set(stages) == {"decode", "crop", "inputs", "model", "decode_loop", "answer"}
        assert all(value >= 0 for value in stages.values()) and stages["model"] > 0 and stages["decode"] > 0
        rates = report["pipeline"][batch]["frames_per_s"]
        assert rates["in_turn"] > 0 and rates["read_ahead"] > 0 and rates["model_alone"] > 0
    assert set(report["pipeline"]["training_examples_per_s"]) == {"0", "1", "2", "4"}
    peaks = report["pipeline"]["parquet_peak_resident_mb"]  # the images held on disk, not in Python bytes
    assert set(peaks) == {"100", "100000"} and 0 < peaks["100000"] - peaks["100"] < 300, peaks
