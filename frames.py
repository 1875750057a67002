"""Frames in: images decoded to RGB (OpenCV as the published scripts read frames, PIL as the
training data's images are read), read ahead by background threads while the model works, and
the sources a tracker reads them from: frame files (a folder or a glob), video files and
network streams (PyAV), cameras (OpenCV), and a live source's newest frame (--realtime)."""

from __future__ import annotations

import glob
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cli import UserError, first_line


def _opencv_rgb(decode, source):
    """`decode(source, flags)` (cv2.imread or cv2.imdecode) as an RGB array, or None where
    OpenCV cannot decode it: straight to RGB where OpenCV can (>= 4.11; the same pixels, a
    pass fewer), else decoded as BGR and converted."""
    import cv2

    if hasattr(cv2, "IMREAD_COLOR_RGB"):
        return decode(source, cv2.IMREAD_COLOR_RGB)
    image = decode(source, cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def as_array(image) -> np.ndarray:
    """A frame as an RGB uint8 array (PIL images and arrays are accepted)."""
    if isinstance(image, Image.Image):
        image = image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 1:  # grey
        array = np.repeat(array, 3, axis=2)
    return array[..., :3]  # RGBA: the colour without the alpha


def as_pil(image) -> Image.Image:
    """A frame as a PIL RGB image (PIL images and RGB arrays are accepted)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    return Image.fromarray(as_array(image))


def read_frame(path) -> np.ndarray:
    """A frame's image file as an RGB uint8 array, decoded by OpenCV as the published scripts
    read frames; UserError when it cannot be decoded."""
    import cv2

    frame = _opencv_rgb(cv2.imread, str(path))
    if frame is None:
        raise UserError(f"cannot decode the image {path}")
    return frame


def open_image(source) -> Image.Image:
    """A stored image (JPEG or PNG bytes, or a path) as a PIL RGB image, decoded by PIL as the
    training data's images are (EasyR1, vLLM); UserError when it cannot be decoded."""
    import io

    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        image.load()  # decoded here, so that a broken file fails here
        return image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"unreadable image: {error}") from None


def read_ahead(paths, pool, read=read_frame, ahead=4):
    """read(path) for each path, in order, each decoded by `pool` (a ThreadPoolExecutor, may
    be shared) up to `ahead` frames before it is needed. An error of read is raised when its
    frame's turn comes."""
    from collections import deque

    paths, pending = iter(paths), deque()
    for path in paths:  # submitted now, not at the first frame's turn: a reader made early reads early
        pending.append(pool.submit(read, path))
        if len(pending) >= ahead:
            break
    return _frames_in_turn(paths, pending, pool, read)


def _frames_in_turn(paths, pending, pool, read):
    try:
        while pending:
            frame = pending.popleft().result()
            for path in paths:  # one more in flight for the one taken
                pending.append(pool.submit(read, path))
                break
            yield frame
    finally:
        for future in pending:
            future.cancel()


def in_background(items, ahead=8):
    """The items of an iterator, in order, produced by a background thread up to `ahead`
    items before they are needed (a video decoder, for one). Its errors are raised in turn."""
    import queue
    import threading

    handed, stopped = queue.Queue(maxsize=ahead), threading.Event()
    end = object()

    def hand(item, error=None) -> bool:  # False once the user of the items has gone
        while not stopped.is_set():
            try:
                handed.put((item, error), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not hand(item):
                    return
            hand(end)
        except BaseException as error:  # handed over, raised where the items are used
            hand(end, error)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item, error = handed.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stopped.set()


# -----------------------------------------------------------------------------
# Frame sources: files, a folder or a glob of frames, video files, network streams, cameras,
# and a live source's newest frame

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


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
        return read_frame(path)
    except UserError:
        return None


def files_ahead(files, readers=2):
    """The frames of `files`, decoded by `readers` threads ahead of the tracker."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=readers) as pool:
        yield from read_ahead(files, pool, read=read_image, ahead=2 * readers)


def is_stream(spec: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec) is not None


def is_camera(spec: str) -> bool:
    return spec.isdigit() or spec.startswith("/dev/video")


class Video:
    """A video file or network stream read with PyAV: frames as RGB arrays, None for one
    that fails to decode; `times` holds each frame's timestamp in seconds (or None)."""

    def __init__(self, path: str, **open_options):
        import av

        try:
            self.container = av.open(path, **open_options)
            self.stream = self.container.streams.video[0]
        except (av.FFmpegError, IndexError, OSError, UnicodeDecodeError):
            raise UserError(f"cannot read {path} as a video") from None
        self.stream.thread_type = "AUTO"
        self.total = self.stream.frames or None
        self.fps = float(self.stream.average_rate) if self.stream.average_rate else 30.0
        self.times = []

    def __iter__(self):
        for frame in self.decoded():
            yield None if frame is None else frame.to_ndarray(format="rgb24")

    def decoded(self):
        """The decoded frames as PyAV frames, None for one that fails; turned into RGB only by
        whoever wants its pixels (at 1080p that costs as much as decoding)."""
        import av

        try:
            for packet in self.container.demux(self.stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    self.times.append(None)
                    yield None
                    continue
                for frame in frames:
                    self.times.append(frame.time)
                    yield frame
        except av.FFmpegError as error:  # a stream that breaks off: the frames so far are tracked
            print(f"warning: the video stopped: {first_line(error)}", file=sys.stderr)
        self.container.close()

    def frame(self, index: int):
        """Frame `index` (from 0) as an RGB array; None when it cannot be decoded or is not there."""
        for k, frame in enumerate(self.decoded()):
            if k == index:
                self.container.close()
                return None if frame is None else frame.to_ndarray(format="rgb24")
        return None


class Camera:
    """A camera (/dev/videoN or its index) read with OpenCV, whose Linux builds carry the
    V4L2 capture PyAV's wheels leave out: frames as RGB arrays, as they come."""

    def __init__(self, spec: str):
        import cv2

        self.capture = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
        if not self.capture.isOpened():
            raise UserError(f"cannot open the camera {spec}")
        self.total, self.times = None, []
        self.fps = self.capture.get(cv2.CAP_PROP_FPS) or 30.0

    def __iter__(self):
        import cv2

        while True:
            ok, frame = self.capture.read()
            if not ok:
                break
            self.times.append(None)
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        self.capture.release()


class NewestFrames:
    """A source as a live one gives it (--realtime). The first frame (the one the boxes were
    given on) comes first; from then on a reader thread takes each frame when it is due (a
    file or a stream: at its timestamp; frames of a folder: every 1/fps; a camera: as it
    comes) and keeps only the newest. Iterating yields (frame index, frame, the moment it
    arrived), waiting for a frame not yet taken; those replaced before the tracker took them
    are `dropped`."""

    def __init__(self, first, rest, times, fps: float, paced: bool):
        import threading

        self.first, self.condition = first, threading.Condition()
        self.newest, self.ended, self.dropped = None, False, 0
        self.reader = threading.Thread(target=self._read, args=(rest, times, fps, paced), daemon=True)

    def _read(self, frames, times, fps, paced):
        started, first_time = time.perf_counter(), times[0] if times and times[0] is not None else 0.0
        for index, frame in enumerate(frames, 1):
            if paced:  # wait until the frame's moment comes, as it would from a camera
                stamp = times[index] if index < len(times) and times[index] is not None else index / fps
                time.sleep(max(0.0, started + stamp - first_time - time.perf_counter()))
            with self.condition:
                if self.newest is not None:
                    self.dropped += 1
                self.newest = (index, frame, time.perf_counter())
                self.condition.notify()
        with self.condition:
            self.ended = True
            self.condition.notify()

    def __iter__(self):
        arrived = time.perf_counter()
        self.reader.start()  # the source's clock starts with the first frame's tracking
        yield 0, self.first, arrived
        while True:
            with self.condition:
                self.condition.wait_for(lambda: self.newest is not None or self.ended)
                if self.newest is None:
                    return
                taken, self.newest = self.newest, None
            yield taken


def open_frames(spec: str, fps: float | None, realtime=False, readers=2):
    """(first frame, iterator over (frame index, frame, arrival time or None), frame count or
    None, frames per second, the NewestFrames of --realtime or None): RGB arrays, decoded in
    the background while the tracker works."""
    files = None if is_stream(spec) or is_camera(spec) else frame_files(spec)
    if files is not None:
        source, total, fps, times = iter(files_ahead(files, readers)), len(files), fps or 30.0, []
    else:
        video = Camera(spec) if is_camera(spec) else Video(spec, timeout=30) if is_stream(spec) else Video(spec)
        source, total, fps, times = iter(video), video.total, fps or video.fps, video.times
    first = next(source, None)
    if first is None:
        raise UserError(f"cannot read the first frame {files[0]}" if files else f"no frame could be decoded from {spec}")

    if realtime:
        live = NewestFrames(first, source, times, fps, paced=not is_camera(spec))
        return first, iter(live), total, fps, live

    def every_frame():
        yield first
        yield from source

    frames = in_background(every_frame()) if files is None else every_frame()
    return first, ((index, frame, None) for index, frame in enumerate(frames)), total, fps, None
