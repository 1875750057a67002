"""The offline demo (track.py --demo with the bundled demo_model/) and its recipe."""
import json

import av
import pytest
from conftest import run_main, run_script

import bases
import r1track
import synthetic
from settings import DEMO_MODEL, load_settings


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
    if not (DEMO_MODEL / "config.json").is_file():
        pytest.fail("demo_model/ is missing: run tools/make_demo_model.py")
    size = sum(f.stat().st_size for f in DEMO_MODEL.iterdir())
    assert size <= 20 * 2**20
    model, _ = r1track.load_model(str(DEMO_MODEL), device="cpu")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert load_settings(str(DEMO_MODEL)).crop_size == 112


@pytest.mark.parametrize("args, message", [
    (["--video", "clip.mp4"], "--demo makes its own clips"),
    (["--model", "/no/such/model"], "cannot load the model"),
])
def test_demo_bad_input_is_one_line(tmp_path, args, message):
    result = run_main("track.py", "--demo", *args, "--out", tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_demo_model_recipe_runs_end_to_end(tmp_path):
    # the whole recipe in miniature, as a user runs it, on both bases side by side: clips (small
    # ones made beforehand, which the recipe keeps and both bases share), a random start, SFT,
    # held-out evaluation, copy
    work = tmp_path / "work"
    synthetic.make_synthetic_got10k(work / "clips", "train", sequences=3, frames=6, seed=100, style="plain")
    synthetic.make_synthetic_got10k(work / "clips", "val", sequences=2, frames=4, seed=200, style="plain")
    synthetic.make_synthetic_got10k(work / "lost-clips", "val", sequences=2, frames=4, seed=31, style="plain",
                                    hiding=True)
    result = run_script("tools/make_demo_model.py", "--base", "qwen2_5_vl", "qwen3_vl", "--work", work,
                        "--steps", "0.0005")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the same recipe on the same clips: Qwen2.5-VL AO" in result.stdout and "Qwen3-VL AO" in result.stdout
    for base, crop in (("qwen2_5_vl", 112), ("qwen3_vl", 128)):
        model, _ = r1track.load_model(str(work / base / "model"), device="cpu")
        assert type(model).__name__ == bases.named(base).model_class
        assert load_settings(str(work / base / "model")).crop_size == crop
        assert (work / base / "eval-lost" / "report.json").is_file()  # the lost threshold's fit was tried
        for stage, steps in (("sft-published-jitter", 2), ("sft-tracking-pairs", 1)):  # 4000 and 1000, scaled
            lines = [json.loads(line) for line in (work / base / stage / "metrics.jsonl").read_text().splitlines()]
            assert max(line["step"] for line in lines) == steps and any("val_iou" in line for line in lines)
