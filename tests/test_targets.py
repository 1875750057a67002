"""track.py on people's footage: several targets in one run, a confidence for every frame, and
--realtime on a live source that is faster than the model."""
import functools
import http.server
import json
import math
import threading

import av
import numpy as np
import pytest
from conftest import main_in_process, run_main
from PIL import Image

import synthetic
from benchmarks import got10k
from frames import read_frame
from settings import DEMO_MODEL


def run_track(*args):
    """track.py in this process (conftest.run_main): a process of its own costs seconds of imports."""
    return run_main("track.py", *args)


def rows(path):
    return np.loadtxt(path, delimiter=",", ndmin=2)


def write_video(path, frames, fps):
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


HIDDEN = range(20, 30)  # frames (from 0) where the target is painted out


@pytest.fixture(scope="module")
def plain_clip(tmp_path_factory):
    """A clip of the demo model's world (one patterned shape on grey) whose target is painted
    out of frames 21 to 30 (its box filled with the background's grey): frames, truth, cover."""
    root = tmp_path_factory.mktemp("plain")
    split = synthetic.make_synthetic_got10k(root, "val", sequences=1, frames=40, seed=7, style="plain")
    sequence = got10k.read_got10k_sequence(split / got10k.read_got10k_split(split)[0])
    folder = root / "hidden"
    folder.mkdir()
    cover = sequence["cover"].copy()
    for t, path in enumerate(sequence["frames"]):
        frame = read_frame(path)
        if t in HIDDEN:
            x, y, w, h = sequence["boxes_xywh"][t]
            grey = np.median(frame.reshape(-1, 3), axis=0)
            frame[max(int(y) - 2, 0):int(y + h) + 3, max(int(x) - 2, 0):int(x + w) + 3] = grey
            cover[t] = 0
        Image.fromarray(frame).save(folder / f"{t + 1:08d}.png")
    return {**sequence, "frames": sorted(folder.glob("*.png")), "cover": cover}


def test_two_targets_in_one_run_give_each_targets_own_boxes(plain_clip, tmp_path):
    """Target 1 from frame 1, target 2 (another place of the frame) from frame 5: one batched
    call a frame answers both, and each gets the boxes of tracking it alone."""
    folder = plain_clip["frames"][0].parent
    x, y, w, h = plain_clip["boxes_xywh"][0]
    first = f"{x:.2f},{y:.2f},{x + w:.2f},{y + h:.2f}"
    second = "20,30,70,90@5"
    common = ["--video", folder, "--model", DEMO_MODEL, "--device", "cpu", "--no-video"]
    alone_1 = run_track(*common, "--box", first, "--out", tmp_path / "one")
    alone_2 = run_track(*common, "--box", second, "--out", tmp_path / "two")
    (tmp_path / "targets.txt").write_text(f"# two targets\n{first}\n\n{second}\n")
    both = run_track(*common, "--boxes", tmp_path / "targets.txt", "--out", tmp_path / "both")
    for result in (alone_1, alone_2, both):
        assert result.returncode == 0, result.stderr[-2000:]
    frames = len(plain_clip["frames"])
    assert np.array_equal(rows(tmp_path / "both" / "target1" / "boxes.txt"), rows(tmp_path / "one" / "boxes.txt"))
    assert np.array_equal(rows(tmp_path / "both" / "target2" / "boxes.txt"), rows(tmp_path / "two" / "boxes.txt"))
    assert rows(tmp_path / "both" / "target1" / "boxes.txt").shape == (frames, 4)
    assert np.loadtxt(tmp_path / "both" / "target2" / "frames.txt").tolist() == list(range(5, frames + 1))
    assert np.array_equal(np.loadtxt(tmp_path / "both" / "target2" / "confidence.txt"),
                          np.loadtxt(tmp_path / "two" / "confidence.txt"))
    assert "target 2: 36 frames" in both.stdout


def search_shows_target(previous_xywh, truth_xywh, visible, factor):
    """Whether the search crop around the previous box (a square of side sqrt(w h) * factor
    on its centre) holds at least half of the visible target."""
    if not visible:
        return False
    px, py, pw, ph = previous_xywh
    side = math.ceil(math.sqrt(pw * ph) * factor)
    left, top = px + pw / 2 - side / 2, py + ph / 2 - side / 2
    x, y, w, h = truth_xywh
    inside_w = max(0.0, min(x + w, left + side) - max(x, left))
    inside_h = max(0.0, min(y + h, top + side) - max(y, top))
    return inside_w * inside_h >= 0.5 * w * h


def test_confidence_is_lower_where_the_search_crop_holds_no_target(plain_clip, tmp_path):
    x, y, w, h = plain_clip["boxes_xywh"][0]
    result = run_track("--video", plain_clip["frames"][0].parent, "--box", f"{x},{y},{w},{h}", "--box-format", "xywh",
                       "--model", DEMO_MODEL, "--device", "cpu", "--out", tmp_path, "--no-video")
    assert result.returncode == 0, result.stderr[-2000:]
    confidence = np.loadtxt(tmp_path / "confidence.txt")
    boxes = rows(tmp_path / "boxes.txt")
    assert confidence.shape == (len(plain_clip["frames"]),) and ((0 <= confidence) & (confidence <= 1)).all()
    settings = json.loads((DEMO_MODEL / "r1track.json").read_text())
    lost_below = settings["lost_below"]  # the threshold fitted to the demo model (tools/make_demo_model.py)
    assert np.array_equal(np.loadtxt(tmp_path / "lost.txt"), (confidence < lost_below).astype(float))
    factor = settings["search_factor"]
    shows = np.array([search_shows_target(boxes[t - 1], plain_clip["boxes_xywh"][t], plain_clip["cover"][t] > 0,
                                          factor) for t in range(1, len(boxes))])
    assert shows.sum() >= 5 and (~shows).sum() >= 3, "the clip must have frames of both kinds"
    assert confidence[1:][~shows].mean() < confidence[1:][shows].mean() - 0.03


@pytest.fixture
def http_server(tmp_path):
    """Files of tmp_path served on 127.0.0.1, as a network stream is."""
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_realtime_drops_what_the_model_cannot_keep_up_with(plain_clip, http_server, tmp_path):
    """A 40-frame stream at 400 frames/s, served over HTTP: the model takes longer than a
    frame's 2.5 ms, so frames are dropped; every tracked frame is the newest at its time, and
    its box is written with its frame number."""
    frames = [read_frame(f) for f in plain_clip["frames"]]
    write_video(tmp_path / "live.ts", frames, fps=400)
    x, y, w, h = plain_clip["boxes_xywh"][0]
    out = tmp_path / "out"
    result = run_track("--video", f"{http_server}/live.ts", "--box", f"{x},{y},{w},{h}", "--box-format", "xywh",
                       "--realtime", "--model", DEMO_MODEL, "--device", "cpu", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "realtime.json").read_text())
    tracked = np.loadtxt(out / "frames.txt", dtype=int)
    assert report["frames_dropped"] > 0 and report["frames_tracked"] == len(tracked)
    assert report["frames_dropped"] + len(tracked) == len(frames)  # every frame either tracked or dropped
    assert tracked[0] == 1 and tracked[-1] == len(frames) and (np.diff(tracked) >= 1).all() and (np.diff(tracked) > 1).any()
    assert rows(out / "boxes.txt").shape == (len(tracked), 4)
    assert np.loadtxt(out / "confidence.txt").shape == (len(tracked),)
    assert report["latency_ms_median"] > 0 and "dropped" in result.stdout
    with av.open(str(out / "tracked.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == len(tracked)


@pytest.mark.parametrize("args, message", [
    (["--box", "1,2,30,40@0"], "counted from 1"),
    (["--box", "1,2,30,40@x"], "after @ comes the frame"),
    (["--boxes", "/no/such/file"], "--boxes /no/such/file"),
    (["--box", "1,2,30,40", "--text", "car"], "one of them"),
    (["--box", "1,2,30,40", "--lost-below", "2"], "between 0 and 1"),
])
def test_target_flags_are_refused_in_one_line(plain_clip, tmp_path, args, message, capsys):
    import track

    code, stderr = main_in_process(track.main, ["--video", plain_clip["frames"][0].parent, *args, "--model",
                                                "/no/such/model", "--out", tmp_path], capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], stderr


def test_a_bad_line_of_a_boxes_file_is_named_by_file_and_line(plain_clip, tmp_path, capsys):
    import track

    boxes = tmp_path / "targets.txt"
    boxes.write_text("# targets\n20,30,70,90\nfoo,bar\n")
    code, stderr = main_in_process(track.main, ["--video", plain_clip["frames"][0].parent, "--boxes", boxes,
                                                "--model", "/no/such/model", "--out", tmp_path / "out"], capsys)
    assert code == 2 and f"--boxes {boxes}, line 3: --box takes four numbers" in stderr, stderr
