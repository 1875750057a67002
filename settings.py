"""Tracking settings and where they come from: the r1track.json saved with every checkpoint
(so a tracker asks the question its model was trained on), the built-in settings of the
published R1-Track models, the defaults of each base, the hub, and the flags that override them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bases import BOX_CONVENTIONS, RELATIVE_RANGE, Base
from cli import UserError, first_line, write_atomic
from prompts import QUESTIONS, WORDINGS

# How a tracker cuts its crops, asks and reads the answers (TrackSettings.loop):
# - "published": the published inference loop detail by detail: crops cut and resized as
#   OpenCV does (no antialiasing), sent through a JPEG quality-95 round trip, the question as
#   the published client sent it, strict JSON answers, the frame-edge rule. The published
#   checkpoints were trained on such crops and scored this way.
# - "lenient": antialiased crops without JPEG, the README's question, the first [a,b,c,d]
#   anywhere in the answer, no frame-edge rule (a box may follow the target up to the border).
LOOPS = ("published", "lenient")


SETTINGS_FILE = "r1track.json"


class LoadError(UserError):
    """A model, adapter or settings file that cannot be used as it is: said in one line,
    never replaced by defaults or random weights."""


@dataclass
class TrackSettings:
    """How a tracker asks its model: the published defaults (Qwen2.5-VL's); default_settings
    gives another base's. `boxes`: how a box crosses the model boundary (bases.BOX_CONVENTIONS),
    which is its base's."""

    wording: str = "seed"
    think: bool = False
    crop_size: int = 336
    template_factor: float = 4.0
    search_factor: float = 4.0
    loop: str = "published"
    boxes: str = "pixels"
    lost_below: float | None = None  # fitted to this model (eval_got10k.py --fit-lost-below); None: LOST_BELOW
    memory: bool = False  # trained on three-image questions: template, a recent look of the target, search

    def save(self, folder) -> None:
        write_atomic(Path(folder) / SETTINGS_FILE, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @property
    def asks_as_client(self) -> bool:
        """Whether a tracker words its questions as the published inference client did."""
        return self.loop == "published"

    def describe(self) -> str:
        boxes = "crop pixels" if self.boxes == "pixels" else f"0-{RELATIVE_RANGE} of the crop"
        return (f"wording {self.wording}, think {'on' if self.think else 'off'}, {self.crop_size}-px crops, "
                f"template/search factors {self.template_factor:g}/{self.search_factor:g}, loop {self.loop}, "
                f"boxes in {boxes}" + (f", lost below {self.lost_below:.3f}" if self.lost_below is not None else "")
                + (", with a memory frame" if self.memory else ""))

    def problem_with(self, base: Base, image_processor=None):
        """Why these settings cannot track with a model of `base` (None when they can): a box
        convention that is not the base's, or a crop its image processor would resize."""
        if self.boxes != base.boxes:
            return (f"its tracking settings write boxes in {self.boxes} but {base.name} grounds in {base.boxes} "
                    f"coordinates (a {SETTINGS_FILE} for another base?)")
        return base.crop_size_problem(self.crop_size, image_processor)

    @classmethod
    def from_dict(cls, values: dict) -> "TrackSettings":
        if not isinstance(values, dict):
            raise ValueError("tracking settings are a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown tracking settings {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        # a file from before loops existed: its model was trained on antialiased crops, the lenient
        # loop's; one from before bases were a choice: a Qwen2.5-VL model's, boxes in pixels
        settings = cls(**{"loop": "lenient", **values})
        if settings.wording not in QUESTIONS:
            raise ValueError(f"unknown wording {settings.wording!r}; choose one of {', '.join(WORDINGS)}")
        if settings.loop not in LOOPS:
            raise ValueError(f"unknown loop {settings.loop!r}; choose one of {', '.join(LOOPS)}")
        if settings.boxes not in BOX_CONVENTIONS:
            raise ValueError(f"unknown boxes {settings.boxes!r}; choose one of {', '.join(BOX_CONVENTIONS)}")
        if not isinstance(settings.think, bool):
            raise ValueError(f"think is true or false, not {settings.think!r}")
        if not (isinstance(settings.crop_size, int) and settings.crop_size >= 28):
            raise ValueError(f"crop_size is a whole number of pixels (at least 28), not {settings.crop_size!r}")
        lost = settings.lost_below
        if lost is not None and (isinstance(lost, bool) or not isinstance(lost, (int, float)) or not 0 <= lost <= 1):
            raise ValueError(f"lost_below is a confidence between 0 and 1 (or null), not {lost!r}")
        for factor in (settings.template_factor, settings.search_factor):
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
                raise ValueError(f"crop factors are positive numbers, not {factor!r}")
        return settings


PUBLISHED_SETTINGS = {
    "WangBiao/R1-Track-SFT": TrackSettings(),
    "WangBiao/R1-Track-SFT-5k-lora": TrackSettings(),
    "WangBiao/R1-Track-GRPO-5k": TrackSettings(think=True),
    "WangBiao/R1-Track-GRPO-wo-Think-5k": TrackSettings(),
    "WangBiao/R1-Track-SFT-100k-lora": TrackSettings(wording="r1track-100k"),
    "WangBiao/R1-Track-GRPO-wo-Think-100k": TrackSettings(wording="r1track-100k"),
}


DEFAULT_MODEL = "WangBiao/R1-Track-GRPO-wo-Think-100k"


DEMO_MODEL = Path(__file__).resolve().parent / "demo_model"  # made by tools/make_demo_model.py; ships with the project


def default_settings(base: Base) -> TrackSettings:
    """The settings a model of `base` tracks with when it has none of its own: the published
    ones, with the base's crop size and box convention."""
    return TrackSettings(crop_size=base.crop_size, boxes=base.boxes)


def hub_file(repo_id: str, filename: str):
    """The local path of one file of a hub repository, downloaded if need be, or None when
    the repository has no such file. Offline (HF_HUB_OFFLINE=1): what the local copy of the
    repository has. LoadError for everything else: no such repository, no access, no
    network, nothing of it cached while offline."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        if constants.HF_HUB_OFFLINE:
            cached = try_to_load_from_cache(repo_id, filename)
            if isinstance(cached, str):
                return Path(cached)
            # without the file: known absent, or a local copy of the repository (a model or an adapter) lacks it
            if cached is not None or any(isinstance(try_to_load_from_cache(repo_id, name), str)
                                         for name in ("config.json", "adapter_config.json")):
                return None
            raise LoadError(f"{repo_id} is not in the local hub cache and the hub may not be asked "
                            f"(HF_HUB_OFFLINE=1): cannot tell whether it has {filename}")
        return Path(hf_hub_download(repo_id, filename))
    except LoadError:
        raise
    except LocalEntryNotFoundError:
        raise LoadError(f"cannot reach the Hugging Face hub for {filename} of {repo_id}, and no copy is cached "
                        "(set HF_HUB_OFFLINE=1 to use only local copies)") from None
    except EntryNotFoundError:
        return None
    except (OSError, ValueError) as error:  # no such repository, no access, a bad id, the network
        raise LoadError(f"cannot read {filename} of {repo_id}: {first_line(error)}") from None


def read_settings(name_or_path: str):
    """The tracking settings saved with a checkpoint: its r1track.json (in a folder, the file
    itself, or on the hub), or the built-in settings of a published R1-Track id; None when
    the checkpoint has none. LoadError when they exist but cannot be read."""
    path = Path(name_or_path)
    if path.is_dir() and (path / SETTINGS_FILE).is_file():
        path = path / SETTINGS_FILE
    elif name_or_path in PUBLISHED_SETTINGS:
        return dataclasses.replace(PUBLISHED_SETTINGS[name_or_path])
    elif path.is_dir():
        return None
    elif not path.is_file():
        if path.is_absolute() or name_or_path.startswith((".", "~")) or path.suffix == ".json":
            raise LoadError(f"{name_or_path}: no such file or folder")
        path = hub_file(name_or_path, SETTINGS_FILE)
        if path is None:
            return None
    try:
        return TrackSettings.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise LoadError(f"{path}: not valid tracking settings ({first_line(error)})") from None


def load_settings(name_or_path: str, base: Base | None = None) -> TrackSettings:
    """read_settings, or the defaults of `base` (default: the published ones) when the
    checkpoint has no settings, which is said on stderr (the model may have been trained for
    another question)."""
    settings = read_settings(name_or_path)
    if settings is None:
        settings = default_settings(base) if base is not None else TrackSettings()
        say_default_settings(name_or_path, settings)
    return settings


def say_default_settings(name, settings: TrackSettings) -> None:
    print(f"note: {name} has no {SETTINGS_FILE}; tracking with the default settings ({settings.describe()})",
          file=sys.stderr)


def add_settings_args(parser) -> None:
    """The flags of the tracking scripts that choose or override the tracking settings."""
    parser.add_argument("--settings", help="where the tracking settings (wording, think, crop size, loop, box "
                        "convention) come from: "
                        "a checkpoint folder, a hub id or an r1track.json (default: the model's own; with --server, "
                        "those of the served model's name)")
    parser.add_argument("--loop", choices=LOOPS, help="published: crops, JPEG, question, answer parsing and frame-edge "
                        "rule as the published inference script; lenient: antialiased crops, lenient parsing, no "
                        "edge rule (default: as the settings say)")
    parser.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                        help="ask for reasoning before the answer (default: as the settings say)")
