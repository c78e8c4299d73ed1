"""The device-time budget enforced while a study runs (``--budget``; the accounting is ``study.budget``).

The scheduler keeps the count: it starts from what the study's trials already spent (an earlier run's, read from
storage) and adds each new result's device-seconds as Tune hands it over. Once the limit is reached:

- the search is finished (no trial is suggested again) and each trial waiting to start is stopped, its fate
  ``budget`` at epoch 0;
- each running trial stops at its next result (a validation, so its best checkpoint is kept), its fate ``budget``,
  unless that result was its last epoch (it completed) or ASHA stopped it then (ASHA's fate).

``BudgetSearch`` is Tune's ``SearchGenerator`` that reopens on ``--resume`` when the budget was raised.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher, SearchGenerator

from study.budget import duration_text, is_spent, read_limit, result_seconds, spent_by_model
from study.constraints import INFEASIBLE_KEY
from study.fates import BUDGET, record_fate
from study.orchestrate.stops import RecordingASHA, staging_dir


class _KeepsBudget:
    """What a scheduler adds to keep the budget; ``keep_budget`` arms it (a study without a budget: inert)."""

    _limit: float | None = None

    def keep_budget(self, root: str, epochs: int) -> Any:
        self._root, self._epochs, self._limit = root, epochs, read_limit(root)
        self._spent = sum(spent_by_model(root).values()) if self._limit is not None else 0.0
        self._counted: dict[str, int] = {}  # trial id -> the last epoch whose result was counted
        self._closed = False
        return self

    def __setstate__(self, state: dict) -> None:
        """Unpickled from ``tuner.pkl`` by a ``--resume``: the count starts again from storage and the limit in
        effect now (a resume may raise it)."""
        self.__dict__.update(state)
        if "_root" in state:
            self.keep_budget(self._root, self._epochs)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if self._limit is None:
            return decision
        epoch = int(result.get("epoch", 0) or 0)
        if epoch > self._counted.get(trial.trial_id, -1):  # Tune may hand the last result over twice
            self._counted[trial.trial_id] = epoch
            self._spent += result_seconds(result)
        if self._spent < self._limit:
            return decision
        if not self._closed:
            self._close(tune_controller)
        if decision == TrialScheduler.STOP or epoch >= self._epochs or result.get(INFEASIBLE_KEY):
            return decision  # ASHA stopped it (its fate), or it ended on its own
        record_fate(staging_dir(trial), trial.trial_id, BUDGET, epoch,
                    detail=f"the device-time budget ({duration_text(self._limit)}) was spent at epoch {epoch}")
        return TrialScheduler.STOP

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        if self._closed:
            return None
        return super().choose_trial_to_run(tune_controller)

    def _close(self, tune_controller: Any) -> None:
        """The budget is spent: no trial is suggested or started again."""
        self._closed = True
        tune_controller.search_alg.set_finished()
        for trial in tune_controller.get_trials():
            if trial.status in (Trial.PENDING, Trial.PAUSED):
                record_fate(staging_dir(trial), trial.trial_id, BUDGET, 0,
                            detail=f"not started: the device-time budget ({duration_text(self._limit)}) was spent")
                tune_controller.stop_trial(trial)


class BudgetedFIFO(_KeepsBudget, FIFOScheduler):
    pass


class BudgetedASHA(_KeepsBudget, RecordingASHA):
    pass


class BudgetSearch(SearchGenerator):
    """The search that the budget ends (``set_finished``), open again when a resumed study has budget left."""

    def __init__(self, searcher: Searcher, root: str) -> None:
        super().__init__(searcher)
        self._root = root

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if self._finished and not is_spent(self._root):
            self._finished = False
