"""Issue 23: the W&B key never reaches a Ray runtime env, the State API, Ray's logs, the experiment or the console.

Ray's own ``WandbLoggerCallback`` copies ``WANDB_API_KEY`` into its logging actors' runtime env, which
``ray list actors --detail`` shows to anyone on the cluster and ``runtime_env_agent.log`` prints
(``study.orchestrate.wandb_key`` hands the key over in a private file instead).

The quick tests check that hand-over piece by piece. The slow one starts a Ray head of its own (its own temp
dir, explicit ports, token authentication on, and no key in its environment, like a cluster's nodes), runs a
toy study on it the way a user does with ``--wandb``, ``WANDB_MODE=offline`` and a random key, reads the State
API and every process environment while the trials run, then searches Ray's whole temp folder, wandb's own
folders, the experiment folder and the console. It stops exactly the processes it started (never ``ray stop``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import first_points
from ray_nodes import (
    dashboard_get,
    free_port,
    kill_leftovers,
    processes_with_env,
    stop_group,
    wait_for_log,
    wait_for_nodes,
)

REPO = Path(__file__).resolve().parents[1]
RAY_BIN = Path(sys.executable).parent / "ray"
# The State API's detail views: every place Ray shows a runtime env (actors, tasks, jobs, the runtime envs).
STATE_VIEWS = ("actors", "tasks", "jobs", "runtime_envs", "workers")


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """This process without a W&B key or login, and with no key held by study.orchestrate.wandb_key."""
    from study.orchestrate import wandb_key

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no `wandb login` on this machine
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # so that tempfile reads TMPDIR again
    monkeypatch.setattr(wandb_key, "_held", {})
    yield wandb_key
    wandb_key.forget_key_file()


def test_the_key_leaves_the_environment_for_a_private_file(no_key, monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_hex(20)
    monkeypatch.setenv("WANDB_API_KEY", key)
    assert no_key.wandb_mode() == "online"
    assert "WANDB_API_KEY" not in os.environ
    path = Path(no_key.withhold_key())
    assert path.read_text() == key and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700 and path.parent.parent == Path(tempfile.gettempdir())
    # The logging actor's side: it reads the file into its own environment before wandb.init.
    actor_class = no_key.keyed_actor_class(str(path))
    monkeypatch.chdir(path.parent)  # the actor changes into its logdir
    actor_class(logdir=str(path.parent), queue=None, exclude=[], to_config=[])
    assert os.environ.pop("WANDB_API_KEY") == key
    no_key.forget_key_file()  # at the end of the experiment: the file goes, the driver still has the key
    assert not path.parent.exists()
    assert Path(no_key.withhold_key()).read_text() == key


def test_a_key_from_wandb_login_means_online_runs(no_key, tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {secrets.token_hex(20)}\n")
    netrc.chmod(0o600)
    assert no_key.wandb_mode() == "online" and no_key.withhold_key() is None  # the key stays in the netrc


def test_online_without_any_key_is_a_one_line_error(no_key, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from foundation.errors import ConfigError
    from study.orchestrate.tuner import wandb_callbacks
    from study.settings import StudySettings

    assert no_key.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(ConfigError, match="wandb login"):
        wandb_callbacks(StudySettings(wandb=True, storage=str(tmp_path), name="w"))


@pytest.fixture
def ray_head() -> Iterator[dict]:
    """A one-node Ray cluster (2 CPUs) started with `ray start --head --block`: its own temp dir and ports, token
    authentication on with a token of its own, no W&B key in its environment; stopped after."""
    token = secrets.token_hex(32)
    temp_root = Path(tempfile.mkdtemp(prefix="segkey", dir="/tmp"))  # short: Ray's socket paths must fit
    env = {k: v for k, v in os.environ.items() if k not in (
        "RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "WANDB_API_KEY", "XDG_RUNTIME_DIR")}
    wandb_home = temp_root / "wandb-home"  # wandb's own config/cache folders: searched for the key too
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0", RAY_TRAIN_V2_ENABLED="1",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", RAY_DASHBOARD_STARTUP_TIMEOUT_S="180", PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1", WANDB_CONFIG_DIR=str(wandb_home / "config"),
               WANDB_CACHE_DIR=str(wandb_home / "cache"), WANDB_DATA_DIR=str(wandb_home / "data"))
    gcs_port, dashboard_port = free_port(), free_port()
    args = [str(RAY_BIN), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
            "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            '--resources={"segkey_head": 1}', "--object-store-memory=200000000", "--disable-usage-stats",
            f"--temp-dir={temp_root / 'ray'}"]
    log = temp_root / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    processes, logs = {"head": head}, {"head": log}
    marker = f"RAY_AUTH_TOKEN={token}".encode()
    try:
        wait_for_log(log, "Ray runtime started", processes, logs, timeout_s=240)
        wait_for_nodes(dashboard_port, token, {"segkey_head"}, processes, logs, timeout_s=150)
        yield {"address": f"127.0.0.1:{gcs_port}", "dashboard_port": dashboard_port, "token": token, "env": env,
               "temp_root": temp_root}
    finally:
        stop_group(head)
        leftover = kill_leftovers(marker)
        shutil.rmtree(temp_root, ignore_errors=True)
        assert not leftover, f"processes of the test cluster outlived its head: {leftover}"


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Regular files under `root` (symlinks not followed) whose bytes contain `needle`."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wandb_key_reaches_no_runtime_env_log_file_or_console(ray_head: dict, small_toy_root: Path, cache_dir: Path,
                                                                  tmp_path: Path) -> None:
    from segmodels import build_model, save_encoder  # given encoders skip the pretraining stage

    started = time.monotonic()
    key = secrets.token_hex(20)  # 40 hex digits: the shape of a W&B API key
    encoders = {m: save_encoder(build_model(m, 19), tmp_path / f"{m}.pt") for m in ("segformer", "fcn_resnet50")}
    storage, private_tmp = tmp_path / "storage", tmp_path / "tmp"
    private_tmp.mkdir()
    args = [sys.executable, "-m", "study.run", "--preset", "demo", "--data-root", str(small_toy_root),
            "--storage", str(storage), "--name", "keyed", "--wandb", "--no-report", "--num-samples", "2",
            *first_points(tmp_path, 2),
            "--epochs", "2", "--cache-dir", str(cache_dir), "--pretrained-segformer", str(encoders["segformer"]),
            "--pretrained-fcn", str(encoders["fcn_resnet50"])]
    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["address"], "SEGSTUDY_CACHE": str(cache_dir),
           "WANDB_MODE": "offline", "WANDB_API_KEY": key, "TMPDIR": str(private_tmp)}
    driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    console: list[str] = []
    reader = threading.Thread(target=lambda: console.extend(driver.stdout), daemon=True)
    reader.start()

    # While the study runs: the State API's detail views (what `ray list actors --detail` etc. show), and every
    # live process whose environment holds the key.
    views: dict[str, str] = {}
    logging_actor_seen, key_holders = False, {}
    deadline = time.monotonic() + 300
    while driver.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
            reader.join(timeout=10)
            pytest.fail("the study did not finish within 300 s:\n" + "".join(console)[-4000:])
        for view in STATE_VIEWS:
            try:
                status, body = dashboard_get(ray_head["dashboard_port"], f"/api/v0/{view}?detail=1&limit=10000",
                                             ray_head["token"])
            except OSError:
                continue
            if status == 200:
                text = json.dumps(body)
                views[view] = views.get(view, "") + text
                if view == "actors":
                    rows = body.get("data", {}).get("result", {}).get("result", [])
                    logging_actor_seen |= any("LoggingActor" in row.get("class_name", "") and
                                              row.get("state") == "ALIVE" for row in rows)
        for pid in processes_with_env(key.encode()):
            if pid != driver.pid:  # the driver started with the key: the user gave it that
                key_holders.setdefault(pid, cmdline(pid))
        time.sleep(1)
    reader.join(timeout=30)
    output = "".join(console)
    (tmp_path / "console.txt").write_text(output)
    assert driver.returncode == 0, output[-4000:]

    experiment = storage / "keyed"
    summary = pd.read_csv(experiment / "summary.csv")
    assert len(summary) == 2 and (summary["status"] == "done").all(), summary

    # Read while the trials ran: a W&B logging actor was alive then, and no detail view held the key.
    assert logging_actor_seen, "no W&B logging actor was alive while the State API was read"
    assert set(views) == set(STATE_VIEWS), f"State API views never answered: {set(STATE_VIEWS) - set(views)}"
    leaks = {f"State API: {view}": "" for view, text in views.items() if key in text}
    # No Ray process (raylet, trial and Train workers, the logging actors' own environment) had it: only
    # wandb's service processes (wandb-core, wandb-symon), which a logging actor starts to talk to W&B.
    wandb_service = f"{os.sep}wandb{os.sep}bin{os.sep}"
    leaks.update({f"environment of pid {pid}": line for pid, line in key_holders.items() if wandb_service not in line})
    assert any(wandb_service in line for line in key_holders.values()), \
        "no wandb service process had the key: the logging actors did not get it"
    # Nowhere on disk: Ray's temp folder (every session's logs, the runtime env agent's included), wandb's own
    # folders, the experiment (its logs/ copy of Ray's worker output and the W&B runs included), the temp folder
    # the driver used (the private key file is gone with the study), nor on the console.
    assert list((ray_head["temp_root"] / "ray").glob("session_*/logs/runtime_env_agent.log"))  # searched below
    assert (experiment / "logs").is_dir()
    for root in (ray_head["temp_root"], experiment, private_tmp):
        leaks.update({f"file {path}": "" for path in files_holding(root, key.encode())})
    if key in output:
        leaks["console"] = ""
    assert not leaks, "the W&B key leaked:\n" + "\n".join(f"{where} {what}" for where, what in leaks.items())
    assert not list(private_tmp.glob("segstudy-wandb-*")), "the private key folder outlived the study"

    # W&B logging still works: one offline run per trial, with the trial's metrics.
    runs = sorted(experiment.rglob("offline-run-*"))
    assert len(runs) == len(summary), runs
    for run in runs:
        blob = b"".join(p.read_bytes() for p in run.rglob("*.wandb"))
        assert b"val_miou" in blob and b"train_loss" in blob, run
    print(f"study with W&B and its secret checks: {time.monotonic() - started:.0f} s")
