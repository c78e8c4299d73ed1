"""Where a study's files live in ``STORAGE/NAME``, and finding checkpoints there by reading files only.

No Ray and no running cluster is needed. ``docs/results-layout.md`` describes the layout in full:
  trial_<id>/                    Ray Tune's trial folder: params.json, result.json, progress.csv; with the
                                 Tune runner (one worker per trial) also the trial's checkpoint_*/ folders
  train/<run>/checkpoint_*/      Ray Train runs: trials with the Train runner (``trial-<id>``) and pretraining
      checkpoint.pt              model weights + resumable state (torch.load weights_only)
      metrics.json               the validation row this checkpoint was saved at
      history.csv                every validation row of the run up to this checkpoint
  errors/<trial_id>.txt          a trial ended by an error that retrying cannot fix (first line: the message)
  errors/<trial_id>.last-failure.txt   the last failure Tune retried (a killed worker, a lost node)
  fates/<trial_id>.json          how the trial ended, recorded when it happened (``study.fates``)
  pretrained/<model>_encoder.pt  encoders from the Cityscapes stage
  logs/                          Ray's worker output of this node, copied at the end
  confirm/                       a search's confirm stage: a Tune experiment of its own, laid out as above
  summary.csv, study.json, report/   (summary.csv: the confirm trials when there is a confirm stage;
  search_summary.csv                  then the search's own trials are in search_summary.csv)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from foundation import storage

TRAIN_RUNS = "train"
ERRORS = "errors"
FATES = "fates"
LOGS = "logs"
STUDY_FILE = "study.json"
CLASS_FREQUENCIES_FILE = "class_frequencies.csv"  # each class's pixels and share per split (study.preflight)
SUMMARY_FILE = "summary.csv"
SEARCH_SUMMARY_FILE = "search_summary.csv"
CONFIRM_DIR = "confirm"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
TUNE_RESULT_FILE = "result.json"
TUNE_PARAMS_FILE = "params.json"
TUNE_ERROR_FILE = "error.txt"


def model_slug(model: str) -> str:
    """A model name as one file-name part: ``segformer`` stays, ``hf:/models/x`` becomes ``hf_models_x``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")


def pretrained_encoder_file(experiment: str | Path, model: str) -> str:
    """Where the study's own pretraining stage keeps ``model``'s encoder: ``pretrained/<model>_encoder.pt``."""
    return storage.join(experiment, "pretrained", f"{model_slug(model)}_encoder.pt")


def trial_folder(trial_id: str) -> str:
    """The name of a Tune trial's folder in ``STORAGE/NAME``: ``trial_<id>``."""
    return f"trial_{trial_id}"


def trial_dirname(trial: object) -> str:
    """Tune's ``trial_dirname_creator``: every trial's folder is ``trial_folder(its id)``."""
    return trial_folder(trial.trial_id)  # type: ignore[attr-defined]


def train_run_name(trial_id: str) -> str:
    """The Ray Train run name of a Tune trial: stable across restarts, no timestamp."""
    return f"trial-{trial_id}"


def trial_dir(experiment: str | Path, trial_id: str) -> str:
    return storage.join(experiment, trial_folder(trial_id))


def error_file(experiment: str | Path, trial_id: str) -> str:
    return storage.join(experiment, ERRORS, f"{trial_id}.txt")


def last_failure_file(experiment: str | Path, trial_id: str) -> str:
    return storage.join(experiment, ERRORS, f"{trial_id}.last-failure.txt")


def fate_file(experiment: str | Path, trial_id: str) -> str:
    return storage.join(experiment, FATES, f"{trial_id}.json")


def checkpoints(run_dir: str | Path, with_weights: bool = True) -> list[tuple[str | Path, dict]]:
    """(checkpoint folder, its metrics row) for every complete checkpoint in one folder, by epoch.

    ``run_dir`` may be a storage URI (folders are then URIs too; local ones are Paths).
    ``with_weights=False`` also counts folders whose ``checkpoint.pt`` is absent (a mirror that left
    the weights behind).
    """
    files = set(storage.list_files(run_dir))
    folders = sorted({f.split("/", 1)[0] for f in files if f.startswith("checkpoint_") and "/" in f})
    found = []
    for name in folders:
        if f"{name}/{METRICS_FILE}" in files and (not with_weights or f"{name}/{CHECKPOINT_FILE}" in files):
            folder = storage.join(run_dir, name)
            metrics = json.loads(storage.read_bytes(storage.join(folder, METRICS_FILE)))
            found.append((folder if storage.is_remote(folder) else Path(folder), metrics))
    return sorted(found, key=lambda item: item[1]["epoch"])


def trial_checkpoints(experiment: str | Path, trial_id: str,
                      with_weights: bool = True) -> list[tuple[str | Path, dict]]:
    """Every checkpoint of a Tune trial, whichever runner trained it: the Tune runner keeps them in the
    trial's own folder, the Train runner in ``train/trial-<id>``."""
    found = [*checkpoints(trial_dir(experiment, trial_id), with_weights),
             *checkpoints(storage.join(experiment, TRAIN_RUNS, train_run_name(trial_id)), with_weights)]
    return sorted(found, key=lambda item: item[1]["epoch"])


def best_checkpoint(found: list[tuple[str | Path, dict]], metric: str = "val_miou",
                    max_epoch: int | None = None) -> str | Path | None:
    """The checkpoint file with the highest ``metric`` among ``found`` (earliest wins a tie), or None.

    ``max_epoch`` ignores checkpoints written after Tune had already stopped the trial (a Train
    worker can save one more before the stop reaches it).
    """
    kept = [item for item in found if max_epoch is None or item[1]["epoch"] <= max_epoch]
    if not kept:
        return None
    folder, _ = max(kept, key=lambda item: (item[1][metric], -item[1]["epoch"]))
    return storage.join(folder, CHECKPOINT_FILE) if storage.is_remote(folder) else Path(folder) / CHECKPOINT_FILE


def tune_params(experiment: str | Path, trial_id: str) -> dict:
    """The configuration Tune gave a trial (``params.json``); {} before Tune wrote it."""
    path = storage.join(trial_dir(experiment, trial_id), TUNE_PARAMS_FILE)
    return json.loads(storage.read_bytes(path)) if storage.is_file(path) else {}


def tune_results(experiment: str | Path, trial_id: str) -> list[dict]:
    """The rows Tune recorded for a trial (``result.json``; a line still being written is skipped)."""
    path = storage.join(trial_dir(experiment, trial_id), TUNE_RESULT_FILE)
    try:
        text = storage.read_bytes(path).decode()
    except OSError:  # not written yet (FileNotFoundError), or unreadable
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def last_recorded_epoch(experiment: str | Path, trial_id: str) -> int:
    """The last epoch in a trial's ``result.json`` (0 before Tune has recorded any)."""
    return max((row["epoch"] for row in tune_results(experiment, trial_id) if "epoch" in row), default=0)


def best_trial_checkpoint(experiment: str | Path, trial_id: str, with_weights: bool = True,
                          epochs_seen: int | None = None) -> str | Path | None:
    """A trial's best checkpoint within the epochs Tune saw: the one answer the summary and the analysis use,
    for either runner (a resumed trial continues from ``recorded_checkpoint``, its newest, not its best).
    ``epochs_seen`` (the last epoch in Tune's results) is read from ``result.json`` unless the caller has it."""
    if epochs_seen is None:
        epochs_seen = last_recorded_epoch(experiment, trial_id)
    if not epochs_seen:
        return None
    return best_checkpoint(trial_checkpoints(experiment, trial_id, with_weights), max_epoch=epochs_seen)


def recorded_checkpoint(experiment: str | Path, trial_id: str) -> tuple[str | Path, int] | None:
    """(folder, epoch) of a trial's newest checkpoint whose validation Tune has recorded in ``result.json``.

    What a restarted Tune-runner trial resumes from when it is newer than the checkpoint in Tune's restored
    experiment state: Tune saves that state every few seconds, so a driver killed just after a result was
    recorded restores an older checkpoint, and the trial would train and report those epochs again. A
    checkpoint whose result Tune never recorded is not used: its epochs are trained and reported again.
    """
    recorded = last_recorded_epoch(experiment, trial_id)
    if not recorded:  # a new trial: no need to list its (empty) folders
        return None
    usable = [(folder, int(m["epoch"])) for folder, m in trial_checkpoints(experiment, trial_id)
              if m["epoch"] <= recorded]
    return usable[-1] if usable else None
