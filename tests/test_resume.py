"""A stopped study resumes exactly: stopped at three moments, two ways, on a Ray that outlives the driver.

The study is ``python -m study.run`` in its own process, as a user (or a Ray Job) runs it, joined to the
session's running Ray through RAY_ADDRESS, so the cluster survives its driver (the case after ``ray up``).
The moments are read from the driver's staging copy of the experiment (``trial_<id>/params.json`` when Tune
starts a trial, ``result.json`` rows as Tune records them, ``fates/`` as a trial ends), which Tune writes
synchronously; never after a sleep. The ways: SIGTERM then SIGKILL 3 s later (what ``ray job stop`` does),
and a plain SIGKILL. Each case then resumes with ``--resume`` and checks what docs/reliability.md promises.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
TRIALS, EPOCHS = 2, 4
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from segmodels import build_model, save_encoder

    folder = tmp_path_factory.mktemp("encoders")
    files = {m: str(save_encoder(build_model(m, 19), folder / f"{m}.pt")) for m in ("segformer", "fcn_resnet50")}
    return ["--pretrained-segformer", files["segformer"], "--pretrained-fcn", files["fcn_resnet50"]]


def study_args(toy_root: Path, cache_dir: Path, storage: Path, name: str, encoders: list[str]) -> list[str]:
    """The demo preset cut to its first two warm-start points (SegFormer scratch, fine-tune), one trial at a
    time, four epochs each: enough for every moment (the second trial's start, mid-epoch, between the two)."""
    return [sys.executable, "-m", "study.run", "--preset", "demo", "--data-root", str(toy_root), "--storage",
            str(storage), "--name", name, "--num-samples", str(TRIALS), "--epochs", str(EPOCHS), "--max-concurrent",
            "1", "--no-report", "--cache-dir", str(cache_dir), *encoders]


def staging_dirs(name: str) -> list[Path]:
    """The driver's staging copies of experiment ``name`` (one per run of the driver), oldest first."""
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return sorted(session.glob(f"artifacts/*/{name}/driver_artifacts"), key=lambda p: p.stat().st_mtime)


def result_epochs(result_json: Path) -> list[int]:
    epochs = []
    for line in result_json.read_text().splitlines() if result_json.is_file() else []:
        try:
            epochs.append(json.loads(line)["epoch"])
        except json.JSONDecodeError:  # a line still being written
            pass
    return epochs


def reached(moment: str, staging: Path) -> str | None:
    """The id of the trial that the moment concerns, once the study is there."""
    trials = sorted(staging.glob("trial_*/params.json"), key=lambda p: p.stat().st_mtime)
    ended = {p.stem for p in staging.glob("fates/*.json")}
    if moment == "creating" and len(trials) >= 2:  # Tune started the second trial; it has reported nothing
        second = trials[1].parent
        return second.name.removeprefix("trial_") if not result_epochs(second / "result.json") else "too late"
    if moment == "mid-epoch":  # a trial recorded epoch 2, has not ended, and trains epoch 3
        training = [p.parent for p in trials if result_epochs(p.parent / "result.json")
                    and p.parent.name.removeprefix("trial_") not in ended]
        return training[0].name.removeprefix("trial_") if training else None
    if moment == "between" and ended:  # the first trial has ended
        return sorted(ended)[0]
    return None


def stop(driver: subprocess.Popen, way: str) -> dict:
    started = time.monotonic()
    if way == "sigkill":
        os.killpg(driver.pid, signal.SIGKILL)
        return {"code": driver.wait(), "graceful_s": None}
    driver.send_signal(signal.SIGTERM)  # ray job stop: SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s)
    try:
        code = driver.wait(timeout=3)
        return {"code": code, "graceful_s": time.monotonic() - started}
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        return {"code": driver.wait(), "graceful_s": None}


def run_stop_and_resume(args: list[str], env: dict, experiment: Path, moment: str, way: str) -> dict:
    name = experiment.name
    driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline, target, staging = time.monotonic() + 300, None, None
        while target is None:
            assert driver.poll() is None, "the study ended before it could be stopped"
            assert time.monotonic() < deadline, f"the study never reached {moment}"
            staging = next(iter(staging_dirs(name)), None)
            target = reached(moment, staging) if staging else None
            time.sleep(0.05)
        if target == "too late":
            pytest.fail("the second trial reported before the test could stop the study at its creation")
        stopped = stop(driver, way)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    before = {p.parent.name: result_epochs(p) for p in experiment.glob("trial_*/result.json")}
    if stopped["graceful_s"] is not None:  # the graceful path: state saved, unfinished trials recorded
        assert stopped["code"] == 130, stopped
        summary = pd.read_csv(experiment / "summary.csv")
        if moment != "between":  # the trial that was starting or training at the stop
            assert "interrupted" in set(summary["stop_reason"]), summary
            assert (experiment / "fates" / f"{target}.json").is_file()
    resumed = subprocess.run([*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    return {"target": target, "stopped": stopped, "before": before, "console": resumed.stdout}


def check_resumed_exactly(experiment: Path, outcome: dict, way: str) -> None:
    from study.fates import read_fate
    from study.summary import trial_ids

    summary = pd.read_csv(experiment / "summary.csv")
    configurations = summary[["model", "init", "lr", "gamma"]].apply(tuple, axis=1)
    assert len(summary) == TRIALS and summary["trial_id"].is_unique, summary  # the budget, exactly
    assert configurations.is_unique, summary  # no warm-start point ran twice
    assert set(summary["init"]) == {"scratch", "finetune"} and set(summary["model"]) == {"segformer"}
    assert set(summary["stop_reason"]) <= {"completed", "stopped early (ASHA)"}, summary  # every trial ended
    assert (summary["status"] == "done").all()
    assert sorted(summary["trial_id"].astype(str)) == trial_ids(str(experiment))
    for folder in experiment.glob("trial_*"):
        trial_id = folder.name.removeprefix("trial_")
        epochs = result_epochs(folder / "result.json")
        assert epochs == sorted(set(epochs)), f"{folder}: an epoch reported twice or out of order: {epochs}"
        if trial_id in set(summary["trial_id"].astype(str)):
            row = summary[summary["trial_id"].astype(str) == trial_id].iloc[0]
            assert epochs and epochs[-1] == row["epochs"], (epochs, row)
            earlier = outcome["before"].get(folder.name, [])
            assert epochs[: len(earlier)] == earlier  # what was recorded before the stop is kept, not retrained
        else:  # only a SIGKILLed driver can leave a trial that Tune's saved state never knew
            assert way == "sigkill", f"{folder} is no trial of the study after a graceful stop"
            fate = read_fate(str(experiment), trial_id)
            assert fate.get("orphaned") and fate["fate"] == "interrupted", fate
    target = outcome["target"]
    if way == "sigterm" and (experiment / f"trial_{target}").is_dir():  # the running trial resumed, not rerun
        assert target in set(summary["trial_id"].astype(str))


def test_a_folder_unknown_to_tunes_saved_state_is_an_orphan_even_when_empty(tmp_path: Path, monkeypatch) -> None:
    """A driver killed just after Tune created a trial leaves its folder with no file in it yet: in its
    staging copy, which the restored Tuner syncs to storage later (seen once in CI), or on storage already
    (Tune's sync copies folders as they are). It is an orphan like one that holds files."""
    from study.fates import read_fate
    from study.orchestrate import stops
    from study.summary import trial_ids

    experiment, staging = tmp_path / "orphans", tmp_path / "staging" / "driver_artifacts"
    (staging / "trial_staged0").mkdir(parents=True)  # empty, and only in the killed driver's staging copy
    monkeypatch.setattr(stops, "unsynced_staging_copies", lambda _: [staging])
    state = {"trial_data": [[json.dumps({"trial_id": "known0"}), "{}"]]}
    (experiment / "trial_known0").mkdir(parents=True)
    (experiment / "experiment_state-2026-12-02_00-00-00.json").write_text(json.dumps(state))
    (experiment / "trial_known0" / "params.json").write_text("{}")
    (experiment / "trial_known0" / "result.json").write_text(json.dumps({"epoch": 2}) + "\n")
    (experiment / "trial_empty0").mkdir()
    (experiment / "trial_files0").mkdir()
    (experiment / "trial_files0" / "params.json").write_text("{}")

    assert stops.reconcile_with_storage(str(experiment)) == ["empty0", "files0", "staged0"]
    for orphan, folder in itertools.product(("empty0", "files0", "staged0"), (experiment, staging)):
        fate = read_fate(str(folder), orphan)
        assert fate.get("orphaned") is True and fate["fate"] == "interrupted", (folder, fate)
    assert read_fate(str(experiment), "known0") == {} and trial_ids(str(experiment)) == ["known0"]


@pytest.mark.parametrize("way", ["sigterm", "sigkill"])
@pytest.mark.parametrize("moment", ["creating", "mid-epoch", "between"])
def test_a_stopped_study_resumes_exactly(moment: str, way: str, ray_cluster: str, small_toy_root: Path, cache_dir: Path,
                                         encoders: list[str], tmp_path: Path) -> None:
    name = f"stop-{moment}-{way}-{os.getpid()}"
    experiment = tmp_path / "st" / name
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    outcome = run_stop_and_resume(study_args(small_toy_root, cache_dir, tmp_path / "st", name, encoders), env,
                                  experiment, moment, way)
    check_resumed_exactly(experiment, outcome, way)
    if outcome["stopped"]["graceful_s"] is not None:
        print(f"{moment}/{way}: graceful stop took {outcome['stopped']['graceful_s']:.1f} s")


def test_a_study_on_its_own_local_ray_resumes_exactly_after_sigterm(small_toy_root: Path, cache_dir: Path,
                                                                     encoders: list[str], tmp_path: Path) -> None:
    """The driver starts (and takes down) its own Ray: stopped mid-epoch by SIGTERM, then resumed."""
    name = f"stop-local-{os.getpid()}"
    experiment = tmp_path / "st" / name
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = study_args(small_toy_root, cache_dir, tmp_path / "st", name, encoders)
    driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:  # its staging copy is in its own Ray session: watch storage instead (Tune syncs it every 2 s)
        deadline = time.monotonic() + 300
        while not any(len(result_epochs(p)) for p in experiment.glob("trial_*/result.json")):
            assert driver.poll() is None and time.monotonic() < deadline, "the study ended or stalled"
            time.sleep(0.1)
        stopped = stop(driver, "sigterm")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    before = {p.parent.name: result_epochs(p) for p in experiment.glob("trial_*/result.json")}
    resumed = subprocess.run([*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    check_resumed_exactly(experiment, {"target": "", "stopped": stopped, "before": before}, "sigterm")
