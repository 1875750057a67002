import os
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
