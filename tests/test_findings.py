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


def measured_test_miou(df: pd.DataFrame, shift: dict[str, float] | None = None) -> pd.Series:
    """Each trial's test mIoU (as analysis.report measures it): its best val mIoU, plus ``shift[trial_id]``."""
    best = df.groupby("trial_id")["val_miou"].max()
    return best + pd.Series(shift or {}, dtype=float).reindex(best.index).fillna(0.0)


def found(df: pd.DataFrame, margin: float = 0.01, shift: dict[str, float] | None = None) -> pd.DataFrame:
    """``findings`` with every trial's test mIoU (``measured_test_miou``)."""
    return findings(df, margin, test_miou=measured_test_miou(df, shift))


def row(table: pd.DataFrame, claim_prefix: str, metric: str = "test_miou") -> pd.Series:
    return table[table["claim"].str.startswith(claim_prefix) & (table["metric"] == metric)].iloc[0]


HIGH, LOW, SAME = [0.70, 0.71, 0.72], [0.40, 0.41, 0.42], [0.500, 0.502, 0.498]


def test_findings_columns_and_one_row_per_claim() -> None:
    table = found(history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW)}))
    assert tuple(table.columns) == FINDINGS_COLUMNS
    assert len(table) == len(CLAIMS)
    missing = row(table, "2.")  # no SegFormer runs at all
    assert (missing["n_a"], missing["n_b"], missing["verdict"]) == (0, 0, "inconclusive (n=0/0)")


def test_a_clear_separation_holds_and_a_swapped_pair_is_reversed() -> None:
    table = found(history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW),
                              "seg finetune": flat(LOW), "seg scratch": flat(HIGH)}))
    holds, reversed_ = row(table, "1."), row(table, "2.")
    assert holds["verdict"] == "holds" and reversed_["verdict"] == "reversed"
    assert holds["diff"] == pytest.approx(0.30) and reversed_["diff"] == pytest.approx(-0.30)
    assert holds["ci_low"] < 0.30 < holds["ci_high"] and holds["ci_low"] > 0
    assert holds["p_value"] < 0.01 and holds["p_holm"] >= holds["p_value"]
    first = row(table, "1.", "first_val_miou")  # the first validation: 0.2 below the best in every curve
    assert first["mean_a"] == pytest.approx(np.mean(HIGH) - 0.2) and first["verdict"] == "holds"


def test_identical_groups_are_inconclusive_or_equivalent() -> None:
    table = found(history({"fcn finetune": flat(SAME), "fcn scratch": flat(SAME),
                              "seg finetune": flat(SAME), "seg finetune lr/2": flat(SAME)}))
    assert row(table, "1.")["verdict"] == "inconclusive (n=3/3)"
    assert row(table, "1.")["p_value"] == pytest.approx(1.0)
    equivalence = row(table, "4.")
    assert equivalence["verdict"] == "equivalent"
    assert -0.01 < equivalence["ci_low"] <= 0 <= equivalence["ci_high"] < 0.01
    # the same data with a margin narrower than its spread cannot be shown equivalent
    narrow = found(history({"seg finetune": flat(SAME), "seg finetune lr/2": flat(SAME)}), margin=0.0005)
    assert row(narrow, "4.")["verdict"] == "not shown equivalent"


def test_fewer_than_three_seeds_is_inconclusive_however_clear() -> None:
    table = found(history({"fcn finetune": flat(HIGH[:2]), "fcn scratch": flat(LOW[:2])}))
    result = row(table, "1.")
    assert result["verdict"] == "inconclusive (n=2/2)"
    assert result["p_value"] < 0.05 and math.isnan(result["p_holm"])  # tested, but not given a verdict


def test_instability_counts_drops_not_progress() -> None:
    """A curve that only rises is stable however much it learns; a zig-zag is not, however little it moves."""
    rising = [[0.30, 0.51, 0.72], [0.32, 0.50, 0.70], [0.31, 0.52, 0.71]]
    zigzag = [[0.50, 0.30, 0.60], [0.55, 0.25, 0.50], [0.40, 0.60, 0.35]]
    df = history({"fcn finetune": rising, "seg finetune": zigzag})
    scores = trial_scores(df).set_index("trial_id")
    assert (scores.loc[[f"fcn_finetune_{k}" for k in range(3)], "val_miou_instability"] == 0).all()
    assert scores.loc["seg_finetune_0", "val_miou_instability"] == pytest.approx(0.20)
    assert scores.loc["seg_finetune_1", "val_miou_instability"] == pytest.approx(0.30)
    assert row(found(df), "5.", "val_miou_instability")["verdict"] == "holds"
    # the old measure's failure: a steady riser against a small flat zig-zag
    small = [[0.50, 0.49, 0.50], [0.51, 0.50, 0.51], [0.50, 0.49, 0.50]]
    flat_zigzag = trial_scores(history({"seg finetune": small})).set_index("trial_id")["val_miou_instability"]
    assert (flat_zigzag > 0).all() and (scores.loc["fcn_finetune_0", "val_miou_instability"] < flat_zigzag).all()


def test_errored_trials_are_not_seeds() -> None:
    df = history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW)}, status={"fcn_finetune_2": "error"})
    assert "fcn_finetune_2" not in set(trial_scores(df)["trial_id"])
    assert row(found(df), "1.")["n_a"] == 2


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
    table = found(history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW),
                              "seg finetune": flat(HIGH), "seg finetune lr/2": flat(apart)}))
    words = [describe(row, claim) for claim, (_, row) in zip(CLAIMS, table.iterrows(), strict=True)]
    assert "larger than the spread between seeds, in the report's direction" in words[0]  # claim 1, best val mIoU
    assert "no completed run of SegFormer scratch" in words[2]  # claim 2
    assert "wholly beyond ±0.01 mIoU" in words[6]  # claim 4: lr/2 is 0.1 worse


def test_the_reports_findings_show_only_the_claims_with_data() -> None:
    """report.md's Findings: a table row only for a claim with a completed trial in both groups; the others named
    in one line; and a study of one seed per configuration says which command can test the claims."""
    from analysis.report import _findings_section

    three = "\n".join(_findings_section(found(history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW)})),
                                        0.01, seeds=3))
    assert "Welch's t-test" in three and "cannot test" not in three
    table = [line for line in three.splitlines() if line.startswith("| 1.")]
    assert len(table) == 2 and "nan" not in three  # claim 1, both metrics; nothing else has data
    assert "Left out" in three and "2. SegFormer: fine-tune beats scratch" in three.split("Left out")[1]

    one = "\n".join(_findings_section(found(history({"fcn finetune": flat(HIGH[:1]), "fcn scratch": flat(LOW[:1])})),
                                      0.01, seeds=1))
    assert "one seed per configuration, so it cannot test" in one and "`--confirm-top K --repeats 3`" in one
    assert len([line for line in one.splitlines() if line.startswith("| 1.")]) == 2 and "nan" not in one
    grid = "\n".join(_findings_section(found(history({"seg finetune": flat(HIGH[:1])})), 0.01, seeds=1, grid=True))
    assert "`--repeats 3` runs each configuration" in grid and "| claim" not in grid and "nan" not in grid


def test_a_configuration_is_chosen_among_completed_trials_only() -> None:
    """FCN fine-tune's best val run was stopped by ASHA: the group is the three completed seeds of the other
    configuration, not that one truncated run (which no test could count)."""
    df = history({"fcn finetune": flat(LOW), "fcn scratch": flat(LOW)})
    stopped = history({"fcn finetune": flat([0.95])}).assign(trial_id="stopped_by_asha", lr=2 * LR,
                                                            stop_reason="stopped early (ASHA)", stopped_early=True)
    df = pd.concat([df, stopped], ignore_index=True)
    assert best_configuration_trials(df, FCN)["fine-tune"] == ["fcn_finetune_0", "fcn_finetune_1", "fcn_finetune_2"]
    result = row(found(df), "1.")
    assert (result["n_a"], result["n_b"]) == (3, 3) and result["mean_a"] == pytest.approx(np.mean(LOW))
    interrupted = df.assign(stop_reason="interrupted", status="interrupted")  # nothing completed: no group at all
    assert best_configuration_trials(interrupted, FCN) == {}


def test_final_quality_is_tested_on_test_not_on_the_val_scores_that_chose() -> None:
    """Fine-tune wins on val (which chose each configuration) but loses on test: the claim is tested on test,
    so it reads reversed, and the row says its metric is test mIoU."""
    df = history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW)})
    shift = {f"fcn_finetune_{k}": -0.45 for k in range(3)}  # test: 0.25-0.27 against scratch's 0.40-0.42
    result = row(found(df, shift=shift), "1.")
    assert result["metric"] == "test_miou" and result["verdict"] == "reversed"
    assert result["mean_a"] == pytest.approx(np.mean(HIGH) - 0.45)
    first = row(found(df, shift=shift), "1.", "first_val_miou")  # "sooner" stays a claim about the val curve
    assert first["verdict"] == "holds"


def test_seeds_never_evaluated_on_test_are_not_counted() -> None:
    df = history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW)})
    test = measured_test_miou(df)
    test["fcn_finetune_2"] = math.nan  # its checkpoint was missing: the report could not evaluate it
    result = row(findings(df, test_miou=test), "1.")
    assert (result["n_a"], result["n_b"]) == (2, 3) and result["verdict"] == "inconclusive (n=2/3)"
    assert row(findings(df), "1.")["n_a"] == 0  # no test evaluation at all: nothing to test on


def test_an_equivalence_shown_alone_but_not_after_holm_is_worded_so() -> None:
    from analysis.findings import describe

    claim = next(c for c in CLAIMS if c.equivalent)
    tost = pd.Series({"claim": claim.text, "metric": "test_miou", "group_a": "SegFormer fine-tune lr/2",
                      "group_b": "SegFormer fine-tune", "n_a": 3, "n_b": 3, "mean_a": 0.500, "mean_b": 0.502,
                      "diff": -0.002, "ci_low": -0.006, "ci_high": 0.002, "p_value": 0.02, "p_holm": 0.08,
                      "verdict": "not shown equivalent"})
    words = describe(tost, claim, 0.01)
    assert "lies inside ±0.01 mIoU" in words and "not after Holm's correction" in words
    assert "cannot show" not in words
    unclear = describe(pd.Series({**tost.to_dict(), "ci_low": -0.015, "p_value": 0.2, "p_holm": 0.8}), claim, 0.01)
    assert "cannot show the two are within ±0.01 mIoU" in unclear
