"""What every way of running a trial shares, without Ray: its splits, its model, its checkpoint format.

``study.run_trial`` (one local trial), both Ray runners (``study.orchestrate.runners``) and the tests
import these, so a checkpoint written by any of them reads the same everywhere.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import tempfile
import traceback
from pathlib import Path
from typing import Any

from foundation import storage
from foundation.errors import UsageError
from foundation.io import atomic_torch_save, load_checkpoint, write_csv, write_json
from segmodels import SegModel, build_model
from study.config import SEARCHABLE, TrainConfig
from study.data import Labels, Layout, SegDataset, build_dataset
from study.layout import CHECKPOINT_FILE, HISTORY_FILE, METRICS_FILE, error_file
from study.loop import METRIC_COLUMNS, ValidationEvent, seed_everything

MODEL_FORMAT = "segstudy-model/1"
# Errors that a retry cannot fix (bad options, bad data, missing weights): a trial that raises one ends at once.
PERMANENT_ERRORS = (UsageError,)


@functools.lru_cache(maxsize=8)
def _split(dataset: str, split: str, root: str, size: tuple[int, int], cache_dir: str | None,
           download: bool, labels: Labels, layout: Layout | None = None) -> SegDataset:
    return build_dataset(dataset, split, root, size, cache_dir=cache_dir, download=download, labels=labels,
                         layout=layout or Layout())


def split_layouts(cfg: TrainConfig) -> tuple[Layout, Layout]:
    """How the train and the evaluated (val, test) splits are stored for ``cfg``'s recipe: train at the base scale
    (when set, for ``study.augment``); val/test at the test scale (the base scale, else ``image_size``), with the
    labels also at their original resolution for ``eval_at`` original."""
    base = tuple(cfg.base_size) if cfg.base_size else None
    return Layout(base), Layout(base, cfg.eval_at == "original")


def load_splits(cfg: TrainConfig, download: bool = False) -> tuple[SegDataset, SegDataset]:
    """Train and val splits of ``cfg.dataset`` (validated and cached on first use), stored as ``split_layouts``.

    Kept in memory for the life of the process: a Ray Tune actor reused for the next trial
    (``reuse_actors=True``) does not decode or even re-read them.
    """
    key = (cfg.dataset, cfg.data_root, tuple(cfg.image_size), cfg.cache_dir)
    labels = Labels.of(cfg)
    train_layout, eval_layout = split_layouts(cfg)
    return (_split(key[0], "train", *key[1:], download, labels, train_layout),
            _split(key[0], "val", *key[1:], False, labels, eval_layout))


def build_trial_model(cfg: TrainConfig, num_classes: int) -> SegModel:
    pretrained = cfg.pretrained
    if pretrained and storage.is_remote(pretrained) and cfg.init != "scratch":
        pretrained = str(storage.local_copy(pretrained, cfg.cache_dir))  # e.g. the study's encoder on s3://
    seed_everything(cfg.seed)
    return build_model(cfg.model, num_classes, cfg.init, pretrained, cfg.variant, class_names=cfg.classes)


def model_checkpoint(cfg: TrainConfig, event: ValidationEvent, class_names: tuple[str, ...]) -> dict[str, Any]:
    """What ``best.pt`` holds: enough to rebuild and evaluate the model without the run folder."""
    return {
        "format": MODEL_FORMAT,
        "config": cfg.to_dict(),
        "class_names": list(class_names),
        "epoch": event.row["epoch"],
        "val_miou": event.row["val_miou"],
        "model_state": {k: v.detach().cpu() for k, v in event.model.state_dict().items()},
    }


def write_checkpoint_dir(folder: str | Path, cfg: TrainConfig, event: ValidationEvent, class_names: tuple[str, ...],
                         metrics: dict[str, Any], history: list[dict[str, Any]]) -> Path:
    """A Ray checkpoint folder: ``checkpoint.pt`` (model + resumable state), ``metrics.json``, ``history.csv``."""
    folder = Path(folder)
    atomic_torch_save({**model_checkpoint(cfg, event, class_names), **event.checkpoint()}, folder / CHECKPOINT_FILE)
    write_json(folder / METRICS_FILE, metrics)
    write_csv(folder / HISTORY_FILE, history, METRIC_COLUMNS)
    return folder


def read_checkpoint_dir(folder: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(resumable state, validation history) from a folder written by ``write_checkpoint_dir``."""
    folder = Path(folder)
    with open(folder / HISTORY_FILE, newline="") as f:
        history = list(csv.DictReader(f))
    return load_checkpoint(folder / CHECKPOINT_FILE), history


def new_checkpoint_dir() -> Path:
    """A fresh local folder for one checkpoint (Ray moves or deletes it once persisted)."""
    return Path(tempfile.mkdtemp(prefix="segstudy-checkpoint-"))


def trial_config(params: dict[str, Any], base: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a Tune trial: the study's shared fields, overridden by each searched field
    (``SEARCHABLE``) the trial was given."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    searched = {key: _as_field(defaults[key], params[key]) for key in SEARCHABLE if key in params}
    per_model = ("pretrained_by_model", "memory_share_by_model")  # the study's per-model values, not fields
    fixed = {k: v for k, v in base.items() if k not in per_model}
    merged = {**fixed, **searched}
    model, init = merged.get("model", defaults["model"]), merged.get("init", defaults["init"])
    pretrained = base.get("pretrained_by_model", {}).get(model) if init != "scratch" else None
    share = base.get("memory_share_by_model", {}).get(model, merged.get("device_memory_share", 1.0))
    seed = int(params.get("seed", fixed.get("seed", 0)))
    return TrainConfig.from_dict({**merged, "seed": seed, "pretrained": pretrained, "device_memory_share": share})


def _as_field(default: Any, value: Any) -> Any:
    """A sampled value as the field's type: Tune's randint gives numpy integers, a choice may give 1 for 1.0."""
    value = value.item() if hasattr(value, "item") else value
    return float(value) if isinstance(default, float) and isinstance(value, (int, float)) else value


def record_permanent_error(experiment: str, trial_id: str, exc: BaseException) -> str:
    """Write ``errors/<trial_id>.txt`` (the one-line message, then the traceback) and return the message."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = message + "\n\n" + "".join(traceback.format_exception(exc))
    storage.write_bytes(error_file(experiment, trial_id), text.encode())
    return message
