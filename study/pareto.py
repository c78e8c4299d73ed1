"""The Pareto front of several objectives: which rows no other row dominates. The confirm stage (``study.summary``)
and the report (``analysis.pareto``) choose with this one rule."""

from __future__ import annotations

import numpy as np
import pandas as pd


def losses(frame: pd.DataFrame, objectives: dict[str, str], columns: dict[str, str]) -> np.ndarray:
    """The objectives of each row as losses (a maximised value negated); ``columns``: metric -> column."""
    signs = np.array([-1.0 if objectives[m] == "max" else 1.0 for m in objectives])
    values = frame[[columns[m] for m in objectives]].to_numpy(dtype=float)
    return values * signs


def non_dominated(loss: np.ndarray) -> np.ndarray:
    """True for each row no other row dominates (no worse in every column, better in one); NaN rows never are
    on the front and dominate nothing."""
    loss = np.asarray(loss, dtype=float)
    valid = np.isfinite(loss).all(axis=1)
    front = valid.copy()
    for i in np.flatnonzero(valid):
        others = loss[valid]
        front[i] = not ((others <= loss[i]).all(axis=1) & (others < loss[i]).any(axis=1)).any()
    return front
