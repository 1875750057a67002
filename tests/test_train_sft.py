"""train_sft.py end to end on the tiny model: it learns, runs under torchrun, resumes
exactly after a kill, and answers bad input with one line."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BASES, crop_of, run_main, wait_for
from safetensors.torch import load_file

import bases
import data
import r1track
import training
from answers import answer_box
from boxes import iou_xyxy
from prompts import build_inputs

ROOT = Path(__file__).resolve().parents[1]


def run(args, **kwargs):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, **kwargs)


def run_here(args):
    """train_sft.py in this process (conftest.run_main): the same run, without seconds of imports."""
    return run_main(*args)


def sft_args(model_dir, data, out, *extra, crop=112):
    return ["train_sft.py", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--crop-size", str(crop),
            "--no-gradient-checkpointing", *extra]


def read_metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("base", BASES)
def test_memorises_16_pairs(sft_run_of, pairs16, base):
    """Full fine-tuning, validation = the training pairs: greedy answers reach IoU >= 0.9
    (the run is conftest's sft_run_of(base), which the GRPO tests start from)."""
    out = sft_run_of(base)
    evals = [m for m in read_metrics(out) if "val_iou" in m]
    assert [m["step"] for m in evals] == [60, 100]
    assert evals[-1]["val_iou"] >= 0.9, evals
    steps = [m for m in read_metrics(out) if "loss" in m]
    assert len(steps) == 100 and steps[-1]["loss"] < steps[0]["loss"] / 5
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(steps[0])
    assert (out / "curves.png").stat().st_size > 1000

    # the final folder is a model: load_model and plain transformers both read it
    model, processor = r1track.load_model(str(out), device="cpu")
    assert model.r1track_settings.crop_size == crop_of(base)
    from transformers import AutoModelForImageTextToText
    assert type(AutoModelForImageTextToText.from_pretrained(out)).__name__ == bases.named(base).model_class

    # and it answers the pairs it was taught (checked here outside the training script), in its base's convention
    source = data.open_pairs(str(pairs16), crop_of(base))
    pair = source.load(0)
    inputs = build_inputs(processor, pair.template, pair.search, pair.template_box_xyxy)
    answer = r1track.generate_answers(model, processor, inputs)[0]
    box = answer_box(answer, crop_of(base), bases.named(base).boxes)
    assert iou_xyxy(box, pair.search_box_xyxy) > 0.5, answer


def test_lora_adapter_output_and_merge(tiny_model_dir, pairs16, tmp_path):
    out = tmp_path / "lora"
    result = run_here(sft_args(tiny_model_dir, pairs16, out, "--lora-rank", "4", "--batch-size", "4", "--grad-accum",
                               "1", "--max-steps", "3", "--merge-lora", "--lr", "1e-3"))
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(tiny_model_dir)
    assert "visual" in config["target_modules"]  # the published recipe trains the vision tower too
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    adapter_model, _ = r1track.load_model(str(out), device="cpu")
    merged_model, _ = r1track.load_model(str(out / "merged"), device="cpu")
    base_model, _ = r1track.load_model(str(tiny_model_dir), device="cpu")
    merged = dict(merged_model.named_parameters())
    # merging folded the trained adapter in: the merged (bf16) weights equal the adapter
    # model's to bf16 precision, and differ from the base by much more where LoRA applied
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    adapted, base = dict(adapter_model.named_parameters())[name], dict(base_model.named_parameters())[name]
    assert torch.allclose(adapted, merged[name], rtol=2 ** -7, atol=1e-5)
    assert not torch.allclose(base, merged[name], rtol=2 ** -7, atol=1e-5)
    from peft import PeftModel
    PeftModel.from_pretrained(base_model, out)  # plain peft reads the adapter too


def test_two_ranks_of_b_pairs_step_as_one_rank_of_2b(tiny_model_dir, pairs16, tmp_path):
    """The ranks share each step's pairs and its loss is the mean over all their answer
    tokens: 2 ranks x batch 2 keep identical weights and end with the adapter of 1 process x
    batch 4, to float precision (the answers' token counts differ from rank to rank; a per-rank
    mean weighted them differently); their validation, 5 pairs shared unevenly, is the one
    process's."""
    # 336-px crops: the stored 112-px boxes scaled by 3 have 2- and 3-digit numbers, answers of unequal token counts
    common = ("--grad-accum", "1", "--max-steps", "3", "--lr", "1e-3", "--save-every", "3", "--crop-size", "336",
              "--val-data", str(pairs16), "--val-size", "5", "--eval-every", "3")
    one, two = tmp_path / "one", tmp_path / "two"
    single = run_here(sft_args(tiny_model_dir, pairs16, one, "--batch-size", "4", *common))
    assert single.returncode == 0, single.stderr[-3000:]
    ranks = run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "tests/ranks_probe.py",
                 *sft_args(tiny_model_dir, pairs16, two, "--batch-size", "2", *common)])
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    rank0, rank1 = load_file(two / "rank0.safetensors"), load_file(two / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and len(rank0) > 0 and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    a, b = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    # a mean per rank was 3e-3 off here; the rest is float rounding, which Adam's steps enlarge
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    assert max(float(a[k].abs().max()) for k in a if "lora_B" in k) > 1e-3  # while training moved them
    losses = [[m["loss"] for m in read_metrics(out) if "loss" in m] for out in (one, two)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    (val_one,), (val_two,) = ([m for m in read_metrics(out) if "val_iou" in m] for out in (one, two))
    assert val_two["val_iou"] == pytest.approx(val_one["val_iou"], abs=1e-6)
    assert val_two["val_loss"] == pytest.approx(val_one["val_loss"], rel=1e-4)


TORCHRUN = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "tests/ranks_probe.py"]
# full fine-tuning on 2 ranks, 2 pairs a rank, 2 accumulated micro-steps a step; validation on
# 5 pairs, shared unevenly by the ranks, at the end
FSDP_COMMON = ("--full", "--fsdp", "--batch-size", "2", "--grad-accum", "2", "--max-steps", "6", "--save-every", "2",
               "--lr", "1e-3", "--val-data", "{pairs16}", "--val-size", "5", "--eval-every", "6")


def fsdp_args(base, tiny_dir_of, got10k_root, pairs16, out, *extra, fsdp=True):
    common = [a.format(pairs16=pairs16) for a in FSDP_COMMON if fsdp or a != "--fsdp"]
    return [*TORCHRUN, *sft_args(tiny_dir_of(base), got10k_root / "val", out, *common, *extra, crop=crop_of(base))]


@pytest.fixture(scope="module", params=BASES)
def fsdp_run(request, tiny_dir_of, got10k_root, pairs16, tmp_path_factory):
    """(the base, a straight FSDP run of FSDP_COMMON, never interrupted), for each base (FSDP
    shards its vision blocks, its decoder layers and its vision tower: bases.fsdp_units)."""
    out = tmp_path_factory.mktemp(f"fsdp-{request.param}") / "straight"
    result = run(fsdp_args(request.param, tiny_dir_of, got10k_root, pairs16, out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return request.param, out


def test_fsdp_full_fine_tuning_matches_ddp(fsdp_run, tiny_dir_of, got10k_root, pairs16, tmp_path):
    """--fsdp shards the same computation: its weights equal a DDP run's to float precision,
    and so do its validation results, with 5 validation pairs shared unevenly by the 2 ranks
    (where an FSDP forward, itself a collective, waited forever on the rank that had none left)."""
    base_name, fsdp_run = fsdp_run
    tiny_model_dir = tiny_dir_of(base_name)
    result = run(fsdp_args(base_name, tiny_dir_of, got10k_root, pairs16, tmp_path / "ddp", fsdp=False), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outs = {"ddp": tmp_path / "ddp", "fsdp": fsdp_run}
    ddp, fsdp = load_file(outs["ddp"] / "model.safetensors"), load_file(outs["fsdp"] / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert max((ddp[k] - fsdp[k]).abs().max() for k in ddp) < 1e-5
    assert max((ddp[k] - base[k]).abs().max() for k in ddp) > 1e-3  # while training moved them
    ddp_val, fsdp_val = ([m for m in read_metrics(outs[mode]) if "val_iou" in m] for mode in ("ddp", "fsdp"))
    assert len(ddp_val) == len(fsdp_val) == 1
    assert fsdp_val[0]["val_iou"] == pytest.approx(ddp_val[0]["val_iou"], abs=1e-6)
    assert fsdp_val[0]["val_loss"] == pytest.approx(ddp_val[0]["val_loss"], rel=1e-4)


def test_a_killed_rank_ends_the_run_and_resume_equals_a_straight_run(fsdp_run, tiny_dir_of, got10k_root, pairs16,
                                                                    tmp_path):
    """Full fine-tuning under FSDP on 2 ranks, rank 1 killed at step 3 of 6: the run ends at
    once, rank 0 says in one line that it lost the others, torchrun names rank 1. The
    checkpoints hold each rank's shards (no gathered model); --resume from checkpoint-2 ends
    with the weights of a run never interrupted."""
    import os
    import re

    base_name, fsdp_run = fsdp_run
    tiny_model_dir = tiny_dir_of(base_name)
    broken = tmp_path / "broken"
    started = time.time()
    killed = run(fsdp_args(base_name, tiny_dir_of, got10k_root, pairs16, broken),
                 env={**os.environ, "PROBE_KILL": "1:3"}, timeout=300)
    assert killed.returncode != 0 and time.time() - started < 120
    output = killed.stdout + killed.stderr
    assert "error: rank 0 lost the other ranks (" in output and "[rank0]: Traceback" not in output
    assert re.search(r"Root Cause.*?rank\s*:\s*1 .*?SIGKILL", output, re.S), output[-2000:]
    checkpoint = broken / "checkpoint-2"
    assert checkpoint.is_dir() and not (broken / "checkpoint-4").exists()
    shards = sorted(p.name for p in (checkpoint / "shards").iterdir() if p.suffix == ".distcp")
    assert shards == ["__0_0.distcp", "__1_0.distcp"] and not (checkpoint / "model.safetensors").exists()
    resumed = run(fsdp_args(base_name, tiny_dir_of, got10k_root, pairs16, broken, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(fsdp_run / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(tiny_model_dir / "model.safetensors")
    assert max(float((a[k] - base[k]).abs().max()) for k in base) > 1e-3  # while training moved them


@pytest.mark.parametrize("mode, stop_signal", [("lora", signal.SIGKILL), ("full", signal.SIGTERM)])
def test_interrupted_run_resumes_to_the_same_weights(tiny_model_dir, got10k_root, tmp_path, mode, stop_signal):
    """Kill a run after its first checkpoint (SIGKILL: no goodbye; SIGTERM: it saves first),
    resume it, and end with exactly the weights of a run never interrupted. The broken run
    prepares its pairs in two DataLoader worker processes, the whole run in its own thread:
    the stream, and so the weights, are the same with any number of workers."""
    extra = ["--batch-size", "2", "--grad-accum", "2", "--max-steps", "14", "--save-every", "3", "--lr", "1e-3",
             "--keep-checkpoints", "10", *(["--full"] if mode == "full" else ["--lora-rank", "4"])]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run_here(sft_args(tiny_model_dir, got10k_root / "val", whole, *extra, "--data-workers", "0")).returncode == 0
    extra += ["--data-workers", "2"]

    process = subprocess.Popen([sys.executable, *sft_args(tiny_model_dir, got10k_root / "val", broken, *extra)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(broken / "checkpoint-3" / "trainer_state.json", process)
    process.send_signal(stop_signal)
    _, stderr = process.communicate(timeout=120)
    if stop_signal == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 130, stderr[-2000:]
    assert not (broken / "r1track.json").exists()  # it never reached the end

    resumed = run(sft_args(tiny_model_dir, got10k_root / "val", broken, *extra, "--resume"))  # forks its workers
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    weights = "model.safetensors" if mode == "full" else "adapter_model.safetensors"
    a, b = load_file(whole / weights), load_file(broken / weights)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [m["step"] for m in read_metrics(broken) if "loss" in m]
    assert steps == list(range(1, 15))  # redone steps are logged once


def test_checkpoint_folders_are_complete_models(tiny_model_dir, pairs16, tmp_path):
    out = tmp_path / "ckpt"
    assert run_here(sft_args(tiny_model_dir, pairs16, out, "--max-steps", "4", "--save-every", "2", "--batch-size", "2",
                             "--grad-accum", "1", "--keep-checkpoints", "1")).returncode == 0
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]  # older ones pruned
    assert not list(out.glob(".checkpoint-*"))  # no temporary folder left behind
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["position"] == 8
    r1track.load_model(str(out / "checkpoint-4"), device="cpu")


@pytest.mark.parametrize("extra, message, through", [
    (["--data", "/no/such/data.parquet"], "not a dataset", run_here),
    (["--data", "README.md"], "not a dataset", run_here),
    # a process of its own: what the libraries print while a model loads reaches its stderr
    (["--model", "/no/such/model"], "cannot load the model", run),
    (["--resume", "/no/such/checkpoint"], "not a complete checkpoint", run_here),
])
def test_bad_input_is_one_line(tiny_model_dir, pairs16, tmp_path, extra, message, through):
    args = sft_args(tiny_model_dir, pairs16, tmp_path / "bad", "--max-steps", "1")
    for flag in ("--data", "--model"):
        if flag in extra:
            at = args.index(flag)
            del args[at:at + 2]
    result = through(args + extra)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("extra", [["--crop-size", "100"], ["--fsdp"], ["--full", "--load-in-4bit"],
                                   ["--max-steps", "0"], ["--val-fraction", "1.5"],
                                   ["--tracking-pairs", "2"], ["--memory", "--loop", "published"]])
def test_bad_flags_are_refused(tiny_model_dir, pairs16, tmp_path, extra, capsys):
    import train_sft  # in this process: the one-line path through a process is tested just above

    try:
        code = train_sft.main(sft_args(tiny_model_dir, pairs16, tmp_path / "bad", *extra)[1:])
    except SystemExit as exit:  # argparse's own refusal
        code = exit.code
    assert code == 2 and "error:" in capsys.readouterr().err


def test_training_with_a_memory_frame_asks_three_images_and_saves_it(tiny_model_dir, got10k_root, tmp_path,
                                                                      monkeypatch):
    """--memory: each example the run trains on is a triple (template, memory crop, search),
    the model's settings say so, and a tracker of that model says once that it asks with two
    images."""
    images_per_example, real = [], training.sft_example

    def counted(processor, wording, pair):
        example = real(processor, wording, pair)
        images_per_example.append(example["input_ids"].count(processor.tokenizer.convert_tokens_to_ids(
            "<|image_pad|>")) // 16)
        return example

    monkeypatch.setattr(training, "sft_example", counted)
    out = tmp_path / "memory"
    result = run_here(sft_args(tiny_model_dir, got10k_root / "val", out, "--memory", "--loop", "lenient",
                               "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1", "--full",
                               "--val-data", got10k_root / "val", "--val-size", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(images_per_example) >= 4 and set(images_per_example) == {3}
    assert json.loads((out / "r1track.json").read_text())["memory"] is True
    tracked = run_main("track.py", "--video", got10k_root / "val" / "GOT-10k_Val_000001", "--box", "10,10,40,40",
                       "--model", out, "--out", tmp_path / "track", "--no-video", "--device", "cpu")
    assert tracked.returncode == 0, tracked.stderr[-2000:]
    assert tracked.stderr.count("trained with a memory frame") == 1


def test_refuses_to_overwrite_a_run_without_resume(tiny_model_dir, pairs16, tmp_path, capsys):
    import train_sft

    def errors():
        return [line[line.index("error:"):] for line in capsys.readouterr().err.splitlines() if "error:" in line]

    args = sft_args(tiny_model_dir, pairs16, tmp_path / "run", "--max-steps", "2", "--save-every", "1",
                    "--batch-size", "2", "--grad-accum", "1")[1:]
    assert train_sft.main(args) == 0
    capsys.readouterr()
    assert train_sft.main(args) == 2 and "--resume" in errors()[-1]
    # --resume continues this run, so it refuses flags that would make it another one, and names them
    assert train_sft.main(args + ["--resume", "--lr", "1e-3", "--lora-rank", "4"]) == 2
    error = errors()[-1]
    assert "--lr 1e-05 -> 0.001" in error and "--lora-rank 12 -> 4" in error
    # flags that change how the run is carried out, not what it computes, may change
    assert train_sft.main(args + ["--resume", "--eval-every", "7", "--keep-checkpoints", "3"]) == 0


def test_validation_fits_the_lost_threshold_saved_with_the_model(sft_run, pairs16):
    """Each validation fits the confidence below which an answer counts as lost (the one that
    best tells the greedy answers of IoU >= 0.5 from the rest); a checkpoint and the final
    model carry the last in their tracking settings (None where every answer is good)."""
    import numpy as np

    from prompts import collate, image_side
    from settings import read_settings

    metrics = [json.loads(line) for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    fits = {m["step"]: m["val_lost_below"] for m in metrics if "val_lost_below" in m}
    assert set(fits) == {60, 100} and fits[60] is not None  # at step 60 some answers are still wrong
    assert read_settings(str(sft_run / "checkpoint-60")).lost_below == fits[60]
    assert read_settings(str(sft_run)).lost_below == fits[100]

    # checkpoint-60's greedy answers to the 16 pairs, their confidences and IoUs, found here
    model, processor = r1track.load_model(str(sft_run / "checkpoint-60"), device="cpu")
    pairs = [data.open_pairs(str(pairs16), 112).load(i) for i in range(16)]
    batch = collate([build_inputs(processor, p.template, p.search, p.template_box_xyxy, return_tensors=False)
                     for p in pairs], processor.tokenizer.pad_token_id)
    texts, confidences = r1track.generate_answers(model, processor, batch, confidences=True)
    boxes = [answer_box(text, image_side(p.search), processor.base.boxes) for text, p in zip(texts, pairs)]
    good = np.array([box is not None and iou_xyxy(box, p.search_box_xyxy) >= 0.5 for box, p in zip(boxes, pairs)])
    scores = np.array([c or 0.0 for c in confidences])

    def balanced(threshold):
        lost = scores < threshold
        return ((lost & ~good).sum() / max((~good).sum(), 1) + (~lost & good).sum() / max(good.sum(), 1)) / 2

    assert 0 < good.sum() < 16
    assert balanced(fits[60]) == pytest.approx(max(balanced(t) for t in np.linspace(0, 1.001, 2003)))
