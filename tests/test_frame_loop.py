"""The one frame loop (frame_loop.run): every running target answered in one call per frame
step, sequences started as others end, targets started at their frame, undecodable frames
held, what became of each answer, and the same boxes as each tracker stepped alone."""
import copy
import json

import numpy as np
import pytest

import frame_loop
import r1track
from answers import Answer
from prompts import format_box_xyxy
from settings import TrackSettings

SETTINGS = TrackSettings(crop_size=112, loop="lenient")


def moving_square(frames, start=(20, 14), step=(3, 2), size=(96, 72)):
    """Frames (RGB arrays) with a white 12 x 10 square moving by `step` a frame, and its boxes."""
    images, boxes = [], []
    for t in range(frames):
        x, y = start[0] + step[0] * t, start[1] + step[1] * t
        image = np.zeros((size[1], size[0], 3), np.uint8)
        image[y:y + 10, x:x + 12] = 255
        images.append(image)
        boxes.append([float(x), float(y), 12.0, 10.0])
    return images, boxes


class Detector:
    """An answerer that finds the white square in each search crop (as a model would answer),
    recording how many requests each call held."""

    def __init__(self):
        self.calls = []

    def __call__(self, requests):
        self.calls.append(len(requests))
        answers = []
        for request in requests:
            ys, xs = np.nonzero(np.asarray(request.search)[..., 0] > 128)
            text = format_box_xyxy([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) if len(xs) else "nothing"
            answers.append(Answer(text, 0.9))
        return answers


def in_memory(frames, starts):
    return frame_loop.Sequence(((i, frame, None) for i, frame in enumerate(frames)), starts, len(frames))


def test_each_step_is_one_call_and_the_boxes_are_those_of_each_tracker_alone():
    clips = [moving_square(n, start=(10 + 5 * k, 12 + k)) for k, n in enumerate((5, 3, 4))]
    detector = Detector()
    tracker = r1track.Tracker(answerer=detector, settings=SETTINGS)
    results = []
    frame_loop.run([in_memory(frames, [frame_loop.Start(copy.copy(tracker), boxes[0])]) for frames, boxes in clips],
                   results.append, batch=2)
    # sequences 0 and 1 start together; 2 starts as soon as 1 has ended, as eval_got10k.py batches them
    assert detector.calls == [2, 2, 2, 2, 1]
    for k, (frames, _) in enumerate(clips):
        mine = [r for r in results if r.sequence == k]
        assert [r.index for r in mine] == list(range(len(frames)))
        alone = r1track.Tracker(answerer=Detector(), settings=SETTINGS)
        alone.init(frames[0], clips[k][1][0])
        expected = [list(alone.box_xywh)] + [alone.update(frame) for frame in frames[1:]]
        assert [r.targets[0].box_xywh for r in mine] == expected
        assert [r.targets[0].outcome for r in mine] == [frame_loop.STARTED] + [frame_loop.ANSWERED] * (len(frames) - 1)
        assert all(r.targets[0].confidence == (1.0 if r.index == 0 else 0.9) for r in mine)


def test_targets_start_at_their_frame_and_an_undecodable_frame_holds_the_boxes():
    frames, boxes = moving_square(6)
    items = [(i, None if i == 2 else frame, None) for i, frame in enumerate(frames)]
    detector = Detector()
    tracker = r1track.Tracker(answerer=detector, settings=SETTINGS)
    starts = [frame_loop.Start(copy.copy(tracker), boxes[0]), frame_loop.Start(copy.copy(tracker), boxes[3], 3)]
    results = []
    frame_loop.run([frame_loop.Sequence(iter(items), starts)], results.append)
    assert [r.index for r in results] == list(range(6))
    first, second = zip(*(r.targets for r in results))
    assert second[:3] == (None, None, None) and second[3].outcome == frame_loop.STARTED
    assert second[3].box_xywh == boxes[3]
    assert first[2].outcome == frame_loop.HELD and first[2].box_xywh == first[1].box_xywh
    assert results[2].frame is None
    # frame 1 asks one target, frame 2 none, frame 3 one (the second starts there), 4 and 5 both
    assert detector.calls == [1, 1, 2, 2]


def test_outcomes_of_unusable_answers_and_of_the_frame_edge_rule():
    frames, boxes = moving_square(3)
    garbage = r1track.Tracker(answer_fn=lambda *a: "no box here", settings=SETTINGS)
    edge = r1track.Tracker(answer_fn=lambda *a: "[0,0,40,40]", settings=TrackSettings(crop_size=112))  # published
    results = []
    frame_loop.run([in_memory(frames, [frame_loop.Start(garbage, boxes[0])]),
                    in_memory(frames, [frame_loop.Start(edge, boxes[0])])], results.append, batch=2)
    outcomes = {k: [r.targets[0].outcome for r in results if r.sequence == k] for k in (0, 1)}
    assert outcomes[0] == [frame_loop.STARTED, frame_loop.UNUSABLE, frame_loop.UNUSABLE]
    assert outcomes[1] == [frame_loop.STARTED, frame_loop.EDGE_HOLD, frame_loop.EDGE_HOLD]
    assert garbage.fallbacks == 2 and edge.edge_holds == 2
    assert [r.targets[0].confidence for r in results if r.sequence == 0][1:] == [0.0, 0.0]  # unusable: no confidence


def test_the_answer_hook_stands_in_for_the_answerer_and_each_step_is_timed():
    frames, boxes = moving_square(4)
    never = r1track.Tracker(answerer=lambda requests: pytest.fail("the hook answers, not the answerer"),
                            settings=SETTINGS)
    asked, timings = [], {}

    def hook(trackers, requests):
        asked.append([t is never for t in trackers])
        scale, (x, y), _ = requests[0].search_crop  # where the crop lies: answer the target's true box
        truth = boxes[len(asked)]
        return [json.dumps([round((truth[0] - x) * scale), round((truth[1] - y) * scale),
                            round((truth[0] + truth[2] - x) * scale), round((truth[1] + truth[3] - y) * scale)])]

    results = []
    frame_loop.run([in_memory(frames, [frame_loop.Start(never, boxes[0])])], results.append, answer=hook,
                   timings=timings)
    assert asked == [[True]] * 3
    assert set(timings) == {"read", "crop", "answer", "accept"} and all(len(v) == 3 for v in timings.values())
    assert all(r.seconds > 0 for r in results)
    for result, truth in zip(results, boxes):
        assert result.targets[0].box_xywh == pytest.approx(truth, abs=1.0)


def test_answers_carry_their_confidence_and_tracker_track_runs_the_loop(tmp_path):
    from PIL import Image

    frames, boxes = moving_square(4)
    paths = []
    for t, frame in enumerate(frames):
        paths.append(tmp_path / f"{t:08d}.png")
        Image.fromarray(frame).save(paths[-1])
    doubting = Detector()
    doubting_answers = lambda requests: [a._replace(confidence=0.2) for a in doubting(requests)]  # noqa: E731
    tracker = r1track.Tracker(answerer=doubting_answers, settings=SETTINGS, lost_below=0.5)
    tracked, seconds = tracker.track(paths, boxes[0])
    assert tracker.confidence == 0.2 and tracker.lost
    alone = r1track.Tracker(answerer=Detector(), settings=SETTINGS)
    alone.init(frames[0], boxes[0])
    assert tracked.tolist() == [boxes[0]] + [alone.update(frame) for frame in frames[1:]]
    assert len(seconds) == 4 and (seconds > 0).all()


def test_move_to_cuts_the_next_search_crop_around_the_box():
    frames, boxes = moving_square(2)
    tracker = r1track.Tracker(answer_fn=lambda *a: "", settings=SETTINGS)
    tracker.init(frames[0], boxes[0])
    tracker.move_to([40, 30, 12, 10])
    scale, origin, _ = tracker.request(frames[1]).search_crop
    side = 112 / scale
    assert origin == (round(46 - side / 2), round(35 - side / 2))
