"""Every sampler the grammar accepts (``study.samplers.SAMPLERS``) runs a study through a real Tuner: Ray pickles
the searcher with its sampler, so each one pickles with its state; one that cannot is refused before Ray; and a
study that failed before its Tuner started leaves a folder that a rerun or ``--resume`` can use."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import pytest
import yaml

from study.cli import main_guard
from study.samplers import SAMPLERS, build_sampler

RUNNABLE = [name for name in SAMPLERS if name != "auto"]  # auto: optunahub and the network


def _run(argv: list[str]) -> int:
    from study import run

    return main_guard("study.run", run.main, argv)


def _space(folder: Path, sampler: str, **extra) -> str:
    """A space file for a tiny search: SegFormer from scratch at 32x32, 2 trials of 1 epoch, a bound every
    configuration meets (so each trial carries a constraint value)."""
    path = folder / f"{sampler}.yaml"
    path.write_text(yaml.safe_dump({
        "space": {"model": "segformer", "init": "scratch", "lr": {"loguniform": [1.0e-3, 3.0e-3]}},
        "num_samples": 2, "epochs": 1, "val_every": 1, "batch_size": 8, "image_size": "32", "pretrain": "none",
        "scheduler": "none", "sampler": sampler, "constraints": {"params": {"max": 1.0e9}}, **extra}))
    return str(path)


@pytest.mark.parametrize("name", RUNNABLE)
def test_each_sampler_pickles_with_its_state(name: str) -> None:
    """A pickled copy of a sampler that has sampled suggests what the original suggests next (its random state
    travels with it); Optuna 5.1's own NSGA-II cannot be pickled at all (it holds a lock)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    sampler = build_sampler(name, 0, num_samples=8)
    study = optuna.create_study(sampler=sampler)
    for _ in range(5):
        trial = study.ask(space)
        study.tell(trial, trial.params["x"])
    copy = pickle.loads(pickle.dumps(sampler))
    assert type(copy) is type(sampler)
    assert (optuna.create_study(sampler=copy).ask(space).params
            == optuna.create_study(sampler=sampler).ask(space).params)


def test_an_unpicklable_sampler_is_refused_before_ray(toy_root: Path, tmp_path: Path, capsys,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    monkeypatch.setitem(SAMPLERS, "random", lambda seed, trials: optuna.samplers.NSGAIISampler(seed=seed))
    code = _run(["--space", _space(tmp_path, "random"), "--data-root", str(toy_root), "--dataset", "pets",
                 "--storage", str(tmp_path / "st"), "--no-report"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--sampler random" in err, err
    assert "cannot be pickled" in err
    assert not (tmp_path / "st").exists() or not any((tmp_path / "st").iterdir())  # nothing written


@pytest.mark.skipif(importlib.util.find_spec("optunahub") is not None, reason="optunahub is installed")
def test_auto_without_optunahub_is_refused_before_ray(toy_root: Path, tmp_path: Path, capsys) -> None:
    code = _run(["--space", _space(tmp_path, "auto"), "--data-root", str(toy_root), "--storage", str(tmp_path / "st")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--sampler auto" in err and "optunahub" in err, err
    assert not (tmp_path / "st").exists()


def test_the_folder_an_unpicklable_sampler_left_is_rerun(ray_cluster: str, small_toy_root: Path, cache_dir: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NSGA-II's study first fails as it did on Optuna's own sampler (the pickle check skipped, so the Tuner is
    built and cannot pickle it): the folder that failure leaves is then rerun, without --resume, and its trials are
    told COMPLETE with their constraint value where optuna-dashboard reads it. Every sampler runs through a real
    Tuner in tests/test_matrix.py."""
    import optuna

    from study import preflight

    name = "nsga2"
    space = _space(tmp_path, name)
    args = ["--space", space, "--data-root", str(small_toy_root), "--dataset", "pets", "--storage",
            str(tmp_path / "st"), "--cache-dir", str(cache_dir), "--max-concurrent", "2", "--no-report"]
    experiment = tmp_path / "st" / name
    with monkeypatch.context() as patch:
        patch.setitem(SAMPLERS, name, lambda seed, trials: optuna.samplers.NSGAIISampler(seed=seed))
        patch.setattr(preflight, "check_sampler", lambda settings: None)
        with pytest.raises(TypeError, match="cannot pickle"):  # inside Ray, as on Optuna 5.1's own NSGA-II
            _run(args)
    # no half-written tuner.pkl: --resume would have restored it (EOFError); it now builds its Tuner afresh
        assert (experiment / "study.json").is_file() and not (experiment / "tuner.pkl").exists()
    assert _run(args) == 0
    assert json.loads((experiment / "study.json").read_text())["sampler"] == name
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        assert 1e-3 <= trial.params["lr"] <= 3e-3
        (value,) = trial.system_attrs["constraints"]  # the list optuna-dashboard shows
        assert value < 0 and trial.user_attrs["feasible"] and trial.user_attrs["constraints"] == {"params:max": value}
    assert all("NSGAIISampler:generation" in t.system_attrs for t in study.trials)
