"""The report's claims as tested findings over seeds, and the confidence bands of the curves.

The report draws its conclusions from one run per configuration; with ``study.run --repeats N`` each
configuration has N seeds, and each claim below becomes a test of "is the difference larger than the
spread between seeds?".

What is compared, and why:
- **Choose on val, test on test.** A strategy's group is the seeds of its best configuration, chosen by mean
  best val mIoU among the trials that completed their epochs (``analysis.load.best_configuration_trials``).
  The claims about final quality (1-4) are then tested on those seeds' **test mIoU** (each seed's
  best-by-val checkpoint on the test split, ``analysis.report``): one value per seed, on data that chose
  nothing. Testing on the val scores that did the choosing would bias the winner upward whenever strategies
  have different numbers of candidate configurations (a search's confirm stage), and each of those scores is
  itself a maximum over epochs.
- Claim 1's and 2's "acceptable results sooner" is a claim about the val curve: val mIoU at the first
  validation (``first_val_miou``), which chose nothing either.
- **Claim 5, instability** (``val_miou_instability``): the total of the drops of val mIoU between
  consecutive validations, sum(max(0, v[t-1] - v[t])). A curve that only rises scores 0 however much it
  learns; a curve that zig-zags scores what it loses on the way down. The mean absolute change used before
  counted steady progress as fluctuation, so a model that learned more looked less stable.
- Only completed trials are seeds: errored trials, ASHA-stopped ones and interrupted ones are not.

Tests, and why:
- **Welch's t-test** (``scipy.stats.ttest_ind(equal_var=False)``, two-sided), not a permutation test.
  With 3 seeds per group there are only C(6, 3) = 20 ways to relabel the runs, so a permutation test's
  smallest two-sided p-value is 0.1: it could never call a claim at the sizes a study can afford.
  Welch's test does not assume the two groups vary alike (a frozen encoder's runs spread less than a
  scratch run's); it does assume roughly normal per-seed scores. Its 95 % CI of the difference is given.
- **Equivalence** (claim 4) is a TOST: two one-sided Welch tests against -margin and +margin; its p is the
  larger of the two, and its interval the 90 % CI (the one that matches a TOST at the 5 % level).
- **Holm's correction** over every row that is tested (n >= 3 in both groups): the claims are one family.
- A verdict needs at least 3 seeds in each group: fewer is ``inconclusive (n=a/b)``, never a guess.
- **Bands** on the curves: a percentile bootstrap of the mean over seeds (``scipy.stats.bootstrap``,
  seeded). With 3 seeds it can only resample three values, so the band shows the spread between seeds
  rather than a calibrated 95 % interval; the findings' intervals (Welch's t) are the calibrated ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

from analysis.load import MODEL_LABEL, best_configuration_trials, completed
from study.config import EQUIVALENCE_MARGIN

ALPHA = 0.05
MIN_SEEDS = 3  # per group, for a verdict
DEFAULT_MARGIN = EQUIVALENCE_MARGIN  # mIoU; --equivalence-margin
NO_SPREAD = 1e-9  # values closer than this are the same number (t-tests on them are rounding noise)
FINDINGS_COLUMNS = ("claim", "metric", "group_a", "group_b", "n_a", "n_b", "mean_a", "mean_b", "diff", "ci_low",
                    "ci_high", "p_value", "p_holm", "verdict")
SCORES = {  # metric -> what it means, in words
    "test_miou": "test mIoU of the best-by-val checkpoint",
    "best_val_miou": "best val mIoU",
    "first_val_miou": "val mIoU at the first validation, a claim about the val curve",
    "val_miou_instability": "total drop of val mIoU between consecutive validations",
}


@dataclass(frozen=True)
class Claim:
    """One of the report's claims: group a against group b on ``metric``. ``direction`` is the sign the
    report says ``mean_a - mean_b`` has; ``equivalent`` claims the two are within the margin instead."""

    text: str
    metric: str
    a: tuple[str, str]  # (model, strategy)
    b: tuple[str, str]
    direction: int = 1
    equivalent: bool = False


FCN, SEGFORMER = "fcn_resnet50", "segformer"
CLAIMS = (
    Claim("1. FCN ResNet-50: fine-tune beats scratch", "test_miou", (FCN, "fine-tune"), (FCN, "scratch")),
    Claim("1. FCN ResNet-50: fine-tune beats scratch", "first_val_miou", (FCN, "fine-tune"), (FCN, "scratch")),
    Claim("2. SegFormer: fine-tune beats scratch", "test_miou", (SEGFORMER, "fine-tune"), (SEGFORMER, "scratch")),
    Claim("2. SegFormer: fine-tune beats scratch", "first_val_miou", (SEGFORMER, "fine-tune"),
          (SEGFORMER, "scratch")),
    Claim("3. FCN ResNet-50: freezing the encoder is worse than fine-tuning", "test_miou", (FCN, "fine-tune"),
          (FCN, "freeze")),
    Claim("3. SegFormer: freezing the encoder is worse than fine-tuning", "test_miou", (SEGFORMER, "fine-tune"),
          (SEGFORMER, "freeze")),
    Claim("4. SegFormer: fine-tuning at lr/2 is equivalent to lr", "test_miou", (SEGFORMER, "fine-tune lr/2"),
          (SEGFORMER, "fine-tune"), equivalent=True),
    Claim("5. FCN's validation curve fluctuates less than SegFormer's", "val_miou_instability", (FCN, "fine-tune"),
          (SEGFORMER, "fine-tune"), direction=-1),
)


def instability(curve: np.ndarray) -> float:
    """The total drop of a val-mIoU curve between consecutive validations (0 for a curve that never falls)."""
    return float(np.clip(-np.diff(curve), 0, None).sum()) if len(curve) > 1 else math.nan


def trial_scores(df: pd.DataFrame, test_miou: pd.Series | None = None) -> pd.DataFrame:
    """One row per trial that completed its epochs, with the scores the claims compare (``SCORES``).
    ``test_miou``: trial id -> the test mIoU of its best-by-val checkpoint (NaN for a trial not evaluated).

    Errored trials, trials the scheduler stopped early and interrupted ones are left out: a truncated curve
    is not a seed of its configuration.
    """
    rows = []
    for trial_id, group in completed(df).groupby("trial_id", sort=False):
        curve = group.dropna(subset=["val_miou"]).sort_values("epoch")["val_miou"].to_numpy()
        if not len(curve):
            continue
        first = group.iloc[0]
        test = test_miou.get(trial_id, math.nan) if test_miou is not None else math.nan
        rows.append({"trial_id": trial_id, "model": first["model"], "strategy": first["strategy"],
                     "lr": first["lr"], "gamma": first["gamma"], "seed": first["seed"], "test_miou": test,
                     "best_val_miou": curve.max(), "first_val_miou": curve[0],
                     "val_miou_instability": instability(curve)})
    return pd.DataFrame(rows, columns=["trial_id", "model", "strategy", "lr", "gamma", "seed", *SCORES])


def group_values(configurations: dict[str, dict[str, list[str]]], scores: pd.DataFrame, model: str, strategy: str,
                 metric: str) -> np.ndarray:
    """The per-seed ``metric`` of the trials of (model, strategy)'s best configuration (``configurations``:
    ``best_configuration_trials`` per model)."""
    ids = configurations.get(model, {}).get(strategy, [])
    values = scores.loc[scores["trial_id"].isin(ids), metric].to_numpy(dtype=float)
    return values[np.isfinite(values)]


def compare(a: np.ndarray, b: np.ndarray, equivalent: bool = False,
               margin: float = DEFAULT_MARGIN) -> tuple[float, float, float]:
    """(p, ci_low, ci_high) of Welch's test of a against b (TOST against ``margin`` when ``equivalent``);
    NaNs when either group has fewer than 2 values or both have no spread."""
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) < NO_SPREAD and np.ptp(b) < NO_SPREAD):
        return math.nan, math.nan, math.nan
    welch = scipy.stats.ttest_ind(a, b, equal_var=False)
    if not equivalent:
        ci = welch.confidence_interval(1 - ALPHA)
        return float(welch.pvalue), float(ci.low), float(ci.high)
    above = scipy.stats.ttest_ind(a + margin, b, equal_var=False, alternative="greater").pvalue  # diff > -margin
    below = scipy.stats.ttest_ind(a - margin, b, equal_var=False, alternative="less").pvalue  # diff < +margin
    ci = welch.confidence_interval(1 - 2 * ALPHA)
    return float(max(above, below)), float(ci.low), float(ci.high)


def holm(p_values: pd.Series) -> pd.Series:
    """Holm's step-down adjusted p-values over the non-missing entries (missing ones stay missing)."""
    tested = p_values.dropna().sort_values()
    factors = len(tested) - np.arange(len(tested))
    return (tested * factors).cummax().clip(upper=1.0).reindex(p_values.index)


def verdict(claim: Claim, n_a: int, n_b: int, diff: float, p_holm: float) -> str:
    if n_a < MIN_SEEDS or n_b < MIN_SEEDS or math.isnan(p_holm):
        return f"inconclusive (n={n_a}/{n_b})"
    if claim.equivalent:
        return "equivalent" if p_holm < ALPHA else "not shown equivalent"
    if p_holm >= ALPHA:
        return f"inconclusive (n={n_a}/{n_b})"
    return "holds" if np.sign(diff) == claim.direction else "reversed"


def group_label(group: tuple[str, str]) -> str:
    model, strategy = group
    return f"{MODEL_LABEL.get(model, model)} {strategy}"


def findings(df: pd.DataFrame, margin: float = DEFAULT_MARGIN, claims: tuple[Claim, ...] = CLAIMS,
             test_miou: pd.Series | None = None) -> pd.DataFrame:
    """One row per claim and metric (``FINDINGS_COLUMNS``) from a study's history (``analysis.load``) and the
    test mIoU of the chosen configurations' seeds (``test_miou``: trial id -> value; ``analysis.report``)."""
    scores = trial_scores(df, test_miou)
    configurations = {model: best_configuration_trials(df, model) for model in set(df["model"].dropna())}
    rows = []
    for claim in claims:
        a = group_values(configurations, scores, *claim.a, claim.metric)
        b = group_values(configurations, scores, *claim.b, claim.metric)
        p, low, high = compare(a, b, claim.equivalent, margin)
        mean_a, mean_b = (float(v.mean()) if len(v) else math.nan for v in (a, b))
        rows.append({"claim": claim.text, "metric": claim.metric, "group_a": group_label(claim.a),
                     "group_b": group_label(claim.b), "n_a": len(a), "n_b": len(b), "mean_a": mean_a,
                     "mean_b": mean_b, "diff": mean_a - mean_b, "ci_low": low, "ci_high": high, "p_value": p})
    table = pd.DataFrame(rows, columns=FINDINGS_COLUMNS[:-2])
    eligible = (table["n_a"] >= MIN_SEEDS) & (table["n_b"] >= MIN_SEEDS)
    table["p_holm"] = holm(table["p_value"].where(eligible))
    table["verdict"] = [verdict(claim, row.n_a, row.n_b, row.diff, row.p_holm)
                        for claim, row in zip(claims, table.itertuples(), strict=True)]
    return table


def describe(row: pd.Series, claim: Claim, margin: float = DEFAULT_MARGIN) -> str:
    """One plain sentence on what the data shows for a findings row (of ``claim``)."""
    metric = SCORES.get(row["metric"], row["metric"])
    if row["n_a"] == 0 or row["n_b"] == 0:
        missing = row["group_a"] if row["n_a"] == 0 else row["group_b"]
        return f"The study has no completed run of {missing}, so this cannot be tested."
    means = (f"{row['group_a']} averaged {row['mean_a']:.3f} and {row['group_b']} {row['mean_b']:.3f} "
             f"({metric}, n={row['n_a']}/{row['n_b']} seeds; difference {row['diff']:+.3f}")
    if math.isnan(row["p_value"]):
        return means + f"): too few seeds to test; a verdict needs at least {MIN_SEEDS} per group."
    level = "90 %" if claim.equivalent else "95 %"
    interval = f", {level} CI [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], p = {row['p_value']:.3g}"
    if math.isnan(row["p_holm"]):
        return means + interval + f"): too few seeds for a verdict (at least {MIN_SEEDS} per group)."
    interval += f", Holm p = {row['p_holm']:.3g})"
    if row["verdict"] == "equivalent":
        return means + interval + f": the interval lies inside ±{margin:g} mIoU, so the two are equivalent."
    if row["verdict"] == "not shown equivalent":
        if row["ci_low"] > margin or row["ci_high"] < -margin:
            return means + interval + f": the interval lies wholly beyond ±{margin:g} mIoU, so the two differ by " \
                "more than the margin."
        if row["p_value"] < ALPHA:  # the 90 % CI lies inside the margin: equivalent alone, not after Holm
            return means + interval + f": the interval lies inside ±{margin:g} mIoU, so on its own the test shows " \
                "the two equivalent, but not after Holm's correction across the claims tested."
        return means + interval + f": the data cannot show the two are within ±{margin:g} mIoU of each other."
    leaning = "in the report's direction" if np.sign(row["diff"]) == claim.direction else "against the report"
    if row["verdict"] in ("holds", "reversed"):
        return means + interval + f": the difference is larger than the spread between seeds, {leaning}."
    if row["p_value"] < ALPHA:
        return means + interval + (f": significant on its own ({leaning}), but not after Holm's correction across "
                                   "the claims tested, so inconclusive.")
    return means + interval + f": the difference ({leaning}) is within the spread between seeds."


def bootstrap_mean_ci(values: np.ndarray, seed: int = 0, n_resamples: int = 2000) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and a seeded percentile-bootstrap 95 % interval of it (the
    interval collapses to the mean for a single value or no spread)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2 or np.ptp(values) < NO_SPREAD:
        return mean, mean, mean
    ci = scipy.stats.bootstrap((values,), np.mean, n_resamples=n_resamples, method="percentile",
                               rng=np.random.default_rng(seed)).confidence_interval
    return mean, float(ci.low), float(ci.high)


def curve_bands(df: pd.DataFrame, label_column: str, metrics: tuple[str, ...], seed: int = 0) -> pd.DataFrame:
    """Per label and epoch: the number of seeds, and each metric's mean with its bootstrap band
    (``<metric>_mean``, ``<metric>_low``, ``<metric>_high``)."""
    rows = []
    for (label, epoch), group in df.groupby([label_column, "epoch"], sort=True):
        row = {label_column: label, "epoch": epoch, "n": group["trial_id"].nunique(),
               "trials": " ".join(sorted(group["trial_id"].unique()))}
        for metric in metrics:
            row[f"{metric}_mean"], row[f"{metric}_low"], row[f"{metric}_high"] = bootstrap_mean_ci(
                group[metric].to_numpy(), seed)
        rows.append(row)
    return pd.DataFrame(rows)


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its Student-t 95 % interval (the test mIoU over seeds)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        mean = float(values.mean()) if len(values) else math.nan
        return mean, math.nan, math.nan
    if np.ptp(values) < NO_SPREAD:
        return float(values[0]), float(values[0]), float(values[0])
    low, high = scipy.stats.t.interval(1 - ALPHA, len(values) - 1, loc=values.mean(), scale=scipy.stats.sem(values))
    return float(values.mean()), float(low), float(high)
