"""Track your own video in a web page: upload it (or take the demo clip), pick the frame to
start from, draw a box around each target (or describe one and adjust the box the model
proposes), press Track, and get the tracked video back with each target's confidence over time,
the boxes in the files track.py writes, and the frames per second.

  pip install -r requirements-app.txt
  python app.py                                  # the demo model, on http://127.0.0.1:7860
  python app.py --model runs/grpo --model WangBiao/R1-Track-GRPO-wo-Think-100k --server http://gpu:8000

The page offers only the models and servers given here (the bundled demo model by default): it
never takes a path or an address from a visitor. It tracks with the same frame loop and writers
as track.py (video_tracking.py), so a video, box and model give the same boxes from either.
Videos longer than --max-frames are refused up front. Visitors are served one at a time (a
queue), each with their own results, which are deleted an hour later and when the page stops.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import r1track
import synthetic
import video_tracking
from cli import ArgumentParser, UserError, first_line, positive_int, script_main
from frames import Video, open_frames
from settings import DEMO_MODEL, add_settings_args

KEEP_RESULTS_S = 3600  # a visitor's results are deleted after an hour


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", action="append", default=[], help="a model the page offers: hub id or folder "
                        "(repeatable; default: the bundled demo model)")
    parser.add_argument("--server", action="append", default=[], help="an OpenAI-compatible server (e.g. vLLM) the "
                        "page offers (repeatable)")
    parser.add_argument("--server-model", help="the model name the servers serve (default: each one's first)")
    add_settings_args(parser)
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                        help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--max-frames", type=positive_int, default=900, help="the longest video the page takes, in "
                        "frames (default: 900, 30 s at 30 fps)")
    parser.add_argument("--max-upload", type=positive_int, default=200, help="the largest video file the page "
                        "takes, in MB (default: 200, a 30-s 1080p clip several times over); a larger one is refused "
                        "before it is sent, with a message")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="the address to serve on (default: GRADIO_SERVER_NAME, as a Hugging Face Space sets "
                        "it, else 127.0.0.1, this machine only; 0.0.0.0 for every network it is on)")
    parser.add_argument("--port", type=int, default=7860, help="the port (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    return parser


# -----------------------------------------------------------------------------
# Models: those the launcher named, loaded once each when first asked for


class Models:
    """The models and servers the page offers, by the name shown on the page; each tracker is
    built on first use and kept. One visitor is served at a time (the queue), so one tracker
    a model is enough."""

    def __init__(self, args):
        self.args, self.loaded, self.lock = args, {}, threading.Lock()
        models = args.model or [str(DEMO_MODEL)]
        self.specs = {("demo model" if spec == str(DEMO_MODEL) else spec): ("model", spec) for spec in models}
        self.specs.update({f"server {url}": ("server", url) for url in args.server})

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def get(self, name: str):
        """(tracker, (model, processor) or None for a server)."""
        if name not in self.specs:  # the page sends only names it was given; anything else is refused
            raise UserError("choose one of the models this page offers")
        with self.lock:
            if name not in self.loaded:
                kind, spec = self.specs[name]
                flags = argparse.Namespace(**{**vars(self.args), "model": spec if kind == "model" else None,
                                              "server": spec if kind == "server" else None, "recover": False})
                self.loaded[name] = r1track.tracker_from_args(flags, self.args.device, name=f"R1-Track[{name}]")
            return self.loaded[name]


# -----------------------------------------------------------------------------
# A visitor's video: checked, its frames counted, one frame shown


def open_clip(path: str, max_frames: int) -> tuple[dict, object]:
    """(what the page keeps about a visitor's video (a gr.State): path, frames, fps, size, a
    note; its first frame, RGB). Every frame is decoded once here, none turned into pixels but
    the first (the count a file's header gives can be wrong, and a truncated file is found
    here, not half-way through tracking)."""
    if not path:
        raise UserError("upload a video first (or take the demo clip)")
    try:
        video = Video(path)
    except UserError:  # said without the server's own path
        raise UserError(f"cannot read {Path(path).name} as a video") from None
    count, first, broken = 0, None, 0
    for frame in video.decoded():
        if frame is None:
            broken += 1
        elif first is None:
            first = frame.to_ndarray(format="rgb24")
        count += 1
        if count > max_frames:
            raise UserError(f"this video is longer than {max_frames} frames, the most this page tracks; cut it "
                            "shorter, or run track.py on it")
    if first is None:
        raise UserError("no frame of this file could be decoded: is it a video?")
    note = ""
    if video.total and count < video.total:
        note = f"the video ends after {count} of the {video.total} frames its header announces (truncated?)"
    if broken:
        note = (note + "; " if note else "") + f"{broken} frames could not be decoded (the last box is kept there)"
    clip = dict(path=path, frames=count, fps=video.fps, size=(first.shape[1], first.shape[0]), note=note)
    return clip, first


def frame_at(clip: dict, index: int):
    frame = Video(clip["path"]).frame(index)
    if frame is None:
        raise UserError(f"frame {index + 1} could not be decoded; pick another")
    return frame


def describe(clip: dict) -> str:
    w, h = clip["size"]
    text = f"{clip['frames']} frames of {w}x{h} at {clip['fps']:.3g} fps."
    return text + (f" Note: {clip['note']}." if clip["note"] else "")


# -----------------------------------------------------------------------------
# The targets: drawn boxes and typed ones


def target_boxes_xywh(drawn: dict | None, typed: str, size) -> list[list[float]]:
    """Every target's box (x, y, w, h in frame pixels), checked as track.py checks --box: the
    drawn ones first, in the order they were drawn (the component lists the newest first),
    then the typed ones, x1,y1,x2,y2 a line."""
    drawn_boxes = list(reversed((drawn or {}).get("boxes") or []))
    texts = [(f"drawn box {k}", f"{b['xmin']},{b['ymin']},{b['xmax']},{b['ymax']}") for k, b in enumerate(drawn_boxes, 1)]
    texts += [(f"typed line {k}", line.strip()) for k, line in enumerate((typed or "").splitlines(), 1) if line.strip()]
    if not texts:
        raise UserError("draw a box around the target on the frame (or type one, or find it by its description)")
    return [video_tracking.parse_box(text, "xyxy", size, name=name) for name, text in texts]


# -----------------------------------------------------------------------------
# Tracking and its results


def forget_old_results(root: Path):
    for folder in root.iterdir():
        if time.time() - folder.stat().st_mtime > KEEP_RESULTS_S:
            shutil.rmtree(folder, ignore_errors=True)


def track_clip(clip: dict, boxes_xywh, start: int, tracker, out: Path, on_progress=None):
    """Track the targets from frame `start` (from 0) to the end, as track.py does with
    --box x1,y1,x2,y2@start+1; writes what track.py writes to `out`. Returns the targets, the
    tracking's record and where in the tracked video the start frame shows (seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    first, frames, total, fps, _ = open_frames(clip["path"], None)
    targets = [video_tracking.Target(number, box, start) for number, box in enumerate(boxes_xywh, 1)]
    tracked = video_tracking.track_video(first, frames, total or clip["frames"], fps, targets, tracker, out,
                                         progress=None, on_progress=on_progress)
    (out / "targets.txt").write_text("".join(f"{x:g},{y:g},{x + w:g},{y + h:g}@{start + 1}\n"
                                             for x, y, w, h in boxes_xywh))
    # a quarter into the frame's time in the video (written at a whole number of frames a second)
    return targets, tracked, (start + 0.25) / max(round(fps), 1)


def confidence_plot(targets, lost_below: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.8))
    for target in targets:
        colour = [c / 255 for c in video_tracking.COLOURS[(target.number - 1) % len(video_tracking.COLOURS)]]
        values = [float("nan") if c is None else c for c in target.confidences]
        ax.plot([f + 1 for f in target.frames], values, color=colour, label=f"target {target.number}")
    ax.axhline(lost_below, color="grey", linestyle="--", linewidth=1, label="lost below")
    ax.set_xlabel("frame")
    ax.set_ylabel("confidence")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def summary(targets, tracked, tracker) -> str:
    asked = [t for t in tracked.times if t > 0]
    speed = f"{len(asked) / sum(asked):.2f} frames per second" if asked else "no frame tracked"
    lines = [f"**{len(tracked.times)} frames, {speed}** (the model's time per frame, all targets at once)."]
    for target in targets:
        lost = sum(target.lost)
        lines.append(f"- target {target.number}: {len(target.boxes)} frames, {lost} judged lost (confidence below "
                     f"{tracker.lost_below}), {target.tracker.fallbacks} unusable answers")
    return "\n".join(lines)


def zip_results(out: Path) -> Path:
    """Every text file track.py writes (with targets.txt), in its folders, as one download."""
    path = out / "boxes.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(out.rglob("*.txt")):
            archive.write(file, file.relative_to(out).as_posix())
    return path


# -----------------------------------------------------------------------------
# The page


def build_page(args, models: Models, root: Path, demo_path: str):
    import gradio as gr
    from gradio_image_annotation import image_annotator

    def fail(error: Exception):
        """A readable message on the page; the server keeps serving."""
        raise gr.Error(str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {first_line(error)}",
                       print_exception=not isinstance(error, UserError))

    def load(path):
        try:
            clip, frame = open_clip(path, args.max_frames)
        except Exception as error:
            fail(error)
        return (clip, {"image": frame, "boxes": []}, gr.update(maximum=clip["frames"], value=1, visible=True),
                describe(clip))

    def show(clip, number):
        try:
            if not clip:
                raise UserError("upload a video first (or take the demo clip)")
            return {"image": frame_at(clip, int(number) - 1), "boxes": []}
        except Exception as error:
            fail(error)

    def propose(clip, drawn, description, model_name):
        try:
            if not clip or not drawn:
                raise UserError("upload a video first (or take the demo clip)")
            if not description.strip():
                raise UserError("type what the target is, e.g. 'the red car'")
            tracker, loaded = models.get(model_name)
            if loaded is None:
                raise UserError("finding a target by its description needs a local model, not a server")
            box = r1track.locate_text(*loaded, drawn["image"], description.strip())
            if box is None:
                raise UserError(f"the model could not find {description.strip()!r} in this frame; draw the box")
        except Exception as error:
            fail(error)
        x, y, w, h = box
        proposed = {"xmin": round(x), "ymin": round(y), "xmax": round(x + w), "ymax": round(y + h),
                    "label": description.strip()}
        boxes = [proposed, *(drawn.get("boxes") or [])]  # the newest first, as the component lists drawn ones
        return {"image": drawn["image"], "boxes": boxes}

    def track(clip, drawn, typed, number, model_name, progress=gr.Progress()):
        try:
            if not clip:
                raise UserError("upload a video first (or take the demo clip)")
            boxes_xywh = target_boxes_xywh(drawn, typed, clip["size"])
            tracker, _ = models.get(model_name)
            forget_old_results(root / "results")
            out = root / "results" / uuid.uuid4().hex
            progress(0, desc="tracking")
            targets, tracked, start_s = track_clip(clip, boxes_xywh, int(number) - 1, tracker, out,
                                                   on_progress=lambda done, total: progress((done, total),
                                                                                            desc="tracking",
                                                                                            unit="frames"))
            # named for this result: the page finds the video by its name once it shows it (OPEN_ON_START_FRAME)
            shown = (out / "tracked.mp4").rename(out / f"tracked-{out.name}.mp4")
        except Exception as error:
            fail(error)
        return (str(shown), confidence_plot(targets, tracker.lost_below), str(zip_results(out)),
                summary(targets, tracked, tracker), {"video": shown.name, "seconds": start_s})

    with gr.Blocks(title="R1-Track", delete_cache=(600, KEEP_RESULTS_S)) as page:
        gr.Markdown("# R1-Track: track your own video\n"
                    f"Upload a video of at most {args.max_frames} frames (or take the demo clip), draw a box "
                    "around each object to follow on its first frame, and press **Track**.")
        clip = gr.State(None)
        with gr.Row():
            with gr.Column():
                video = gr.File(label="Video", file_types=["video"], elem_id="video")
                demo = gr.Button("Take the demo clip", elem_id="demo-clip")
                about = gr.Markdown(elem_id="about")
                model = gr.Dropdown(models.names, value=models.names[0], label="Model", elem_id="model")
                start = gr.Slider(1, 2, value=1, step=1, label="Start at frame (then draw the boxes on it)", visible=False,
                                  info="moving it shows that frame and clears the boxes drawn", elem_id="start")
                description = gr.Textbox(label="Or describe the target", placeholder="the red car",
                                         elem_id="description")
                find = gr.Button("Find it", elem_id="find")
                typed = gr.Textbox(label="Or type boxes: x1,y1,x2,y2 in frame pixels, one a line", lines=2,
                                   elem_id="typed")
            with gr.Column(scale=2):
                drawn = image_annotator(label="Draw a box around each target", sources=[], image_type="numpy",
                                        disable_edit_boxes=True, use_default_label=True, elem_id="frame")
                run = gr.Button("Track", variant="primary", elem_id="track")
        with gr.Row():
            result = gr.Video(label="Tracked", elem_id="result", interactive=False)
            with gr.Column():
                stats = gr.Markdown(elem_id="stats")
                plot = gr.Plot(label="Confidence", elem_id="confidence")
                boxes = gr.File(label="Boxes (the files track.py writes)", elem_id="boxes", interactive=False)

        video.upload(load, video, [clip, drawn, start, about])
        demo.click(lambda: demo_path, None, video).then(load, video, [clip, drawn, start, about])
        start.input(show, [clip, start], drawn, trigger_mode="always_last")
        # one queue for all that runs a model: one visitor's description is not grounded while another tracks
        find.click(propose, [clip, drawn, description, model], drawn, concurrency_id="model")
        opens_at = gr.JSON(visible=False)  # which result, and where its start frame is
        run.click(track, [clip, drawn, typed, start, model], [result, plot, boxes, stats, opens_at],
                  concurrency_id="model").success(None, opens_at, None, js=OPEN_ON_START_FRAME)
    return page


# The tracked video opens on the start frame with its boxes (a frame before it has none): once
# the page shows this result's video, it is moved there. (Gradio's Video takes no poster, and its
# playback_position given with a new video is overwritten by the player as it loads.)
OPEN_ON_START_FRAME = """(opens) => {
    const started = Date.now();
    const seek = () => {
        const video = document.querySelector('#result video');
        if (video && video.currentSrc.endsWith(opens.video) && video.readyState >= 1) {
            video.currentTime = opens.seconds;
        } else if (Date.now() - started < 20000) {
            setTimeout(seek, 100);
        }
    };
    if (opens) seek();
    return [];
}"""


def serve(args) -> int:
    models = Models(args)
    models.get(models.names[0])  # a model that cannot be loaded is said now, in one line, not to a visitor
    root = Path(tempfile.mkdtemp(prefix="r1track-app-"))
    (root / "results").mkdir()
    # the visitors' uploads, their results and the demo clip, all removed when the page stops (Gradio
    # itself keeps its uploads; --max-frames bounds what one can cost)
    os.environ["GRADIO_TEMP_DIR"] = str(root / "uploads")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    # a stop by SIGTERM is a Ctrl-C: Gradio then closes and deletes its uploads, and atexit the rest
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # a clip the demo model never saw (its clips' seeds are others)
    page = build_page(args, models, root, str(synthetic.make_synthetic_video(root / "demo" / "demo.mp4", seed=7)))
    page.queue(default_concurrency_limit=1, max_size=32)
    page.launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(root)],
                show_error=True, prevent_thread_lock=False, max_file_size=args.max_upload * 1024 * 1024)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
        import gradio_image_annotation  # noqa: F401
    except ImportError as error:
        print(f"error: the page needs {error.name}: pip install -r requirements-app.txt", file=sys.stderr)
        return 2
    return script_main(serve, args, quiet=False)


if __name__ == "__main__":
    sys.exit(main())
