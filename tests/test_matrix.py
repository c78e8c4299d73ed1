"""Issue 35: the options a user combines, run together as real studies, end to end to the report.

The options form a matrix (``FACTORS``); every pair of values of any two factors is run at least once (a pairwise
covering array from ``allpairspy``), each row a real study through ``python -m study.run``'s own ``main`` on the
session's Ray, at toy size: SegFormer-B0 from scratch, 32x32 images, 2 epochs, 2 trials (and a confirm
stage's 2), one at a time (one trial actor a stage, reused: an actor's start costs more than its toy trial).
optuna.db is checked too: every sampler's trials told what happened, with their constraints where optuna-dashboard
reads them. Each must either exit 2 before Ray with one line, or exit 0 with a report whose sections match what ran.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from allpairspy import AllPairs

from study import run
from study.cli import main_guard

FACTORS: dict[str, list[Any]] = {
    "sampler": ["tpe", "nsga2", "gp", "random"],
    "objectives": [1, 2, 3],
    "constraints": ["none", "before-training", "after-training"],
    "scheduler": ["asha", "fifo"],
    "searched": ["lr", "no-lr"],
    "confirm": [False, True],
    "resume": [False, True],
    "recipe": ["report", "standard"],
    "budget": ["none", "1h"],  # a device-time budget this toy study does not spend: its machinery in every pair
}
OBJECTIVES = {1: {"val_miou": "max"}, 2: {"val_miou": "max", "params": "min"},
              3: {"val_miou": "max", "latency_ms": "min", "params": "min"}}
CONSTRAINTS = {"none": {}, "before-training": {"params": {"max": 1.0e9}}, "after-training": {"val_miou": {"min": 0.01}}}
SAMPLES = 2
ROWS = [dict(zip(FACTORS, values, strict=True)) for values in AllPairs(list(FACTORS.values()))]


def row_id(row: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in row.items())


def space_of(row: dict[str, Any]) -> dict[str, Any]:
    """The row as a space file: what a user writes."""
    space: dict[str, Any] = {"model": {"choice": ["segformer"]}, "init": {"choice": ["scratch"]}}
    if row["searched"] == "lr":
        space["lr"] = {"loguniform": [1.0e-4, 3.0e-3]}
    else:  # a space that leaves lr at its default
        space["head_lr_mult"] = {"choice": [1.0, 10.0]}
    data = {"dataset": "pets", "epochs": 2, "batch_size": 8, "image_size": "32", "val_every": 1,
            "num_samples": SAMPLES, "searcher": "optuna", "sampler": row["sampler"], "recipe": row["recipe"],
            "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}} if row["scheduler"] == "asha" else "none",
            "objectives": OBJECTIVES[row["objectives"]], "space": space, "pretrain": "none"}
    if CONSTRAINTS[row["constraints"]]:
        data["constraints"] = CONSTRAINTS[row["constraints"]]
    if row["budget"] != "none":
        data["budget"] = row["budget"]
    return data


def test_the_matrix_covers_every_pair() -> None:
    names = list(FACTORS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            seen = {(row[a], row[b]) for row in ROWS}
            assert seen == {(x, y) for x in FACTORS[a] for y in FACTORS[b]}, (a, b)
    assert len(ROWS) < 0.02 * pd.MultiIndex.from_product(list(FACTORS.values())).size


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_each_pairwise_combination_runs_to_its_report_or_is_refused_before_ray(
        row: dict[str, Any], ray_cluster: str, small_toy_root: Path, cache_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(space_of(row), sort_keys=False))
    argv = ["--space", str(space), "--name", "m", "--storage", str(tmp_path / "results"), "--data-root",
            str(small_toy_root), "--cache-dir", str(cache_dir), "--max-concurrent", "1"]  # one trial actor a stage
    if row["confirm"]:
        argv += ["--confirm-top", "1", "--repeats", "2"]
    code = main_guard("study.run", run.main, argv)
    out, err = capsys.readouterr()
    if code == 2:  # refused: one line, before anything was written
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("study.run: error: "), err
        assert not (tmp_path / "results").exists()
        pytest.skip(f"refused before Ray: {lines[0]}")
    assert code == 0, err[-3000:]
    stages = f"trials: {SAMPLES}" + (", then the 1 best x 2 seeds" if row["confirm"] else " (optuna")
    assert stages in out + err, (out + err)[-3000:]
    assert ("of the 60.0 min budget; per model: segformer" in out) == (row["budget"] != "none"), out[-3000:]
    if row["resume"]:  # a finished study resumed: nothing trains again, the report is written anew
        code = main_guard("study.run", run.main, [*argv, "--resume"])
        assert code == 0, capsys.readouterr().err[-3000:]
    check_report(row, tmp_path / "results" / "m")
    check_optuna_db(row, tmp_path / "results" / "m")


def check_report(row: dict[str, Any], experiment: Path) -> None:
    """The report's sections are those of what ran."""
    text = (experiment / "report" / "report.md").read_text()
    summary = pd.read_csv(experiment / "summary.csv")
    assert len(summary) == (2 if row["confirm"] else SAMPLES)
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert "Configurations" in sections and "Figures" in sections
    assert ("Pareto set" in sections) == (row["objectives"] > 1), sections
    assert (experiment / "report" / "asha_stops.png").is_file() == (row["scheduler"] == "asha" and not row["confirm"])
    searched = "lr" if row["searched"] == "lr" else "head_lr_mult"
    header = next(line for line in text.splitlines() if line.startswith("| ") and "model" in line)
    assert searched in header.split(" | ") or f"{searched} |" in header, header
    if row["confirm"]:
        assert "confirm" in text.lower()
    assert ("Device-time budget" in sections) == (row["budget"] != "none"), sections
    for metric in CONSTRAINTS[row["constraints"]]:
        assert metric in text


def check_optuna_db(row: dict[str, Any], experiment: Path) -> None:
    """The search's trials in optuna.db: each told COMPLETE or PRUNED (ASHA), never left RUNNING; with a
    constraint, its values in the list optuna-dashboard shows; NSGA-II's trials carry its generation mark."""
    import optuna

    study = optuna.load_study(study_name="m", storage=f"sqlite:///{experiment / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == SAMPLES and set(states) <= {"COMPLETE", "PRUNED"}, states
    if row["scheduler"] == "fifo":
        assert set(states) == {"COMPLETE"}, states
    for trial in study.trials:
        if CONSTRAINTS[row["constraints"]] and trial.state.name == "COMPLETE":
            assert len(trial.system_attrs["constraints"]) == 1 and "feasible" in trial.user_attrs, trial.system_attrs
        if row["sampler"] == "nsga2":
            assert "NSGAIISampler:generation" in trial.system_attrs, trial.system_attrs
