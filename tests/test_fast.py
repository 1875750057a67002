"""The fast answerer (template reuse, batching, drafting) gives the naive loop's greedy
answers on every frame, with fewer decode passes; tools/bench.py runs and checks it too."""
import copy
import json
import os

import pytest
import torch
from conftest import by_base, run_main

import bases
import fast_decoder
import frame_loop
import r1track
import synthetic
from benchmarks.got10k import GOT10K
from frames import read_frame
from settings import TrackSettings


@pytest.fixture(scope="module")
def trained_of(sft_run_of):
    """base -> the loaded model of sft_run_of(base), which answers boxes."""
    return by_base(lambda base: r1track.load_model(str(sft_run_of(base)), device="cpu"))


@pytest.fixture(scope="module")
def trained(trained_of):
    return trained_of("qwen2_5_vl")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three synthetic sequences of 8 frames: (decoded frames, first box)."""
    split = synthetic.make_synthetic_got10k(tmp_path_factory.mktemp("clips"), "val", sequences=3, frames=8, seed=5,
                                            style="plain")
    return [([read_frame(f) for f in s["frames"]], s["boxes_xywh"][0]) for s in GOT10K.sequences(split.parent, "val")]


def count_forwards(model):
    """A counter of the model's forward calls (for the naive loop's decode steps)."""
    calls = {"n": 0}

    def hook(module, args, kwargs):
        calls["n"] += 1

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


def answers_on_every_frame(answerer, settings, clips, batch):
    """Track the clips through the frame loop, `batch` at a time, recording every answer (not
    only the boxes), per sequence: (boxes, answer texts, confidences in answering order)."""
    seen, states, confidences = {}, [], []

    def recording(requests):
        answers = answerer(requests)
        for request, answer in zip(requests, answers):
            states.append(request.state)  # kept alive: a finished sequence's id must not be reused
            seen.setdefault(id(request.state), []).append(answer.text)  # one state per sequence
            confidences.append(answer.confidence)
        return answers

    tracker = r1track.Tracker(answerer=recording, settings=settings)
    boxes = [[] for _ in clips]
    sequences = [frame_loop.Sequence(((i, frame, None) for i, frame in enumerate(frames)),
                                     [frame_loop.Start(copy.copy(tracker), box)], len(frames)) for frames, box in clips]
    frame_loop.run(sequences, lambda result: boxes[result.sequence].append(result.targets[0].box_xywh), batch=batch)
    return boxes, list(seen.values()), confidences


@pytest.mark.parametrize("base, options, batch", [
    *[("qwen2_5_vl", options, batch) for options, batch in (
        ({}, 1), ({}, 3), ({"draft": False}, 1), ({"reuse_template": False}, 3), ({"draft": False}, 3))],
    # Qwen3-VL (DeepStack adds the template's features in the first layers: into the reused cache)
    ("qwen3_vl", {}, 1), ("qwen3_vl", {}, 3), ("qwen3_vl", {"reuse_template": False}, 3),
    # Qwen3.5 (linear attention: the template's state restored, drafts and padding rolled back)
    ("qwen3_5", {}, 1), ("qwen3_5", {}, 3), ("qwen3_5", {"draft": False}, 3), ("qwen3_5", {"reuse_template": False}, 3),
])
def test_fast_answers_equal_generate(trained_of, clips, base, options, batch):
    model, processor = trained_of(base)
    settings = model.r1track_settings
    naive = r1track.ModelAnswerer(model, processor, settings)
    forwards, hook = count_forwards(model)
    reference_boxes, reference, reference_confidences = answers_on_every_frame(naive, settings, clips, 1)
    hook.remove()
    frames = sum(len(answers) for answers in reference)
    assert forwards["n"] / frames > 8  # real answers: many decode steps per frame
    fast = fast_decoder.FastAnswerer(model, processor, settings, **options)
    boxes, answers, confidences = answers_on_every_frame(fast, settings, clips, batch)
    assert answers == reference and boxes == reference_boxes
    if batch == 1:  # the same answers in the same order: the same confidence, from either decoder's logits
        assert None not in reference_confidences
        assert confidences == pytest.approx(reference_confidences, abs=1e-4)
    if options.get("draft", True):
        assert fast.decode_passes / frames * batch < forwards["n"] / frames - 1


@pytest.mark.parametrize("base", ["qwen3_vl", "qwen3_5"])
def test_questions_of_different_lengths_answered_together(trained_of, clips, base):
    """A wide and a tall first box put numbers of one to four digits in the question (the box
    is relative to the template crop, which the wide one spans): batched, the questions are
    padded to one width (on the right after a template whose cache is a recurrent state,
    each row then rolled back to its own end) and answered as one at a time."""
    model, processor = trained_of(base)
    settings = model.r1track_settings
    (frames, (x, y, w, h)), *others = clips
    side = (w * h) ** 0.5
    stretched = [(frames, [x, y, 4 * side, side / 4]), (frames, [x, y, side / 4, 4 * side]), *others]
    naive = r1track.ModelAnswerer(model, processor, settings)
    fast = fast_decoder.FastAnswerer(model, processor, settings)
    rows, layouts = fast._rows, []

    def rows_seen(states):  # each call's question widths, and whether it padded on the right
        made = rows(states)
        layouts.append(({len(state["ids"]) for state in states}, made[-1] is not None))
        return made

    fast._rows = rows_seen
    reference_boxes, reference, _ = answers_on_every_frame(naive, settings, stretched, 1)
    boxes, answers, _ = answers_on_every_frame(fast, settings, stretched, 3)
    mixed = [right for widths, right in layouts if len(widths) > 1]
    assert mixed and set(mixed) == {bases.named(base).recurrent}  # questions of different lengths together
    assert answers == reference and boxes == reference_boxes


@pytest.mark.parametrize("base, settings", [
    ("qwen2_5_vl", TrackSettings(crop_size=112, wording="r1track-100k")),
    ("qwen2_5_vl", TrackSettings(crop_size=112, think=True)),
    ("qwen3_vl", TrackSettings(crop_size=128, think=True, boxes="relative")),
])
def test_other_wordings_and_think_mode(trained_of, clips, base, settings):
    model, processor = trained_of(base)
    naive = r1track.ModelAnswerer(model, processor, settings, max_new_tokens=20)
    fast = fast_decoder.FastAnswerer(model, processor, settings, max_new_tokens=20)
    assert answers_on_every_frame(fast, settings, clips, 2)[1] == answers_on_every_frame(naive, settings, clips, 1)[1]


def test_forced_answer_length_is_the_same_on_both_paths(tiny, clips):
    model, processor = tiny  # random weights: answers end at once unless held back
    settings = TrackSettings(crop_size=112)
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
    result = run_main("tools/bench.py", "--model", sft_warm, "--streams", "2", "--frames", "4", "--repeats", "1",
                      "--device", "cpu", "--json", out)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["identical_boxes"] is True
    variants = report["variants"]
    assert {name: v["batch"] for name, v in variants.items()} == {
        "naive": 1, "template_reuse": 1, "draft": 1, "fast": 1, "naive_batch": 2, "fast_batch": 2}
    for v in variants.values():
        assert v["ms_per_frame"] > 0 and v["frames_per_s"] == pytest.approx(1000 / v["ms_per_frame"])
    speed = {name: v["frames_per_s"] for name, v in variants.items()}
    for key, (faster, slower) in {"template_reuse_speedup": ("template_reuse", "naive"), "draft_speedup": (
            "draft", "naive"), "fast_speedup": ("fast", "naive"), "batch8_speedup": ("fast_batch", "fast"),
            "naive_batch8_speedup": ("naive_batch", "naive"), "all_speedup": ("fast_batch", "naive")}.items():
        assert report[key] == pytest.approx(speed[faster] / speed[slower]), key
    # the warm model answers a box of about a dozen tokens: generate steps through them one by
    # one, drafting checks most of them in one pass
    steps = report["decode_steps_per_frame"]
    assert steps["naive"] > 8 and steps["draft"] < steps["naive"] / 2
    assert steps == {"naive": variants["naive"]["decode_steps_per_frame"],
                     "draft": variants["fast"]["decode_steps_per_frame"]}
    assert report["date"] and report["device"] == "cpu" and report["streams"] == 2 and report["frames"] == 4


def test_bench_training_smoke(tiny_model_dir, tmp_path, tiny):
    from peft import get_peft_model

    import train_sft
    import training

    out = tmp_path / "train.json"
    result = run_main("tools/bench.py", "--train", "--model", tiny_model_dir, "--train-steps", "2", "--device", "cpu",
                      "--json", out)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())["training"]
    assert set(report) == {"lora", "full"} and all(m["tokens_per_s"] > 0 for m in report.values())
    assert all(m["batch_size"] == 4 and m["peak_memory_gib"] is None for m in report.values())  # no GPU here
    # what train_sft.py trained, counted here: every weight, and the default LoRA's
    assert report["full"]["trained_weights"] == sum(p.numel() for p in tiny[0].parameters())
    args = train_sft.build_parser().parse_args(["--model", str(tiny_model_dir)])
    from transformers import Qwen2_5_VLForConditionalGeneration

    lora = get_peft_model(Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir),
                          training.lora_config(args, bases.QWEN2_5_VL))
    assert report["lora"]["trained_weights"] == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_bench_recovery_smoke(tmp_path):
    out = tmp_path / "recovery.json"
    result = run_main("tools/bench.py", "--recovery", "--streams", "3", "--frames", "20", "--json", out)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["sequences"] == 3 and report["frames"] == 20
    recovery = report["recovery"]
    for motion in ("usual motion", "fast motion"):
        assert set(recovery[motion]) == {"published_loop", "with_recovery", "lenient_loop"}
        for loop in recovery[motion].values():
            assert 0 <= loop["ao"] <= 1 and loop["sr75"] <= loop["sr50"]
            assert loop["fallbacks"] > 0  # the clips hide their targets: the ideal detector says it sees nothing
        assert recovery[motion]["lenient_loop"]["edge_holds"] == 0  # the lenient loop has no frame-edge rule
    # an ideal detector on usual motion: the published loop follows the target closely; on fast
    # motion targets reach the frame's edge, where the published rule holds the box back
    assert recovery["usual motion"]["published_loop"]["ao"] > 0.8
    fast = recovery["fast motion"]
    assert fast["published_loop"]["edge_holds"] > 0 and fast["lenient_loop"]["ao"] > fast["published_loop"]["ao"]


def test_the_3b_shape_matches_the_published_model(tiny):
    from transformers import Qwen2_5_VLForConditionalGeneration

    _, processor = tiny
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            synthetic.qwen2_5_vl_config(processor.tokenizer, synthetic.SHAPES["qwen2_5_vl-3b"]))
    params = sum(p.numel() for p in model.parameters())
    assert 3.70e9 < params < 3.80e9, params  # Qwen2.5-VL-3B-Instruct: 3.75 billion
    assert len(model.model.language_model.layers) == 36 and len(model.model.visual.blocks) == 32


@pytest.mark.benchmark  # a development tool's run (half a minute): on demand, not in the suite
def test_bench_pipeline_smoke(tmp_path):
    out = tmp_path / "pipeline.json"
    result = run_main("tools/bench.py", "--pipeline", "--streams", "2", "--frames", "3", "--repeats", "1", "--json", out)
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
        # the host's share is the crop, the inputs and the answer: what the loop does beside the model
        assert report["pipeline"][batch]["host_ms_per_frame"] == pytest.approx(
            stages["crop"] + stages["inputs"] + stages["answer"])
        assert report["pipeline"][batch]["read_ahead_over_model_alone"] == pytest.approx(
            rates["read_ahead"] / rates["model_alone"])
    workers = report["pipeline"]["training_examples_per_s"]
    assert set(workers) == {"0", "1", "2", "4"} and all(rate > 0 for rate in workers.values())
    peaks = report["pipeline"]["parquet_peak_resident_mb"]  # the images held on disk, not in Python bytes
    assert set(peaks) == {"100", "100000"} and 0 < peaks["100000"] - peaks["100"] < 300, peaks
