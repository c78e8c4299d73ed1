"""Ray at the edges: the per-worker training function (Ray Train) and the per-trial driver (Ray Tune).

``train_fn_per_worker`` runs the shared loop on each Train worker (DDP via Ray's
``prepare_model``) and reports every validation with a checkpoint. ``trial_driver`` is
Tune's function trainable: it starts one ``TorchTrainer`` per trial with
``TuneReportCallback``, under a run name derived from the trial id, so a restarted
trial resumes the same Train run from its latest checkpoint.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import ray.tune
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from study import storage
from study.config import TrainConfig
from study.io import atomic_torch_save, load_checkpoint, write_csv, write_json
from study.loop import METRIC_COLUMNS, ValidationEvent, train
from study.results import CHECKPOINT_FILE, HISTORY_FILE, METRICS_FILE, TRAIN_RUNS, best_checkpoint, train_run_name
from study.train import build_trial_model, load_splits, model_checkpoint

log = logging.getLogger(__name__)


def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the shared loop, resumed from the run's latest checkpoint if any."""
    cfg = TrainConfig.from_dict(loop_config["trial"])
    rank = ray.train.get_context().get_world_rank()
    node_id = ray.get_runtime_context().get_node_id()  # recorded with every report: which node trained it
    train_set, val_set = load_splits(cfg)
    model = build_trial_model(cfg, train_set.num_classes)
    resume, history = None, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
            with open(Path(folder) / HISTORY_FILE, newline="") as f:
                history = list(csv.DictReader(f))

    def on_validation(event: ValidationEvent) -> None:
        metrics = {**event.row, "is_best": event.is_best, "node_id": node_id, "worker_pid": os.getpid()}
        if rank != 0:
            ray.train.report(metrics)  # every rank reports (a barrier); only rank 0 saves
            return
        history.append(event.row)
        with tempfile.TemporaryDirectory() as folder:
            atomic_torch_save({**model_checkpoint(cfg, event, train_set.class_names), **event.checkpoint()},
                              Path(folder) / CHECKPOINT_FILE)
            write_json(Path(folder) / METRICS_FILE, metrics)
            write_csv(Path(folder) / HISTORY_FILE, history, METRIC_COLUMNS)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"checkpoint_epoch{int(event.row['epoch']):04d}")

    train(cfg, train_set, val_set, model, on_validation=on_validation,
          wrap_model=ray.train.torch.prepare_model, resume=resume)


def run_training(cfg: TrainConfig, run_name: str, experiment_dir: str, resources: dict[str, Any],
                 callbacks: list | None = None) -> str | Path | None:
    """Run one Ray Train run of ``cfg``; returns the path (or storage URI) of its best checkpoint file."""
    workers = int(resources.get("workers", 1))
    gpus = float(resources.get("gpus", 0))
    per_worker = {"CPU": float(resources.get("cpus", 1)) / workers}
    if gpus:
        per_worker["GPU"] = gpus / workers
    runs = storage.join(experiment_dir, TRAIN_RUNS)
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"trial": cfg.to_dict()},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=runs,
            failure_config=FailureConfig(max_failures=int(resources.get("max_failures", 3))),
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_miou",
                                               checkpoint_score_order="max"),
            callbacks=callbacks or [],
        ),
    )
    trainer.fit()
    return best_checkpoint(storage.join(runs, run_name))


def trial_driver(config: dict[str, Any], base: dict[str, Any], resources: dict[str, Any], experiment_dir: str) -> None:
    """Tune's function trainable: start the trial's TorchTrainer and relay its reports to Tune."""
    hyper = {key: config[key] for key in ("model", "init", "lr", "gamma")}
    pretrained = base.get("pretrained_by_model", {}).get(hyper["model"]) if hyper["init"] != "scratch" else None
    fixed = {k: v for k, v in base.items() if k != "pretrained_by_model"}
    cfg = TrainConfig.from_dict({**fixed, **hyper, "lr": float(hyper["lr"]), "gamma": float(hyper["gamma"]),
                                 "pretrained": pretrained})
    trial_id = ray.tune.get_context().get_trial_id()
    run_training(cfg, train_run_name(trial_id), experiment_dir, resources, callbacks=[TuneReportCallback()])
