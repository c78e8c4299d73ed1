"""analysis.findings on constructed result tables whose answers are known (no Ray, no training)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.findings import (
    CLAIMS,
    FINDINGS_COLUMNS,
    bootstrap_mean_ci,
    curve_bands,
    findings,
    holm,
    mean_ci,
    trial_scores,
)
from analysis.load import best_configuration_trials, strategy_labels

LR, EPOCHS = 1e-3, 6
FCN, SEGFORMER = "fcn_resnet50", "segformer"
ARMS = {  # strategy key -> (model, init, lr)
    "fcn scratch": (FCN, "scratch", LR), "fcn finetune": (FCN, "finetune", LR), "fcn freeze": (FCN, "freeze", LR),
    "seg scratch": (SEGFORMER, "scratch", LR), "seg finetune": (SEGFORMER, "finetune", LR),
    "seg finetune lr/2": (SEGFORMER, "finetune", LR / 2), "seg freeze": (SEGFORMER, "freeze", LR),
}


def history(curves: dict[str, list[list[float]]], status: dict[str, str] | None = None) -> pd.DataFrame:
    """A study's history as analysis.load gives it: ``curves[arm]`` is one val-mIoU curve (a value per
    validation, every 2 epochs) per seed."""
    rows = []
    for arm, per_seed in curves.items():
        model, init, lr = ARMS[arm]
        for seed, curve in enumerate(per_seed):
            trial_id = f"{arm.replace(' ', '_').replace('/', '')}_{seed}"
            for epoch in range(1, EPOCHS + 1):
                validated = epoch % 2 == 0 and epoch // 2 <= len(curve)
                rows.append({"trial_id": trial_id, "model": model, "init": init, "lr": lr, "gamma": 0.98,
                             "seed": seed, "epoch": epoch, "train_loss": 1.0 / epoch, "train_miou": 0.1 * epoch,
                             "val_loss": 1.0 / epoch if validated else math.nan,
                             "val_miou": curve[epoch // 2 - 1] if validated else math.nan,
                             "epochs_reached": EPOCHS, "status": (status or {}).get(trial_id, "done"),
                             "stop_reason": "completed", "stopped_early": False, "error": "", "best_checkpoint": ""})
    df = pd.DataFrame(rows)
    df.loc[df["status"] == "error", "stop_reason"] = "error"
    df["strategy"] = strategy_labels(df)
    return df


def flat(values: list[float]) -> list[list[float]]:
    """One curve per seed that rises to ``value`` at its last validation."""
    return [[v - 0.2, v - 0.1, v] for v in values]


def row(table: pd.DataFrame, claim_prefix: str, metric: str = "best_val_miou") -> pd.Series:
    return table[table["claim"].str.startswith(claim_prefix) & (table["metric"] == metric)].iloc[0]


HIGH, LOW, SAME = [0.70, 0.71, 0.72], [0.40, 0.41, 0.42], [0.500, 0.502, 0.498]


def test_findings_columns_and_one_row_per_claim() -> None:
    table = findings(history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW)}))
    assert tuple(table.columns) == FINDINGS_COLUMNS
    assert len(table) == len(CLAIMS)
    missing = row(table, "2.")  # no SegFormer runs at all
    assert (missing["n_a"], missing["n_b"], missing["verdict"]) == (0, 0, "inconclusive (n=0/0)")


def test_a_clear_separation_holds_and_a_swapped_pair_is_reversed() -> None:
    table = findings(history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW),
                              "seg finetune": flat(LOW), "seg scratch": flat(HIGH)}))
    holds, reversed_ = row(table, "1."), row(table, "2.")
    assert holds["verdict"] == "holds" and reversed_["verdict"] == "reversed"
    assert holds["diff"] == pytest.approx(0.30) and reversed_["diff"] == pytest.approx(-0.30)
    assert holds["ci_low"] < 0.30 < holds["ci_high"] and holds["ci_low"] > 0
    assert holds["p_value"] < 0.01 and holds["p_holm"] >= holds["p_value"]
    first = row(table, "1.", "first_val_miou")  # the first validation: 0.2 below the best in every curve
    assert first["mean_a"] == pytest.approx(np.mean(HIGH) - 0.2) and first["verdict"] == "holds"


def test_identical_groups_are_inconclusive_or_equivalent() -> None:
    table = findings(history({"fcn finetune": flat(SAME), "fcn scratch": flat(SAME),
                              "seg finetune": flat(SAME), "seg finetune lr/2": flat(SAME)}))
    assert row(table, "1.")["verdict"] == "inconclusive (n=3/3)"
    assert row(table, "1.")["p_value"] == pytest.approx(1.0)
    equivalence = row(table, "4.")
    assert equivalence["verdict"] == "equivalent"
    assert -0.01 < equivalence["ci_low"] <= 0 <= equivalence["ci_high"] < 0.01
    # the same data with a margin narrower than its spread cannot be shown equivalent
    narrow = findings(history({"seg finetune": flat(SAME), "seg finetune lr/2": flat(SAME)}), margin=0.0005)
    assert row(narrow, "4.")["verdict"] == "not shown equivalent"


def test_fewer_than_three_seeds_is_inconclusive_however_clear() -> None:
    table = findings(history({"fcn finetune": flat(HIGH[:2]), "fcn scratch": flat(LOW[:2])}))
    result = row(table, "1.")
    assert result["verdict"] == "inconclusive (n=2/2)"
    assert result["p_value"] < 0.05 and math.isnan(result["p_holm"])  # tested, but not given a verdict


def test_fluctuation_claim_compares_consecutive_changes() -> None:
    steady = [[0.50, 0.51, 0.52], [0.50, 0.52, 0.53], [0.49, 0.50, 0.52]]
    jumpy = [[0.50, 0.30, 0.60], [0.55, 0.25, 0.50], [0.40, 0.60, 0.35]]
    df = history({"fcn finetune": steady, "seg finetune": jumpy})
    scores = trial_scores(df).set_index("trial_id")
    assert scores.loc["fcn_finetune_0", "val_miou_fluctuation"] == pytest.approx(0.01)
    assert scores.loc["seg_finetune_0", "val_miou_fluctuation"] == pytest.approx(0.25)
    assert row(findings(df), "5.", "val_miou_fluctuation")["verdict"] == "holds"


def test_errored_trials_are_not_seeds() -> None:
    df = history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW)}, status={"fcn_finetune_2": "error"})
    assert "fcn_finetune_2" not in set(trial_scores(df)["trial_id"])
    assert row(findings(df), "1.")["n_a"] == 2


def test_holm_adjusts_in_step_down_order() -> None:
    p = pd.Series([0.01, 0.04, 0.03, math.nan, 0.5])
    adjusted = holm(p)
    # sorted: 0.01*4, 0.03*3, 0.04*2, 0.5*1 -> 0.04, 0.09, 0.09 (monotone), 0.5; the NaN stays out of the family
    assert adjusted.tolist()[:3] == pytest.approx([0.04, 0.09, 0.09])
    assert math.isnan(adjusted[3]) and adjusted[4] == pytest.approx(0.5)
    assert holm(pd.Series([0.2, 0.9])).tolist() == pytest.approx([0.4, 0.9])
    assert holm(pd.Series([0.6, 0.9])).tolist() == pytest.approx([1.0, 1.0])  # capped at 1, then monotone


def test_the_bootstrap_is_seeded_and_reproducible() -> None:
    values = np.array([0.41, 0.45, 0.52, 0.47])
    first, again = bootstrap_mean_ci(values, seed=7), bootstrap_mean_ci(values, seed=7)
    assert first == again
    mean, low, high = first
    assert mean == pytest.approx(values.mean()) and values.min() <= low < mean < high <= values.max()
    assert bootstrap_mean_ci(np.array([0.3])) == (0.3, 0.3, 0.3)  # one seed: no band
    df = history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW)})
    bands = curve_bands(df, "strategy", ("val_miou",))
    pd.testing.assert_frame_equal(bands, curve_bands(df, "strategy", ("val_miou",)))


def test_student_interval_of_the_test_miou() -> None:
    mean, low, high = mean_ci(np.array([0.5, 0.6, 0.7]))
    assert mean == pytest.approx(0.6) and (low, high) == pytest.approx((0.6 - 0.2484, 0.6 + 0.2484), abs=1e-3)
    assert all(math.isnan(v) for v in mean_ci(np.array([0.5]))[1:])


def test_a_strategys_group_is_the_seeds_of_its_best_configuration() -> None:
    df = history({"seg finetune": flat(HIGH), "seg finetune lr/2": flat(LOW)})
    chosen = best_configuration_trials(df, SEGFORMER)
    assert chosen == {"fine-tune": ["seg_finetune_0", "seg_finetune_1", "seg_finetune_2"],
                      "fine-tune lr/2": ["seg_finetune_lr2_0", "seg_finetune_lr2_1", "seg_finetune_lr2_2"]}


def test_each_verdict_is_told_in_words() -> None:
    from analysis.findings import describe

    apart = [0.60, 0.61, 0.62]
    table = findings(history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW),
                              "seg finetune": flat(HIGH), "seg finetune lr/2": flat(apart)}))
    words = [describe(row, claim) for claim, (_, row) in zip(CLAIMS, table.iterrows(), strict=True)]
    assert "larger than the spread between seeds, in the report's direction" in words[0]  # claim 1, best val mIoU
    assert "no completed run of SegFormer scratch" in words[2]  # claim 2
    assert "wholly beyond ±0.01 mIoU" in words[6]  # claim 4: lr/2 is 0.1 worse
