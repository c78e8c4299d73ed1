"""Read a study (or a single ``study.run_trial`` run) from disk into pandas. No Ray needed.

``load_experiment(STORAGE/NAME)`` gives one row per trial per validation (of the confirm stage, when a
search has one) with the trial's configuration (model, init, lr, gamma, seed), its strategy label, its status and
its model's cost (``study.summary.add_cost``): ``study.summary``'s table (the one summary.csv is written from) plus
the strategy. It reads the files Ray Tune writes, so it also works while the study is still running.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from foundation import storage
from foundation.errors import DataError
from study.layout import CHECKPOINT_FILE, STUDY_FILE, best_trial_checkpoint
from study.options import is_missing
from study.summary import (
    add_cost,
    load_history,
    results_experiment,
    searched_columns,
    summary_table,
    trial_ids,
)
from study.summary import searched_keys as recorded_keys

STRATEGY_ORDER = ("scratch", "fine-tune", "fine-tune lr/2", "freeze")
STRATEGY_COLOURS = {"scratch": "tab:orange", "fine-tune": "tab:blue", "fine-tune lr/2": "tab:green",
                    "freeze": "tab:red"}
INIT_LABEL = {"scratch": "scratch", "finetune": "fine-tune", "freeze": "freeze"}
MODEL_LABEL = {"fcn_resnet50": "FCN ResNet-50", "segformer": "SegFormer"}
MODEL_SHORT_LABEL = {"fcn_resnet50": "FCN"}  # where the report's claims name a model briefly
MODEL_COLOURS = {"fcn_resnet50": "tab:blue", "segformer": "tab:purple"}
OTHER_MODEL_COLOURS = ("tab:brown", "tab:olive", "tab:cyan", "tab:pink", "tab:gray", "gold", "navy", "teal")
INIT_VERB = {"scratch": "training from scratch", "fine-tune": "fine-tuning",
             "freeze": "training with the encoder frozen"}
LOWER_LR = " lr/"  # a strategy label "fine-tune lr/2": the lower of the two learning rates its model and init ran


def model_label(name: str, short: bool = False) -> str:
    """A readable name for a model: the report's own for the two it knew, the builder's name of a ``tv:``
    model, the last path component of an ``hf:`` folder or the Hub id of an ``hf:`` Hub model."""
    if short and name in MODEL_SHORT_LABEL:
        return MODEL_SHORT_LABEL[name]
    if name in MODEL_LABEL:
        return MODEL_LABEL[name]
    family, _, rest = name.partition(":")
    if family == "tv" and rest:
        return rest
    if family == "hf" and rest:
        local = rest.startswith(("/", ".", "~")) or rest.count("/") != 1  # a Hub id is owner/name
        return rest.rstrip("/").rsplit("/", 1)[-1] if local else rest
    return name


def model_colours(models: Iterable[str]) -> dict[str, str]:
    """label -> colour, one per model: fixed for the report's two, the others in the order given."""
    models = list(models)
    others = iter(OTHER_MODEL_COLOURS * (1 + len(models) // len(OTHER_MODEL_COLOURS)))
    return {model_label(m): MODEL_COLOURS.get(m) or next(others) for m in models}


def study_settings(experiment: str | Path) -> dict:
    """A study's ``study.json``; for a ``study.run_trial`` run folder, its ``config.json`` (the same task fields:
    dataset, data_root, classes, ...)."""
    for name in (STUDY_FILE, "config.json"):
        path = Path(experiment) / name
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def load_experiment(experiment: str | Path) -> pd.DataFrame:
    """Every validation row of every trial in a study folder (or a ``study.run_trial`` run folder)."""
    experiment = Path(experiment)
    if (experiment / "metrics.csv").is_file() and (experiment / "config.json").is_file():
        return load_train_run(experiment)
    results = results_experiment(str(experiment))  # a search's confirm stage, when it has one
    if not trial_ids(results):
        raise DataError(f"--experiment {experiment}: no Ray Tune trials (trial_*/params.json) or "
                        "study.run_trial run there")
    settings = study_settings(experiment)
    df = add_cost(load_history(results, default_seed=settings.get("seed", 0)), settings)
    df["strategy"] = strategy_labels(df)
    return df


def load_train_run(folder: str | Path) -> pd.DataFrame:
    """A ``study.run_trial`` output folder as the same kind of frame (one trial)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    df = pd.read_csv(folder / "metrics.csv").rename(columns={"lr": "epoch_lr"})
    df["trial_id"] = folder.name
    for key in ("model", "init", "lr", "gamma", "seed"):
        df[key] = config[key]
    df["stop_reason"] = "completed" if len(df) and df["epoch"].max() >= config["epochs"] else "running or interrupted"
    df["epochs_reached"] = int(df["epoch"].max()) if len(df) else 0
    df["best_checkpoint"] = str(folder / "best.pt") if (folder / "best.pt").is_file() else ""
    df["status"], df["stopped_early"], df["error"] = "done", False, ""
    df = add_cost(df, config)
    df["strategy"] = strategy_labels(df)
    return df


def strategy_labels(df: pd.DataFrame) -> pd.Series:
    """scratch / fine-tune / freeze from init. Where a model ran one init at exactly two learning rates and
    nothing else differed (the report's SegFormer fine-tune at lr and lr/2), the lower is '<init> lr/k', k their
    ratio: the claims' equivalence test. A search's configurations differ in more than lr, so they never are."""
    labels = df["init"].map(INIT_LABEL).fillna(df["init"])
    others = [c for c in configuration_keys(df) if c not in ("model", "init", "lr")]
    for (model, init), group in df.groupby(["model", "init"]):
        lrs = sorted(set(group["lr"]))
        if len(lrs) == 2 and all(group[c].nunique(dropna=False) == 1 for c in others):
            k = "2" if abs(lrs[0] * 2 - lrs[1]) < 1e-12 else f"{lrs[1] / lrs[0]:.3g}"
            lower = (df["model"] == model) & (df["init"] == init) & (df["lr"] == lrs[0])
            labels[lower] = f"{INIT_LABEL.get(init, init)}{LOWER_LR}{k}"
    return labels


def trial_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: ``study.summary.summary_table`` (the columns of summary.csv) plus its strategy."""
    return summary_table(df)


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of trials that completed their epochs (not errored, stopped early or interrupted)."""
    return df[(df["status"] == "done") & (df["stop_reason"] == "completed")]


def best_configuration_trials(df: pd.DataFrame, model: str) -> dict[str, list[str]]:
    """For one model: strategy -> the trial ids (one per seed) of its configuration with the highest mean
    best val mIoU, among the trials that completed their epochs only: an ASHA-stopped or interrupted run is no
    candidate, so the configuration chosen always has seeds the tests can count. Without repeats that is the
    strategy's best completed trial; the curves, Fig 10, the test evaluation and the findings all take a
    strategy's runs from here. A strategy with no completed trial is absent."""
    table = trial_table(completed(df[df["model"] == model])).dropna(subset=["best_val_miou"])
    keys = configuration_keys(table)
    chosen = {}
    for strategy, group in table.groupby("strategy", sort=False):
        chosen[strategy] = best_configuration(group, keys)
    return chosen


def configuration_keys(table: pd.DataFrame) -> list[str]:
    """The columns whose values make a configuration: the summary's searched columns (``study.summary``) that
    ``table`` has. A key that is neither searched nor fixed (a NaN column) is kept: it groups as one value."""
    return [c for c in searched_columns(table) if c in table.columns]


def best_configuration(trials: pd.DataFrame, keys: list[str]) -> list[str]:
    """The trial ids (by seed) of the configuration (equal ``keys``, a missing value equal to a missing one) with
    the highest mean best val mIoU among ``trials`` (one row per trial)."""
    grouped = trials.assign(**{k: [tuple(v) if isinstance(v, list) else v for v in trials[k]] for k in keys})
    means = grouped.groupby(keys, dropna=False, sort=False)["best_val_miou"].mean()
    best = means.idxmax() if len(keys) > 1 else (means.idxmax(),)
    match = pd.Series(True, index=grouped.index)
    for key, value in zip(keys, best, strict=True):
        match &= grouped[key].isna() if is_missing(value) else grouped[key] == value
    chosen = grouped[match]
    return list((chosen.sort_values("seed") if "seed" in chosen else chosen)["trial_id"])


def searched_keys(settings: dict, table: pd.DataFrame) -> list[str]:
    """The keys a study searched (``study.summary.searched_keys`` of its recorded ``space`` and ``points``) that
    ``table`` has a value of; a record with neither (a ``study.run_trial`` run): the summary's searched columns
    (``configuration_keys``) with a value."""
    recorded = settings.get("space") or settings.get("points")
    keys = recorded_keys(settings) if recorded else configuration_keys(table)
    return [k for k in keys if k in table.columns and table[k].notna().any()]


def mirror_experiment(uri: str, local: str | Path) -> Path:
    """A local copy of a study on object storage, for reading like any study folder.

    Copies every file except model weights, then the weights of each Train run's best checkpoint
    (within the epochs Tune saw), the only ones the report evaluates: a study keeps up to three
    checkpoints per trial, and FCN ResNet-50's with optimizer state are hundreds of MB each.
    """
    local = Path(local)
    storage.download(uri, local, skip=lambda rel: rel.rsplit("/", 1)[-1] == CHECKPOINT_FILE)
    results = results_experiment(str(local))
    for trial_id in trial_ids(results):
        best = best_trial_checkpoint(results, trial_id, with_weights=False)
        if best is not None:
            storage.download(storage.join(uri, Path(best).relative_to(local).as_posix()), best)
    return local
