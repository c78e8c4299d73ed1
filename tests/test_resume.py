"""A stopped study resumes exactly: stopped at three moments, two ways, on a Ray that outlives the driver.

The study is ``python -m study.run`` in its own process, as a user (or a Ray Job) runs it, joined to the
session's running Ray through RAY_ADDRESS, so the cluster survives its driver (the case after ``ray up``).
One small study is stopped six times in a row and resumed after each stop: at each of the three moments
(while Tune creates a trial, mid-epoch, between two trials), once each way (SIGTERM then SIGKILL 3 s later,
what ``ray job stop`` does, and a plain SIGKILL). Each stop lands on state that earlier stops and resumes
left, as a user's third or fourth ``--resume`` does. The moments are read from the driver's staging copy of
the experiment (``trial_<id>/params.json`` when Tune starts a trial, ``result.json`` rows as Tune records them,
``fates/`` as a trial ends), which Tune writes synchronously; never after a sleep. After the last resume the
study is checked for what docs/reliability.md promises.
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
from conftest import first_points

REPO = Path(__file__).resolve().parents[1]
TRIALS, EPOCHS = 3, 6  # validations at epochs 2, 4, 6: a trial is mid-epoch after each of the first two
# Each stop in turn, in the order a trial's life offers the moments (A mid-epoch, A ends, B starts, B mid-epoch,
# B ends, C starts): every moment is met once each way.
STOPS = [("mid-epoch", "sigterm"), ("between", "sigkill"), ("creating", "sigterm"),
         ("mid-epoch", "sigkill"), ("between", "sigterm"), ("creating", "sigkill")]
# ASHA decides at epoch 4 only (the demo's rung at 2 could stop trial B before it is ever mid-epoch).
ASHA_AT_4 = "scheduler: {asha: {grace_period: 4, reduction_factor: 2}}\n"
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from segmodels import build_model, save_encoder

    folder = tmp_path_factory.mktemp("encoders")
    files = {m: str(save_encoder(build_model(m, 19), folder / f"{m}.pt")) for m in ("segformer", "fcn_resnet50")}
    return ["--pretrained-segformer", files["segformer"], "--pretrained-fcn", files["fcn_resnet50"]]


def study_args(toy_root: Path, cache_dir: Path, storage: Path, name: str, encoders: list[str], trials: int,
               epochs: int, *extra: str) -> list[str]:
    """The demo preset cut to its first warm-start points (SegFormer scratch, fine-tune, freeze), one trial
    at a time."""
    return [sys.executable, "-m", "study.run", "--preset", "demo", "--data-root", str(toy_root), "--storage",
            str(storage), "--name", name, "--num-samples", str(trials), "--epochs", str(epochs), "--max-concurrent",
            "1", "--no-report", "--cache-dir", str(cache_dir), *encoders, *extra]


def staging_dirs(name: str) -> list[Path]:
    """The driver's staging copies of experiment ``name`` in the session's Ray."""
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return sorted(session.glob(f"artifacts/*/{name}/driver_artifacts"))


def result_epochs(result_json: Path) -> list[int]:
    epochs = []
    for line in result_json.read_text().splitlines() if result_json.is_file() else []:
        try:
            epochs.append(json.loads(line)["epoch"])
        except json.JSONDecodeError:  # a line still being written
            pass
    return epochs


def observe(name: str) -> dict[str, dict]:
    """Per trial, from the staging copies: when Tune last started it (``params.json`` is written at each
    start, restarts included), the epochs it reported and its latest fate."""
    trials: dict[str, dict] = {}
    for staging in staging_dirs(name):
        for folder in staging.glob("trial_*"):
            trial = trials.setdefault(folder.name.removeprefix("trial_"), {"started": 0.0, "epochs": [], "fate": None,
                                                                            "fate_at": 0.0})
            params = folder / "params.json"
            trial["started"] = max(trial["started"], params.stat().st_mtime if params.is_file() else 0.0)
            epochs = result_epochs(folder / "result.json")
            trial["epochs"] = max(trial["epochs"], epochs, key=len)
        for path in staging.glob("fates/*.json"):
            try:
                fate, written = json.loads(path.read_text())["fate"], path.stat().st_mtime
            except (OSError, ValueError, KeyError):  # being written, or a failure count with no fate yet
                continue
            trial = trials.setdefault(path.stem, {"started": 0.0, "epochs": [], "fate": None, "fate_at": 0.0})
            if written >= trial["fate_at"]:
                trial.update(fate=fate, fate_at=written)
    return trials


def reached(moment: str, now: dict[str, dict], before: dict[str, dict], run_started: float) -> str | None:
    """The id of the trial that the moment concerns, once this run of the driver is there."""
    from study.fates import ENDED

    def new_epochs(trial_id: str) -> list[int]:
        return now[trial_id]["epochs"][len(before.get(trial_id, {}).get("epochs", [])):]

    open_trials = [t for t in sorted(now, key=lambda t: now[t]["started"]) if now[t]["fate"] not in ENDED]
    if moment == "creating":  # Tune started a trial in this run; it has reported nothing since
        started = [t for t in open_trials if now[t]["started"] >= run_started]
        return (started[0] if not new_epochs(started[0]) else "too late") if started else None
    if moment == "mid-epoch":  # a trial reported a validation in this run, and trains on towards its next one
        training = [t for t in open_trials if new_epochs(t) and new_epochs(t)[-1] < EPOCHS]
        return training[0] if training else None
    if moment == "between":  # a trial ended in this run
        ended = [t for t in now if now[t]["fate"] in ENDED and before.get(t, {}).get("fate") not in ENDED]
        return ended[0] if ended else None
    raise ValueError(moment)


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


def log_tail(log: Path) -> str:
    return log.read_text()[-3000:] if log.is_file() else ""


def run_and_stop(args: list[str], env: dict, experiment: Path, moment: str, way: str, log: Path) -> dict:
    """One run of the driver, stopped at ``moment`` by ``way``; what it left, as the stop left it."""
    name = experiment.name
    before, run_started = observe(name), time.time()
    with open(log, "w") as out:
        driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline, target = time.monotonic() + 300, None
        while target is None:
            assert driver.poll() is None, f"the study ended before it could be stopped {moment}:\n{log_tail(log)}"
            assert time.monotonic() < deadline, f"the study never reached {moment}:\n{log_tail(log)}"
            target = reached(moment, observe(name), before, run_started)
            time.sleep(0.05)
        if target == "too late":
            pytest.fail("the trial Tune started reported before the test could stop the study at its creation")
        stopped = stop(driver, way)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    after = observe(name)
    if way == "sigterm":  # the graceful path, within the 3 s: state saved, unfinished trials recorded, then exit
        assert "study.run: interrupted:" in log.read_text(), f"no graceful stop within 3 s:\n{log_tail(log)}"
        assert stopped["code"] == 130 or stopped["graceful_s"] is None, (stopped, log_tail(log))
        summary = pd.read_csv(experiment / "summary.csv", dtype={"trial_id": str})
        if moment != "between":  # the trial that was starting or training at the stop
            assert summary.loc[summary["trial_id"] == target, "stop_reason"].tolist() == ["interrupted"], summary
            assert (experiment / "fates" / f"{target}.json").is_file()
    return {"moment": moment, "way": way, "target": target, "stopped": stopped,
            "recorded": {p.parent.name: result_epochs(p) for p in experiment.glob("trial_*/result.json")},
            "created": set(after) - set(before)}


def check_resumed_exactly(experiment: Path, stops: list[dict], trials: int, inits: set[str]) -> None:
    from study.fates import read_fate
    from study.summary import trial_ids

    summary = pd.read_csv(experiment / "summary.csv", dtype={"trial_id": str})
    configurations = summary[["model", "init", "lr", "gamma"]].apply(tuple, axis=1)
    assert len(summary) == trials and summary["trial_id"].is_unique, summary  # the budget, exactly
    assert configurations.is_unique, summary  # no warm-start point ran twice
    assert set(summary["init"]) == inits and set(summary["model"]) == {"segformer"}, summary
    assert set(summary["stop_reason"]) <= {"completed", "stopped early (ASHA)"}, summary  # every trial ended
    assert (summary["status"] == "done").all()
    assert sorted(summary["trial_id"]) == trial_ids(str(experiment))
    # only a SIGKILLed driver can leave a trial that Tune's saved state never knew: one Tune created in that run
    created_before_a_kill = set().union(*[s["created"] for s in stops if s["stopped"]["graceful_s"] is None])
    for folder in experiment.glob("trial_*"):
        trial_id = folder.name.removeprefix("trial_")
        epochs = result_epochs(folder / "result.json")
        assert epochs == sorted(set(epochs)), f"{folder}: an epoch reported twice or out of order: {epochs}"
        if trial_id in set(summary["trial_id"]):
            row = summary[summary["trial_id"] == trial_id].iloc[0]
            assert epochs and epochs[-1] == row["epochs"], (epochs, row)
            for s in stops:  # what was recorded before each stop is kept, not retrained
                earlier = s["recorded"].get(folder.name, [])
                assert epochs[: len(earlier)] == earlier, (s["moment"], s["way"], epochs, earlier)
        else:
            assert trial_id in created_before_a_kill, f"{folder} is no trial of the study, and no killed run made it"
            fate = read_fate(str(experiment), trial_id)
            assert fate.get("orphaned") and fate["fate"] == "interrupted", fate
    for s in stops:  # the trial running at a graceful stop resumed, not rerun
        if s["way"] == "sigterm" and (experiment / f"trial_{s['target']}").is_dir():
            assert s["target"] in set(summary["trial_id"]), (s, summary)


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


@pytest.mark.timeout(900)
def test_a_study_stopped_six_times_resumes_exactly(ray_cluster: str, small_toy_root: Path, cache_dir: Path,
                                                   encoders: list[str], tmp_path: Path) -> None:
    name = f"stops-{os.getpid()}"
    experiment = tmp_path / "st" / name
    space = tmp_path / "asha_at_4.yaml"
    points = Path(first_points(tmp_path, TRIALS)[1]).read_text()  # the demo's first warm-start points
    space.write_text(ASHA_AT_4 + points)
    args = study_args(small_toy_root, cache_dir, tmp_path / "st", name, encoders, TRIALS, EPOCHS,
                      "--space", str(space))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    stops = []
    for run, (moment, way) in enumerate(STOPS):
        stops.append(run_and_stop([*args, *(["--resume"] if run else [])], env, experiment, moment, way,
                                  tmp_path / f"run{run}.log"))
        graceful = stops[-1]["stopped"]["graceful_s"]
        print(f"{moment}/{way}: trial {stops[-1]['target']}" + (f", driver gone {graceful:.1f} s after SIGTERM"
                                                                    if graceful is not None else ""))
    resumed = subprocess.run([*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    check_resumed_exactly(experiment, stops, TRIALS, {"scratch", "finetune", "freeze"})


@pytest.mark.timeout(600)
def test_a_study_on_its_own_local_ray_resumes_exactly_after_sigterm(small_toy_root: Path, cache_dir: Path,
                                                                     encoders: list[str], tmp_path: Path) -> None:
    """The driver starts (and takes down) its own Ray: one trial, stopped mid-epoch by SIGTERM, then resumed."""
    name = f"stop-local-{os.getpid()}"
    experiment = tmp_path / "st" / name
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = study_args(small_toy_root, cache_dir, tmp_path / "st", name, encoders, 1, 4, *first_points(tmp_path, 1))
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
    recorded = {p.parent.name: result_epochs(p) for p in experiment.glob("trial_*/result.json")}
    resumed = subprocess.run([*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    check_resumed_exactly(experiment, [{"moment": "mid-epoch", "way": "sigterm", "target": "", "stopped": stopped,
                                        "recorded": recorded, "created": set()}], 1, {"scratch"})
