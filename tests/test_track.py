"""The Tracker (the published loop) and track.py."""
import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import ChatServer, main_in_process, run_main
from PIL import Image

import r1track
import synthetic
from benchmarks import got10k
from boxes import clamp_box_xyxy, iou_xyxy, xywh_to_xyxy, xyxy_to_xywh
from settings import DEMO_MODEL

ROOT = Path(__file__).resolve().parents[1]


def clipped_iou(a_xywh, b_xywh, size):
    """IoU after clipping both boxes to the frame, as GOT-10k scores."""
    clip = lambda b: clamp_box_xyxy(xywh_to_xyxy(b), max(size))  # noqa: E731
    a, b = clip(a_xywh), clip(b_xywh)
    a = [min(a[0], size[0]), min(a[1], size[1]), min(a[2], size[0]), min(a[3], size[1])]
    b = [min(b[0], size[0]), min(b[1], size[1]), min(b[2], size[0]), min(b[3], size[1])]
    return iou_xyxy(a, b)


class Oracle:
    """Answers the true box of the current frame in search-crop pixels, rounded to integers
    as a model writes them; when the target is hidden, answers nothing."""

    def __init__(self, tracker, boxes_xywh, visible=None, factor=4.0, size=336):
        self.tracker, self.boxes, self.visible = tracker, boxes_xywh, visible
        self.frame = 0

    def __call__(self, template, search, template_box_xyxy):
        if self.visible is not None and not self.visible[self.frame]:
            return "I cannot see it"
        scale, origin, _ = self.tracker.search_crop
        x, y, w, h = self.boxes[self.frame]
        box = [(x - origin[0]) * scale, (y - origin[1]) * scale, (x + w - origin[0]) * scale, (y + h - origin[1]) * scale]
        return json.dumps([round(v) for v in box])


def track_with(tracker, oracle, frames, first_box):
    boxes = []
    for t, frame in enumerate(frames):
        oracle.frame = t
        if t == 0:
            tracker.init(frame, first_box)
            boxes.append(list(first_box))
        else:
            boxes.append(tracker.update(frame))
    return boxes


def load_frames(sequence):
    return [Image.open(f).convert("RGB") for f in sequence["frames"]]


def test_oracle_answers_reproduce_the_ground_truth(got10k_root):
    """With an answer_fn that knows the true box, the loop's crops and mappings give the
    ground truth back; only integer rounding is left."""
    ious = []
    for name in got10k.read_got10k_split(got10k_root / "val"):
        sequence = got10k.read_got10k_sequence(got10k_root / "val" / name)
        tracker = r1track.Tracker(answer_fn=lambda *a: oracle(*a))
        oracle = Oracle(tracker, sequence["boxes_xywh"])
        boxes = track_with(tracker, oracle, load_frames(sequence), sequence["boxes_xywh"][0])
        for t in range(1, len(boxes)):
            if sequence["cover"][t] > 0:
                ious.append(clipped_iou(boxes[t], sequence["boxes_xywh"][t], sequence["resolution"]))
        assert tracker.fallbacks == 0
    assert np.mean(ious) >= 0.95, np.mean(ious)


def test_garbage_answers_keep_the_initial_box(got10k_root):
    sequence = got10k.read_got10k_sequence(got10k_root / "val" / got10k.read_got10k_split(got10k_root / "val")[0])
    frames = load_frames(sequence)
    for garbage in ("", "no idea", "[1,2,3]", "[50,50,10,10]", "[400,400,500,500]"):
        tracker = r1track.Tracker(answer_fn=lambda *a: garbage)
        tracker.init(frames[0], sequence["boxes_xywh"][0])
        boxes = [tracker.update(f) for f in frames[1:]]
        assert np.allclose(boxes, [sequence["boxes_xywh"][0]] * len(boxes), atol=1e-6), garbage
        assert tracker.fallbacks == len(frames) - 1


def test_pytracking_interface_and_numpy_frames(got10k_root):
    sequence = got10k.read_got10k_sequence(got10k_root / "val" / got10k.read_got10k_split(got10k_root / "val")[1])
    frames = load_frames(sequence)[:6]
    first = list(sequence["boxes_xywh"][0])
    a = r1track.Tracker(answer_fn=lambda *x: oracle_a(*x))
    oracle_a = Oracle(a, sequence["boxes_xywh"])
    expected = track_with(a, oracle_a, frames, first)
    b = r1track.PytrackingTracker(answer_fn=lambda *x: oracle_b(*x))
    oracle_b = Oracle(b, sequence["boxes_xywh"])
    assert b.initialize(np.asarray(frames[0]), {"init_bbox": first}) == {}
    got = [first]
    for t, frame in enumerate(frames[1:], start=1):
        oracle_b.frame = t
        got.append(b.track(np.asarray(frame))["target_bbox"])
    assert got == expected


def test_got10k_toolkit_runs_the_tracker(got10k_root, tmp_path):
    from got10k.experiments import ExperimentGOT10k

    tracker = r1track.Tracker(answer_fn=lambda *a: "[10,10,60,60]", name="fixed")
    experiment = ExperimentGOT10k(str(got10k_root), subset="val", result_dir=str(tmp_path / "results"),
                                  report_dir=str(tmp_path / "reports"))
    experiment.run(tracker)
    names = got10k.read_got10k_split(got10k_root / "val")
    record = np.loadtxt(tmp_path / "results" / "GOT-10k" / "fixed" / names[0] / f"{names[0]}_001.txt", delimiter=",")
    assert record.shape == (24, 4)
    assert not (tmp_path / "results" / "GOT-10k" / "fixed" / names[0] / f"{names[0]}_002.txt").exists()


@pytest.mark.parametrize("box, message", [
    ([10, 10, 0, 20], "no area"), ([10, 10, 20, -5], "no area"), ([500, 10, 20, 20], "outside"),
    ([-50, -50, 20, 20], "outside"), ([1, 2, 3], "four"), (["a", 1, 2, 3], "four numbers"),
    ([float("nan"), 1, 2, 3], "finite")])
def test_bad_initial_box_is_refused(box, message):
    tracker = r1track.Tracker(answer_fn=lambda *a: "")
    with pytest.raises(ValueError, match=message):
        tracker.init(Image.new("RGB", (320, 240)), box)


def moving_red_box_clip(positions, size=(480, 360), box=40):
    frames = []
    for position in positions:
        frame = np.full((size[1], size[0], 3), 255, np.uint8)
        if position is not None:
            x, y = position
            frame[y:y + box, x:x + box] = (255, 0, 0)
        frames.append(Image.fromarray(frame))
    return frames


def test_recovery_finds_a_target_that_jumped_while_hidden():
    """Visible, hidden for five frames while it moves far away, visible again. The plain loop
    keeps looking in the old place; with recover=True the search square widens until the
    target is in it again."""
    positions = [(60, 60)] * 5 + [None] * 5 + [(250, 190)] * 10  # within reach of a factor-12 square
    boxes = [[x, y, 40, 40] if (x, y) != (0, 0) else None for x, y in ((p or (0, 0)) for p in positions)]
    visible = [p is not None for p in positions]
    truth = [b or [60, 60, 40, 40] for b in boxes]
    frames = moving_red_box_clip(positions)
    final_ious = {}
    for recover in (False, True):
        oracle = Oracle(None, truth, visible=visible)

        def answer(template, search, template_box, oracle=oracle):
            # a detector that sees the target only when it lies inside the search crop
            scale, origin, _ = oracle.tracker.search_crop
            x, y, w, h = truth[oracle.frame]
            inside = 0 <= (x - origin[0]) * scale and (x + w - origin[0]) * scale <= 336 and \
                0 <= (y - origin[1]) * scale and (y + h - origin[1]) * scale <= 336
            return Oracle.__call__(oracle, template, search, template_box) if inside else "not here"

        tracker = oracle.tracker = r1track.Tracker(answer_fn=answer, recover=recover)
        result = track_with(tracker, oracle, frames, truth[0])
        final_ious[recover] = clipped_iou(result[-1], truth[-1], frames[0].size)
    assert final_ious[False] < 0.1 and final_ious[True] > 0.9, final_ious


@pytest.mark.parametrize("loop", ["published", "lenient"])
def test_server_answerer_speaks_the_openai_chat_api(loop):
    with ChatServer(lambda index, payload: "[100,110,200,220]", model="WangBiao/R1-Track-GRPO-wo-Think-100k") as server:
        tracker = r1track.Tracker(server=server.url, loop=loop)  # the served name picks the settings
        frame = Image.new("RGB", (640, 480), "white")
        tracker.init(frame, [300, 200, 42, 42])
        box = tracker.update(frame)
    payload = server.payloads[0]
    assert payload["model"] == "WangBiao/R1-Track-GRPO-wo-Think-100k" and payload["temperature"] == 0
    # the published client sent no system message (the served model's chat template adds its default), nor
    # does the lenient loop: the one rendering a model of any base was trained on
    user, = payload["messages"]
    kinds = [part["type"] for part in user["content"]]
    assert kinds == ["image_url", "text", "image_url", "text"]  # the 100k model's wording, from its id
    image_type = "jpeg" if loop == "published" else "png"
    assert user["content"][0]["image_url"]["url"].startswith(f"data:image/{image_type};base64,")
    assert "Re-locate this target" in user["content"][3]["text"]
    # side = ceil(42 * 4) = 168 around (321, 221): origin (237, 137), scale 2; answer -> frame
    assert box == pytest.approx([237 + 50, 137 + 55, 50, 55])


def test_server_confidence_from_its_log_probabilities_equals_the_local_models(tmp_path, monkeypatch, capfd):
    """A served model's answers carry their tokens' log-probabilities (OpenAI's `logprobs`,
    as vLLM lists them: each token by its text): the confidence is the local model's. A server
    that gives none: no confidence, said once."""
    model, processor = r1track.load_model(str(DEMO_MODEL), device="cpu")  # it follows a plain clip's target
    settings = model.r1track_settings
    split = synthetic.make_synthetic_got10k(tmp_path, "val", sequences=1, frames=6, seed=5, style="plain")
    sequence = got10k.read_got10k_sequence(split / got10k.read_got10k_split(split)[0])
    frames = load_frames(sequence)
    chosen = []  # per frame: (answer token ids, their log-probabilities) as the local model chose them
    confidence = r1track.answer_confidence
    monkeypatch.setattr(r1track, "answer_confidence", lambda tokenizer, ids, logprobs: (
        chosen.append((list(ids), list(logprobs))), confidence(tokenizer, ids, logprobs))[1])
    local = r1track.Tracker((model, processor), fast=False)
    local.init(frames[0], sequence["boxes_xywh"][0])
    local_boxes, local_confidences = [], []
    for frame in frames[1:]:
        local_boxes.append(local.update(frame))
        local_confidences.append(local.confidence)
    monkeypatch.undo()
    assert len(chosen) == len(frames) - 1 and all(0 < c < 1 for c in local_confidences)  # real answers

    tokenizer = processor.tokenizer

    def served(index, payload):  # vLLM's reply to the same frame
        ids, logprobs = chosen[index]
        tokens = [tokenizer.decode([i]) for i in ids]
        return tokenizer.decode(ids, skip_special_tokens=True), [
            {"token": t, "logprob": p, "bytes": list(t.encode()), "top_logprobs": []} for t, p in zip(tokens, logprobs)]

    for answer, expected in ((served, local_confidences), (lambda index, payload: served(index, payload)[0], None)):
        with ChatServer(answer, model="served") as server:
            tracker = r1track.Tracker(server=server.url, settings=settings)
            tracker.init(frames[0], sequence["boxes_xywh"][0])
            boxes, confidences = [], []
            for frame in frames[1:]:
                boxes.append(tracker.update(frame))
                confidences.append(tracker.confidence)
        assert all(payload["logprobs"] is True for payload in server.payloads)
        assert boxes == local_boxes
        if expected:
            assert confidences == pytest.approx(expected, abs=1e-3)
        else:
            assert confidences == [None] * len(boxes) and not tracker.lost
            assert capfd.readouterr().err.count("gives no token log-probabilities") == 1


def test_grounding_answer_maps_back_to_the_frame():
    answer = '```json\n[\n\t{"bbox_2d": [140, 70, 280, 210], "label": "red car"}\n]\n```'
    assert r1track.grounding_box_xywh(answer, (700, 350), (1400, 700)) == pytest.approx([280, 140, 280, 280])
    assert r1track.grounding_box_xywh("there is no car", (700, 350), (1400, 700)) is None


# -- track.py --


def write_clip(path, frames, fps=10):
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_image(frame)):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


@pytest.fixture(scope="module")
def clip(got10k_root, tmp_path_factory):
    sequence = got10k.read_got10k_sequence(got10k_root / "val" / got10k.read_got10k_split(got10k_root / "val")[0])
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_clip(path, load_frames(sequence)[:12])
    x, y, w, h = sequence["boxes_xywh"][0]
    return path, f"{x:.1f},{y:.1f},{x + w:.1f},{y + h:.1f}"


def run_track(*args):
    return subprocess.run([sys.executable, "track.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def run_track_here(*args):
    """track.py in this process (conftest.run_main): without seconds of imports."""
    return run_main("track.py", *args)


def count_video_frames(path):
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_track_py_writes_one_row_and_frame_per_input_frame(clip, tiny_model_dir, tmp_path):
    path, box = clip
    result = run_track("--video", path, "--box", box, "--model", tiny_model_dir, "--out", tmp_path, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    boxes = np.loadtxt(tmp_path / "boxes.txt", delimiter=",")
    assert boxes.shape == (12, 4)
    assert boxes[0] == pytest.approx(xyxy_to_xywh([float(v) for v in box.split(",")]), abs=1e-3)
    assert np.loadtxt(tmp_path / "times.txt").shape == (12,)
    assert count_video_frames(tmp_path / "tracked.mp4") == 12
    assert "12 frames" in result.stdout and "fallbacks" in result.stdout and "FPS" in result.stdout
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_track_py_frame_folder_with_a_broken_frame(got10k_root, tiny_model_dir, tmp_path):
    sequence = got10k.read_got10k_sequence(got10k_root / "val" / got10k.read_got10k_split(got10k_root / "val")[0])
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(load_frames(sequence)[:6]):
        frame.save(folder / f"{t:04d}.png")
    (folder / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    x, y, w, h = sequence["boxes_xywh"][0]
    result = run_track_here("--video", folder, "--box", f"{x},{y},{w},{h}", "--box-format", "xywh", "--model",
                            tiny_model_dir, "--out", tmp_path / "out", "--no-video")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "frame 4 could not be decoded" in result.stderr
    boxes = np.loadtxt(tmp_path / "out" / "boxes.txt", delimiter=",")
    assert boxes.shape == (6, 4) and np.array_equal(boxes[3], boxes[2])
    assert not (tmp_path / "out" / "tracked.mp4").exists()


@pytest.mark.parametrize("args, message", [
    (["--video", "/no/such/clip.mp4", "--box", "1,2,3,4"], "no such video"),
    (["--video", "README.md", "--box", "1,2,3,4"], "cannot read README.md as a video"),
    (["--video", "{empty}", "--box", "1,2,3,4"], "no frames"),
    (["--video", "{clip}", "--box", "1,2,3"], "four numbers"),
    (["--video", "{clip}", "--box", "a,b,c,d"], "four numbers"),
    (["--video", "{clip}", "--box", "10,10,10,50"], "empty or inverted"),
    (["--video", "{clip}", "--box", "50,50,10,10"], "empty or inverted"),
    (["--video", "{clip}", "--box", "1000,1000,1100,1100"], "outside"),
    (["--video", "{clip}", "--box", "0,0,5,5", "--box-format", "xywh", "--text", "car"], "one of them"),
    (["--video", "{clip}"], "one of them"),
    (["--video", "{clip}", "--box", "1,2,3,4", "--loop", "nope"], "invalid choice: 'nope'"),
])
def test_track_py_bad_input_is_one_line_before_loading_a_model(clip, tmp_path, args, message, capsys, monkeypatch):
    import track

    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(ROOT)  # README.md, as the script is run from the project folder
    args = [a.format(clip=clip[0], empty=tmp_path / "empty") for a in args]
    # the model does not exist: the input is refused before anything tries to load it
    code, stderr = main_in_process(track.main, [*args, "--model", "/no/such/model", "--out", tmp_path / "out"], capsys)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in stderr, stderr


def test_track_py_missing_model_is_one_line(clip, tmp_path):
    result = run_track("--video", clip[0], "--box", clip[1], "--model", "/no/such/model", "--out", tmp_path)
    assert result.returncode == 2 and "cannot load the model" in result.stderr and "Traceback" not in result.stderr


def test_track_py_text_that_the_model_cannot_find(clip, tiny_model_dir, tmp_path):
    result = run_track_here("--video", clip[0], "--text", "the patterned box", "--model", tiny_model_dir,
                            "--out", tmp_path)
    assert result.returncode == 2 and "could not find" in result.stderr and "Traceback" not in result.stderr


def test_settings_named_apart_from_the_served_name(tmp_path):
    """A server serving a fine-tuned folder under another name: its settings cannot be found
    by that name (an error that says what to do); --settings names the checkpoint whose
    settings to use (the demo model: 112-px crops, the lenient loop, PNG crops); a served
    checkpoint without settings gets the defaults, said on stderr (336-px JPEG crops)."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, frame in enumerate(moving_red_box_clip([(60 + 4 * t, 60) for t in range(4)])):
        frame.save(frames / f"{t:04d}.png")
    bare = tmp_path / "bare-checkpoint"
    bare.mkdir()

    def run_against(served, *extra):
        with ChatServer(lambda index, payload: "[40,40,80,80]", model=served) as server:
            result = run_track_here("--video", frames, "--box", "60,60,100,100", "--server", server.url, "--out",
                                    tmp_path / "out", "--no-video", *extra)
            if result.returncode:
                return result, None
            assert {payload["model"] for payload in server.payloads} == {served}
            url = server.payloads[0]["messages"][-1]["content"][1]["image_url"]["url"]
        return result, Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))

    result, _ = run_against("my-finetune")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "my-finetune" in lines[0] and "--settings" in lines[0]

    result, image = run_against("my-finetune", "--settings", DEMO_MODEL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (image.format, image.size) == ("PNG", (112, 112)) and "note:" not in result.stderr
    assert "112-px crops, template/search factors 4/4, loop lenient" in result.stdout

    result, image = run_against(str(bare))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (image.format, image.size) == ("JPEG", (336, 336))
    assert f"note: {bare} has no r1track.json; tracking with the default settings" in result.stderr
    assert "tracking settings: wording seed, think off, 336-px crops" in result.stdout


def test_track_py_unreachable_server_is_one_line(clip, tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_track_here("--video", clip[0], "--box", clip[1], "--server", f"http://127.0.0.1:{port}",
                            "--out", tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "cannot reach" in lines[0], result.stderr


@pytest.mark.parametrize("loop", ["published", "lenient"])
def test_grey_and_rgba_frames_track_as_their_rgb(loop):
    colour = moving_red_box_clip([(60, 60), (64, 62)])
    answers = ["[50,50,90,90]"] * 2
    boxes = {}
    for kind in ("rgb", "rgba", "grey"):
        frames = [np.asarray(f) for f in colour]
        if kind == "rgba":
            frames = [np.concatenate([f, np.full(f.shape[:2] + (1,), 7, np.uint8)], axis=2) for f in frames]
        if kind == "grey":  # against the RGB of the same grey picture
            frames = [np.asarray(f.convert("L"))[..., None] for f in colour]
        seen = []
        tracker = r1track.Tracker(answer_fn=lambda t, s, b: seen.append(np.asarray(s)) or answers[len(seen) - 1],
                                  loop=loop, crop_size=112)
        tracker.init(frames[0], [60, 60, 40, 40])
        boxes[kind] = (tracker.update(frames[1]), seen[0])
    assert boxes["rgba"][0] == boxes["rgb"][0] and np.array_equal(boxes["rgba"][1], boxes["rgb"][1])
    grey = boxes["grey"][1]
    assert grey.shape == (112, 112, 3) and np.array_equal(grey[..., 0], grey[..., 2])
