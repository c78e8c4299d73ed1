"""How a study stops and resumes exactly (docs/reliability.md), and the record of how each trial ended.

- Each trial's fate is recorded as it happens (``study.fates``): by ``FateRecorder`` when Tune ends or retries
  a trial, by ``RecordingASHA`` when ASHA stops one early, by ``check_finished`` when the study is stopped.
- A stopped study: the CLI turns SIGTERM into Tune's graceful stop (``study.cli.sigterm_as_sigint``), which
  saves Tune's experiment and searcher state; ``check_finished`` then records the unfinished trials
  ``interrupted`` and raises ``StudyInterrupted``.
- A killed driver: Tune saves its state every ``STATE_SAVE_PERIOD_S`` seconds (Tune's own default is 10 or
  more), and ``--resume`` first reconciles that state with what is on storage (``reconcile_with_storage``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.train.constants import _get_ray_train_session_dir
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from foundation import storage
from foundation.errors import StudyInterrupted
from study.constraints import BEFORE_TRAINING, COST_DEVICE, INFEASIBLE_KEY, VIOLATIONS_KEY
from study.fates import (
    COMPLETED,
    ENDED,
    ENDED_SHORT,
    ERROR,
    FINAL,
    INFEASIBLE,
    INTERRUPTED,
    STOPPED_BY_ASHA,
    fate_of,
    has_permanent_error,
    read_fate,
    record_failure,
    record_fate,
)
from study.layout import checkpoints, last_recorded_epoch, trial_dir, trial_folder
from study.settings import StudySettings
from study.summary import tune_state_trial_ids

log = logging.getLogger(__name__)

# How often Tune saves its experiment and searcher state (TUNE_GLOBAL_CHECKPOINT_S): what a SIGKILL can lose.
STATE_SAVE_PERIOD_S = "2"


def staging_dir(trial: Trial) -> str:
    """The driver's copy of the experiment folder, which Tune syncs to storage together with its own state:
    a fate written there reaches storage with the experiment state that agrees with it."""
    return str(Path(trial.local_path).parent)


def last_failure_text(trial: Trial) -> str:
    """The last failure in Tune's error.txt for this trial (Tune appends one block per failure)."""
    try:
        text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
    except OSError:
        text = ""
    return "Failure # " + text.rsplit("Failure # ", 1)[-1] if "Failure # " in text else text


class RecordingASHA(ASHAScheduler):
    """ASHA that records its decision when it stops a trial before the last epoch: the one source of
    "stopped early (ASHA)"."""

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        epoch = int(result.get(self._time_attr, 0))
        if decision == TrialScheduler.STOP and epoch < self._max_t:
            record_fate(staging_dir(trial), trial.trial_id, STOPPED_BY_ASHA, epoch,
                        detail=f"stopped by ASHA at epoch {epoch} of {self._max_t}")
        return decision


class FateRecorder(tune.Callback):
    """Records each trial's fate when Tune ends or retries it (``study.fates``). Listed first among the
    callbacks, so the console's line reads the record."""

    def __init__(self, experiment_dir: str, epochs: int) -> None:
        self.experiment_dir, self.epochs = experiment_dir, epochs

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        staging, previous = staging_dir(trial), self.previous(trial)
        if previous.get("fate") in ENDED:  # ASHA's stop, or an end recorded before a killed driver's last save
            return
        epoch = max(last_recorded_epoch(staging, trial.trial_id), last_recorded_epoch(self.experiment_dir,
                                                                                     trial.trial_id))
        last = trial.last_result or {}
        if has_permanent_error(self.experiment_dir, trial.trial_id):  # the trial wrote it to storage
            record_fate(staging, trial.trial_id, ERROR, epoch, previous)
        elif last.get(INFEASIBLE_KEY):  # it reported its cost instead of training (study.trial_cost)
            record_fate(staging, trial.trial_id, INFEASIBLE, 0, previous, detail=last.get(VIOLATIONS_KEY, ""),
                        cost={k: last[k] for k in (*BEFORE_TRAINING, COST_DEVICE) if k in last})
        elif epoch >= self.epochs:
            record_fate(staging, trial.trial_id, COMPLETED, epoch, previous)
        else:
            record_fate(staging, trial.trial_id, ENDED_SHORT, epoch, previous,
                        detail=f"returned at epoch {epoch} of {self.epochs} without a stop decision or an error")

    def on_trial_recover(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        record_failure(staging_dir(trial), trial.trial_id, last_failure_text(trial), self.previous(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        staging = staging_dir(trial)
        record_failure(staging, trial.trial_id, last_failure_text(trial), self.previous(trial))
        record_fate(staging, trial.trial_id, ERROR, last_recorded_epoch(staging, trial.trial_id))

    def previous(self, trial: Trial) -> dict[str, Any]:
        """The trial's record so far: this run's (in the staging copy), else an earlier run's (on storage)."""
        return fate_of(trial.trial_id, staging_dir(trial), self.experiment_dir)


def expected_trials(settings: StudySettings) -> int:
    """The trial budget: the grid's points x seeds, or ``--num-samples``."""
    return len(settings.grid_points()) if settings.searcher == "grid" else settings.num_samples


def check_finished(settings: StudySettings, results: Any, budget_spent: bool = False) -> Any:
    """Raise ``StudyInterrupted`` when Tune stopped before the study's trials all ended (SIGINT, or SIGTERM
    through the CLI): the state Tune saved then describes the study at that moment, and every unfinished
    trial is recorded ``interrupted`` (``--resume`` continues them, and records how they then end). A search
    whose device-time budget is spent (``budget_spent``) ran fewer trials than asked, and is finished."""
    # Every trial of the run, restored ones included. Their status cannot tell: Tune's cleanup after a stop marks
    # the running ones TERMINATED (after saving them as RUNNING); the fates that ``FateRecorder`` wrote can.
    # Storage has every record by now: Tune synced the staging copy before returning.
    trials = results._experiment_analysis.trials
    unfinished = [t for t in trials if read_fate(settings.experiment_dir, t.trial_id).get("fate") not in FINAL]
    for trial in unfinished:  # on storage, and in the staging copy that a resume on this cluster reuses
        epoch = last_recorded_epoch(settings.experiment_dir, trial.trial_id)
        for folder in (settings.experiment_dir, staging_dir(trial)):
            record_fate(folder, trial.trial_id, INTERRUPTED, epoch)
    if unfinished or (len(trials) < expected_trials(settings) and not budget_spent):
        raise StudyInterrupted(f"{len(trials) - len(unfinished)} of {expected_trials(settings)} trials ended, "
                               f"{len(unfinished)} interrupted; Tune saved the study's state: continue it with "
                               f"--resume (same --storage and --name)")
    return results


def unsynced_staging_copies(experiment: str) -> list[Path]:
    """The driver staging folders of this experiment in this node's Ray session: the folders of the same name
    that hold a trial this experiment's storage holds too (trial ids are random: no other experiment's)."""
    if not ray.is_initialized():
        return []
    artifacts = Path(_get_ray_train_session_dir())
    name = experiment.rstrip("/").rsplit("/", 1)[-1]
    stored = {f.split("/", 1)[0] for f in storage.list_files(experiment) if f.startswith("trial_")}
    return [staging for staging in sorted(artifacts.glob(f"*/{name}/driver_artifacts"))
            if {p.name for p in staging.glob("trial_*")} & stored]


def reconcile_with_storage(experiment: str) -> list[str]:
    """Before ``Tuner.restore``: make storage agree with Tune's saved state, which a SIGKILLed driver leaves up
    to ``STATE_SAVE_PERIOD_S`` old. Returns the orphans.

    - A trial folder that the saved state does not list (Tune created the trial after its last save) is an
      orphan: the restored searcher proposes its configuration again, as a new trial. It is recorded
      ``interrupted`` and ``orphaned``, and is no trial of the study (``study.summary.trial_ids``).
    - A checkpoint whose validation is not in the trial's recorded results is removed: the resumed trial
      trains that epoch again, and the old copy must not pass for its best checkpoint.

    First, on a cluster that outlived the killed driver, that driver's staging copy of the experiment is
    still on this node, fresher than storage (Tune writes it at once and syncs it every few seconds), and
    the restored Tuner reuses it and would upload its stale extras later: its last sync is finished now.
    """
    stagings = unsynced_staging_copies(experiment)
    for staging in stagings:
        log.info("resume: finishing the stopped driver's last sync from %s", staging)
        storage.upload(staging, experiment)
    files = set(storage.list_files(experiment))
    known = tune_state_trial_ids(experiment, files)
    if known is None:
        return []
    # Folders, not files: a driver killed just after Tune created a trial leaves its folder empty, in the
    # staging copy and (Tune's sync copies folders as they are) maybe on storage; the restored Tuner's syncs
    # bring it to storage later. An empty folder unknown to the saved state is an orphan too.
    prefix = trial_folder("")
    names = [*storage.list_folders(experiment), *(p.name for s in stagings for p in s.iterdir() if p.is_dir())]
    folders = {name.removeprefix(prefix) for name in names if name.startswith(prefix)}
    orphans = sorted(folders - known)
    for trial_id in orphans:  # also in the staging copies, whose later sync would bring back the old record
        for folder in (experiment, *map(str, stagings)):
            record_fate(folder, trial_id, INTERRUPTED, last_recorded_epoch(experiment, trial_id), orphaned=True,
                        detail="unknown to Tune's saved state after a killed driver; its configuration runs again")
    for trial_id in sorted(known & folders):
        recorded = last_recorded_epoch(experiment, trial_id)
        for folder, metrics in checkpoints(trial_dir(experiment, trial_id), with_weights=False):
            if metrics["epoch"] > recorded:
                for name in storage.list_files(folder):
                    storage.delete_file(storage.join(folder, name))
    if orphans:
        log.warning("resume: %d trial(s) unknown to Tune's saved state, run again: %s", len(orphans), orphans)
    return orphans
