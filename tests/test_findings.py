"""analysis.findings on constructed result tables whose answers are known (no Ray, no training)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.findings import (
    EQUIVALENT,
    FINDINGS_COLUMNS,
    Claim,
    bootstrap_mean_ci,
    curve_bands,
    derive_claims,
    describe,
    findings,
    holm,
    mean_ci,
    model_headline,
    model_ranking,
    trial_scores,
    which_model,
)
from analysis.load import best_configuration_trials, model_colours, model_label, strategy_labels

LR, EPOCHS = 1e-3, 6
FCN, SEGFORMER = "fcn_resnet50", "segformer"
ARMS = {  # strategy key -> (model, init, lr)
    "fcn scratch": (FCN, "scratch", LR), "fcn finetune": (FCN, "finetune", LR), "fcn freeze": (FCN, "freeze", LR),
    "seg scratch": (SEGFORMER, "scratch", LR), "seg finetune": (SEGFORMER, "finetune", LR),
    "seg finetune lr/2": (SEGFORMER, "finetune", LR / 2), "seg freeze": (SEGFORMER, "freeze", LR),
}


def history(curves: dict, status: dict[str, str] | None = None, gamma: dict | None = None) -> pd.DataFrame:
    """A study's history as analysis.load gives it: ``curves[arm]`` is one val-mIoU curve (a value per
    validation, every 2 epochs) per seed; an arm is a key of ``ARMS`` or a (model, init, lr) tuple, whose
    trials are named ``model_init_lr_seed``; ``gamma[arm]``: its gamma (default 0.98)."""
    rows = []
    for arm, per_seed in curves.items():
        model, init, lr = ARMS[arm] if isinstance(arm, str) else arm
        name = arm if isinstance(arm, str) else f"{model}_{init}_{lr:g}"
        for seed, curve in enumerate(per_seed):
            trial_id = f"{name.replace(' ', '_').replace('/', '')}_{seed}"
            for epoch in range(1, EPOCHS + 1):
                validated = epoch % 2 == 0 and epoch // 2 <= len(curve)
                rows.append({"trial_id": trial_id, "model": model, "init": init, "lr": lr,
                             "gamma": (gamma or {}).get(arm, 0.98),
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


def row(table: pd.DataFrame, claim: str, metric: str = "test_miou") -> pd.Series:
    """The row of the claim whose text contains ``claim``, on ``metric``."""
    return table[table["claim"].str.contains(claim, regex=False) & (table["metric"] == metric)].iloc[0]


FCN_TUNES, SEG_TUNES = "FCN ResNet-50: fine-tune beats scratch", "SegFormer: fine-tune beats scratch"
SEG_FREEZES, HALF_LR, FLUCTUATES = "SegFormer: freezing", "SegFormer: fine-tuning at lr/2", "fluctuates less"


HIGH, LOW, SAME = [0.70, 0.71, 0.72], [0.40, 0.41, 0.42], [0.500, 0.502, 0.498]


def test_findings_columns_and_a_row_only_for_what_ran() -> None:
    table = found(history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW), "seg finetune": flat(HIGH)},
                          status={f"seg_finetune_{k}": "error" for k in range(3)}))
    assert tuple(table.columns) == FINDINGS_COLUMNS
    # FCN fine-tune against scratch (two metrics); no SegFormer scratch or freeze, so no claims about them; the
    # pair's curves, although SegFormer's fine-tuned trials all errored: that row says so
    assert list(table["claim"]) == ["1. FCN ResNet-50: fine-tune beats scratch"] * 2 + [
        "2. FCN's validation curve fluctuates less than SegFormer's"]
    missing = row(table, FLUCTUATES, "val_miou_instability")
    assert (missing["n_a"], missing["n_b"], missing["verdict"]) == (3, 0, "inconclusive (n=3/0)")
    assert list(table["hypothesis"]) == ["a > b", "a > b", "a < b"]


def test_a_clear_separation_holds_and_a_swapped_pair_is_reversed() -> None:
    table = found(history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW),
                              "seg finetune": flat(LOW), "seg scratch": flat(HIGH)}))
    holds, reversed_ = row(table, FCN_TUNES), row(table, SEG_TUNES)
    assert holds["verdict"] == "holds" and reversed_["verdict"] == "reversed"
    assert holds["diff"] == pytest.approx(0.30) and reversed_["diff"] == pytest.approx(-0.30)
    assert holds["ci_low"] < 0.30 < holds["ci_high"] and holds["ci_low"] > 0
    assert holds["p_value"] < 0.01 and holds["p_holm"] >= holds["p_value"]
    first = row(table, FCN_TUNES, "first_val_miou")  # the first validation: 0.2 below the best in every curve
    assert first["mean_a"] == pytest.approx(np.mean(HIGH) - 0.2) and first["verdict"] == "holds"


def test_identical_groups_are_inconclusive_or_equivalent() -> None:
    table = found(history({"fcn finetune": flat(SAME), "fcn scratch": flat(SAME),
                              "seg finetune": flat(SAME), "seg finetune lr/2": flat(SAME)}))
    assert row(table, FCN_TUNES)["verdict"] == "inconclusive (n=3/3)"
    assert row(table, FCN_TUNES)["p_value"] == pytest.approx(1.0)
    equivalence = row(table, HALF_LR)
    assert equivalence["verdict"] == "equivalent"
    assert -0.01 < equivalence["ci_low"] <= 0 <= equivalence["ci_high"] < 0.01
    # the same data with a margin narrower than its spread cannot be shown equivalent
    narrow = found(history({"seg finetune": flat(SAME), "seg finetune lr/2": flat(SAME)}), margin=0.0005)
    assert row(narrow, HALF_LR)["verdict"] == "not shown equivalent"


def test_fewer_than_three_seeds_is_inconclusive_however_clear() -> None:
    table = found(history({"fcn finetune": flat(HIGH[:2]), "fcn scratch": flat(LOW[:2])}))
    result = row(table, FCN_TUNES)
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
    assert row(found(df), FLUCTUATES, "val_miou_instability")["verdict"] == "holds"
    # the old measure's failure: a steady riser against a small flat zig-zag
    small = [[0.50, 0.49, 0.50], [0.51, 0.50, 0.51], [0.50, 0.49, 0.50]]
    flat_zigzag = trial_scores(history({"seg finetune": small})).set_index("trial_id")["val_miou_instability"]
    assert (flat_zigzag > 0).all() and (scores.loc["fcn_finetune_0", "val_miou_instability"] < flat_zigzag).all()


def test_errored_trials_are_not_seeds() -> None:
    df = history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW)}, status={"fcn_finetune_2": "error"})
    assert "fcn_finetune_2" not in set(trial_scores(df)["trial_id"])
    assert row(found(df), FCN_TUNES)["n_a"] == 2


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
    apart = [0.60, 0.61, 0.62]
    table = found(history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW), "seg scratch": flat(LOW),
                           "seg finetune": flat(HIGH), "seg finetune lr/2": flat(apart)},
                          status={f"seg_scratch_{k}": "error" for k in range(3)}))
    assert "larger than the spread between seeds, in the claim's direction" in describe(row(table, FCN_TUNES))
    assert "no completed run of SegFormer scratch" in describe(row(table, SEG_TUNES))
    assert "wholly beyond ±0.01 mIoU" in describe(row(table, HALF_LR))  # lr/2 is 0.1 worse


def test_the_reports_findings_show_only_the_claims_with_data() -> None:
    """report.md's Findings: a table row only for a claim with a completed trial in both groups; the others named
    in one line; and a study of one seed per configuration says which command can test the claims."""
    from analysis.report import _findings_section

    errored = {f"seg_{arm}_{k}": "error" for arm in ("finetune", "scratch") for k in range(3)}
    three = "\n".join(_findings_section(found(history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW),
                                                        "seg finetune": flat(HIGH), "seg scratch": flat(LOW)},
                                                       status=errored)), 0.01, seeds=3))
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
    result = row(found(df), FCN_TUNES)
    assert (result["n_a"], result["n_b"]) == (3, 3) and result["mean_a"] == pytest.approx(np.mean(LOW))
    interrupted = df.assign(stop_reason="interrupted", status="interrupted")  # nothing completed: no group at all
    assert best_configuration_trials(interrupted, FCN) == {}


def test_final_quality_is_tested_on_test_not_on_the_val_scores_that_chose() -> None:
    """Fine-tune wins on val (which chose each configuration) but loses on test: the claim is tested on test,
    so it reads reversed, and the row says its metric is test mIoU."""
    df = history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW)})
    shift = {f"fcn_finetune_{k}": -0.45 for k in range(3)}  # test: 0.25-0.27 against scratch's 0.40-0.42
    result = row(found(df, shift=shift), FCN_TUNES)
    assert result["metric"] == "test_miou" and result["verdict"] == "reversed"
    assert result["mean_a"] == pytest.approx(np.mean(HIGH) - 0.45)
    first = row(found(df, shift=shift), FCN_TUNES, "first_val_miou")  # "sooner" stays a claim about the val curve
    assert first["verdict"] == "holds"


def test_seeds_never_evaluated_on_test_are_not_counted() -> None:
    df = history({"fcn finetune": flat(HIGH), "fcn scratch": flat(LOW)})
    test = measured_test_miou(df)
    test["fcn_finetune_2"] = math.nan  # its checkpoint was missing: the report could not evaluate it
    result = row(findings(df, test_miou=test), FCN_TUNES)
    assert (result["n_a"], result["n_b"]) == (2, 3) and result["verdict"] == "inconclusive (n=2/3)"
    assert row(findings(df), FCN_TUNES)["n_a"] == 0  # no test evaluation at all: nothing to test on


def test_an_equivalence_shown_alone_but_not_after_holm_is_worded_so() -> None:
    tost = pd.Series({"claim": "4. SegFormer: fine-tuning at lr/2 is equivalent to lr", "metric": "test_miou",
                      "group_a": "SegFormer fine-tune lr/2", "group_b": "SegFormer fine-tune",
                      "hypothesis": EQUIVALENT, "n_a": 3, "n_b": 3, "mean_a": 0.500, "mean_b": 0.502,
                      "diff": -0.002, "ci_low": -0.006, "ci_high": 0.002, "p_value": 0.02, "p_holm": 0.08,
                      "verdict": "not shown equivalent"})
    words = describe(tost, 0.01)
    assert "lies inside ±0.01 mIoU" in words and "not after Holm's correction" in words
    assert "cannot show" not in words
    unclear = describe(pd.Series({**tost.to_dict(), "ci_low": -0.015, "p_value": 0.2, "p_holm": 0.8}), 0.01)
    assert "cannot show the two are within ±0.01 mIoU" in unclear


TV, HF = "tv:deeplabv3_mobilenet_v3_large", "hf:/models/tiny-upernet"


def test_models_of_any_name_get_readable_labels() -> None:
    assert model_label("fcn_resnet50") == "FCN ResNet-50" and model_label("fcn_resnet50", short=True) == "FCN"
    assert model_label("segformer", short=True) == "SegFormer"
    assert model_label(TV) == "deeplabv3_mobilenet_v3_large"
    assert model_label(HF) == "tiny-upernet" and model_label("hf:./models/mine/") == "mine"
    assert model_label("hf:nvidia/mit-b2") == "nvidia/mit-b2"  # a Hub id names its owner
    colours = model_colours(m for m in (TV, "fcn_resnet50", HF))  # Fig 10: one colour per model, FCN's as before
    assert colours["FCN ResNet-50"] == "tab:blue" and len(set(colours.values())) == 3


def test_the_claims_are_derived_for_three_models_with_holm_across_every_row() -> None:
    """Three models of three families: each model's own claims, one row per pair of models, and one Holm family."""
    df = history({(TV, "finetune", LR): flat(HIGH), (TV, "scratch", LR): flat(LOW), (TV, "freeze", LR): flat(LOW),
                  (HF, "finetune", LR): flat(SAME), (HF, "scratch", LR): flat(LOW),
                  (SEGFORMER, "finetune", LR): flat(HIGH), (SEGFORMER, "finetune", LR / 2): flat(HIGH)})
    claims = derive_claims(df)
    assert [(c.text, c.metric) for c in claims] == [
        ("1. tiny-upernet: fine-tune beats scratch", "test_miou"),
        ("1. tiny-upernet: fine-tune beats scratch", "first_val_miou"),
        ("2. deeplabv3_mobilenet_v3_large: fine-tune beats scratch", "test_miou"),
        ("2. deeplabv3_mobilenet_v3_large: fine-tune beats scratch", "first_val_miou"),
        ("3. deeplabv3_mobilenet_v3_large: freezing the encoder is worse than fine-tuning", "test_miou"),
        ("4. SegFormer: fine-tuning at lr/2 is equivalent to lr", "test_miou"),
        ("5. tiny-upernet's validation curve fluctuates less than SegFormer's", "val_miou_instability"),
        ("5. tiny-upernet's validation curve fluctuates less than deeplabv3_mobilenet_v3_large's",
         "val_miou_instability"),
        ("5. SegFormer's validation curve fluctuates less than deeplabv3_mobilenet_v3_large's",
         "val_miou_instability")]
    table = found(df)
    pairs = table[table["metric"] == "val_miou_instability"]
    assert {frozenset((r.group_a, r.group_b)) for r in pairs.itertuples()} == {  # every pair of models
        frozenset((f"{model_label(a)} fine-tune", f"{model_label(b)} fine-tune"))
        for a, b in ((TV, HF), (TV, SEGFORMER), (HF, SEGFORMER))}
    assert row(table, "deeplabv3_mobilenet_v3_large: fine-tune beats scratch")["verdict"] == "holds"
    assert row(table, "tiny-upernet: fine-tune beats scratch")["verdict"] == "holds"  # 0.50 against 0.41
    tested = table["p_value"].notna() & (table["n_a"] >= 3) & (table["n_b"] >= 3)
    family = table.loc[tested, "p_value"].sort_values()
    smallest = family.index[0]  # Holm's first step multiplies by the size of the whole family
    assert table.loc[smallest, "p_holm"] == pytest.approx(min(1.0, family.iloc[0] * len(family)))
    assert len(family) >= 6 and table.loc[~tested, "p_holm"].isna().all()


def test_an_init_run_at_two_learning_rates_gets_its_equivalence_test() -> None:
    """Any init, any ratio, when nothing but lr differs; a search's configurations, which differ in gamma too,
    are not a learning-rate pair."""
    grid = history({(TV, "scratch", 1e-3): flat(SAME), (TV, "scratch", 3e-4): flat(SAME)})
    assert set(grid["strategy"]) == {"scratch", "scratch lr/3.33"}
    (claim,) = derive_claims(grid)
    assert claim.text == "1. deeplabv3_mobilenet_v3_large: training from scratch at lr/3.33 is equivalent to lr"
    assert claim.equivalent and claim.a == (TV, "scratch lr/3.33") and claim.b == (TV, "scratch")
    assert found(grid).iloc[0]["verdict"] == "equivalent"
    search = history({(TV, "scratch", 1e-3): flat(SAME), (TV, "scratch", 3e-4): flat(SAME)},
                     gamma={(TV, "scratch", 3e-4): 0.95})
    assert set(search["strategy"]) == {"scratch"} and derive_claims(search) == ()


def test_best_configuration_against_best_configuration() -> None:
    """With ``compare_best``, each pair of models' best strategies (on val) on test mIoU, the val winner as a."""
    df = history({(TV, "finetune", LR): flat(HIGH), (TV, "scratch", LR): flat(LOW),
                  (HF, "finetune", LR): flat(LOW), (HF, "scratch", LR): flat(SAME)})
    best = [c for c in derive_claims(df, compare_best=True) if "best configuration" in c.text]
    assert best == [Claim("4. deeplabv3_mobilenet_v3_large's best configuration beats tiny-upernet's", "test_miou",
                          (TV, "fine-tune"), (HF, "scratch"))]
    assert not any("best configuration" in c.text for c in derive_claims(df))  # off unless asked
    shift = {f"{TV}_finetune_0.001_{k}": -0.4 for k in range(3)}  # the val winner loses on test
    table = findings(df, claims=derive_claims(df, compare_best=True), test_miou=measured_test_miou(df, shift))
    assert row(table, "best configuration")["verdict"] == "reversed"


# The five claims analysis.findings tested by name before they were derived (frozen here for the comparison).
FCN_LABEL, SEG_LABEL = "FCN ResNet-50", "SegFormer"
REPORT_CLAIMS = (
    Claim(f"1. {FCN_LABEL}: fine-tune beats scratch", "test_miou", (FCN, "fine-tune"), (FCN, "scratch")),
    Claim(f"1. {FCN_LABEL}: fine-tune beats scratch", "first_val_miou", (FCN, "fine-tune"), (FCN, "scratch")),
    Claim(f"2. {SEG_LABEL}: fine-tune beats scratch", "test_miou", (SEGFORMER, "fine-tune"), (SEGFORMER, "scratch")),
    Claim(f"2. {SEG_LABEL}: fine-tune beats scratch", "first_val_miou", (SEGFORMER, "fine-tune"),
          (SEGFORMER, "scratch")),
    Claim(f"3. {FCN_LABEL}: freezing the encoder is worse than fine-tuning", "test_miou", (FCN, "fine-tune"),
          (FCN, "freeze")),
    Claim(f"3. {SEG_LABEL}: freezing the encoder is worse than fine-tuning", "test_miou", (SEGFORMER, "fine-tune"),
          (SEGFORMER, "freeze")),
    Claim(f"4. {SEG_LABEL}: fine-tuning at lr/2 is equivalent to lr", "test_miou", (SEGFORMER, "fine-tune lr/2"),
          (SEGFORMER, "fine-tune"), equivalent=True),
    Claim("5. FCN's validation curve fluctuates less than SegFormer's", "val_miou_instability", (FCN, "fine-tune"),
          (SEGFORMER, "fine-tune"), direction=-1),
)
GENUINE = Path(__file__).resolve().parents[1] / "docs" / "findings-genuine"


def genuine_study() -> tuple[pd.DataFrame, pd.Series]:
    """The recorded genuine-sample study (docs/findings.md) rebuilt from its CSVs: a history and each trial's test
    mIoU with the statistics its findings were computed from.

    - test mIoU: test_summary.csv's mean and Student-t CI give each group's mean and standard deviation, all that
      Welch's test and TOST read; the seeds get mean - sd, mean, mean + sd.
    - val mIoU at the first validation: a curve CSV's epoch-2 band is a percentile bootstrap of 3 seeds, whose
      2.5 % and 97.5 % points are the smallest and largest seed (each drawn thrice with chance 1/27 > 2.5 %), so
      the seeds are low, 3 x mean - low - high, high.
    - best val mIoU: summary.csv. Instability: not recorded per trial (the curve CSVs hold bands only); each
      fine-tuned trial gets a made-up drop, so that row is tested but its numbers are not the recorded ones.
    """
    summary = pd.read_csv(GENUINE / "summary.csv", dtype={"trial_id": str})
    tests = pd.read_csv(GENUINE / "test_summary.csv")
    first = {}
    for model in sorted(set(summary["model"])):
        curves = pd.read_csv(GENUINE / f"curves_{model}.csv")
        for band in curves[curves["epoch"] == curves["epoch"].min()].itertuples():
            low, high = band.val_miou_low, band.val_miou_high
            first.update(zip(band.trials.split(), (low, 3 * band.val_miou_mean - low - high, high), strict=True))
    summary["strategy"] = strategy_labels(summary)
    test_miou, drops = {}, iter(np.tile([0.01, 0.02, 0.03], len(summary)))
    rows = []
    for group in tests.itertuples():
        runs = summary[(summary["model"] == group.model) & (summary["strategy"] == group.strategy)]
        sd = (group.ci_high - group.test_miou_mean) * math.sqrt(group.seeds) / scipy_t(group.seeds)
        for k, run in enumerate(runs.sort_values("seed").itertuples()):
            test_miou[run.trial_id] = group.test_miou_mean + (k - 1) * sd
            drop = next(drops) if run.init == "finetune" else 0.0
            curve = [first[run.trial_id], run.best_val_miou] + [run.best_val_miou - drop] * 8
            for epoch in range(1, run.epochs + 1):
                value = curve[epoch // 2 - 1] if epoch % 2 == 0 else math.nan
                rows.append({"trial_id": run.trial_id, "model": run.model, "init": run.init, "lr": run.lr,
                             "gamma": run.gamma, "seed": run.seed, "epoch": epoch, "val_miou": value,
                             "epochs_reached": run.epochs, "status": run.status, "stop_reason": run.stop_reason,
                             "stopped_early": run.stopped_early, "error": "", "best_checkpoint": ""})
    df = pd.DataFrame(rows)
    df["strategy"] = strategy_labels(df)
    return df, pd.Series(test_miou)


def scipy_t(seeds: int) -> float:
    import scipy.stats

    return float(scipy.stats.t.ppf(0.975, seeds - 1))


def test_the_report_presets_claims_are_the_special_case_on_the_recorded_genuine_study() -> None:
    """The recorded genuine-sample study (the report preset, 3 seeds): the derived claims are the five claims
    tested by name before, text for text, and its findings.csv comes out again, row for row."""
    df, test_miou = genuine_study()
    assert derive_claims(df) == REPORT_CLAIMS
    table = findings(df, 0.01, test_miou=test_miou)
    pd.testing.assert_frame_equal(table, findings(df, 0.01, claims=REPORT_CLAIMS, test_miou=test_miou))
    recorded = pd.read_csv(GENUINE / "findings.csv")
    columns = ["claim", "metric", "group_a", "group_b", "n_a", "n_b", "p_holm", "verdict"]
    pd.testing.assert_frame_equal(table[columns], recorded[columns], check_dtype=False, rtol=1e-9)
    numbers = ["mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value"]
    reconstructed = table["metric"] != "val_miou_instability"  # see genuine_study
    pd.testing.assert_frame_equal(table.loc[reconstructed, numbers], recorded.loc[reconstructed, numbers],
                                  rtol=1e-9)


def test_which_model_is_its_own_holm_family_and_leaves_the_report_claims_as_recorded() -> None:
    """On the recorded genuine study: one best-against-best row (FCN ResNet-50 against SegFormer), adjusted within
    its own family (of one, so Holm's p is its p), while the claims' rows stay those recorded (the test above)."""
    df, test_miou = genuine_study()
    rows = which_model(df, test_miou)
    recorded = pd.read_csv(GENUINE / "findings.csv")
    assert len(rows) == 1 and not recorded["claim"].str.contains("best configuration").any()
    (row,) = rows.itertuples()
    assert {row.group_a.split()[0], row.group_b.split()[0]} == {"FCN", "SegFormer"}
    assert row.p_holm == pytest.approx(row.p_value) and row.n_a == row.n_b == 3
    assert row.mean_a == pytest.approx(float(test_miou.reindex(best_trials(df, row.group_a)).mean()))
    pd.testing.assert_frame_equal(findings(df, 0.01, test_miou=test_miou)[["claim", "p_holm", "verdict"]],
                                  recorded[["claim", "p_holm", "verdict"]], check_dtype=False, rtol=1e-9)


def best_trials(df: pd.DataFrame, group: str) -> list[str]:
    """The trial ids of a ``group_a`` label's chosen configuration."""
    model = next(m for m in set(df["model"]) if group.startswith(model_label(m)))
    return best_configuration_trials(df, model)[group.removeprefix(model_label(model)).strip()]


def test_the_headline_says_whether_the_best_models_lead_is_decided() -> None:
    """TV is best on val; its lead over HF is decided when it also wins on test, reversed when it loses there
    clearly, and not decided with one seed or within the spread."""
    df = history({(TV, "finetune", LR): flat(HIGH), (HF, "finetune", LR): flat(LOW),
                  (HF, "scratch", LR): flat([v - 0.1 for v in LOW])})
    ranking = model_ranking(df)
    assert [(m, s) for m, s, _ in ranking] == [(TV, "fine-tune"), (HF, "fine-tune")]
    decided = model_headline(ranking, which_model(df, measured_test_miou(df)))
    assert decided.startswith(f"**Best model:** {model_label(TV)}") and "is **decided** on test" in decided
    flipped = {f"{TV}_finetune_0.001_{k}": -0.5 for k in range(3)}
    assert "the lead is reversed" in model_headline(ranking, which_model(df, measured_test_miou(df, flipped)))
    close = {f"{TV}_finetune_0.001_{k}": d for k, d in enumerate((-0.45, -0.25, -0.05))}
    assert "is **not decided**" in model_headline(ranking, which_model(df, measured_test_miou(df, close)))
    one_seed = history({(TV, "finetune", LR): flat(HIGH[:1]), (HF, "finetune", LR): flat(LOW[:1])})
    line = model_headline(model_ranking(one_seed), which_model(one_seed, measured_test_miou(one_seed)))
    assert "is **not decided**" in line and "at least 3 seeds" in line
    assert model_headline(model_ranking(one_seed)[:1], which_model(one_seed)) == ""  # one model: no headline
