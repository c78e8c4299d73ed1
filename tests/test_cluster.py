"""From one machine to a cluster: cluster.yaml, and a study run on two Ray nodes.

The cluster.yaml tests need no cloud account: the file is checked against the JSON schema
shipped in the installed ray wheel, through Ray's own ``prepare_config``/``validate_config`` (what
``ray up`` runs first), and for what this project promises about it (head schedules no
training, GPU workers scale from zero on spot, drivers stay on on-demand nodes, Ray pinned to
the installed version, S3 storage, no Ray port open to the internet, token auth on).

``test_study_spans_two_nodes`` starts a real two-node Ray cluster on this machine (two
``ray start --block`` processes, each in its own process group, own temp dir and ports, token
authentication on with a token of its own), runs a tiny study against it the way a cluster user
does (``RAY_ADDRESS`` set, ``python -m study.run``), checks that trials trained on both nodes, that
their drivers stayed on the head (which, like cluster.yaml's, offers the on-demand driver resource) and
that everything landed in the one storage folder, then stops exactly the processes it started.
It never runs ``ray stop`` and never touches ~/.ray/auth_token, so a Ray that another test or
user runs on this machine is left alone.
"""

from __future__ import annotations

import ast
import copy
import importlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import ray
import yaml
from conftest import first_points
from ray_nodes import (
    dashboard_get,
    free_port,
    kill_leftovers,
    stop_group,
    wait_for_log,
    wait_for_nodes,
)

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
RAY_BIN = Path(sys.executable).parent / "ray"
WORLD = ("0.0.0.0/0", "::/0")
RAY_PORTS = {"GCS": 6379, "dashboard": 8265, "Ray client": 10001, "object manager": 8076}
# The custom resource that marks on-demand nodes (cluster.yaml gives it to the head); the study's trial drivers
# request it when the cluster offers it (study.orchestrate.DRIVER_RESOURCE, where defined).
DRIVER_RESOURCE = getattr(importlib.import_module("study.orchestrate"), "DRIVER_RESOURCE", "on_demand")


# ------------------------------------------------------------------------------------------ cluster.yaml
@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _node_types(config: dict) -> tuple[dict, dict[str, dict]]:
    types = config["available_node_types"]
    head = config["head_node_type"]
    return types[head], {name: t for name, t in types.items() if name != head}


def _is_spot(node_type: dict) -> bool:
    return node_type["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"


def test_cluster_yaml_is_valid_for_the_installed_ray(config: dict) -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    # What `ray up` does before anything else: merge the provider's defaults, then validate again.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_head_runs_the_drivers_and_no_training(config: dict) -> None:
    head, _ = _node_types(config)
    resources = head["resources"]
    assert resources.get("CPU") == 0, "the head must offer no logical CPU: Train workers need >= 1"
    assert resources.get("GPU", 0) == 0
    assert not _is_spot(head), "the head (Tune driver, trial drivers, Train controllers) must be on-demand"
    assert resources.get(DRIVER_RESOURCE, 0) >= 1, f"the head must offer the {DRIVER_RESOURCE!r} driver resource"
    assert head.get("min_workers", 0) == 0 and head.get("max_workers", 0) == 0


def test_gpu_workers_autoscale_from_zero_on_spot_without_the_driver_resource(config: dict) -> None:
    _, workers = _node_types(config)
    gpu_types = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no GPU worker type"
    for name, node_type in workers.items():
        assert node_type.get("min_workers", 0) == 0, f"{name}: min_workers must be 0 (scale from zero)"
        assert node_type["max_workers"] >= 1, name
        if _is_spot(node_type):  # drivers on a reclaimed node would take their trials down with them
            assert DRIVER_RESOURCE not in node_type["resources"], f"{name} is spot but offers {DRIVER_RESOURCE!r}"
    assert any(_is_spot(t) for t in gpu_types.values()), "no spot GPU worker type"
    # A GPU node holds whole trials: 4 at --gpus-per-trial 0.25 with 1 CPU each.
    for name, node_type in gpu_types.items():
        assert node_type["resources"]["CPU"] >= 4 * node_type["resources"]["GPU"], name
    assert config["max_workers"] >= max(t["max_workers"] for t in gpu_types.values())


def test_ray_is_pinned_to_the_installed_version(config: dict) -> None:
    version = ray.__version__
    docker = config["docker"]
    images = [docker[key] for key in ("image", "head_image", "worker_image") if key in docker]
    for node_type in config["available_node_types"].values():
        images += [v for k, v in node_type.get("docker", {}).items() if k.endswith("image")]
    assert images, "no docker image"
    for image in images:
        repo, _, tag = image.rpartition(":")
        assert repo.startswith("rayproject/ray"), image
        assert tag == version or tag.startswith(f"{version}-"), f"{image}: tag must start with {version}"

    commands = [c for key, value in config.items() if key.endswith("_commands") for c in value]
    commands += [c for t in config["available_node_types"].values() for k, v in t.items() if k.endswith("_commands")
                 for c in v]
    pins = []
    for command in commands:
        if "pip install" not in command:
            continue
        for match in re.finditer(r"(?<![\w./-])ray(\[[\w,\s-]*\])?(?P<spec>[=<>~!]=?[^\s\"']*)?", command):
            pins.append((command, match.group("spec")))
    assert pins, "no pip install of ray in the setup commands"
    for command, spec in pins:
        assert spec == f"=={version}", f"{command!r}: ray must be pinned as =={version}, found {spec!r}"
    assert "nightly" not in CLUSTER_YAML.read_text()


def test_storage_is_shared_cloud_storage(config: dict) -> None:
    locations = config["metadata"]["segstudy"]
    assert locations["storage"].startswith("s3://"), "a local --storage fails on more than one node (Train V2)"
    assert locations["data"].startswith("s3://")
    bucket = locations["storage"].split("/")[2]
    setup = " ".join(config["setup_commands"])
    assert f"s3://{bucket}/" in setup, "setup_commands must fetch the data from the same bucket"


def _ray_default_inbound_rules(cluster_group: str) -> list[dict]:
    """The inbound rules Ray's AWS provider gives a security group it creates, taken from the
    installed ray's own source (the module itself needs boto3, which is not installed here)."""
    source_file = Path(ray.__file__).parent / "autoscaler" / "_private" / "aws" / "config.py"
    tree = ast.parse(source_file.read_text())
    wanted = {"_create_default_intracluster_inbound_rules", "_create_default_ssh_inbound_rules"}
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    assert {f.name for f in functions} == wanted, f"{source_file} no longer defines {sorted(wanted)}"
    namespace: dict = {}
    exec(compile(ast.Module(body=functions, type_ignores=[]), str(source_file), "exec"), namespace)  # noqa: S102
    return (namespace["_create_default_intracluster_inbound_rules"]([cluster_group])
            + namespace["_create_default_ssh_inbound_rules"]())


def _covers(rule: dict, port: int) -> bool:
    if rule.get("IpProtocol") == "-1":
        return True
    return rule.get("FromPort", -1) <= port <= rule.get("ToPort", -1)


def test_no_ray_port_is_open_to_the_internet(config: dict) -> None:
    provider = config["provider"]
    assert provider["type"] == "aws"
    extra = provider.get("security_group", {}).get("IpPermissions", [])
    rules = _ray_default_inbound_rules("sg-cluster") + extra
    for rule in rules:
        world = [r.get("CidrIp") or r.get("CidrIpv6") for r in rule.get("IpRanges", []) + rule.get("Ipv6Ranges", [])]
        world = [cidr for cidr in world if cidr in WORLD]
        if world:
            assert (rule.get("IpProtocol"), rule.get("FromPort"), rule.get("ToPort")) == ("tcp", 22, 22), \
                f"only SSH may be open to {world}: {rule}"
        if rule.get("IpRanges") or rule.get("Ipv6Ranges") or rule.get("PrefixListIds"):
            for name, port in RAY_PORTS.items():
                assert not _covers(rule, port), f"{name} port {port} reachable from outside the cluster: {rule}"
    assert any(rule.get("UserIdGroupPairs") for rule in rules), "nodes of the cluster must reach each other"
    # The dashboard itself listens on localhost only: reached through `ray dashboard cluster.yaml`.
    head_start = " ".join(config["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head_start)
    assert hosts and all(h in ("127.0.0.1", "localhost") for h in hosts), head_start


def test_token_authentication_stays_on(config: dict) -> None:
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"RAY_AUTH_MODE\s*=\s*['\"]?disabled", text)
    assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]", text), "the token must not be written into the config"
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]
              if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert re.search(r"RAY_AUTH_MODE=token\s+ray start", command), command
    mounts = {os.path.normpath(remote): local for remote, local in config["file_mounts"].items()}
    assert "~/.ray/auth_token" in mounts, "every node needs the cluster's token at ~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in config["setup_commands"]), \
        "CLI calls on the nodes (ray job, ray status) need RAY_AUTH_MODE=token too"


# ------------------------------------------------------------------------------------------ two nodes
@pytest.fixture
def two_nodes() -> Iterator[dict]:
    """A head and a second node started with `ray start --block`, 1 CPU each, token auth on; stopped after.
    Like cluster.yaml's head, the head offers the on-demand driver resource (2 units: both trials' drivers)."""
    token = secrets.token_hex(32)
    temp_root = Path(tempfile.mkdtemp(prefix="segray", dir="/tmp"))  # short: Ray's socket paths must fit
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    # RAY_AUTH_MODE=token explicitly: `ray start` alone turns it on only when ~/.ray/auth_token exists
    # (head) or never (a joining node). The token travels in the environment, not in ~/.ray.
    # No drain on SIGTERM: the nodes stop at once when the test is over. A dashboard start-up allowance
    # above Ray's 60 s default: on a busy 2-core CI machine the head otherwise gives up before it is up.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0", RAY_TRAIN_V2_ENABLED="1",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", RAY_DASHBOARD_STARTUP_TIMEOUT_S="180", PYTHONUNBUFFERED="1")
    gcs_port, dashboard_port = free_port(), free_port()
    address = f"127.0.0.1:{gcs_port}"
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
              "--object-store-memory=200000000", "--disable-usage-stats"]
    nodes = {
        "head": ["--head", f"--port={gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                 f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={free_port()}",
                 f"--resources={json.dumps({'node_a': 1, DRIVER_RESOURCE: 2})}",
                 f"--dashboard-agent-listen-port={free_port()}",
                 f"--temp-dir={temp_root / 'head'}"],
        "worker": [f"--address={address}", '--resources={"node_b": 1}', f"--dashboard-agent-listen-port={free_port()}",
                   "--include-log-monitor=false", f"--temp-dir={temp_root / 'worker'}"],
    }
    processes: dict[str, subprocess.Popen] = {}
    logs = {name: temp_root / f"{name}.log" for name in nodes}
    try:
        for name, args in nodes.items():
            with open(logs[name], "w") as log:
                processes[name] = subprocess.Popen([str(RAY_BIN), "start", *common, *args], env=env, stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True)
            if name == "head":  # the second node can only join once the head node is registered
                wait_for_log(logs[name], "Ray runtime started", processes, logs, timeout_s=240)
        node_ids = wait_for_nodes(dashboard_port, token, {"node_a", "node_b"}, processes, logs, timeout_s=150)
        yield {"address": address, "env": env, "token": token, "dashboard_port": dashboard_port,
               "head_id": node_ids["node_a"], "worker_id": node_ids["node_b"], "temp_root": temp_root}
    finally:
        # Second node first, then the head; only the process groups started here.
        for name in ("worker", "head"):
            if name in processes:
                stop_group(processes[name])
        marker = f"RAY_AUTH_TOKEN={token}".encode()
        leftover = kill_leftovers(marker)
        shutil.rmtree(temp_root, ignore_errors=True)
        assert not leftover, f"processes of the test cluster outlived its nodes: {leftover}"


def _result_rows(result_json: Path) -> list[dict]:
    return [json.loads(line) for line in result_json.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_study_spans_two_nodes(two_nodes: dict, small_toy_root: Path, cache_dir: Path, tmp_path: Path,
                               trial_runner: str) -> None:
    # Token auth is on: the dashboard (and so the Jobs API) refuses a request without the token.
    assert dashboard_get(two_nodes["dashboard_port"], "/api/version", None)[0] == 401
    assert dashboard_get(two_nodes["dashboard_port"], "/api/version", "0" * 64)[0] in (401, 403)  # wrong token
    status, version = dashboard_get(two_nodes["dashboard_port"], "/api/version", two_nodes["token"])
    assert status == 200 and version["ray_version"] == ray.__version__

    from segmodels import build_model, save_encoder  # given encoders skip the pretraining stage

    encoders = {m: save_encoder(build_model(m, 19), tmp_path / f"{m}.pt") for m in ("segformer", "fcn_resnet50")}
    storage = tmp_path / "storage"
    args = [sys.executable, "-m", "study.run", "--preset", "demo", "--data-root", str(small_toy_root),
            "--storage", str(storage), "--name", "two_nodes", "--num-samples", "2", *first_points(tmp_path, 2),
            "--epochs", "2", "--no-report",
            "--pretrained-segformer", str(encoders["segformer"]), "--pretrained-fcn", str(encoders["fcn_resnet50"]),
            "--cache-dir", str(cache_dir), "--trial-runner", trial_runner]
    # Both trials pending at once (Tune's default for a searcher is one at a time): each node has one CPU, so they
    # must start on different nodes, however fast the first one ends on a loaded machine.
    env = {**two_nodes["env"], "RAY_ADDRESS": two_nodes["address"], "SEGSTUDY_CACHE": str(cache_dir),
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TUNE_MAX_PENDING_TRIALS_PG": "2"}
    driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        output, _ = driver.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        output, _ = driver.communicate()
        pytest.fail(f"the study did not finish within 300 s:\n{output[-4000:]}")
    assert driver.returncode == 0, output[-4000:]

    experiment = storage / "two_nodes"
    summary = pd.read_csv(experiment / "summary.csv")
    assert len(summary) == 2 and (summary["status"] == "done").all(), summary
    trial_dirs = sorted(experiment.glob("trial_*"))
    assert {d.name.removeprefix("trial_") for d in trial_dirs} == set(summary["trial_id"].astype(str))

    nodes_by_trial = {}
    for trial_dir in trial_dirs:
        rows = _result_rows(trial_dir / "result.json")
        assert rows and rows[-1]["epoch"] == 2, trial_dir
        nodes_by_trial[trial_dir.name] = {row["node_id"] for row in rows}
    assert all(len(nodes) == 1 for nodes in nodes_by_trial.values()), nodes_by_trial  # one worker per trial
    used = set().union(*nodes_by_trial.values())
    assert used == {two_nodes["head_id"], two_nodes["worker_id"]}, \
        f"trials ran on {used}, not on both nodes started here ({two_nodes['head_id']}, {two_nodes['worker_id']})"

    # Every result in the one storage folder: Tune's trial folders, and each trial's checkpoints (written by
    # the node that trained it; in the trial's folder or, with the Train runner, under STORAGE/NAME/train/),
    # best checkpoints included.
    from study.layout import trial_checkpoints

    for row in summary.itertuples():
        kept = trial_checkpoints(experiment, str(row.trial_id))
        assert [metrics["epoch"] for _, metrics in kept] == [2], kept
        assert (Path(kept[0][0]) / "checkpoint.pt").is_file() and Path(kept[0][0]).is_relative_to(experiment)
        best = Path(row.best_checkpoint)
        assert best.is_file() and best.is_relative_to(experiment), best
    status, body = dashboard_get(two_nodes["dashboard_port"], "/api/v0/actors?detail=1&limit=10000",
                                  two_nodes["token"])
    assert status == 200, body
    actors = body["data"]["result"]["result"]
    trial_actors = [a["node_id"] for a in actors if a["class_name"].endswith("ImplicitFunc")]
    if trial_runner == "train":
        # Drivers on the on-demand node: each trial driver (Tune's ImplicitFunc actor) and the Train controller
        # Ray pins next to it ran on the head, while the training itself ran on both nodes.
        for class_name in ("ImplicitFunc", "TrainController"):
            nodes = [a["node_id"] for a in actors if a["class_name"].endswith(class_name)]
            assert len(nodes) >= 2 and set(nodes) == {two_nodes["head_id"]}, (class_name, nodes)
        workers = {a["node_id"] for a in actors if a["class_name"].endswith("RayTrainWorker")}
        assert workers == used, workers
    else:  # the Tune runner: the trial actor is the worker; no Train controller, no worker group
        assert set(trial_actors) == used, trial_actors
        assert not [a for a in actors if a["class_name"].endswith(("TrainController", "RayTrainWorker"))]
    for temp_dir in (two_nodes["temp_root"] / "head", two_nodes["temp_root"] / "worker"):
        assert not list(temp_dir.rglob("checkpoint.pt")), f"a checkpoint was left on a node's disk: {temp_dir}"
