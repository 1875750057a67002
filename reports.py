"""What a training run tells the people who watch it and use its model: metrics.jsonl and
curves.png in --out; the same scalars live in TensorBoard, W&B or trackio (--report-to, each
through its own library, installed apart: requirements-reports.txt); a model card (README.md)
in every saved model folder and checkpoint; --push-to-hub once the final model is on disk.
Rank 0 writes all of it.

A resumed run is the same run: metrics.jsonl and TensorBoard drop what came after the
checkpoint (the steps are redone), W&B and trackio continue their run and take the steps
they do not hold yet.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

from cli import UserError, first_line, write_atomic

# --report-to's names, each with the package to install for it
REPORTERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}

# flags that change what a run tells, not what it computes: free to change on --resume
PLUMBING = {"report_to", "run_name", "project", "push_to_hub", "hub_private"}

IDS_FILE = "report_ids.json"  # the run's name and W&B id, so that --resume continues that run


def add_report_args(parser):
    group = parser.add_argument_group("reports")
    group.add_argument("--report-to", nargs="+", default=["none"], choices=["none", *REPORTERS], metavar="NAME",
                       help="where the metrics go live besides metrics.jsonl and curves.png: none, tensorboard "
                       "(OUT/runs), wandb (honours WANDB_MODE=offline and the other WANDB_ variables), trackio; "
                       "several allowed (default: none)")
    group.add_argument("--run-name", default=None, help="the run's name in W&B and trackio (default: WANDB_NAME, "
                       "else --out's folder name and the time the run started)")
    group.add_argument("--project", default=None, help="the W&B and trackio project (default: WANDB_PROJECT, "
                       "else r1track)")
    group.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                       help="upload the final model (with its card, metrics and TensorBoard logs) to this Hugging "
                       "Face model repository once it is saved; needs a token (hf auth login, or HF_TOKEN)")
    group.add_argument("--hub-private", action="store_true", help="with --push-to-hub: create the repository private")


def check_report_args(parser, args):
    """Refusals before a run starts: a reporter whose package is missing, contradictory flags."""
    if "none" in args.report_to and len(args.report_to) > 1:
        parser.error("--report-to none goes alone")
    for name in args.report_to:
        package = REPORTERS.get(name)
        if package and importlib.util.find_spec(package) is None:
            parser.error(f"--report-to {name} needs the {package} package: pip install {package} "
                         "(or pip install -r requirements-reports.txt)")
    if args.hub_private and not args.push_to_hub:
        parser.error("--hub-private goes with --push-to-hub")
    if args.push_to_hub and args.no_save:
        parser.error("--push-to-hub uploads the saved model; it cannot go with --no-save")
    base = adapter_base(args)
    if args.push_to_hub and base is not None and Path(base).exists() and not args.merge_lora:
        parser.error(f"--push-to-hub: this run's adapter goes on the local model {base}, which the hub does not "
                     "have; add --merge-lora to push the merged full model instead")


def adapter_base(args) -> str | None:
    """What the run's saved adapter goes on (None: the run saves full weights): the model it
    started from (SFT's --model, GRPO's --init), or with --continue-adapter that adapter's base."""
    if args.full:
        return None
    start = str(getattr(args, "init", None) or args.model)
    config = Path(start) / "adapter_config.json"
    if getattr(args, "continue_adapter", False) and config.is_file():
        return (json_or_none(config.read_text()) or {}).get("base_model_name_or_path") or start
    return start


def pushed_folder(args) -> Path:
    """What --push-to-hub uploads: OUT, or OUT/merged when the adapter goes on a local model."""
    base = adapter_base(args)
    return Path(args.out) / "merged" if base is not None and Path(base).exists() else Path(args.out)


def json_or_none(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def scalars_of(record: dict) -> dict:
    return {key: value for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


class Report:
    """metrics.jsonl (one JSON object per line), curves.png beside it and the live reporters.
    curves.png is redrawn when asked, but only once PLOT_SHARE of the time since the last
    drawing covers what drawing took (a dozen panels take about a second), so plotting
    costs at most that share of a run; `plot(final=True)` always draws. `latest` holds the
    last value of every scalar, for the model card."""

    PLOT_SHARE = 0.02

    def __init__(self, out: Path, dist, args=None, resume_step=0, kind="sft", total_steps=None, settings=None,
                 base=None):
        self.path, self.main, self.args = Path(out) / "metrics.jsonl", dist.main, args
        self.kind, self.total_steps, self.settings, self.base = kind, total_steps, settings, base
        self.drawn_at, self.drawing_seconds = None, 0.0
        self.latest, self.reporters = {}, []
        if not self.main:
            return
        if self.path.exists():
            # a resumed run redoes the steps after its checkpoint: drop their old lines (and a line a
            # kill cut short)
            records = [parsed for parsed in map(json_or_none, self.path.read_text().splitlines()) if parsed]
            kept = [record for record in records if record.get("step", 0) <= resume_step]
            write_atomic(self.path, "".join(json.dumps(record) + "\n" for record in kept))
            for record in kept:
                self.latest.update(scalars_of(record))
        names = [name for name in (args.report_to if args is not None else []) if name != "none"]
        if names:
            ids_file = Path(out) / IDS_FILE
            ids = (json_or_none(ids_file.read_text()) or {}) if resume_step and ids_file.exists() else {}
            # W&B and trackio continue a run by its name or id: a new run gets a name of its own
            ids["name"] = args.run_name or os.environ.get("WANDB_NAME") or ids.get("name") or \
                f"{Path(out).resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"
            opening = {"tensorboard": TensorBoard, "wandb": WandB, "trackio": Trackio}
            self.reporters = [opening[name](Path(out), args, resume_step, ids) for name in names]
            write_atomic(ids_file, json.dumps(ids) + "\n")

    def log(self, record: dict):
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = scalars_of(record)
        self.latest.update(scalars)
        for reporter in self.reporters:
            reporter.log(scalars, record["step"])

    def plot(self, final=False):
        if not self.main or not self.path.exists():
            return
        now = time.perf_counter()
        if not final and self.drawn_at is not None and \
                (now - self.drawn_at) * self.PLOT_SHARE < self.drawing_seconds:
            return
        plot_metrics(self.path, self.path.with_name("curves.png"))
        self.drawn_at = time.perf_counter()
        self.drawing_seconds = self.drawn_at - now

    def card(self, step: int, folder: Path, merged=False):
        """The model card of the model saved at `step` in `folder` (merged: OUT/merged, full
        weights); None on the ranks that write no card."""
        if not self.main:
            return None
        return model_card(self.args, self.kind, step, self.total_steps, self.latest, folder, merged=merged,
                          settings=self.settings, base=self.base)

    def finish(self):
        """The last drawing, and the live runs closed (their last values sent)."""
        self.plot(final=True)
        for reporter in self.reporters:
            reporter.close()
        self.reporters = []


def plot_metrics(metrics_file: Path, png: Path):
    """One panel per logged quantity against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list, list]] = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        for key, value in scalars_of(record).items():
            xs, ys = series.setdefault(key, ([], []))
            xs.append(record["step"])
            ys.append(value)
    if not series:
        return
    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.8 * rows), squeeze=False)
    for ax, (key, (xs, ys)) in zip(axes.flat, series.items()):
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)


# -----------------------------------------------------------------------------
# Live reporters: each its own library's API; log(scalars, step) and close()


def run_config(args) -> dict:
    """The run's arguments as plain JSON values."""
    return json.loads(json.dumps(vars(args), default=str))


def project_name(args) -> str:
    return args.project or os.environ.get("WANDB_PROJECT") or "r1track"


class TensorBoard:
    """OUT/runs, where transformers' Trainer writes its events and where the hub looks for
    them. A resumed run purges the events after its checkpoint (TensorBoard hides them)."""

    def __init__(self, out: Path, args, resume_step: int, ids: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "runs"), purge_step=resume_step + 1 if resume_step else None)
        if not resume_step:
            self.writer.add_text("arguments", "```\n" + json.dumps(run_config(args), indent=2) + "\n```", 0)

    def log(self, scalars: dict, step: int):
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # watched live: on disk now, not in two minutes

    def close(self):
        self.writer.close()


class HeldSteps:
    """A tracker that continues a resumed run holds the steps it was sent before the run
    stopped: those are not sent again (the resumed run computes them alike), and it is said.
    `held` is the first step it does not hold, read when the run is opened."""

    held, said = 0, False

    def take(self, step: int) -> bool:
        if step >= self.held:
            return True
        if not self.said:
            self.said = True
            print(f"{type(self).__name__}: the run already holds steps up to {self.held - 1}; the steps redone "
                  "after the checkpoint are sent from there on", file=sys.stderr)
        return False


class WandB(HeldSteps):
    def __init__(self, out: Path, args, resume_step: int, ids: dict):
        import wandb

        run_id = ids.get("wandb") if resume_step else None
        # WANDB_MODE, WANDB_ENTITY, WANDB_DIR, WANDB_TAGS ... are read by wandb itself
        self.run = wandb.init(project=project_name(args), name=ids["name"], id=run_id,
                              resume="allow" if run_id else None, dir=os.environ.get("WANDB_DIR") or str(out),
                              config=run_config(args))
        ids["wandb"] = self.run.id
        self.held = self.run.step  # 0 for a new run; offline, W&B knows no earlier steps

    def log(self, scalars: dict, step: int):
        if self.take(step):
            self.run.log(scalars, step=step)

    def close(self):
        self.run.finish()


class Trackio(HeldSteps):
    """trackio's local database (TRACKIO_DIR, default ~/.cache/huggingface/trackio), or a
    Space with TRACKIO_SPACE_ID; `trackio show` opens its dashboard."""

    def __init__(self, out: Path, args, resume_step: int, ids: dict):
        import trackio

        self.run = trackio.init(project=project_name(args), name=ids["name"], config=run_config(args),
                                resume="allow" if resume_step else "never", embed=False)
        self.held = getattr(self.run, "_next_step", 0)  # where trackio counts from when no step is given

    def log(self, scalars: dict, step: int):
        if self.take(step):
            self.run.log(scalars, step=step)

    def close(self):
        self.run.finish()


# -----------------------------------------------------------------------------
# The model card and the hub


def card_of(name_or_path: str):
    """The model card of a local folder, or of a hub model already in the local cache; None
    when there is none (no network is asked: a card is written at every checkpoint)."""
    from huggingface_hub import ModelCard, try_to_load_from_cache

    path = Path(name_or_path) / "README.md"
    if not path.is_file():
        try:
            cached = try_to_load_from_cache(name_or_path, "README.md")
        except Exception:  # not a repository id
            cached = None
        path = Path(cached) if isinstance(cached, str) else None
    if path is None:
        return None
    try:
        return ModelCard.load(path)
    except Exception:
        return None


def lineage(start: str, base) -> tuple[str | None, dict, str]:
    """(the hub model it comes from, that model's licence fields, how to say where it starts).
    A local folder made by these trainers names its own base in its card; a hub model without a
    card here has its family's licence (bases.Base.licence_of)."""
    card = card_of(start)
    data = card.data.to_dict() if card is not None else {}
    licence = {key: data[key] for key in ("license", "license_name", "license_link") if data.get(key)}
    if Path(start).exists():
        hub = data.get("base_model")
        hub = hub[0] if isinstance(hub, list) and hub else hub
        said = f"the local model `{start}`" + (f" (itself from [{hub}](https://huggingface.co/{hub}))" if hub else "")
    else:
        hub, said = start, f"[{start}](https://huggingface.co/{start})"
    return hub, licence or (base.licence_of(hub) if hub else {}), said


def model_card(args, kind: str, step: int, total_steps: int, latest: dict, folder: Path, *, settings, base,
               merged=False):
    """The card of a model of `base` (bases.py) these trainers save in `folder` (`kind`: "sft"
    or "grpo"; merged: the adapter folded into its base), as huggingface_hub writes one:
    metadata (base model, library, pipeline, tags, data, licence) and what a user needs: what
    it is, how it was trained, its last metrics, how to track with it."""
    from huggingface_hub import ModelCard, ModelCardData

    from data import HUB_DATASETS

    start = str(args.init if kind == "grpo" else args.model)
    hub_base, licence, start_said = lineage(start, base)
    adapter_on = None if merged else adapter_base(args)
    # an adapter goes on the model it names; one on a local model is not a hub model's adapter
    on_local = adapter_on is not None and Path(adapter_on).exists()
    specs = args.data if isinstance(args.data, list) else [args.data]
    datasets = [HUB_DATASETS[spec] for spec in specs if spec in HUB_DATASETS]
    data = " + ".join(f"`{HUB_DATASETS.get(spec, spec)}`" for spec in specs)
    if len(specs) > 1:
        data += f" (mixed by weights {' '.join(f'{w:g}' for w in args.data_weights or [1] * len(specs))})"
    pushed = args.push_to_hub and Path(folder).resolve() == pushed_folder(args).resolve()
    where = args.push_to_hub if pushed else str(Path(folder).resolve())
    method = ("supervised fine-tuning on tracking pairs" if kind == "sft" else
              "reinforcement fine-tuning (GRPO: group-sampled answers, format and IoU rewards, a KL term to the "
              "starting model)")
    if adapter_on is None:
        weights = "full weights" + (" (a LoRA adapter folded into the model it went on)" if merged else "")
        loading = f"with plain transformers the folder loads as any {base.name} model"
    elif on_local:
        weights = f"a LoRA adapter (rank {args.lora_rank}) on the local model `{adapter_on}`"
        loading = (f"the adapter needs `{adapter_on}` where it was: to use the model elsewhere, save it merged "
                   "(`--merge-lora`: OUT/merged, full weights)")
    else:
        weights = f"a LoRA adapter (rank {args.lora_rank}) on [{adapter_on}](https://huggingface.co/{adapter_on})"
        loading = f"with peft the adapter goes on `{adapter_on}` (r1track.load_model also follows a chain of adapters)"
    card_data = ModelCardData(
        base_model=None if on_local else hub_base, library_name="transformers" if adapter_on is None else "peft",
        pipeline_tag="image-text-to-text",
        tags=["r1-track", "visual-object-tracking", base.model_type, kind, *([] if adapter_on is None else ["lora"])],
        datasets=datasets or None, **licence)
    flags = "\n".join(f"| `--{key.replace('_', '-')}` | `{value}` |" for key, value in sorted(run_config(args).items())
                      if value is not None and value is not False and value != [] and key not in PLUMBING
                      and not (kind == "grpo" and key == "model"))  # GRPO starts from --init
    results = "\n".join(f"| {key} | {value:.6g} |" for key, value in latest.items()) or "| (none yet) | |"
    box = "241,66,329,154"
    text = f"""
# {args.run_name or Path(args.out).resolve().name}

An R1-Track single-object tracker: {base.name} reads a template crop around the target with
its box and a search crop around its last position, and answers the target's box in the
search crop as text, `[x1,y1,x2,y2]` ({"in crop pixels" if base.boxes == "pixels" else
"in thousandths of the crop's side, as " + base.name + " grounds"}). This model is {method} of {start_said}, saved as
{weights}, trained {step} of {total_steps} steps on {data}.

Its tracking settings (r1track.json): {settings.describe()}.

## Track with it

```bash
python track.py --video clip.mp4 --box {box} --model {where}
```

```python
import r1track

tracker = r1track.Tracker("{where}")
tracker.init(first_frame, box_xywh)      # a frame (PIL image or RGB array) and the target's x,y,w,h
box_xywh = tracker.update(next_frame)
```

`track.py` and `r1track` come from the R1-Track code that trained it; {loading}.

## Training

| flag | value |
|---|---|
{flags}

## Metrics at step {step}

The last value of each quantity in `metrics.jsonl`:

| metric | value |
|---|---|
{results}
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{text}")


def push_to_hub(folder: Path, repo_id: str, private: bool):
    """The final model folder to a hub model repository, after it is safely on disk: its
    weights, card, settings, metrics and TensorBoard logs; checkpoints, merged copies and W&B's
    local files stay home. A missing token or no network is one line, never a traceback."""
    from huggingface_hub import create_repo, get_token, upload_folder

    if get_token() is None:
        raise UserError(f"--push-to-hub {repo_id}: no Hugging Face token (hf auth login, or HF_TOKEN); the "
                        f"model is saved in {folder}: upload it later with hf upload {repo_id} {folder}")
    try:
        url = create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                      commit_message="Upload an R1-Track model",
                      ignore_patterns=["checkpoint-*", ".*", "merged/*", "wandb/*", IDS_FILE])
    except Exception as error:  # the hub client's errors are many: each said in one line
        raise UserError(f"--push-to-hub {repo_id} failed ({first_line(error)[:200]}); the model is saved in "
                        f"{folder}: upload it later with hf upload {repo_id} {folder}") from None
    print(f"pushed to {url}")
