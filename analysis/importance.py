"""Hyperparameter importance for best val mIoU: Optuna's fANOVA over the scored trials, for every key the
study searched (``analysis.load.searched_keys``), whatever it is.

Each key gets the distribution the space recorded for it where it can: a ``loguniform`` range a log float, a
``uniform`` one a float, a ``randint`` an integer, a ``choice`` or ``grid`` a category. A key the space does not
describe (a grid's points) is a float when its values are numbers (log when they span a factor of 10 or more),
else a category. Values that are not numbers (an image size, class weights) are categories named by their text,
and a trial that did not set a key has the category "unset", so no trial is dropped for it.
"""

from __future__ import annotations

import logging

import pandas as pd

log = logging.getLogger(__name__)

UNSET = "unset"
RANGES = ("loguniform", "uniform", "randint")


def _kind(entry: object) -> str | None:
    """The kind of a recorded space entry (``["loguniform", lo, hi]`` or ``{"loguniform": [lo, hi]}``), else None."""
    if isinstance(entry, dict) and len(entry) == 1:
        return next(iter(entry))
    if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], str):
        return entry[0]
    return None


def distribution(values: pd.Series, entry: object = None):
    """The Optuna distribution of one key's values (see module), and the values as that distribution takes them."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = _kind(entry)
    numeric = pd.api.types.is_numeric_dtype(values) and values.notna().all() and kind not in ("choice", "grid")
    if numeric and kind == "randint":
        return IntDistribution(int(values.min()), int(values.max())), [int(v) for v in values]
    if numeric and values.nunique() > 1:
        log_scale = kind == "loguniform" or (kind is None and values.min() > 0 and values.max() >= 10 * values.min())
        return FloatDistribution(float(values.min()), float(values.max()), log=log_scale), [float(v) for v in values]
    text = [UNSET if v is None or (isinstance(v, float) and v != v) else str(v) for v in values]
    return CategoricalDistribution(sorted(set(text))), text


def hyperparameter_importance(table: pd.DataFrame, keys: list[str], space: dict | None = None) -> dict[str, float]:
    """key -> fANOVA importance for the trials' best val mIoU, over the ``keys`` that vary among the scored trials
    (``space``: ``study.json``'s, for each key's distribution); empty with fewer than 3 scored trials, no varied
    key, or when the evaluator fails (logged)."""
    import optuna

    scored = table.dropna(subset=["best_val_miou"]).reset_index(drop=True)
    varied = [k for k in keys if k in scored and scored[k].map(repr).nunique() > 1]
    if len(scored) < 3 or not varied:
        return {}
    built = {k: distribution(scored[k], (space or {}).get(k)) for k in varied}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for i, value in enumerate(scored["best_val_miou"]):
        study.add_trial(optuna.trial.create_trial(params={k: built[k][1][i] for k in varied},
                                                  distributions={k: built[k][0] for k in varied}, value=float(value)))
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError) as exc:
        log.warning("hyperparameter importance failed: %s", exc)
        return {}
