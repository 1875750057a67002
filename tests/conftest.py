import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# No test may touch the network: the hub libraries fail fast instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
# Arrow copies of parquet files go to a folder of this run, not the user's cache.
os.environ["R1TRACK_CACHE"] = tempfile.mkdtemp(prefix="r1track-cache-")

import r1track  # noqa: E402
import synthetic  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny Qwen2.5-VL checkpoint on disk, loaded as a hub model would be."""
    return synthetic.save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    return r1track.load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def got10k_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("got10k")
    synthetic.make_synthetic_got10k(root, "val", sequences=6, frames=24, seed=1)
    return root


ROOT = Path(__file__).resolve().parents[1]


def main_in_process(main, argv, capsys):
    """A script's main(argv) run in this process, for refusals that come before any model is
    loaded (a subprocess costs seconds of imports): (exit status, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's refusals
        code = exit_.code
    return code, capsys.readouterr().err


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


class ChatServer:
    """An OpenAI-compatible chat server on 127.0.0.1 (a context manager): `answer(index,
    payload) -> str` gives the content of the index-th chat answer; every request body is
    kept in `payloads`; /v1/models lists `model`."""

    def __init__(self, answer, model="served-model"):
        import http.server
        import json
        import threading

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.reply({"data": [{"id": model, "object": "model"}]})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    index = len(server.payloads)
                    server.payloads.append(payload)
                self.reply({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                 "content": answer(index, payload)}}]})

            def reply(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.payloads, self.lock = [], threading.Lock()
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.http.shutdown()
        self.http.server_close()
