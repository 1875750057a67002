import os
import subprocess
import time
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# No test may touch the network: the hub libraries fail fast instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
# Arrow copies of parquet files go to a folder of this run, not the user's cache.
os.environ["R1TRACK_CACHE"] = tempfile.mkdtemp(prefix="r1track-cache-")
# Reports stay on this machine, in folders of this run: W&B offline, trackio's database here.
os.environ["WANDB_MODE"] = "offline"
os.environ["TRACKIO_DIR"] = tempfile.mkdtemp(prefix="trackio-")

import torch  # noqa: E402

import bases  # noqa: E402
import r1track  # noqa: E402
import synthetic  # noqa: E402

# Every base the project tracks with: the equivalence tests run for each (test ids name it)
BASES = list(bases.BASES)


def crop_of(base: str) -> int:
    """The tiny models' crop: four image tokens a side (112 px for Qwen2.5-VL, 128 for Qwen3-VL and Qwen3.5)."""
    return 4 * bases.named(base).token_side

# run_main's runs are compared with subprocess runs: the same thread count sums floats alike
FRESH_PROCESS_THREADS = torch.get_num_threads()
# the warning filters a fresh interpreter starts with, newest first (warnings.filterwarnings prepends)
FRESH_PROCESS_WARNINGS = [("ignore", ResourceWarning, ""), ("ignore", ImportWarning, ""),
                          ("ignore", PendingDeprecationWarning, ""), ("ignore", DeprecationWarning, ""),
                          ("default", DeprecationWarning, "__main__")]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny Qwen2.5-VL checkpoint on disk, loaded as a hub model would be."""
    return synthetic.save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    return r1track.load_model(str(tiny_model_dir), device="cpu")


def by_base(make, **made):
    """base -> make(base), made once each, when first asked for (`made`: those there already)."""

    def get(base: str):
        if base not in made:
            made[base] = make(base)
        return made[base]

    return get


@pytest.fixture(scope="session")
def tiny_dir_of(tiny_model_dir, tmp_path_factory):
    """base -> a random tiny checkpoint of that base on disk (tiny_model_dir for Qwen2.5-VL)."""
    return by_base(lambda base: synthetic.save_tiny_model(tmp_path_factory.mktemp(f"tiny-{base}") / "model", seed=0,
                                                          base=bases.named(base)), qwen2_5_vl=tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_of(tiny_dir_of, tiny):
    """base -> the loaded (model, processor) of tiny_dir_of(base)."""
    return by_base(lambda base: r1track.load_model(str(tiny_dir_of(base)), device="cpu"), qwen2_5_vl=tiny)


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


def wait_for(path, process, timeout=120):
    """Until `path` exists while `process` (a Popen) runs: a file a run writes along the way."""
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, "the run ended before the file appeared"
        assert time.time() < deadline
        time.sleep(0.02)


def run_script(*args, **kwargs):
    """Run one of the project's scripts with this Python, from the project folder."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, **kwargs)


def run_main(script, *args):
    """One of the project's scripts run as `run_script` runs it, but in this process: its
    main(argv) from the project folder, as a fresh process would start it (torch's thread
    count, randomly seeded generators, the interpreter's warning filters), its stdout and
    stderr captured (warnings and log records included), and the process state it changes
    put back afterwards. A subprocess costs seconds of imports; what only a process shows (a
    kill, torchrun, forked data workers, the libraries' import-time chatter) keeps run_script.
    A development tool (tools/NAME.py) runs as `python tools/NAME.py` runs it, as __main__ from
    its file (tests import no tool)."""
    import contextlib
    import importlib
    import io
    import logging
    import random
    import runpy
    import signal
    import warnings

    import cv2
    import numpy as np
    import transformers

    tool = Path(script).parent.name == "tools"
    module = None if tool else importlib.import_module(Path(script).stem)
    stdout, stderr = io.StringIO(), io.StringIO()
    threads, cv2_threads, cwd, environ = torch.get_num_threads(), cv2.getNumThreads(), os.getcwd(), dict(os.environ)
    argv, path = list(sys.argv), list(sys.path)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    rng = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    levels = {name: logging.getLogger(name).level for name in ("transformers", "bitsandbytes")}
    bars = transformers.utils.logging.is_progress_bar_enabled()
    to_stderr = logging.StreamHandler(stderr)  # what Python's last-resort handler prints in a process
    to_stderr.setLevel(logging.WARNING)
    try:
        os.chdir(ROOT)
        torch.set_num_threads(FRESH_PROCESS_THREADS)
        torch.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)  # a process draws a fresh seed
        np.random.seed(int.from_bytes(os.urandom(4), "little"))
        random.seed(os.urandom(16))
        logging.getLogger().addHandler(to_stderr)
        with warnings.catch_warnings(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            warnings.resetwarnings()
            for action, category, module_name in FRESH_PROCESS_WARNINGS:
                warnings.filterwarnings(action, category=category, module=module_name)
            # printed to the (captured) stderr as in a process, not recorded by pytest's own hook
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
                sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
            try:
                if tool:
                    sys.argv = [script, *map(str, args)]
                    runpy.run_path(str(ROOT / script), run_name="__main__")
                    code = 0
                else:
                    code = module.main([str(a) for a in args])
            except SystemExit as exit_:  # argparse's refusals, and a tool's sys.exit(main())
                code = exit_.code
    finally:
        logging.getLogger().removeHandler(to_stderr)
        sys.argv[:], sys.path[:] = argv, path
        os.chdir(cwd)
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv2_threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.random.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update({k: v for k, v in environ.items() if os.environ.get(k) != v})
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()
    return subprocess.CompletedProcess([script, *map(str, args)], code, stdout.getvalue(), stderr.getvalue())


def make_pairs(got10k_root, out, num):
    """`num` training pairs of 112-px crops, made by prepare_data.py from the synthetic split."""
    result = run_main("prepare_data.py", "pairs", "--got10k", got10k_root / "val", "--out", out,
                      "--num", str(num), "--size", "112", "--seed", "0")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def pairs16(got10k_root, tmp_path_factory):
    return make_pairs(got10k_root, tmp_path_factory.mktemp("pairs") / "pairs16.parquet", 16)


def memorise_pairs(model_dir, pairs16, out, crop_size):
    """SFT_RUN's training of a model on pairs16, as train_sft.py runs it."""
    result = run_main("train_sft.py", "--model", model_dir, "--data", pairs16, "--out", out, "--crop-size", crop_size,
                      "--full", "--lr", "1e-3", "--batch-size", "16", "--grad-accum", "1", "--max-steps", "100",
                      "--val-data", pairs16, "--eval-every", "60", "--save-every", "60", "--keep-checkpoints", "2",
                      "--no-gradient-checkpointing")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def sft_run(tiny_model_dir, pairs16, tmp_path_factory):
    """The tiny model fully fine-tuned on pairs16 for 100 steps, validated on them at steps 60
    and 100, a checkpoint at both: bench_grpo.py's two warm starts. At the end it has memorised
    its pairs (greedy reward 1.5, the most there is); at checkpoint-60 it has not (0.225, most
    sampled answers malformed), and there GRPO learns (BENCHMARKS.md)."""
    return memorise_pairs(tiny_model_dir, pairs16, tmp_path_factory.mktemp("sft_run") / "sft", 112)


@pytest.fixture(scope="session")
def sft_run_of(sft_run, tiny_dir_of, pairs16, tmp_path_factory):
    """base -> sft_run's training of that base's tiny model (its crops: crop_of(base); the
    stored 112-px pairs resized to them)."""
    return by_base(lambda base: memorise_pairs(tiny_dir_of(base), pairs16, tmp_path_factory.mktemp(f"sft_run-{base}")
                                               / "sft", crop_of(base)), qwen2_5_vl=sft_run)


@pytest.fixture(scope="session")
def sft_warm(sft_run):
    """A model that answers its pairs: the end of sft_run."""
    return sft_run


class ChatServer:
    """An OpenAI-compatible chat server on 127.0.0.1 (a context manager): `answer(index,
    payload)` gives the content of the index-th chat answer, or (content, its tokens'
    log-probabilities as OpenAI's `logprobs.content` lists them); every request body is kept
    in `payloads`; /v1/models lists `model`."""

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
                content, logprobs = answered if isinstance(answered := answer(index, payload), tuple) else \
                    (answered, None)
                choice = {"index": 0, "message": {"role": "assistant", "content": content}}
                if logprobs is not None:
                    choice["logprobs"] = {"content": logprobs}
                self.reply({"choices": [choice]})

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
