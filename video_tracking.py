"""One video and its targets, tracked on the one frame loop, and what comes out as track.py
writes it: for each target boxes.txt (x,y,w,h a tracked frame), frames.txt, confidence.txt
and lost.txt (in target<k>/ when there are several), times.txt, tracked.mp4 (every frame with
each target's box, number and confidence) and, for a live source, realtime.json. track.py and
the web page (app.py) both track here, so a video gives the same boxes from either.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import frame_loop
from boxes import check_init_box, xyxy_to_xywh
from cli import UserError, write_atomic
from frames import as_pil


class VideoWriter:
    """tracked.mp4, written to a temporary file and renamed when closed."""

    def __init__(self, path: Path, size, fps: float):
        import av

        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp.mp4")
        # the index first (faststart): a browser plays it while it loads, a cut copy still opens
        self.container = av.open(str(self.tmp), mode="w", options={"movflags": "faststart"})
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


COLOURS = ((0, 255, 0), (255, 64, 64), (64, 160, 255), (255, 200, 0), (255, 0, 255), (0, 255, 255),
           (255, 128, 0), (160, 96, 255))


def draw_targets(image, targets, index: int):
    """The frame with each target's box in its colour, its number and confidence beside it;
    a lost target's box drawn thin with "lost"."""
    from PIL import ImageDraw

    image = as_pil(image).copy()
    draw = ImageDraw.Draw(image)
    width = max(2, round(min(image.size) / 200))
    for target in targets:
        if not target.frames or target.frames[-1] != index:
            continue  # not started yet
        x, y, w, h = target.boxes[-1]
        colour = COLOURS[(target.number - 1) % len(COLOURS)]
        lost = target.lost[-1]
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=1 if lost else width)
        confidence = target.confidences[-1]
        label = f"{target.number}" + ("" if confidence is None else f" {confidence:.2f}") + (" lost" if lost else "")
        draw.text((x + 2, max(y - 12, 0)), label, fill=colour)
    draw.text((6, 4), f"#{index + 1}", fill=(255, 255, 0))
    return image


def draw_box(image, box_xywh, index: int):
    """The frame with one box in green and its frame number (the demo's video)."""
    from PIL import ImageDraw

    image = as_pil(image).copy()
    x, y, w, h = box_xywh
    ImageDraw.Draw(image).rectangle([x, y, x + w, y + h], outline=COLOURS[0], width=max(2, round(min(image.size) / 200)))
    ImageDraw.Draw(image).text((6, 4), f"#{index + 1}", fill=(255, 255, 0))
    return image


def write_rows(path: Path, rows):
    write_atomic(path, "".join(",".join(f"{v:.3f}" for v in row) + "\n" for row in rows))


class Target:
    """One tracked object: where it starts, its tracker (its own state; the answerer is
    shared) and what it has produced, one row per tracked frame."""

    def __init__(self, number: int, box_xywh, first_frame: int):
        self.number, self.box_xywh, self.first_frame = number, box_xywh, first_frame
        self.tracker = None
        self.frames, self.boxes, self.confidences, self.lost = [], [], [], []

    def add(self, index: int, frame):
        """One tracked frame (frame_loop.TargetFrame)."""
        self.frames.append(index)
        self.boxes.append(list(frame.box_xywh))
        self.confidences.append(frame.confidence)
        self.lost.append(bool(frame.lost))

    def write(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        write_rows(folder / "boxes.txt", self.boxes)
        write_atomic(folder / "frames.txt", "".join(f"{index + 1}\n" for index in self.frames))
        write_atomic(folder / "confidence.txt", "".join(
            "nan\n" if c is None else f"{c:.4f}\n" for c in self.confidences))
        write_atomic(folder / "lost.txt", "".join(f"{int(lost)}\n" for lost in self.lost))


# -----------------------------------------------------------------------------
# The targets: where they start, what they produce


def parse_box(text: str, box_format: str, frame_size, name="--box") -> list[float]:
    """A box as a person writes it (x1,y1,x2,y2, or x,y,w,h with box_format "xywh") as a frame
    box (x, y, w, h), checked against the frame; what is wrong is said naming it as `name`."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise UserError(f"{name} takes four numbers separated by commas, got {text!r}") from None
    if len(values) != 4:
        raise UserError(f"{name} takes four numbers separated by commas, got {len(values)}: {text!r}")
    if box_format == "xyxy":
        x1, y1, x2, y2 = values
        if x2 <= x1 or y2 <= y1:
            raise UserError(f"{name} {text} is empty or inverted: it needs x2 > x1 and y2 > y1 (x1,y1,x2,y2)")
        values = xyxy_to_xywh(values)
    try:
        return check_init_box(values, *frame_size)
    except ValueError as error:
        raise UserError(f"{name} {text}: {error}") from None


# -----------------------------------------------------------------------------
# The video tracked


class Tracked(NamedTuple):
    times: list         # seconds per frame read (0 where no answer was asked)
    latencies: list     # a live source's seconds from a frame's arrival to its boxes
    undecodable: list   # the frames (from 0) that could not be decoded
    interrupted: bool   # Ctrl-C: everything tracked so far is written


def track_video(first, frames, total, fps, targets, tracker, out: Path, video=True, live=None, realtime=False,
                progress="tracking", on_progress=None) -> Tracked:
    """Track `targets` (Target) through `frames` (frames.open_frames: its first frame and the
    iterator over them) with copies of `tracker` (one answerer: one batched call a frame),
    writing the files above to `out` even when interrupted. `on_progress(frames done, total)`
    after every frame (total None where unknown)."""
    from tqdm import tqdm

    times, latencies, undecodable = [], [], []
    writer = VideoWriter(out / "tracked.mp4", (first.shape[1], first.shape[0]), fps) if video else None
    shown = [first]  # the last frame that could be decoded, shown in place of one that could not

    def on_frame(result):
        if result.frame is None:
            undecodable.append(result.index)
            tqdm.write(f"warning: frame {result.index + 1} could not be decoded; keeping the last boxes",
                       file=sys.stderr)  # above the progress bar
        else:
            shown[0] = result.frame
        for target, frame in zip(targets, result.targets):
            if frame is not None:
                target.add(result.index, frame)
        answered = any(frame is not None and frame.outcome in ANSWERS for frame in result.targets)
        times.append(result.seconds if answered else 0.0)  # 0: no answer asked
        if result.arrived is not None:
            latencies.append(time.perf_counter() - result.arrived)
        if writer:
            writer.write(draw_targets(shown[0], targets, result.index))
        if on_progress:
            on_progress(len(times), None if realtime else total)

    interrupted = False
    for target in targets:
        target.tracker = copy.copy(tracker)  # each its own state, all one answerer: one batched call a frame
    try:
        starts = [frame_loop.Start(target.tracker, target.box_xywh, target.first_frame) for target in targets]
        frame_loop.run([frame_loop.Sequence(frames, starts)], on_frame, progress=progress,
                       total=None if realtime else total)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for target in targets:
            target.write(out if len(targets) == 1 else out / f"target{target.number}")
        write_rows(out / "times.txt", [[t] for t in times])
        if writer:
            writer.close()
        if live:
            write_realtime_report(out / "realtime.json", live, latencies, len(times))
    return Tracked(times, latencies, undecodable, interrupted)


# what became of a target on a frame where the model was asked about it
ANSWERS = (frame_loop.ANSWERED, frame_loop.UNUSABLE, frame_loop.EDGE_HOLD)


def write_realtime_report(path: Path, live, latencies, processed: int):
    import statistics

    report = {"frames_tracked": processed, "frames_dropped": live.dropped,
              "latency_ms_median": 1000 * statistics.median(latencies) if latencies else None,
              "latency_ms_max": 1000 * max(latencies) if latencies else None}
    write_atomic(path, json.dumps(report, indent=2) + "\n")
