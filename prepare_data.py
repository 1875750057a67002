"""Make data for R1-Track.

  python prepare_data.py synthetic --out data/synth --split val --sequences 8 --frames 30
      a synthetic dataset in the GOT-10k layout (moving, occluded, sometimes absent targets
      among look-alikes), for tests, demos and trying the pipeline without downloads.
"""

import argparse
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    synthetic = commands.add_parser(
        "synthetic", help="write a synthetic dataset in the GOT-10k layout",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    synthetic.add_argument("--out", required=True, help="dataset root; the split goes to OUT/SPLIT")
    synthetic.add_argument("--split", default="val", choices=["train", "val", "test"],
                           help="split folder to write (test keeps only the first box, as GOT-10k does)")
    synthetic.add_argument("--sequences", type=positive_int, default=8, help="number of sequences")
    synthetic.add_argument("--frames", type=positive_int, default=30, help="frames per sequence")
    synthetic.add_argument("--size", type=parse_size, default=(320, 240), help="frame size WIDTHxHEIGHT")
    synthetic.add_argument("--distractors", type=int, default=2, help="look-alike objects per sequence")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same data")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "synthetic":
        try:
            split_dir = r1track.make_synthetic_got10k(
                args.out, split=args.split, sequences=args.sequences, frames=args.frames,
                size=args.size, seed=args.seed, distractors=args.distractors)
        except OSError as error:
            print(f"error: cannot write the dataset: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.sequences} sequences of {args.frames} frames to {split_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
