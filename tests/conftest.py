import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# No test may touch the network: the hub libraries fail fast instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"

import r1track  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny Qwen2.5-VL checkpoint on disk, loaded as a hub model would be."""
    return r1track.save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    return r1track.load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def got10k_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("got10k")
    r1track.make_synthetic_got10k(root, "val", sequences=6, frames=24, seed=1)
    return root


ROOT = Path(__file__).resolve().parents[1]


def run_script(*args, **kwargs):
    """Run one of the project's scripts with this Python, from the project folder."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, **kwargs)


def make_pairs(got10k_root, out, num):
    """`num` training pairs of 112-px crops, made by prepare_data.py from the synthetic split."""
    result = run_script("prepare_data.py", "pairs", "--got10k", got10k_root / "val", "--out", out,
                        "--num", str(num), "--size", "112", "--seed", "0")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def pairs16(got10k_root, tmp_path_factory):
    return make_pairs(got10k_root, tmp_path_factory.mktemp("pairs") / "pairs16.parquet", 16)


@pytest.fixture(scope="session")
def pairs4(got10k_root, tmp_path_factory):
    """The first 4 of pairs16 (same sampler, same seed): a small fixed question set."""
    return make_pairs(got10k_root, tmp_path_factory.mktemp("pairs") / "pairs4.parquet", 4)


@pytest.fixture(scope="session")
def sft_warm(tiny_model_dir, pairs16, tmp_path_factory):
    """The tiny model after a short SFT on pairs16 (80 steps): greedy answers mostly right,
    sampled ones often not, which leaves reinforcement learning something to do."""
    out = tmp_path_factory.mktemp("sft_warm") / "sft"
    result = run_script("train_sft.py", "--model", tiny_model_dir, "--data", pairs16, "--out", out, "--crop-size", "112",
                        "--full", "--lr", "1e-3", "--batch-size", "16", "--grad-accum", "1", "--max-steps", "80",
                        "--no-gradient-checkpointing")
    assert result.returncode == 0, result.stderr[-3000:]
    return out
