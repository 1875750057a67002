"""eval_got10k.py: the official toolkit's numbers, nothing lost when killed, batched
tracking that changes nothing, and clear errors for bad result files."""
import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, ChatServer, main_in_process, run_main, run_script

import synthetic
from benchmarks import got10k
from benchmarks.got10k import GOT10K
from settings import TrackSettings


def noisy_results(root, result_dir, seed=0):
    """Result files for every val sequence: the truth jittered, some frames far off, some
    boxes pushed over the image border, some hopeless."""
    rng = np.random.default_rng(seed)
    for name in got10k.read_got10k_split(root / "val"):
        truth = got10k.read_got10k_sequence(root / "val" / name)["boxes_xywh"]
        boxes = truth + rng.normal(0, 6, truth.shape)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 1)
        far = rng.random(len(boxes)) < 0.15
        boxes[far, :2] += rng.uniform(-200, 200, (far.sum(), 2))
        boxes[rng.random(len(boxes)) < 0.1, 0] = -30.0   # over the left edge
        boxes[rng.random(len(boxes)) < 0.1, 1] = 230.0   # over the bottom edge
        boxes[0] = truth[0]
        GOT10K.write(result_dir, name, boxes, rng.uniform(0.01, 0.2, len(boxes)))


def test_scores_equal_the_official_toolkit(got10k_root, tmp_path):
    from got10k.experiments import ExperimentGOT10k
    from got10k.utils.metrics import rect_iou

    covers = np.concatenate([got10k.read_got10k_sequence(got10k_root / "val" / n)["cover"][1:]
                             for n in got10k.read_got10k_split(got10k_root / "val")])
    assert (covers == 0).any()  # absent frames are in the data and must be left out
    results = tmp_path / "results" / "GOT-10k" / "ours"
    noisy_results(got10k_root, results)
    experiment = ExperimentGOT10k(str(got10k_root), subset="val", result_dir=str(tmp_path / "results"),
                                  report_dir=str(tmp_path / "reports"))
    official = experiment.report(["ours"])["ours"]
    ours = GOT10K.score(results, GOT10K.sequences(got10k_root, "val"))

    assert ours["ao"] == pytest.approx(official["overall"]["ao"], abs=1e-12)
    assert ours["sr50"] == pytest.approx(official["overall"]["sr"], abs=1e-12)
    assert ours["succ_curve"] == pytest.approx(official["overall"]["succ_curve"], abs=1e-12)
    assert ours["fps"] == pytest.approx(official["overall"]["speed_fps"], rel=1e-9)
    for name, row in official["seq_wise"].items():
        assert ours["per_sequence"][name]["ao"] == pytest.approx(row["ao"], abs=1e-12)
    # SR0.75, which the toolkit does not report: the share of its own IoUs above 0.75
    ious = []
    for name in got10k.read_got10k_split(got10k_root / "val"):
        sequence = got10k.read_got10k_sequence(got10k_root / "val" / name)
        boxes = np.loadtxt(results / name / f"{name}_001.txt", delimiter=",")
        iou = rect_iou(boxes[1:], sequence["boxes_xywh"][1:].copy(), bound=sequence["resolution"])
        ious.append(iou[sequence["cover"][1:] > 0])
    ious = np.concatenate(ious)
    assert ours["sr75"] == pytest.approx(np.mean(ious > 0.75), abs=1e-12)
    assert 0.05 < ours["sr75"] < ours["sr50"] < 0.95  # the data exercises the thresholds


def test_bounded_iou_keeps_the_toolkits_edge_rule():
    # x = -10, w = 30 in a 100-wide image: x -> 0 and w stays 30 (clipped only to W - x)
    a = got10k.bounded_iou([[-10, 0, 30, 10]], [[0, 0, 30, 10]], 100, 100)
    assert a[0] == pytest.approx(1.0)


def eval_args(root, model, out, *extra):
    return ["eval_got10k.py", "--data", str(root), "--split", "val", "--model", str(model), "--out", str(out),
            "--device", "cpu", "--no-progress", *extra]


def box_files(results):
    return {p.name: p.read_text() for p in sorted(Path(results).glob("*/*_001.txt"))}


@pytest.fixture(scope="module")
def whole_run(got10k_root, sft_warm, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "whole"
    result = run_main(*eval_args(got10k_root, sft_warm, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_a_full_run_reports_every_number(whole_run, got10k_root):
    out, stdout = whole_run
    names = got10k.read_got10k_split(got10k_root / "val")
    assert len(box_files(out)) == len(names)
    report = json.loads((out / "report.json").read_text())
    assert {"ao", "sr50", "sr75", "fps", "succ_curve", "per_sequence"} <= set(report)
    assert len(report["succ_curve"]) == 101 and set(report["per_sequence"]) == set(names)
    assert report["fps"] > 0 and (out / "success_plot.png").stat().st_size > 1000
    for line in ("AO", "SR0.5", "SR0.75", "FPS", names[0]):
        assert line in stdout
    times = np.loadtxt(out / names[0] / f"{names[0]}_time.txt")
    assert times.shape == (24,) and (times > 0).all()


def test_killed_run_resumes_to_the_same_results(whole_run, got10k_root, sft_warm, tmp_path):
    broken = tmp_path / "broken"
    process = subprocess.Popen([sys.executable, *eval_args(got10k_root, sft_warm, broken)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(box_files(broken)) < 2:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(box_files(broken))
    assert 2 <= done < len(got10k.read_got10k_split(got10k_root / "val"))
    again = run_main(*eval_args(got10k_root, sft_warm, broken))
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{done} already tracked" in again.stdout
    assert box_files(broken) == box_files(whole_run[0])
    assert not list(broken.rglob(".*"))  # no temporary files left


def test_batched_sequences_give_the_same_boxes(whole_run, got10k_root, sft_warm, tmp_path):
    out = tmp_path / "batch4"
    result = run_main(*eval_args(got10k_root, sft_warm, out, "--batch", "4"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert box_files(out) == box_files(whole_run[0])


def test_torchrun_ranks_share_the_sequences(whole_run, got10k_root, sft_warm, tmp_path):
    out = tmp_path / "ranks"
    result = run_script("-m", "torch.distributed.run", "--nproc_per_node", "2", *eval_args(got10k_root, sft_warm, out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert box_files(out) == box_files(whole_run[0])
    assert (out / "report.json").is_file()


def test_several_result_folders_side_by_side(whole_run, got10k_root, tmp_path):
    other = tmp_path / "noisy"
    noisy_results(got10k_root, other)
    report = tmp_path / "both.json"
    result = run_main("eval_got10k.py", "--data", got10k_root, "--eval-only", whole_run[0], other, "--report", report)
    assert result.returncode == 0, result.stderr
    both = json.loads(report.read_text())
    assert set(both) == {"whole", "noisy"} and both["noisy"]["ao"] != both["whole"]["ao"]
    header = [line for line in result.stdout.splitlines() if "whole" in line and "noisy" in line]
    assert header and (tmp_path / "success_plot.png").is_file()


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_text("\n".join(p.read_text().splitlines()[:-1]) + "\n"), "expected 24 rows"),
    (lambda p: p.write_text(p.read_text().replace("\n", "\nnan,1,2,3\n", 1)), "expected 24 rows"),
    (lambda p: p.write_text(p.read_text().replace(p.read_text().splitlines()[3], "nan,nan,1,1")), "NaN"),
    (lambda p: p.write_text(p.read_text().replace(p.read_text().splitlines()[2], "left,top,w,h")), "not a file of"),
    (lambda p: p.unlink(), "no results for 1 of"),
])
def test_malformed_result_file_is_named(got10k_root, tmp_path, damage, message):
    results = tmp_path / "results"
    noisy_results(got10k_root, results)
    name = got10k.read_got10k_split(got10k_root / "val")[2]
    damage(results / name / f"{name}_001.txt")
    result = run_main("eval_got10k.py", "--data", got10k_root, "--eval-only", results)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
    if "no results" not in message:
        assert name in lines[0]


def test_test_split_is_packed_for_the_server(tiny_model_dir, tmp_path):
    root = tmp_path / "got10k"
    synthetic.make_synthetic_got10k(root, "test", sequences=2, frames=4, seed=3)
    out = tmp_path / "test_results"
    result = run_main("eval_got10k.py", "--data", root, "--split", "test", "--model", tiny_model_dir, "--out", out,
                      "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    with zipfile.ZipFile(tmp_path / "test_results.zip") as archive:
        members = sorted(n for n in archive.namelist() if not n.endswith("/"))
    assert members == [f"GOT-10k_Test_00000{i}/GOT-10k_Test_00000{i}_{kind}.txt" for i in (1, 2) for kind in ("001", "time")]


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/root"], "no list.txt"),
    (["--data", "{root}", "--sequences", "nope"], "nope"),
    (["--data", "{root}", "--split", "test", "--eval-only", "x"], "no ground truth"),
])
def test_bad_input_is_one_line(got10k_root, args, message, capsys):
    import eval_got10k

    code, stderr = main_in_process(eval_got10k.main, [*[a.format(root=got10k_root) for a in args], "--model",
                                                      "/no/such/model"], capsys)
    assert code == 2 and message in stderr and "Traceback" not in stderr


def test_fallbacks_are_counted_for_a_server_that_answers_garbage(got10k_root, tmp_path):
    """A model whose answers never parse is scored on a frozen box: the report says so."""
    settings = tmp_path / "r1track.json"
    TrackSettings(crop_size=112).save(tmp_path)
    names = got10k.read_got10k_split(got10k_root / "val")[:3]
    with ChatServer(lambda index, payload: ["I cannot see it", "[1,2,3]", "[50,50,50,90]"][index % 3]) as server:
        result = run_main("eval_got10k.py", "--data", got10k_root, "--server", server.url, "--settings", settings,
                          "--out", tmp_path / "garbage", "--sequences", *names, "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "garbage" / "report.json").read_text())
    assert report["fallbacks"] == report["tracked_frames"] == 3 * 23
    assert all(row["fallbacks"] == 23 and row["edge_holds"] == 0 for row in report["per_sequence"].values())
    assert "69 (100.0%)" in result.stdout and "most answers could not be used" in result.stderr
    assert "edge holds" in result.stdout
    codes = np.loadtxt(tmp_path / "garbage" / names[0] / f"{names[0]}_fallbacks.txt")
    assert codes.tolist() == [0] + [1] * 23
    assert "tracking settings: wording seed, think off, 112-px crops" in result.stdout


def test_results_of_other_trackers_have_no_fallback_count(got10k_root, tmp_path):
    noisy_results(got10k_root, tmp_path / "noisy")
    result = run_main("eval_got10k.py", "--data", got10k_root, "--eval-only", tmp_path / "noisy")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "noisy" / "report.json").read_text())["fallbacks"] is None


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--server", "http://127.0.0.1:{port}"], "cannot reach http://127.0.0.1:{port}/v1/models"),
    (["--server", "http://127.0.0.1:{port}", "--server-model", "R1-Track", "--settings", "/no/such/r1track.json"],
     "/no/such/r1track.json: no such file or folder"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--loop", "mine"], "invalid choice: 'mine'"),
    (["--split", "nope"], "invalid choice: 'nope'"),
    (["--fit-lost-below", "--eval-only", "results"], "track with --model, not --eval-only"),
    (["--fit-lost-below", "--split", "test"], "--fit-lost-below fits on clips with truth"),
])
def test_user_errors_are_one_line(got10k_root, tmp_path, args, message, capsys):
    import eval_got10k

    port = closed_port()
    args = [a.format(port=port) for a in args]
    code, stderr = main_in_process(eval_got10k.main, ["--data", got10k_root, "--out", tmp_path / "out", *args], capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert message.format(port=port) in lines[0] and "Traceback" not in stderr


def test_fitted_lost_threshold_is_the_best_balanced_accuracy():
    """Against every threshold tried by brute force: the fitted one tells bad from good as
    well as the best of them (balanced accuracy written out here)."""
    from answers import fit_lost_below

    rng = np.random.default_rng(3)
    for good_share in (0.3, 0.8):
        good = rng.random(300) < good_share
        confidences = np.round(np.where(good, rng.normal(0.7, 0.08, 300), rng.normal(0.58, 0.08, 300)), 2)
        confidences[rng.random(300) < 0.05] = np.nan  # no confidence: left out

        def balanced(threshold):
            known = ~np.isnan(confidences)
            lost, ok = confidences[known] < threshold, good[known]
            return ((lost & ~ok).sum() / (~ok).sum() + (~lost & ok).sum() / ok.sum()) / 2

        threshold = fit_lost_below(confidences, good)
        best = max(balanced(t) for t in np.linspace(0, 1.01, 1011))
        assert balanced(threshold) == pytest.approx(best) and balanced(threshold) > balanced(0.5) + 0.1
    with pytest.raises(ValueError):
        fit_lost_below([0.6, 0.7], [True, True])  # no bad box to tell apart


def test_lost_threshold_fitted_by_eval_is_what_track_py_marks_lost_by(tmp_path):
    """eval_got10k.py --fit-lost-below on clips whose target hides now and then saves the
    threshold in the model folder's settings; track.py then marks frames lost by it (without
    the note a model with none gets) and --lost-below still overrides it."""
    import dataclasses
    import shutil

    from settings import DEMO_MODEL, read_settings

    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    dataclasses.replace(read_settings(str(model)), lost_below=None).save(model)  # as a model with none
    root = tmp_path / "clips"
    synthetic.make_synthetic_got10k(root, "val", sequences=4, frames=16, seed=11, style="plain", hiding=True)
    clip = root / "val" / got10k.read_got10k_split(root / "val")[0]
    x, y, w, h = got10k.read_got10k_sequence(clip)["boxes_xywh"][0]
    box = f"{x},{y},{x + w},{y + h}"

    def track(*flags):
        out = tmp_path / f"track{len(flags)}"
        result = run_main("track.py", "--video", clip, "--box", box, "--model", model, "--out", out, "--no-video",
                          "--device", "cpu", *flags)
        assert result.returncode == 0, result.stderr[-2000:]
        confidence = np.loadtxt(out / "confidence.txt", ndmin=1)
        return result.stderr, confidence, np.loadtxt(out / "lost.txt", ndmin=1).astype(bool)

    err, _, _ = track()
    assert "no lost threshold fitted" in err
    result = run_main("eval_got10k.py", "--data", root, "--model", model, "--out", tmp_path / "eval", "--batch", "4",
                      "--no-progress", "--fit-lost-below")
    assert result.returncode == 0, result.stderr[-2000:]
    threshold = read_settings(str(model)).lost_below
    assert threshold is not None and f"{threshold:.3f}" in result.stdout and "balanced accuracy" in result.stdout
    written = np.loadtxt(tmp_path / "eval" / clip.name / f"{clip.name}_confidence.txt", ndmin=1)
    assert len(written) == 16 and written[0] == 1

    err, confidence, lost = track()
    assert "no lost threshold fitted" not in err
    assert (lost == (confidence < threshold)).all()
    _, confidence, lost = track("--lost-below", "0.99")
    assert (lost == (confidence < 0.99)).all()
