"""The one trial summary: every trial of a study, read from its files (no Ray, works on a running study).

``load_history`` gives one row per trial per validation; ``summary_table`` reduces it to one row per
trial with ``SUMMARY_COLUMNS``. ``study.run`` writes ``summary.csv`` from it and ``analysis`` reads
the same table; both take "stopped early", "error" or "interrupted" from the record ``study.fates``
keeps, written when the trial ended. A trial the device-time budget stopped (``--budget``) is "done" with
stop_reason "budget", not stopped early: ASHA did not judge it.

``add_cost`` gives each trial its model's parameter count and forward FLOPs per image at the study's image
size (``segmodels.cost``). They are counted here, once per (model, variant, classes, image size), on the model
built from scratch, rather than by each trial: what they count depends on nothing a trial learns or loads, a
study of 48 trials of two models counts twice instead of 48 times, no trial pays for it, and a study recorded
before the columns existed gets them too.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from typing import Any

import pandas as pd

from foundation import storage
from foundation.errors import UsageError
from segmodels.cost import DEVICE_KEY, MEASURED, MEMORY_MEASURE_KEY
from study.config import SEARCHABLE, parse_image_size
from study.fates import ERROR, STATUS, STOPPED_BY_ASHA, read_fate
from study.layout import (
    CONFIRM_DIR,
    ERRORS,
    FATES,
    TUNE_ERROR_FILE,
    TUNE_PARAMS_FILE,
    best_trial_checkpoint,
    error_file,
    trial_dir,
    trial_folder,
    tune_params,
    tune_results,
)
from study.options import is_missing
from study.pareto import losses, non_dominated

HYPERPARAMETERS = ("model", "init", "lr", "gamma")  # what every trial has (a space may search more: SEARCHABLE)
COUNTED_COST = ("params", "flops")  # the model's parameters, and its forward FLOPs per image at the trial's size
# Measured by each trial on its device before it trained (study.trial_cost), from its results: the device kind,
# latency at batch 1, throughput and training step at its batch size, peak memory (and what that is there).
MEASURED_COST = (DEVICE_KEY, *MEASURED, MEMORY_MEASURE_KEY)
COST_COLUMNS = (*COUNTED_COST, *MEASURED_COST)
SUMMARY_COLUMNS = ("trial_id", "model", "init", "lr", "gamma", "seed", "epochs", "best_val_miou", "best_epoch",
                   "stopped_early", "status", "stop_reason", "failures", "error", "best_checkpoint", *COST_COLUMNS)
METRICS = ("train_loss", "train_miou", "val_loss", "val_miou")

log = logging.getLogger(__name__)


def trial_ids(experiment: str) -> list[str]:
    """Ids of the Tune trials in a study folder: each folder with a params.json (or, for a trial that failed
    before it started, Tune's error.txt) that Tune's latest experiment state lists or that holds results or
    an error. A folder ``--resume`` found unknown to Tune's saved state (``study.fates``: orphaned) is not a
    trial: Tune ran its configuration again as a new one."""
    files = set(storage.list_files(experiment))
    ids = sorted({f.split("/", 1)[0].removeprefix("trial_") for f in files
                  if f.startswith(trial_folder("")) and f.count("/") == 1
                  and f.endswith(("/" + TUNE_PARAMS_FILE, "/" + TUNE_ERROR_FILE))})
    known = tune_state_trial_ids(experiment, files)
    return [i for i in ids
            if not (f"{FATES}/{i}.json" in files and read_fate(experiment, i).get("orphaned"))
            and (known is None or i in known or f"{ERRORS}/{i}.txt" in files
                 or f"{trial_folder(i)}/{TUNE_ERROR_FILE}" in files or tune_results(experiment, i))]


def results_experiment(experiment: str) -> str:
    """The Tune experiment whose trials are a study's results: its ``confirm/`` stage once that has trials
    (a search with ``--confirm-top``), else the study folder itself."""
    confirm = storage.join(experiment, CONFIRM_DIR)
    return confirm if trial_ids(confirm) else experiment


def top_configurations(summary: pd.DataFrame, k: int, objectives: dict[str, str] | None = None) -> list[dict]:
    """The ``k`` best distinct configurations of a finished search, by best val mIoU: what its confirm stage reruns
    with every seed. With several ``objectives`` (metric -> max | min), those of the val Pareto front first."""
    done = summary[(summary["status"] == "done") & summary["best_val_miou"].notna()]
    keys = searched_columns(summary)
    distinct = done.sort_values("best_val_miou", ascending=False).drop_duplicates(keys)
    if objectives and len(objectives) > 1 and len(distinct):
        columns = {m: "best_val_miou" if m == "val_miou" else m for m in objectives}
        on_front = non_dominated(losses(distinct, objectives, columns))
        distinct = pd.concat([distinct[on_front], distinct[~on_front]])
    return [{key: _plain(row[key]) for key in keys if not is_missing(row[key])}
            for _, row in distinct.head(k).iterrows()]


def searched_keys(recorded: dict[str, Any]) -> list[str]:
    """The one answer to "which keys did this study search", from its settings as recorded (``study.json``, or
    ``StudySettings``' ``space`` and ``points``): model and init always, then every other trial option its space
    gives more than one value or its points name, in declared order (``study.config.SEARCHABLE``). The live
    table, summary.csv, the report and importance show these columns."""
    space, points = recorded.get("space") or {}, recorded.get("points") or []
    named = {k for k, entry in space.items() if not _fixed(entry)} | {k for point in points for k in point}
    return [k for k in SEARCHABLE if k in named or k in ("model", "init")]


def _fixed(entry: object) -> bool:
    """A space entry that takes one value: a bare value, or a choice or grid of one (in memory's form
    ``("choice", [...])``, study.json's ``["choice", [...]]`` or the file's ``{"choice": [...]}``)."""
    if isinstance(entry, dict) and len(entry) == 1:
        kind, args = next(iter(entry.items()))
        args = [args]
    elif isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], str):
        kind, args = entry[0], list(entry[1:])
    else:
        return True
    if kind in ("loguniform", "uniform", "randint"):
        return False
    return kind not in ("choice", "grid") or not args or not isinstance(args[0], (list, tuple)) or len(args[0]) <= 1


def summary_columns(keys: list[str]) -> list[str]:
    """summary.csv's columns for a study that searched ``keys`` (``searched_keys``): the trial, those keys, then
    the rest of ``SUMMARY_COLUMNS``."""
    return ["trial_id", *keys, *(c for c in SUMMARY_COLUMNS if c not in ("trial_id", *HYPERPARAMETERS))]


def searched_columns(table: pd.DataFrame) -> list[str]:
    """The hyperparameter columns of a history or summary: the four every trial has, then any other searched
    field (``study.config.SEARCHABLE``: batch_size, image_size, ...) some trial was given."""
    return [*HYPERPARAMETERS, *(k for k in SEARCHABLE if k not in HYPERPARAMETERS and k in table.columns)]


def _plain(value: Any) -> Any:
    """A pandas/numpy scalar as the plain Python value a Tune point takes."""
    return value.item() if hasattr(value, "item") else value


def tune_state_trial_ids(experiment: str, files: set[str]) -> set[str] | None:
    """The trial ids in Tune's latest ``experiment_state-*.json``, or None before Tune has written one."""
    trials = tune_state_trials(experiment, files)
    return None if trials is None else {trial["trial_id"] for trial in trials}


def tune_state_trials(experiment: str, files: set[str]) -> list[dict] | None:
    """Tune's saved state of each trial in its latest ``experiment_state-*.json``, or None before Tune has written
    one (or in a format we do not know)."""
    states = sorted(f for f in files if f.startswith("experiment_state-") and f.endswith(".json"))
    if not states:
        return None
    try:
        data = json.loads(storage.read_bytes(storage.join(experiment, states[-1])))
        trials = [json.loads(entry[0]) for entry in data.get("trial_data", [])]
        return trials if all(isinstance(t, dict) and "trial_id" in t for t in trials) else None
    except (ValueError, KeyError, TypeError, IndexError):  # a format we do not know: count every folder
        return None


def creation_numbers(experiment: str) -> dict[str, int]:
    """trial id -> the number Tune gave the trial when it created it (1, 2, ...: its ``experiment_tag``'s prefix,
    kept across ``--resume``); Ray's trial ids are random, so this is the order a search made its trials in.
    Empty before Tune has saved its state."""
    numbers = {}
    for trial in tune_state_trials(experiment, set(storage.list_files(experiment))) or []:
        number = str(trial.get("experiment_tag", "")).split("_", 1)[0]
        if number.isdigit():
            numbers[trial["trial_id"]] = int(number)
    return numbers


def in_creation_order(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (one row per trial) in the order its trials were created (``created``, from
    ``creation_numbers``); a trial without a number after those with one, then by trial id."""
    if "created" not in table.columns:
        return table.sort_values("trial_id")
    return table.sort_values(["created", "trial_id"], na_position="last")


def trial_error(experiment: str, trial_id: str) -> str:
    """The one-line error of a trial that failed for good: segstudy's record (an error retrying cannot fix) or,
    once Tune gave up on it (its fate is ``error``), the last line of Tune's error.txt; empty otherwise. Tune
    appends to error.txt at every failure, also those it then recovers from, so that file alone says nothing."""
    ours, tunes = error_file(experiment, trial_id), storage.join(trial_dir(experiment, trial_id), TUNE_ERROR_FILE)
    sources = [(ours, 0)]  # ours starts with its message; Tune's ends with the exception
    if read_fate(experiment, trial_id).get("fate") == ERROR:
        sources.append((tunes, -1))
    for path, line in sources:
        if storage.is_file(path):
            lines = [text for text in storage.read_bytes(path).decode(errors="replace").splitlines() if text.strip()]
            if lines:
                return lines[line].strip()
    return ""


def load_history(experiment: str, default_seed: int = 0) -> pd.DataFrame:
    """Every validation row of every trial, with the trial's configuration, its fate as recorded
    (``study.fates``: status, stop_reason, failures; "running" while nothing is recorded) and best checkpoint."""
    frames = []
    created = creation_numbers(experiment)
    for trial_id in trial_ids(experiment):
        params = tune_params(experiment, trial_id)
        rows = tune_results(experiment, trial_id)
        frame = pd.DataFrame(rows) if rows else pd.DataFrame({"epoch": [math.nan]})  # a row even without results
        frame = frame.rename(columns={"lr": "epoch_lr"})
        frame["trial_id"] = trial_id
        frame["created"] = created.get(trial_id)
        for key in SEARCHABLE:  # the four every trial has, and any other field its space searched
            if key in HYPERPARAMETERS or key in params:
                frame[key] = params.get(key)
        frame["seed"] = params.get("seed", default_seed)
        reached = int(frame["epoch"].max()) if frame["epoch"].notna().any() else 0
        fate = read_fate(experiment, trial_id)
        reason = fate.get("fate", "running")
        error = trial_error(experiment, trial_id)
        frame["epochs_reached"] = reached
        frame["status"], frame["stop_reason"] = STATUS.get(reason, "running"), reason
        frame["failures"], frame["error"] = int(fate.get("failures", 0)), error
        frame["stopped_early"] = reason == STOPPED_BY_ASHA
        best = best_trial_checkpoint(experiment, trial_id, epochs_seen=reached)  # result.json is read already
        frame["best_checkpoint"] = str(best) if best else ""
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["trial_id", *HYPERPARAMETERS, "seed", "epoch", *METRICS])
    history = pd.concat(frames, ignore_index=True)
    keep = ["trial_id", *searched_columns(history), "seed", "epoch", *METRICS, "epoch_lr", "images_per_s", "node_id",
            "created", "epochs_reached", "status", "stop_reason", "stopped_early", "failures", "error",
            "best_checkpoint", *MEASURED_COST]
    return history[[c for c in keep if c in history.columns]].sort_values(["trial_id", "epoch"]).reset_index(drop=True)


def summary_table(history: pd.DataFrame) -> pd.DataFrame:
    """One row per trial (``SUMMARY_COLUMNS`` plus any extra per-trial column such as ``strategy``),
    ranked by best val mIoU."""
    per_trial = [c for c in history.columns if c not in (*METRICS, "epoch", "epoch_lr", "images_per_s", "node_id")]
    rows = []
    for trial_id, group in history.groupby("trial_id", sort=False):
        first = group.iloc[0]
        scored = group.dropna(subset=["val_miou"]) if "val_miou" in group else group.iloc[0:0]
        best = scored.loc[scored["val_miou"].idxmax()] if len(scored) else None
        row = {c: first[c] for c in per_trial}
        row.update(trial_id=trial_id, epochs=int(first["epochs_reached"]),
                   best_val_miou=float(best["val_miou"]) if best is not None else math.nan,
                   best_epoch=int(best["epoch"]) if best is not None else 0)
        rows.append(row)
    columns = [*SUMMARY_COLUMNS, *(c for c in per_trial if c not in SUMMARY_COLUMNS and c != "epochs_reached")]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("best_val_miou", ascending=False, na_position="last").reset_index(drop=True)


@functools.lru_cache(maxsize=64)
def model_cost(model: str, variant: str, num_classes: int, height: int, width: int) -> tuple[int, float]:
    """(parameters, forward FLOPs per image at height x width) of ``model`` built from scratch for
    ``num_classes``; the global RNG is left as it was (building draws random weights). Cached: building and
    counting takes seconds, and every summary write and report asks again for the same few models."""
    import torch

    from segmodels import build_model
    from segmodels.cost import count_flops, count_parameters

    with torch.random.fork_rng(devices=[]):
        net = build_model(model, num_classes, "scratch", variant=variant)
    return count_parameters(net), count_flops(net, (height, width))


def study_num_classes(settings: dict[str, Any]) -> int | None:
    """The number of classes a study's trials were built for: the task's class list, else its format's own
    (``settings``: study.json's values, or a run's config.json); None when neither says."""
    if settings.get("classes"):
        return len(settings["classes"])
    from study.data.formats import FORMATS

    fmt = FORMATS.get(settings.get("dataset", "pets"))
    return len(fmt.classes) if fmt is not None and fmt.classes else None


def add_cost(table: pd.DataFrame, settings: dict[str, Any]) -> pd.DataFrame:
    """``table`` (one row per trial, or per validation) with ``COST_COLUMNS`` for each row's model, at the row's
    ``image_size`` where the study searched it, else the study's (``settings``: study.json's values). A model
    that cannot be built here (an ``hf:`` folder gone since) gets NaN, with a warning."""
    num_classes = study_num_classes(settings)
    variant = settings.get("variant") or "b0"
    size = settings.get("image_size")
    out = table.copy()
    out["params"], out["flops"] = math.nan, math.nan
    if num_classes is None or size is None or not len(out):
        return out
    searched = out["image_size"] if "image_size" in out.columns else [None] * len(out)
    keys = [(model, parse_image_size(size if is_missing(own) else own))
            for model, own in zip(out["model"], searched, strict=True)]
    for key in dict.fromkeys(k for k in keys if isinstance(k[0], str)):
        model, (height, width) = key
        try:
            params, flops = model_cost(model, variant, num_classes, height, width)
        except (UsageError, OSError, RuntimeError, ValueError) as exc:
            log.warning("no cost for %s at %dx%d: %s", model, height, width, exc)
            continue
        rows = [k == key for k in keys]
        out.loc[rows, "params"], out.loc[rows, "flops"] = params, flops
    return out
