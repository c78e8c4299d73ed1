"""The report's claims as tested findings over seeds, and the confidence bands of the curves.

The report draws its conclusions from one run per configuration; with ``study.run --repeats N`` each
configuration has N seeds, and each claim below becomes a test of "is the difference larger than the
spread between seeds?".

The claims are derived from what the study ran (``derive_claims``), so any models can be compared:
- for each model that ran both: fine-tune beats scratch (test mIoU, and val mIoU at the first validation);
- for each model that ran both: freezing the encoder is worse than fine-tuning (test mIoU);
- for each model and init run at exactly two learning rates, nothing else differing (``analysis.load``'s
  '<init> lr/k' strategy): the lower is equivalent to the higher (test mIoU, TOST with the margin);
- for each pair of models with a fine-tuned run: the first's validation curve is less unstable than the
  second's (the report's claim 5, on their best fine-tuned configurations, as Fig 10 compares them); with
  ``compare_best``, also each pair's best configurations against each other on test mIoU.
- **Which model** (``which_model``): each pair of models' best configurations on test mIoU, the val winner as
  group a, in a Holm family of their own, so the claims above keep their adjusted p-values whatever models ran;
  ``model_headline`` says whether the best model's lead over the runner-up is decided.
Claims are numbered as the report numbered its five: fine-tune against scratch one number per model, then
one number per kind. For the report preset's grid (FCN ResNet-50, SegFormer) that gives exactly the report's
claims, texts and order, so its rows and numbers are those of the five claims tested by name before.

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
- **Holm's correction** over every row that is tested (n >= 3 in both groups): the claims are one family,
  however many models make them.
- A verdict needs at least 3 seeds in each group: fewer is ``inconclusive (n=a/b)``, never a guess.
- **Bands** on the curves: a percentile bootstrap of the mean over seeds (``scipy.stats.bootstrap``,
  seeded). With 3 seeds it can only resample three values, so the band shows the spread between seeds
  rather than a calibrated 95 % interval; the findings' intervals (Welch's t) are the calibrated ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

from analysis.load import INIT_VERB, LOWER_LR, best_configuration_trials, completed, model_label, trial_table
from study.config import EQUIVALENCE_MARGIN

ALPHA = 0.05
MIN_SEEDS = 3  # per group, for a verdict
DEFAULT_MARGIN = EQUIVALENCE_MARGIN  # mIoU; --equivalence-margin
NO_SPREAD = 1e-9  # values closer than this are the same number (t-tests on them are rounding noise)
FINDINGS_COLUMNS = ("claim", "metric", "group_a", "group_b", "hypothesis", "n_a", "n_b", "mean_a", "mean_b", "diff",
                    "ci_low", "ci_high", "p_value", "p_holm", "verdict")
EQUIVALENT = "|a - b| < margin"  # the hypothesis column of an equivalence claim; the others: a > b, a < b
SCORES = {  # metric -> what it means, in words
    "test_miou": "test mIoU of the best-by-val checkpoint",
    "best_val_miou": "best val mIoU",
    "first_val_miou": "val mIoU at the first validation, a claim about the val curve",
    "val_miou_instability": "total drop of val mIoU between consecutive validations",
}


@dataclass(frozen=True)
class Claim:
    """One claim: group a against group b on ``metric``. ``direction`` is the sign the claim says
    ``mean_a - mean_b`` has; ``equivalent`` claims the two are within the margin instead."""

    text: str
    metric: str
    a: tuple[str, str]  # (model, strategy)
    b: tuple[str, str]
    direction: int = 1
    equivalent: bool = False

    @property
    def hypothesis(self) -> str:
        """What the claim says of the two groups, as findings.csv's ``hypothesis`` column writes it."""
        return EQUIVALENT if self.equivalent else ("a > b" if self.direction > 0 else "a < b")


def derive_claims(df: pd.DataFrame, compare_best: bool = False) -> tuple[Claim, ...]:
    """The claims a study's history (``analysis.load``) can be asked, from the (model, strategy) groups it ran,
    whatever their status (a group with no completed trial gets its row, which says so). ``compare_best``: also
    each pair of models' best configurations on test mIoU, the one better on val as group a (see module)."""
    ran = set(zip(df["model"], df["strategy"], strict=True))
    models = sorted({m for m, _ in ran if isinstance(m, str)})
    number = itertools.count(1)
    claims: list[Claim] = []
    for model in models:  # the report's claims 1 and 2: one number per model
        if {(model, "fine-tune"), (model, "scratch")} <= ran:
            text = f"{next(number)}. {model_label(model)}: fine-tune beats scratch"
            claims += [Claim(text, metric, (model, "fine-tune"), (model, "scratch"))
                       for metric in ("test_miou", "first_val_miou")]
    frozen = [Claim(f"{model_label(m)}: freezing the encoder is worse than fine-tuning", "test_miou",
                    (m, "fine-tune"), (m, "freeze")) for m in models if {(m, "fine-tune"), (m, "freeze")} <= ran]
    rates = []
    for model, strategy in sorted(g for g in ran if LOWER_LR in str(g[1])):
        base, k = strategy.rsplit(LOWER_LR, 1)
        if (model, base) in ran:
            rates.append(Claim(f"{model_label(model)}: {INIT_VERB.get(base, base)} at lr/{k} is equivalent to lr",
                               "test_miou", (model, strategy), (model, base), equivalent=True))
    tuned = [m for m in models if (m, "fine-tune") in ran]
    curves = [Claim(f"{model_label(a, short=True)}'s validation curve fluctuates less than "
                    f"{model_label(b, short=True)}'s", "val_miou_instability", (a, "fine-tune"), (b, "fine-tune"),
                    direction=-1) for a, b in itertools.combinations(tuned, 2)]
    best = _best_against_best(df, models) if compare_best else []
    for kind in (frozen, rates, curves, best):  # the report's claims 3, 4 and 5: one number per kind
        if kind:
            n = next(number)
            claims += [dataclasses.replace(claim, text=f"{n}. {claim.text}") for claim in kind]
    return tuple(claims)


def model_ranking(df: pd.DataFrame) -> list[tuple[str, str, float]]:
    """(model, strategy, mean best val mIoU) of each model's best strategy, best first: among each model's
    strategies, the chosen configuration (``best_configuration_trials``, completed trials only) with the highest
    mean best val mIoU. Chosen on val, so the test split that then compares them chose nothing."""
    best = {}
    for model in sorted({m for m in df["model"] if isinstance(m, str)}):
        scores = trial_table(completed(df[df["model"] == model])).set_index("trial_id")["best_val_miou"]
        means = {s: scores.reindex(ids).mean() for s, ids in best_configuration_trials(df, model).items()}
        if means:
            best[model] = max(means.items(), key=lambda item: item[1])
    return sorted(((m, s, float(v)) for m, (s, v) in best.items()), key=lambda item: -item[2])


def _best_against_best(df: pd.DataFrame, models: list[str]) -> list[Claim]:
    """Each pair of models' best strategies (``model_ranking``) on test mIoU: the val winner is group a, so the
    claim is that it also wins on test."""
    best = {model: (strategy, value) for model, strategy, value in model_ranking(df) if model in models}
    claims = []
    for a, b in itertools.combinations(sorted(best), 2):
        a, b = (b, a) if best[b][1] > best[a][1] else (a, b)
        claims.append(Claim(f"{model_label(a)}'s best configuration beats {model_label(b)}'s", "test_miou",
                            (a, best[a][0]), (b, best[b][0])))
    return claims


def which_model(df: pd.DataFrame, test_miou: pd.Series | None = None, margin: float = DEFAULT_MARGIN) -> pd.DataFrame:
    """The best-against-best rows (``FINDINGS_COLUMNS``) of every pair of models, in a Holm family of their own:
    adding them to the claims' family would change the claims' adjusted p-values, and the question they answer
    ("which model?") is a separate one. Empty with fewer than two models that completed a trial."""
    models = sorted({m for m in df["model"] if isinstance(m, str)})
    claims = tuple(_best_against_best(df, models))
    if not claims:
        return pd.DataFrame(columns=FINDINGS_COLUMNS)
    return findings(df, margin, claims=claims, test_miou=test_miou)


def model_headline(ranking: list[tuple[str, str, float]], rows: pd.DataFrame) -> str:
    """The report's sentence on which model is best (``ranking``: ``model_ranking``; ``rows``: ``which_model``):
    the val winner, and whether its lead over the runner-up on test is decided (significant after Holm)."""
    if len(ranking) < 2:
        return ""
    (best, strategy, val), (second, second_strategy, _) = ranking[:2]
    pair = {group_label((best, strategy)), group_label((second, second_strategy))}
    match = rows[[{a, b} == pair for a, b in zip(rows["group_a"], rows["group_b"], strict=True)]]
    head = (f"**Best model:** {model_label(best)} (its best configuration, {strategy}, has the highest mean best "
            f"val mIoU, {val:.4f})")
    if not len(match) or match.iloc[0]["n_a"] == 0 or match.iloc[0]["n_b"] == 0:
        return head + f"; its lead over {model_label(second)} could not be tested on test."
    row = match.iloc[0]
    told = (f"test mIoU {row['mean_a']:.4f} against {row['mean_b']:.4f}, n={row['n_a']}/{row['n_b']} seeds"
            + ("" if math.isnan(row["p_holm"]) else f", Holm p = {row['p_holm']:.3g}"))
    if row["verdict"] == "holds":
        return head + f"; its lead over {model_label(second)} is **decided** on test ({told})."
    if row["verdict"] == "reversed":
        return head + f", but on test {model_label(second)} is significantly better ({told}): the lead is reversed."
    why = f"a verdict needs at least {MIN_SEEDS} seeds per group" if math.isnan(row["p_holm"]) else \
        "the difference is within the spread between seeds"
    return head + f"; its lead over {model_label(second)} is **not decided** ({told}; {why})."


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
                     "lr": first.get("lr", math.nan), "gamma": first.get("gamma", math.nan), "seed": first["seed"],
                     "test_miou": test,
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
    return f"{model_label(model)} {strategy}"


def findings(df: pd.DataFrame, margin: float = DEFAULT_MARGIN, claims: tuple[Claim, ...] | None = None,
             test_miou: pd.Series | None = None) -> pd.DataFrame:
    """One row per claim and metric (``FINDINGS_COLUMNS``; ``claims`` default: ``derive_claims(df)``) from a
    study's history (``analysis.load``) and the test mIoU of the chosen configurations' seeds (``test_miou``:
    trial id -> value; ``analysis.report``)."""
    claims = derive_claims(df) if claims is None else claims
    scores = trial_scores(df, test_miou)
    configurations = {model: best_configuration_trials(df, model) for model in set(df["model"].dropna())}
    rows = []
    for claim in claims:
        a = group_values(configurations, scores, *claim.a, claim.metric)
        b = group_values(configurations, scores, *claim.b, claim.metric)
        p, low, high = compare(a, b, claim.equivalent, margin)
        mean_a, mean_b = (float(v.mean()) if len(v) else math.nan for v in (a, b))
        rows.append({"claim": claim.text, "metric": claim.metric, "group_a": group_label(claim.a),
                     "group_b": group_label(claim.b), "hypothesis": claim.hypothesis, "n_a": len(a), "n_b": len(b),
                     "mean_a": mean_a, "mean_b": mean_b, "diff": mean_a - mean_b, "ci_low": low, "ci_high": high,
                     "p_value": p})
    table = pd.DataFrame(rows, columns=FINDINGS_COLUMNS[:-2])
    eligible = (table["n_a"] >= MIN_SEEDS) & (table["n_b"] >= MIN_SEEDS)
    table["p_holm"] = holm(table["p_value"].where(eligible))
    table["verdict"] = [verdict(claim, row.n_a, row.n_b, row.diff, row.p_holm)
                        for claim, row in zip(claims, table.itertuples(), strict=True)]
    return table


def describe(row: pd.Series, margin: float = DEFAULT_MARGIN) -> str:
    """One plain sentence on what the data shows for a findings row (its ``hypothesis`` says what is claimed)."""
    equivalent, direction = row["hypothesis"] == EQUIVALENT, -1 if row["hypothesis"] == "a < b" else 1
    metric = SCORES.get(row["metric"], row["metric"])
    if row["n_a"] == 0 or row["n_b"] == 0:
        missing = row["group_a"] if row["n_a"] == 0 else row["group_b"]
        return f"The study has no completed run of {missing}, so this cannot be tested."
    means = (f"{row['group_a']} averaged {row['mean_a']:.3f} and {row['group_b']} {row['mean_b']:.3f} "
             f"({metric}, n={row['n_a']}/{row['n_b']} seeds; difference {row['diff']:+.3f}")
    if math.isnan(row["p_value"]):
        return means + f"): too few seeds to test; a verdict needs at least {MIN_SEEDS} per group."
    level = "90 %" if equivalent else "95 %"
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
    leaning = "in the claim's direction" if np.sign(row["diff"]) == direction else "against the claim"
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
