"""The Tuner: the search (Optuna TPE or the report's grid), ASHA, the trial runner, retention, restarts;
how a stopped study is recorded and resumed is ``stops``."""

from __future__ import annotations

import os
from typing import Any

from ray import tune
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from foundation import storage
from study.budget import is_spent, spent_by_model, spent_text, write_limit
from study.layout import trial_dirname
from study.orchestrate.budget import BudgetedASHA, BudgetedFIFO, BudgetSearch
from study.orchestrate.cluster import driver_request
from study.orchestrate.console import TrialTable, say
from study.orchestrate.optuna_store import optuna_callbacks, optuna_search
from study.orchestrate.runners import KEEP_CHECKPOINTS, MAX_FAILURES, train_trial, tune_trial
from study.orchestrate.stops import (
    STATE_SAVE_PERIOD_S,
    FateRecorder,
    check_finished,
    reconcile_with_storage,
)
from study.samplers import build_sampler
from study.settings import ResourcePlan, StudySettings

# What building a Tuner writes into the experiment folder: its state, which Tuner.can_restore looks for
# (ray.tune.impl.tuner_internal._TUNER_PKL), and Ray's storage check (ray.train._internal.storage).
TUNER_FILES = ("tuner.pkl", ".validate_storage_marker")


def tune_space(space: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune domains for an Optuna search (``study.space``'s entries). OptunaSearch refuses
    ``tune.grid_search`` (ray/tune/search/optuna), so here a grid axis is a categorical choice; the grid searcher
    runs a grid's cross product as points instead. A randint includes its high end, as the file says."""
    kinds = {"choice": lambda v: tune.choice(v[0]), "grid": lambda v: tune.choice(v[0]),
             "loguniform": lambda v: tune.loguniform(*v), "uniform": lambda v: tune.uniform(*v),
             "randint": lambda v: tune.randint(v[0], v[1] + 1)}
    return {name: kinds[spec[0]](spec[1:]) for name, spec in space.items()}


def trainable(settings: StudySettings, plan: ResourcePlan, pretrained: dict[str, str]) -> Any:
    """The trial runner for ``settings.runner``, with its resource request."""
    base = settings.trial_base(pretrained, plan)
    if settings.runner == "tune":  # the trial process trains: it holds the trial's CPUs and GPU share
        fn = tune.with_parameters(tune_trial, base=base, experiment_dir=settings.experiment_dir,
                                  constraints=settings.constraints)
        if plan.gpus_per_model:  # each trial's GPU share from its model's estimated peak memory
            return tune.with_resources(fn, plan.trial_resources)
        return tune.with_resources(fn, {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})
    resources = {"workers": plan.workers_per_trial, "cpus": plan.cpus_per_trial, "gpus": plan.gpus_per_trial}
    fn = tune.with_parameters(train_trial, base=base, resources=resources, experiment_dir=settings.experiment_dir,
                              constraints=settings.constraints)
    return tune.with_resources(fn, driver_request())  # the Train workers hold the trial's resources


def run_config(settings: StudySettings, table: TrialTable) -> tune.RunConfig:
    return tune.RunConfig(
        name=settings.name, storage_path=settings.storage,
        verbose=2 if settings.verbose else 0,
        callbacks=[FateRecorder(settings.experiment_dir, settings.epochs), table, *wandb_callbacks(settings),
                   *optuna_callbacks(settings)],  # optuna.db (a grid's trials) and TensorBoard's event files
        checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS, checkpoint_score_attribute="val_miou",
                                                checkpoint_score_order="max"),
        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES if settings.runner == "tune" else 0),
    )


def run_tune(settings: StudySettings, plan: ResourcePlan, pretrained: dict[str, str], table: TrialTable) -> Any:
    # A trial ended by an error that retrying cannot fix returns without a result (runners.py); Tune's strict
    # check would take that final, metric-less result for a misspelt metric and abort the whole study.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", STATE_SAVE_PERIOD_S)
    fn = trainable(settings, plan, pretrained)
    root = settings.study_dir
    if settings.budget:  # the limit in effect (a resume may raise it), read by the scheduler and the report
        write_limit(root, settings.budget)
        if is_spent(root):
            say(f"budget: {spent_text(spent_by_model(root), settings.budget)}: no trial starts")
            return None
    if settings.resume and tune.Tuner.can_restore(settings.experiment_dir):
        reconcile_with_storage(settings.experiment_dir)
        # The restored run config (callbacks included) is the one saved when the study started.
        tuner = tune.Tuner.restore(settings.experiment_dir, trainable=fn, resume_unfinished=True, resume_errored=True)
        return check_finished(settings, tuner.fit(), is_spent(root))

    if settings.searcher == "grid":  # the report's grid (or a confirm stage): exactly these points, each seed
        points = settings.grid_points()
        values = {k: sorted({p[k] for p in points}) for k in points[0]}
        param_space = {k: tune.choice(v) for k, v in values.items()}
        search_alg = BasicVariantGenerator(points_to_evaluate=points, random_state=settings.seed)
        num_samples = len(points)
    else:
        param_space = tune_space(settings.space)
        # in optuna.db; the objectives (one metric, or several: a list), with ASHA stopping on val mIoU below
        search_alg = optuna_search(settings, points_to_evaluate=settings.points[: settings.num_samples] or None,
                                   sampler=build_sampler(settings.sampler, settings.seed, settings.num_samples))
        num_samples = settings.num_samples
    max_concurrent = plan.max_concurrent
    if settings.budget and settings.searcher != "grid":  # a search the budget ends, reopened on a resume with more
        if max_concurrent:  # what Tune's max_concurrent_trials does to a searcher, which it skips for this wrapper
            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=max_concurrent)
        search_alg, max_concurrent = BudgetSearch(search_alg, root), None
    if settings.scheduler == "asha":
        scheduler = BudgetedASHA(time_attr="epoch", max_t=settings.epochs, grace_period=settings.asha_grace_period,
                                 reduction_factor=settings.reduction_factor).keep_budget(root, settings.epochs)
    else:
        scheduler = BudgetedFIFO().keep_budget(root, settings.epochs)
    try:
        tuner = tune.Tuner(
            fn,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric="val_miou", mode="max", search_alg=search_alg, scheduler=scheduler,
                                        num_samples=num_samples, max_concurrent_trials=max_concurrent,
                                        trial_dirname_creator=trial_dirname, reuse_actors=settings.runner == "tune"),
            run_config=run_config(settings, table),
        )
    except Exception:  # Tune opens tuner.pkl before it pickles the Tuner: --resume would "restore" a half-written one
        for name in TUNER_FILES:  # gone, a rerun may use the folder (study.preflight.started)
            if storage.exists(storage.join(settings.experiment_dir, name)):
                storage.delete_file(storage.join(settings.experiment_dir, name))
        raise
    return check_finished(settings, tuner.fit(), is_spent(root))


def wandb_callbacks(settings: StudySettings) -> list:
    if not settings.wandb:
        return []
    from study.orchestrate.wandb_key import SecretWandbCallback, check_key, wandb_mode

    # The key comes from WANDB_API_KEY or `wandb login` and never reaches a runtime env (wandb_key.py); without
    # one (or with WANDB_MODE=offline), runs are written offline. No placeholder key: offline runs need none.
    mode = wandb_mode()
    check_key(mode)
    return [SecretWandbCallback(project="segstudy", group=settings.name, mode=mode, log_config=True,
                                dir=None if storage.is_remote(settings.storage) else settings.experiment_dir)]
