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

TRAIN_RUNS = "train"
STUDY_FILE = "study.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"


def trial_dirname(trial: object) -> str:
    """Tune's folder for a trial: ``trial_<id>`` (its Train run is ``train/trial-<id>``)."""
    return f"trial_{trial.trial_id}"  # type: ignore[attr-defined]


def train_run_name(trial_id: str) -> str:
    """The Ray Train run name of a Tune trial: stable across restarts, no timestamp."""
    return f"trial-{trial_id}"


def checkpoints(run_dir: str | Path) -> list[tuple[Path, dict]]:
    """(checkpoint folder, its metrics row) for every complete checkpoint of a Train run, by epoch."""
    found = []
    for folder in Path(run_dir).glob("checkpoint_*"):
        metrics_file = folder / METRICS_FILE
        if (folder / CHECKPOINT_FILE).is_file() and metrics_file.is_file():
            found.append((folder, json.loads(metrics_file.read_text())))
    return sorted(found, key=lambda item: item[1]["epoch"])


def best_checkpoint(run_dir: str | Path, metric: str = "val_miou", max_epoch: int | None = None) -> Path | None:
    """The checkpoint file with the highest ``metric`` in a Train run (earliest wins a tie), or None.

    ``max_epoch`` ignores checkpoints a worker wrote after Tune had already stopped the trial.
    """
    kept = [item for item in checkpoints(run_dir) if max_epoch is None or item[1]["epoch"] <= max_epoch]
    if not kept:
        return None
    folder, _ = max(kept, key=lambda item: (item[1][metric], -item[1]["epoch"]))
    return folder / CHECKPOINT_FILE


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    kept = checkpoints(run_dir)
    return kept[-1][0] / CHECKPOINT_FILE if kept else None
