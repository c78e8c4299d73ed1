"""A study's budget in device-time (``--budget``, or ``budget:`` in a space file), read from what is on disk (no Ray):
the run that enforces it (``study.orchestrate.budget``), a ``--resume``, the console and the report count alike.

Device-time is the seconds trials held their devices, summed over devices: each result a trial reports (one per
validation) carries Tune's ``time_this_iter_s`` (the seconds since its previous result; for the first, since it
started, its data loading and cost measurement included) and ``devices``, what the trial held: its GPUs (a share of
one when trials share a GPU), else one device per worker (a CPU trial counts 1). A result's device-seconds are their
product; a result recorded without ``devices`` counts one device. What a trial spent after its last result (the part
of an epoch a stop or a kill cut short) has no result and is not counted; nor is the Cityscapes stage. Tune's
``time_budget_s`` is wall-clock time, not this.

The limit in effect is ``budget.json`` at the study's root, written by each run (a ``--resume`` may raise it);
what was spent is summed over the results of the study's trials and its confirm stage's.
"""

from __future__ import annotations

import json
from typing import Any

from foundation import storage
from foundation.io import json_text
from study.layout import CONFIRM_DIR, tune_params, tune_results
from study.summary import trial_ids

BUDGET_FILE = "budget.json"
DEVICES_KEY = "devices"  # what a trial's result says it held (study.orchestrate.runners)
LIMIT_KEY = "budget_s"


def devices_held(gpus: float, workers: int = 1) -> float:
    """The devices a trial holds: its GPUs (all its workers', a fraction of one when shared), else its workers."""
    return float(gpus) if gpus and gpus > 0 else float(max(workers, 1))


def result_seconds(result: dict[str, Any]) -> float:
    """The device-seconds of one result: its ``time_this_iter_s`` x the devices it held (1 when not recorded)."""
    seconds = result.get("time_this_iter_s") or 0.0
    devices = result.get(DEVICES_KEY) or 1.0
    return float(seconds) * float(devices)


def spent_by_model(root: str) -> dict[str, float]:
    """Device-seconds per model spent by the trials of the study at ``root`` and of its confirm stage."""
    spent: dict[str, float] = {}
    for experiment in (root, storage.join(root, CONFIRM_DIR)):
        for trial_id in trial_ids(experiment):
            model = str(tune_params(experiment, trial_id).get("model", "-"))
            spent[model] = spent.get(model, 0.0) + sum(map(result_seconds, tune_results(experiment, trial_id)))
    return spent


def read_limit(root: str) -> float | None:
    """The budget in effect for the study at ``root`` (seconds), None when it has none."""
    path = storage.join(root, BUDGET_FILE)
    try:
        value = json.loads(storage.read_bytes(path)).get(LIMIT_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if value else None


def write_limit(root: str, limit: float) -> None:
    storage.write_bytes(storage.join(root, BUDGET_FILE), json_text({LIMIT_KEY: float(limit)}).encode())


def is_spent(root: str) -> bool:
    """The study at ``root`` has a budget and has spent it."""
    limit = read_limit(root)
    return limit is not None and sum(spent_by_model(root).values()) >= limit


def duration_text(seconds: float) -> str:
    """``0.5 s``, ``42 s``, ``12.5 min``, ``2.05 h``."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def spent_text(spent: dict[str, float], limit: float | None) -> str:
    """One line: the device-time spent, of the budget, and per model."""
    total = sum(spent.values())
    of = f" of the {duration_text(limit)} budget" + (" (spent)" if total >= limit else "") if limit else ""
    models = ", ".join(f"{model} {duration_text(s)}" for model, s in sorted(spent.items()))
    return f"device-time spent: {duration_text(total)}{of}" + (f"; per model: {models}" if models else "")


def report_lines(root: str) -> list[str]:
    """The report's section on the budget (none for a study without one)."""
    limit = read_limit(root)
    if limit is None:
        return []
    text = spent_text(spent_by_model(root), limit)
    return ["## Device-time budget", "", text[0].upper() + text[1:] + ". Device-time: the seconds trials held their "
            "devices, summed over devices (GPUs, or 1 per CPU trial worker), from each result's `time_this_iter_s`; "
            "once it is spent no trial starts, and a running one stops at its next validation (fate `budget`).", ""]
