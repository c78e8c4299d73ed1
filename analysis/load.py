"""Read a study (or a single ``study.train`` run) from disk into pandas. No Ray needed.

``load_experiment(STORAGE/NAME)`` gives one row per trial per validation with the
trial's configuration (model, init, lr, gamma, seed), its strategy label and its stop
reason; it reads the files Ray Tune writes (``trial_*/params.json``, ``result.json``),
so it also works while the study is still running.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from study.errors import DataError
from study import storage
from study.results import CHECKPOINT_FILE, STUDY_FILE, SUMMARY_FILE, TRAIN_RUNS, best_checkpoint, train_run_name

METRICS = ("train_loss", "train_miou", "val_loss", "val_miou")
STRATEGY_ORDER = ("scratch", "fine-tune", "fine-tune lr/2", "freeze")
STRATEGY_COLOURS = {"scratch": "tab:orange", "fine-tune": "tab:blue", "fine-tune lr/2": "tab:green", "freeze": "tab:red"}
INIT_LABEL = {"scratch": "scratch", "finetune": "fine-tune", "freeze": "freeze"}
MODEL_LABEL = {"fcn_resnet50": "FCN ResNet-50", "segformer": "SegFormer"}


def study_settings(experiment: str | Path) -> dict:
    path = Path(experiment) / STUDY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_experiment(experiment: str | Path) -> pd.DataFrame:
    """Every validation row of every trial in a study folder (or a ``study.train`` run folder)."""
    experiment = Path(experiment)
    if (experiment / "metrics.csv").is_file() and (experiment / "config.json").is_file():
        return load_train_run(experiment)
    trial_dirs = sorted(p for p in experiment.glob("trial_*") if (p / "params.json").is_file())
    if not trial_dirs:
        raise DataError(f"--experiment {experiment}: no Ray Tune trials (trial_*/params.json) or study.train run there")
    settings = study_settings(experiment)
    finished = (experiment / SUMMARY_FILE).is_file()
    frames = []
    for trial_dir in trial_dirs:
        config = json.loads((trial_dir / "params.json").read_text())
        rows = _json_lines(trial_dir / "result.json")
        frame = pd.DataFrame(rows) if rows else pd.DataFrame({"epoch": pd.Series(dtype=int)})
        frame = frame.rename(columns={"lr": "epoch_lr"})
        trial_id = str(rows[0]["trial_id"]) if rows else trial_dir.name.removeprefix("trial_")
        frame["trial_id"] = trial_id
        for key in ("model", "init", "lr", "gamma"):
            frame[key] = config.get(key)
        frame["seed"] = settings.get("seed", 0)
        epochs_reached = int(frame["epoch"].max()) if len(frame) else 0
        if (trial_dir / "error.txt").is_file():
            reason = "error"
        elif epochs_reached >= settings.get("epochs", epochs_reached):
            reason = "completed"
        else:
            reason = "stopped early (ASHA)" if finished else "running or interrupted"
        frame["stop_reason"] = reason
        frame["epochs_reached"] = epochs_reached
        best = best_checkpoint(experiment / "train" / train_run_name(trial_id), max_epoch=epochs_reached)
        frame["best_checkpoint"] = str(best) if best else ""
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    df["strategy"] = strategy_labels(df)
    keep = ["trial_id", "model", "init", "strategy", "lr", "gamma", "seed", "epoch", *METRICS, "epoch_lr",
            "images_per_s", "node_id", "stop_reason", "epochs_reached", "best_checkpoint"]
    return df[[c for c in keep if c in df.columns]].sort_values(["trial_id", "epoch"]).reset_index(drop=True)


def load_train_run(folder: str | Path) -> pd.DataFrame:
    """A ``study.train`` output folder as the same kind of frame (one trial)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    df = pd.read_csv(folder / "metrics.csv").rename(columns={"lr": "epoch_lr"})
    df["trial_id"] = folder.name
    for key in ("model", "init", "lr", "gamma", "seed"):
        df[key] = config[key]
    df["stop_reason"] = "completed" if len(df) and df["epoch"].max() >= config["epochs"] else "running or interrupted"
    df["epochs_reached"] = int(df["epoch"].max()) if len(df) else 0
    df["best_checkpoint"] = str(folder / "best.pt") if (folder / "best.pt").is_file() else ""
    df["strategy"] = strategy_labels(df)
    return df


def strategy_labels(df: pd.DataFrame) -> pd.Series:
    """scratch / fine-tune / freeze from init; a fine-tune at half its model's largest fine-tune lr is 'fine-tune lr/2'."""
    labels = df["init"].map(INIT_LABEL).fillna(df["init"])
    for model, group in df[df["init"] == "finetune"].groupby("model"):
        lrs = sorted(set(group["lr"]))
        if len(lrs) == 2 and abs(lrs[0] * 2 - lrs[1]) < 1e-12:
            labels[(df["model"] == model) & (df["init"] == "finetune") & (df["lr"] == lrs[0])] = "fine-tune lr/2"
    return labels


def trial_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: configuration, epochs reached, best val mIoU (and its epoch), stop reason."""
    rows = []
    for trial_id, group in df.groupby("trial_id"):
        first = group.iloc[0]
        scored = group.dropna(subset=["val_miou"]) if "val_miou" in group else group.iloc[0:0]
        best = scored.loc[scored["val_miou"].idxmax()] if len(scored) else None
        rows.append({"trial_id": trial_id, "model": first["model"], "init": first["init"], "strategy": first["strategy"],
                     "lr": first["lr"], "gamma": first["gamma"], "epochs": int(first["epochs_reached"]),
                     "best_val_miou": float(best["val_miou"]) if best is not None else float("nan"),
                     "best_epoch": int(best["epoch"]) if best is not None else 0,
                     "stop_reason": first["stop_reason"], "best_checkpoint": first["best_checkpoint"]})
    columns = ["trial_id", "model", "init", "strategy", "lr", "gamma", "epochs", "best_val_miou", "best_epoch",
               "stop_reason", "best_checkpoint"]
    return pd.DataFrame(rows, columns=columns).sort_values("best_val_miou", ascending=False, na_position="last").reset_index(drop=True)


def best_per_strategy(df: pd.DataFrame, model: str) -> dict[str, str]:
    """For one model: strategy -> the trial id with the highest best val mIoU."""
    table = trial_table(df[df["model"] == model])
    return {s: g.iloc[0]["trial_id"] for s, g in table.groupby("strategy", sort=False)}


def mirror_experiment(uri: str, local: str | Path) -> Path:
    """A local copy of a study on object storage, for reading like any study folder.

    Copies every file except model weights, then the weights of each Train run's best checkpoint
    (within the epochs Tune saw), the only ones the report evaluates: a study keeps up to three
    checkpoints per trial, and FCN ResNet-50's with optimizer state are hundreds of MB each.
    """
    local = Path(local)
    storage.download(uri, local, skip=lambda rel: rel.rsplit("/", 1)[-1] == CHECKPOINT_FILE)
    for run_dir in sorted(p for p in (local / TRAIN_RUNS).glob("*") if p.is_dir()):
        trial_dir = local / f"trial_{run_dir.name.removeprefix('trial-')}"
        epochs = [row["epoch"] for row in _json_lines(trial_dir / "result.json") if "epoch" in row]
        best = best_checkpoint(run_dir, max_epoch=max(epochs) if epochs else None, with_weights=False)
        if best is not None:
            storage.download(storage.join(uri, Path(best).relative_to(local).as_posix()), best)
    return local


def _json_lines(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line Tune is still writing
                continue
    return rows
