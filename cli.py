"""What every script of the project shares on the command line: the one-line error
(UserError, script_main), the parser and its --help, atomic writes of the files a user keeps,
the libraries kept quiet, and the thread policy of the tracking scripts (OpenCV on the calling
thread, a core left to the frame readers)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


class UserError(ValueError):
    """Input that cannot be used as given (a flag, a file, a model, a server): every script
    says it in one line and exits with status 2 (script_main), never with a traceback."""


def first_line(error) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


def write_atomic(path, data) -> None:
    """Write a file so that readers see the old content or the new, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # as an ordinary file, not mkstemp's owner-only mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help for the project's scripts: the description as written, and every option's
    default after its help unless the help already says it (or there is none to say)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or not action.option_strings \
                or action.default == argparse.SUPPRESS:
            return text
        return f"{text} (default: {action.default})"


class ArgumentParser(argparse.ArgumentParser):
    """The project's scripts' parser: HelpFormatter, and a bad flag said in one line."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive_int(text) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def script_main(run, args, quiet=True) -> int:
    """Every script's body runs here: `run(args)`'s exit status; bad input (UserError) or a
    file that cannot be read or written (OSError) is one line on stderr and status 2."""
    if quiet:
        quiet_libraries()
    try:
        return run(args)
    except (UserError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def quiet_libraries():
    """Keep the terminal for our own progress: no per-shard bars or info lines from the libraries."""
    import logging
    import warnings

    import transformers

    # bitsandbytes (imported by peft) warns on CPU-only machines about a kernel it only needs on GPU
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # peft still calls transformers' old checkpointing names; nothing a user can act on
    warnings.filterwarnings("ignore", message=".*(is_gradient_checkpointing|gradient_checkpointing_enable)",
                            category=FutureWarning)
    # FSDP2 warns on every forward that the model returns a view; we never modify it in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def leave_a_core_for_reading() -> None:
    """For a model on the CPU: one core fewer for torch's threads, left to the threads that
    decode frames ahead. Torch's threads wait for each other at every operation, so one of
    them sharing its core with a decoder stalls them all: on 2 cores, the demo model at 336 px
    took 24 ms a frame with 2 threads, 52 ms while frames were decoded beside it, and 30 ms
    with 1 thread beside the decoder. OMP_NUM_THREADS, when set, is left as it is."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > 1:
        torch.set_num_threads(torch.get_num_threads() - 1)


def opencv_on_one_thread() -> None:
    """OpenCV's own thread pool off for tracking: each call runs on its caller's thread. A
    crop and its JPEG round trip are too small to share out: at 1080p, a crop took 0.76-0.82 ms
    and 1.4 ms of CPU time on OpenCV's 2 threads against 0.55-0.63 ms on one, the JPEG round
    trip 0.92-1.35 ms against 0.66-0.97 (in the tracking loop, after the model's pass, the
    two are even in time), and the second thread spins on the core frames are read on. The
    crops of a batch are cut in parallel by Python threads instead (frame_loop.update_batch)."""
    import cv2

    cv2.setNumThreads(1)


def frame_readers(model_on_cpu: bool, most: int) -> int:
    """How many threads decode frames ahead of the tracker: `most`, but with the model on the
    CPU only as many as the cores torch's threads leave free (at least one): a decoder more
    preempts the model's own thread. On 2 cores, the demo model at 336 px with 1 torch thread
    ran at 0.78 of its rate alone with 4 readers and 0.95 with 1 (one stream of 1080p JPEGs;
    one reader decodes a frame in ~7 ms, faster than the model answers)."""
    if not model_on_cpu:
        return most
    import torch

    return max(1, min(most, (os.cpu_count() or 1) - torch.get_num_threads()))
