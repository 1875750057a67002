"""Track objects through a video with R1-Track.

  python track.py --video clip.mp4 --box 241,66,329,154
  python track.py --video clip.mp4 --box 241,66,329,154 --box 20,30,80,90@40   # two targets, one from frame 40
  python track.py --video frames/ --box 10,20,50,80 --box-format xywh --model runs/sft
  python track.py --video "shots/*.png" --text "the red car"
  python track.py --video rtsp://camera.local/stream --box 241,66,329,154 --realtime
  python track.py --video 0 --box 241,66,329,154 --realtime                       # the first camera
  python track.py --video clip.mp4 --box 241,66,329,154 --server http://localhost:8000
  python track.py --demo

--demo needs nothing but this folder: it draws synthetic clips the bundled model never saw,
tracks them with demo_model/ (made by tools/make_demo_model.py), scores them as eval_got10k.py
does, and writes tracked.mp4 (ground truth in white, the tracker's box in green).

--video takes a video file (mp4, avi, mkv, webm, mov, ...), a folder of frames, a glob, a
network stream (rtsp://, http://, ...) or a camera (/dev/video0, or its index). Every --box
(or line of --boxes) is a target, tracked with its own template and state; all targets are
answered in one batched model call per frame. The model runs in-process (a hub id or a
folder), or behind an OpenAI-compatible server (--server) as the published R1-Track
deployment did.

--out receives, for one target, boxes.txt (one x,y,w,h row per tracked frame, the first row
the given box), frames.txt (the frame number of each row), confidence.txt (how sure the
model was of each box, 0 to 1, from the probabilities of the tokens of its numbers; nan
where the answerer cannot say, as a server) and lost.txt (1 where the confidence fell below
--lost-below); with several targets the same files in target1/, target2/ ...; times.txt
(seconds per frame) and tracked.mp4 (every frame with each target's box, number and
confidence). --realtime tracks a live source as it comes: the newest frame each time, the
frames the model could not keep up with dropped and counted, the latency measured
(realtime.json). Ctrl-C stops and writes everything tracked so far.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import r1track
import synthetic
import video_tracking
from answers import answer_box
from benchmarks import got10k
from benchmarks.got10k import GOT10K, read_got10k_sequence
from benchmarks.results import track_sequences
from cli import ArgumentParser, UserError, frame_readers, script_main, write_atomic
from frames import as_pil, open_frames, read_frame
from prompts import image_side, question_text
from settings import DEFAULT_MODEL, DEMO_MODEL, add_settings_args
from video_tracking import Target, VideoWriter, draw_box

# The demo's clips: drawn as the demo model's training data (tools/make_demo_model.py), with a seed
# its training and validation never used.
DEMO_CLIPS = dict(split="val", sequences=8, frames=40, seed=2026, style="plain")

# -----------------------------------------------------------------------------
# The first box


def parse_target(text: str, box_format: str, frame_size) -> tuple[list[float], int]:
    """A target as --box or a line of --boxes gives it, `x1,y1,x2,y2` or `x1,y1,x2,y2@FRAME`
    (it appears at frame FRAME, counted from 1): (its box x, y, w, h, its first frame from 0)."""
    box, _, start = text.partition("@")
    try:
        first = int(start) - 1 if start.strip() else 0
    except ValueError:
        raise UserError(f"--box {text}: after @ comes the frame the target appears at (from 1)") from None
    if first < 0:
        raise UserError(f"--box {text}: frames are counted from 1")
    return video_tracking.parse_box(box, box_format, frame_size), first


def read_box_file(path: str) -> list[tuple[str, str]]:
    """--boxes: one target a line (as --box takes it); blank lines and # comments skipped.
    [(where it was written, for errors: "--boxes FILE, line N"), the target)]."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise UserError(f"--boxes {path}: {error.strerror or error}") from None
    targets = [(f"--boxes {path}, line {number}", line.split("#")[0].strip())
               for number, line in enumerate(lines, 1)]
    targets = [(where, line) for where, line in targets if line]
    if not targets:
        raise UserError(f"--boxes {path}: no target in it (one x1,y1,x2,y2[@frame] a line)")
    return targets


def parse_targets(specs, box_format: str, frame_size) -> list[Target]:
    targets = []
    for number, (where, spec) in enumerate(specs, 1):
        try:
            targets.append(Target(number, *parse_target(spec, box_format, frame_size)))
        except UserError as error:
            raise UserError(f"{where}: {error}" if where else str(error)) from None
    return targets


# -----------------------------------------------------------------------------


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--demo", action="store_true", help="offline demo: track synthetic clips with the "
                        "bundled demo_model/ (or --model), print their AO, write tracked.mp4")
    parser.add_argument("--video", help="a video file, a folder of frames, a glob such as 'frames/*.jpg', a stream "
                        "URL (rtsp://, http://, ...) or a camera (/dev/video0, or its index)")
    parser.add_argument("--box", action="append", help="a target in the first frame, in frame pixels: x1,y1,x2,y2 "
                        "(or x,y,w,h with --box-format xywh); x1,y1,x2,y2@N: it appears at frame N. Repeat for "
                        "several targets")
    parser.add_argument("--boxes", help="a file of targets, one a line, each as --box takes it")
    parser.add_argument("--box-format", choices=["xyxy", "xywh"], default="xyxy",
                        help="how --box is written (default: xyxy; xywh as in GOT-10k files)")
    parser.add_argument("--text", help="find the target from a description in the first frame instead of --box, "
                        "with the model's own grounding (local model only)")
    parser.add_argument("--model", default=None, help=f"hub id or folder of the model (default: "
                        f"{DEFAULT_MODEL}; with --demo, demo_model/)")
    parser.add_argument("--server", help="an OpenAI-compatible server URL (e.g. vLLM) to ask instead of a local model")
    parser.add_argument("--server-model", help="the model name the server serves (default: its first model); "
                        "also where the tracking settings are read from, unless --settings says")
    add_settings_args(parser)
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                        help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--recover", action="store_true", help="after a failed answer, or one whose confidence is "
                        "below --lost-below, keep the box and widen the search region until the target is found "
                        "again (not part of the published loop)")
    parser.add_argument("--lost-below", type=float, help="a frame whose answer's confidence is below this counts "
                        "the target as lost (default: the threshold fitted to the model, saved in its tracking settings "
                        f"by eval_got10k.py --fit-lost-below; {r1track.LOST_BELOW} for a model without one)")
    parser.add_argument("--realtime", action="store_true", help="track a live source as it comes: always the newest "
                        "frame, dropping those the model cannot keep up with (files are played at their own pace)")
    parser.add_argument("--out", help="output folder (default: runs/track-<video name>, or runs/demo)")
    parser.add_argument("--fps", type=float, help="frame rate of tracked.mp4 (default: the video's, or 30)")
    parser.add_argument("--no-video", action="store_true", help="skip writing tracked.mp4")
    return parser


def load_tracker(args, first_frame):
    """The tracker and the first box found by --text (None without --text)."""
    tracker, loaded = r1track.tracker_from_args(args, args.device, name=f"R1-Track[{Path(args.model).name}]",
                                                lost_below=args.lost_below)
    print(f"tracking settings: {tracker.settings.describe()}")
    if args.lost_below is None and tracker.settings.lost_below is None:
        print(f"note: no lost threshold fitted to this model (eval_got10k.py --fit-lost-below): a frame counts as lost "
              f"below confidence {tracker.lost_below}", file=sys.stderr)
    box = None
    if args.text:
        box = r1track.locate_text(*loaded, first_frame, args.text)
        if box is None:
            raise UserError(f"the model could not find {args.text!r} in the first frame; give --box instead")
    return tracker, box


def check_args(args):
    """Everything that can be refused before a frame is read or a model loaded."""
    if not args.video:
        raise UserError("--video is required")
    given = (args.box is not None) + (args.boxes is not None) + (args.text is not None)
    if given != 1:
        raise UserError("give the target(s) with --box, --boxes or --text (one of them)")
    if args.text and args.server:
        raise UserError("--text needs a local model; with --server give --box")
    if args.lost_below is not None and not 0 <= args.lost_below <= 1:
        raise UserError("--lost-below is a confidence, between 0 and 1")


def track(args) -> int:
    args.model = args.model or DEFAULT_MODEL
    check_args(args)
    specs = [(None, box) for box in args.box or []] or (read_box_file(args.boxes) if args.boxes else [])
    # the frames are opened before the model loads: torch still holds every core, and with the
    # model on the CPU one reader is left (as leave_a_core_for_reading will leave it one core)
    model_on_cpu = not args.server and str(args.device or r1track.default_device()).startswith("cpu")
    first, frames, total, fps, live = open_frames(args.video, args.fps, args.realtime,
                                                  readers=frame_readers(model_on_cpu, most=2))
    size = (first.shape[1], first.shape[0])
    targets = parse_targets(specs, args.box_format, size)
    out = Path(args.out or f"runs/track-{Path(args.video.rstrip('/')).stem.strip('*') or 'frames'}")
    out.mkdir(parents=True, exist_ok=True)

    tracker, found = load_tracker(args, first)
    if found is not None:
        targets = [Target(1, found, 0)]
    tracked = video_tracking.track_video(first, frames, total, fps, targets, tracker, out, video=not args.no_video,
                                         live=live, realtime=args.realtime)
    summarise(targets, tracked.times, len(tracked.undecodable), out, live, tracked.latencies)
    if tracked.interrupted:
        print("interrupted: the frames tracked so far are saved")
        return 130
    return 0


def summarise(targets, times, decode_failures, out, live, latencies):
    tracked = [t for t in times if t > 0]  # the frames the model was asked about
    fps_measured = f"{len(tracked) / sum(tracked):.2f} FPS" if tracked else "no frame tracked"
    print(f"{len(times)} frames read, {fps_measured}, {decode_failures} undecodable frames -> {out}")
    for target in targets:
        if not target.frames:
            print(f"target {target.number}: never started (its frame {target.first_frame + 1} did not come)")
            continue
        t = target.tracker
        edge = f", {t.edge_holds} boxes held at the frame edge" if t.settings.loop == "published" else ""
        name = f"target {target.number}: " if len(targets) > 1 else ""
        print(f"{name}{len(target.boxes)} frames, {t.fallbacks} fallbacks (unusable answers: the previous one "
              f"reused){edge}, {sum(target.lost)} frames lost (confidence below {t.lost_below})")
    if live:
        median = f"{1000 * sorted(latencies)[len(latencies) // 2]:.0f} ms" if latencies else "-"
        print(f"realtime: {len(times)} frames tracked, {live.dropped} dropped (the model could not keep up), "
              f"latency {median} (median, from a frame's arrival to its boxes)")


# -----------------------------------------------------------------------------
# The offline demo


def demo(args) -> int:
    """Synthetic clips -> the batched tracker -> the official score -> tracked.mp4."""
    if args.video or args.box or args.text or args.server:
        raise UserError("--demo makes its own clips and uses a local model: leave out --video, --box, --text, --server")
    if args.model is None and not (DEMO_MODEL / "config.json").is_file():
        raise UserError(f"no demo model in {DEMO_MODEL}: run `python tools/make_demo_model.py` to make it")
    args.model = args.model or str(DEMO_MODEL)
    out = Path(args.out or "runs/demo")
    clips = synthetic.make_synthetic_got10k(out / "clips", **DEMO_CLIPS)
    sequences = GOT10K.sequences(clips.parent, clips.name)
    names = [sequence["name"] for sequence in sequences]
    print(f"{len(names)} synthetic clips of {DEMO_CLIPS['frames']} frames in {clips}, never seen in training")

    tracker, _ = load_tracker(args, None)
    results = out / "results"
    track_sequences(tracker, GOT10K, sequences, results, batch=len(names))
    report = GOT10K.score(results, sequences)
    got10k.print_reports({"demo": report})
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    got10k.plot_success({Path(args.model).name: report}, out / "success_plot.png")
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
    tracked = got10k.read_boxes(got10k.result_files(results, name)[0], len(sequence["frames"]))
    tracker = copy.copy(tracker)
    tracker.init(read_frame(sequence["frames"][0]), sequence["boxes_xywh"][0])
    tracker.move_to(tracked[frame_index - 1])  # where the tracker stood before this frame
    request = tracker.request(read_frame(sequence["frames"][frame_index]))
    answer = tracker.answerer([request])[0].text
    side = 224
    s = tracker.settings
    text = question_text(request.template_box_xyxy, s.think, s.wording, s.asks_as_client, s.boxes,
                         image_side(request.template))
    lines = ["", ""] + textwrap.wrap(text.replace("\n", " "), 76) + [
        "", f"answer: {answer.strip()}"]
    canvas = Image.new("RGB", (2 * side + 24, side + 24 + 14 * len(lines)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for column, (crop, box_xyxy, colour) in enumerate(
            [(request.template, request.template_box_xyxy, (255, 255, 255)),
             (request.search, answer_box(answer, s.crop_size, s.boxes, think=s.think), (0, 255, 0))]):
        crop = as_pil(crop)
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
        tracked = got10k.read_boxes(got10k.result_files(results, name)[0], len(sequence["frames"]))
        for index, (frame, truth_xywh) in enumerate(zip(sequence["frames"], sequence["boxes_xywh"])):
            image = draw_box(read_frame(frame), tracked[index], index)
            x, y, w, h = truth_xywh
            ImageDraw.Draw(image).rectangle([x, y, x + w, y + h], outline=(255, 255, 255), width=1)
            ImageDraw.Draw(image).text((6, image.height - 14), name, fill=(255, 255, 0))
            writer = writer or VideoWriter(path, image.size, fps)
            writer.write(image)
    writer.close()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return script_main(demo if args.demo else track, args)


if __name__ == "__main__":
    sys.exit(main())
