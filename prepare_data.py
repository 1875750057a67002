"""Make data for R1-Track.

  python prepare_data.py pairs --got10k GOT-10k/train --out pairs.parquet --num 5000 --size 336
      training pairs in the EasyR1 parquet layout (images, problem, answer), sampled as
      R1-Track-5k was: two frames of a sequence, each cropped around its own box with a
      random factor in [2, 8) and a random centre shift; one pair per sequence per pass.

  python prepare_data.py synthetic --out data/synth --split val --sequences 8 --frames 30
      a synthetic dataset in the GOT-10k layout (moving, occluded, sometimes absent targets
      among look-alikes), for tests, demos and trying the pipeline without downloads.
"""

import argparse
import sys
from pathlib import Path

import r1track


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x240, got {text!r}")
    if width < 32 or height < 32:
        raise argparse.ArgumentTypeError(f"frames must be at least 32x32, got {text!r}")
    return width, height


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> r1track.ArgumentParser:
    parser = r1track.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    pairs = commands.add_parser(
        "pairs", help="sample training pairs from a GOT-10k split into an EasyR1 parquet file",
        formatter_class=r1track.HelpFormatter)
    pairs.add_argument("--got10k", required=True, help="a GOT-10k-layout split folder (holding list.txt)")
    pairs.add_argument("--out", required=True, help="the parquet file to write")
    pairs.add_argument("--num", type=positive_int, default=5000, help="number of pairs")
    pairs.add_argument("--size", type=positive_int, default=336, help="crop size in pixels")
    pairs.add_argument("--wording", default="seed", choices=r1track.WORDINGS, help="question wording of `problem`")
    pairs.add_argument("--loop", default="published", choices=r1track.LOOPS,
                       help="published: crops cut by OpenCV and stored as JPEG quality 95, as R1-Track-5k/100k were; "
                       "lenient: antialiased crops")
    pairs.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same pairs")

    synthetic = commands.add_parser(
        "synthetic", help="write a synthetic dataset in the GOT-10k layout",
        formatter_class=r1track.HelpFormatter)
    synthetic.add_argument("--out", required=True, help="dataset root; the split goes to OUT/SPLIT")
    synthetic.add_argument("--split", default="val", choices=["train", "val", "test"],
                           help="split folder to write (test keeps only the first box, as GOT-10k does)")
    synthetic.add_argument("--sequences", type=positive_int, default=8, help="number of sequences")
    synthetic.add_argument("--frames", type=positive_int, default=30, help="frames per sequence")
    synthetic.add_argument("--size", type=parse_size, default="320x240", help="frame size WIDTHxHEIGHT")
    synthetic.add_argument("--style", default="clutter", choices=r1track.SYNTHETIC_STYLES,
                           help="clutter: textured background, look-alikes, occlusion, absence; "
                           "plain: the target alone on a flat background")
    synthetic.add_argument("--distractors", type=int, default=None,
                           help="look-alike objects per sequence (default: 2 for clutter, 0 for plain)")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same data")
    return parser


def write_pairs(args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([  # EasyR1's layout
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("problem", pa.string()), ("answer", pa.string())])
    from tqdm import tqdm

    try:
        source = r1track.Got10kPairs(args.got10k, args.size, loop=args.loop)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(source) == 0:
        print(f"error: {args.got10k} has no sequence with a visible target", file=sys.stderr)
        return 2
    rows, failed, position = [], 0, 0
    with tqdm(total=args.num, desc="pairs", unit="pair") as bar:
        while len(rows) < args.num:
            epoch, index = r1track.stream_position(position, len(source), args.seed)
            position += 1
            try:
                pair = source.load(index, r1track.pair_rng(args.seed, epoch, index))
            except r1track.BadRow:
                failed += 1
                if failed > 10 * args.num:
                    print("error: almost no usable pairs in this split", file=sys.stderr)
                    return 2
                continue
            rows.append(r1track.pair_to_row(pair, args.wording))
            bar.update()
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        tmp.replace(out)
    except OSError as error:
        print(f"error: cannot write {out}: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(rows)} pairs from {len(source)} sequences to {out} "
          f"({source.skipped} sequences unusable, {failed} draws retried)")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "pairs":
        return write_pairs(args)
    if args.command == "synthetic":
        try:
            split_dir = r1track.make_synthetic_got10k(
                args.out, split=args.split, sequences=args.sequences, frames=args.frames,
                size=args.size, seed=args.seed, distractors=args.distractors, style=args.style)
        except OSError as error:
            print(f"error: cannot write the dataset: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.sequences} sequences of {args.frames} frames to {split_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
