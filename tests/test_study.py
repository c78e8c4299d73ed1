"""The study on a local Ray: demo end to end, the Cityscapes stage, DDP, resume after a killed driver, W&B.

One Ray instance serves the whole module (each Ray Train run still costs ~10 s to start).
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
import pytest
import torch
from conftest import first_points

from study.space import load_preset

REPO = Path(__file__).resolve().parents[1]


def test_report_space_is_the_reports_seven_configurations() -> None:
    preset = load_preset("report")
    arms = sorted((p["model"], p["init"], p["lr"], p["gamma"]) for p in preset["points"])
    assert arms == sorted([
        ("fcn_resnet50", "scratch", 1e-3, 0.98), ("fcn_resnet50", "finetune", 1e-3, 0.98),
        ("fcn_resnet50", "freeze", 1e-3, 0.98), ("segformer", "scratch", 1e-3, 0.98),
        ("segformer", "finetune", 1e-3, 0.98), ("segformer", "finetune", 5e-4, 0.98),
        ("segformer", "freeze", 1e-3, 0.98),
    ])
    assert (preset["epochs"], preset["batch_size"], preset["image_size"]) == (30, 64, (64, 64))
    assert preset["scheduler"] == "fifo"
    search = load_preset("search")["space"]
    assert search["lr"] == ("loguniform", 1e-4, 3e-3) and search["gamma"] == ("uniform", 0.90, 0.999)


def test_repeats_run_every_configuration_with_every_seed() -> None:
    from study.run import settings_from_args

    settings = settings_from_args(["--preset", "report", "--repeats", "3", "--seed", "5"])
    points = settings.grid_points()
    assert len(points) == 21 and [p["seed"] for p in points[:7]] == [5] * 7  # seed by seed: whole seeds first
    configurations = {tuple(sorted(p.items())) for p in load_preset("report")["points"]}
    for seed in (5, 6, 7):
        assert {tuple(sorted((k, v) for k, v in p.items() if k != "seed")) for p in points
                if p["seed"] == seed} == configurations


# Lines of Ray's internals that must not reach the console without --verbose (issue: ~1,000 such lines).
RAY_INTERNALS = ("core_worker", "TrainController", "Reporting training result", "Checkpoint successfully created",
                 "raylet", "(pid=")


def assert_quiet_console(output: str, budget: int = 80) -> None:
    lines = output.strip().splitlines()
    leaked = [line for line in lines if any(marker in line for marker in RAY_INTERNALS)]
    assert not leaked, leaked[:5]
    assert len(lines) < budget, f"{len(lines)} lines:\n" + "\n".join(lines)


def test_the_demo_ran_from_a_users_folder_with_the_shipped_defaults(demo_study: Path, demo_folder: Path) -> None:
    """Issue 34: no --storage, no --data-root, not the repository: the defaults resolve against the working folder
    and the record stores them absolute."""
    assert demo_study == demo_folder / "results" / "demo" and (demo_study / "summary.csv").is_file()
    record = json.loads((demo_study / "study.json").read_text())
    assert record["storage"] == str(demo_folder / "results") and record["data_root"] == str(demo_folder / "data/toy")
    assert record["cache_dir"] is None and record["task"] is None  # neither given: the default cache, no task


def test_the_demo_console_is_short_and_free_of_ray_internals(demo_study: Path) -> None:
    """The demo (with its Cityscapes stage on Ray Train) prints stages, trial lines and the table only."""
    output = (demo_study.parent / "console.txt").read_text()
    assert_quiet_console(output)
    summary = pd.read_csv(demo_study / "summary.csv")
    for stage in ("data and encoders checked", "Ray joined", "pretraining: segformer", "trials: 8"):
        assert stage in output, stage
    ended = [line for line in output.splitlines() if line.startswith("trial ") and " at epoch " in line]
    assert len(ended) == len(summary)  # one line per finished or stopped trial
    for line in ended:  # each line says what the summary says: the trial's best val mIoU and how it ended
        trial_id, best = line.split()[1], float(line.rsplit(" ", 1)[-1])
        row = summary[summary["trial_id"].astype(str) == trial_id].iloc[0]
        assert best == pytest.approx(row["best_val_miou"], abs=5e-5), (line, row["best_val_miou"])
        assert (" stopped by ASHA " in line) == bool(row["stopped_early"]), line
    assert "trials ranked by best val mIoU" in output


def test_demo_runs_with_early_stopping_and_a_consistent_summary(demo_study: Path) -> None:
    summary = pd.read_csv(demo_study / "summary.csv")
    assert len(summary) >= 6 and (summary["status"] == "done").all()
    assert summary["stopped_early"].any(), "ASHA stopped no trial"
    assert list(summary["best_val_miou"]) == sorted(summary["best_val_miou"], reverse=True)
    for row in summary.itertuples():
        progress = pd.read_csv(demo_study / f"trial_{row.trial_id}" / "progress.csv")
        assert progress["epoch"].is_unique  # no epoch reported twice
        assert row.epochs == progress["epoch"].max()
        assert row.best_val_miou == pytest.approx(progress["val_miou"].max())
        assert row.stopped_early == (row.epochs < 6)
        checkpoint = torch.load(row.best_checkpoint, weights_only=True)
        assert checkpoint["val_miou"] == pytest.approx(row.best_val_miou)
        assert (checkpoint["config"]["model"], checkpoint["config"]["init"]) == (row.model, row.init)
        assert checkpoint["config"]["lr"] == pytest.approx(row.lr)


def test_cityscapes_stage_encoder_is_what_finetune_trials_load(demo_study: Path) -> None:
    from segmodels import build_model
    from study.layout import best_checkpoint, checkpoints

    encoder_file = demo_study / "pretrained" / "segformer_encoder.pt"
    encoder = torch.load(encoder_file, weights_only=True)["encoder"]
    pretrain_run = demo_study / "train" / "pretrain-cityscapes-segformer"
    pretrain_best = torch.load(best_checkpoint(checkpoints(pretrain_run)), weights_only=True)
    assert pretrain_best["config"]["dataset"] == "cityscapes" and len(pretrain_best["class_names"]) == 19
    prefix = "net.segformer."
    assert encoder.keys() == {k[len(prefix):] for k in pretrain_best["model_state"] if k.startswith(prefix)}
    assert all(torch.equal(v, pretrain_best["model_state"][prefix + k]) for k, v in encoder.items())
    loaded = build_model("segformer", 3, "finetune", pretrained=str(encoder_file)).encoder.state_dict()
    assert all(torch.equal(loaded[k], encoder[k]) for k in encoder)
    summary = pd.read_csv(demo_study / "summary.csv")
    tuned = summary[(summary.model == "segformer") & (summary.init != "scratch")]
    for row in tuned.itertuples():
        assert torch.load(row.best_checkpoint, weights_only=True)["config"]["pretrained"] == str(encoder_file)


def test_two_worker_ddp_trial_matches_single_process(ray_cluster: str, toy_root: Path, cache_dir: Path,
                                                     tmp_path: Path) -> None:
    from analysis.score import load_model
    from study.config import TrainConfig
    from study.layout import checkpoints
    from study.loop import evaluate
    from study.orchestrate.runners import run_training
    from study.trial import load_splits

    cfg = TrainConfig(dataset="pets", data_root=str(toy_root), model="segformer", epochs=2, batch_size=8,
                      image_size=32, cache_dir=str(cache_dir))
    run_training(cfg, "ddp", str(tmp_path), {"workers": 2, "cpus": 2})
    (folder, row), = checkpoints(tmp_path / "train" / "ddp")
    model, _ = load_model(torch.load(folder / "checkpoint.pt", weights_only=True))
    _, val_set = load_splits(cfg)
    metric, _ = evaluate(model, val_set.images, val_set.masks, 3, batch_size=len(val_set))
    assert row["val_miou"] == pytest.approx(metric.miou(), abs=1e-12)


def test_resume_after_the_driver_is_killed(ray_cluster: str, small_toy_root: Path, cache_dir: Path,
                                           tmp_path: Path, capsys) -> None:
    """The Train runner's trials (the Tune runner's are stopped and resumed in every way in test_resume.py)."""
    from segmodels import build_model, save_encoder

    encoders = {m: str(save_encoder(build_model(m, 19), tmp_path / f"{m}.pt")) for m in ("segformer", "fcn_resnet50")}
    args = ["-m", "study.run", "--preset", "demo", "--data-root", str(small_toy_root), "--storage",
            str(tmp_path / "st"), "--name", "killed", "--num-samples", "2", *first_points(tmp_path, 2),
            "--epochs", "4", "--no-report", "--max-concurrent", "1",  # one at a time: the other can't finish too
            "--cache-dir", str(cache_dir), "--pretrained-segformer", encoders["segformer"], "--pretrained-fcn",
            encoders["fcn_resnet50"], "--trial-runner", "train"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    experiment = tmp_path / "st" / "killed"
    driver = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # kill at a known point: one trial has finished all 4 epochs, the other has not begun them
        deadline = time.monotonic() + 400
        while not any(_finished(p) for p in experiment.glob("trial_*/result.json")):
            assert driver.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.5)
        finished = {p.parent.name for p in experiment.glob("trial_*/result.json") if _finished(p)}
        checkpoint_times = {f: _trial_checkpoint_mtime(experiment, f) for f in finished}
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert not (experiment / "summary.csv").exists()
    from study import run
    from study.cli import main_guard

    capsys.readouterr()
    assert main_guard("study.run", run.main, args[2:]) == 2  # refused in this process: before any Ray call
    assert "--resume" in capsys.readouterr().err and not (experiment / "summary.csv").exists()
    resumed = subprocess.run([sys.executable, *args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_quiet_console(resumed.stdout + resumed.stderr)
    summary = pd.read_csv(experiment / "summary.csv")
    assert len(summary) == 2 and summary["trial_id"].is_unique and (summary["status"] == "done").all()
    for trial in finished:  # finished trials were not rerun
        assert _trial_checkpoint_mtime(experiment, trial) == checkpoint_times[trial]
    for result in experiment.glob("trial_*/result.json"):
        epochs = _epochs(result)
        assert len(epochs) == len(set(epochs)), f"{result}: an epoch was reported twice: {epochs}"
    # the Optuna study in optuna.db continued: each trial of the summary finished once in it; nothing is left
    # running or waiting (a trial Tune's saved state did not know is FAIL, and its point asked again)
    import optuna

    trials = optuna.load_study(study_name="killed", storage=f"sqlite:///{experiment / 'optuna.db'}").get_trials()
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # PRUNED: stopped by ASHA
    complete = [t.user_attrs["tune_trial_id"] for t in trials if t.state in ended]
    assert sorted(complete) == sorted(pd.read_csv(experiment / "summary.csv", dtype={"trial_id": str})["trial_id"])
    assert all(t.state in (*ended, optuna.trial.TrialState.FAIL) for t in trials)


def _trial_checkpoint_mtime(experiment: Path, trial_folder: str) -> int:
    """Latest modification time of a trial's checkpoint folders (either runner's): unchanged if it did not rerun."""
    from study.layout import trial_checkpoints

    found = trial_checkpoints(experiment, trial_folder.removeprefix("trial_"))
    return max(Path(folder).stat().st_mtime_ns for folder, _ in found)


def _finished(result_json: Path, epochs: int = 4) -> bool:
    return epochs in _epochs(result_json)


def _epochs(result_json: Path) -> list[int]:
    lines = result_json.read_text().splitlines() if result_json.exists() else []
    epochs = []
    for line in lines:
        try:
            epochs.append(json.loads(line)["epoch"])
        except json.JSONDecodeError:  # a line Tune is still writing
            pass
    return epochs
