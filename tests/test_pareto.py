"""analysis.pareto and the report's objective sections on constructed trial tables with known answers (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import pareto
from analysis.findings import mean_ci
from analysis.objectives_report import cost_axis, infeasible_lines, objective_report, pareto_trial_ids

TWO = {"val_miou": "max", "latency_ms": "min"}
KEYS = ["model", "init", "lr"]


def trials(rows: list[tuple]) -> pd.DataFrame:
    """One row per trial: (trial_id, model, lr, seed, best val mIoU, latency ms, stop_reason[, test mIoU])."""
    out = []
    for trial_id, model, lr, seed, val, latency, stop, *test in rows:
        status = {"error": "error", "interrupted": "interrupted", pareto.INFEASIBLE: "running"}.get(stop, "done")
        out.append({"trial_id": trial_id, "model": model, "init": "finetune", "strategy": "fine-tune", "lr": lr,
                    "gamma": float("nan"), "seed": seed, "best_val_miou": val, "latency_ms": latency,
                    "status": status, "stop_reason": stop, "test_miou": test[0] if test else float("nan")})
    return pd.DataFrame(out)


FRONT_TABLE = trials([
    ("a", "segformer", 1e-3, 0, 0.70, 10.0, "completed"),  # best val, slow: on the front
    ("b", "segformer", 5e-4, 0, 0.60, 5.0, "completed"),  # fast: on the front
    ("c", "segformer", 2e-4, 0, 0.55, 8.0, "completed"),  # b is better and faster: dominated
    ("d", "fcn_resnet50", 1e-3, 0, 0.60, 5.0, "completed"),  # ties b exactly: on the front too
    ("e", "segformer", 3e-3, 0, 0.90, 1.0, "stopped early (ASHA)"),  # truncated: no candidate
    ("f", "fcn_resnet50", 3e-3, 0, float("nan"), 0.5, pareto.INFEASIBLE),  # never trained
    ("g", "segformer", 1e-4, 0, 0.95, 0.5, "error"),
])


def test_the_front_keeps_ties_and_drops_dominated_stopped_and_infeasible_trials() -> None:
    front = pareto.pareto_set(FRONT_TABLE, TWO, KEYS)
    assert list(front["trial_ids"]) == ["a", "b", "d"]  # by val mIoU, best first; b and d tie
    assert front["best_val_miou"].tolist() == [0.70, 0.60, 0.60] and front["seeds"].tolist() == [1, 1, 1]


def test_non_dominated_on_known_points() -> None:
    loss = np.array([[1.0, 1.0], [2.0, 0.5], [2.0, 2.0], [1.0, 1.0], [np.nan, 0.0]])
    assert pareto.non_dominated(loss).tolist() == [True, True, False, True, False]


def test_repeated_seeds_are_one_point_their_mean() -> None:
    """One lucky seed (0.80) does not put a configuration whose mean is 0.60 on the front."""
    table = trials([("g0", "segformer", 1e-3, 0, 0.80, 9.0, "completed"),
                    ("g1", "segformer", 1e-3, 1, 0.50, 9.0, "completed"),
                    ("g2", "segformer", 1e-3, 2, 0.50, 9.0, "completed"),
                    ("h0", "segformer", 5e-4, 0, 0.65, 9.0, "completed")])
    front = pareto.pareto_set(table, TWO, KEYS)
    assert list(front["trial_ids"]) == ["h0"]
    means = pareto.configuration_means(table, KEYS, ["best_val_miou"])
    assert means.set_index("lr").loc[1e-3, "best_val_miou"] == pytest.approx(0.60)
    assert means.set_index("lr").loc[1e-3, "trial_ids"] == "g0 g1 g2"


def test_the_val_winner_that_loses_on_test_drops_off_the_test_front() -> None:
    """a is best on val (0.70 against 0.60, but slower); on test it scores below the faster b: dominated there.
    b's three seeds give its test mIoU a Student-t interval."""
    table = trials([("a0", "segformer", 1e-3, 0, 0.70, 10.0, "completed", 0.50),
                    ("b0", "segformer", 5e-4, 0, 0.60, 5.0, "completed", 0.57),
                    ("b1", "segformer", 5e-4, 1, 0.61, 5.0, "completed", 0.58),
                    ("b2", "segformer", 5e-4, 2, 0.59, 5.0, "completed", 0.59)])
    front = pareto.pareto_set(table, TWO, KEYS)
    tested = pareto.tested_on_test(front, table.set_index("trial_id")["test_miou"], TWO).set_index("trial_ids")
    assert tested.loc["a0", "on_test_front"] == False  # noqa: E712 (numpy bool)
    assert tested.loc["b0 b1 b2", "on_test_front"] == True  # noqa: E712
    mean, low, high = mean_ci(np.array([0.57, 0.58, 0.59]))
    assert tested.loc["b0 b1 b2", ["test_miou", "test_ci_low", "test_ci_high"]].tolist() == pytest.approx(
        [mean, low, high])
    assert tested.loc["b0 b1 b2", "test_seeds"] == 3 and np.isnan(tested.loc["a0", "test_ci_low"])


def test_constraints_restrict_the_front_and_name_the_best_under_each() -> None:
    constraints = {"latency_ms": {"max": 6.0}, "val_miou": {"min": 0.58}}
    front = pareto.pareto_set(FRONT_TABLE, TWO, KEYS, {"latency_ms": {"max": 6.0}})
    assert list(front["trial_ids"]) == ["b", "d"]  # a is too slow
    best = pareto.best_under_constraints(FRONT_TABLE, KEYS, constraints)
    assert best["latency_ms"]["best_val_miou"] == 0.60 and best["val_miou"]["trial_ids"] == "a"
    assert best["all"]["best_val_miou"] == 0.60
    assert pareto.best_under_constraints(FRONT_TABLE, KEYS, {"latency_ms": {"max": 1.0}})["latency_ms"] is None
    assert pareto.bound_text("latency_ms", {"max": 5.0}) == "latency_ms ≤ 5"


def test_hypervolume_known_areas() -> None:
    assert pareto.hypervolume(np.array([[0.0, 0.5], [0.5, 0.0]]), np.array([1.0, 1.0])) == pytest.approx(0.75)
    assert pareto.hypervolume(np.array([[0.0, 0.0, 0.0]]), np.ones(3)) == pytest.approx(1.0)  # three objectives
    assert pareto.hypervolume(np.array([[2.0, 0.0]]), np.array([1.0, 1.0])) == 0.0  # beyond the reference


def test_hypervolume_against_trials_on_rescaled_objectives() -> None:
    """t1 is the worst in both objectives (rescaled to 1, reference 1.1: 0.1 x 0.1); t2 the best in both
    (0, 0: 1.1 x 1.1); the errored trial between them counts as a trial trained and adds nothing."""
    table = trials([("t1", "segformer", 1e-3, 0, 0.5, 10.0, "completed"), ("t2", "segformer", 1e-4, 0, 0.7, 5.0,
                    "completed"), ("t15", "segformer", 3e-4, 0, 0.9, 1.0, "error"),
                    ("t0", "segformer", 2e-3, 0, float("nan"), 0.1, pareto.INFEASIBLE)])
    curve = pareto.hypervolume_curve(table, TWO)
    assert curve["trial_id"].tolist() == ["t1", "t15", "t2"] and curve["trial"].tolist() == [1, 2, 3]
    assert curve["hypervolume"].tolist() == pytest.approx([0.01, 0.01, 1.21])


def test_the_objective_sections_of_a_two_objective_study(tmp_path: Path) -> None:
    """Figures and a table from study.json's objectives and constraints; infeasible configurations listed."""
    settings = {"objectives": TWO, "constraints": {"latency_ms": {"max": 8.0}}}
    table = FRONT_TABLE.assign(test_miou=[0.6, 0.62, 0.5, 0.55, np.nan, np.nan, np.nan])
    assert pareto_trial_ids(table, settings, KEYS) == ["b", "d"]
    figures, lines, notes = objective_report(table, settings, KEYS, tmp_path)
    assert [p.name for p, _ in figures] == ["pareto_front.png", "hypervolume.png"] and not notes
    text = "\n".join(lines)
    assert "## Pareto set" in text and "| SegFormer (init finetune, lr 0.0005) | 1 | 0.6000 | 0.6200 |" in text
    assert "under latency_ms ≤ 8, SegFormer (init finetune, lr 0.0005) (val mIoU 0.6000, test mIoU 0.6200)" in text
    assert pd.read_csv(tmp_path / "pareto_set.csv")["trial_ids"].tolist() == ["b", "d"]
    refused = "\n".join(infeasible_lines(table, KEYS))
    assert "`f` FCN ResNet-50" in refused and "latency_ms 0.5" in refused and "`a`" not in refused
    single = objective_report(table, {}, KEYS, tmp_path)
    assert single == ([], [], [])  # one objective, no constraint: the cost scatter only (cost_axis)


def test_the_cost_axis_is_measured_latency_else_flops_said_so() -> None:
    assert cost_axis(FRONT_TABLE)[0] == "latency_ms"
    counted = FRONT_TABLE.drop(columns="latency_ms").assign(flops=1e9)
    column, label, _ = cost_axis(counted)
    assert column == "flops" and "latency not measured" in label
    assert cost_axis(FRONT_TABLE.drop(columns="latency_ms")) is None


def test_objectives_default_to_val_miou_and_refuse_a_bad_direction() -> None:
    assert pareto.objectives_of({}) == {"val_miou": "max"} and pareto.constraints_of({}) == {}
    with pytest.raises(ValueError, match="latency_ms"):
        pareto.objectives_of({"objectives": {"latency_ms": "minimise"}})


def two_objective_history() -> pd.DataFrame:
    """A study's history as analysis.load gives it: two models, no gamma searched, three seeds each, a measured
    latency per model, and one configuration refused as infeasible before training."""
    from analysis.load import strategy_labels

    rows = []
    arms = {("segformer", 1e-3): (0.70, 9.0), ("segformer", 3e-4): (0.62, 9.0), ("fcn_resnet50", 1e-3): (0.60, 4.0),
            ("fcn_resnet50", 2e-3): (0.58, 3.0), ("fcn_resnet50", 3e-3): (0.50, 5.0)}  # 2e-3: not fcn's best
    for (model, lr), (val, latency) in arms.items():
        for seed in range(3):
            for epoch in (2, 4):
                score = val - 0.1 * (epoch == 2) + 0.01 * seed
                rows.append({"trial_id": f"{model[:3]}_{lr:g}_{seed}", "model": model, "init": "finetune", "lr": lr,
                             "gamma": None, "seed": seed, "epoch": epoch, "val_miou": score, "val_loss": 1 - score,
                             "train_miou": score, "train_loss": 1 - score,
                             "epochs_reached": 4, "status": "done", "stop_reason": "completed", "stopped_early": False,
                             "failures": 0, "error": "", "best_checkpoint": "x.pt", "latency_ms": latency})
    rows.append({"trial_id": "zzz_refused", "model": "segformer", "init": "scratch", "lr": 1e-3, "gamma": None,
                 "seed": 0, "epoch": np.nan, "val_miou": np.nan, "epochs_reached": 0, "status": "running",
                 "stop_reason": pareto.INFEASIBLE, "stopped_early": False, "failures": 0, "error": "",
                 "best_checkpoint": "", "latency_ms": 30.0})
    df = pd.DataFrame(rows)
    df["strategy"] = strategy_labels(df)
    return df


def test_a_two_objective_study_writes_its_pareto_report(tmp_path: Path, monkeypatch) -> None:
    """The report's wiring on a two-objective study (no Ray, no checkpoint: loading and scoring are replaced):
    the Pareto set is scored on test, drawn, tabled; which model is headlined; the refused configuration is
    listed and drawn nowhere."""
    from analysis import report

    settings = {"dataset": "pets", "data_root": "data", "objectives": TWO, "constraints": {"latency_ms": {"max": 10}},
                "space": {"model": ["choice", ["segformer", "fcn_resnet50"]], "init": ["choice", ["finetune"]],
                          "lr": ["loguniform", 1e-4, 3e-3]}}
    scored = []

    def fake_score(table, run, label, notes, scoring, stem=None):
        scored.append(run.trial_id)
        table.loc[table["trial_id"] == run.trial_id, "test_miou"] = 0.5 + 0.01 * len(scored)

    monkeypatch.setattr(report, "load_experiment", lambda experiment: two_objective_history())
    monkeypatch.setattr(report, "study_settings", lambda experiment: settings)
    monkeypatch.setattr(report, "_sample_figures", lambda *args: [])
    monkeypatch.setattr(report, "_score_trial", fake_score)
    text = report.write_report(tmp_path, out=tmp_path / "report").read_text()
    assert len(scored) == len(set(scored)) == 12  # each strategy's best configuration's seeds, then the rest of
    assert set(scored[-3:]) == {"fcn_0.002_0", "fcn_0.002_1", "fcn_0.002_2"}  # the Pareto set's; none scored twice
    assert "**Best model:** SegFormer" in text and "## Which model" in text and "## Pareto set" in text
    assert "| FCN ResNet-50 (init finetune, lr 0.001) | 3 | 0.6100 |" in text
    assert "## Infeasible configurations" in text and "`zzz_refused` SegFormer (init scratch, lr 0.001): " in text
    assert "1 infeasible, never trained, listed below" in text and "gamma" not in text
    assert "SegFormer scratch" not in text  # no note on a strategy that only the refused configuration had
    for stem in ("pareto_front", "hypervolume", "cost", "hyperparameters"):
        drawn = pd.read_csv(tmp_path / "report" / f"{stem}.csv")
        assert "zzz_refused" not in drawn.to_string()
    assert list(pd.read_csv(tmp_path / "report" / "pareto_set.csv")["trial_ids"]) == [
        "seg_0.001_0 seg_0.001_1 seg_0.001_2", "fcn_0.001_0 fcn_0.001_1 fcn_0.001_2",
        "fcn_0.002_0 fcn_0.002_1 fcn_0.002_2"]


def test_the_confirm_stage_takes_the_val_pareto_front_first() -> None:
    from study.summary import top_configurations

    summary = pd.DataFrame({
        "model": ["a", "b", "c", "d"], "init": ["scratch"] * 4, "lr": [1e-3] * 4, "gamma": [0.98] * 4,
        "status": ["done"] * 4, "best_val_miou": [0.80, 0.70, 0.75, 0.60], "latency_ms": [9.0, 2.0, 9.5, 1.0]})
    objectives = {"val_miou": "max", "latency_ms": "min"}
    # the front: a (best mIoU), b, d (fastest); c is dominated by a (worse and slower)
    assert [p["model"] for p in top_configurations(summary, 3, objectives)] == ["a", "b", "d"]
    assert [p["model"] for p in top_configurations(summary, 3)] == ["a", "c", "b"]  # one objective: by val mIoU
