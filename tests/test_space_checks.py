"""A space is checked as the trials it can produce (study.preflight.check_config, check_trials): before Ray, and
by --print-space alike. Each refusal is one line naming the option or file, exit 2, nothing written; no Ray here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from foundation.errors import ConfigError
from study import preflight, run, run_trial
from study.cli import main_guard
from study.config import TrainConfig, check_trial_data
from study.resolve import resolve
from study.space import produced


def print_space(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setitem(sys.modules, "study.orchestrate", None)  # importing the Ray layer would fail the test
    code = main_guard("study.run", run.main, [*args, "--print-space"])
    return code, capsys.readouterr().err


def space_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def refused(code: int, err: str, expected: str) -> None:
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err


STANDARD_WITH_EXPONENTIAL = """
recipe: standard
space:
  model: segformer
  init: scratch
  schedule: {choice: [poly, exponential]}
  lr: {loguniform: [1.0e-4, 3.0e-3]}
"""


def test_a_choice_is_checked_with_the_recipe_it_meets(tmp_path: Path, capsys, monkeypatch) -> None:
    """The standard recipe's warmup with an exponential schedule: every exponential trial would fail in Ray."""
    code, err = print_space(["--space", space_file(tmp_path, STANDARD_WITH_EXPONENTIAL)], capsys, monkeypatch)
    refused(code, err, "space {schedule: exponential}: --warmup: the exponential schedule")
    assert "--recipe standard" in err


def test_a_range_is_checked_at_its_bounds_with_the_other_keys(tmp_path: Path, capsys, monkeypatch) -> None:
    text = "space: {model: segformer, init: scratch, schedule: {choice: [poly, exponential]}, " \
           "warmup: {uniform: [0.0, 0.2]}}\n"
    code, err = print_space(["--space", space_file(tmp_path, text)], capsys, monkeypatch)
    refused(code, err, "space {warmup: 0.2}: --warmup: the exponential schedule steps per epoch")


def test_produced_enumerates_choices_and_range_bounds() -> None:
    space = {"model": ("choice", ["a", "b"]), "lr": ("loguniform", 1e-4, 1e-2), "batch_size": ("randint", 8, 16)}
    trials = produced(space)
    assert len(trials) == 8 and {"model": "b", "lr": 1e-2, "batch_size": 8} in trials


def test_produced_beyond_the_limit_crosses_every_pair(monkeypatch) -> None:
    from study import space as grammar

    monkeypatch.setattr(grammar, "PRODUCT_LIMIT", 10)
    space = {key: ("choice", [0, 1, 2]) for key in "abc"}
    trials = produced(space)
    for x in range(3):
        for y in range(3):
            assert any(t["a"] == x and t["c"] == y for t in trials) and any(t["b"] == x and t["c"] == y for t in trials)


def test_class_weights_for_another_class_count_are_refused_before_ray(capsys, monkeypatch) -> None:
    """The demo's Pets task has 3 classes: two weights would fail every trial inside Ray."""
    code, err = print_space(["--preset", "demo", "--class-weights", "1,2"], capsys, monkeypatch)
    refused(code, err, "--class-weights: 2 weights for 3 classes")


def test_class_weights_are_checked_against_the_data_when_only_it_knows() -> None:
    with pytest.raises(ConfigError, match="--class-weights: 2 weights for 4 classes"):
        check_trial_data(TrainConfig(dataset="folder", class_weights=[1.0, 2.0]), 40, 4)


def test_a_missing_hf_folder_is_refused_by_print_space(tmp_path: Path, capsys, monkeypatch) -> None:
    missing = tmp_path / "no-such-model"
    text = f"space: {{model: {{choice: [segformer, 'hf:{missing}']}}, init: scratch}}\n"
    code, err = print_space(["--space", space_file(tmp_path, text)], capsys, monkeypatch)
    refused(code, err, f"--model hf:{missing}")


@pytest.mark.parametrize(("bound", "expected"), [
    ("{latency_ms: {max: .nan}}", "latency_ms: max nan is not a finite number"),
    ("{latency_ms: {min: 10, max: 5}}", "latency_ms: min 10 is above max 5"),
    ("{latency_ms: {max: -1}}", "latency_ms: max -1 is below every value latency_ms can take (>= 0)"),
    ("{val_miou: {min: 1.5}}", "val_miou: min 1.5 is above every value val_miou can take (<= 1)"),
], ids=["nan", "min-above-max", "negative-latency", "miou-above-1"])
def test_a_constraint_no_value_can_meet_is_refused(bound: str, expected: str, tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    path = space_file(tmp_path, f"constraints: {bound}\n")
    code, err = print_space(["--space", path], capsys, monkeypatch)
    refused(code, err, expected)
    assert path in err


def test_a_counted_bound_every_model_breaks_is_refused_with_its_value(tmp_path: Path, capsys, monkeypatch) -> None:
    text = "space: {model: {choice: [segformer, fcn_resnet50]}, init: scratch}\nconstraints: {params: {max: 1000}}\n"
    code, err = print_space(["--space", space_file(tmp_path, text), "--image-size", "32"], capsys, monkeypatch)
    refused(code, err, "constraints.params: max 1000 is broken by every trial the study can run; the closest, "
                       "segformer at 32x32, has params")


def test_a_bound_some_model_meets_passes(tmp_path: Path, capsys, monkeypatch) -> None:
    text = "space: {model: {choice: [segformer, fcn_resnet50]}, init: scratch}\nconstraints: {params: {max: 1.0e+7}}\n"
    code, _ = print_space(["--space", space_file(tmp_path, text), "--image-size", "32"], capsys, monkeypatch)
    assert code == 0


def test_a_measured_bound_is_measured_where_the_trials_run(tmp_path: Path, monkeypatch) -> None:
    """Measured by the trials' own function (cached for them); on a cluster (RAY_ADDRESS) each trial checks its own."""
    from study import trial_cost

    measured = []
    monkeypatch.setattr(trial_cost, "trial_cost", lambda cfg, classes: measured.append(cfg.model) or
                        {"latency_ms": 40.0 if cfg.model == "segformer" else 60.0, "params": 1.0})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    settings = resolve({"storage": str(tmp_path), "device": "cpu"}, "search",
                       space_file(tmp_path, "constraints: {latency_ms: {max: 5}}\n"))
    with pytest.raises(ConfigError, match=r"constraints.latency_ms: max 5 .* segformer at 64x64, has latency_ms 40"):
        preflight.check_config(settings)
    assert sorted(set(measured)) == ["fcn_resnet50", "segformer"]
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    preflight.check_config(settings)


def test_a_warmup_as_long_as_the_run_is_one_line_in_run_trial(small_toy_root: Path, tmp_path: Path,
                                                              capsys) -> None:
    out = tmp_path / "out"
    code = main_guard("study.run_trial", run_trial.main, [
        "--no-progress", "--dataset", "pets", "--data-root", str(small_toy_root), "--epochs", "1", "--batch-size",
        "64", "--image-size", "32", "--schedule", "poly", "--warmup", "0.5", "--cache-dir", str(tmp_path / "cache"),
        "--out", str(out)])
    refused(code, capsys.readouterr().err, "--warmup 0.5: 1 of the run's 1 iterations (1 epochs x 1 per epoch: ")
    assert not out.exists()


def test_a_warmup_as_long_as_the_run_is_refused_before_ray(small_toy_root: Path, tmp_path: Path) -> None:
    """Known once the data is: the check runs right after it, before Ray, and the experiment folder stays empty."""
    settings = resolve({"storage": str(tmp_path / "results"), "data_root": str(small_toy_root), "epochs": 1,
                        "val_every": 1, "batch_size": 64, "recipe": "standard", "cache_dir": str(tmp_path / "cache"),
                        "pretrained_segformer": "nvidia/mit-b0", "pretrained_fcn": "imagenet"}, "demo")
    with pytest.raises(ConfigError, match=r"^--warmup 0.01: 1 of the run's 1 iterations"):
        preflight.preflight(settings)
    assert not [p for p in (tmp_path / "results").rglob("*") if p.is_file()]


@pytest.mark.parametrize("text", [
    "space: {model: segformer, init: scratch, schedule: {choice: [poly, cosine]}, warmup: {uniform: [0.0, 0.2]}}\n",
    "recipe: standard\nwarmup: 0.05\n",
], ids=["warmup-range-with-warmup-schedules", "standard-recipe-with-its-own-warmup"])
def test_a_value_is_not_refused_for_the_defaults_of_the_other_keys(text: str, tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:
    """Checked with the trials it makes, not alone: each of these trials has a schedule with a warmup."""
    code, err = print_space(["--space", space_file(tmp_path, text)], capsys, monkeypatch)
    assert code == 0, err
