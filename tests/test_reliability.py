"""Reliability: killed workers, many early stops, broken files, bad options, truncated checkpoints.

Kills happen at known points (a checkpoint on disk), never after a sleep.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import first_points
from PIL import Image

from study.cli import main_guard

REPO = Path(__file__).resolve().parents[1]


def _one_trial_settings(toy_root: Path, cache_dir: Path, storage: Path, name: str, runner: str, epochs: int,
                        extra: list[str] = ()):
    """The demo preset cut to one SegFormer-from-scratch trial with a FIFO scheduler (no pretraining)."""
    from study.run import settings_from_args

    settings = settings_from_args(["--preset", "demo", "--data-root", str(toy_root), "--storage", str(storage),
                                   "--name", name, "--num-samples", "1", *first_points(storage, 1),
                                   "--epochs", str(epochs), "--batch-size", "8",
                                   "--image-size", "32", "--cache-dir", str(cache_dir), "--no-report",
                                   "--trial-runner", runner, *extra])
    return dataclasses.replace(
        settings, space={**settings.space, "model": ("choice", ["segformer"]), "init": ("choice", ["scratch"])},
        points=[{"model": "segformer", "init": "scratch", "lr": 1e-3, "gamma": 0.98}], scheduler="fifo", pretrain={})


def test_a_killed_worker_resumes_from_its_latest_checkpoint(ray_cluster: str, toy_root: Path, cache_dir: Path,
                                                            tmp_path: Path, trial_runner: str) -> None:
    from study import orchestrate
    from study.layout import trial_checkpoints
    from study.summary import trial_ids

    settings = _one_trial_settings(toy_root, cache_dir, tmp_path, "killed", trial_runner, epochs=8)
    experiment = tmp_path / "killed"
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _capture(errors, orchestrate.run_study, settings))
    thread.start()
    deadline = time.monotonic() + 300
    found: list = []
    while not found:  # the known point: the trial's first checkpoint is persisted
        assert thread.is_alive() and time.monotonic() < deadline, errors
        time.sleep(0.2)
        ids = trial_ids(str(experiment)) if experiment.is_dir() else []
        found = trial_checkpoints(experiment, ids[0]) if ids else []
    trial_id = ids[0]
    first_folder, first = found[0]
    os.kill(first["worker_pid"], signal.SIGKILL)
    thread.join(timeout=400)
    assert not thread.is_alive() and not errors, errors
    kept = trial_checkpoints(experiment, trial_id)
    assert kept[-1][1]["epoch"] == 8  # the trial finished
    history = pd.read_csv(Path(kept[-1][0]) / "history.csv")
    assert list(history["epoch"]) == [2, 4, 6, 8]  # each validation recorded exactly once
    pids = [row["worker_pid"] for _, row in kept]
    assert pids[-1] != first["worker_pid"]  # a new worker finished the trial ...
    restarted_at = next(row["epoch"] for _, row in kept if row["worker_pid"] != first["worker_pid"])
    assert restarted_at > first["epoch"]  # ... after the checkpoint: no epoch before it was recomputed
    assert history.loc[history["epoch"] == first["epoch"], "val_miou"].item() == first["val_miou"]
    # counted by how it ended, with its failure on record (the Train runner's restarts are Train's own)
    row = pd.read_csv(experiment / "summary.csv").iloc[0]
    assert (row["status"], row["stop_reason"]) == ("done", "completed") and pd.isna(row["error"]), row
    if trial_runner == "tune":
        assert row["failures"] == 1 and (experiment / "errors" / f"{trial_id}.last-failure.txt").is_file()


def test_an_error_retrying_cannot_fix_ends_its_trial_at_once(ray_cluster: str, toy_root: Path, cache_dir: Path,
                                                             tmp_path: Path, trial_runner: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing encoder file that only the trial meets (the pre-Ray check is switched off here) is recorded
    once, with its one-line message, and neither Tune nor Train retries it."""
    from study import orchestrate, preflight

    monkeypatch.setattr(preflight, "check_encoders", lambda settings: None)
    missing = tmp_path / "no-such-encoder.pt"
    settings = _one_trial_settings(toy_root, cache_dir, tmp_path, "broken", trial_runner, epochs=2,
                                   extra=["--pretrained-segformer", str(missing)])
    settings.space["init"] = ("choice", ["finetune"])
    settings = dataclasses.replace(settings, points=[{"model": "segformer", "init": "finetune", "lr": 1e-3,
                                                      "gamma": 0.98}])
    summary = orchestrate.run_study(settings)
    assert list(summary["status"]) == ["error"] and str(missing) in summary["error"][0]
    trial_id = str(summary["trial_id"][0])
    record = (tmp_path / "broken" / "errors" / f"{trial_id}.txt").read_text().splitlines()
    assert str(missing) in record[0] and "Traceback" in "\n".join(record[1:])
    assert not (tmp_path / "broken" / f"trial_{trial_id}" / "error.txt").exists()  # Tune saw no failure to retry


def _capture(errors: list, fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def test_many_early_stops_finish_without_deadlock(ray_cluster: str, toy_root: Path, cache_dir: Path,
                                                  tmp_path: Path, trial_runner: str) -> None:
    from ray.util.state import list_placement_groups

    from study import orchestrate
    from study.run import settings_from_args

    # 12 trials through Tune's own trainable (six times the CPUs); 4 through Ray Train, whose controller and worker
    # group take ~25 s a trial here. At least 2 stopped are as many placement groups as the 2 CPUs hold, so a
    # stopped trial that kept its group would leave a later trial waiting, and one left over fails the check below.
    trials, min_stopped = (12, 9) if trial_runner == "tune" else (4, 2)
    settings = settings_from_args(["--preset", "demo", "--data-root", str(toy_root), "--storage", str(tmp_path),
                                   "--name", "asha", "--num-samples", str(trials),
                                   *first_points(tmp_path, min(trials, 6)),
                                   "--epochs", "2", "--image-size",
                                   "32", "--cache-dir", str(cache_dir), "--no-report", "--trial-runner", trial_runner])
    space = {**settings.space, "model": ("choice", ["segformer"]), "init": ("choice", ["scratch"])}
    # Trials in order of falling learning rate, all below the rate where more is better after one epoch,
    # so that almost every new trial is worse than those before it and ASHA stops it.
    points = [{"model": "segformer", "init": "scratch", "lr": float(lr), "gamma": 0.98}
              for lr in np.geomspace(1e-4, 1e-8, trials)]
    settings = dataclasses.replace(settings, space=space, points=points, pretrain={}, val_every=1, grace_period=1,
                                   reduction_factor=8)  # ASHA keeps only the top 1/8
    summary = orchestrate.run_study(settings)
    assert len(summary) == trials and (summary["status"] == "done").all()
    assert summary["stopped_early"].sum() >= min_stopped, summary
    leftover = [pg for pg in list_placement_groups(address=ray_cluster, detail=True) if pg.state != "REMOVED"]
    deadline = time.monotonic() + 60  # the cleaner removes them asynchronously
    while leftover and time.monotonic() < deadline:
        time.sleep(1)
        leftover = [pg for pg in list_placement_groups(address=ray_cluster, detail=True) if pg.state != "REMOVED"]
    assert not leftover, leftover


def _first_val_label(root: Path) -> Path:
    from study.data.formats import open_source

    return open_source("pets", "val", root).label_files[0]


@pytest.mark.parametrize("breakage", ["truncated_jpeg", "trimap_values", "size_mismatch"])
def test_broken_files_stop_the_study_before_ray_starts(breakage: str, toy_copy: Path, tmp_path: Path, capsys) -> None:
    from study import run
    from study.data.formats import open_source

    source = open_source("pets", "val", toy_copy)
    image, label = source.image_files[0], source.label_files[0]
    if breakage == "truncated_jpeg":
        image.write_bytes(image.read_bytes()[:300])
        culprit = image
    elif breakage == "trimap_values":
        trimap = np.asarray(Image.open(label)).copy()
        trimap[3, 3] = 9
        Image.fromarray(trimap).save(label)
        culprit = label
    else:
        Image.open(label).resize((20, 20)).save(label)
        culprit = label
    code = main_guard("study.run", run.main, ["--preset", "search", "--data-root", str(toy_copy), "--storage",
                                               str(tmp_path / "st"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and str(culprit) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "st" / "search").exists()


@pytest.mark.parametrize(("args", "option"), [
    (["--preset", "huge"], "--preset"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "many"], "--epochs"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--image-size", "3"], "--image-size"),
    (["--image-size", "16"], "--image-size"),  # too small for SegFormer
    (["--num-samples", "0"], "--num-samples"),
    (["--gpus-per-trial", "-1"], "--gpus-per-trial"),
    (["--workers-per-trial", "2", "--gpus-per-trial", "0.5"], "--gpus-per-trial"),
    (["--preset", "search", "--data-root", "/nonexistent/data"], "--data-root"),
    (["--resume"], "--resume"),
    (["--repeats", "0"], "--repeats"),
    (["--preset", "search", "--repeats", "3"], "--repeats"),  # a search's seeds need a confirm stage
    (["--preset", "report", "--confirm-top", "2"], "--confirm-top"),  # a grid has nothing to confirm
    (["--confirm-top", "99"], "--confirm-top"),  # more than the search runs
    (["--equivalence-margin", "0"], "--equivalence-margin"),
])
def test_bad_study_options(args: list[str], option: str, toy_root: Path, tmp_path: Path, capsys) -> None:
    base = ["--data-root", str(toy_root), "--storage", str(tmp_path / "st"), "--no-report"]
    code = main_guard("study.run", __import__("study.run", fromlist=["main"]).main, base + args)
    err = capsys.readouterr().err
    assert code == 2 and option in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "st").exists() or not any((tmp_path / "st").iterdir())


def test_an_unavailable_encoder_stops_the_study_before_ray(toy_root: Path, tmp_path: Path, capsys,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """FCN's default ImageNet encoder offline and not cached: one line naming the study's option, exit 2."""
    from study import run

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    code = main_guard("study.run", run.main, ["--preset", "search", "--data-root", str(toy_root),
                                               "--storage", str(tmp_path / "st"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "--pretrained-fcn imagenet" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "st").exists() or not any((tmp_path / "st").iterdir())


def test_options_are_checked_against_each_other(toy_root: Path, tmp_path: Path, capsys) -> None:
    from study import run
    from study.run import settings_from_args

    code = main_guard("study.run", run.main, ["--data-root", str(toy_root), "--storage", str(tmp_path / "st"),
                                               "--trial-runner", "tune", "--workers-per-trial", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--trial-runner tune" in err and len(err.strip().splitlines()) == 1
    clamped = settings_from_args(["--preset", "search", "--epochs", "2", "--data-root", str(toy_root)])
    assert (clamped.grace_period, clamped.asha_grace_period) == (4, 2)  # ASHA decides within --epochs; settings
    # stay as resolved


def test_storage_that_is_not_writable(toy_root: Path, tmp_path: Path, capsys) -> None:
    from study import run

    (tmp_path / "file").write_text("not a folder")
    code = main_guard("study.run", run.main, ["--data-root", str(toy_root), "--storage", str(tmp_path / "file" / "st")])
    assert code == 2 and "--storage" in capsys.readouterr().err


def test_more_gpus_than_the_cluster_has(ray_cluster: str, toy_root: Path, cache_dir: Path, tmp_path: Path,
                                        capsys) -> None:
    from study import run

    code = main_guard("study.run", run.main, ["--data-root", str(toy_root), "--storage", str(tmp_path / "st"),
                                               "--gpus-per-trial", "1", "--cache-dir", str(cache_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "--gpus-per-trial" in err and "0 GPUs" in err
    assert not (tmp_path / "st" / "demo").exists()


def test_existing_experiment_is_refused_and_kept(tmp_path: Path, toy_root: Path, capsys) -> None:
    from study import run

    experiment = tmp_path / "st" / "demo"
    experiment.mkdir(parents=True)
    (experiment / "summary.csv").write_text("precious\n")
    code = main_guard("study.run", run.main, ["--data-root", str(toy_root), "--storage", str(tmp_path / "st")])
    assert code == 2 and "--resume" in capsys.readouterr().err
    assert (experiment / "summary.csv").read_text() == "precious\n"


def test_truncated_checkpoint_gives_a_clear_error(toy_root: Path, cache_dir: Path, tmp_path: Path, capsys) -> None:
    from study import run_trial

    args = ["--no-progress", "--dataset", "pets", "--data-root", str(toy_root), "--epochs", "2", "--batch-size", "16",
            "--image-size", "32", "--out", str(tmp_path / "run")]
    assert main_guard("study.run_trial", run_trial.main, args) == 0
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    code = main_guard("study.run_trial", run_trial.main, [*args, "--epochs", "4", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and str(last) in err and "truncated" in err


def test_analysis_bad_options(tmp_path: Path, capsys) -> None:
    from analysis import report, score

    assert main_guard("analysis.report", report.main, ["--experiment", str(tmp_path / "none")]) == 2
    assert "--experiment" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main_guard("analysis.report", report.main, ["--experiment", str(tmp_path / "empty")]) == 2
    assert "no Ray Tune trials" in capsys.readouterr().err
    assert main_guard("analysis.report", report.main, ["--experiment", str(tmp_path / "empty"),
                                                       "--equivalence-margin", "-0.1"]) == 2
    assert "--equivalence-margin" in capsys.readouterr().err
    assert main_guard("analysis.score", score.main, ["--checkpoint", str(tmp_path / "x.pt"), "--dataset", "pets",
                                                           "--data-root", str(tmp_path),
                                                           "--out", str(tmp_path / "o")]) == 2
    assert "x.pt" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main_guard("analysis.score", score.main, ["--checkpoint", "c", "--dataset", "mnist",
                                                           "--data-root", ".", "--out", "o"]) == 2
    assert "--dataset" in capsys.readouterr().err


def test_every_torch_load_is_weights_only() -> None:
    offenders = []
    for path in REPO.rglob("*.py"):
        if any(part.startswith(".venv") for part in path.parts):  # .venv, and the benchmark's .venv-search
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert not offenders


def test_ray_token_authentication_is_never_turned_off() -> None:
    for path in REPO.rglob("*"):  # the project's code, configs and scripts (tests may name the setting to check it)
        skip = {".venv", ".git", "tests"} & set(path.relative_to(REPO).parts)
        if skip or not path.is_file() or path.suffix not in {".py", ".yaml", ".yml", ".sh", ""}:
            continue
        text = path.read_text(errors="ignore")
        assert "RAY_AUTH_MODE=disabled" not in text and "auth_mode: disabled" not in text, path


def test_a_restarted_trial_resumes_from_the_newest_checkpoint_tune_recorded(tmp_path: Path) -> None:
    """A driver killed just after Tune recorded a result restores an older experiment state; the trial must
    continue from the newest checkpoint whose result is in result.json, not retrain (and re-report) it."""
    from study.layout import recorded_checkpoint

    trial = tmp_path / "trial_t1"
    for index, epoch in enumerate((2, 4, 6)):
        folder = trial / f"checkpoint_{index:06d}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"epoch": epoch, "val_miou": 0.5}))
        (folder / "checkpoint.pt").write_bytes(b"weights")
    assert recorded_checkpoint(tmp_path, "t1") is None  # nothing recorded yet: start over
    (trial / "result.json").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (2, 4)))
    assert recorded_checkpoint(tmp_path, "t1") == (trial / "checkpoint_000001", 4)  # not epoch 6: never recorded
    (trial / "checkpoint_000001" / "checkpoint.pt").unlink()  # an incomplete folder is not a checkpoint
    assert recorded_checkpoint(tmp_path, "t1") == (trial / "checkpoint_000000", 2)
