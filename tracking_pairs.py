"""A training pair, and the tracking sets pairs are cut from on the fly: GOT-10k, LaSOT,
TrackingNet and COCO, each read from its own layout (the benchmarks' readers reused), with
the published jitter or as the tracker asks, with or without a memory crop.

A pair is (template crop, template box, search crop, answer box), boxes in crop pixels: what
`prompts.build_inputs` turns into a question and its answer (pair_inputs).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from benchmarks.got10k import read_got10k_sequence, read_got10k_split
from benchmarks.lasot import (
    LASOT_CLASSES,
    LASOT_TEST_SET,
    lasot_folders,
    read_lasot_sequence,
)
from benchmarks.results import read_box_rows
from boxes import clamp_box_xyxy, crop_around, jpeg_round_trip
from cli import UserError, first_line
from frames import read_frame
from prompts import build_inputs
from settings import TrackSettings


class Pair(NamedTuple):
    """One training example, boxes in crop pixels (the answer: the target in the search crop)."""

    template: Image.Image | np.ndarray  # PIL, or the RGB array of a JPEG round trip (the published way)
    template_box_xyxy: list
    search: Image.Image | np.ndarray
    search_box_xyxy: list
    jpegs: tuple | None = None  # the crops' JPEG bytes in the order of images(), when cut the published way
    memory: Image.Image | np.ndarray | None = None  # a crop of a recent frame, cut as the template is
    memory_box_xyxy: list | None = None  # the target's box there, as the tracker answered it

    def images(self) -> tuple:
        """The crops in the order the question shows them: template, (memory,) search."""
        return (self.template, self.search) if self.memory is None else (self.template, self.memory, self.search)


def pair_inputs(processor, pair: Pair, **options) -> dict:
    """The model inputs of a pair's question (prompts.build_inputs; `options` are its own):
    two images, or three with a memory crop."""
    return build_inputs(processor, pair.template, pair.search, pair.template_box_xyxy, memory_img=pair.memory,
                        memory_box_xyxy=pair.memory_box_xyxy, **options)


class BadRow(ValueError):
    """A data row that cannot be used (bad image, no box, unparsable answer)."""



class NumberedFrames:
    """A sequence's frame files named by their number (LaSOT's img/00000001.jpg, TrackingNet's
    frames/<seq>/0.jpg), each path made when it is read: LaSOT's training set alone holds 2.8
    million frames, too many to list at the start of every run."""

    def __init__(self, pattern: str, first: int, count: int):
        self.pattern, self.first, self.count = pattern, first, count

    def __len__(self):
        return self.count

    def __getitem__(self, index: int) -> Path:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return Path(self.pattern.format(self.first + index))


def visible_frames(boxes_xywh, frame_count: int, *hidden) -> list:
    """The frames where the target can be seen: a box with an area, no flag in `hidden` (per
    frame, true where it is hidden) set, a frame file for it."""
    visible = (boxes_xywh[:, 2] > 0) & (boxes_xywh[:, 3] > 0)
    for flags in hidden:
        visible &= ~np.asarray(flags, bool)
    return [int(i) for i in np.nonzero(visible)[0] if i < frame_count]


class SequencePairs:
    """Pairs sampled on the fly from tracking sequences, as R1-Track-5k/100k were made from
    GOT-10k: two frames of one sequence where the target is visible, each cropped around its
    own box with a factor ~ U(2, 8) and a centre shift ~ U(-0.2, 0.2) x side; boxes truncated
    to integers. Unlike the published data, a box is first clamped into its crop: an answer
    outside the image is not one the model can see. Each `load(index, rng)` is a fresh pair
    of sequence `index`, reproducible from `rng`. loop="published" cuts the crops as the
    published data was cut (OpenCV, then stored as JPEG quality 95); "lenient" cuts them as
    that loop does. A still image (COCO) is a sequence of one frame: its two crops are cut
    from it with different jitter.

    tracking_share: the share of pairs cut the way the tracker asks instead: both crops with
    the tracking factor, the template centred on its box, the search around a slightly wrong
    box (the last frame's answer, off by up to a quarter of the target's size and 15% in
    scale). Not how the published data was made; it teaches the small step every frame
    needs, which a small model learns much sooner than the published jitter's big jumps.

    memory: each pair also has a memory crop (Pair.memory; see _memory_crop), a triple.

    `sequences`: (frames, boxes_xywh, visible frame indices) each; `reasons`: why each
    sequence of the set left out could not be used."""

    unit = "sequences"

    def __init__(self, name: str, sequences: list, reasons: list, crop_size: int, tracking_share: float = 0.0,
                 loop="published", memory=False):
        self.name, self.sequences, self.reasons, self.skipped = name, sequences, reasons, len(reasons)
        self.crop_size, self.tracking_share, self.loop, self.memory = crop_size, tracking_share, loop, memory

    def __len__(self):
        return len(self.sequences)

    def sequence(self, index: int):
        return self.sequences[index]

    def load(self, index: int, rng) -> Pair:
        frames, boxes, visible = self.sequence(index)
        picks = rng.choice(visible, size=2, replace=len(visible) < 2)
        like_tracking = self.tracking_share > 0 and rng.random() < self.tracking_share
        read = functools.partial(_read_once, frames, {})  # a still image (COCO) is decoded once for its crops
        crops = []
        for role, frame in enumerate(picks):  # 0: template, 1: search
            image = read(frame)
            if not like_tracking:
                factor, shift = rng.uniform(2, 8), rng.uniform(-0.2, 0.2, size=2)
            elif role == 0:
                factor, shift = TrackSettings.template_factor, np.zeros(2)
            else:  # a shift of 1/16 of the side is a quarter of the target's size at factor 4
                factor = TrackSettings.search_factor * math.exp(rng.uniform(-0.15, 0.15))
                shift = rng.uniform(-1 / 16, 1 / 16, size=2)
            crop, box_xyxy, _, _ = crop_around(image, boxes[frame], factor, self.crop_size, shift_xy=shift,
                                               loop=self.loop)
            crops.append((crop, [float(int(v)) for v in clamp_box_xyxy(box_xyxy, self.crop_size)]))
        (template, template_box), (search, search_box) = crops
        if not (search_box[2] > search_box[0] and search_box[3] > search_box[1]):
            raise BadRow("the target has no area in the search crop")
        memory, memory_box = self._memory_crop(read, boxes, visible, picks, rng) if self.memory else (None, None)
        if self.loop != "published":
            return Pair(Image.fromarray(template), template_box, Image.fromarray(search), search_box,
                        memory=None if memory is None else Image.fromarray(memory), memory_box_xyxy=memory_box)
        (template, template_jpeg), (search, search_jpeg) = jpeg_round_trip(template), jpeg_round_trip(search)
        if memory is None:
            return Pair(template, template_box, search, search_box, jpegs=(template_jpeg, search_jpeg))
        memory, memory_jpeg = jpeg_round_trip(memory)
        return Pair(template, template_box, search, search_box, jpegs=(template_jpeg, memory_jpeg, search_jpeg),
                    memory=memory, memory_box_xyxy=memory_box)

    def _memory_crop(self, read, boxes, visible, picks, rng):
        """(crop, box_xyxy): the target's recent look as a tracker keeps it: a visible frame at
        most MEMORY_GAP frames before the search frame (the template's frame where there is
        none, as a tracker starts), cut with the template's factor around a slightly wrong box,
        as the tracker's own answer there would be (off by up to an eighth of the target's size,
        10% in scale); the box given is that answer."""
        template_frame, search_frame = picks
        recent = [f for f in visible if search_frame - MEMORY_GAP <= f < search_frame]
        frame = int(rng.choice(recent)) if recent else int(template_frame)
        x, y, w, h = boxes[frame]
        scale = math.exp(rng.uniform(-0.1, 0.1))
        dx, dy = rng.uniform(-1 / 8, 1 / 8, size=2) * (w, h)
        answer_xywh = [x + dx + w * (1 - scale) / 2, y + dy + h * (1 - scale) / 2, w * scale, h * scale]
        crop, box_xyxy, _, _ = crop_around(read(frame), answer_xywh, TrackSettings.template_factor, self.crop_size,
                                           loop=self.loop)
        return crop, [float(int(v)) for v in clamp_box_xyxy(box_xyxy, self.crop_size)]


# How recent a memory frame is when training: at most this many frames before the search frame
MEMORY_GAP = 10


def _read_once(frames, decoded: dict, frame: int):
    """Frame `frame` of a sequence, decoded once per pair (`decoded` holds those of this pair);
    an unreadable frame is a BadRow."""
    if frame not in decoded:
        try:
            decoded[frame] = read_frame(frames[frame])
        except UserError as error:
            raise BadRow(str(error)) from None
    return decoded[frame]


def _readable(readers) -> tuple[list, list]:
    """(the sequences read, why each of the others could not be): each reader returns a
    sequence tuple, or None where its boxes and frames disagree, or raises OSError/ValueError."""
    read, reasons = [], []
    for reader in readers:
        try:
            sequence = reader()
        except (OSError, ValueError) as error:
            reasons.append(first_line(error))
            continue
        if sequence is None:
            reasons.append(f"{reader.args[0]}: as many boxes as frames expected")
        elif not sequence[2]:
            reasons.append(f"{reader.args[0]}: the target is visible in no frame")
        else:
            read.append(sequence)
    return read, reasons


class Got10kPairs(SequencePairs):
    """A GOT-10k-layout split folder (list.txt): its sequences' frames where the target is
    visible (cover above 0 and not absent where those labels exist)."""

    def __init__(self, split_dir, crop_size: int, tracking_share: float = 0.0, loop="published", memory=False):
        split_dir = Path(split_dir)

        def read(name):
            sequence = read_got10k_sequence(split_dir / name)
            frames, boxes = sequence["frames"], sequence["boxes_xywh"]
            if len(boxes) != len(frames):
                return None
            hidden = [sequence["cover"] <= 0] if len(sequence.get("cover", ())) == len(boxes) else []
            if len(sequence.get("absence", ())) == len(boxes):
                hidden.append(sequence["absence"] != 0)
            return frames, boxes, visible_frames(boxes, len(frames), *hidden)

        sequences, reasons = _readable(functools.partial(read, name) for name in read_got10k_split(split_dir))
        super().__init__(str(split_dir), sequences, reasons, crop_size, tracking_share, loop, memory)


class LasotPairs(SequencePairs):
    """LaSOT's training set: every <class>/<class>-<n> sequence under `root` except the 280 of
    its test set (and any listed in a testing_set.txt there), the frames neither fully
    occluded nor out of view."""

    def __init__(self, root, crop_size: int, tracking_share: float = 0.0, loop="published", memory=False):
        root = _folder(root, "LaSOT")
        found = lasot_folders(root)
        if not found:
            raise UserError(f"{root} does not hold LaSOT: no <class>/<class>-<n>/groundtruth.txt")
        listed = root / "testing_set.txt"
        test = LASOT_TEST_SET | (set(listed.read_text().split()) if listed.is_file() else set())
        folders = [folder for folder in found if folder.name not in test]
        if not folders:
            raise UserError(f"{root}: all {len(found)} LaSOT sequences found are test sequences; training takes "
                            "the other 1,120")
        # LaSOT-ext's 15 classes are another test set: a class outside LaSOT's 70 is never trained on
        others = [f"{folder.name}: not one of LaSOT's 70 classes (LaSOT-ext's are a test set)" for folder in folders
                  if folder.parent.name not in LASOT_CLASSES]
        folders = [folder for folder in folders if folder.parent.name in LASOT_CLASSES]

        def read(folder):
            sequence = read_lasot_sequence(folder)
            boxes = sequence["boxes_xywh"]
            frames = NumberedFrames(str(folder / "img" / "{:08d}.jpg"), 1, len(boxes))
            return frames, boxes, visible_frames(boxes, len(boxes), sequence["absent"])

        sequences, reasons = _readable(functools.partial(read, folder) for folder in folders)
        super().__init__(f"{root} (LaSOT train)", sequences, others + reasons, crop_size, tracking_share, loop,
                         memory)


class TrackingNetPairs(SequencePairs):
    """TrackingNet's training chunks: TRAIN_<k>/anno/<seq>.txt (a box a frame) and
    TRAIN_<k>/frames/<seq>/0.jpg, 1.jpg ..."""

    def __init__(self, root, crop_size: int, tracking_share: float = 0.0, loop="published", memory=False):
        root = _folder(root, "TrackingNet")
        chunks = sorted((p for p in root.glob("TRAIN_*") if p.is_dir()), key=lambda p: p.name)
        if not chunks:
            raise UserError(f"{root} does not hold TrackingNet's training set: no TRAIN_0 ... TRAIN_11 folder")
        for chunk in chunks:
            for part in ("anno", "frames"):
                if not (chunk / part).is_dir():
                    raise UserError(f"{chunk} is not a TrackingNet chunk: no {part}/ folder")

        def read(file):
            boxes = read_box_rows(file)
            frames = NumberedFrames(str(file.parent.parent / "frames" / file.stem / "{}.jpg"), 0, len(boxes))
            return frames, boxes, visible_frames(boxes, len(boxes))

        files = [file for chunk in chunks for file in sorted((chunk / "anno").glob("*.txt"))]
        sequences, reasons = _readable(functools.partial(read, file) for file in files)
        super().__init__(f"{root} (TrackingNet train)", sequences, reasons, crop_size, tracking_share, loop,
                         memory)


class CocoPairs(SequencePairs):
    """COCO 2017's training instances (annotations/instances_train2017.json, the images in
    train2017/ or images/train2017/): each object not marked a crowd is a sequence of one
    image, its template and search cut from that image with different jitter (as pytracking
    trains on still images). Kept as arrays, not a tuple per object: there are 860,000."""

    unit = "objects"

    def __init__(self, root, crop_size: int, tracking_share: float = 0.0, loop="published", memory=False):
        root = _folder(root, "COCO")
        annotations = root / "annotations" / "instances_train2017.json"
        if not annotations.is_file():
            raise UserError(f"{root} does not hold COCO 2017: no annotations/instances_train2017.json")
        images_dir = next((d for d in (root / "train2017", root / "images" / "train2017") if d.is_dir()), None)
        if images_dir is None:
            raise UserError(f"{root} does not hold COCO 2017's images: no train2017/ (or images/train2017/) folder")
        try:
            coco = json.loads(annotations.read_text())
            self.images = [str(images_dir / image["file_name"]) for image in coco["images"]]
            row_of = {image["id"]: row for row, image in enumerate(coco["images"])}
            objects = [(row_of.get(a["image_id"]), a["bbox"], a.get("iscrowd")) for a in coco["annotations"]]
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{annotations}: not a COCO instances file ({first_line(error)})") from None
        usable, reasons = [], []
        for row, box, crowd in objects:
            box = _number_box(box)
            if crowd:
                reasons.append("a crowd region (iscrowd), not one object")
            elif row is None:
                reasons.append("an object of an image not listed")
            elif box is None or not (box[2] > 0 and box[3] > 0):
                reasons.append(f"an object of no area or no box: {box}")
            else:
                usable.append((row, *box))
        self.image_rows = np.array([o[0] for o in usable], np.int64)
        self.boxes_xywh = np.array([o[1:] for o in usable], np.float64).reshape(-1, 4)
        super().__init__(f"{root} (COCO train2017)", [], reasons, crop_size, tracking_share, loop, memory)

    def __len__(self):
        return len(self.boxes_xywh)

    def sequence(self, index: int):
        return [self.images[self.image_rows[index]]], self.boxes_xywh[index:index + 1], [0]


def _number_box(box):
    """A COCO bbox as four floats, or None when it is not four numbers."""
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        return None
    return values if len(values) == 4 and all(math.isfinite(v) for v in values) else None


def _folder(root, title: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (for {title})")
    return root


# What `--data KIND:PATH` reads
SET_READERS = {"got10k": Got10kPairs, "lasot": LasotPairs, "trackingnet": TrackingNetPairs, "coco": CocoPairs}



def set_of(spec: str) -> tuple:
    """(KIND, FOLDER) of a KIND:FOLDER data spec (SET_READERS), or (None, spec)."""
    kind, _, rest = spec.partition(":")
    return (kind, rest) if kind in SET_READERS and rest else (None, spec)
