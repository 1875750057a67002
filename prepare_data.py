"""Make data for R1-Track.

  python prepare_data.py pairs --data got10k:GOT-10k/train --out pairs.parquet --num 5000 --size 336
      training pairs in the EasyR1 parquet layout (images, problem, answer), sampled as
      R1-Track-5k was: two frames of a sequence, each cropped around its own box with a
      random factor in [2, 8) and a random centre shift; from one set, one pair per sequence
      per pass.
      Several sets mixed by weight: --data got10k:GOT-10k/train lasot:LaSOT
      trackingnet:TrackingNet coco:COCO --data-weights 1 1 1 1

  python prepare_data.py synthetic --out data/synth --split val --sequences 8 --frames 30
      a synthetic dataset in the GOT-10k layout (moving, occluded, sometimes absent targets
      among look-alikes), for tests, demos and trying the pipeline without downloads.
"""

import argparse
import sys
from pathlib import Path

import synthetic
from cli import ArgumentParser, HelpFormatter, UserError, first_line, positive_int, script_main
from data import MixedPairs, PairStream, check_memory_loop, check_weights, open_mix, pair_to_row, skipped_text
from prompts import WORDINGS
from settings import LOOPS

ROWS_PER_GROUP = 500  # pairs per parquet row group: about 30 MB of 336-px JPEG pairs


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x240, got {text!r}")
    if width < 32 or height < 32:
        raise argparse.ArgumentTypeError(f"frames must be at least 32x32, got {text!r}")
    return width, height


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    pairs = commands.add_parser(
        "pairs", help="sample training pairs from tracking sets (GOT-10k, LaSOT, TrackingNet, COCO) into an "
        "EasyR1 parquet file",
        formatter_class=HelpFormatter)
    sources = pairs.add_mutually_exclusive_group(required=True)
    sources.add_argument("--data", nargs="+", metavar="KIND:FOLDER",
                         help="the tracking sets to cut pairs from, KIND one of got10k (a split folder with "
                         "list.txt), lasot (its training set: the 280 test sequences never read), trackingnet "
                         "(TRAIN_<k> chunks), coco (2017 instances: both crops from one image); several are "
                         "mixed by --data-weights")
    sources.add_argument("--got10k", help="a GOT-10k-layout split folder (holding list.txt): --data got10k:FOLDER")
    pairs.add_argument("--data-weights", nargs="+", type=float, default=None, metavar="W",
                       help="with several --data: each one's share of the pairs, in their order (default: equal)")
    pairs.add_argument("--out", required=True, help="the parquet file to write")
    pairs.add_argument("--num", type=positive_int, default=5000, help="number of pairs")
    pairs.add_argument("--size", type=positive_int, default=336, help="crop size in pixels (336 as published; 352 "
                       "for Qwen3-VL's 32-px image tokens: pairs of another size are resized to the training crop, "
                       "which training says; boxes are stored in pixels whatever the base)")
    pairs.add_argument("--wording", default="seed", choices=WORDINGS, help="question wording of `problem`")
    pairs.add_argument("--loop", default="published", choices=LOOPS,
                       help="published: crops cut by OpenCV and stored as JPEG quality 95, as R1-Track-5k/100k were; "
                       "lenient: antialiased crops")
    pairs.add_argument("--memory", action="store_true",
                       help="write triples (template, a memory crop of a recent frame, search) in rows of three "
                       "images whose question names two boxes, as train_sft.py --memory cuts them (needs --loop "
                       "lenient: the published loop asks two images)")
    pairs.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same pairs")

    clips = commands.add_parser(
        "synthetic", help="write a synthetic dataset in the GOT-10k layout",
        formatter_class=HelpFormatter)
    clips.add_argument("--out", required=True, help="dataset root; the split goes to OUT/SPLIT")
    clips.add_argument("--split", default="val", choices=["train", "val", "test"],
                       help="split folder to write (test keeps only the first box, as GOT-10k does)")
    clips.add_argument("--sequences", type=positive_int, default=8, help="number of sequences")
    clips.add_argument("--frames", type=positive_int, default=30, help="frames per sequence")
    clips.add_argument("--size", type=parse_size, default="320x240", help="frame size WIDTHxHEIGHT")
    clips.add_argument("--style", default="clutter", choices=synthetic.SYNTHETIC_STYLES,
                       help="clutter: textured background, look-alikes, occlusion, absence; "
                       "plain: the target alone on a flat background; changing: on a flat background, a target whose "
                       "colours, pattern and shape drift far from its first look, a look-alike keeping that first "
                       "look, a narrow occluder")
    clips.add_argument("--distractors", type=int, default=None,
                       help="look-alike objects per sequence (default: 2 for clutter, 0 for plain, 1 for changing)")
    clips.add_argument("--hiding", action=argparse.BooleanOptionalAction, default=None,
                       help="an occluder and walks out of the image, frames where the target cannot be seen "
                       "(default: in the clutter style only)")
    clips.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same data")
    return parser


def write_pairs(args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    schema = pa.schema([  # EasyR1's layout
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("problem", pa.string()), ("answer", pa.string())])
    specs = args.data or [f"got10k:{args.got10k}"]
    check_weights(args.data_weights, len(specs))
    check_memory_loop(args.memory, args.loop)
    try:
        source = open_mix(specs, args.data_weights, args.size, loop=args.loop, memory=args.memory)
    except ValueError as error:  # a file its reader cannot parse (OSError is said by script_main)
        raise UserError(first_line(error)) from None
    for part in getattr(source, "sources", [source]):
        if len(part) == 0:
            raise UserError(f"{part.name} has nothing to cut a pair from ({skipped_text(part)})")
    if isinstance(source, MixedPairs):
        print(f"{len(source.sources)} sources mixed by weight:\n" + "\n".join(source.describe()))
    stream = PairStream(source, args.seed)
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    # written a row group at a time: memory stays that of one group, and readers can take the
    # file a group at a time (a single group of 100k pairs is too big for a nested Arrow column)
    with pq.ParquetWriter(tmp, schema) as writer, tqdm(total=args.num, desc="pairs", unit="pair") as bar:
        for start in range(0, args.num, ROWS_PER_GROUP):
            pairs = stream.next_pairs(min(ROWS_PER_GROUP, args.num - start))
            writer.write_table(pa.Table.from_pylist([pair_to_row(pair, args.wording) for pair in pairs], schema=schema))
            bar.update(len(pairs))
    tmp.replace(out)
    drawn = "" if not isinstance(source, MixedPairs) else " (" + ", ".join(
        f"{label} {count}" for label, count in source.drawn(stream.position, args.seed).items()) + " drawn)"
    print(f"wrote {args.num} pairs from {source.name}{drawn} to {out} "
          f"({source.skipped} left out as unusable, {stream.skipped} draws retried)")
    return 0


def write_synthetic(args) -> int:
    split_dir = synthetic.make_synthetic_got10k(
        args.out, split=args.split, sequences=args.sequences, frames=args.frames,
        size=args.size, seed=args.seed, distractors=args.distractors, style=args.style, hiding=args.hiding)
    print(f"wrote {args.sequences} sequences of {args.frames} frames to {split_dir}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return script_main(write_pairs if args.command == "pairs" else write_synthetic, args, quiet=False)


if __name__ == "__main__":
    sys.exit(main())
