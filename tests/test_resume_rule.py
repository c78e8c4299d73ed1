"""One --resume rule for study.run and study.run_trial (study.resolve.resume_values): what a resumed study or run
keeps, what may change, what is refused (one line naming the option or the file and key, before Ray or any
decoding); and a run that stopped before its first checkpoint is started over, not stuck."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from foundation.errors import ConfigError
from foundation.io import json_text, load_checkpoint
from study import run, run_trial
from study.cli import main_guard
from study.config import TrainConfig
from study.resolve import resolve
from study.settings import StudySettings

SPACE = """\
searcher: optuna
sampler: tpe
batch_size: 16
epochs: 2
objectives: {val_miou: max}
constraints: {params: {max: 5.0e+7}}
space:
  model: {choice: [segformer]}
  init: {choice: [scratch]}
  lr: {loguniform: [1.0e-4, 3.0e-3]}
"""


def _record(settings: StudySettings) -> None:
    """study.json as study.orchestrate.record_settings writes it (sorted keys, tuples as lists)."""
    folder = Path(settings.experiment_dir)
    folder.mkdir(parents=True)
    per_trial = ("resume", "verbose", "model", "init", "pretrained", "device", "device_memory_share")
    data = {k: v for k, v in dataclasses.asdict(settings).items() if k not in per_trial}
    (folder / "study.json").write_text(json_text({**data, "max_concurrent": 3, "cpus_per_trial": 1.0}))


@pytest.fixture
def studied(tmp_path: Path) -> tuple[str, Path]:
    """A study of space.yaml recorded in tmp_path/study, precision bf16; returns (the space file, storage)."""
    space = tmp_path / "study.yaml"
    space.write_text(SPACE)
    _record(resolve({"storage": str(tmp_path), "data_root": str(tmp_path), "precision": "bf16"}, None, str(space)))
    return str(space), tmp_path


def _resume(storage: Path, space: str | None, **cli) -> StudySettings:
    return resolve({"resume": True, "storage": str(storage), "name": "study", **cli}, None, space)


@pytest.mark.parametrize(("change", "key"), [
    (("sampler: tpe", "sampler: random"), "sampler"),
    (("batch_size: 16", "batch_size: 8"), "batch_size"),
    (("objectives: {val_miou: max}", "objectives: {val_miou: max, params: min}"), "objectives"),
    (("constraints: {params: {max: 5.0e+7}}", "constraints: {params: {max: 1.0e+6}}"), "constraints"),
    (("lr: {loguniform: [1.0e-4, 3.0e-3]}", "lr: {loguniform: [1.0e-5, 3.0e-3]}"), "space.lr"),
])
def test_resume_refuses_a_space_file_that_differs_naming_the_key(studied, change, key: str, tmp_path: Path,
                                                                   capsys) -> None:
    space, storage = studied
    other = tmp_path / "other" / "study.yaml"  # same stem: the same experiment name
    other.parent.mkdir()
    other.write_text(SPACE.replace(*change))
    with pytest.raises(ConfigError, match=rf"--space {other}: {key}\b.* differs from the study being resumed"):
        _resume(storage, str(other))
    code = main_guard("study.run", run.main, ["--resume", "--storage", str(storage), "--space", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and f"{key}" in err and len(err.strip().splitlines()) == 1


def test_resume_with_the_same_space_file_or_none_keeps_the_recorded_study(studied) -> None:
    space, storage = studied
    with_file, without = _resume(storage, space), _resume(storage, None)
    for settings in (with_file, without):
        assert (settings.sampler, settings.batch_size, settings.objectives) == ("tpe", 16, {"val_miou": "max"})
        assert settings.space["lr"] == ("loguniform", 1e-4, 3e-3) and settings.constraints == {"params": {"max": 5e7}}
    assert with_file == without


def test_resume_keeps_the_recorded_precision_unless_given(studied) -> None:
    space, storage = studied
    assert _resume(storage, space).precision == "bf16"  # not reset to the default (auto)
    assert _resume(storage, space, precision="fp32").precision == "fp32"  # speed: may change on resume
    assert _resume(storage, space).max_concurrent == 0  # the record's plan is planned again, not kept


def test_resume_refuses_another_preset(tmp_path: Path) -> None:
    _record(resolve({"storage": str(tmp_path), "data_root": str(tmp_path)}, "demo"))
    with pytest.raises(ConfigError, match="--preset: report differs from the study being resumed"):
        resolve({"resume": True, "storage": str(tmp_path), "name": "demo"}, "report")


def _saved_run(out: Path, cfg: TrainConfig, checkpoint: bool) -> None:
    out.mkdir()
    (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    if checkpoint:
        torch.save({"epoch": 1, "config": cfg.to_dict(), "model_state": {}}, out / "last.pt")


def test_run_trial_resume_keeps_the_recorded_options_and_may_change_precision(tmp_path: Path) -> None:
    """The same rule as study.run: the recorded run's options unless given; speed (--precision) may change, what the
    run learns (--lr) may not."""
    out = tmp_path / "run"
    _saved_run(out, TrainConfig(lr=5e-4, epochs=3, image_size=(32, 32), precision="fp32"), checkpoint=True)
    args = run_trial.build_parser().parse_args(["--out", str(out), "--resume", "--precision", "bf16"])
    cfg = run_trial.config_from_args(args, run_trial.read_run(out, resume=True), f"the run in {out}")
    assert (cfg.lr, cfg.epochs, cfg.image_size, cfg.precision) == (5e-4, 3, (32, 32), "bf16")
    assert run_trial.check_out_dir(cfg, out, resume=True)["epoch"] == 1
    with pytest.raises(ConfigError, match=r"--lr: 1\.00e-03 differs from the run in"):
        run_trial.check_out_dir(cfg.replace(lr=1e-3), out, resume=True)


def test_a_run_that_stopped_before_its_first_checkpoint_starts_over(tmp_path: Path) -> None:
    cfg = TrainConfig(image_size=(32, 32))
    out = tmp_path / "run"
    _saved_run(out, cfg, checkpoint=False)
    (out / "metrics.csv").write_text("epoch\n")
    assert run_trial.check_out_dir(cfg.replace(lr=5e-4), out, resume=False) is None  # a rerun starts over
    assert run_trial.check_out_dir(cfg, out, resume=True) is None  # --resume starts from the start
    with pytest.raises(ConfigError, match="--lr: .* differs from the run in"):  # ... of the recorded run
        run_trial.check_out_dir(cfg.replace(lr=5e-4), out, resume=True)
    (out / "notes.txt").write_text("mine")  # a file that is not a run's: the folder is the user's
    with pytest.raises(ConfigError, match="holds notes.txt, not a run's files"):
        run_trial.check_out_dir(cfg, out, resume=False)
    (out / "notes.txt").unlink()
    torch.save({"epoch": 1}, out / "last.pt")
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        run_trial.check_out_dir(cfg, out, resume=False)


def test_resuming_a_run_that_stopped_before_its_first_checkpoint_trains_it(toy_root: Path, cache_dir: Path,
                                                                           tmp_path: Path, capsys) -> None:
    """As a user meets it: the run died before its first validation, leaving config.json (and a stale metrics.csv).
    ``--resume --out OUT`` alone trains the recorded configuration from the start."""
    out = tmp_path / "run"
    cfg = TrainConfig(dataset="pets", data_root=str(toy_root), epochs=1, batch_size=16, image_size=(32, 32),
                      cache_dir=str(cache_dir))
    _saved_run(out, cfg, checkpoint=False)
    (out / "metrics.csv").write_text("epoch,val_miou\n7,0.9\n")
    code = main_guard("study.run_trial", run_trial.main, ["--no-progress", "--out", str(out), "--resume"])
    assert code == 0, capsys.readouterr().err
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,")  # the new run's one epoch, the stale row gone
    assert load_checkpoint(out / "last.pt")["config"] == json.loads((out / "config.json").read_text())
