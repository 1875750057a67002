"""Frames read ahead of the tracker: in order, at most a few in flight, errors in their turn."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import ROOT

import r1track
from cli import UserError, frame_readers, leave_a_core_for_reading
from frames import in_background, read_ahead


def test_read_ahead_keeps_order_overlaps_and_bounds_the_frames_in_flight():
    started, lock, in_flight, most = [], threading.Lock(), [0], [0]

    def slow_read(path):
        with lock:
            started.append(path)
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.02 if path % 3 else 0.05)  # out-of-order finishing
        with lock:
            in_flight[0] -= 1
        return path * 10

    with ThreadPoolExecutor(max_workers=4) as pool:
        frames = read_ahead(range(12), pool, read=slow_read, ahead=3)
        assert next(frames) == 0
        time.sleep(0.1)  # while the tracker works on frame 0, the next ones are decoded
        assert len(started) == 4  # frames 1-3 ahead (and frame 0), no more
        assert list(frames) == [10 * k for k in range(1, 12)]
    assert 1 < most[0] <= 4


def test_read_ahead_raises_a_bad_frame_in_its_turn(tmp_path):
    good = tmp_path / "good.png"
    import cv2

    cv2.imwrite(str(good), np.zeros((8, 8, 3), np.uint8))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with ThreadPoolExecutor(max_workers=2) as pool:
        frames = read_ahead([good, good, bad, good], pool)
        assert next(frames).shape == (8, 8, 3) and next(frames).shape == (8, 8, 3)
        with pytest.raises(UserError, match="bad.jpg"):
            next(frames)


def test_in_background_produces_ahead_and_stops_with_its_user():
    produced = []

    def numbers():
        for k in range(1000):
            produced.append(k)
            yield k

    items = in_background(numbers(), ahead=4)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    time.sleep(0.2)
    assert len(produced) <= 3 + 4 + 1  # the queue bounds how far the producer runs ahead
    items.close()
    time.sleep(0.3)
    count = len(produced)
    time.sleep(0.2)
    assert len(produced) == count < 1000  # the producer stopped with the consumer


def test_in_background_hands_over_the_producers_error():
    def broken():
        yield 1
        raise ValueError("decoder failed")

    items = in_background(broken())
    assert next(items) == 1
    with pytest.raises(ValueError, match="decoder failed"):
        next(items)


def test_a_cpu_model_leaves_a_core_to_the_readers(monkeypatch):
    """Torch takes one thread fewer for a CPU model (its threads stall when one shares a core
    with a decoder), never fewer than one, and not when OMP_NUM_THREADS says how many."""
    import torch

    threads = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(3)
        leave_a_core_for_reading()
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        leave_a_core_for_reading()
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        leave_a_core_for_reading()
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)


def test_a_reader_starts_reading_when_made():
    """The next sequence's reader is made while the current one is tracked: its first frames
    must be on their way before the first is asked for."""
    started = threading.Event()
    with ThreadPoolExecutor(max_workers=2) as pool:
        frames = read_ahead(range(5), pool, read=lambda path: started.set() or path, ahead=2)
        assert started.wait(timeout=5)  # nothing asked yet
        assert list(frames) == [0, 1, 2, 3, 4]


def test_frame_readers_leave_the_models_cores_to_it(monkeypatch):
    """With the model on the CPU, frames are decoded by the cores torch's threads leave free
    (at least one reader); with the model elsewhere, by as many readers as asked."""
    import os

    import torch

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    for threads, readers in ((7, 1), (8, 1), (6, 2), (2, 4)):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        assert frame_readers(True, 4) == readers, threads
        assert frame_readers(False, 4) == 4


def test_the_tracking_scripts_cut_crops_on_their_own_thread():
    """A crop and its JPEG are too small to share out among OpenCV's threads (slower, and the
    second thread takes the core frames are read on): the scripts' tracker turns them off,
    whether a model or a server answers."""
    import argparse

    import cv2
    import torch

    threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        args = argparse.Namespace(model=str(ROOT / "demo_model"), server=None, server_model=None, think=None,
                                  recover=False, loop=None, settings=None, dtype=None)
        tracker, loaded = r1track.tracker_from_args(args, "cpu")
        assert loaded is not None and cv2.getNumThreads() == 1
        cv2.setNumThreads(2)  # with a server the crops are cut here all the same
        args.model, args.server, args.server_model = None, "http://127.0.0.1:9", "WangBiao/R1-Track-SFT"
        tracker, loaded = r1track.tracker_from_args(args)
        assert loaded is None and cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv2_threads)
