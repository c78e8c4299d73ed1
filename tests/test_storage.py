"""Object storage (``--storage s3://...``) end to end, against a local S3 server (moto), and cluster sizing.

The S3 server speaks the real protocol over HTTP; pyarrow (the filesystem layer Ray Train and Tune
use) reaches it through ``?endpoint_override=...&scheme=http`` in the URI, on the driver and in every
Ray worker alike.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
from conftest import first_points

from study.cli import main_guard

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- pure helpers
def test_join_keeps_the_query_string_at_the_end() -> None:
    from foundation.storage import display, join

    uri = "s3://bucket/results?endpoint_override=http://127.0.0.1:9000&scheme=http"
    assert join(uri, "demo", "train/") == "s3://bucket/results/demo/train?endpoint_override=http://127.0.0.1:9000&scheme=http"
    assert join("/tmp/st/", "demo") == "/tmp/st/demo"
    assert display(join(uri, "demo")) == "s3://bucket/results/demo"


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path: Path) -> None:
    """Results on a shared filesystem must be readable by the team, not 0600 like a temporary file."""
    from foundation.files import atomic_write

    (tmp_path / "plain.txt").write_text("x")
    atomic_write(tmp_path / "atomic.txt", lambda f: f.write(b"x"))
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


def test_cluster_yaml_capacity_sizes_trials_before_any_gpu_node_exists() -> None:
    from study.orchestrate import autoscaler_capacity, plan_resources
    from study.settings import StudySettings

    capacity = autoscaler_capacity(REPO / "cluster.yaml")  # the same file ray up leaves on the head
    assert capacity == {"CPU": 32, "GPU": 8, "on_demand": 32}  # head (CPU 0, on_demand 32) + 8 x g6.xlarge
    head_only = {"CPU": 0.0, "on_demand": 32.0}  # just after `ray up`: no worker yet

    default = plan_resources(StudySettings(), head_only, capacity)  # one-worker trials: a quarter of a GPU each
    assert default.gpus_per_trial == 0.25 and default.max_concurrent == 32  # (docs/performance.md: measured)
    ddp = plan_resources(StudySettings(workers_per_trial=2), head_only, capacity)  # one whole GPU per DDP worker
    assert ddp.gpus_per_trial == 2.0 and ddp.max_concurrent == 4
    shared = plan_resources(StudySettings(gpus_per_trial=0.25), head_only, capacity)
    assert shared.max_concurrent == 32  # 4 per g6.xlarge (4 CPUs, 1 GPU), 8 nodes

    from foundation.errors import ConfigError

    with pytest.raises(ConfigError, match="--gpus-per-trial: 9 is more than the cluster has \\(8 GPUs\\)"):
        plan_resources(StudySettings(gpus_per_trial=9), head_only, capacity)
    laptop = plan_resources(StudySettings(), {"CPU": 2.0}, autoscaler_capacity(REPO / "no-such-config.yaml"))
    assert laptop.gpus_per_trial == 0.0 and laptop.max_concurrent == 2
    grown = plan_resources(StudySettings(gpus_per_trial=0.25), {"CPU": 32.0, "GPU": 8.0, "on_demand": 32.0}, capacity)
    assert grown.max_concurrent == 32  # all 8 GPU nodes up: still 32 trials at once, not 64


# ---------------------------------------------------------------- a local S3 server
@pytest.fixture(scope="module")
def s3_storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bucket on a moto S3 server in its own process; the study's storage URI inside it."""
    pytest.importorskip("moto", reason="moto[server] (a dev dependency) provides the local S3 server")
    import pyarrow.fs

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the moto S3 server did not start"
                time.sleep(0.2)
        query = f"endpoint_override=http://127.0.0.1:{port}&scheme=http&region=us-east-1"
        fs, _ = pyarrow.fs.FileSystem.from_uri(f"s3://segstudy-test?{query}&allow_bucket_creation=true")
        fs.create_dir("segstudy-test")
        yield f"s3://segstudy-test/results?{query}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()
        log.close()


def test_object_storage_helpers_round_trip(s3_storage: str, tmp_path: Path) -> None:
    from foundation import storage

    folder = storage.join(s3_storage, "helpers")
    (tmp_path / "up" / "sub").mkdir(parents=True)
    (tmp_path / "up" / "a.txt").write_text("a")
    (tmp_path / "up" / "sub" / "b.bin").write_bytes(b"\x00\x01")
    storage.upload(tmp_path / "up", folder)
    assert storage.list_files(folder) == ["a.txt", "sub/b.bin"] and storage.list_folders(folder) == ["sub"]
    assert storage.read_bytes(storage.join(folder, "sub/b.bin")) == b"\x00\x01"  # exact bytes, no chunk framing
    storage.download(folder, tmp_path / "down", skip=lambda rel: rel.endswith(".bin"))
    assert sorted(p.name for p in (tmp_path / "down").rglob("*") if p.is_file()) == ["a.txt"]
    assert storage.is_file(storage.join(folder, "a.txt")) and not storage.exists(storage.join(folder, "nothing"))


@pytest.mark.slow
def test_a_study_on_object_storage_hands_over_its_encoder_and_writes_everything_there(
        s3_storage: str, ray_cluster: str, toy_root: Path, cache_dir: Path, tmp_path: Path, capsys) -> None:
    """Pretraining stage -> encoder on S3 -> fine-tune trial downloads it; study.json, summary.csv, the
    report and every checkpoint land in the bucket; nothing needs a shared local folder."""
    from foundation import storage
    from segmodels import build_model, save_encoder
    from study import run

    fcn_encoder = save_encoder(build_model("fcn_resnet50", 19), tmp_path / "fcn.pt")  # only SegFormer pretrains here
    args = ["--preset", "demo", "--data-root", str(toy_root), "--storage", s3_storage, "--name", "remote",
            "--num-samples", "2", *first_points(tmp_path, 2), "--epochs", "2", "--cache-dir", str(cache_dir),
            "--pretrained-fcn", str(fcn_encoder)]
    assert run.main(args) == 0  # the CLI, which writes the report after the study
    experiment = storage.join(s3_storage, "remote")
    files = storage.list_files(experiment)

    for expected in ("study.json", "summary.csv", "pretrained/segformer_encoder.pt", "report/report.md",
                     "report/trials.csv"):
        assert expected in files, f"{expected} not in the bucket: {files}"
    assert any(f.startswith("train/pretrain-cityscapes-segformer/checkpoint_") for f in files)
    stored = pd.read_csv(StringIO(storage.read_bytes(storage.join(experiment, "summary.csv")).decode()))
    assert len(stored) == 2 and (stored["status"] == "done").all()
    assert sorted(stored["init"]) == ["finetune", "scratch"] and set(stored["model"]) == {"segformer"}
    # the Tune runner (default for one-worker trials) keeps each trial's checkpoints in its trial folder
    assert stored["best_checkpoint"].str.startswith("s3://segstudy-test/results/remote/trial_").all()
    assert all(storage.is_file(uri) for uri in stored["best_checkpoint"])
    assert list(stored["best_val_miou"]) == sorted(stored["best_val_miou"], reverse=True)  # ranked
    assert json.loads(storage.read_bytes(storage.join(experiment, "study.json")))["storage"] == s3_storage

    # the fine-tune trial trained from the encoder the Cityscapes stage uploaded
    encoder_uri = storage.join(experiment, "pretrained", "segformer_encoder.pt")
    finetune = stored.loc[stored["init"] == "finetune", "best_checkpoint"].iloc[0]
    import torch

    checkpoint = torch.load(storage.download(finetune, tmp_path / "ft.pt"), map_location="cpu", weights_only=True)
    assert checkpoint["config"]["pretrained"] == encoder_uri
    assert list((cache_dir / "remote").rglob("segformer_encoder.pt")), "the trial did not download the encoder"
    assert "report/test/segformer_finetune/metrics.json" in files

    # an existing remote experiment is refused, and left as it was
    before = storage.list_files(experiment)
    capsys.readouterr()
    assert main_guard("study.run", run.main, args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "endpoint_override" not in err and len(err.strip().splitlines()) == 1
    assert storage.list_files(experiment) == before


def test_report_from_object_storage_needs_an_out_folder_and_a_study(s3_storage: str, capsys) -> None:
    from analysis import report
    from foundation import storage

    assert main_guard("analysis.report", report.main, ["--experiment", storage.join(s3_storage, "none")]) == 2
    assert "nothing stored there" in capsys.readouterr().err
    storage.write_bytes(storage.join(s3_storage, "some", "study.json"), b"{}")
    assert main_guard("analysis.report", report.main, ["--experiment", storage.join(s3_storage, "some")]) == 2
    assert "--out: required" in capsys.readouterr().err
