"""Find things in a study's storage folder by reading files only (no Ray, no running cluster).

Layout (``STORAGE/NAME``):
  <tune trial folders>/          Ray Tune's own: params.json, result.json, progress.csv per trial
  train/<run>/checkpoint_*/      Ray Train runs (one per trial: ``trial-<trial_id>``; plus pretraining)
      checkpoint.pt              model weights + resumable state (segstudy format, torch.load weights_only)
      metrics.json               the validation row this checkpoint was saved at
      history.csv                every validation row of the run up to this checkpoint
  pretrained/<model>_encoder.pt  encoders from the Cityscapes stage
  summary.csv                    one row per trial
  study.json                     the study's settings (preset, space, epochs, data root, ...)
"""

from __future__ import annotations

import json
from pathlib import Path

from study import storage

TRAIN_RUNS = "train"
STUDY_FILE = "study.json"
SUMMARY_FILE = "summary.csv"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"


def trial_dirname(trial: object) -> str:
    """Tune's folder for a trial: ``trial_<id>`` (its Train run is ``train/trial-<id>``)."""
    return f"trial_{trial.trial_id}"  # type: ignore[attr-defined]


def train_run_name(trial_id: str) -> str:
    """The Ray Train run name of a Tune trial: stable across restarts, no timestamp."""
    return f"trial-{trial_id}"


def checkpoints(run_dir: str | Path, with_weights: bool = True) -> list[tuple[str | Path, dict]]:
    """(checkpoint folder, its metrics row) for every complete checkpoint of a Train run, by epoch.

    ``run_dir`` may be a storage URI (folders are then URIs too). ``with_weights=False`` also
    counts folders whose ``checkpoint.pt`` is absent (a mirror that left the weights behind).
    """
    if storage.is_remote(run_dir):
        files = set(storage.list_files(run_dir))
        folders = sorted({f.split("/", 1)[0] for f in files if f.startswith("checkpoint_")})
        found = [(storage.join(run_dir, d), json.loads(storage.read_bytes(storage.join(run_dir, d, METRICS_FILE))))
                 for d in folders
                 if f"{d}/{METRICS_FILE}" in files and (not with_weights or f"{d}/{CHECKPOINT_FILE}" in files)]
    else:
        found = []
        for folder in Path(run_dir).glob("checkpoint_*"):
            metrics_file = folder / METRICS_FILE
            if metrics_file.is_file() and (not with_weights or (folder / CHECKPOINT_FILE).is_file()):
                found.append((folder, json.loads(metrics_file.read_text())))
    return sorted(found, key=lambda item: item[1]["epoch"])


def best_checkpoint(run_dir: str | Path, metric: str = "val_miou", max_epoch: int | None = None,
                    with_weights: bool = True) -> str | Path | None:
    """The checkpoint file with the highest ``metric`` in a Train run (earliest wins a tie), or None.

    ``max_epoch`` ignores checkpoints a worker wrote after Tune had already stopped the trial.
    """
    kept = [item for item in checkpoints(run_dir, with_weights)
            if max_epoch is None or item[1]["epoch"] <= max_epoch]
    if not kept:
        return None
    folder, _ = max(kept, key=lambda item: (item[1][metric], -item[1]["epoch"]))
    return _file(folder, CHECKPOINT_FILE)


def latest_checkpoint(run_dir: str | Path) -> str | Path | None:
    kept = checkpoints(run_dir)
    return _file(kept[-1][0], CHECKPOINT_FILE) if kept else None


def _file(folder: str | Path, name: str) -> str | Path:
    return storage.join(folder, name) if storage.is_remote(folder) else Path(folder) / name
