"""The offline demo (track.py --demo with the bundled demo_model/) and its recipe."""
import json
import sys
import types
from pathlib import Path

import av
import pytest

import make_demo_model
import r1track
from conftest import run_main


def test_demo_really_tracks_clips_it_never_saw(tmp_path):
    result = run_main("track.py", "--demo", "--out", tmp_path, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ao"] >= 0.5
    assert f"AO {report['ao']:.3f} on 8 held-out synthetic clips" in result.stdout
    with av.open(str(tmp_path / "tracked.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 8 * 40
    assert (tmp_path / "example.png").stat().st_size > 0 and (tmp_path / "success_plot.png").is_file()


def test_demo_model_is_small_and_loads_as_a_hub_model_would():
    if not (r1track.DEMO_MODEL / "config.json").is_file():
        pytest.fail("demo_model/ is missing: run make_demo_model.py")
    size = sum(f.stat().st_size for f in r1track.DEMO_MODEL.iterdir())
    assert size <= 20 * 2**20
    model, _ = r1track.load_model(str(r1track.DEMO_MODEL), device="cpu")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert r1track.load_settings(str(r1track.DEMO_MODEL)).crop_size == 112


@pytest.mark.parametrize("args, message", [
    (["--video", "clip.mp4"], "--demo makes its own clips"),
    (["--model", "/no/such/model"], "cannot load the model"),
])
def test_demo_bad_input_is_one_line(tmp_path, args, message):
    result = run_main("track.py", "--demo", *args, "--out", tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_demo_model_recipe_runs_end_to_end(tmp_path, monkeypatch, capsys):
    # the whole recipe in miniature: clips, a random start, SFT, held-out evaluation, copy;
    # each script it runs runs in this process (conftest.run_main), not in one of its own
    def in_process(command):
        _python, script, *args = command
        result = run_main(Path(script).name, *args)
        print(result.stdout, end="")
        print(result.stderr, end="", file=sys.stderr)  # a failed step says why
        return result

    monkeypatch.setattr(make_demo_model, "subprocess", types.SimpleNamespace(run=in_process))
    monkeypatch.setitem(make_demo_model.TRAIN_CLIPS, "sequences", 3)
    monkeypatch.setitem(make_demo_model.TRAIN_CLIPS, "frames", 6)
    monkeypatch.setitem(make_demo_model.VAL_CLIPS, "sequences", 2)
    monkeypatch.setitem(make_demo_model.VAL_CLIPS, "frames", 4)
    out = tmp_path / "model"
    assert make_demo_model.main(["--work", str(tmp_path / "work"), "--out", str(out), "--steps", "0.0005"]) == 0
    assert "AO" in capsys.readouterr().out
    model, _ = r1track.load_model(str(out), device="cpu")
    assert r1track.load_settings(str(out)).crop_size == 112
    for stage, steps in zip(make_demo_model.STAGES, (2, 1)):  # 4000 and 1000 steps, scaled down
        lines = [json.loads(line) for line in (tmp_path / "work" / stage / "metrics.jsonl").read_text().splitlines()]
        assert max(line["step"] for line in lines) == steps and any("val_iou" in line for line in lines)
