"""eval_got10k.py --benchmark: every benchmark scored as its own toolkit scores it (the got10k
toolkit's experiments, or the LaSOT toolkit transcribed in lasot_toolkit.py), the
normalised-precision variants by hand, --init text end to end, one-line errors."""
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import main_in_process, run_main

from benchmarks import BENCHMARKS
from benchmarks.curves import NORM_PRECISION_THRESHOLDS
from benchmarks.lasot import LASOT_ATTRIBUTES, lasot_errors
from benchmarks.otb import otb_errors
from cli import UserError

TOOLKIT_LAYOUT = BENCHMARKS["otb100"]  # the result files of every benchmark but GOT-10k: the got10k toolkit's layout

sys.path.insert(0, str(Path(__file__).parent))
import lasot_toolkit  # noqa: E402
from benchmark_layouts import make_synthetic_benchmark  # noqa: E402


def noisy_boxes(truth, rng, unusable=False):
    """The truth jittered, some frames far off, some hopeless; with `unusable`, some rows NaN
    or of no width or height (the LaSOT toolkit carries the previous box over them)."""
    truth = np.nan_to_num(truth, nan=20.0)
    boxes = truth + rng.normal(0, 3, truth.shape)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 1)
    far = rng.random(len(boxes)) < 0.2
    boxes[far, :2] += rng.uniform(-60, 60, (far.sum(), 2))
    exact = rng.random(len(boxes)) < 0.1
    boxes[exact] = truth[exact]
    if unusable:
        rows = rng.choice(np.arange(1, len(boxes)), size=3, replace=False)
        boxes[rows[0]] = np.nan
        boxes[rows[1], 2] = 0
        boxes[rows[2], 3] = -4
    return np.round(boxes, 3)  # as written to the result file


def write_results(results, sequences, seed, unusable=False):
    rng = np.random.default_rng(seed)
    for sequence in sequences:
        boxes = noisy_boxes(sequence["boxes_xywh"], rng, unusable)
        TOOLKIT_LAYOUT.write(results, sequence["name"], boxes, rng.uniform(0.01, 0.2, len(boxes)))


def close(ours, theirs):
    return np.allclose(np.asarray(ours, float), np.asarray(theirs, float), rtol=0, atol=1e-6)


def check_against_got10k(report, performance, sequences):
    overall = performance["overall"]
    assert close(report["success_auc"], overall["success_score"])
    assert close(report["precision_20px"], overall["precision_score"])
    assert close(report["success_rate_50"], overall["success_rate"])
    assert close(report["success_curve"], overall["success_curve"])
    assert close(report["precision_curve"], overall["precision_curve"])
    assert close(report["fps"], overall["speed_fps"])
    for sequence in sequences:
        ours, theirs = report["per_sequence"][sequence["name"]], performance["seq_wise"][sequence["name"]]
        assert close(ours["success_auc"], theirs["success_score"])
        assert close(ours["precision_20px"], theirs["precision_score"])


# -----------------------------------------------------------------------------
# The got10k toolkit's experiments: OTB100, UAV123, NfS


def got10k_experiment(benchmark, root, tmp_path):
    from got10k.datasets import OTB
    from got10k.experiments import ExperimentNfS, ExperimentOTB, ExperimentUAV123

    if benchmark == "otb100":  # its constructor downloads whatever is missing: build it by hand
        experiment = ExperimentOTB.__new__(ExperimentOTB)
        experiment.dataset = OTB(str(root), "tb100", download=False)
        experiment.result_dir, experiment.report_dir = str(tmp_path / "got10k"), str(tmp_path / "reports")
        experiment.nbins_iou, experiment.nbins_ce = 21, 51
        return experiment, tmp_path / "got10k"
    if benchmark == "uav123":
        return (ExperimentUAV123(str(root), "UAV123", str(tmp_path / "got10k"), str(tmp_path / "reports")),
                tmp_path / "got10k" / "UAV123")
    return (ExperimentNfS(str(root), 30, str(tmp_path / "got10k"), str(tmp_path / "reports")),
            tmp_path / "got10k" / "NfS" / "30")


@pytest.mark.parametrize("benchmark, layout", [
    ("otb100", dict(sequences=4, frames=10, images="empty")),  # Jogging's two targets among them
    ("uav123", dict(names=["uav6", "bird1_2", "uav2"], images=False)),  # NaN rows where the target is hidden
    ("nfs", dict(sequences=3, frames=9, images="empty")),  # 240-fps rows, every 8th kept
])
def test_otb_style_scores_equal_the_got10k_toolkit(benchmark, layout, tmp_path, monkeypatch):
    from got10k.datasets import UAV123

    # got10k's UAV123 refuses a root of fewer than 4 entries; the dataset's holds anno/ and data_seq/
    monkeypatch.setattr(UAV123, "_check_integrity", lambda self, root_dir, version: None)
    root = make_synthetic_benchmark(tmp_path / "data", benchmark, style="clutter", **layout)
    experiment, results_parent = got10k_experiment(benchmark, root, tmp_path)
    sequences = BENCHMARKS[benchmark].sequences(root)
    assert [s["name"] for s in sequences] == list(experiment.dataset.seq_names)
    for sequence, (frames, truth) in zip(sequences, experiment.dataset):
        assert [str(f) for f in sequence["frames"]] == list(frames)
        assert np.array_equal(sequence["boxes_xywh"], truth, equal_nan=True)
    if benchmark == "uav123":
        assert any(np.isnan(s["boxes_xywh"]).any() for s in sequences)  # the case UAV123's rule is for
    write_results(results_parent / "ours", sequences, seed=1)
    performance = experiment.report(["ours"])["ours"]
    report = BENCHMARKS[benchmark].score(results_parent / "ours", sequences)
    check_against_got10k(report, performance, sequences)


def test_trackingnet_train_scores_equal_the_got10k_metric_code(tmp_path):
    """TrackingNet has no experiment class in the released toolkit (and its dataset class cannot
    sort real frame paths): its OTB-style metric functions score the train chunk's sequences."""
    from got10k.experiments import ExperimentOTB
    from got10k.utils.metrics import center_error, rect_iou

    root = make_synthetic_benchmark(tmp_path / "data", "trackingnet", sequences=3, frames=8, images="empty")
    sequences = BENCHMARKS["trackingnet"].sequences(root, "train")
    assert len(sequences) == 3 and all(len(s["boxes_xywh"]) == len(s["frames"]) == 8 for s in sequences)
    write_results(tmp_path / "ours", sequences, seed=2)
    curves = ExperimentOTB.__new__(ExperimentOTB)
    curves.nbins_iou, curves.nbins_ce = 21, 51
    success, precision = [], []
    for sequence in sequences:
        boxes = np.loadtxt(tmp_path / "ours" / f"{sequence['name']}.txt", delimiter=",")
        boxes[0] = sequence["boxes_xywh"][0]
        s, p = curves._calc_curves(rect_iou(boxes, sequence["boxes_xywh"]), center_error(boxes, sequence["boxes_xywh"]))
        success.append(s)
        precision.append(p)
    report = BENCHMARKS["trackingnet"].score(tmp_path / "ours", sequences)
    assert close(report["success_curve"], np.mean(success, axis=0))
    assert close(report["success_auc"], np.mean(np.mean(success, axis=0)))
    assert close(report["precision_20px"], np.mean(precision, axis=0)[20])


# -----------------------------------------------------------------------------
# The LaSOT toolkit: LaSOT, LaSOT-ext and TNL2K


def lasot_reference(sequences, results, absent_of):
    """The LaSOT toolkit's curves (its MATLAB transcribed in lasot_toolkit.py) from the files."""
    success, precision, norm_precision = [], [], []
    for sequence in sequences:
        boxes = np.loadtxt(results / f"{sequence['name']}.txt", delimiter=",", ndmin=2)
        truth, absent = sequence["boxes_xywh"], absent_of(sequence)
        s, p = lasot_toolkit.sequence_curves(boxes, truth, absent, norm_dst=False)
        _, n = lasot_toolkit.sequence_curves(boxes, truth, absent, norm_dst=True)
        success.append(s)
        precision.append(p)
        norm_precision.append(n)
    return [lasot_toolkit.overall(np.array(c)) for c in (success, precision, norm_precision)]


@pytest.mark.parametrize("benchmark", ["lasot", "lasot_ext", "tnl2k"])
def test_lasot_style_scores_equal_the_lasot_toolkit(benchmark, tmp_path):
    root = make_synthetic_benchmark(tmp_path / "data", benchmark, sequences=4, frames=14,
                                              style="clutter", images="empty")
    sequences = BENCHMARKS[benchmark].sequences(root)
    if benchmark == "lasot":  # the got10k toolkit's LaSOT reader sees the same boxes and flags
        from got10k.datasets import LaSOT

        theirs = LaSOT.__new__(LaSOT)  # its __init__ fails on every folder (0.1.3); its reading works
        theirs.root_dir, theirs.subset, theirs.return_meta = str(root), "test", True
        theirs.seq_names = [s["name"] for s in sequences]
        theirs.seq_dirs = [str(root / n.rsplit("-", 1)[0] / n / "img") for n in theirs.seq_names]
        theirs.anno_files = [str(Path(d).parent / "groundtruth.txt") for d in theirs.seq_dirs]
        for sequence in sequences:
            _, truth, meta = theirs[sequence["name"]]
            assert np.array_equal(sequence["boxes_xywh"], truth)
            assert np.array_equal(sequence["absent"], (meta["full_occlusion"] + meta["out_of_view"]) > 0)
        assert sum(s["absent"].sum() for s in sequences) > 0  # the rule for absent frames is exercised

    def absent_of(sequence):  # read apart from our reader: the flag files, or none
        folder = Path(sequence["frames"][0]).parent.parent
        flags = [np.loadtxt(folder / f"{kind}.txt", delimiter=",") for kind in ("full_occlusion", "out_of_view")
                 if (folder / f"{kind}.txt").is_file()]
        return (sum(flags) > 0).astype(int) if flags else np.zeros(len(sequence["boxes_xywh"]), int)

    write_results(tmp_path / "ours", sequences, seed=3, unusable=True)
    report = BENCHMARKS[benchmark].score(tmp_path / "ours", sequences)
    (success, success_auc), (precision, _), (norm, norm_auc) = lasot_reference(sequences, tmp_path / "ours", absent_of)
    assert close(report["success_curve"], success) and close(report["success_auc"], success_auc)
    assert close(report["precision_curve"], precision)
    assert close(report["precision_20px"], precision[lasot_toolkit.RANK_IDX_ERROR - 1])
    assert close(report["norm_precision_curve"], norm) and close(report["norm_precision_auc"], norm_auc)
    assert close(report["norm_precision_at_0.2"], norm[20])


def test_per_attribute_scores_equal_the_lasot_toolkit_on_the_sequences_that_have_it(tmp_path, capsys):
    import eval_got10k

    root = make_synthetic_benchmark(tmp_path / "data", "lasot", sequences=5, frames=10, images="empty")
    sequences = BENCHMARKS["lasot"].sequences(root)
    write_results(tmp_path / "ours", sequences, seed=6, unusable=True)
    rng = np.random.default_rng(6)
    flags = {s["name"]: rng.random(14) < 0.5 for s in sequences}
    (tmp_path / "att").mkdir()
    for name, row in flags.items():  # the toolkit's annos/att/<sequence>.txt: one line of 14 flags
        (tmp_path / "att" / f"{name}.txt").write_text(",".join(str(int(v)) for v in row) + "\n")
    assert eval_got10k.main(["--benchmark", "lasot", "--data", str(root), "--eval-only", str(tmp_path / "ours"),
                             "--attributes", str(tmp_path / "att")]) == 0
    report = json.loads((tmp_path / "ours" / "report.json").read_text())
    reference = []
    for sequence in sequences:
        boxes = np.loadtxt(tmp_path / "ours" / f"{sequence['name']}.txt", delimiter=",", ndmin=2)
        reference.append(lasot_toolkit.sequence_curves(boxes, sequence["boxes_xywh"], sequence["absent"], False)[0])
    reference = np.array(reference)
    for k, (short, name) in enumerate(LASOT_ATTRIBUTES):
        having = np.array([flags[s["name"]][k] for s in sequences])
        if not having.any():
            assert short not in report["per_attribute"]
            continue
        row = report["per_attribute"][short]
        assert row["name"] == name and row["sequences"] == having.sum()
        assert close(row["success_auc"], lasot_toolkit.overall(reference[having])[1])
    assert "FOC Full Occlusion" in capsys.readouterr().out or not any(f[9] for f in flags.values())


def test_a_sequence_never_scored_is_left_out_as_the_lasot_toolkit_does(tmp_path):
    """The LaSOT toolkit scores overlaps only where every value of the truth is > 0 and leaves
    sequences whose success curve is all zero out of the mean: a sequence whose truth touches
    the left edge (x = 0) throughout counts for nothing, even though its frame 1 is the truth."""
    rng = np.random.default_rng(5)
    truth_scored = np.column_stack([rng.uniform(5, 40, (6, 2)), rng.uniform(8, 20, (6, 2))])
    truth_edge = truth_scored.copy()
    truth_edge[:, 0] = 0
    sequences = [{"name": name, "frames": [None] * 6, "boxes_xywh": truth, "absent": None, "description": None}
                 for name, truth in (("scored", truth_scored), ("edge", truth_edge))]
    for sequence in sequences:
        TOOLKIT_LAYOUT.write(tmp_path, sequence["name"], noisy_boxes(sequence["boxes_xywh"], rng), [0.1] * 6)
    both = BENCHMARKS["lasot"].score(tmp_path, sequences)
    alone = BENCHMARKS["lasot"].score(tmp_path, sequences[:1])
    assert both["per_sequence"]["edge"]["success_auc"] == 0
    assert both["success_auc"] == pytest.approx(alone["success_auc"], abs=1e-12) and alone["success_auc"] > 0
    (_, auc), *_ = lasot_reference(sequences, tmp_path, lambda s: np.zeros(6, int))
    assert close(both["success_auc"], auc)
    # the got10k toolkit's OTB protocol has no such rule: it scores the edge sequence as any other
    assert BENCHMARKS["otb100"].score(tmp_path, sequences)["per_sequence"]["edge"]["success_auc"] > 0


# -----------------------------------------------------------------------------
# The normalised precision, by hand


@pytest.mark.parametrize("benchmark", ["otb100", "lasot"])
def test_normalised_precision_variants_by_hand(benchmark, tmp_path):
    """Truth 10 x 20 px; frame 1 is the truth, frame 2 is off by 1.55 px across (0.155 of the
    width), frame 3 by 6.1 px down (0.305 of the height). Over thresholds 0, 0.01 ... 0.5 the
    curve is 1/3 up to 0.15 (16 thresholds), 2/3 up to 0.30 (15), 1 after (20)."""
    truth = np.array([[5.0, 5.0, 10.0, 20.0]] * 3)
    boxes = truth + [[0, 0, 0, 0], [1.55, 0, 0, 0], [0, 6.1, 0, 0]]
    sequence = {"name": "hand", "frames": ["a", "b", "c"], "boxes_xywh": truth, "absent": None, "description": None}
    TOOLKIT_LAYOUT.write(tmp_path, "hand", boxes, [0.1] * 3)
    report = BENCHMARKS[benchmark].score(tmp_path, [sequence])
    assert report["norm_precision_auc"] == pytest.approx((16 / 3 + 15 * 2 / 3 + 20) / 51, abs=1e-12)
    assert report["norm_precision_at_0.2"] == pytest.approx(2 / 3, abs=1e-12)
    # and the plain precision: 1.55 px and 6.1 px are within 20 px
    assert report["precision_20px"] == pytest.approx(1.0)


def test_an_overlap_of_exactly_13_20_meets_each_toolkits_threshold_as_it_does(tmp_path):
    """A 13 x 10 box inside a 20 x 10 truth overlaps it by exactly 0.65. The LaSOT toolkit's
    thresholds are MATLAB's 0:0.05:1, whose 14th is 0.6499999999999999: the frame succeeds
    there. The got10k toolkit's are linspace(0, 1, 21), whose 14th is 0.65: it does not."""
    truth = np.array([[2.0, 2.0, 20.0, 10.0]] * 2)
    boxes = np.array([[2.0, 2.0, 20.0, 10.0], [2.0, 2.0, 13.0, 10.0]])
    sequence = {"name": "exact", "frames": ["a", "b"], "boxes_xywh": truth, "absent": None, "description": None}
    TOOLKIT_LAYOUT.write(tmp_path, "exact", boxes, [0.1, 0.1])
    lasot = BENCHMARKS["lasot"].score(tmp_path, [sequence])["success_curve"][13]
    otb = BENCHMARKS["otb100"].score(tmp_path, [sequence])["success_curve"][13]
    assert lasot == pytest.approx(1.0) and otb == pytest.approx(0.5)
    (curve, _), *_ = lasot_reference([sequence], tmp_path, lambda s: np.zeros(2, int))
    assert curve[13] == pytest.approx(lasot)


# -----------------------------------------------------------------------------
# Tracking: --init text end to end, TrackingNet packed for its server, errors


def test_init_text_tracks_a_tnl2k_clip_end_to_end(tiny_model_dir, tmp_path):
    root = make_synthetic_benchmark(tmp_path / "data", "tnl2k", sequences=2, frames=4, size=(96, 72))
    out = tmp_path / "out"
    result = run_main("eval_got10k.py", "--benchmark", "tnl2k", "--data", root, "--init", "text", "--model",
                      tiny_model_dir, "--out", out, "--device", "cpu", "--no-progress", "--batch", "2")
    assert result.returncode == 0, result.stderr
    sequences = BENCHMARKS["tnl2k"].sequences(root)
    report = json.loads((out / "report.json").read_text())
    assert report["init"] == "text" and report["benchmark"] == "tnl2k" and report["protocol"] == "lasot"
    not_found = []
    for sequence in sequences:
        rows = np.loadtxt(out / f"{sequence['name']}.txt", delimiter=",", ndmin=2)
        assert rows.shape == (len(sequence["frames"]), 4)
        codes = np.loadtxt(out / "fallbacks" / f"{sequence['name']}_fallbacks.txt", dtype=int)
        if codes[0] == 3:  # the description was not found: started from the middle of the frame
            not_found.append(sequence["name"])
            assert np.allclose(rows[0], [24, 18, 48, 36], atol=1e-3)
        else:  # started from the box the grounding answered, not from the true first box
            assert not np.allclose(rows[0], sequence["boxes_xywh"][0], atol=1e-3)
    assert report["init_not_found"] == not_found
    assert result.stderr.count("the description was not found") == len(not_found)
    for plot in ("success_plot.png", "precision_plot.png", "norm_precision_plot.png"):
        assert (out / plot).is_file()
    again = run_main("eval_got10k.py", "--benchmark", "tnl2k", "--data", root, "--model", tiny_model_dir,
                     "--out", out, "--device", "cpu", "--no-progress")
    assert again.returncode == 2 and "started with --init text" in again.stderr


def test_trackingnet_test_split_is_packed_for_its_server(tiny_model_dir, tmp_path):
    root = make_synthetic_benchmark(tmp_path / "data", "trackingnet", sequences=2, frames=3)
    result = run_main("eval_got10k.py", "--benchmark", "trackingnet", "--data", root, "--model", tiny_model_dir,
                      "--out", tmp_path / "tn", "--device", "cpu", "--no-progress")
    assert result.returncode == 0, result.stderr
    names = [s["name"] for s in BENCHMARKS["trackingnet"].sequences(root)]
    with zipfile.ZipFile(tmp_path / "tn.zip") as archive:
        assert sorted(archive.namelist()) == sorted(f"{n}.txt" for n in names)
        rows = np.loadtxt(archive.open(f"{names[0]}.txt"), delimiter=",", ndmin=2)
    assert rows.shape == (3, 4)


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "lasot", "--data", "{got10k}"], "does not hold LaSOT in its official layout"),
    (["--benchmark", "otb100", "--data", "{got10k}"], "does not hold OTB100 in its official layout"),
    (["--benchmark", "uav123", "--data", "/no/such/root"], "/no/such/root: no such folder"),
    (["--benchmark", "otb100", "--data", "{got10k}", "--split", "val"], "OTB100 has one set"),
    (["--benchmark", "got10k", "--data", "{got10k}", "--init", "text"], "--init text needs sequences with descriptions"),
    (["--benchmark", "trackingnet", "--data", "{got10k}", "--eval-only", "x"], "no ground truth"),
])
def test_wrong_layouts_and_flags_are_one_line(got10k_root, tmp_path, args, message, capsys):
    import eval_got10k

    args = [a.format(got10k=got10k_root) for a in args]
    code, stderr = main_in_process(eval_got10k.main, [*args, "--model", "/no/such/model", "--out", tmp_path / "out"],
                                   capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], stderr


def test_result_files_as_other_tools_write_them(tmp_path, capsys):
    """pytracking's layout (tabs, <seq>_time.txt beside the boxes) gives the same scores and
    its speed; a malformed row is named by its line; a missing folder is said to be missing."""
    import eval_got10k

    root = make_synthetic_benchmark(tmp_path / "data", "lasot", sequences=2, frames=6, images="empty")
    sequences = BENCHMARKS["lasot"].sequences(root)
    write_results(tmp_path / "ours", sequences, seed=7)
    (tmp_path / "pytracking").mkdir()
    for sequence in sequences:
        rows = (tmp_path / "ours" / f"{sequence['name']}.txt").read_text().replace(",", "\t")
        (tmp_path / "pytracking" / f"{sequence['name']}.txt").write_text(rows)
        (tmp_path / "pytracking" / f"{sequence['name']}_time.txt").write_text("0.05\n" * 6)
    ours = BENCHMARKS["lasot"].score(tmp_path / "ours", sequences)
    theirs = BENCHMARKS["lasot"].score(tmp_path / "pytracking", sequences)
    assert theirs["success_auc"] == ours["success_auc"] and theirs["fps"] == pytest.approx(20.0)
    broken = tmp_path / "pytracking" / f"{sequences[0]['name']}.txt"
    broken.write_text(broken.read_text().replace("\n", "\nabc\tdef\t1\t2\n", 1))
    code, stderr = main_in_process(eval_got10k.main, ["--benchmark", "lasot", "--data", root, "--eval-only",
                                                      tmp_path / "pytracking"], capsys)
    assert code == 2 and f"{broken}, line 2: not numbers" in stderr, stderr
    code, stderr = main_in_process(eval_got10k.main, ["--benchmark", "lasot", "--data", root, "--eval-only",
                                                      tmp_path / "nope"], capsys)
    assert code == 2 and "nope: no such folder" in stderr, stderr


def test_a_truth_of_no_size_and_a_broken_flag_file(tmp_path, recwarn):
    """A truth of 0,0,0,0 (an absent target in some benchmarks' files): the LaSOT toolkit marks
    the frame -1, the OTB code's normalised error never meets a threshold; numpy's division
    warnings stay off the screen. A flag file that is not 0/1 is one line."""
    truth = np.array([[5.0, 5.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 10.0, 10.0]])
    assert lasot_errors(truth + 1, truth)[2][1] == -1
    assert not (otb_errors(truth + 1, truth)[2][1] <= NORM_PRECISION_THRESHOLDS).any()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    root = make_synthetic_benchmark(tmp_path / "data", "lasot", sequences=1, frames=4, images=False)
    flags = next(root.glob("*/*/out_of_view.txt"))
    flags.write_text("0,1,x,0\n")
    with pytest.raises(UserError, match="out_of_view.txt: not a line of 0/1 flags"):
        BENCHMARKS["lasot"].sequences(root)
