"""Helpers for tests that start Ray nodes of their own: free ports, process groups, the dashboard's HTTP API.

Nothing here runs ``ray stop`` or touches ~/.ray: a test stops exactly the processes it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(process: subprocess.Popen, grace_s: float = 40) -> None:
    """SIGTERM the process group `process` leads (`ray start --block` then stops its node's processes),
    SIGKILL the group if the leader lingers. Signals go to the group only while its leader is alive
    (unreaped), so the group id cannot belong to anybody else; stragglers are found by the caller."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass


def processes_with_env(marker: bytes) -> list[int]:
    """Pids of live processes whose environment holds `marker` (this cluster's token). Ray's workers retitle
    themselves (ray::IDLE) and sit in process groups of their own, but they all inherit the environment of
    the `ray start` that launched their node."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
    return pids


def kill_leftovers(marker: bytes, wait_s: float = 30) -> list[int]:
    """After a test cluster's nodes were stopped: wait for the processes whose environment holds ``marker``
    (that cluster's own token: nobody else's processes have it) to exit, SIGKILL those that do not, and
    return them (a test asserts there were none)."""
    deadline = time.monotonic() + wait_s
    while (leftover := processes_with_env(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in leftover:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftover


def dashboard_get(port: int, path: str, token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def node_logs(logs: dict[str, Path], chars: int = 1500) -> str:
    """The tail of each `ray start` output and of the Ray logs that say why a node did not come up."""
    parts = []
    for name, log in logs.items():
        files = [log, *sorted((log.parent / name).glob("session_latest/logs/*"))]
        for path in files:
            if path.is_file() and path.suffix in (".log", ".err", ".out") and path.stat().st_size and (
                    path == log or path.stem in ("gcs_server", "raylet", "dashboard", "dashboard_agent")):
                parts.append(f"--- {name}: {path.name}\n{path.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts)


def check_running(processes: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
    for name, process in processes.items():
        if process.poll() is not None:
            pytest.fail(f"ray start ({name}) exited with {process.returncode}:\n{node_logs(logs)}")


def wait_for_log(log: Path, text: str, processes: dict, logs: dict, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        check_running(processes, logs)
        time.sleep(0.3)
    pytest.fail(f"{log.name}: no {text!r} after {timeout_s:.0f} s:\n{node_logs(logs)}")


def wait_for_nodes(dashboard_port: int, token: str, markers: set[str], processes: dict, logs: dict,
                    timeout_s: float) -> dict[str, str]:
    """Node id per custom marker resource, once every marker is on an alive node (Ray's State API, which is
    what ray.nodes() reads too, over HTTP with the token: no Ray client in this process)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        check_running(processes, logs)
        try:
            status, body = dashboard_get(dashboard_port, "/api/v0/nodes?detail=1&limit=100", token)
        except (urllib.error.URLError, OSError, ValueError) as exc:  # dashboard not up yet
            last = repr(exc)
        else:
            last = f"HTTP {status}: {json.dumps(body)[:1000]}"
            rows = body.get("data", {}).get("result", {}).get("result", []) if status == 200 else []
            found = {m: row["node_id"] for row in rows if row.get("state") == "ALIVE"
                     for m in markers if m in (row.get("resources_total") or {})}
            if set(found) == markers:
                return found
        time.sleep(0.5)
    pytest.fail(f"nodes {sorted(markers)} not up within {timeout_s:.0f} s; last answer: {last}\n{node_logs(logs)}")
