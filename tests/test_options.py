"""One declaration per option: the resolution rule, the pinned presets, the grouped CLIs, and bad input refused where
the file or option is read (one line, exit 2)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from study import run, run_trial
from study.config import TrainConfig
from study.options import GROUPS, declared
from study.resolve import resolve
from study.settings import StudySettings

PINNED = Path(__file__).parent / "pinned" / "settings-a56a385.json"
ARGV = {"demo": ["--preset", "demo", "--storage", "/tmp/st", "--data-root", "/tmp/toy"],
        "report": ["--preset", "report", "--storage", "/tmp/st", "--data-root", "/tmp/data"],
        "search": ["--preset", "search", "--storage", "/tmp/st", "--data-root", "/tmp/data", "--num-samples", "12",
                   "--confirm-top", "2", "--repeats", "3"]}
# Options added since the pin: the trial base a study shares with its trials, and the search's objectives.
NEW = {"model", "init", "pretrained", "variant", "lr", "gamma", "weight_decay", "device", "device_memory_share",
       "sampler", "objectives", "constraints", "recipe", "schedule", "warmup", "poly_power", "head_lr_mult",
       "norm_decay_mult", "base_size", "ratio_range", "cat_max_ratio", "photometric", "eval_at", "eval_mode",
       "slide_window", "slide_stride", "remeasure_cost", "budget"}
# No longer settings: the resource plan's (recorded beside the settings in study.json), and the CLI's log file.
MOVED = {"gpus_per_model", "native_stderr_log"}


@pytest.mark.parametrize("preset", sorted(ARGV))
def test_the_presets_resolve_as_they_did_before_the_option_table(preset: str) -> None:
    pinned = {k: v for k, v in json.loads(PINNED.read_text())[preset].items() if k not in MOVED}
    now = json.loads(json.dumps(dataclasses.asdict(run.settings_from_args(ARGV[preset])), default=list))
    pinned["image_size"] = list(TrainConfig(image_size=pinned["image_size"]).image_size)  # now always (H, W)
    assert {k: now[k] for k in pinned} == pinned
    assert set(now) - set(pinned) == NEW


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# Each layer sets the image size; the highest given layer wins: defaults < preset < space < task < command line.
LAYERS = [
    ({}, (64, 64)),
    ({"preset"}, (32, 32)),
    ({"preset", "space"}, (40, 40)),
    ({"space"}, (40, 40)),
    ({"preset", "space", "task"}, (48, 48)),
    ({"space", "task"}, (48, 48)),
    ({"task"}, (48, 48)),
    ({"preset", "space", "task", "cli"}, (56, 56)),
    ({"task", "cli"}, (56, 56)),
    ({"space", "cli"}, (56, 56)),
    ({"preset", "cli"}, (56, 56)),
    ({"cli"}, (56, 56)),
]


@pytest.mark.parametrize(("layers", "expected"), LAYERS, ids=["+".join(sorted(g)) or "defaults" for g, _ in LAYERS])
def test_each_layer_beats_the_ones_below(layers: set[str], expected: tuple[int, int], tmp_path: Path) -> None:
    space = _write(tmp_path / "space.yaml", "image_size: 40x40\n") if "space" in layers else None
    task = _write(tmp_path / "task.yaml", f"dataset: pets\nroot: {tmp_path}\nimage_size: 48\n") if "task" in layers \
        else None
    cli = {"image_size": (56, 56)} if "cli" in layers else {}
    if not layers:  # no layer: the declared default
        assert StudySettings().image_size == expected
        return
    settings = resolve({**cli, "storage": str(tmp_path)}, "demo" if "preset" in layers else "search", space, task)
    assert settings.image_size == expected


def test_resume_keeps_the_recorded_study(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "study.json").write_text(json.dumps({"epochs": 3, "data_root": "/recorded", "seed": 5}))
    settings = resolve({"resume": True, "storage": str(tmp_path)}, "demo")
    assert (settings.epochs, settings.data_root, settings.seed) == (3, "/recorded", 5)
    assert resolve({"resume": True, "storage": str(tmp_path), "data_root": "/moved"}, "demo").data_root == "/moved"
    with pytest.raises(Exception, match="--seed: 6 differs from the study being resumed"):
        resolve({"resume": True, "storage": str(tmp_path), "seed": 6}, "demo")


BAD_SPACE = [
    ("lr: {loguniform: [1.0e-4, 3.0e-3]}\nlr: 0.01\n", "duplicated key 'lr'"),
    ("space: {model: segformer, init: scratch, image_size: [32, 64]}\n", "a bare list is not a space entry"),
    ("space: {model: segformer, init: scratch, batch_size: {choice: [8.0, 16.0]}}\n", "expected an integer >= 1"),
    ("epochs: 2.0\n", "epochs: expected an integer >= 1, got 2.0"),
    ("space: {model: segformer, init: scratch, lr: 1e3}\n", "expected a number in (0, 1], got 1000.0"),
    ("", "the file is empty"),
    ("epochs: 4\nval_every: 5\n", "--val-every 5: beyond --epochs 4"),
    ("num_samples: 3\n", "--num-samples 3: fewer than the space's 7 warm-start points"),
    ("objectives: {val_miou: max, speed: min}\n", "objectives: expected a mapping of metric -> max | min"),
    ("constraints: {latency_ms: {below: 5}}\n", "constraints: expected a mapping of metric"),
    ("sampler: cmaes\n", "sampler: expected one of tpe, nsga2, gp, random, auto"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_SPACE, ids=[e[:30] for _, e in BAD_SPACE])
def test_a_bad_space_file_is_one_line_and_exit_2(text: str, expected: str, tmp_path: Path, capsys) -> None:
    path = _write(tmp_path / "space.yaml", text)
    code = _run(["--space", path, "--storage", str(tmp_path), "--print-space"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert "space.yaml" in err or expected.startswith("--"), err


def test_a_latin_1_space_file_is_refused(tmp_path: Path, capsys) -> None:
    path = tmp_path / "space.yaml"
    path.write_bytes("# café\nepochs: 4\n".encode("latin-1"))
    assert _run(["--space", str(path), "--print-space"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and str(path) in err and len(err.strip().splitlines()) == 1


BAD_TASK = [
    ("image_size: 0x64\n", "image_size: expected N or HxW"),  # YAML 1.1 would read hexadecimal 100
    ("class_weights: [1.0, 2.0]\n", "class_weights: 2 weights for 3 classes"),
    ("ignore_index: 8.5\n", "ignore_index: expected an integer"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_TASK, ids=[e[:24] for _, e in BAD_TASK])
def test_a_bad_task_file_is_refused_before_any_data_is_read(text: str, expected: str, tmp_path: Path,
                                                            capsys) -> None:
    task = _write(tmp_path / "task.yaml", f"dataset: pets\nroot: {tmp_path}\n{text}")
    assert _run(["--task", task, "--print-space"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err and task in err, err


@pytest.mark.parametrize("main", [run.settings_from_args, run_trial.main], ids=["study.run", "study.run_trial"])
def test_help_is_grouped_and_every_option_has_help(main, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    headings = [line.rstrip(":") for line in out.splitlines() if line and not line.startswith(" ")
                and line.endswith(":")]
    assert set(headings) - {"options"} <= set(GROUPS) and len(headings) >= 5, headings
    for field in declared(StudySettings):
        place = "run" if main is run.settings_from_args else "trial"
        if place in field.metadata["where"]:
            assert field.metadata["help"].split(" (")[0][:20] in " ".join(out.split()), field.name


def test_every_option_is_declared_with_help_group_and_kind() -> None:
    for field in declared(StudySettings):
        assert field.metadata["help"] and field.metadata["group"] in GROUPS, field.name


def test_a_study_whose_trials_all_failed_exits_1(monkeypatch, tmp_path: Path, capsys) -> None:
    import study.orchestrate

    failed = pd.DataFrame({"trial_id": ["a", "b"], "status": ["error", "error"], "best_val_miou": [None, None]})
    monkeypatch.setattr(study.orchestrate, "run_study", lambda settings, native_stderr_log=None: failed)
    assert _run(["--preset", "demo", "--storage", str(tmp_path), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert "no trial of 2 completed" in err and len(err.strip().splitlines()) == 1, err


def test_the_summary_table_shows_whatever_was_searched(capsys) -> None:
    from study.orchestrate.console import print_summary

    settings = StudySettings(space={"model": ("choice", ["segformer"]), "init": ("choice", ["scratch"]),
                                    "batch_size": ("choice", [8, 16])}, points=[])
    summary = pd.DataFrame({"trial_id": ["t1"], "model": ["segformer"], "init": ["scratch"], "lr": [None],
                            "gamma": [None], "batch_size": [8], "seed": [0], "epochs": [6], "best_val_miou": [0.5],
                            "stopped_early": [False], "status": ["done"]})
    print_summary(settings, summary)  # no gamma searched: no gamma column, no crash
    out = capsys.readouterr().out
    assert "batch_size" in out and "gamma" not in out


def _run(argv: list[str]) -> int:
    from study.cli import main_guard

    return main_guard("study.run", run.main, argv)


def test_a_mistyped_hf_folder_stops_the_study_before_ray_whatever_the_init(tmp_path: Path, capsys) -> None:
    space = _write(tmp_path / "space.yaml", "space: {model: hf:/no/such/model, init: scratch}\nnum_samples: 1\n"
                                            "pretrain: none\n")
    assert _run(["--space", space, "--storage", str(tmp_path), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "/no/such/model" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "space").exists()  # nothing was written


BAD_RECIPE = [
    (["--image-size", "64", "--base-size", "48x32"], "--base-size: crop_size 64x64 is larger than the base size"),
    (["--ratio-range", "2.0,0.5"], "--ratio-range: expected two numbers LOW,HIGH with 0 < LOW <= HIGH"),
    (["--eval-mode", "slide", "--slide-window", "32", "--slide-stride", "48"], "--eval-mode: slide window 32x32"),
    (["--recipe", "mmseg"], "--recipe: invalid choice: 'mmseg'"),
    (["--warmup", "0.1"], "--warmup: the exponential schedule steps per epoch and has no warmup"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD_RECIPE, ids=[a[0] for a, _ in BAD_RECIPE])
def test_a_recipe_that_cannot_work_is_one_line_and_exit_2(argv: list[str], expected: str, tmp_path: Path,
                                                          capsys) -> None:
    assert _run(["--preset", "demo", "--storage", str(tmp_path), *argv, "--print-space"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err, err


def test_a_task_file_names_its_recipe_and_overrides_it_key_by_key(tmp_path: Path) -> None:
    task = _write(tmp_path / "task.yaml", f"dataset: pets\nroot: {tmp_path}\nimage_size: 128\nrecipe: standard\n")
    settings = resolve({"storage": str(tmp_path), "cat_max_ratio": 1.0}, "report", None, task)
    assert (settings.recipe, settings.schedule, settings.base_size, settings.head_lr_mult) == (
        "standard", "poly", (512, 128), 10.0)  # MMSeg's 2048x512 scale for a 512 crop, scaled to 128
    assert settings.cat_max_ratio == 1.0 and settings.eval_at == "original"  # the option beats the recipe
    assert resolve({"storage": str(tmp_path)}, "report").schedule == "exponential"  # the report keeps its recipe


def test_the_recipe_options_are_searchable(tmp_path: Path) -> None:
    from study.settings import ResourcePlan
    from study.trial import trial_config

    space = _write(tmp_path / "space.yaml", "space:\n  model: segformer\n  init: scratch\n  schedule: {choice: [poly, "
                   "cosine]}\n  head_lr_mult: {loguniform: [1.0, 10.0]}\n  base_size: {choice: [256x64, 512x128]}\n"
                   "  photometric: {choice: [true, false]}\nimage_size: 64\nnum_samples: 2\n")
    settings = resolve({"storage": str(tmp_path)}, "demo", space)
    assert settings.space["base_size"] == ("choice", ["256x64", "512x128"])  # sizes as text: Optuna's choices
    params = {"model": "segformer", "init": "scratch", "schedule": "cosine", "head_lr_mult": 4.0,
              "base_size": "512x128", "photometric": True, "seed": 0}
    cfg = trial_config(params, settings.trial_base({}, ResourcePlan(cpus_per_trial=1, gpus_per_trial=0)))
    assert (cfg.schedule, cfg.head_lr_mult, cfg.base_size, cfg.photometric) == ("cosine", 4.0, (512, 128), True)
    assert "head_lr_mult" in settings.searched_keys() and "gamma" not in settings.searched_keys()


def test_a_per_iteration_schedule_keeps_its_epochs_on_resume(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "study.json").write_text(json.dumps({"epochs": 3, "schedule": "poly", "warmup": 0.1}))
    with pytest.raises(Exception, match="--epochs: 5 differs from the study being resumed"):
        resolve({"resume": True, "storage": str(tmp_path), "epochs": 5}, "demo")
    assert resolve({"resume": True, "storage": str(tmp_path)}, "demo").epochs == 3
