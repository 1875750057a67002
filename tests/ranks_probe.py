"""Run a training script's main() (under torchrun) and, when it saves its final model,
also write this rank's trainable weights to OUT/rank<N>.safetensors, so a test can check
that every rank ended with the same weights. With PROBE_KILL=RANK:STEP in the environment,
that rank kills itself (SIGKILL) at the end of that step, before any checkpoint of it."""
import importlib
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save_file  # noqa: E402

import training  # noqa: E402

script = importlib.import_module(Path(sys.argv[1]).stem)
original_save_final = training.save_final


def save_final_and_probe(out, raw, model, processor, settings, dist, **kwargs):
    # a sharded weight is gathered whole (a collective: every rank, in the same order)
    weights = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().contiguous()
               for n, p in raw.named_parameters() if p.requires_grad}
    save_file(weights, Path(out) / f"rank{dist.rank}.safetensors")
    return original_save_final(out, raw, model, processor, settings, dist, **kwargs)


training.save_final = save_final_and_probe
original_after_step = training.after_step


def after_step_or_die(step, total_steps, stop, save, args, dist, bar):
    rank, at_step = (int(v) for v in os.environ.get("PROBE_KILL", "-1:-1").split(":"))
    if dist.rank == rank and step == at_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return original_after_step(step, total_steps, stop, save, args, dist, bar)


training.after_step = after_step_or_die
sys.exit(script.main(sys.argv[2:]))
