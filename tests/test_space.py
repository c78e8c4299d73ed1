"""The one grammar of a search space (study.space): the presets as YAML, a --space file, --print-space.

No Ray: every check here runs before Ray starts, and --print-space must never start it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from study import run
from study import space as spec
from study.cli import main_guard
from study.settings import ResourcePlan
from study.space import PRESETS, load_preset
from study.trial import trial_config

REPO = Path(__file__).resolve().parents[1]
LR, GAMMA = 1e-3, 0.98
REPORT_POINTS = [{"model": m, "init": i, "lr": lr, "gamma": GAMMA} for m, i, lr in [
    ("fcn_resnet50", "scratch", LR), ("fcn_resnet50", "finetune", LR), ("fcn_resnet50", "freeze", LR),
    ("segformer", "scratch", LR), ("segformer", "finetune", LR), ("segformer", "finetune", LR / 2),
    ("segformer", "freeze", LR)]]

GOOD = """
space:
  model: {choice: [segformer, fcn_resnet50, "tv:lraspp_mobilenet_v3_large"]}
  init: {choice: [scratch, finetune]}
  lr: {loguniform: [1e-4, 3.0e-3]}      # 1e-4: a number, as YAML 1.2 reads it
  gamma: {uniform: [0.9, 0.999]}
  batch_size: {randint: [16, 32]}
  image_size: {grid: [64, [64, 128]]}
  weight_decay: 0.0
  class_weights: {choice: [none, inverse_frequency]}
points: [{model: segformer, init: scratch, lr: 1.0e-3, gamma: 0.98, batch_size: 32}]
num_samples: 12
epochs: 9
scheduler: {asha: {grace_period: 3, reduction_factor: 3}}
"""


def run_cli(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setitem(sys.modules, "study.orchestrate", None)  # importing the Ray layer would fail the test
    code = main_guard("study.run", run.main, args)
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_report_preset_is_unchanged() -> None:
    assert load_preset("report") == {
        "dataset": "pets", "epochs": 30, "batch_size": 64, "image_size": (64, 64), "val_every": 2, "scheduler": "fifo",
        "searcher": "grid", "space": {}, "points": REPORT_POINTS,
        "pretrain": {"models": ["segformer"], "dataset": "cityscapes", "image_size": "64x128", "epochs": 30,
                     "batch_size": 64, "lr": LR, "gamma": GAMMA}}


def test_search_and_demo_presets_share_the_report_and_search_data() -> None:
    search, demo = load_preset("search"), load_preset("demo")
    assert search["points"] == REPORT_POINTS  # TPE is warm-started with the report's seven
    assert search["space"] == demo["space"] == {
        "model": ("choice", ["fcn_resnet50", "segformer"]), "init": ("choice", ["scratch", "finetune", "freeze"]),
        "lr": ("loguniform", 1e-4, 3e-3), "gamma": ("uniform", 0.90, 0.999)}
    assert (search["scheduler"], search["grace_period"], search["num_samples"]) == ("asha", 4, 24)
    assert (demo["scheduler"], demo["grace_period"], demo["num_samples"], demo["toy"]) == ("asha", 2, 8, True)
    assert {(p["model"], p["init"]) for p in demo["points"]} == {(p["model"], p["init"]) for p in REPORT_POINTS}


@pytest.mark.parametrize("preset", PRESETS)
def test_print_space_reads_back_as_the_preset(preset: str, capsys, monkeypatch) -> None:
    code, out, _ = run_cli(["--preset", preset, "--print-space"], capsys, monkeypatch)
    assert code == 0
    printed = spec.resolve(spec.parse(spec.loads(out, "printed"), "printed"), "printed")
    expected = load_preset(preset)
    assert {k: printed[k] for k in expected if k != "data_root"} == {k: v for k, v in expected.items()
                                                                     if k != "data_root"}  # printed: resolved
    trials = len(expected["points"]) if expected["searcher"] == "grid" else expected["num_samples"]
    assert out.strip().splitlines()[-1] == f"# trials: {trials}"


def test_space_file_over_preset_under_options(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, "mine.yaml")
    settings = run.settings_from_args(["--preset", "demo", "--space", str(path), "--epochs", "5"])
    demo = load_preset("demo")
    assert settings.epochs == 5 and settings.num_samples == 12  # option > file
    assert settings.batch_size == demo["batch_size"] and settings.toy  # file > preset
    alone = run.settings_from_args(["--space", str(path)])  # without --preset: the search recipe, no toy data
    assert alone.preset == "search" and not alone.toy and alone.batch_size == load_preset("search")["batch_size"]
    assert settings.name == "mine" and (settings.grace_period, settings.reduction_factor) == (3, 3)
    assert settings.space["batch_size"] == ("randint", 16, 32) and settings.space["lr"] == ("loguniform", 1e-4, 3e-3)
    assert settings.space["image_size"] == ("grid", ["64x64", "64x128"])
    assert settings.space["weight_decay"] == ("choice", [0.0])
    assert settings.points == [{"model": "segformer", "init": "scratch", "lr": 1e-3, "gamma": 0.98, "batch_size": 32}]


def test_grid_searcher_runs_the_cross_product_of_its_axes(tmp_path: Path, capsys, monkeypatch) -> None:
    path = write(tmp_path, "searcher: grid\nscheduler: none\nspace:\n  model: {grid: [segformer, fcn_resnet50]}\n"
                           "  init: {grid: [scratch, finetune]}\n  lr: 1.0e-3\n  batch_size: {grid: [16, 32]}\n")
    code, out, _ = run_cli(["--space", str(path), "--repeats", "2", "--print-space"], capsys, monkeypatch)
    assert code == 0 and out.strip().splitlines()[-1] == "# trials: 16"
    settings = run.settings_from_args(["--space", str(path)])
    assert settings.space == {} and settings.scheduler == "fifo" and len(settings.points) == 8
    assert {(p["model"], p["init"], p["batch_size"]) for p in settings.points} == {
        (m, i, b) for m in ("segformer", "fcn_resnet50") for i in ("scratch", "finetune") for b in (16, 32)}


@pytest.mark.parametrize(("text", "names"), [
    ("space:\n  model: {choice: [segformer]}\n  init: {choice: [scratch]}\nepoch: 3\n", "unknown key 'epoch'"),
    ("space:\n  model: {choice: [segformer]}\n  momentum: {uniform: [0.8, 0.9]}\n", "space: unknown key 'momentum'"),
    ("points: [{model: segformer, init: scratch, lrr: 0.1}]\n", "points[0]: unknown key 'lrr'"),
    ("space:\n  model: {choice: [segformer, unet]}\n  init: {choice: [scratch]}\n", "space.model"),
    ("space:\n  model: {choice: [segformer]}\n  init: {choice: [scratch]}\n  lr: {uniform: [0.1, 0.01]}\n",
     "space.lr: a uniform range needs low < high"),
    ("space:\n  model: {choice: [segformer]}\n  init: {choice: [scratch]}\n  batch_size: {randint: [32, 32]}\n",
     "space.batch_size: a randint range needs low < high"),
    ("space:\n  model: {choice: [segformer]}\n  init: {choice: [scratch]}\n  lr: {loguniform: [0, 0.1]}\n",
     "space.lr: a loguniform's bounds must be > 0"),
    ("space:\n  model: {choice: []}\n  init: {choice: [scratch]}\n", "space.model: a choice needs a non-empty list"),
    ("space:\n  model: {choice: [segformer\n", "not valid YAML"),
    ("space:\n  model: {choice: [segformer]}\n  init: {choice: [scratch]}\n  lr: {uniform: [0.1, 0.2]}\n"
     "points: [{model: segformer, init: scratch, lr: 0.5}]\n", "points[0].lr"),
])
def test_bad_space_file_is_one_line_naming_it(text: str, names: str, tmp_path: Path, capsys, monkeypatch) -> None:
    path = write(tmp_path, text)
    code, out, err = run_cli(["--space", str(path), "--print-space"], capsys, monkeypatch)
    assert code == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert str(path) in err and names in err, err


def test_bad_space_file_exits_2_in_a_real_process(tmp_path: Path) -> None:
    path = write(tmp_path, "space:\n  model: {choice: [segformer]}\n  init: {choice: [scratch]}\n"
                           "  lr: {loguniform: [-1.0, 0.1]}\n")
    proc = subprocess.run([sys.executable, "-m", "study.run", "--space", str(path), "--print-space"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and not proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "loguniform" in lines[0], proc.stderr


def test_trial_config_takes_every_searched_key(tmp_path: Path) -> None:
    settings = run.settings_from_args(["--space", str(write(tmp_path, GOOD)), "--image-size", "32"])
    params = {"model": "fcn_resnet50", "init": "finetune", "lr": 2e-4, "gamma": 0.95, "batch_size": np.int64(24),
              "image_size": "64x128", "weight_decay": 0, "class_weights": "inverse_frequency", "seed": 3}
    plan = ResourcePlan(cpus_per_trial=1, gpus_per_trial=0)
    cfg = trial_config(params, settings.trial_base({"fcn_resnet50": "encoder.pt"}, plan))
    assert (cfg.model, cfg.init, cfg.lr, cfg.gamma, cfg.seed) == ("fcn_resnet50", "finetune", 2e-4, 0.95, 3)
    assert cfg.batch_size == 24 and type(cfg.batch_size) is int and cfg.image_size == (64, 128)
    assert cfg.weight_decay == 0.0 and type(cfg.weight_decay) is float and cfg.class_weights == "inverse_frequency"
    assert cfg.pretrained == "encoder.pt" and cfg.epochs == settings.epochs


def test_a_files_recipe_options_are_checked_with_the_command_lines(tmp_path: Path) -> None:
    """A file's warmup with ``--schedule poly`` on the command line is a poly schedule's warmup; the file alone
    (the exponential schedule) is refused, naming the file."""
    from foundation.errors import ConfigError
    from study.resolve import resolve

    space = tmp_path / "warm.yaml"
    space.write_text("warmup: 0.1\n")
    settings = resolve({"schedule": "poly"}, "demo", str(space))
    assert (settings.schedule, settings.warmup) == ("poly", 0.1)
    with pytest.raises(ConfigError, match=r"warm\.yaml: warmup: the exponential schedule"):
        resolve({}, "demo", str(space))
