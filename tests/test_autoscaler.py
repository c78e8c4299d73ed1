"""`ray up` -> `study.run`, proven on a real autoscaler: Ray's fake multi-node provider on this machine.

A head started as ``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=CONFIG`` runs Ray's own
autoscaler (the monitor) with ``provider: fake_multinode``: it launches worker "nodes" as local raylets
with the resources their node type declares when demand waits for them, and removes them when idle.
The head offers CPUs only (and the ``on_demand`` driver resource, as cluster.yaml's head does); the GPU
node type starts at 0 nodes. Its GPUs are logical: the trials train on the CPU.

The study is submitted as a Ray Job (``ray job submit -- python -m study.run ...``), as docs/cluster.md
prescribes, and followed with ``ray job logs --follow``. A second test stops a job mid-study and
resubmits it with ``--resume``. Every port is explicit, token authentication is on with a token of this
test's own, and teardown stops exactly the processes this cluster started (never ``ray stop``).
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
import yaml
from conftest import first_points
from ray_nodes import dashboard_get, free_port, node_logs, processes_with_env, wait_for_log

REPO = Path(__file__).resolve().parents[1]
RAY_BIN = Path(sys.executable).parent / "ray"
GPU_NODE_TYPE = "gpu_worker"
DRIVER_RESOURCE = "on_demand"  # what cluster.yaml's head offers (study.orchestrate.cluster.DRIVER_RESOURCE)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def autoscaling_config(gcs_port: int) -> dict:
    """The shape of Ray's fake_multi_node/example.yaml: a CPU head, a GPU type from zero, quick idle removal."""
    return {
        "cluster_name": "segstudy-fake",
        "max_workers": 2,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}",
                     "launch_multiple": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1, "GPU": 0, DRIVER_RESOURCE: 4}, "node_config": {},
                                 "max_workers": 0},
            GPU_NODE_TYPE: {"resources": {"CPU": 2, "GPU": 1, "object_store_memory": 200_000_000},
                            "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1, "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }


class NodeWatch(threading.Thread):
    """Polls the State API for alive nodes; records when each node was first and last seen alive."""

    def __init__(self, cluster: dict, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.cluster, self.interval_s = cluster, interval_s
        self.seen: dict[str, dict] = {}
        self.halt = threading.Event()

    def alive(self) -> dict[str, dict]:
        status, body = dashboard_get(self.cluster["dashboard_port"], "/api/v0/nodes?detail=1&limit=100",
                                     self.cluster["token"])
        rows = body.get("data", {}).get("result", {}).get("result", []) if status == 200 else []
        return {row["node_id"]: row for row in rows if row.get("state") == "ALIVE"}

    def run(self) -> None:
        while not self.halt.is_set():
            now = time.monotonic()
            try:
                nodes = self.alive()
            except OSError:
                nodes = {}
            for node_id, row in nodes.items():
                entry = self.seen.setdefault(node_id, {"first": now, "gpus": (row.get("resources_total") or {})
                                                       .get("GPU", 0), "head": bool(row.get("is_head_node"))})
                entry["last"] = now
            self.halt.wait(self.interval_s)

    def stop(self) -> None:
        self.halt.set()
        self.join()


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    token = secrets.token_hex(32)
    temp_root = Path(tempfile.mkdtemp(prefix="segfake", dir="/tmp"))  # short: Ray's socket paths must fit
    gcs_port, dashboard_port = free_port(), free_port()
    config = temp_root / "autoscaling.yaml"  # kept for the cluster's life: the monitor reads it
    config.write_text(yaml.safe_dump(autoscaling_config(gcs_port)))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(RAY_FAKE_CLUSTER="1", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", RAY_DASHBOARD_STARTUP_TIMEOUT_S="180", PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # jobs use the head's
               HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    args = [str(RAY_BIN), "start", "--head", "--block", f"--autoscaling-config={config}",
            "--node-ip-address=127.0.0.1", f"--port={gcs_port}", "--num-cpus=1", "--num-gpus=0",
            f"--resources={json.dumps({DRIVER_RESOURCE: 4})}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--ray-client-server-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}", "--object-store-memory=200000000", "--disable-usage-stats",
            f"--temp-dir={temp_root / 'ray'}"]
    log = temp_root / "head.log"
    started = time.monotonic()
    with open(log, "w") as out:
        head = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    processes, logs = {"head": head}, {"head": log}
    try:
        wait_for_log(log, "Ray runtime started", processes, logs, timeout_s=240)
        cluster = {"address": f"127.0.0.1:{gcs_port}", "dashboard_port": dashboard_port, "token": token,
                   "config": config, "env": env, "temp_root": temp_root, "head_start_s": time.monotonic() - started,
                   "cli_env": {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}}
        watch = NodeWatch(cluster)
        deadline = time.monotonic() + 120
        while not watch.alive():
            assert head.poll() is None and time.monotonic() < deadline, node_logs(logs)
            time.sleep(0.5)
        yield cluster
    finally:
        marker = f"RAY_AUTH_TOKEN={token}".encode()
        leftover = processes_with_env(marker)  # recorded before teardown: the fake nodes run in the monitor
        if head.poll() is None:  # the leader first, so the head shuts down in order ...
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(timeout=40)
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait()
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):  # ... then whatever of it remains
            for pid in [p for p in leftover if p in processes_with_env(marker)]:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while processes_with_env(marker) and time.monotonic() < deadline:
                time.sleep(0.3)
        still = processes_with_env(marker)
        shutil.rmtree(temp_root, ignore_errors=True)
        assert not still, f"processes of the fake cluster outlived its teardown: {still}"


def ray_cli(cluster: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY_BIN), *args], env=cluster["cli_env"], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def job_info(cluster: dict, submission_id: str) -> dict:
    status, body = dashboard_get(cluster["dashboard_port"], f"/api/jobs/{submission_id}", cluster["token"])
    assert status == 200, (status, body)
    return body


def wait_for_job(cluster: dict, submission_id: str, states: set[str], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = job_info(cluster, submission_id)
        if info["status"] in states:
            return info
        time.sleep(1)
    pytest.fail(f"job {submission_id} not in {states} after {timeout_s:.0f} s: {job_info(cluster, submission_id)}")


def study_args(toy_root: Path, cache_dir: Path, storage: Path, name: str, encoders: dict, *extra: str) -> list[str]:
    return ["python", "-m", "study.run", "--preset", "demo", "--data-root", str(toy_root), "--storage", str(storage),
            "--name", name, "--cache-dir", str(cache_dir), "--pretrained-segformer", encoders["segformer"],
            "--pretrained-fcn", encoders["fcn_resnet50"], *extra]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Given encoder files: the trials need no Cityscapes stage here."""
    from segmodels import build_model, save_encoder

    folder = tmp_path_factory.mktemp("encoders")
    return {m: str(save_encoder(build_model(m, 19), folder / f"{m}.pt")) for m in ("segformer", "fcn_resnet50")}


def result_rows(result_json: Path) -> list[dict]:
    rows = []
    for line in result_json.read_text().splitlines() if result_json.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def test_the_autoscaler_grows_gpu_nodes_for_a_study_submitted_as_a_job(fake_cluster: dict, small_toy_root: Path,
                                                                       cache_dir: Path, encoders: dict,
                                                                       tmp_path: Path) -> None:
    watch = NodeWatch(fake_cluster)
    assert [n for n, row in watch.alive().items() if not row.get("is_head_node")] == []  # no worker node at first
    watch.start()
    storage = tmp_path / "storage"
    submitted = time.monotonic()
    submit = ray_cli(fake_cluster, "job", "submit", "--submission-id", "autoscale-1", "--no-wait", "--",
                     *study_args(small_toy_root, cache_dir, storage, "autoscale", encoders, "--num-samples", "2",
                                *first_points(storage, 2),
                                 "--epochs", "2"))
    assert submit.returncode == 0, submit.stderr[-3000:]
    logs = ray_cli(fake_cluster, "job", "logs", "--follow", "autoscale-1", timeout=420)
    info = wait_for_job(fake_cluster, "autoscale-1", {"SUCCEEDED", "FAILED", "STOPPED"}, timeout_s=60)
    ended = time.monotonic()
    assert info["status"] == "SUCCEEDED", logs.stdout[-4000:]
    output = logs.stdout

    # The study sized its trials from the autoscaler config the running monitor was started with.
    assert "autoscaler may grow it to 2 GPUs" in output, output[-3000:]
    experiment = storage / "autoscale"
    summary = pd.read_csv(experiment / "summary.csv")
    assert len(summary) == 2 and (summary["status"] == "done").all(), summary
    assert (experiment / "report" / "report.md").is_file()

    # GPU-typed nodes were launched while trials waited, the trials ran there, and the driver stayed on the head.
    gpu_nodes = {n: e for n, e in watch.seen.items() if e["gpus"] >= 1 and not e["head"]}
    head = next(n for n, e in watch.seen.items() if e["head"])
    assert gpu_nodes, watch.seen
    trained_on = {row["node_id"] for trial in experiment.glob("trial_*") for row in result_rows(trial / "result.json")}
    assert trained_on and trained_on <= set(gpu_nodes), (trained_on, list(gpu_nodes))
    assert info.get("driver_node_id") == head, info  # the job driver ran on the head

    # After the study the idle GPU nodes are removed, and no placement group is left.
    deadline = time.monotonic() + 90
    while any(n in watch.alive() for n in gpu_nodes) and time.monotonic() < deadline:
        time.sleep(1)
    watch.stop()
    assert not any(n in watch.alive() for n in gpu_nodes), "idle GPU nodes were not removed"
    status, body = dashboard_get(fake_cluster["dashboard_port"], "/api/v0/placement_groups?detail=1&limit=1000",
                                 fake_cluster["token"])
    assert status == 200
    assert not [pg for pg in body["data"]["result"]["result"] if pg["state"] != "REMOVED"]
    timeline = {n[-5:]: {"launched_after_submit_s": round(e["first"] - submitted, 1),
                         "gone_after_study_s": round(e["last"] - ended, 1)} for n, e in gpu_nodes.items()}
    print(f"head start {fake_cluster['head_start_s']:.1f} s; job {ended - submitted:.1f} s; GPU nodes: {timeline}")


def test_a_stopped_job_resubmitted_with_resume_completes_the_study(fake_cluster: dict, small_toy_root: Path,
                                                                   cache_dir: Path, encoders: dict,
                                                                   tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    experiment = storage / "stopped"
    space = Path(first_points(tmp_path, 3)[1])  # no ASHA: the two later trials leave the job running to be stopped
    space.write_text(space.read_text() + "scheduler: none\n")
    args = study_args(small_toy_root, cache_dir, storage, "stopped", encoders, "--num-samples", "3",
                      "--space", str(space), "--epochs", "4", "--max-concurrent", "1", "--no-report")
    submit = ray_cli(fake_cluster, "job", "submit", "--submission-id", "stop-1", "--no-wait", "--", *args)
    assert submit.returncode == 0, submit.stderr[-3000:]
    deadline = time.monotonic() + 300
    while not any(any(r.get("epoch") == 4 for r in result_rows(p)) for p in experiment.glob("trial_*/result.json")):
        assert job_info(fake_cluster, "stop-1")["status"] in ("PENDING", "RUNNING"), ray_cli(
            fake_cluster, "job", "logs", "stop-1").stdout[-3000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.5)
    stopped = ray_cli(fake_cluster, "job", "stop", "stop-1")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert wait_for_job(fake_cluster, "stop-1", {"STOPPED", "FAILED", "SUCCEEDED"}, 120)["status"] == "STOPPED"
    finished = {p.parent.name for p in experiment.glob("trial_*/result.json")
                if any(r.get("epoch") == 4 for r in result_rows(p))}
    from study.layout import trial_checkpoints

    def checkpoint_times(folder: str) -> set[int]:
        return {Path(f).stat().st_mtime_ns for f, _ in trial_checkpoints(experiment, folder.removeprefix("trial_"))}

    before = {f: checkpoint_times(f) for f in finished}
    resumed = ray_cli(fake_cluster, "job", "submit", "--submission-id", "stop-1-resumed", "--", *args, "--resume",
                      timeout=420)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert job_info(fake_cluster, "stop-1-resumed")["status"] == "SUCCEEDED"
    summary = pd.read_csv(experiment / "summary.csv")
    assert len(summary) == 3 and summary["trial_id"].is_unique and (summary["status"] == "done").all(), summary
    for folder in finished:  # finished trials were not rerun
        assert checkpoint_times(folder) == before[folder]
    for result in experiment.glob("trial_*/result.json"):
        epochs = [r["epoch"] for r in result_rows(result)]
        assert len(epochs) == len(set(epochs)), f"{result}: an epoch was reported twice: {epochs}"
