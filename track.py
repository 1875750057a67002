"""Track one object through a video with R1-Track.

  python track.py --video clip.mp4 --box 241,66,329,154
  python track.py --video frames/ --box 10,20,50,80 --box-format xywh --model runs/sft
  python track.py --video "shots/*.png" --text "the red car"
  python track.py --video clip.mp4 --box 241,66,329,154 --server http://localhost:8000
  python track.py --demo

--demo needs nothing but this folder: it draws synthetic clips the bundled model never saw,
tracks them with demo_model/ (made by make_demo_model.py), scores them as eval_got10k.py
does, and writes tracked.mp4 (ground truth in white, the tracker's box in green).

--video takes a video file (mp4, avi, mkv, webm, mov, ...), a folder of frames or a glob.
The model runs in-process (a hub id or a folder), or behind an OpenAI-compatible server
(--server) as the published R1-Track deployment did. --out receives boxes.txt (one
x,y,w,h row per frame, the first row the given box), times.txt (seconds per frame) and
tracked.mp4 (every frame with its box).
"""

from __future__ import annotations

import copy
import glob
import json
import sys
import time
from pathlib import Path

import r1track
import scoring
import synthetic
from data import read_got10k_sequence, read_got10k_split
from r1track import UserError

# The demo's clips: drawn as the demo model's training data (make_demo_model.py), with a seed
# its training and validation never used.
DEMO_CLIPS = dict(split="val", sequences=8, frames=40, seed=2026, style="plain")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


# -----------------------------------------------------------------------------
# Frames in


def frame_files(spec: str) -> list[Path] | None:
    """The frames of a folder or glob in name order; None when `spec` is a (video) file."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        return None
    else:
        raise UserError(f"no such video, folder or glob: {spec}")
    if not files:
        raise UserError(f"no frames (image files) in {spec}")
    return files


def read_image(path: Path):
    """A frame file as an RGB array (decoded by OpenCV, as the published scripts read frames),
    or None when it cannot be decoded (the loop then keeps the last box)."""
    try:
        return r1track.read_frame(path)
    except UserError:
        return None


def files_ahead(files, readers=2):
    """The frames of `files`, decoded by `readers` threads ahead of the tracker."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=readers) as pool:
        yield from r1track.read_ahead(files, pool, read=read_image, ahead=2 * readers)


class Video:
    """A video file read with PyAV: frames as RGB arrays, None for one that fails to decode."""

    def __init__(self, path: str):
        import av

        try:
            self.container = av.open(path)
            self.stream = self.container.streams.video[0]
        except (av.FFmpegError, IndexError, OSError, UnicodeDecodeError):
            raise UserError(f"cannot read {path} as a video") from None
        self.stream.thread_type = "AUTO"
        self.total = self.stream.frames or None
        self.fps = float(self.stream.average_rate) if self.stream.average_rate else 30.0

    def __iter__(self):
        import av

        for packet in self.container.demux(self.stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                yield None
                continue
            for frame in frames:
                yield frame.to_ndarray(format="rgb24")
        self.container.close()


def open_frames(spec: str, fps: float | None):
    """(first frame, iterator over every frame, frame count or None, frames per second): RGB
    arrays, decoded in the background while the tracker works."""
    files = frame_files(spec)
    if files is None:
        video = Video(spec)
        frames, total, fps = r1track.in_background(iter(video)), video.total, fps or video.fps
    else:
        frames, total, fps = files_ahead(files), len(files), fps or 30.0
    first = next(frames, None)
    if first is None:
        raise UserError(f"no frame could be decoded from {spec}" if files is None else
                        f"cannot read the first frame {files[0]}")

    def all_frames():
        yield first
        yield from frames

    return first, all_frames(), total, fps


# -----------------------------------------------------------------------------
# The first box


def parse_box(text: str, box_format: str, frame_size) -> list[float]:
    """--box as a frame box (x, y, w, h), checked against the first frame."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise UserError(f"--box takes four numbers separated by commas, got {text!r}") from None
    if len(values) != 4:
        raise UserError(f"--box takes four numbers separated by commas, got {len(values)}: {text!r}")
    if box_format == "xyxy":
        x1, y1, x2, y2 = values
        if x2 <= x1 or y2 <= y1:
            raise UserError(f"--box {text} is empty or inverted: it needs x2 > x1 and y2 > y1 (x1,y1,x2,y2)")
        values = r1track.xyxy_to_xywh(values)
    try:
        return r1track.check_init_box(values, *frame_size)
    except ValueError as error:
        raise UserError(f"--box {text}: {error}") from None


# -----------------------------------------------------------------------------
# Frames out


class VideoWriter:
    """tracked.mp4, written to a temporary file and renamed when closed."""

    def __init__(self, path: Path, size, fps: float):
        import av

        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp.mp4")
        self.container = av.open(str(self.tmp), mode="w")
        try:
            self.stream = self.container.add_stream("libx264", rate=round(fps))
        except (av.FFmpegError, ValueError):
            self.stream = self.container.add_stream("mpeg4", rate=round(fps))
        # yuv420p wants even sides
        self.stream.width, self.stream.height = size[0] // 2 * 2, size[1] // 2 * 2
        self.stream.pix_fmt = "yuv420p"

    def write(self, image):
        import av

        if image.size != (self.stream.width, self.stream.height):
            image = image.crop((0, 0, self.stream.width, self.stream.height))
        for packet in self.stream.encode(av.VideoFrame.from_image(image)):
            self.container.mux(packet)

    def close(self):
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.tmp.replace(self.path)


def draw_box(image, box_xywh, index: int):
    from PIL import ImageDraw

    image = r1track.as_pil(image).copy()
    draw = ImageDraw.Draw(image)
    x, y, w, h = box_xywh
    width = max(2, round(min(image.size) / 200))
    draw.rectangle([x, y, x + w, y + h], outline=(0, 255, 0), width=width)
    draw.text((6, 4), f"#{index + 1}", fill=(255, 255, 0))
    return image


def write_rows(path: Path, rows):
    r1track.write_atomic(path, "".join(",".join(f"{v:.3f}" for v in row) + "\n" for row in rows))


# -----------------------------------------------------------------------------


def build_parser():
    parser = r1track.ArgumentParser(description=__doc__)
    parser.add_argument("--demo", action="store_true", help="offline demo: track synthetic clips with the "
                        "bundled demo_model/ (or --model), print their AO, write tracked.mp4")
    parser.add_argument("--video", help="a video file, a folder of frames, or a glob such as 'frames/*.jpg'")
    parser.add_argument("--box", help="the target in the first frame, in frame pixels: x1,y1,x2,y2 "
                        "(or x,y,w,h with --box-format xywh)")
    parser.add_argument("--box-format", choices=["xyxy", "xywh"], default="xyxy",
                        help="how --box is written (default: xyxy; xywh as in GOT-10k files)")
    parser.add_argument("--text", help="find the target from a description in the first frame instead of --box, "
                        "with Qwen2.5-VL's grounding (local model only)")
    parser.add_argument("--model", default=None, help=f"hub id or folder of the model (default: "
                        f"{r1track.DEFAULT_MODEL}; with --demo, demo_model/)")
    parser.add_argument("--server", help="an OpenAI-compatible server URL (e.g. vLLM) to ask instead of a local model")
    parser.add_argument("--server-model", help="the model name the server serves (default: its first model); "
                        "also where the tracking settings are read from, unless --settings says")
    r1track.add_settings_args(parser)
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                        help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--recover", action="store_true", help="after a failed answer, widen the search region "
                        "until the target is found again (not part of the published loop)")
    parser.add_argument("--out", help="output folder (default: runs/track-<video name>, or runs/demo)")
    parser.add_argument("--fps", type=float, help="frame rate of tracked.mp4 (default: the video's, or 30)")
    parser.add_argument("--no-video", action="store_true", help="skip writing tracked.mp4")
    return parser


def load_tracker(args, first_frame):
    """The tracker and the first box found by --text (None without --text)."""
    tracker, loaded = r1track.tracker_from_args(args, args.device, name=f"R1-Track[{Path(args.model).name}]")
    print(f"tracking settings: {tracker.settings.describe()}")
    box = None
    if args.text:
        box = r1track.locate_text(*loaded, first_frame, args.text)
        if box is None:
            raise UserError(f"the model could not find {args.text!r} in the first frame; give --box instead")
    return tracker, box


def track(args) -> int:
    from tqdm import tqdm

    args.model = args.model or r1track.DEFAULT_MODEL
    if not args.video:
        raise UserError("--video is required")
    if (args.box is None) == (args.text is None):
        raise UserError("give the target with --box or with --text (one of them)")
    if args.text and args.server:
        raise UserError("--text needs a local model; with --server give --box")
    first, frames, total, fps = open_frames(args.video, args.fps)
    size = (first.shape[1], first.shape[0])
    box_xywh = parse_box(args.box, args.box_format, size) if args.box else None
    out = Path(args.out or f"runs/track-{Path(args.video.rstrip('/')).stem.strip('*') or 'frames'}")
    out.mkdir(parents=True, exist_ok=True)

    tracker, found = load_tracker(args, first)
    box_xywh = box_xywh or found
    boxes, times = [], []
    writer = None if args.no_video else VideoWriter(out / "tracked.mp4", size, fps)
    last_image, decode_failures, interrupted = first, 0, False
    bar = tqdm(total=total, desc="tracking", unit="frame", dynamic_ncols=True)
    try:
        for index, image in enumerate(frames):
            started = time.perf_counter()
            if index == 0:
                tracker.init(image, box_xywh)
                box = tracker.box_xywh
            elif image is None:
                decode_failures += 1
                bar.write(f"warning: frame {index + 1} could not be decoded; keeping the last box", file=sys.stderr)
                box, image = boxes[-1], last_image
            else:
                box = tracker.update(image)
            times.append(time.perf_counter() - started if index else 0.0)
            boxes.append(box)
            if writer:
                writer.write(draw_box(image, box, index))
            last_image = image
            bar.update()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        write_rows(out / "boxes.txt", boxes)
        write_rows(out / "times.txt", [[t] for t in times])
        if writer:
            writer.close()
    tracked = [t for t in times[1:] if t > 0]
    fps_measured = len(tracked) / sum(tracked) if tracked else 0.0
    edge = f", {tracker.edge_holds} boxes held at the frame edge" if tracker.settings.loop == "published" else ""
    print(f"{len(boxes)} frames, {fps_measured:.2f} FPS, {tracker.fallbacks} fallbacks "
          f"(unusable answers: the previous one reused){edge}, {decode_failures} undecodable frames -> {out}")
    if interrupted:
        print("interrupted: the frames tracked so far are saved")
        return 130
    return 0


# -----------------------------------------------------------------------------
# The offline demo


def demo(args) -> int:
    """Synthetic clips -> the batched tracker -> the official score -> tracked.mp4."""
    if args.video or args.box or args.text or args.server:
        raise UserError("--demo makes its own clips and uses a local model: leave out --video, --box, --text, --server")
    if args.model is None and not (r1track.DEMO_MODEL / "config.json").is_file():
        raise UserError(f"no demo model in {r1track.DEMO_MODEL}: run `python make_demo_model.py` to make it")
    args.model = args.model or str(r1track.DEMO_MODEL)
    out = Path(args.out or "runs/demo")
    clips = synthetic.make_synthetic_got10k(out / "clips", **DEMO_CLIPS)
    names = read_got10k_split(clips)
    print(f"{len(names)} synthetic clips of {DEMO_CLIPS['frames']} frames in {clips}, never seen in training")

    tracker, _ = load_tracker(args, None)
    results = out / "results"
    scoring.track_sequences(tracker, [read_got10k_sequence(clips / n) for n in names], results, batch=len(names))
    report = scoring.score(results, clips, names)
    scoring.print_reports({"demo": report})
    r1track.write_atomic(out / "report.json", json.dumps(report, indent=2))
    scoring.plot_success({Path(args.model).name: report}, out / "success_plot.png")
    write_example(out / "example.png", tracker, clips, names[0], results)
    if not args.no_video:
        write_demo_video(out / "tracked.mp4", clips, names, results, args.fps or 10.0)
    print(f"AO {report['ao']:.3f} on {len(names)} held-out synthetic clips; "
          f"{'' if args.no_video else 'tracked.mp4, '}example.png, boxes, report and success plot in {out}")
    return 0


def write_example(path: Path, tracker, clips: Path, name: str, results: Path, frame_index=10):
    """One question as the model sees it: the template crop with the given box (white), the
    search crop with the model's answer (green), the question and the answer text."""
    import textwrap

    from PIL import Image, ImageDraw

    sequence = read_got10k_sequence(clips / name)
    tracked = scoring.read_boxes(scoring.result_files(results, name)[0], len(sequence["frames"]))
    tracker = copy.copy(tracker)
    tracker.init(r1track.read_frame(sequence["frames"][0]), sequence["boxes_xywh"][0])
    tracker.box_xywh = list(tracked[frame_index - 1])  # where the tracker stood before this frame
    request = tracker.request(r1track.read_frame(sequence["frames"][frame_index]))
    answer = tracker.answerer([request])[0]
    side = 224
    s = tracker.settings
    text = r1track.question_text(request.template_box_xyxy, s.think, s.wording, s.asks_as_client)
    lines = ["", ""] + textwrap.wrap(text.replace("\n", " "), 76) + [
        "", f"answer: {answer.strip()}"]
    canvas = Image.new("RGB", (2 * side + 24, side + 24 + 14 * len(lines)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for column, (crop, box_xyxy, colour) in enumerate(
            [(request.template, request.template_box_xyxy, (255, 255, 255)),
             (request.search, r1track.parse_answer(answer, think=tracker.settings.think), (0, 255, 0))]):
        crop = r1track.as_pil(crop)
        left, ratio = 8 + column * (side + 8), side / crop.width
        canvas.paste(crop.resize((side, side)), (left, 8))
        draw.text((left, side + 16), ["image 1: template", "image 2: search"][column], fill=(0, 0, 0))
        if box_xyxy:
            draw.rectangle([left + box_xyxy[0] * ratio, 8 + box_xyxy[1] * ratio,
                            left + box_xyxy[2] * ratio, 8 + box_xyxy[3] * ratio], outline=colour, width=2)
    for row, line in enumerate(lines):
        draw.text((8, side + 16 + 14 * row), line, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def write_demo_video(path: Path, clips: Path, names, results: Path, fps: float):
    """Every clip one after the other, the truth in white and the tracker's box in green."""
    from PIL import ImageDraw

    writer = None
    for name in names:
        sequence = read_got10k_sequence(clips / name)
        tracked = scoring.read_boxes(scoring.result_files(results, name)[0], len(sequence["frames"]))
        for index, (frame, truth_xywh) in enumerate(zip(sequence["frames"], sequence["boxes_xywh"])):
            image = draw_box(r1track.read_frame(frame), tracked[index], index)
            x, y, w, h = truth_xywh
            ImageDraw.Draw(image).rectangle([x, y, x + w, y + h], outline=(255, 255, 255), width=1)
            ImageDraw.Draw(image).text((6, image.height - 14), name, fill=(255, 255, 0))
            writer = writer or VideoWriter(path, image.size, fps)
            writer.write(image)
    writer.close()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return r1track.script_main(demo if args.demo else track, args)


if __name__ == "__main__":
    sys.exit(main())
