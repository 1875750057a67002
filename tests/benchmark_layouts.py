"""The synthetic clips of synthetic.make_synthetic_got10k in the official layouts of the other
tracking benchmarks: LaSOT (and its extension), TrackingNet, OTB-100, UAV123, NfS (30 fps) and
TNL2K, for the tests of their readers and scores. Each layout is what the real dataset ships,
checked against the got10k toolkit's readers where it has one, so a tool that reads the real
benchmark reads these, and a test can run it in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from synthetic import make_synthetic_got10k, paste, patterned_patch, random_walk, saturated_colour

SYNTHETIC_BENCHMARKS = ("lasot", "lasot_ext", "trackingnet", "otb100", "uav123", "nfs", "tnl2k")

# Real sequence names: one per class of LaSOT's test set (the 280 of its protocol II, the
# list got10k's LaSOT reader holds), and of the extension's 15 classes (LaSOT_ext)
LASOT_TEST_NAMES = ("airplane-1", "basketball-1", "bear-2", "bicycle-2", "bird-2", "boat-3", "book-3", "bottle-1",
                    "bus-2", "car-2", "cat-1", "cattle-2", "coin-3", "crab-3", "cup-1", "deer-4", "dog-1", "guitar-3")
LASOT_EXT_NAMES = ("atv-1", "badminton-1", "cosplay-1", "dancingshoe-1", "footbag-1", "frisbee-1", "jianzi-1",
                   "lantern-1", "misc-1", "opossum-1", "paddle-1", "raccoon-1", "rhino-1", "skatingshoe-1",
                   "wingsuit-1")
# OTB-100 names that the toolkits read as they are: not David, Football1, Freeman3, Freeman4
# or Diving (readers cut their frame lists), nor the two-target Skating2 and Human4
OTB_NAMES = ("Basketball", "Biker", "Bird1", "BlurBody", "BlurCar2", "BlurFace", "BlurOwl", "Bolt", "Box", "Car1",
             "Car4", "CarDark", "CarScale", "ClifBar", "Couple", "Crowds", "Deer", "DragonBaby", "Dudek", "Football")
# OTB's ground-truth files differ in separator (commas in most, tabs or spaces in others)
OTB_SEPARATORS = (",", "\t", " ")
# UAV123's configuration (got10k's uav123.json, version UAV123): a sequence is frames
# start..end of a video folder; some videos are cut in several sequences that share a frame
UAV123_SEQUENCES = {  # name: (start_frame, end_frame, folder)
    "uav6": (1, 109, "uav6"), "uav2": (1, 133, "uav2"), "uav5": (1, 139, "uav5"), "uav4": (1, 157, "uav4"),
    "person22": (1, 199, "person22"), "wakeboard7": (1, 199, "wakeboard7"), "person2_s": (1, 250, "person2_s"),
    "bird1_1": (1, 253, "bird1"), "bird1_2": (775, 1477, "bird1"), "bird1_3": (1573, 2437, "bird1"),
    "uav3": (1, 265, "uav3"), "uav8": (1, 301, "uav8"),
    "car1_1": (1, 751, "car1"), "car1_2": (751, 1627, "car1"), "car1_3": (1627, 2629, "car1"),
}
UAV123_SHORTEST = ("uav6", "uav2", "uav5", "uav4", "person22", "wakeboard7", "person2_s", "bird1_1", "uav3", "uav8")
NFS_NAMES = ("airboard_1", "basketball_1", "bee", "car_camaro", "drone", "motorcross", "airplane_landing",
             "basketball_2", "bowling_1", "cheetah", "dog_1", "footbal_skill")
# TNL2K test sequences with their frame files: TNL2K mixes PNG and JPG, and the digits of
# the names (00001.jpg in advSamp_Baseball_game_002-Done, 00000492.png in
# test_015_Sord_video_Q01_done); the others' formats here are a guess that mixes both
TNL2K_SEQUENCES = (("advSamp_Baseball_game_002-Done", "jpg", 5), ("test_015_Sord_video_Q01_done", "png", 8),
                   ("BianLian_video_03_done", "png", 5), ("Bullet_video_08_done", "jpg", 5),
                   ("Cartoon_Robot_video_Z01_done", "png", 5), ("CrashCar_video_04", "png", 5),
                   ("CartoonHuLuWa_video_04-Done", "jpg", 5))


def _synthetic_clips(folder, count, frames, size, seed, style) -> list[dict]:
    """`count` clips of make_synthetic_got10k (clip i is its i-th sequence): frame files,
    boxes as drawn (x, y, w, h floats) and cover labels."""
    split = make_synthetic_got10k(folder, "val", count, frames, size, seed, style=style)
    clips = []
    for name in (split / "list.txt").read_text().split():
        seq = split / name
        clips.append({"frames": sorted(seq.glob("*.jpg")),
                      "boxes": np.loadtxt(seq / "groundtruth.txt", delimiter=",", ndmin=2),
                      "cover": np.loadtxt(seq / "cover.label", dtype=int, ndmin=1)})
    return clips


def _pixel_boxes(boxes) -> np.ndarray:
    """Integer x, y, w, h of the pixels paste covered (its rounded corners): the boxes of
    the benchmarks whose files hold integers."""
    corners = np.round(np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]])
    return np.c_[corners[:, :2], corners[:, 2:] - corners[:, :2]].astype(int)


def _outside(boxes, size) -> np.ndarray:
    """Per frame: the integer box lies wholly outside the image (the target left the view)."""
    width, height = size
    x, y, w, h = boxes.T
    return (x + w <= 0) | (y + h <= 0) | (x >= width) | (y >= height)


def _clipped(box, size):
    x, y, w, h = (int(v) for v in box)
    return max(x, 0), max(y, 0), min(x + w, size[0]), min(y + h, size[1])


def _place_frames(sources, targets, images):
    """The clip's frames under their benchmark names: a copy (JPEG) or a lossless
    conversion of the decoded JPEG (PNG); images="empty" writes zero-byte files with those
    names and images=False only the folders, for tests that never open a frame."""
    import shutil

    for source, target in zip(sources, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        if images == "empty":
            target.touch()
        elif images and target.suffix == ".jpg":
            shutil.copyfile(source, target)
        elif images:
            Image.open(source).convert("RGB").save(target)


def _rows(boxes, separator=",") -> str:
    return "".join(separator.join(str(v) for v in box) + "\n" for box in boxes)


# PIL's HSV hue (0-255) where each colour name ends
_HUE_NAMES = ((11, "red"), (32, "orange"), (53, "yellow"), (106, "green"), (149, "cyan"), (181, "blue"),
              (202, "purple"), (245, "pink"), (256, "red"))


def _colour_names(pixels: np.ndarray) -> list[str]:
    """The one or two colours that cover most of these RGB pixels, by name."""
    hsv = np.asarray(Image.fromarray(pixels.astype(np.uint8)).convert("HSV"), int).reshape(-1, 3)
    names = []
    for hue, saturation, value in hsv:
        if saturation < 80:  # no clear hue: a shade of grey
            names.append("black" if value < 60 else "white" if value > 200 else "grey")
        else:
            names.append(next(name for end, name in _HUE_NAMES if hue < end))
    counts = {name: names.count(name) for name in set(names)}
    ranked = sorted(counts, key=lambda name: (-counts[name], name))
    return [name for name in ranked[:2] if counts[name] >= 0.1 * len(names)]


def _describe_target(frame_path, box, style) -> str:
    """One sentence about the target, as LaSOT's nlp.txt and TNL2K's language.txt give: its
    colours read from the first frame's pixels inside its box."""
    frame = np.asarray(Image.open(frame_path).convert("RGB"))
    x1, y1, x2, y2 = _clipped(box, (frame.shape[1], frame.shape[0]))
    if x2 - x1 > 4 and y2 - y1 > 4:  # leave out the edge, where JPEG blends it with the background
        x1, y1, x2, y2 = x1 + 1, y1 + 1, x2 - 1, y2 - 1
    colours = _colour_names(frame[y1:y2, x1:x2]) if x2 > x1 and y2 > y1 else []
    target = " and ".join(colours) + " patterned box" if colours else "patterned box"
    return f"a {target} moving on a {'grey' if style == 'plain' else 'textured'} background"


def _erase_target(frame_path, box, rng):
    """Paint the background over the target in one frame, so that the frame really shows no
    target: the median colour of a ring around the box, with the generator's pixel noise."""
    frame = np.asarray(Image.open(frame_path).convert("RGB"), np.float32).copy()
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = _clipped(box, (width, height))
    x1, y1, x2, y2 = max(x1 - 1, 0), max(y1 - 1, 0), min(x2 + 1, width), min(y2 + 1, height)  # JPEG's blur too
    ring = np.zeros((height, width), bool)
    ring[max(y1 - 3, 0):y2 + 3, max(x1 - 3, 0):x2 + 3] = True
    ring[y1:y2, x1:x2] = False
    colour = np.median(frame[ring], axis=0) if ring.any() else frame.reshape(-1, 3).mean(axis=0)
    frame[y1:y2, x1:x2] = colour + rng.normal(0, 4, size=(y2 - y1, x2 - x1, 3))
    Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(frame_path, quality=92)


def _write_lasot(root, tmp, names, frames, size, seed, style, images):
    """root/<class>/<class>-<k>/img/00000001.jpg ..., groundtruth.txt (integer x,y,w,h rows),
    full_occlusion.txt and out_of_view.txt (one line of 0/1 flags, one per frame), nlp.txt.

    A frame is out of view when the target's box lies wholly outside the image, fully
    occluded when the target is not visible (cover 0) inside it. When no clip has an
    out-of-view frame, the target is erased from the last frame of the last clip that has a
    frame after the first (and flagged out of view), so that every layout has one. LaSOT keeps
    a box in such frames that means nothing (its authors: 'assigned a random box'); here it
    is where the target was drawn."""
    for name in names:
        if "-" not in name:
            raise ValueError(f"LaSOT sequence names are <class>-<k>, not {name!r}")
    clips = _synthetic_clips(tmp, len(names), frames, size, seed, style)
    boxes = [_pixel_boxes(clip["boxes"]) for clip in clips]
    out_of_view = [_outside(b, size) for b in boxes]
    full_occlusion = [(clip["cover"] == 0) & ~out for clip, out in zip(clips, out_of_view)]
    if not any(out.any() for out in out_of_view):
        for index in reversed(range(len(clips))):
            visible = np.nonzero(clips[index]["cover"][1:] > 0)[0]  # never the first frame: it shows the target
            if len(visible):
                t = visible[-1] + 1
                _erase_target(clips[index]["frames"][t], boxes[index][t], np.random.default_rng([seed, 9, index]))
                out_of_view[index][t] = True
                break
    for name, clip, box, occluded, out in zip(names, clips, boxes, full_occlusion, out_of_view):
        seq = root / name[:name.rfind("-")] / name
        (seq / "img").mkdir(parents=True, exist_ok=True)
        _place_frames(clip["frames"], [seq / "img" / f"{t + 1:08d}.jpg" for t in range(len(box))], images)
        (seq / "groundtruth.txt").write_text(_rows(box))
        (seq / "full_occlusion.txt").write_text(",".join(str(int(v)) for v in occluded) + "\n")
        (seq / "out_of_view.txt").write_text(",".join(str(int(v)) for v in out) + "\n")
        (seq / "nlp.txt").write_text(_describe_target(clip["frames"][0], box[0], style) + "\n")


def _trackingnet_names(count, seed) -> list[str]:
    """Names like TrackingNet's: an 11-character YouTube id, then _<n>."""
    rng = np.random.default_rng([seed, 11])
    alphabet = list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    names = []
    while len(names) < count:
        name = "".join(rng.choice(alphabet, 11)) + f"_{int(rng.integers(0, 10))}"
        if name not in names:
            names.append(name)
    return names


def _write_trackingnet(root, tmp, names, frames, size, seed, style, images):
    """root/TEST/anno/<seq>.txt (the first box only: x,y,w,h) and root/TEST/frames/<seq>/0.jpg,
    1.jpg ... (0-based, no padding); root/TRAIN_0 the same for as many more clips (the
    train chunks annotate every frame). Boxes keep the generator's decimals."""
    clips = _synthetic_clips(tmp, 2 * len(names), frames, size, seed, style)
    train_names = [n for n in _trackingnet_names(3 * len(names), seed + 1) if n not in names][:len(names)]
    for chunk, chunk_names, chunk_clips in (("TEST", names, clips[:len(names)]),
                                            ("TRAIN_0", train_names, clips[len(names):])):
        (root / chunk / "anno").mkdir(parents=True, exist_ok=True)
        for name, clip in zip(chunk_names, chunk_clips):
            rows = [[f"{v:.4f}" for v in box] for box in clip["boxes"]]
            (root / chunk / "anno" / f"{name}.txt").write_text(_rows(rows[:1] if chunk == "TEST" else rows))
            frames_dir = root / chunk / "frames" / name
            frames_dir.mkdir(parents=True, exist_ok=True)
            _place_frames(clip["frames"], [frames_dir / f"{t}.jpg" for t in range(len(rows))], images)


def _second_target(rng, first_box, frames, size) -> np.ndarray:
    """Integer boxes of a second object the size of the target's first box, walking inside
    the image."""
    width, height = size
    w, h = max(int(first_box[2]), 2), max(int(first_box[3]), 2)
    high = (max(width - w, 0), max(height - h, 0))
    start = rng.uniform((0, 0), high)
    path = np.round(random_walk(rng, frames, start, (0, 0), high, 1.5)).astype(int)
    path[0] = np.round(start)
    return np.c_[path, np.full(frames, w), np.full(frames, h)]


def _draw_second_target(frame_paths, target_boxes, second_boxes, patch, size):
    """Paste the second object into the clip's frames, behind the target (the target's
    pixels stay as they were)."""
    for path, target, second in zip(frame_paths, target_boxes, second_boxes):
        original = np.asarray(Image.open(path).convert("RGB"), np.float32)
        frame = original.copy()
        paste(frame, patch, second)
        x1, y1, x2, y2 = _clipped(target, size)
        frame[y1:y2, x1:x2] = original[y1:y2, x1:x2]
        # a second JPEG encoding: full-resolution colour and a high quality keep the
        # target's pixels close to the clip's where the two objects share JPEG blocks
        Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(path, quality=97, subsampling=0)


def _write_otb(root, tmp, names, frames, size, seed, style, images):
    """root/<Name>/img/0001.jpg ... and root/<Name>/groundtruth_rect.txt (integer x,y,w,h),
    separated by commas, tabs or spaces in turn. Jogging has two targets, as in OTB:
    groundtruth_rect.1.txt (the clip's target) and groundtruth_rect.2.txt, a second patterned
    object drawn into the same frames (behind the first, so the first's pixels and boxes
    stay those of the clip)."""
    clips = _synthetic_clips(tmp, len(names), frames, size, seed, style)
    for index, (name, clip) in enumerate(zip(names, clips)):
        separator = OTB_SEPARATORS[index % len(OTB_SEPARATORS)]
        seq = root / name
        (seq / "img").mkdir(parents=True, exist_ok=True)
        boxes = _pixel_boxes(clip["boxes"])
        if name == "Jogging":
            rng = np.random.default_rng([seed, 2, index])
            second = _second_target(rng, boxes[0], len(boxes), size)
            patch = patterned_patch(rng, np.array([saturated_colour(rng), saturated_colour(rng)]))
            _draw_second_target(clip["frames"], boxes, second, patch, size)
            (seq / "groundtruth_rect.1.txt").write_text(_rows(boxes, separator))
            (seq / "groundtruth_rect.2.txt").write_text(_rows(second, separator))
        else:
            (seq / "groundtruth_rect.txt").write_text(_rows(boxes, separator))
        _place_frames(clip["frames"], [seq / "img" / f"{t + 1:04d}.jpg" for t in range(len(boxes))], images)


def _write_uav123(root, tmp, names, frames, size, seed, style, images):
    """root/anno/UAV123/<seq>.txt (integer x,y,w,h; NaN,NaN,NaN,NaN where the target is not
    visible) and root/data_seq/UAV123/<folder>/000001.jpg ...

    A sequence's frames are the range UAV123's configuration gives it, so its length comes
    with its name and `frames` is not used. Each video folder is one clip, over the frames
    its sequences span (the k-th folder, in the order of `names`, is make_synthetic_got10k's
    single clip of seed + k), and each sequence is its window of that clip."""
    unknown = [name for name in names if name not in UAV123_SEQUENCES]
    if unknown:
        raise ValueError(f"no UAV123 configuration here for {unknown}; known: {', '.join(UAV123_SEQUENCES)}")
    spans = {}
    for name in names:
        start, end, folder = UAV123_SEQUENCES[name]
        first, last = spans.get(folder, (start, end))
        spans[folder] = (min(first, start), max(last, end))
    clips = {}
    for k, (folder, (first, last)) in enumerate(spans.items()):
        clips[folder] = _synthetic_clips(tmp / folder, 1, last - first + 1, size, seed + k, style)[0]
        folder_dir = root / "data_seq" / "UAV123" / folder
        folder_dir.mkdir(parents=True, exist_ok=True)
        _place_frames(clips[folder]["frames"], [folder_dir / f"{f:06d}.jpg" for f in range(first, last + 1)], images)
    (root / "anno" / "UAV123").mkdir(parents=True, exist_ok=True)
    for name in names:
        start, end, folder = UAV123_SEQUENCES[name]
        window = slice(start - spans[folder][0], end - spans[folder][0] + 1)
        boxes, cover = _pixel_boxes(clips[folder]["boxes"][window]), clips[folder]["cover"][window]
        rows = [["NaN"] * 4 if c == 0 else box for box, c in zip(boxes, cover)]
        (root / "anno" / "UAV123" / f"{name}.txt").write_text(_rows(rows))


def _nfs_rows(boxes, cover, label="box") -> str:
    """The 240-fps annotation NfS ships next to its 30-fps frames: 8 rows per 30-fps frame,
    `track_id xmin ymin xmax ymax frame lost occluded generated "label"` (corners, not
    sizes). A 30-fps frame's own box is the first of its 8; the 7 after it move linearly
    toward the next frame's box and are marked generated (the last frame's hold still)."""
    corners = np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]].astype(float)
    rows = []
    for t in range(len(corners)):
        after = corners[min(t + 1, len(corners) - 1)]
        lost, occluded = int(cover[t] == 0), int(cover[t] < 8)
        for k in range(8):
            c = np.round(corners[t] + (after - corners[t]) * k / 8).astype(int)
            rows.append(f"1 {c[0]} {c[1]} {c[2]} {c[3]} {8 * t + k + 1} {lost} {occluded} {int(k > 0)} \"{label}\"\n")
    return "".join(rows)


def _write_nfs(root, tmp, names, frames, size, seed, style, images):
    """The 30-fps version: root/<seq>/30/<seq>/00001.jpg ... and root/<seq>/30/<seq>.txt
    holding the 240-fps annotation (8 rows per 30-fps frame)."""
    clips = _synthetic_clips(tmp, len(names), frames, size, seed, style)
    for name, clip in zip(names, clips):
        seq = root / name / "30"
        (seq / name).mkdir(parents=True, exist_ok=True)
        boxes = _pixel_boxes(clip["boxes"])
        _place_frames(clip["frames"], [seq / name / f"{t + 1:05d}.jpg" for t in range(len(boxes))], images)
        (seq / f"{name}.txt").write_text(_nfs_rows(boxes, clip["cover"]))


def _write_tnl2k(root, tmp, names, frames, size, seed, style, images):
    """root/<seq>/imgs/00001.png (or .jpg, and some with 8 digits), root/<seq>/groundtruth.txt
    (integer x,y,w,h) and root/<seq>/language.txt (one sentence about the target)."""
    formats = {name: (ext, digits) for name, ext, digits in TNL2K_SEQUENCES}
    clips = _synthetic_clips(tmp, len(names), frames, size, seed, style)
    for index, (name, clip) in enumerate(zip(names, clips)):
        ext, digits = formats.get(name, (("png", "jpg")[index % 2], 5))
        seq = root / name
        (seq / "imgs").mkdir(parents=True, exist_ok=True)
        boxes = _pixel_boxes(clip["boxes"])
        _place_frames(clip["frames"], [seq / "imgs" / f"{t + 1:0{digits}d}.{ext}" for t in range(len(boxes))], images)
        (seq / "groundtruth.txt").write_text(_rows(boxes))
        (seq / "language.txt").write_text(_describe_target(clip["frames"][0], boxes[0], style) + "\n")


_BENCHMARK_WRITERS = {"lasot": _write_lasot, "lasot_ext": _write_lasot, "trackingnet": _write_trackingnet,
                      "otb100": _write_otb, "uav123": _write_uav123, "nfs": _write_nfs, "tnl2k": _write_tnl2k}


def _default_names(benchmark, sequences, seed) -> list[str]:
    if benchmark == "trackingnet":
        return _trackingnet_names(sequences, seed)
    available = {"lasot": LASOT_TEST_NAMES, "lasot_ext": LASOT_EXT_NAMES, "otb100": OTB_NAMES,
                 "uav123": UAV123_SHORTEST, "nfs": NFS_NAMES, "tnl2k": [name for name, _, _ in TNL2K_SEQUENCES]}
    names = list(available[benchmark])
    if benchmark == "otb100" and sequences >= 3:  # the last one is Jogging, with its two targets
        names = names[:sequences - 1] + ["Jogging"]
    if sequences > len(names):
        raise ValueError(f"{benchmark}: at most {len(names)} sequences unless you pass names=")
    return names[:sequences]


def make_synthetic_benchmark(root, benchmark, sequences=3, frames=12, size=(64, 48), seed=0, style="plain",
                             images=True, names=None) -> Path:
    """Write synthetic clips in the official layout of another tracking benchmark under
    `root`, and return the dataset root a tool is given (`root` itself).

    benchmark: lasot, lasot_ext, trackingnet, otb100, uav123, nfs or tnl2k (see their
    _write_* functions for each layout). The clips are make_synthetic_got10k's (same size,
    seed and style), laid out again with their pixels and boxes: benchmark sequence i is
    clip i of make_synthetic_got10k(tmp, "val", sequences, frames, size, seed, style=style);
    TrackingNet's TRAIN_0 sequences are clips sequences..2*sequences-1 of the same call;
    UAV123, whose lengths are fixed by its configuration, ignores `frames` (see _write_uav123).
    Files that hold integers keep the rounded corners of what was drawn.
    images: True writes the frames, "empty" zero-byte files with their names, False no frame
    files at all (only the folders), for scoring tests that never open a frame.
    names: the sequence names (real ones by default; for UAV123 they choose the frame
    ranges, e.g. ["bird1_2"]); they replace `sequences`.
    """
    import tempfile

    if benchmark not in _BENCHMARK_WRITERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(SYNTHETIC_BENCHMARKS)}")
    if not (images is True or images is False or images == "empty"):
        raise ValueError(f"images must be True, False or 'empty', not {images!r}")
    names = list(names) if names is not None else _default_names(benchmark, sequences, seed)
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"sequence names must be distinct and at least one: {names}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="synthetic-clips-") as tmp:
        _BENCHMARK_WRITERS[benchmark](root, Path(tmp), names, frames, size, seed, style, images)
    return root


def make_synthetic_coco(root, images=4, objects=2, size=(64, 48), seed=0) -> Path:
    """COCO 2017's training layout under `root`: train2017/<12-digit id>.jpg and
    annotations/instances_train2017.json (images, annotations with bbox as x,y,w,h floats,
    area, iscrowd, category_id; categories). Each image is a textured background with
    `objects` patterned boxes; the first image also holds a crowd region and an object of no
    area, which a reader of training objects leaves out."""
    import json

    from synthetic import _smooth_noise

    root = Path(root)
    (root / "train2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2017])
    width, height = size
    listed, annotations = [], []
    for index in range(images):
        image_id = 1000 + 7 * index  # ids are not rows: a reader must look them up
        frame = _smooth_noise(rng, width, height, (4, 3))
        for _ in range(objects):
            w, h = rng.uniform(0.2, 0.45) * width, rng.uniform(0.2, 0.45) * height
            box = [float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h)), float(w), float(h)]
            paste(frame, patterned_patch(rng, np.array([saturated_colour(rng), saturated_colour(rng)])), box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": [round(v, 2) for v in box],
                                "area": w * h, "iscrowd": 0, "category_id": 1})
        if index == 0:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": [1.0, 1.0, 20.0, 15.0],
                                "area": 300.0, "iscrowd": 1, "category_id": 1})
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": [5.0, 5.0, 0.0, 4.0],
                                "area": 0.0, "iscrowd": 0, "category_id": 1})
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(root / "train2017" / file_name, quality=92)
        listed.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {"images": listed, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}))
    return root
