"""Shared fixtures: toy data in the real layouts, a per-session cache, the genuine samples in ../shared/data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail fast instead of retrying the hub (no internet in CI)
os.environ.setdefault("WANDB_MODE", "offline")
# For the local S3 server (tests/test_storage.py), set before any Ray process starts so workers inherit it:
# moto stores aws-chunked request bodies verbatim, so ask the AWS SDK to checksum only when required.
os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # no credential lookups on a cloud metadata service
for _name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # moto's convention: fake keys, so requests are signed
    os.environ.setdefault(_name, "testing")

REPO = Path(__file__).resolve().parents[1]
FAKE_WANDB_KEY = "segstudyfakekey" + "0123456789abcdef" * 2
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from study.data.toy import write_toy

    return write_toy(tmp_path_factory.mktemp("toy"), seed=0)


@pytest.fixture(scope="session")
def small_toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy data at a third of its size, for the demo study fixture and the tests of how a study stops,
    resumes and spreads over nodes: what they check does not depend on how much a trial learns, and each trial
    trains three times faster."""
    from study.data.toy import write_toy

    return write_toy(tmp_path_factory.mktemp("small_toy"), seed=0, pets=(27, 8), cityscapes=(8, 4))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["SEGSTUDY_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "oxford-iiit-pet").is_dir():
        pytest.skip(f"genuine dataset samples not found at {SHARED_DATA} (only present in the project's workspace)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_cityscapes_with_val(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The genuine Cityscapes sample has only 'train'; link it as 'val' too in a temporary root."""
    if not (shared_data / "cityscapes").is_dir():
        pytest.skip(f"genuine Cityscapes sample not found at {shared_data / 'cityscapes'}")
    root = tmp_path_factory.mktemp("cityscapes_root")
    city = root / "cityscapes"
    for kind in ("leftImg8bit", "gtFine"):
        for split in ("train", "val"):
            (city / kind / split).mkdir(parents=True)
            (city / kind / split / "aachen").symlink_to(shared_data / "cityscapes" / kind / "train" / "aachen")
    return root


@pytest.fixture
def toy_copy(toy_root: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the toy data for tests that break files."""
    dest = tmp_path / "data"
    shutil.copytree(toy_root, dest)
    return dest


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    import ray

    from study.orchestrate import start_ray

    start_ray(num_cpus=2)  # the study's own way of starting a local Ray
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(params=["tune", "train"])
def trial_runner(request: pytest.FixtureRequest) -> str:
    """Both trial runners, for the tests that are about how a trial runs (``--trial-runner``)."""
    return request.param


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory: pytest.TempPathFactory, small_toy_root: Path) -> Path:
    """A user's working folder for the demo, not the repository: ``data/toy`` is the third-size toy data (what the
    tests read from the demo does not depend on how much a trial learns; the full toy set is 80 s slower here),
    and the study writes to ``results/``, the default storage."""
    folder = tmp_path_factory.mktemp("demo-folder")
    (folder / "data").mkdir()
    (folder / "data" / "toy").symlink_to(small_toy_root)
    return folder


@pytest.fixture(scope="session")
def demo_study(ray_cluster: str, demo_folder: Path, cache_dir: Path) -> Path:
    """The demo preset run as a user runs it: ``python -m study.run --preset demo`` from a working folder that is
    not the repository, with the shipped defaults (its data root ``data/toy``, no ``--storage``), the default
    console, on the session's Ray. Its console output is kept in ``console.txt`` beside the experiment.
    W&B is tested in test_secrets.py: its per-trial logging actors would double this study's time on 2 CPUs."""
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "WANDB_MODE": "offline",
           "WANDB_API_KEY": FAKE_WANDB_KEY}  # planted: no file the study writes may contain it
    args = [sys.executable, "-m", "study.run", "--preset", "demo", "--name", "demo", "--no-report"]
    done = subprocess.run(args, cwd=demo_folder, env=env, capture_output=True, text=True, timeout=900)
    (demo_folder / "results" / "console.txt").parent.mkdir(exist_ok=True)
    (demo_folder / "results" / "console.txt").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return demo_folder / "results" / "demo"


@pytest.fixture(scope="session")
def demo_report(demo_study: Path, demo_folder: Path) -> Path:
    """The README's report command, as printed (its ``test=in-demo-folder`` block), run in the demo's folder."""
    from doc_commands import blocks
    from test_docs_commands import run_block

    (block,) = [b for b in blocks() if b.marker == "in-demo-folder"]
    run_block(block, demo_folder)
    return demo_study / "report"


def first_points(folder: Path, count: int) -> list[str]:
    """``--space FILE`` options that cut the demo preset to its first ``count`` warm-start points: a search may not
    run fewer trials than its points, so a short test study names the points it runs."""
    import yaml

    from study.space import load_preset

    path = folder / f"demo-first-{count}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"points": load_preset("demo")["points"][:count]}))
    return ["--space", str(path)]
