"""Repeated seeds end to end: a search, then its confirm stage (2 configurations x --repeats 2), killed and
resumed, then the report with its findings and banded curves. The report preset's grid goes through the same
grid code (``StudySettings.grid_points``, tested in test_study.py) and was run on the genuine samples
(docs/findings.md). Reuses the session's Ray and the demo study's Cityscapes encoders: no pretraining runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from conftest import first_points
from test_study import _epochs, _finished, _trial_checkpoint_mtime, assert_quiet_console

from analysis.findings import FINDINGS_COLUMNS

REPO = Path(__file__).resolve().parents[1]


def encoder_options(demo_study: Path) -> list[str]:
    return ["--pretrained-segformer", str(demo_study / "pretrained" / "segformer_encoder.pt"),
            "--pretrained-fcn", str(demo_study / "pretrained" / "fcn_resnet50_encoder.pt")]


def test_a_search_then_its_confirm_stage_resumes_after_the_driver_is_killed(
        ray_cluster: str, demo_study: Path, small_toy_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    args = ["-m", "study.run", "--preset", "demo", "--data-root", str(small_toy_root), "--storage", str(tmp_path),
            "--name", "confirmed", "--num-samples", "3", *first_points(tmp_path, 3),
            "--epochs", "4", "--confirm-top", "2", "--repeats", "2",
            "--no-report", "--cache-dir", str(cache_dir), *encoder_options(demo_study)]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    experiment, confirm = tmp_path / "confirmed", tmp_path / "confirmed" / "confirm"
    driver = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # kill inside the confirm stage, once one of its trials has finished
        deadline = time.monotonic() + 600
        while not any(_finished(p) for p in confirm.glob("trial_*/result.json")):
            assert driver.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "no confirm trial finished in time"
            time.sleep(0.5)
        search_times = {p.parent.name: _trial_checkpoint_mtime(experiment, p.parent.name)
                        for p in experiment.glob("trial_*/result.json")}
        finished = {p.parent.name for p in confirm.glob("trial_*/result.json") if _finished(p)}
        confirm_times = {t: _trial_checkpoint_mtime(confirm, t) for t in finished}
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    resumed = subprocess.run([sys.executable, *args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_quiet_console(resumed.stdout + resumed.stderr)

    search = pd.read_csv(experiment / "search_summary.csv")
    summary = pd.read_csv(experiment / "summary.csv")
    assert len(search) == 3 and len(summary) == 4  # the summary is the confirm stage's: 2 configurations x 2 seeds
    top = search[search["status"] == "done"].drop_duplicates(["model", "init", "lr", "gamma"]).head(2)
    confirmed = summary.groupby(["model", "init", "lr", "gamma"])["seed"].apply(sorted)
    assert sorted(confirmed.index) == sorted(top[["model", "init", "lr", "gamma"]].itertuples(index=False, name=None))
    assert all(seeds == [1000, 1001] for seeds in confirmed)  # disjoint from the search's seed (0)
    assert set(search["seed"]) == {0} and not set(search["seed"]) & set(summary["seed"])
    study = json.loads((experiment / "study.json").read_text())
    assert study["confirm_seeds"] == [1000, 1001] and "1000" in study["confirm_seed_rule"]
    assert (summary["epochs"] == 4).all() and not summary["stopped_early"].any()  # full epochs, no ASHA
    for trial, mtime in search_times.items():  # the search was not rerun
        assert _trial_checkpoint_mtime(experiment, trial) == mtime
    for trial, mtime in confirm_times.items():  # nor the confirm trials that had finished
        assert _trial_checkpoint_mtime(confirm, trial) == mtime
    for result in confirm.glob("trial_*/result.json"):
        epochs = _epochs(result)
        assert len(epochs) == len(set(epochs)), f"{result}: an epoch was reported twice: {epochs}"

    for row in summary.itertuples():  # the seed is a Tune parameter, and it is the seed the trial trained with
        assert json.loads((confirm / f"trial_{row.trial_id}" / "params.json").read_text())["seed"] == row.seed
    assert_optuna_studies(experiment)

    from analysis import report

    out = tmp_path / "report"
    text = report.write_report(experiment, small_toy_root, out, cache_dir=str(cache_dir)).read_text()
    assert "confirm stage's trials: the search's 2 best configurations, each rerun with 2 seed(s)" in text
    assert "4 trials, 2 seeds per configuration" in text and "asha_stops" not in text
    found = pd.read_csv(out / "findings.csv")
    assert tuple(found.columns) == FINDINGS_COLUMNS
    assert found["verdict"].str.startswith("inconclusive (n=").all()  # two seeds at most: never a verdict
    assert (found[["n_a", "n_b"]] <= 2).all().all()
    assert "## Findings" in text and "## Test mIoU" in text
    for model in set(summary["model"]):  # the curves: each strategy's mean over its 2 seeds, with a band
        val = pd.read_csv(out / f"curves_{model}.csv").dropna(subset=["val_miou_mean"])
        assert (val["n"] == 2).all()
        assert (val["val_miou_low"] <= val["val_miou_mean"]).all()
        assert (val["val_miou_mean"] <= val["val_miou_high"]).all()
        assert (val["val_miou_high"] > val["val_miou_low"]).any(), "two seeds, and no band anywhere"
    tests = pd.read_csv(out / "test_summary.csv")
    assert len(tests) >= 1 and (tests["seeds"] == 2).all() and tests["ci_low"].notna().all()


def assert_optuna_studies(experiment: Path) -> None:
    """optuna.db holds the search (study NAME) and the confirm stage (NAME-confirm), each continued by --resume,
    not made again: every Tune trial once, finished, with the val mIoU of its last result as its value."""
    import optuna

    from study.layout import tune_results

    db = f"sqlite:///{experiment / 'optuna.db'}"
    assert sorted(optuna.get_all_study_names(db)) == ["confirmed", "confirmed-confirm"]
    for name, stage, file in (("confirmed", experiment, "search_summary.csv"),
                              ("confirmed-confirm", experiment / "confirm", "summary.csv")):
        trials = optuna.load_study(study_name=name, storage=db).get_trials()
        summary = pd.read_csv(experiment / file, dtype={"trial_id": str})
        assert sorted(t.user_attrs["tune_trial_id"] for t in trials) == sorted(summary["trial_id"]), name
        by_id = {t.user_attrs["tune_trial_id"]: t for t in trials}
        for row in summary[summary["status"] == "done"].itertuples():
            curve = {r["epoch"]: r["val_miou"] for r in tune_results(stage, row.trial_id) if "val_miou" in r}
            trial = by_id[row.trial_id]
            told = "COMPLETE" if row.stop_reason == "completed" else "PRUNED"  # PRUNED: stopped by ASHA
            assert trial.state.name == told, (name, row.trial_id)
            assert trial.value == curve[max(curve)] and trial.intermediate_values == curve, (name, row.trial_id)
            assert trial.user_attrs["best_val_miou"] == max(curve.values())
            if name.endswith("-confirm"):
                assert trial.params["seed"] == row.seed and max(curve) == 4
