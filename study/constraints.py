"""A study's objectives and constraints as numbers (no Ray, no Optuna): what the searcher is told, what is checked
before a trial trains, and what the report can reuse to say which trial was feasible.

- ``settings.objectives``: metric -> ``max`` | ``min`` (default ``{"val_miou": "max"}``);
- ``settings.constraints``: metric -> ``{"max": x}`` and/or ``{"min": x}``.

A constraint value follows Optuna's convention (``Trial.set_constraint``): <= 0 is feasible. It is the violation
relative to the bound, ``(value - x) / |x|`` for a ``max`` and ``(x - value) / |x|`` for a ``min``, so that
violations of a latency in ms and of a parameter count in millions weigh alike where a sampler sums them.

The cost metrics known before training (measured on the trial's device, or counted) are ``BEFORE_TRAINING``: a
constraint on one of them is checked before the trial trains, and a configuration that violates it is never
trained (``study.fates.INFEASIBLE``).
"""

from __future__ import annotations

import math
from typing import Any

from segmodels.cost import DEVICE_KEY as COST_DEVICE
from segmodels.cost import MEASURED

__all__ = ["BEFORE_TRAINING", "COST_DEVICE", "COUNTED", "INFEASIBLE_KEY", "MEASURED", "VIOLATIONS_KEY", "bounds",
           "constraint_name", "constraint_values", "before_training", "directions", "feasible", "unmeetable",
           "violations"]

# What segmodels.cost.measure_cost measures (MEASURED, and the device kind it ran on), and what it counts.
COUNTED = ("params", "flops")
BEFORE_TRAINING = (*MEASURED, *COUNTED)
INFEASIBLE_KEY = "infeasible"  # a trial's result: it violated a constraint checked before training
VIOLATIONS_KEY = "violations"  # ... and which, as one line


# The values a metric can take: mIoU in [0, 1]; every cost is >= 0 (a time, a rate, a size, a count).
LIMITS = {"val_miou": (0.0, 1.0)}
COST_LIMITS = (0.0, math.inf)


def unmeetable(constraints: dict[str, dict[str, float]]) -> str | None:
    """Why no value of some metric can meet ``constraints`` (a bound that is not a finite number, a min above the
    max, a bound beyond what the metric can be), as ``latency_ms: max -1 is below every value it can take (>= 0)``;
    None when each metric's bounds leave some value."""
    for metric, limits in constraints.items():
        low, high = LIMITS.get(metric, COST_LIMITS)
        for side, bound in limits.items():
            if not _finite(bound):
                return f"{metric}: {side} {bound} is not a finite number"
        if limits.get("min", -math.inf) > limits.get("max", math.inf):
            return f"{metric}: min {limits['min']:g} is above max {limits['max']:g}"
        if limits.get("max", math.inf) < low:
            return f"{metric}: max {limits['max']:g} is below every value {metric} can take (>= {low:g})"
        if limits.get("min", -math.inf) > high:
            return f"{metric}: min {limits['min']:g} is above every value {metric} can take (<= {high:g})"
    return None


def bounds(constraints: dict[str, dict[str, float]]) -> list[tuple[str, str, float]]:
    """``(metric, "max"|"min", bound)`` for every bound of ``constraints``, in a stable order."""
    return [(metric, side, float(limits[side])) for metric, limits in sorted(constraints.items())
            for side in ("max", "min") if side in limits]


def constraint_name(metric: str, side: str) -> str:
    """The key of one bound among a trial's Optuna constraints, e.g. ``latency_ms:max``."""
    return f"{metric}:{side}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def constraint_values(constraints: dict[str, dict[str, float]], metrics: dict[str, Any]) -> dict[str, float]:
    """Each bound's relative violation for ``metrics`` (<= 0: feasible); a bound whose metric is not among
    ``metrics`` (or not a finite number) has no value."""
    values = {}
    for metric, side, bound in bounds(constraints):
        value = metrics.get(metric)
        if not _finite(value):
            continue
        scale = abs(bound) or 1.0
        values[constraint_name(metric, side)] = (value - bound) / scale if side == "max" else (bound - value) / scale
    return values


def violations(constraints: dict[str, dict[str, float]], metrics: dict[str, Any]) -> list[str]:
    """The bounds ``metrics`` violates, as ``latency_ms 7.1 > max 5`` lines."""
    found = []
    for metric, side, bound in bounds(constraints):
        value = metrics.get(metric)
        if _finite(value) and (value > bound if side == "max" else value < bound):
            found.append(f"{metric} {value:.4g} {'>' if side == 'max' else '<'} {side} {bound:.4g}")
    return found


def before_training(constraints: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The constraints that can be checked before a trial trains (on its cost)."""
    return {metric: limits for metric, limits in constraints.items() if metric in BEFORE_TRAINING}


def feasible(constraints: dict[str, dict[str, float]], metrics: dict[str, Any]) -> bool:
    """Every bound whose metric is known is met (an unknown one does not count against it)."""
    return all(value <= 0 for value in constraint_values(constraints, metrics).values())


def directions(objectives: dict[str, str]) -> tuple[list[str], list[str]]:
    """(metrics, modes) of the objectives, in their given order: what OptunaSearch takes as metric and mode."""
    return list(objectives), [objectives[m] for m in objectives]
