"""Track one object through a video with R1-Track.

  python track.py --video clip.mp4 --box 241,66,329,154
  python track.py --video frames/ --box 10,20,50,80 --box-format xywh --model runs/sft
  python track.py --video "shots/*.png" --text "the red car"
  python track.py --video clip.mp4 --box 241,66,329,154 --server http://localhost:8000

--video takes a video file (mp4, avi, mkv, webm, mov, ...), a folder of frames or a glob.
The model runs in-process (a hub id or a folder), or behind an OpenAI-compatible server
(--server) as the published R1-Track deployment did. --out receives boxes.txt (one
x,y,w,h row per frame, the first row the given box), times.txt (seconds per frame) and
tracked.mp4 (every frame with its box).
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import r1track

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class InputError(Exception):
    """Bad input: reported as one line, never a traceback."""


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
        raise InputError(f"no such video, folder or glob: {spec}")
    if not files:
        raise InputError(f"no frames (image files) in {spec}")
    return files


def read_image(path: Path):
    """A frame from an image file, or None when it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class Video:
    """A video file read with PyAV: frames as PIL images, None for one that fails to decode."""

    def __init__(self, path: str):
        import av

        try:
            self.container = av.open(path)
            self.stream = self.container.streams.video[0]
        except (av.FFmpegError, IndexError, OSError, UnicodeDecodeError):
            raise InputError(f"cannot read {path} as a video") from None
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
                yield frame.to_image().convert("RGB")
        self.container.close()


def open_frames(spec: str, fps: float | None):
    """(first frame, iterator over every frame, frame count or None, frames per second)."""
    files = frame_files(spec)
    if files is None:
        video = Video(spec)
        frames = iter(video)
        first = next(frames, None)
        if first is None:
            raise InputError(f"no frame could be decoded from {spec}")

        def all_frames():
            yield first
            yield from frames

        return first, all_frames(), video.total, fps or video.fps
    first = read_image(files[0])
    if first is None:
        raise InputError(f"cannot read the first frame {files[0]}")
    return first, (first if i == 0 else read_image(p) for i, p in enumerate(files)), len(files), fps or 30.0


# -----------------------------------------------------------------------------
# The first box


def parse_box(text: str, box_format: str, frame_size) -> list[float]:
    """--box as a frame box (x, y, w, h), checked against the first frame."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise InputError(f"--box takes four numbers separated by commas, got {text!r}") from None
    if len(values) != 4:
        raise InputError(f"--box takes four numbers separated by commas, got {len(values)}: {text!r}")
    if box_format == "xyxy":
        x1, y1, x2, y2 = values
        if x2 <= x1 or y2 <= y1:
            raise InputError(f"--box {text} is empty or inverted: it needs x2 > x1 and y2 > y1 (x1,y1,x2,y2)")
        values = r1track.xyxy_to_xywh(values)
    try:
        return r1track.check_init_box(values, *frame_size)
    except ValueError as error:
        raise InputError(f"--box {text}: {error}") from None


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

    image = image.copy()
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", help="a video file, a folder of frames, or a glob such as 'frames/*.jpg'")
    parser.add_argument("--box", help="the target in the first frame, in frame pixels: x1,y1,x2,y2 "
                        "(or x,y,w,h with --box-format xywh)")
    parser.add_argument("--box-format", choices=["xyxy", "xywh"], default="xyxy",
                        help="how --box is written (default: xyxy; xywh as in GOT-10k files)")
    parser.add_argument("--text", help="find the target from a description in the first frame instead of --box, "
                        "with Qwen2.5-VL's grounding (local model only)")
    parser.add_argument("--model", default=r1track.DEFAULT_MODEL,
                        help=f"hub id or folder of the model (default: {r1track.DEFAULT_MODEL})")
    parser.add_argument("--server", help="an OpenAI-compatible server URL (e.g. vLLM) to ask instead of a local model")
    parser.add_argument("--server-model", help="the model name the server serves (default: its first model); "
                        "also picks the prompt settings of a published R1-Track id")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                        help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                        help="ask for reasoning before the answer (default: as the model was trained)")
    parser.add_argument("--recover", action="store_true", help="after a failed answer, widen the search region "
                        "until the target is found again (not part of the published loop)")
    parser.add_argument("--out", help="output folder (default: runs/track-<video name>)")
    parser.add_argument("--fps", type=float, help="frame rate of tracked.mp4 (default: the video's, or 30)")
    parser.add_argument("--no-video", action="store_true", help="skip writing tracked.mp4")
    return parser


def load_tracker(args, first_frame):
    """The tracker and the first box (from --box, or found by --text)."""
    import torch

    kwargs = dict(think=args.think, recover=args.recover)
    if args.server:
        tracker = r1track.Tracker(server=args.server, server_model=args.server_model, **kwargs)
        return tracker, None
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        loaded = r1track.load_model(args.model, dtype=dtype, device=args.device)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot load the model {args.model}: {str(error).splitlines()[0]}") from None
    tracker = r1track.Tracker(loaded, name=f"R1-Track[{Path(args.model).name}]", **kwargs)
    box = None
    if args.text:
        box = r1track.locate_text(*loaded, first_frame, args.text)
        if box is None:
            raise InputError(f"the model could not find {args.text!r} in the first frame; give --box instead")
    return tracker, box


def track(args) -> int:
    from tqdm import tqdm

    if not args.video:
        raise InputError("--video is required")
    if (args.box is None) == (args.text is None):
        raise InputError("give the target with --box or with --text (one of them)")
    if args.text and args.server:
        raise InputError("--text needs a local model; with --server give --box")
    first, frames, total, fps = open_frames(args.video, args.fps)
    box_xywh = parse_box(args.box, args.box_format, first.size) if args.box else None
    out = Path(args.out or f"runs/track-{Path(args.video.rstrip('/')).stem.strip('*') or 'frames'}")
    out.mkdir(parents=True, exist_ok=True)

    tracker, found = load_tracker(args, first)
    box_xywh = box_xywh or found
    boxes, times = [], []
    writer = None if args.no_video else VideoWriter(out / "tracked.mp4", first.size, fps)
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
    print(f"{len(boxes)} frames, {fps_measured:.2f} FPS, {tracker.fallbacks} fallbacks "
          f"(unparsable or empty answers), {decode_failures} undecodable frames -> {out}")
    if interrupted:
        print("interrupted: the frames tracked so far are saved")
        return 130
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        r1track.quiet_libraries()
        return track(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
