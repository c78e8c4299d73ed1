"""The two trial runners, both around the same shared loop and the same checkpoint contents.

- ``tune_trial`` (one worker per trial: CPU, one GPU or a fraction of one): the loop runs inside
  Tune's function trainable; ``ray.tune.report`` carries metrics and checkpoints, Tune keeps them in
  the trial's folder and restarts a failed trial from its latest. No Train controller, no worker
  group: a trial costs what its training costs, and a reused actor keeps its decoded data.
- ``train_trial`` (``--workers-per-trial N > 1``, or ``--trial-runner train``) and the Cityscapes
  stage (``run_training``): a Ray Train ``TorchTrainer`` (DDP across workers), its run named after
  the trial, reporting to Tune through ``TuneReportCallback``.

An error that retrying cannot fix (bad option, bad data, missing weights) ends its trial at once in
either runner: it is written to ``errors/<trial_id>.txt`` and the trial returns, so neither Tune nor
Train retries it ``max_failures`` times.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import ray.tune
import torch
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2.api.report_config import CheckpointUploadMode
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from foundation import storage
from study.budget import DEVICES_KEY, devices_held
from study.config import TrainConfig
from study.constraints import VIOLATIONS_KEY
from study.fates import ENDED, read_fate
from study.layout import TRAIN_RUNS, best_checkpoint, checkpoints, recorded_checkpoint, train_run_name
from study.loop import ValidationEvent, train
from study.trial import (
    PERMANENT_ERRORS,
    build_trial_model,
    load_splits,
    new_checkpoint_dir,
    read_checkpoint_dir,
    record_permanent_error,
    trial_config,
    write_checkpoint_dir,
)
from study.trial_cost import infeasible_result, trial_cost

log = logging.getLogger(__name__)

MAX_FAILURES = 3
KEEP_CHECKPOINTS = 2  # the two best by val mIoU; Tune and Train both keep the latest too


def _metrics(event: ValidationEvent, cost: dict[str, Any] | None = None, workers: int = 1) -> dict[str, Any]:
    """What every validation reports: the loop's row, the trial's measured cost (``study.trial_cost``: the
    searcher's objectives and constraints read it from the last result), which node and process trained it, and
    the devices the trial holds (``study.budget``: this worker's GPU share x its ``workers``, else one per worker)."""
    context = ray.get_runtime_context()
    gpus = context.get_assigned_resources().get("GPU", 0.0)
    return {**event.row, **(cost or {}), "is_best": event.is_best, DEVICES_KEY: devices_held(gpus * workers, workers),
            "node_id": context.get_node_id(), "worker_pid": os.getpid()}


def _warn_if_gpu_unusable() -> None:
    """Ray may assign GPUs that torch cannot use (a node that declares logical GPUs, a driver mismatch):
    the loop then trains on the CPU (``--device auto``), and says so once per trial."""
    if ray.get_gpu_ids() and not torch.cuda.is_available():
        log.warning("Ray assigned GPU %s to this trial but torch sees no CUDA device: training on the CPU",
                    ",".join(map(str, ray.get_gpu_ids())))


def _resume_from(checkpoint: Any) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(resumable state, validation history) from the trial's latest checkpoint (Tune's or Train's), if any."""
    if checkpoint is None:
        return None, []
    with checkpoint.as_directory() as folder:
        return read_checkpoint_dir(folder)


def _ended_already(experiment_dir: str, trial_id: str) -> bool:
    """A trial that Tune restores as running after a killed driver, but whose end was recorded (ASHA stopped
    it, or it completed, after Tune's last save of its state): it ends at once instead of training on."""
    fate = read_fate(experiment_dir, trial_id).get("fate")
    if fate in ENDED:
        log.info("trial %s: recorded as %s already; not training it again", trial_id, fate)
    return fate in ENDED


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the next trial in this (reused) actor starts with the GPU's memory free


# ------------------------------------------------------------------ the Tune runner: one worker per trial
def tune_trial(params: dict[str, Any], base: dict[str, Any], experiment_dir: str,
               constraints: dict[str, dict[str, float]] | None = None) -> None:
    """Tune's function trainable: the trial's cost measured on its device (an infeasible configuration reports it
    and never trains), then the shared loop in this process, resumed from Tune's checkpoint if any."""
    trial_id = ray.tune.get_context().get_trial_id()
    if _ended_already(experiment_dir, trial_id):
        return
    cfg = trial_config(params, base)
    _warn_if_gpu_unusable()
    try:
        train_set, val_set = load_splits(cfg)
        cost = trial_cost(cfg, train_set.num_classes)  # before the model is built and seeded
        if _refused(trial_id, cost, constraints):
            return
        model = build_trial_model(cfg, train_set.num_classes)
        resume, history = _resume_from(ray.tune.get_checkpoint())
        recorded = recorded_checkpoint(experiment_dir, trial_id)  # newer than Tune's after a killed driver?
        if recorded and recorded[1] > (resume["epoch"] if resume else 0):
            resume, history = _resume_from(ray.tune.Checkpoint(str(recorded[0])))

        def on_validation(event: ValidationEvent) -> None:
            metrics = _metrics(event, cost)
            history.append(event.row)
            folder = write_checkpoint_dir(new_checkpoint_dir(), cfg, event, train_set.class_names, metrics, history)
            try:  # blocks until Tune decides; a stopped trial ends inside this call (SystemExit)
                ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))
            finally:
                shutil.rmtree(folder, ignore_errors=True)  # persisted to the trial's folder by now

        train(cfg, train_set, val_set, model, on_validation=on_validation, resume=resume)
    except PERMANENT_ERRORS as exc:
        log.error("trial %s: %s", trial_id, record_permanent_error(experiment_dir, trial_id, exc))
    finally:
        model = None
        _free_device_memory()


# ------------------------------------------------------------------ the Train runner: DDP trials and pretraining
def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the shared loop, resumed from the run's latest checkpoint if any."""
    cfg = TrainConfig.from_dict(loop_config["trial"])
    rank = ray.train.get_context().get_world_rank()
    _warn_if_gpu_unusable()
    try:
        train_set, val_set = load_splits(cfg)
        model = build_trial_model(cfg, train_set.num_classes)
    except PERMANENT_ERRORS as exc:
        if rank == 0 and loop_config.get("trial_id"):
            record_permanent_error(loop_config["experiment_dir"], loop_config["trial_id"], exc)
            return
        raise
    resume, history = _resume_from(ray.train.get_checkpoint())

    def on_validation(event: ValidationEvent) -> None:
        metrics = _metrics(event, loop_config.get("cost"), ray.train.get_context().get_world_size())
        if rank != 0:
            ray.train.report(metrics)  # every rank reports (a barrier); only rank 0 saves
            return
        history.append(event.row)
        folder = write_checkpoint_dir(new_checkpoint_dir(), cfg, event, train_set.class_names, metrics, history)
        # Uploaded in the background while the next epoch trains; the local copy is deleted once persisted.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=f"checkpoint_epoch{int(event.row['epoch']):04d}",
                         checkpoint_upload_mode=CheckpointUploadMode.ASYNC, delete_local_checkpoint_after_upload=True)

    train(cfg, train_set, val_set, model, on_validation=on_validation,
          wrap_model=ray.train.torch.prepare_model, resume=resume)


def run_training(cfg: TrainConfig, run_name: str, experiment_dir: str, resources: dict[str, Any],
                 callbacks: list | None = None, trial_id: str | None = None,
                 cost: dict[str, Any] | None = None) -> str | Path | None:
    """Run one Ray Train run of ``cfg``; returns the path (or storage URI) of its best checkpoint file."""
    workers = int(resources.get("workers", 1))
    gpus = float(resources.get("gpus", 0))
    per_worker = {"CPU": float(resources.get("cpus", 1)) / workers}
    if gpus:
        per_worker["GPU"] = gpus / workers
    runs = storage.join(experiment_dir, TRAIN_RUNS)
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"trial": cfg.to_dict(), "trial_id": trial_id, "experiment_dir": experiment_dir,
                           "cost": cost or {}},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=runs,
            failure_config=FailureConfig(max_failures=int(resources.get("max_failures", MAX_FAILURES))),
            checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS, checkpoint_score_attribute="val_miou",
                                               checkpoint_score_order="max"),
            callbacks=callbacks or [],
        ),
    )
    trainer.fit()
    return best_checkpoint(checkpoints(storage.join(runs, run_name)))


def _refused(trial_id: str, cost: dict[str, Any], constraints: dict[str, dict[str, float]] | None) -> bool:
    """Report the trial's cost as its one result, and say so, when it violates a constraint checked before
    training (``study.trial_cost.infeasible_result``): the driver records it ``infeasible``, Optuna learns it."""
    refused = infeasible_result(cost, constraints or {})
    if refused is not None:
        log.info("trial %s: infeasible, not trained: %s", trial_id, refused[VIOLATIONS_KEY])
        ray.tune.report(refused)
    return refused is not None


def _worker_cost(loop_config: dict[str, Any]) -> dict[str, Any]:
    cfg = TrainConfig.from_dict(loop_config)
    train_set, _ = load_splits(cfg)
    return trial_cost(cfg, train_set.num_classes)


def worker_cost(cfg: TrainConfig, resources: dict[str, Any]) -> dict[str, Any]:
    """A Train-runner trial's cost, measured by one Ray task with one worker's share of the trial's resources
    (so on the kind of device its workers train on), before the workers start; outside the trial's placement
    group, which holds only the driver's token request."""
    workers = int(resources.get("workers", 1))
    task = ray.remote(_worker_cost).options(num_cpus=float(resources.get("cpus", 1)) / workers,
                                            num_gpus=float(resources.get("gpus") or 0) / workers,
                                            scheduling_strategy=PlacementGroupSchedulingStrategy(None))
    return ray.get(task.remote(cfg.to_dict()))


def train_trial(params: dict[str, Any], base: dict[str, Any], resources: dict[str, Any], experiment_dir: str,
                constraints: dict[str, dict[str, float]] | None = None) -> None:
    """Tune's function trainable for the Train runner: measure the trial's cost (an infeasible configuration is
    never trained), then start the trial's TorchTrainer and relay its reports."""
    cfg = trial_config(params, base)
    trial_id = ray.tune.get_context().get_trial_id()
    if _ended_already(experiment_dir, trial_id):
        return
    try:
        cost = worker_cost(cfg, resources)
    except PERMANENT_ERRORS as exc:  # bad data or options: the workers would fail the same way
        log.error("trial %s: %s", trial_id, record_permanent_error(experiment_dir, trial_id, exc))
        return
    if _refused(trial_id, cost, constraints):
        return
    run_training(cfg, train_run_name(trial_id), experiment_dir, resources, callbacks=[TuneReportCallback()],
                 trial_id=trial_id, cost=cost)
