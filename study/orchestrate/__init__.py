"""The Ray layer of segstudy, and the only place in ``study/`` that imports Ray.

``run_study`` runs a study in stages, each announced on one line: checks and data (before Ray
starts, ``study.preflight``), Ray (``cluster``), the Cityscapes stage (``pretrain``, Ray Train),
the trials (``tuner`` with the two ``runners``) and the summary (``study.summary``, read from disk).
The report is the CLI's to write (``study.run``): this layer knows nothing of ``analysis``.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pandas as pd
import ray

from foundation import storage
from foundation.errors import StudyInterrupted
from foundation.io import csv_text, json_text
from study.config import parse_image_size
from study.layout import CLASS_FREQUENCIES_FILE, SEARCH_SUMMARY_FILE, STUDY_FILE, SUMMARY_FILE
from study.orchestrate.cluster import (
    DRIVER_RESOURCE,
    autoscaler_capacity,
    check_cluster_resources,
    copy_worker_logs,
    dashboard_url,
    driver_request,
    plan_resources,
    start_ray,
)
from study.orchestrate.console import TrialTable, print_summary, say
from study.orchestrate.pretrain import pretrain_encoders
from study.orchestrate.stops import expected_trials
from study.orchestrate.tuner import run_tune
from study.orchestrate.wandb_key import withhold_key
from study.preflight import preflight
from study.settings import CONFIRM_SEED_OFFSET, ResourcePlan, StudySettings
from study.summary import (
    add_cost,
    load_history,
    results_experiment,
    summary_columns,
    summary_table,
    top_configurations,
)

__all__ = ["DRIVER_RESOURCE", "autoscaler_capacity", "driver_request", "plan_resources", "run_study", "start_ray"]

log = logging.getLogger(__name__)


def run_study(settings: StudySettings, native_stderr_log: str | None = None) -> pd.DataFrame:
    """Run ``settings`` as a study; ``native_stderr_log``: where the CLI sent native (C++) stderr, copied into
    the experiment's ``logs/`` at the end."""
    started = time.monotonic()
    class_frequencies = preflight(settings)
    height, width = parse_image_size(settings.image_size)
    say(f"data and encoders checked: {settings.dataset} at {settings.data_root}, {height}x{width} px")
    if settings.wandb:  # before a local Ray starts: it would copy the key into every Ray process's environment
        withhold_key()
    started_here, recorded = start_ray(settings), False
    try:
        where = f"dashboard {dashboard_url()}" if dashboard_url() else "no dashboard"
        say(f"Ray {started_here or 'joined'} ({where}); trials run with the {settings.runner} runner")
        plan = check_cluster_resources(settings, announce=say)
        record_settings(settings, plan)
        storage.write_bytes(storage.join(settings.experiment_dir, CLASS_FREQUENCIES_FILE),
                            csv_text(class_frequencies, list(class_frequencies[0])).encode())
        recorded = True  # from here on the experiment folder exists: Ray's logs go there too
        pretrained = pretrain_encoders(settings, plan, announce=say)
        trials = expected_trials(settings)
        seeds = ""
        if settings.searcher == "grid" and settings.repeats > 1:
            seeds = f" ({len(settings.points)} configurations x {settings.repeats} seeds)"
        elif settings.confirm_top:  # the search's own, then its confirm stage's (announced when it starts)
            seeds = f", then the {settings.confirm_top} best x {settings.repeats} seeds"
        say(f"trials: {trials}{seeds} ({settings.searcher}, {settings.scheduler}), up to "
            f"{plan.max_concurrent} at once")
        try:
            run_tune(settings, plan, pretrained, TrialTable(settings))
            if settings.confirm_top:
                run_confirm_stage(settings, plan, pretrained)
        except StudyInterrupted:
            write_summary(settings)  # the trials as they are at the stop, the unfinished ones "interrupted"
            raise
        summary = write_summary(settings)
    finally:
        logs = copy_worker_logs(settings.experiment_dir, native_stderr_log) if recorded else None
        if started_here:
            ray.shutdown()  # stops a local Ray we started; only disconnects from a cluster
    print_summary(settings, summary)
    if logs:
        say(f"Ray's worker output: {storage.display(logs)}")
    say(f"trials done in {time.monotonic() - started:.0f} s")
    return summary


def record_settings(settings: StudySettings, plan: ResourcePlan) -> None:
    """Write STORAGE/NAME/study.json (kept on resume; a new run replaces the one a study that failed before its first
    stage left, ``preflight.started``): what the analysis needs to read the study, with the resources it was
    planned with."""
    target = storage.join(settings.experiment_dir, STUDY_FILE)
    if not (settings.resume and storage.exists(target)):
        per_trial = ("model", "init", "pretrained", "device", "device_memory_share")  # each trial's own
        data = {k: v for k, v in dataclasses.asdict(settings).items()
                if k not in ("resume", "verbose", *per_trial)}
        data.update({k: v for k, v in dataclasses.asdict(plan).items() if k in data or k == "gpus_per_model"})
        if settings.confirm_top:  # the rule, and the seeds it gives (StudySettings.confirm_stage)
            data["confirm_seed_rule"] = f"seed + {CONFIRM_SEED_OFFSET} + k, k = 0 .. repeats - 1"
            data["confirm_seeds"] = settings.confirm_stage([]).seeds()
        storage.write_bytes(target, json_text(data, sort_keys=False).encode())  # objectives keep their order


def run_confirm_stage(settings: StudySettings, plan: ResourcePlan, pretrained: dict[str, str]) -> None:
    """Rerun the search's ``--confirm-top`` best configurations with every seed, to the full epochs (no ASHA),
    as the Tune experiment ``confirm/``; ``--resume`` restores it like the search."""
    search = write_summary(settings, trials_from=settings.experiment_dir, file=SEARCH_SUMMARY_FILE)
    points = top_configurations(search, settings.confirm_top, settings.objectives)
    if not points:
        say("confirm: no search trial finished with a score; nothing to confirm")
        return
    confirm = settings.confirm_stage(points)
    say(f"confirm: the {len(points)} best configurations x {settings.repeats} seeds = {len(confirm.grid_points())} "
        f"trials, {settings.epochs} epochs each, no early stopping")
    run_tune(confirm, plan, pretrained, TrialTable(confirm))


def write_summary(settings: StudySettings, trials_from: str | None = None, file: str = SUMMARY_FILE) -> pd.DataFrame:
    """``file``: one row per trial of ``trials_from`` (default: the study's results, i.e. its confirm stage
    when it has one), ranked by best val mIoU (``study.summary``, from the files on storage)."""
    trials_from = trials_from or results_experiment(settings.experiment_dir)
    summary = add_cost(summary_table(load_history(trials_from, default_seed=settings.seed)), vars(settings))
    storage.write_bytes(storage.join(settings.experiment_dir, file),
                        csv_text(summary.to_dict("records"), summary_columns(settings.searched_keys())).encode())
    return summary
