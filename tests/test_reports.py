"""A training run's reports as their own tools read them: TensorBoard's event files through
TensorBoard's reader, an offline W&B run's file through W&B's own record format, trackio's
database through trackio; the model card through huggingface_hub's ModelCard; --push-to-hub
against no token and against a hub that cannot be reached."""

import json
import os
import shutil
import struct
import time
from pathlib import Path

import pytest

from conftest import main_in_process, run_main, run_script

BASE = "Qwen/Qwen2.5-VL-3B-Instruct"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_as_hub_model(hf_home: Path, repo: str, folder: Path):
    """`folder`'s files laid out in huggingface_hub's cache as `repo`, as a download leaves
    them (from_pretrained fetches no README.md): the model loads by its hub id offline."""
    cached = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, cached / "snapshots" / COMMIT)


def jsonl_scalars(out: Path) -> dict:
    found = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                assert (key, record["step"]) not in found, f"{key} twice at step {record['step']}"
                found[key, record["step"]] = value
    return found


def tensorboard_scalars(log_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    found = {}
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            assert (tag, event.step) not in found, f"{tag} twice at step {event.step}"
            found[tag, event.step] = event.value
    return found


def wandb_records(path: Path):
    """The records of a W&B run file (a LevelDB-style log of protobuf Records: a 7-byte
    header, 32 KiB blocks of checksum, length, type and data; a record may span blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pieces = 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        length, kind = struct.unpack_from("<HB", data, position + 4)
        pieces += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record
            pieces = b""


def assert_same_scalars(found: dict, expected: dict, rel=1e-6):
    assert set(found) == set(expected)
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, rel=rel, abs=1e-7), key


def sft_flags(model, data, out, *extra):
    return ["train_sft.py", "--model", str(model), "--data", str(data), "--out", str(out), "--crop-size", "112",
            "--lora-rank", "4", "--batch-size", "4", "--grad-accum", "1", "--no-gradient-checkpointing", *extra]


@pytest.fixture(scope="module")
def reported_sft(tiny_model_dir, pairs16, tmp_path_factory):
    """SFT from the hub id of the 3B (the tiny model in the hub cache under that name), 4 steps,
    validation at 2 and 4, reported to TensorBoard, an offline W&B run and trackio at once."""
    root = tmp_path_factory.mktemp("reported")
    cache_as_hub_model(root / "hf", BASE, tiny_model_dir)
    out = root / "sft"
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    result = run_script(*sft_flags(BASE, pairs16, out, "--max-steps", "4", "--val-data", pairs16, "--val-size", "4",
                                   "--eval-every", "2", "--save-every", "2", "--keep-checkpoints", "4",
                                   "--report-to", "tensorboard", "wandb", "trackio", "--project", "reports-test",
                                   "--run-name", "sft-reported"),
                        env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, out


def test_every_reporter_holds_what_metrics_jsonl_holds(reported_sft):
    _, out = reported_sft
    expected = jsonl_scalars(out)
    assert {step for _, step in expected} == {1, 2, 3, 4} and ("val_iou", 2) in expected and ("loss", 3) in expected

    assert_same_scalars(tensorboard_scalars(out / "runs"), expected)  # TensorBoard keeps float32

    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    history, config = {}, {}
    for record in wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    history[key, record.history.step.num] = json.loads(item.value_json)
        elif kind == "run":
            config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
    assert_same_scalars(history, expected, rel=0)
    assert config["max_steps"] == 4 and config["lr"] == 1e-5 and config["model"] == BASE

    from trackio.sqlite_storage import SQLiteStorage

    keys = {key for key, _ in expected}
    logged = {(key, row["step"]): value for row in SQLiteStorage.get_logs("reports-test", "sft-reported")
              for key, value in row.items() if key in keys}
    assert_same_scalars(logged, expected, rel=0)


def test_the_model_card_says_what_the_model_is_and_how_to_track_with_it(reported_sft):
    from huggingface_hub import ModelCard

    _, out = reported_sft
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == BASE and data["library_name"] == "peft"
    assert data["pipeline_tag"] == "image-text-to-text" and {"r1-track", "sft", "lora"} <= set(data["tags"])
    assert (data["license"], data["license_name"]) == ("other", "qwen-research")  # the 3B's own licence
    assert f"python track.py --video clip.mp4 --box 241,66,329,154 --model {out.resolve()}" in card.text
    assert f'tracker = r1track.Tracker("{out.resolve()}")' in card.text
    assert "trained 4 of 4 steps" in card.text and "| `--lora-rank` | `4` |" in card.text
    assert "| `--seed` | `0` |" in card.text and "| `--weight-decay` | `0.0` |" in card.text  # zeros are values too
    assert f"with peft the adapter goes on `{BASE}`" in card.text
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"| val_iou | {last['val_iou']:.6g} |" in card.text
    early = ModelCard.load(out / "checkpoint-2" / "README.md")
    assert "trained 2 of 4 steps" in early.text and early.data.base_model == BASE
    assert f"--model {(out / 'checkpoint-2').resolve()}" in early.text  # the checkpoint's card points at it


def test_grpo_over_a_local_sft_pushes_only_merged_and_its_cards_say_so(reported_sft, pairs16, capsys):
    """GRPO's adapter from the SFT output goes on that local model, which the hub does not
    have: --push-to-hub without --merge-lora is refused before the run; with it, OUT/merged (full
    weights) is what is pushed, its card names the hub model the SFT started from and its
    licence, and the adapter's own card says what it needs. Offline, the push is one line after
    the models are on disk."""
    from huggingface_hub import ModelCard

    import train_grpo

    root, sft = reported_sft
    out = root / "grpo"
    flags = ["--init", sft, "--data", pairs16, "--out", out, "--crop-size", "112", "--no-gradient-checkpointing",
             "--prompts-per-step", "2", "--group-size", "2", "--updates-per-batch", "1", "--max-steps", "1",
             "--max-new-tokens", "8", "--push-to-hub", "someone/r1track-test"]
    code, err = main_in_process(train_grpo.main, flags, capsys)
    assert code == 2 and f"goes on the local model {sft}, which the hub does not have; add --merge-lora" in err
    assert not out.exists()

    env = {**os.environ, "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_" + "x" * 34}
    result = run_script("train_grpo.py", *flags, "--merge-lora", env=env, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --push-to-hub someone/r1track-test failed (") and f"saved in {out / 'merged'}" in last
    merged = ModelCard.load(out / "merged" / "README.md")
    assert merged.data.base_model == BASE and merged.data.library_name == "transformers"
    assert merged.data.license_name == "qwen-research" and "grpo" in merged.data.tags
    assert "--model someone/r1track-test" in merged.text and f"the local model `{sft}` (itself from [{BASE}]" in merged.text
    adapter = ModelCard.load(out / "README.md")
    assert adapter.data.base_model is None and adapter.data.library_name == "peft"
    assert f"the adapter needs `{sft}` where it was" in adapter.text and f"--model {out.resolve()}" in adapter.text


def test_push_to_an_unreachable_hub_is_one_line_after_the_model_is_saved(tiny_model_dir, pairs16, tmp_path):
    """A token, but the hub's address refuses connections (no network)."""
    out = tmp_path / "sft"
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_TOKEN="hf_" + "x" * 34, HF_ENDPOINT="http://127.0.0.1:9")
    result = run_script(*sft_flags(tiny_model_dir, pairs16, out, "--max-steps", "1", "--full", "--push-to-hub",
                                   "someone/repo", "--hub-private"), env=env, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --push-to-hub someone/repo failed (") and f"saved in {out}" in last
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_push_without_a_token_is_one_line_after_the_model_is_saved(tiny_model_dir, pairs16, tmp_path, monkeypatch,
                                                                   capsys):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    out = tmp_path / "sft"
    result = run_main(*sft_flags(tiny_model_dir, pairs16, out, "--max-steps", "1", "--full", "--push-to-hub",
                                 "someone/repo"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --push-to-hub someone/repo: no Hugging Face token")
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_a_resumed_run_continues_its_reports_with_no_step_twice(tiny_model_dir, pairs16, tmp_path):
    """A run killed after step 3 with its last checkpoint at 2 (checkpoint-3 removed, a metrics
    line cut short): resumed, it redoes step 3. TensorBoard shows each step once, with the redone values; trackio
    continues the same run and does not take step 3 again; metrics.jsonl holds each step once."""
    from trackio.sqlite_storage import SQLiteStorage

    out = tmp_path / "sft"
    flags = sft_flags(tiny_model_dir, pairs16, out, "--max-steps", "3", "--save-every", "2", "--keep-checkpoints",
                      "4", "--report-to", "tensorboard", "trackio", "--project", "reports-test", "--run-name",
                      f"resumed-{os.getpid()}")
    assert run_main(*flags).returncode == 0
    first = jsonl_scalars(out)
    shutil.rmtree(out / "checkpoint-3")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a line the kill cut short
    resumed = run_main(*flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    expected = jsonl_scalars(out)
    assert {step for _, step in expected} == {1, 2, 3} and expected[("loss", 2)] == first[("loss", 2)]
    assert expected[("elapsed_s", 3)] > expected[("elapsed_s", 2)]  # the run's clock goes on from the checkpoint
    assert_same_scalars(tensorboard_scalars(out / "runs"), expected)
    rows = [row for row in SQLiteStorage.get_logs("reports-test", f"resumed-{os.getpid()}") if "loss" in row]
    assert sorted(row["step"] for row in rows) == [1, 2, 3]


def test_a_reporter_whose_package_is_missing_is_refused_in_one_line(tiny_model_dir, pairs16, tmp_path, monkeypatch,
                                                                    capsys):
    import importlib.util

    import train_sft

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    code, err = main_in_process(train_sft.main, sft_flags(tiny_model_dir, pairs16, tmp_path / "o", "--report-to",
                                                          "tensorboard", "wandb")[1:], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: --report-to wandb needs the wandb package: pip install wandb (or pip install -r "
                          "requirements-reports.txt)")
    code, err = main_in_process(train_sft.main, sft_flags(tiny_model_dir, pairs16, tmp_path / "o", "--report-to",
                                                          "none", "wandb")[1:], capsys)
    assert code == 2 and "--report-to none goes alone" in err
    assert not (tmp_path / "o").exists()


def test_curves_are_redrawn_within_a_small_share_of_the_run(tmp_path, monkeypatch):
    """A step a second, drawing a second: curves.png is redrawn about every 50 steps, not every
    step (it cost half of a GRPO step); the last drawing is never skipped."""
    import reports

    drawings = []
    clock = {"now": 0.0}

    def draw(metrics_file, png):
        drawings.append(clock["now"])
        clock["now"] += 1.0  # drawing takes a second

    monkeypatch.setattr(reports, "plot_metrics", draw)
    monkeypatch.setattr(reports.time, "perf_counter", lambda: clock["now"])
    report = reports.Report(tmp_path, type("Dist", (), {"main": True})())
    for step in range(1, 201):
        clock["now"] += 1.0  # a step takes a second
        report.log({"step": step, "loss": 1.0 / step})
        report.plot()
    report.finish()
    assert 3 <= len(drawings) <= 6  # at most 2% of the 400 s run
    assert drawings[-1] == clock["now"] - 1.0  # the final one, after the last step


def test_runs_in_folders_of_one_name_are_runs_of_their_own(tmp_path):
    """Two runs whose --out folders share a name get runs of their own in trackio, and a
    resumed one continues its own (it read its name from report_ids.json), not the newest
    namesake."""
    import argparse

    from trackio.sqlite_storage import SQLiteStorage

    import reports

    main = type("Dist", (), {"main": True})()
    args = argparse.Namespace(report_to=["trackio"], run_name=None, project="reports-names", lr=1e-3)
    names = []
    for k, folder in enumerate((tmp_path / "a" / "sft", tmp_path / "b" / "sft")):
        folder.mkdir(parents=True)
        report = reports.Report(folder, main, args)
        report.log({"step": 1, "loss": float(k)})
        report.finish()
        names.append(json.loads((folder / reports.IDS_FILE).read_text())["name"])
        time.sleep(1.1)  # the names carry the second a run started
    assert names[0] != names[1] and all(name.startswith("sft-") for name in names)
    resumed = reports.Report(tmp_path / "a" / "sft", main, args, resume_step=1)
    resumed.log({"step": 2, "loss": 5.0})
    resumed.finish()
    steps = {row["step"]: row["loss"] for row in SQLiteStorage.get_logs("reports-names", names[0]) if "loss" in row}
    assert steps == {1: 0.0, 2: 5.0}
