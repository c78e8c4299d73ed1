"""The search benchmark's statistics: normalised regret, IQM and percentile-bootstrap 95 % CIs (numpy only).

- normalised regret of a found value: (set's best - found) / (set's best - set's median); 0 is the best, 1 no
  better than the median configuration, below 0 only where a held-out seed scores the pick above the set's best;
- IQM: the interquartile mean, the mean of the middle half (``scipy.stats.trim_mean(x, 0.25)``, as rliable);
- CI: the percentile bootstrap, 10,000 resamples from a fixed seed, so a rerun gives the same interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

WITHIN = 0.01  # "found the best": within this much val mIoU of the set's best
RESAMPLES = 10_000


def normalised_regret(found: float, best: float, median: float) -> float:
    if not best > median:
        raise ValueError(f"normalised regret needs the set's best ({best}) above its median ({median})")
    return (best - found) / (best - median)


def iqm(values: Sequence[float] | np.ndarray, axis: int = -1) -> np.ndarray | float:
    """The mean of the values between the 25th and 75th percentile, a quarter trimmed from each end
    (``scipy.stats.trim_mean(values, 0.25)``: with n values, int(n / 4) go from each end)."""
    x = np.sort(np.asarray(values, dtype=float), axis=axis)
    n = x.shape[axis]
    cut = int(0.25 * n)
    return np.take(x, range(cut, n - cut), axis=axis).mean(axis=axis)


def bootstrap_ci(values: Sequence[float], statistic: Callable[..., np.ndarray], seed: int = 0,
                 resamples: int = RESAMPLES, level: float = 0.95) -> list[float]:
    """The percentile-bootstrap interval of ``statistic(sample, axis=-1)`` over ``values``."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, len(x), size=(resamples, len(x)))]
    stats = statistic(samples, axis=-1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))]


def summarise(regrets: Sequence[float], gaps: Sequence[float], seed: int = 0) -> dict[str, object]:
    """One budget's row: regret mean and IQM with their CIs, and the share of runs within ``WITHIN`` of the best
    (``gaps``: set's best - found, in val mIoU)."""
    r = np.asarray(regrets, dtype=float)
    return {"regret_mean": round(float(r.mean()), 4), "regret_iqm": round(float(iqm(r)), 4),
            "regret_ci": [round(v, 4) for v in bootstrap_ci(r, np.mean, seed)],
            "regret_iqm_ci": [round(v, 4) for v in bootstrap_ci(r, iqm, seed)],
            "within_0.01": round(float(np.mean(np.asarray(gaps) <= WITHIN + 1e-12)), 4), "runs": len(r)}
