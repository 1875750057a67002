"""Where training pairs come from: stored pairs (EasyR1 parquet, LLaMA-Factory ShareGPT), the
tracking sets (tracking_pairs.py) and their mix by weight, what a run is given by its --data
flags, and the resumable stream that hands each rank its pairs.

A pair (tracking_pairs.Pair) is (template crop, template box, search crop, answer box), boxes
in crop pixels, and with a memory frame a memory crop and its box.
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

import numpy as np
from PIL import Image

from answers import parse_answer, parse_prompt_boxes
from boxes import JPEG_QUALITY
from cli import UserError
from frames import open_image
from tracking_pairs import SET_READERS, BadRow, Got10kPairs, Pair, set_of
from prompts import format_box_xyxy, question_text

# -----------------------------------------------------------------------------
# Pair sources: stored rows (parquet, ShareGPT), and several sources mixed by weight


class NoSplit(UserError):
    """A dataset folder without the split asked for."""


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

    def __len__(self):
        return len(self.rows)

    @property
    def triples(self) -> int:
        """How many of the usable rows are triples (three images)."""
        return sum(memory_box is not None for *_, memory_box in self.rows)

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
        return train, val


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
    """A LLaMA-Factory ShareGPT JSON: messages or conversations, and the image paths of a record
    (two, or three with a memory crop)."""
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


def check_memory_loop(memory: bool, loop: str) -> None:
    """--memory asks three images, which the published loop never does."""
    if memory and loop == "published":
        raise UserError("--memory asks three-image questions, which the published loop never asks: add --loop "
                        "lenient")


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
# A training run's data: its --data flags opened, said, shared between ranks


def open_data(args, dist):
    """(train source, validation source or None); one clear error for bad data."""
    try:
        specs = args.data if isinstance(args.data, list) else [args.data]
        train = open_mix(specs, args.data_weights, args.crop_size, tracking_share=args.tracking_pairs, loop=args.loop,
                         memory=args.memory)
        val = None
        if args.val_data:
            val = open_pairs(args.val_data, args.crop_size, split="val", tracking_share=args.tracking_pairs,
                             loop=args.loop, memory=args.memory)
        elif args.val_fraction > 0:
            if not isinstance(train, StoredPairs):
                raise UserError("--val-fraction holds out stored pairs; for a tracking set or a mix give --val-data")
            train, val = train.split(args.val_fraction, args.seed)
        elif isinstance(train, StoredPairs) and (Path(args.data).is_dir() or args.data in HUB_DATASETS):
            try:  # the dataset's own val split; a broken one is an error, a missing one is said below
                val = open_pairs(args.data, args.crop_size, split="val", memory=args.memory)
            except NoSplit:
                pass
    except (OSError, ValueError) as error:
        raise UserError(str(error)) from None
    if isinstance(train, MixedPairs):
        if dist.main:
            print(f"training data: {len(train.sources)} sources mixed by weight, {len(train)} pairs an epoch:")
            print("\n".join(train.describe()))
        empty = [source.name for source in train.sources if len(source) == 0]
        if empty:
            raise UserError(f"no usable training pairs in {empty[0]}")
    for name, source in (("training", train), ("validation", val)):
        if source is not None and not (source is train and isinstance(train, MixedPairs)):
            if dist.main:
                sides = source.stored_sides() if isinstance(source, StoredPairs) else []
                others = [f"{side}-px" for side in sides if side != args.crop_size]
                resized = f"; {', '.join(others)} pairs (of its first rows) resized to {args.crop_size} px" \
                    if others else ""
                triples = f"; {source.triples} of them triples (three images)" \
                    if args.memory and isinstance(source, StoredPairs) else ""
                print(f"{name} data: {source.name}: {len(source)} usable, {skipped_text(source)}{resized}{triples}")
                if triples and not source.triples:
                    print(f"note: --memory, but no row of {source.name} has three images: its questions are all "
                          "asked with two", file=sys.stderr)
            if len(source) == 0:
                raise UserError(f"no usable {name} pairs in {source.name}")
    if val is None and dist.main:
        print("validation data: none (--val-data or --val-fraction give some)")
    if len(train) < dist.world:
        raise UserError(f"{len(train)} training examples cannot be shared between {dist.world} ranks")
    return train, val


def data_share(source, position: int, args, dist) -> dict:
    """For a mix of sources: {"data_share": {source: its share of the pairs drawn by every rank
    up to this stream position}} (a rank that skipped other rows than the main one stands a
    little further on), a metrics.jsonl entry; {} for a single source."""
    if not isinstance(source, MixedPairs) or position == 0:
        return {}
    drawn = source.drawn(position, args.seed, dist.world)
    total = sum(drawn.values())
    return {"data_share": {label: round(count / total, 4) for label, count in drawn.items()}}


def validation_set(source, args, dist) -> list:
    """The fixed validation pairs, their number said on the main rank with any unusable rows."""
    pairs, unusable = validation_pairs(source, args.val_size, args.seed + 1)
    if pairs and dist.main:
        print(f"validation: {len(pairs)} pairs" + (f" ({unusable} unusable rows left out)" if unusable else ""))
    return pairs


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
