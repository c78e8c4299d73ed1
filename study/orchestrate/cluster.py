"""Start or join Ray, size the study against the cluster (or what the autoscaler may grow it to), and
keep Ray's own output off the console."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import torch
import yaml

from foundation import storage
from foundation.errors import ConfigError
from study.layout import LOGS
from study.settings import ResourcePlan, StudySettings

log = logging.getLogger(__name__)

# A custom resource that only on-demand nodes offer (cluster.yaml gives it to the head). When the cluster
# has it, trial drivers (and so their Train controllers) ask for one unit and stay off spot nodes.
DRIVER_RESOURCE = "on_demand"
# ``ray up`` leaves the cluster's config on the head node here; it says how far the autoscaler may grow the cluster.
AUTOSCALER_CONFIG = Path.home() / "ray_bootstrap_config.yaml"
# Tune reuses a trial actor only once the previous trial's thread has exited, and waits
# TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s) for it; on a busy 2-core machine freeing a stopped FCN trial took
# longer, and Tune then errored the next trial ("reuse requires reset_config() ... return True").
REUSE = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "60"}
# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s). A shorter poll is
# not set here: at 0.2 s, the controller of an ASHA-stopped trial saw its worker die during its own shutdown,
# retried, and created a placement group after its cleaner had gone; it leaked (2 of 21 stops) and the next
# trial waited forever. benchmarks/study_overhead measures that variant (docs/performance.md).
# Without --verbose: Tune's legacy reporter at verbosity 0 prints nothing (the new engine still prints its
# boxes), and the snapshot-frequency hint (forced by our checkpoint retention) stays in the logs.
QUIET_TUNE = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
QUIET_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "optuna", "filelock", "urllib3", "transformers")


def ray_env(settings: StudySettings, address: str, joined: bool) -> dict[str, str]:
    """Environment of every Ray process of the study (set unless the user set it already)."""
    env = {"RAY_ADDRESS": address, "RAY_TRAIN_V2_ENABLED": "1", **REUSE}
    config = settings.autoscaler_config or (autoscaler_config_path(gcs_address=address) if joined else None)
    if not may_preempt(config):  # the preemption watcher only where workers can be preempted (spot nodes)
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    return {k: os.environ.get(k, v) for k, v in env.items()}


def start_ray(settings: StudySettings | None = None, num_cpus: int | None = None) -> str:
    """Join the cluster at RAY_ADDRESS (or the Ray this process already runs), else start a local one.
    Returns ``"joined"`` or ``"started"`` (then ``ray.shutdown`` is ours to call), or ``""`` when this
    process was already connected.

    Every Ray process of the study gets RAY_ADDRESS in its environment: Ray Train's placement-group
    cleaner looks the cluster up through the State API, and with no address and a second Ray instance
    on the same machine it fails, leaving the placement groups of stopped trials reserved (the next
    trials then wait forever). Worker output stays in Ray's log files unless ``--verbose``.
    """
    settings = settings or StudySettings()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return ""
    quiet = not settings.verbose
    if quiet:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.update(QUIET_TUNE)
    options = {"log_to_driver": not quiet, "logging_level": logging.ERROR if quiet else logging.INFO}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        env = ray_env(settings, address, joined=True)
        os.environ.update(env)
        with _keeping_sigterm_handler():
            _remember(ray.init(address=address, runtime_env={"env_vars": env}, **options))
        return "joined"
    with socket.socket() as probe:  # a free port for the GCS, so the address is known before Ray starts
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    address = f"{ray.util.get_node_ip_address()}:{port}"
    env = ray_env(settings, address, joined=False)
    os.environ.update({k: v for k, v in env.items() if k != "RAY_ADDRESS"})
    try:  # the dashboard stays on: the placement-group cleaner needs the State API
        with _keeping_sigterm_handler():
            _remember(ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                               runtime_env={"env_vars": env}, **options))
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]
    if ray.get_runtime_context().gcs_address != address:
        log.warning("Ray started at %s, not %s: trials stopped early may not release their resources",
                    ray.get_runtime_context().gcs_address, address)
    return "started"


_dashboard: dict[str, str] = {}


def _remember(context: Any) -> None:
    _dashboard["url"] = getattr(context, "dashboard_url", "") or ""


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """``ray.init`` replaces the driver's SIGTERM handler with ``sys.exit``; a handler the caller installed
    (``study.cli.sigterm_as_sigint``: Tune's graceful stop) is put back."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def dashboard_url() -> str:
    url = _dashboard.get("url", "")
    return f"http://{url}" if url and not url.startswith("http") else url


def running_autoscaler_config(gcs_address: str | None = None) -> Path | None:
    """The config file Ray's autoscaler on this node was started with (``ray start --autoscaling-config``).

    Its monitor process carries ``--autoscaling-config=PATH`` and ``--gcs-address=HOST:PORT`` on its
    command line; only a monitor of this cluster (same GCS address) counts. A study submitted as a
    Ray Job runs on the head, where the monitor runs.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(arg.endswith("autoscaler/_private/monitor.py") for arg in argv):
            continue
        options = dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)
        path = options.get("autoscaling-config")
        if path and (gcs_address is None or options.get("gcs-address") == gcs_address) and Path(path).is_file():
            return Path(path)
    return None


def autoscaler_config_path(settings: StudySettings | None = None, gcs_address: str | None = None) -> Path | None:
    """The launcher config that says how far the autoscaler may grow this cluster: ``--autoscaler-config``,
    else the one the running autoscaler was started with, else the one ``ray up`` leaves on the head."""
    if settings is not None and settings.autoscaler_config:
        return Path(settings.autoscaler_config)
    if gcs_address is None and ray.is_initialized():
        gcs_address = ray.get_runtime_context().gcs_address
    found = running_autoscaler_config(gcs_address) if gcs_address else None
    if found is not None:
        return found
    return AUTOSCALER_CONFIG if AUTOSCALER_CONFIG.is_file() else None


def _launcher_config(config_path: str | Path | None) -> dict[str, Any]:
    path = Path(config_path) if config_path else None
    return (yaml.safe_load(path.read_text()) or {}) if path and path.is_file() else {}


def autoscaler_capacity(config_path: str | Path | None = None) -> dict[str, float]:
    """Resources of the largest cluster the autoscaler may grow to: the head's plus each worker type's
    ``resources`` x its ``max_workers`` (within the cluster's ``max_workers``). Empty without a launcher
    config (a laptop, a fixed cluster)."""
    config = _launcher_config(config_path)
    nodes_left = int(config.get("max_workers", 1 << 30))
    capacity: dict[str, float] = {}
    for name, node_type in (config.get("available_node_types") or {}).items():
        if name == config.get("head_node_type"):
            count = 1
        else:
            count = min(int(node_type.get("max_workers", 0)), nodes_left)
            nodes_left -= count
        for resource, amount in (node_type.get("resources") or {}).items():
            capacity[resource] = capacity.get(resource, 0) + float(amount) * count
    return capacity


def gpus_per_node(config_path: str | Path | None = None) -> int:
    """The most GPUs any one node has now, or may have once the autoscaler adds it."""
    nodes = ray.nodes() if ray.is_initialized() else []
    present = [n.get("Resources", {}).get("GPU", 0) for n in nodes if n.get("Alive")]
    declared = [t.get("resources", {}).get("GPU", 0)
                for t in (_launcher_config(config_path).get("available_node_types") or {}).values()]
    return int(max([0, *present, *declared]))


def may_preempt(config_path: str | Path | None = None) -> bool:
    """True when the launcher config has spot (preemptible) node types: only then is the watcher useful."""
    for node_type in (_launcher_config(config_path).get("available_node_types") or {}).values():
        text = str(node_type.get("node_config", {})).lower()
        if "spot" in text or "preemptible" in text:
            return True
    return False


def check_cluster_resources(settings: StudySettings, announce: Any = log.info) -> ResourcePlan:
    """The study's resource plan: --gpus-per-trial defaulted and bounded by what the cluster has, or may grow to
    under the autoscaler."""
    config = autoscaler_config_path(settings)
    present, capacity = ray.cluster_resources(), autoscaler_capacity(config) if config else {}
    if capacity.get("GPU", 0) > present.get("GPU", 0):
        announce(f"cluster: {present.get('GPU', 0):g} GPUs now; the autoscaler may grow it to "
                 f"{capacity['GPU']:g} GPUs as trials ask for them ({config})")
    return plan_resources(settings, present, capacity, config)


# One-worker trials share a GPU four at a time by default: docs/performance.md has the measurements.
SINGLE_WORKER_GPU_SHARE = 0.25


def plan_resources(settings: StudySettings, present: dict[str, float], capacity: dict[str, float],
                   config: str | None = None) -> ResourcePlan:
    """GPUs per trial and trials at once for ``settings`` on a cluster of ``present`` resources that may grow to
    ``capacity``; refuse what the cluster can never give."""
    gpus = max(present.get("GPU", 0), capacity.get("GPU", 0))
    cpus = max(present.get("CPU", 0), capacity.get("CPU", 0))
    per_trial, per_model = settings.gpus_per_trial, {}
    if per_trial is None:
        # One-worker trials share a GPU; a DDP trial takes one whole GPU per worker.
        per_trial = SINGLE_WORKER_GPU_SHARE if settings.workers_per_trial == 1 else float(settings.workers_per_trial)
        per_trial = per_trial if gpus else 0.0
        if gpus and settings.workers_per_trial == 1 and torch.cuda.is_available():  # sized per model instead
            per_model = settings.gpu_shares(torch.cuda.get_device_properties(0).total_memory)
            per_trial = min(per_model.values(), default=per_trial)
            log.info("GPU share per trial, from each model's estimated peak memory: %s", per_model)
    if per_trial > gpus:
        raise ConfigError(f"--gpus-per-trial: {per_trial:g} is more than the cluster has ({gpus:g} GPUs)")
    if settings.cpus_per_trial > cpus:
        raise ConfigError(f"--cpus-per-trial: {settings.cpus_per_trial:g} is more than the cluster has ({cpus:g} CPUs)")
    concurrent = settings.max_concurrent
    if not concurrent:
        # Trial drivers ask for no CPU, so Tune alone would start every trial at once and leave most of them
        # waiting (each a Python process with torch loaded). Run only as many as the cluster can train.
        fits = [cpus // settings.cpus_per_trial, *([gpus // per_trial] if per_trial else [])]
        concurrent = max(1, int(min(fits)))
        log.info("running up to %d trials at once (set --max-concurrent to change)", concurrent)
    pretrain_workers = settings.pretrain_workers or (max(1, gpus_per_node(config)) if per_trial else 1)
    return ResourcePlan(cpus_per_trial=settings.cpus_per_trial, gpus_per_trial=per_trial,
                        workers_per_trial=settings.workers_per_trial, max_concurrent=concurrent,
                        pretrain_workers=pretrain_workers, gpus_per_model=per_model)


def driver_request() -> dict[str, Any]:
    """What a Train-runner trial's driver asks Tune for, beside its workers' resources: no CPU (the
    workers hold the trial's CPUs/GPUs), a token of memory (Tune needs a non-empty request) and, on a
    cluster that offers it, one unit of DRIVER_RESOURCE to stay off spot nodes."""
    request: dict[str, Any] = {"cpu": 0, "memory": 64 * 1024**2}
    if ray.cluster_resources().get(DRIVER_RESOURCE, 0) >= 1:
        request[DRIVER_RESOURCE] = 1
    return request


def copy_worker_logs(experiment_dir: str, native_stderr_log: str | None = None) -> str | None:
    """Copy this node's Ray worker output (``worker-*.out/.err``: trial prints, tracebacks), and the
    driver's native stderr when the CLI diverted it, into ``STORAGE/NAME/logs``, so a study's logs travel
    with its results."""
    node = getattr(ray._private.worker, "_global_node", None)
    files = sorted((Path(node.get_session_dir_path()) / "logs").glob("worker-*")) if node is not None else []
    target = storage.join(experiment_dir, LOGS)
    try:
        if native_stderr_log and Path(native_stderr_log).is_file() and Path(native_stderr_log).stat().st_size:
            storage.upload(native_stderr_log, storage.join(target, "driver-native.err"))
        for path in files:
            if path.is_file() and path.stat().st_size:
                storage.upload(path, storage.join(target, path.name))
    except OSError as exc:  # the logs are a convenience: never let them hide the study's own outcome
        log.warning("could not copy Ray's worker logs to %s: %s", storage.display(target), exc)
        return None
    return target
