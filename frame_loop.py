"""The frame loop: every tracked frame goes through here, whoever tracks (track.py and the
web page through video_tracking.py, the benchmarks' runner and so eval_got10k.py and the demo,
the bench, Tracker.track).

It takes sequences (a frame source and the targets tracked in it, each with a tracker of its
own), reads their frames ahead on background threads, starts each target at its frame, asks
about every running target of every active sequence in one answerer call per frame step (at
most `batch` sequences at once, the next one starting as one ends), and hands each frame's
result to the caller's `on_frame`: the boxes, the confidence, whether the target is lost,
what became of the answer, and the frame's share of the step's time. pytracking's
`run_sequence` and SAM2's `propagate_in_video` are the model: one loop, many users.

A tracker here is anything with init(frame, box_xywh), request(frame), accept(answer),
box_xywh, confidence, lost, fallbacks and edge_holds, and an `answerer` (requests -> answers)
that the trackers asked together share (r1track.Tracker).
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

from cli import frame_readers
from frames import read_ahead, read_frame


class Start(NamedTuple):
    """A target: its tracker (its own, not yet started; copies of one tracker share its
    answerer), its first box, or `start(frame) -> (box_xywh, found)` to find it in the frame
    it appears at (e.g. from a description), and that frame's index (from 0)."""

    tracker: object
    box_xywh: object
    frame: int = 0


class Sequence(NamedTuple):
    """A frame source and its targets. `frames`: a list of frame files (decoded here, read
    ahead), or an iterator of (frame index, RGB frame or None where it could not be decoded,
    the moment it arrived or None). `length`: the frame count, where known."""

    frames: object
    starts: list
    length: int | None = None


# What became of a target on a frame
STARTED = "started"                  # its first frame: the given (or found) box
NOT_FOUND = "not found"              # its first frame, where start() found nothing: the box it gave instead
ANSWERED = "answered"                # the answer was used (or, recovering, held because it was doubted)
UNUSABLE = "unusable"                # the answer could not be used: the previous answer (or box) stays
EDGE_HOLD = "edge hold"              # the published frame-edge rule refused the answer's box
HELD = "held"                        # the frame could not be decoded: nothing asked, the last box stays


class TargetFrame(NamedTuple):
    box_xywh: list
    confidence: float | None  # None where the answerer cannot say (a server, a function)
    lost: bool
    outcome: str


class FrameResult(NamedTuple):
    sequence: int             # the sequence's index in those given
    index: int                # the frame's index in its sequence, from 0
    frame: object             # the RGB frame (None where it could not be decoded)
    targets: list             # per Start: its TargetFrame, or None before it starts
    seconds: float            # the frame's share of its step's time, reading left out (a first frame: starting)
    arrived: float | None     # when a live source delivered it


def run(sequences, on_frame, batch=1, readers=4, progress=None, total=None, answer=None, timings=None,
        croppers=None):
    """Track `sequences` (Sequence), `batch` of them at once, calling on_frame(FrameResult)
    for every frame in the order they are tracked. `readers` threads decode frame files ahead
    (fewer where the model runs on the CPU: frame_readers; 0 reads each in its turn).
    `progress`: a progress bar's title (None: no bar), `total` the frames it expects (default:
    the sequences' lengths, where all are known). `answer(trackers, requests) ->
    answers` replaces the trackers' answerer (the bench answers with an ideal detector).
    `timings`: a dict whose lists get each step's seconds per asked target: read, crop,
    answer, accept. `croppers`: threads that cut a step's crops at once (default: the cores)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    sequences = list(sequences)
    answerer = next((start.tracker.answerer for s in sequences for start in s.starts), None)
    model = getattr(answerer, "model", None)  # None: answers come from a server or a function
    readers = frame_readers(model is not None and model.device.type == "cpu", readers) if readers else 0
    lengths = [len(s.frames) if isinstance(s.frames, list) else s.length for s in sequences]
    total = total if total is not None else None if None in lengths else sum(lengths)
    bar = tqdm(total=total, desc=progress, unit="frame",
               disable=progress is None, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=max(readers, 1)) as reading, \
            ThreadPoolExecutor(max_workers=croppers or os.cpu_count() or 1) as cutting:
        def frames_of(k):
            frames = sequences[k].frames
            if not isinstance(frames, list):
                return frames
            decoded = read_ahead(frames, reading) if readers else map(read_frame, frames)
            return ((index, frame, None) for index, frame in enumerate(decoded))

        pending, active, finished = deque(range(len(sequences))), [], 0
        upcoming = frames_of(pending[0]) if pending else None  # the next sequence's frames, read while it waits
        try:
            while pending or active:
                while pending and len(active) < batch:
                    k = pending.popleft()
                    run_ = _Run(k, sequences[k], lengths[k], upcoming)
                    upcoming = frames_of(pending[0]) if pending else None
                    if run_.first_frame(on_frame):
                        active.append(run_)
                    else:  # a sequence of one frame (or none) ends at its first
                        finished += 1
                    bar.update()
                finished += _step(active, on_frame, cutting, answer, timings, bar)
                if len(sequences) > 1:
                    bar.set_postfix_str(f"{finished}/{len(sequences)} sequences")
        finally:
            bar.close()


class _Run:
    """One sequence being tracked: its frames, its targets' trackers and their last frames."""

    def __init__(self, k: int, sequence: Sequence, length, frames):
        self.k, self.starts, self.length, self.frames = k, sequence.starts, length, frames
        self.last = [None] * len(self.starts)  # per target: its last TargetFrame, None before it starts
        self.taken = 0

    def next_frame(self):
        """(index, frame, arrived), or None when the sequence has ended."""
        if self.length is not None and self.taken >= self.length:
            return None
        item = next(self.frames, None)
        self.taken += item is not None
        return item

    def first_frame(self, on_frame) -> bool:
        """Its first frame: the targets that appear there start. False when it has no more."""
        item = self.next_frame()
        if item is None:
            return False
        started = time.perf_counter()
        index, frame, arrived = item
        self.start_targets(index, frame)
        on_frame(FrameResult(self.k, index, frame, list(self.last), time.perf_counter() - started, arrived))
        return self.length is None or self.taken < self.length

    def start_targets(self, index: int, frame) -> None:
        if frame is None:
            return
        for s, start in enumerate(self.starts):
            # a target starts at its frame, or (a live source that dropped it) at the first one after
            if self.last[s] is None and index >= start.frame:
                found = True
                if callable(start.box_xywh):
                    box_xywh, found = start.box_xywh(frame)
                else:
                    box_xywh = start.box_xywh
                start.tracker.init(frame, box_xywh)
                self.last[s] = TargetFrame(list(start.tracker.box_xywh), 1.0, False, STARTED if found else NOT_FOUND)

    def running(self) -> list[int]:
        return [s for s, last in enumerate(self.last) if last is not None]


def _step(active: list, on_frame, cutting, answer, timings, bar) -> int:
    """The next frame of every active sequence: its running targets asked in one answerer
    call, then those that appear on it started. Returns how many sequences ended."""
    clock = started = time.perf_counter()
    taken = [(run_, run_.next_frame()) for run_ in active]
    ended = [run_ for run_, item in taken if item is None]
    taken = [(run_, item) for run_, item in taken if item is not None]
    read = time.perf_counter() - clock
    asked, images = [], []  # (sequence, target) and its frame, for every running target of a decoded frame
    for run_, (_, frame, _) in taken:
        if frame is not None:
            asked += [(run_, s) for s in run_.running()]
            images += [frame] * (len(asked) - len(images))
    if asked:
        trackers = [run_.starts[s].tracker for run_, s in asked]
        before = [(tracker.fallbacks, tracker.edge_holds) for tracker in trackers]
        boxes = update_batch(trackers, images, cutting, answer, timings, read)
        for (run_, s), tracker, box, (fallbacks, edge_holds) in zip(asked, trackers, boxes, before):
            outcome = UNUSABLE if tracker.fallbacks > fallbacks else EDGE_HOLD if tracker.edge_holds > edge_holds \
                else ANSWERED
            run_.last[s] = TargetFrame(box, tracker.confidence, tracker.lost, outcome)
    for run_, (index, frame, _) in taken:
        if frame is None:
            run_.last = [last and last._replace(outcome=HELD) for last in run_.last]
        run_.start_targets(index, frame)
    # the step's time past the reading, shared out (as the GOT-10k toolkit times a tracker: not
    # the decoding, nor a live source's wait for its next frame)
    seconds = (time.perf_counter() - started - read) / max(len(taken), 1)
    for run_, (index, frame, arrived) in taken:
        on_frame(FrameResult(run_.k, index, frame, list(run_.last), seconds, arrived))
        bar.update()
    ended += [run_ for run_, _ in taken if run_.length is not None and run_.taken >= run_.length]
    for run_ in ended:
        active.remove(run_)
    return len(ended)


def update_batch(trackers, images, pool=None, answer=None, timings=None, read=0.0) -> list[list[float]]:
    """One frame for each of several trackers; those that share an answerer (copies of one
    tracker, one per sequence or target) are asked in one call: a batch for a local model.
    With `pool` (a ThreadPoolExecutor) the crops are cut by its threads at once (OpenCV lets
    go of the GIL). `answer` and `timings`: see run. Returns each tracker's box (x, y, w, h)."""
    clock = time.perf_counter()
    if pool is None or len(trackers) == 1:
        requests = [tracker.request(image) for tracker, image in zip(trackers, images)]
    else:
        requests = list(pool.map(lambda tracker, image: tracker.request(image), trackers, images))
    cut = time.perf_counter()
    answers = answer(trackers, requests) if answer is not None else _answers(trackers, requests)
    answered = time.perf_counter()
    boxes = [tracker.accept(reply) for tracker, reply in zip(trackers, answers)]
    if timings is not None:
        for name, seconds in (("read", read), ("crop", cut - clock), ("answer", answered - cut),
                              ("accept", time.perf_counter() - answered)):
            timings.setdefault(name, []).append(seconds / len(trackers))
    return boxes


def _answers(trackers, requests) -> list:
    """Each request's answer, one call per answerer (in the usual case all share one)."""
    rows_of = {}
    for row, tracker in enumerate(trackers):
        rows_of.setdefault(id(tracker.answerer), []).append(row)
    answers = [None] * len(trackers)
    for rows in rows_of.values():
        for row, reply in zip(rows, trackers[rows[0]].answerer([requests[row] for row in rows])):
            answers[row] = reply
    return answers
