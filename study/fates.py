"""How each trial of a study ended, recorded when it happens (no Ray): ``STORAGE/NAME/fates/<trial_id>.json``.

The summary, the console and the report read this record; none of them infers a trial's fate from how many
epochs it reached. Who writes what, and when:
- the driver's Tune callback (``study.orchestrate.stops.FateRecorder``): ``completed`` or ``ended short``
  when a trial returns, ``error`` when Tune gives up on it, a failure (the count, and the last error in
  ``errors/<trial_id>.last-failure.txt``) each time Tune restarts it;
- the same callback: ``infeasible`` when the trial reported, instead of training, that its measured cost
  violates a constraint checked before training (``study.trial_cost.infeasible_result``; the record keeps the
  violated bounds and the cost);
- the scheduler (``study.orchestrate.stops.RecordingASHA``): ``stopped early (ASHA)`` at the moment ASHA
  stops a trial before its last epoch;
- the budget (``study.orchestrate.budget.BudgetScheduler``, ``--budget``): ``budget`` at the validation where
  a trial stops because the study's device-time is spent (it keeps its best checkpoint), and for a trial that
  was waiting to start then (it never trains);
- the study, when it is stopped (SIGINT, SIGTERM): ``interrupted`` for every trial still unfinished; a
  resumed study overwrites that with how the trial then ends;
- ``--resume``, for a trial that Tune's saved state does not know (a driver killed between Tune creating it
  and Tune's next save of its state): ``interrupted`` and ``orphaned``; Tune runs its configuration again as
  a new trial, and the orphan is no trial of the study (``study.summary.trial_ids`` leaves it out).
"""

from __future__ import annotations

import json
import time
from typing import Any

from foundation import storage
from foundation.io import json_text
from study.layout import error_file, fate_file, last_failure_file

COMPLETED = "completed"
STOPPED_BY_ASHA = "stopped early (ASHA)"
ENDED_SHORT = "ended short"  # returned before its epochs with no scheduler decision and no error
ERROR = "error"
INTERRUPTED = "interrupted"
INFEASIBLE = "infeasible"  # never trained: its measured cost violated a constraint checked before training
BUDGET = "budget"  # stopped (or never started) because the study's device-time budget was spent (--budget)
ENDED = (COMPLETED, STOPPED_BY_ASHA, ENDED_SHORT, INFEASIBLE, BUDGET)  # a trial with one of these never trains again
FINAL = (*ENDED, ERROR)  # how a run of the study can leave a trial; --resume retries the errored ones
STATUS = {COMPLETED: "done", STOPPED_BY_ASHA: "done", ENDED_SHORT: "done", ERROR: "error", BUDGET: "done",
          INTERRUPTED: "interrupted", INFEASIBLE: "infeasible"}  # summary.csv's status; no record: "running"


def read_fate(experiment: str, trial_id: str) -> dict[str, Any]:
    """A trial's record (empty before anything was recorded for it)."""
    path = fate_file(experiment, trial_id)
    try:
        return json.loads(storage.read_bytes(path))
    except (OSError, ValueError):  # none yet (FileNotFoundError), or unreadable
        return {}


def fate_of(trial_id: str, *experiments: str) -> dict[str, Any]:
    """The first record of a trial found in ``experiments`` (e.g. the driver's staging copy, then storage: a
    driver restored in a new Ray session starts with a staging copy that holds none of the earlier records)."""
    return next((record for experiment in experiments if (record := read_fate(experiment, trial_id))), {})


def record_fate(experiment: str, trial_id: str, fate: str, epoch: int, previous: dict[str, Any] | None = None,
                **fields: Any) -> dict[str, Any]:
    """Record how a trial ended at ``epoch``, keeping its failure count (from ``previous``, else the record in
    ``experiment``). Returns the record."""
    previous = previous if previous is not None else read_fate(experiment, trial_id)
    record = {**previous, **fields, "trial_id": trial_id, "fate": fate, "epoch": int(epoch),
              "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record.setdefault("failures", 0)
    _write(experiment, trial_id, record)
    return record


def record_failure(experiment: str, trial_id: str, error_text: str, previous: dict[str, Any] | None = None) -> int:
    """A failure Tune retries: count it, keep its error text; the trial's fate stays open. Returns the count."""
    record = dict(previous if previous is not None else read_fate(experiment, trial_id))
    failures = int(record.get("failures", 0)) + 1
    lines = [line.strip() for line in error_text.splitlines() if line.strip()]
    record.update(trial_id=trial_id, failures=failures, last_failure=lines[-1] if lines else "")
    storage.write_bytes(last_failure_file(experiment, trial_id), error_text.encode())
    _write(experiment, trial_id, record)
    return failures


def _write(experiment: str, trial_id: str, record: dict[str, Any]) -> None:
    storage.write_bytes(fate_file(experiment, trial_id), json_text(record).encode())


def has_permanent_error(experiment: str, trial_id: str) -> bool:
    """The trial recorded an error that retrying cannot fix (``study.trial.record_permanent_error``)."""
    return storage.is_file(error_file(experiment, trial_id))
