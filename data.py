"""Where training pairs come from: the GOT-10k folder layout, stored pairs (EasyR1 parquet,
LLaMA-Factory ShareGPT), pairs cut on the fly from GOT-10k sequences, and the resumable
stream that hands each rank its pairs.

A pair is (template crop, template box, search crop, answer box), boxes in crop pixels:
what `prompts.build_inputs` turns into a question and its answer.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from answers import parse_answer, parse_prompt_boxes
from benchmarks.got10k import read_got10k_sequence, read_got10k_split
from benchmarks.lasot import LASOT_CLASSES, LASOT_TEST_SET, lasot_folders, read_lasot_sequence
from benchmarks.results import read_box_rows
from boxes import JPEG_QUALITY, clamp_box_xyxy, crop_around, jpeg_round_trip
from cli import UserError, first_line
from frames import open_image, read_frame
from prompts import build_inputs, format_box_xyxy, question_text
from settings import TrackSettings

# -----------------------------------------------------------------------------
# Pair sources: stored rows (parquet, ShareGPT) and pairs cut on the fly from GOT-10k


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


class NoSplit(UserError):
    """A dataset folder without the split asked for."""


class BadRow(ValueError):
    """A data row that cannot be used (bad image, no box, unparsable answer)."""


def _row_problem(images: int, boxes: int, answer_box, memory: bool) -> str | None:
    """Why a stored row cannot be a training example (None: it can)."""
    if images == 3 and not memory:
        return "3 images: a memory row (train with --memory to use it)"
    if images not in (2, 3):
        plural = "" if images == 1 else "s"
        return f"{images} image{plural} where a pair has 2" + (" and a memory triple 3" if memory else "")
    if boxes < images - 1:
        return (f"{images} images but {boxes} box{'' if boxes == 1 else 'es'} in the question"
                if boxes else "no box in the question")
    if answer_box is None:
        return "the answer is not a box"
    return None


def _to_crop_size(image: Image.Image, box_xyxy, crop_size: int):
    """Stored pairs are square crops of any size; bring one to the training crop size."""
    if image.size == (crop_size, crop_size):
        return image, box_xyxy
    if image.width != image.height:
        raise BadRow(f"pair images must be square crops, got {image.width}x{image.height}")
    scale = crop_size / image.width
    return image.resize((crop_size, crop_size), Image.BILINEAR), [v * scale for v in box_xyxy]


class StoredPairs:
    """Pairs kept as rows: a question and an answer (checked when the rows are read) and their
    images (bytes or paths, read when a pair is loaded): two (template, search), or with
    `memory` three (template, memory crop, search) whose question names two boxes, the
    template's and the memory's. `images[row]` is the row's image sources, `counts[row]` how
    many it has; `reasons` says why each row left out was."""

    def __init__(self, texts, images, counts, crop_size: int, name: str, memory=False):
        self.crop_size, self.name, self.images, self.rows, self.reasons = crop_size, name, images, [], []
        for row, (problem, answer) in enumerate(texts):
            boxes = parse_prompt_boxes(problem or "")
            answer_box = parse_answer(answer or "")
            reason = _row_problem(counts[row], len(boxes), answer_box, memory)
            if reason:
                self.reasons.append(f"row {row}: {reason}")
            else:
                self.rows.append((row, boxes[0], answer_box, boxes[1] if counts[row] == 3 else None))
        self.skipped = len(self.reasons)
        self.triples = sum(memory_box is not None for *_, memory_box in self.rows)

    def __len__(self):
        return len(self.rows)

    def load(self, index: int, rng=None) -> Pair:
        row, template_box, answer_box, memory_box = self.rows[index]
        try:
            images = [open_image(source) for source in self.images[row]]
        except UserError as error:
            raise BadRow(str(error)) from None
        template, template_box = _to_crop_size(images[0], template_box, self.crop_size)
        search, answer_box = _to_crop_size(images[-1], answer_box, self.crop_size)
        if memory_box is None:
            return Pair(template, template_box, search, answer_box)
        memory, memory_box = _to_crop_size(images[1], memory_box, self.crop_size)
        return Pair(template, template_box, search, answer_box, memory=memory, memory_box_xyxy=memory_box)

    def stored_sides(self, rows=8) -> list[int]:
        """The sides of the template crops of the first usable rows as stored (pairs of another
        size than the training crop are resized to it; R1-Track-100k mixes 112 to 448 px)."""
        sides = set()
        for row, *_ in self.rows[:rows]:
            try:
                sides.add(open_image(self.images[row][0]).width)
            except UserError:  # an unreadable row is counted when it is loaded
                continue
        return sorted(sides)

    def split(self, fraction: float, seed: int):
        """(train, held-out) with `fraction` of the rows held out, chosen by `seed`."""
        order = np.random.default_rng(seed).permutation(len(self.rows))
        held = max(1, int(round(len(self.rows) * fraction)))
        train = StoredPairs([], self.images, [], self.crop_size, self.name)
        val = StoredPairs([], self.images, [], self.crop_size, self.name + " (held out)")
        train.rows = [self.rows[i] for i in sorted(order[held:])]
        val.rows = [self.rows[i] for i in sorted(order[:held])]
        train.reasons, train.skipped = self.reasons, self.skipped
        for part in (train, val):
            part.triples = sum(memory_box is not None for *_, memory_box in part.rows)
        return train, val


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


class MixedPairs:
    """Several pair sources mixed by weight: an epoch is as many pairs as they hold together,
    each source given slots in proportion to its weight (the stream shuffles them, so every
    epoch draws exactly those shares); a slot's pair is a random sequence (or row) of its
    source, chosen by the pair's own randomness, as pytracking samples its sets."""

    def __init__(self, sources: list, labels: list, weights: list):
        self.sources, self.labels, self.weights = sources, labels, [float(w) for w in weights]
        self.name = " + ".join(labels)
        self.skipped = sum(source.skipped for source in sources)
        size = sum(len(source) for source in sources)
        # slots by largest remainder, at least one each: the shares as near the weights as whole slots go
        exact = size * np.array(self.weights) / sum(self.weights)
        slots = np.maximum(np.floor(exact).astype(int), 1)
        for k in np.argsort(-(exact - np.floor(exact)), kind="stable")[:max(0, size - int(slots.sum()))]:
            slots[k] += 1
        self.ends = np.cumsum(slots)
        self.drawn_in_epoch = {}  # (seed, world, epoch) -> slots per source drawn by a whole epoch

    def __len__(self):
        return int(self.ends[-1])

    def source_of(self, slots):
        """The source (its number) of each slot."""
        return np.searchsorted(self.ends, slots, side="right")

    def load(self, index: int, rng) -> Pair:
        source = self.sources[int(self.source_of(index))]
        return source.load(int(rng.integers(len(source))), rng)

    def drawn(self, position: int, seed: int, world=1) -> dict:
        """{label: pairs drawn from that source by all ranks together}, each rank at `position`
        of its stream (skipped rows too: their draws were that source's)."""
        per_rank = len(self) // world
        epochs, offset = divmod(position, per_rank)
        counts = np.zeros(len(self.sources), int)
        for epoch in range(epochs + 1):
            taken = offset * world if epoch == epochs else per_rank * world
            key = (seed, world, epoch)
            if epoch < epochs and key in self.drawn_in_epoch:
                counts += self.drawn_in_epoch[key]
                continue
            drawn = np.bincount(self.source_of(epoch_order(len(self), seed, epoch)[:taken]),
                                minlength=len(self.sources))
            if epoch < epochs:
                self.drawn_in_epoch[key] = drawn
            counts += drawn
        return dict(zip(self.labels, counts.tolist()))

    def describe(self) -> list[str]:
        """A line per source: its label, what it read, its weight and share of the pairs."""
        total = len(self)
        lines = []
        for k, (label, source) in enumerate(zip(self.labels, self.sources)):
            slots = int(self.ends[k] - (self.ends[k - 1] if k else 0))
            unit = getattr(source, "unit", "rows")
            lines.append(f"  {label}: {source.name}: {len(source)} {unit} usable, {skipped_text(source)}; "
                         f"weight {self.weights[k]:g}: {slots / total:.1%} of the pairs")
        return lines


def skipped_text(source) -> str:
    """How many of a source's rows or sequences were left out, and why the first was."""
    reasons = getattr(source, "reasons", None)
    return f"{source.skipped} skipped" + (f" (the first: {reasons[0]})" if reasons else "")


def _parquet_pairs(paths, crop_size: int, name: str, memory=False) -> StoredPairs:
    """EasyR1 parquet files (`images`, `problem`, `answer`): the text read now, the images on
    demand (ParquetImages)."""
    import pyarrow.parquet as pq

    texts = []
    for path in paths:
        columns = pq.ParquetFile(path).schema_arrow.names
        missing = [name for name in ("images", "problem", "answer") if name not in columns]
        if missing:
            raise UserError(f"{path}: not in the EasyR1 layout: no {', '.join(missing)} column "
                            f"(it has {', '.join(columns) or 'none'})")
        table = pq.read_table(path, columns=["problem", "answer"])
        texts += zip(table.column("problem").to_pylist(), table.column("answer").to_pylist())
    images = ParquetImages(paths)
    return StoredPairs(texts, images, images.counts, crop_size, name, memory)


class ParquetImages:
    """The `images` column of parquet files, row by row on demand, from an uncompressed Arrow
    copy of it that the operating system pages in as needed (the way the `datasets` library
    caches a dataset): a dataset of many GB costs each rank little memory of its own, and a
    row group of any size can be read. The copy is made once, in R1TRACK_CACHE (default
    ~/.cache/r1track), and found again by the file's path, size and time."""

    def __init__(self, paths):
        import pyarrow as pa
        import pyarrow.compute as pc

        # the mapped files stay open: the column's buffers point into them
        columns = [pa.ipc.open_file(pa.memory_map(str(_arrow_copy(Path(path))), "r")).read_all().column("images")
                   for path in paths]
        self.column = pa.chunked_array([chunk for column in columns for chunk in column.chunks], type=columns[0].type)
        # the images of each row, counted without reading the images themselves
        self.counts = pc.fill_null(pc.list_value_length(self.column), 0).to_numpy(zero_copy_only=False)

    def __getitem__(self, row: int) -> tuple:
        """The row's image sources in order (template, (memory,) search): bytes or paths."""
        images = self.column[row].as_py() or []
        # {"bytes", "path"} as EasyR1 and `datasets` store an image; plain bytes or a path too
        return tuple(image.get("bytes") or image.get("path") if isinstance(image, dict) else image for image in images)


def _arrow_copy(path: Path) -> Path:
    """The Arrow copy of a parquet file's images, made under a lock (ranks share one)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("R1TRACK_CACHE") or Path.home() / ".cache" / "r1track")
    copy = cache / f"{path.stem}-{key}.arrow"
    if copy.is_file():
        return copy
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{copy.name}.lock", "w") as lock:
        _hold(lock)
        if not copy.is_file():  # another process may have made it while this one waited
            file = pq.ParquetFile(path)
            schema = pa.schema([file.schema_arrow.field("images")])
            tmp = copy.with_name(f".{copy.name}.{os.getpid()}.tmp")
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for batch in file.iter_batches(batch_size=256, columns=["images"]):
                    writer.write_batch(batch)
            os.replace(tmp, copy)
    return copy


def _hold(lock_file) -> None:
    """An exclusive lock on an open file until it is closed (POSIX; elsewhere no lock)."""
    with contextlib.suppress(ImportError):
        import fcntl

        fcntl.flock(lock_file, fcntl.LOCK_EX)


def _sharegpt_pairs(path: Path, crop_size: int, name: str, memory=False) -> StoredPairs:
    """A LLaMA-Factory ShareGPT JSON: messages or conversations, and two image paths a record."""
    records = json.loads(path.read_text())
    if not isinstance(records, list):
        raise UserError(f"{path}: expected a JSON list of ShareGPT records")
    texts, images = [], []
    for record in records:
        record = record if isinstance(record, dict) else {}
        turns = record.get("messages") or record.get("conversations") or []
        user = next((t for t in turns if t.get("role", t.get("from")) in ("user", "human")), {})
        assistant = next((t for t in turns if t.get("role", t.get("from")) in ("assistant", "gpt")), {})
        texts.append((user.get("content", user.get("value")), assistant.get("content", assistant.get("value"))))
        images.append(tuple(str(path.parent / p) if not os.path.isabs(p) else p for p in record.get("images") or []))
    return StoredPairs(texts, images, [len(pair) for pair in images], crop_size, name, memory)


HUB_DATASETS = {"r1track5k": "WangBiao/R1-Track-5k", "r1track100k": "WangBiao/R1-Track-100k"}


SPLIT_WORDS = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"), "test": ("test", "testing")}


def _split_of(file: Path, root: Path):
    """The split a parquet file belongs to: the split word in its name, else in the nearest
    folder name below `root` that has one, else `root`'s own name when it is a split word
    (`--data data/train`); None when none says."""
    for name in [file.stem, *reversed(file.relative_to(root).parts[:-1])]:
        words = set(re.split(r"[^a-z0-9]+", name.lower()))
        found = [split for split, names in SPLIT_WORDS.items() if words & set(names)]
        if len(found) == 1:
            return found[0]
        if found:  # e.g. train_val.parquet: it cannot belong to both
            return None
    return next((split for split, names in SPLIT_WORDS.items() if root.name.lower() in names), None)


def _split_files(folder: Path, split: str) -> list:
    """The parquet files of one split of a dataset folder: by the split word in the file name or
    a folder name (train/, val/, validation/, test/, train-00000-of-00001.parquet, ...). A file
    of no split is refused, so that validation or test rows never become training data. The
    validation split falls back on the test files when there are no validation files."""
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise UserError(f"{folder}: no parquet files in this folder")
    splits = {file: _split_of(file, folder) for file in files}
    unknown = [str(file.relative_to(folder)) for file, found in splits.items() if found is None]
    if unknown:
        raise UserError(f"{folder}: cannot tell the split of {', '.join(unknown)} (name each file or its folder "
                        f"train, val or test; files found: {', '.join(str(f.relative_to(folder)) for f in files)})")
    chosen = [file for file, found in splits.items() if found == split]
    if not chosen and split == "val":
        chosen = [file for file, found in splits.items() if found == "test"]
    return chosen


def open_pairs(spec: str, crop_size: int, split="train", tracking_share: float = 0.0, loop="published",
               memory=False):
    """A pair source from a data spec: `r1track5k` / `r1track100k` (the published hub
    datasets), a parquet file or folder in the EasyR1 layout (train/val files chosen by
    name or folder), a LLaMA-Factory ShareGPT JSON, a GOT-10k-layout split folder
    (list.txt), or KIND:FOLDER for a tracking set's training split (SET_READERS: got10k,
    lasot, trackingnet, coco), whose pairs are cut with `tracking_share` and `loop` (see
    SequencePairs). memory: triples with a memory crop (sets), stored rows of three images too."""
    kind, rest = set_of(spec)
    if kind is not None:
        if split != "train" and kind != "got10k":
            raise UserError(f"{spec}: training reads {kind}'s training set; validate on another set (--val-data "
                            "a GOT-10k val folder, or stored pairs)")
        return SET_READERS[kind](rest, crop_size, tracking_share, loop, memory)
    path = Path(spec)
    if spec in HUB_DATASETS and not path.exists():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(HUB_DATASETS[spec], repo_type="dataset", allow_patterns=["*.parquet", "*.json"]))
    if (path / "list.txt").is_file():
        return Got10kPairs(path, crop_size, tracking_share, loop, memory)
    if path.is_dir():
        files = _split_files(path, split)
        if not files:
            raise NoSplit(f"{spec}: no {split} parquet files in this folder")
        return _parquet_pairs(files, crop_size, f"{spec} [{split}]", memory)
    if path.suffix == ".parquet" and path.is_file():
        return _parquet_pairs([path], crop_size, spec, memory)
    if path.suffix == ".json" and path.is_file():
        return _sharegpt_pairs(path, crop_size, spec, memory)
    raise UserError(f"{spec}: not a dataset (expected r1track5k, a .parquet file or folder, "
                    "a ShareGPT .json, or a GOT-10k split folder with list.txt)")


def set_of(spec: str) -> tuple:
    """(KIND, FOLDER) of a KIND:FOLDER data spec (SET_READERS), or (None, spec)."""
    kind, _, rest = spec.partition(":")
    return (kind, rest) if kind in SET_READERS and rest else (None, spec)


def check_weights(weights, count: int) -> None:
    """--data-weights: one finite weight above 0 for each of `count` sources (or none given)."""
    if weights is None:
        return
    if len(weights) != count:
        raise UserError(f"--data-weights takes one weight for each --data ({count}), not {len(weights)}")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise UserError("--data-weights must be numbers above 0 (leave out a source to give it none)")


def open_mix(specs: list, weights, crop_size: int, tracking_share: float = 0.0, loop="published", memory=False):
    """The training source of several data specs (open_pairs' forms), mixed by `weights`
    (default: equal); a single spec is read as it is."""
    if len(specs) == 1:
        return open_pairs(specs[0], crop_size, "train", tracking_share, loop, memory)
    sources = [open_pairs(spec, crop_size, "train", tracking_share, loop, memory) for spec in specs]
    labels = []
    for spec in specs:
        label = set_of(spec)[0] or Path(spec).stem or spec
        labels.append(label if label not in labels else f"{label}-{len(labels) + 1}")
    return MixedPairs(sources, labels, weights or [1.0] * len(specs))


# -----------------------------------------------------------------------------
# The resumable stream: which pair a rank reads at each position


def stream_position(position: int, size: int, seed: int, rank=0, world=1):
    """Which example a rank reads at `position` of its stream: (epoch, index). Each epoch
    is a seeded permutation split between ranks, so the stream is a pure function of its
    position and a run resumes by position alone."""
    per_rank = size // world
    if per_rank == 0:
        raise UserError(f"{size} examples cannot be shared between {world} ranks")
    epoch, offset = divmod(position, per_rank)
    return epoch, int(epoch_order(size, seed, epoch)[rank + offset * world])


@functools.lru_cache(maxsize=4)
def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The order of an epoch's examples: made once per epoch, not per pair (a mix with COCO's
    860,000 objects would pay ~10 ms a pair for it)."""
    order = np.random.default_rng([seed, epoch]).permutation(size)
    order.flags.writeable = False
    return order


def pair_rng(seed: int, epoch: int, index: int):
    """The randomness of one sampled pair: fresh each epoch, the same on every rerun."""
    return np.random.default_rng([seed, epoch, index])


class PairStream:
    """A rank's endless stream of pairs from a source, each made ready by `prepare` (default:
    the pair itself; a trainer turns it into model inputs); its position is all it needs to
    resume. With `workers`, DataLoader processes load and prepare the pairs ahead, in chunks of
    WORKER_CHUNK consecutive positions, so the stream is the same with any number of them.
    Unusable rows are skipped and counted; a source that is mostly unusable is an error."""

    def __init__(self, source, seed, rank=0, world=1, position=0, skipped=0, prepare=None, workers=0):
        self.source, self.seed, self.rank, self.world = source, seed, rank, world
        self.position, self.skipped = position, skipped
        self.prepare, self.workers, self.items = prepare, workers, None

    def __getitem__(self, position: int):
        """The prepared pair at a stream position, or None for an unusable row."""
        epoch, index = stream_position(position, len(self.source), self.seed, self.rank, self.world)
        try:
            pair = self.source.load(index, pair_rng(self.seed, epoch, index))
        except BadRow:
            return None
        return self.prepare(pair) if self.prepare else pair

    def next_pairs(self, count):
        if self.items is None:
            self.items = self._items_from(self.position)
        pairs = []
        while len(pairs) < count:
            item = next(self.items)
            self.position += 1
            if item is not None:
                pairs.append(item)
                continue
            self.skipped += 1
            if self.skipped > 1000 and self.skipped > self.position // 2:
                raise UserError(f"most rows of {self.source.name} are unusable (bad images or boxes)")
        return pairs

    def _items_from(self, position):
        positions = itertools.count(position)
        if not self.workers:
            return map(self.__getitem__, positions)
        import cv2
        from torch.utils.data import DataLoader

        chunks = iter(lambda: list(itertools.islice(positions, WORKER_CHUNK)), None)  # endless

        # OpenCV's thread pool does not survive fork (a forked worker would wait on threads it
        # does not have): it is stopped before the workers are forked. Each worker crops one
        # pair at a time anyway, and the workers are the parallelism.
        cv2.setNumThreads(1)
        # in order, whatever worker finished first; each worker two chunks ahead; forked, not
        # spawned: a worker shares the source (a memory-mapped dataset) instead of a pickled copy
        loader = DataLoader(self, batch_sampler=chunks, num_workers=self.workers, collate_fn=_packed, prefetch_factor=2,
                            multiprocessing_context="fork" if sys.platform == "linux" else None)
        return (item for chunk in loader for item in _unpacked(chunk))

    def close(self):
        """Stop the worker processes (they read ahead); the stream goes on from its position."""
        self.items = None

    def epoch(self):
        return self.position / max(1, len(self.source) // self.world)


# A worker prepares this many consecutive positions and sends them as one message, their
# tensors in one buffer (_packed). Each tensor sent on its own costs a shared-memory file, a
# socket handshake to pass it and page faults on both sides: with two tensors an SFT example,
# ~1.6 ms of CPU more than in chunks, which two workers on two cores pay out of the time they
# prepare in (two workers made 1.69x the examples of one; in chunks of 4, 1.85x).
WORKER_CHUNK = 4


def _packed(items: list) -> tuple:
    """A worker's chunk of items as one message: the tensors of its dict items as bytes in one
    buffer (their dtypes, shapes and places in `layout`), the items without them. They arrive
    as plain tensors (no autograd); one tensor under two keys arrives as two."""
    import torch

    layout, parts, offset, bare = [], [], 0, []
    for index, item in enumerate(items):
        if isinstance(item, dict):
            item = item.copy()  # of its own kind (an OrderedDict stays one)
            for key, value in item.items():
                if torch.is_tensor(value) and value.layout == torch.strided and not value.is_quantized:
                    data = value.detach().resolve_conj().resolve_neg().contiguous().view(-1).view(torch.uint8)
                    padding = -len(data) % 16  # every tensor starts 16-aligned, so that it can be viewed as any dtype
                    layout.append((index, key, value.dtype, tuple(value.shape), offset, len(data)))
                    parts += [data, torch.zeros(padding, dtype=torch.uint8)]
                    offset += len(data) + padding
                    item[key] = None
        bare.append(item)
    return (torch.cat(parts) if parts else None), layout, bare


def _unpacked(chunk: tuple) -> list:
    """_packed's items as they were, their tensors views into the one buffer received."""
    buffer, layout, items = chunk
    for index, key, dtype, shape, offset, size in layout:
        items[index][key] = buffer[offset:offset + size].view(dtype).view(shape)
    return items


def validation_pairs(source, size, seed):
    """(a fixed set of validation pairs: the same at every evaluation and on every rerun, the
    number of rows among them that could not be used). UserError when none can be."""
    if source is None:
        return [], 0
    count = min(size, len(source)) if isinstance(source, StoredPairs) else size
    pairs, reasons = [], []
    for k in range(count):
        epoch, index = stream_position(k, len(source), seed)
        try:
            pairs.append(source.load(index, pair_rng(seed, epoch, index)))
        except BadRow as error:
            reasons.append(str(error))
    if not pairs:
        raise UserError(f"no usable validation pairs in {source.name}: {count} tried, the first: {reasons[0]}")
    return pairs, len(reasons)


# -----------------------------------------------------------------------------
# Writing pairs


def pair_to_row(pair: Pair, wording="seed") -> dict:
    """A pair as an EasyR1 parquet row (`images`, `problem`, `answer`): JPEG images quality
    95 (the crops' own JPEG bytes when they have them), the question after an <image> for
    each image (with a space between them in the 100k wording, as the published data has)."""
    import io

    images = []
    for index, image in enumerate(pair.images()):
        if pair.jpegs:
            data = pair.jpegs[index]
        else:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
            data = buffer.getvalue()
        images.append({"bytes": data, "path": None})
    images_text = (" " if wording == "r1track-100k" else "").join("<image>" for _ in images)
    question = question_text(pair.template_box_xyxy, wording=wording, memory_box_xyxy=pair.memory_box_xyxy)
    return {"images": images, "problem": images_text + question, "answer": format_box_xyxy(pair.search_box_xyxy)}
