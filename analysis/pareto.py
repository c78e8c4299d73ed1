"""Several objectives: the Pareto set chosen on val, tested on test, and the hypervolume a search reached.

A study's record (``study.json``) names its ``objectives`` ({metric: "max" | "min"}, default
{"val_miou": "max"}) and ``constraints`` ({metric: {"max": x} or {"min": x}}, default none). A metric is
``val_miou`` or a per-trial column of ``summary.csv`` (``latency_ms``, ``params``, ``flops``, ...).

What is chosen, and why:
- **On val, among completed trials.** A trial ASHA stopped has a truncated curve, an errored or interrupted
  one none, and an ``infeasible`` configuration was never trained: none of them is a candidate.
- **Configuration means.** With repeated seeds, a configuration (every searched key equal) is one point: the
  mean over its completed seeds of each objective. One lucky seed does not put a configuration on the front.
- **Constraints first.** The front is taken among the configurations whose means satisfy every constraint
  (as in Optuna's constrained domination, a feasible point dominates every infeasible one); when none does, among
  all of them, each row saying ``feasible`` False.
- **Ties.** Domination is strict in at least one objective, so configurations with equal objectives are all on
  the front.
- **Tested on test.** Each front point's seeds are scored on the test split (``analysis.report``); the point
  gets the mean test mIoU with a Student-t 95 % CI over its seeds (``analysis.findings.mean_ci``), and
  ``on_test_front`` says whether it is still non-dominated among the val front once val mIoU is replaced by
  test mIoU: a point the val choice flattered drops off.

Hypervolume: each objective is rescaled to [0, 1] over the completed feasible trials (best 0, worst 1, as losses)
and the reference point is 1.1 in every objective, so the extreme points count and the value is unitless (at most
1.1 ** d). It is computed by Optuna's exact algorithm (``optuna._hypervolume``: a 2-D sweep, WFG beyond), so more
than two objectives are exact as well. Against trials, the x axis counts the trials trained, in the order Tune
created them (``study.summary.creation_numbers``: Ray's ids are random); each step is the hypervolume of the
completed feasible trials so far, one point per trial rather than per configuration, because it measures what the
search found.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.findings import mean_ci
from analysis.load import completed
from study.pareto import losses, non_dominated
from study.summary import in_creation_order

INFEASIBLE = "infeasible"  # the fate of a configuration refused on its measured cost before training
VAL_COLUMNS = {"val_miou": "best_val_miou"}  # an objective's column in summary.csv, where the name differs
TEST_COLUMNS = {"val_miou": "test_miou"}  # the same objective measured on the test split
DIRECTIONS = ("max", "min")
REFERENCE = 1.1  # the hypervolume's reference point in each rescaled objective


def objectives_of(settings: dict) -> dict[str, str]:
    """A study's objectives, metric -> "max" | "min" (``study.json``'s ``objectives``; default val mIoU)."""
    objectives = dict(settings.get("objectives") or {"val_miou": "max"})
    for metric, direction in objectives.items():
        if direction not in DIRECTIONS:
            raise ValueError(f"objective {metric}: direction {direction!r}, expected max or min")
    return objectives


def constraints_of(settings: dict) -> dict[str, dict[str, float]]:
    """A study's constraints, metric -> {"max": x} and/or {"min": x} (``study.json``'s ``constraints``)."""
    return {metric: dict(bound) for metric, bound in (settings.get("constraints") or {}).items()}


def val_column(metric: str) -> str:
    """The summary column holding ``metric`` as measured on val (a cost column is its own name)."""
    return VAL_COLUMNS.get(metric, metric)


def test_column(metric: str) -> str:
    """The column holding ``metric`` as measured on test (a cost does not depend on the split)."""
    return TEST_COLUMNS.get(metric, metric)


def satisfies(frame: pd.DataFrame, constraints: dict[str, dict[str, float]]) -> pd.Series:
    """True for each row whose values meet every constraint (a missing value meets none)."""
    ok = pd.Series(True, index=frame.index)
    for metric, bound in constraints.items():
        values = frame[val_column(metric)].astype(float)
        if "max" in bound:
            ok &= values <= bound["max"]
        if "min" in bound:
            ok &= values >= bound["min"]
    return ok


def hashable(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``frame`` with list values of ``keys`` (an image size, class weights) as tuples, so rows group on them."""
    out = frame.copy()
    for key in keys:
        out[key] = [tuple(v) if isinstance(v, list) else v for v in out[key]]
    return out


def configuration_means(table: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    """One row per configuration (equal ``keys``) of the completed trials: the mean of each of ``columns``
    over its seeds, ``seeds`` and ``trial_ids`` (space-separated, by seed)."""
    done = hashable(completed(table), keys)
    if not len(done):
        return pd.DataFrame(columns=[*keys, *columns, "seeds", "trial_ids"])
    rows = []
    for values, group in done.groupby(keys, dropna=False, sort=False):
        group = group.sort_values("seed") if "seed" in group else group
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
        row.update({c: group[c].astype(float).mean() for c in columns})
        row.update(seeds=len(group), trial_ids=" ".join(map(str, group["trial_id"])))
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_set(table: pd.DataFrame, objectives: dict[str, str], keys: list[str],
               constraints: dict[str, dict[str, float]] | None = None, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """The configurations on the val Pareto front (see module), sorted by the first objective, best first; with
    each objective's and each of ``extra``'s configuration mean, ``seeds``, ``trial_ids`` and ``feasible``."""
    constraints = constraints or {}
    columns = list(dict.fromkeys([*(val_column(m) for m in (*objectives, *constraints)),
                                  *(c for c in extra if c in table.columns)]))
    means = configuration_means(table, keys, columns)
    if not len(means):
        return means.assign(feasible=pd.Series(dtype=bool))
    means["feasible"] = satisfies(means, constraints)
    candidates = means[means["feasible"]] if means["feasible"].any() else means
    loss = losses(candidates, objectives, {m: val_column(m) for m in objectives})
    front = candidates[non_dominated(loss)]
    first = val_column(next(iter(objectives)))
    return front.sort_values(first, ascending=objectives[next(iter(objectives))] == "min").reset_index(drop=True)


def tested_on_test(front: pd.DataFrame, test_miou: pd.Series, objectives: dict[str, str]) -> pd.DataFrame:
    """``front`` with each configuration's test mIoU over its seeds (``test_miou``: trial id -> value; NaN or
    absent for a seed not evaluated): ``test_seeds``, ``test_miou``, ``test_ci_low``, ``test_ci_high``, and
    ``on_test_front``: non-dominated within the front once its objectives are measured on test."""
    out = front.copy()
    stats = [mean_ci(test_miou.reindex(ids.split()).to_numpy(dtype=float)) for ids in out["trial_ids"]]
    out["test_seeds"] = [int(test_miou.reindex(ids.split()).notna().sum()) for ids in out["trial_ids"]]
    out["test_miou"] = [s[0] for s in stats]
    out["test_ci_low"], out["test_ci_high"] = [s[1] for s in stats], [s[2] for s in stats]
    columns = {m: test_column(m) for m in objectives}
    out["on_test_front"] = non_dominated(losses(out, objectives, columns)) if len(out) else []
    return out


def hypervolume(loss: np.ndarray, reference: np.ndarray) -> float:
    """The exact hypervolume dominated by ``loss`` (rows of losses) up to ``reference`` (Optuna's algorithm);
    rows not strictly better than the reference in every objective add nothing."""
    from optuna._hypervolume import compute_hypervolume

    loss = np.asarray(loss, dtype=float)
    loss = loss[np.isfinite(loss).all(axis=1) & (loss < reference).all(axis=1)]
    return float(compute_hypervolume(loss, np.asarray(reference, dtype=float))) if len(loss) else 0.0


def hypervolume_curve(table: pd.DataFrame, objectives: dict[str, str],
                      constraints: dict[str, dict[str, float]] | None = None) -> pd.DataFrame:
    """Per trial trained, in creation order: ``trial`` (1, 2, ...), ``trial_id`` and ``hypervolume`` of the
    completed feasible trials up to it, on objectives rescaled over all of them (see module)."""
    trained = in_creation_order(table[table["stop_reason"] != INFEASIBLE]).reset_index(drop=True)
    columns = {m: val_column(m) for m in objectives}
    scored = completed(trained)
    scored = scored[satisfies(scored, constraints or {})]
    loss = pd.DataFrame(losses(scored, objectives, columns), index=scored.index).dropna()
    low, span = loss.min(), (loss.max() - loss.min()).replace(0.0, 1.0)
    scaled = (loss - low) / span
    reference = np.full(len(objectives), REFERENCE)
    curve = [hypervolume(scaled.loc[scaled.index <= k].to_numpy(), reference) for k in trained.index]
    return pd.DataFrame({"trial": trained.index + 1, "trial_id": trained["trial_id"], "hypervolume": curve})


def broken(row: pd.Series, constraints: dict[str, dict[str, float]]) -> list[str]:
    """The constraints (as ``bound_text`` words) one configuration's values break; a missing value breaks its own."""
    frame = row.to_frame().T
    return [bound_text(metric, bound) for metric, bound in constraints.items()
            if not satisfies(frame, {metric: bound}).iloc[0]]


def best_under_constraints(table: pd.DataFrame, keys: list[str], constraints: dict[str, dict[str, float]],
                           extra: tuple[str, ...] = ()) -> dict[str, pd.Series | None]:
    """For each constraint alone, then all together ("all", with two or more): the configuration with the highest
    mean val mIoU among those whose means satisfy it (None when none does)."""
    columns = list(dict.fromkeys(["best_val_miou", *(val_column(m) for m in constraints),
                                  *(c for c in extra if c in table.columns)]))
    means = configuration_means(table, keys, columns)
    cases = {metric: {metric: bound} for metric, bound in constraints.items()}
    if len(constraints) > 1:
        cases["all"] = constraints
    best: dict[str, pd.Series | None] = {}
    for name, case in cases.items():
        ok = means[satisfies(means, case)].dropna(subset=["best_val_miou"]) if len(means) else means
        best[name] = ok.loc[ok["best_val_miou"].idxmax()] if len(ok) else None
    return best


def bound_text(metric: str, bound: dict[str, float]) -> str:
    """A constraint in words: ``latency_ms <= 5``, ``val_miou >= 0.5``."""
    parts = [f"{metric} ≤ {bound['max']:g}"] if "max" in bound else []
    parts += [f"{metric} ≥ {bound['min']:g}"] if "min" in bound else []
    return " and ".join(parts)
