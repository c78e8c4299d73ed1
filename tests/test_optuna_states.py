"""The searcher is told what really happened (``study/orchestrate/optuna_store.py``): a trial ASHA stopped is
``PRUNED`` with its curve, only a trial that ran all its epochs is ``COMPLETE``, an errored one ``FAIL``; the
sampler (``sampling``), objectives and constraints (``study.constraints``); the measured cost's record
(``segmodels.cost``; its values are checked in ``benchmarks/cost.py``, not here); and a two-objective study with a
constraint checked before training, in which no infeasible configuration trains."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from study.constraints import constraint_values, feasible, violations
from study.trial_cost import infeasible_result


def _fates(experiment: Path) -> dict[str, str]:
    return {p.stem: json.loads(p.read_text())["fate"] for p in (experiment / "fates").glob("*.json")}


def test_optuna_states_in_optuna_db_match_the_trials_fates(demo_study: Path) -> None:
    """The demo study (ASHA stops some of its trials): each Optuna trial's state follows its Tune trial's fate,
    a pruned trial keeps one intermediate value per validation, and summary.csv has each trial's measured cost."""
    import optuna

    from study.layout import tune_results

    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{demo_study / 'optuna.db'}")
    fates = _fates(demo_study)
    expected = {"completed": "COMPLETE", "stopped early (ASHA)": "PRUNED", "error": "FAIL"}
    states = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert set(states) == set(fates)
    assert {fates[i] for i in fates} >= {"completed", "stopped early (ASHA)"}, fates  # both kinds occur
    for trial_id, fate in fates.items():
        trial = states[trial_id]
        assert trial.state.name == expected[fate], (trial_id, fate, trial.state)
        curve = {int(r["epoch"]): r["val_miou"] for r in tune_results(demo_study, trial_id) if "val_miou" in r}
        assert trial.intermediate_values == pytest.approx(curve)
        assert trial.value == pytest.approx(curve[max(curve)])  # a pruned trial: its last intermediate value
    summary = pd.read_csv(demo_study / "summary.csv")
    assert summary["latency_ms"].gt(0).all() and summary["throughput_ips"].gt(0).all(), summary
    assert summary["cost_device"].str.startswith("cpu").all() and summary["peak_mem_measure"].notna().all()


@pytest.fixture
def searcher(tmp_path: Path):
    """A StoredOptunaSearch made as Tune makes it (constructed, then given the space), for 4-epoch trials."""
    from ray import tune

    from study.orchestrate.optuna_store import OptunaDatabase, StoredOptunaSearch
    from study.samplers import build_sampler

    def make(metric, mode, constraints=None) -> StoredOptunaSearch:
        made = StoredOptunaSearch(OptunaDatabase(str(tmp_path / "optuna.db")), "s", epochs=4, constraints=constraints,
                                  metric=metric, mode=mode, sampler=build_sampler("tpe", 0))
        made.set_search_properties("val_miou", "max", {"lr": tune.loguniform(1e-4, 1e-2)})  # Tune's, as ASHA's
        return made

    return make


def test_stopped_short_and_errored_trials_are_told_pruned_and_failed(searcher) -> None:
    from optuna.trial import TrialState

    search = searcher("val_miou", "max", constraints={"latency_ms": {"max": 5.0}})
    for trial_id in ("full", "stopped", "errored", "refused"):
        search.suggest(trial_id)
    for epoch, value in ((2, 0.3), (4, 0.5)):
        search.on_trial_result("full", {"epoch": epoch, "val_miou": value, "latency_ms": 2.0})
    search.on_trial_complete("full", {"epoch": 4, "val_miou": 0.5, "latency_ms": 2.0})
    search.on_trial_complete("stopped", {"epoch": 2, "val_miou": 0.2, "latency_ms": 2.0})  # ASHA's stop
    search.on_trial_complete("errored", None, error=True)
    search.on_trial_complete("refused", infeasible_result({"latency_ms": 8.0}, {"latency_ms": {"max": 5.0}}))
    told = {t.user_attrs["tune_trial_id"]: t for t in search._ot_study.get_trials()}
    assert {k: t.state for k, t in told.items()} == {"full": TrialState.COMPLETE, "stopped": TrialState.PRUNED,
                                                     "errored": TrialState.FAIL, "refused": TrialState.PRUNED}
    assert told["full"].value == 0.5 and told["full"].intermediate_values == {2: 0.3, 4: 0.5}
    assert told["stopped"].value == 0.2 and told["stopped"].intermediate_values == {2: 0.2}
    assert told["full"].user_attrs["constraints"] == {"latency_ms:max": pytest.approx(-0.6)}  # (2 - 5) / 5: met
    assert told["refused"].user_attrs["constraints"] == {"latency_ms:max": pytest.approx(0.6)}  # the sampler learns it
    assert list(told["refused"].constraints.values()) == [pytest.approx(0.6)] and not told["refused"].user_attrs[
        "feasible"] and told["full"].user_attrs["feasible"] and told["errored"].constraints == {}
    assert told["refused"].user_attrs["latency_ms"] == 8.0 and not told["refused"].intermediate_values


def test_several_objectives_keep_the_curve_as_a_user_attribute(searcher) -> None:
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    search = searcher(["val_miou", "latency_ms"], ["max", "min"])
    assert search.metric == ["val_miou", "latency_ms"]  # Tune's single metric (ASHA's) did not replace them
    study = search._ot_study
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_miou", "latency_ms"]
    search.suggest("a"), search.suggest("b")
    search.on_trial_result("a", {"epoch": 2, "val_miou": 0.3, "latency_ms": 3.0})
    search.on_trial_complete("a", {"epoch": 4, "val_miou": 0.4, "latency_ms": 3.0})
    search.on_trial_complete("b", {"epoch": 2, "val_miou": 0.1, "latency_ms": 1.0})
    a, b = study.get_trials()
    assert a.state == TrialState.COMPLETE and a.values == [0.4, 3.0]
    assert a.user_attrs["val_miou_curve"] == {"2": 0.3, "4": 0.4} and not a.intermediate_values
    assert b.state == TrialState.PRUNED and b.values is None and b.user_attrs["val_miou_curve"] == {"2": 0.1}
    search.suggest("c")  # TPE samples with a pruned trial in a two-objective study


def test_sampler_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    from foundation.errors import ConfigError
    from study.samplers import build_sampler, nsga2_population

    tpe = build_sampler("tpe", 3)
    assert isinstance(tpe, optuna.samplers.TPESampler) and tpe._constant_liar
    assert isinstance(build_sampler("nsga2", 0, num_samples=48), optuna.samplers.NSGAIISampler)
    assert (nsga2_population(8), nsga2_population(48), nsga2_population(1000)) == (4, 12, 50)
    assert isinstance(build_sampler("gp", 0), optuna.samplers.GPSampler)
    assert isinstance(build_sampler("random", 0), optuna.samplers.RandomSampler)

    def first(sampler) -> float:  # seeded: the same seed suggests the same first point
        study = optuna.create_study(sampler=sampler)
        return study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}).params["x"]

    assert first(build_sampler("tpe", 3)) == first(build_sampler("tpe", 3)) != first(build_sampler("tpe", 4))
    monkeypatch.setitem(sys.modules, "optunahub", None)  # not installed
    with pytest.raises(ConfigError, match="--sampler auto: optunahub is not installed"):
        build_sampler("auto", 0)
    with pytest.raises(ConfigError, match="--sampler: expected one of"):
        build_sampler("cmaes", 0)


def test_constraint_values_follow_optunas_sign_relative_to_the_bound() -> None:
    constraints = {"latency_ms": {"max": 5.0}, "val_miou": {"min": 0.5, "max": 0.9}, "params": {"max": 2e6}}
    metrics = {"latency_ms": 7.5, "val_miou": 0.4, "params": 1e6}
    assert constraint_values(constraints, metrics) == pytest.approx(
        {"latency_ms:max": 0.5, "params:max": -0.5, "val_miou:max": -5 / 9, "val_miou:min": 0.2})
    assert violations(constraints, metrics) == ["latency_ms 7.5 > max 5", "val_miou 0.4 < min 0.5"]
    assert not feasible(constraints, metrics) and feasible(constraints, {"params": 1e6})  # unknown: not held against
    assert constraint_values(constraints, {"latency_ms": float("nan")}) == {}
    refused = infeasible_result({"latency_ms": 7.5, "params": 1e6}, constraints)  # val_miou waits for training
    assert refused["infeasible"] and refused["epoch"] == 0 and refused["violations"] == "latency_ms 7.5 > max 5"
    assert infeasible_result({"latency_ms": 2.0, "params": 1e6}, constraints) is None


def test_measured_cost_record_and_its_cache(tmp_path: Path) -> None:
    """The keys a measurement gives (values: benchmarks/cost.py), measured once per key."""
    import torch

    from segmodels.cost import MEASURED, cached_cost, measure_cost

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 3, 1))
    calls = []

    def measure() -> dict:
        calls.append(1)
        return measure_cost(net, (8, 8), batch_size=2, runs=3, warmup=1, train_runs=2)

    key = {"model": "toy", "image_size": [8, 8], "device": "cpu", "precision": "fp32"}
    cost = cached_cost(tmp_path, key, measure)
    assert set(MEASURED) <= set(cost) and all(cost[k] > 0 for k in ("latency_ms", "throughput_ips", "train_step_ms"))
    assert cost["cost_device"].startswith("cpu") and "batch 2" in cost["peak_mem_measure"]
    measured = len(calls)  # a few readings (segmodels.cost.measure_steady; tests/test_cost.py)
    assert cached_cost(tmp_path, key, measure) == cost and len(calls) == measured  # from the file
    cached_cost(tmp_path, {**key, "precision": "bf16"}, measure)
    assert len(calls) > measured and len(list(tmp_path.glob("*.json"))) == 2


def test_a_two_objective_study_never_trains_an_infeasible_configuration(ray_cluster: str, small_toy_root: Path,
                                                                         cache_dir: Path, tmp_path: Path) -> None:
    """Objectives (val mIoU, latency), a parameter bound that SegFormer-B0 (3.7 M) breaks and LR-ASPP (3.2 M)
    meets: the SegFormer configuration is recorded infeasible with its cost, never trained, and Optuna is told
    its constraint value; the others train and are told both objectives."""
    import optuna

    from study import orchestrate
    from study.layout import tune_results
    from study.settings import StudySettings

    lraspp = "tv:lraspp_mobilenet_v3_large"
    points = [{"model": m, "init": "scratch", "lr": 1e-3, "gamma": 0.98} for m in ("segformer", lraspp, lraspp)]
    settings = StudySettings(
        name="constrained", storage=str(tmp_path), data_root=str(small_toy_root), dataset="pets", epochs=2,
        batch_size=8, image_size="32", val_every=1, num_samples=3, max_concurrent=2, scheduler="fifo", pretrain={},
        cache_dir=str(cache_dir), report=False, points=points,
        space={"model": ("choice", ["segformer", lraspp]), "init": ("choice", ["scratch"]),
               "lr": ("loguniform", 1e-4, 3e-3), "gamma": ("uniform", 0.9, 0.999)},
        objectives={"val_miou": "max", "latency_ms": "min"}, constraints={"params": {"max": 3.5e6}})
    summary = orchestrate.run_study(settings).set_index("trial_id")
    experiment = tmp_path / "constrained"
    refused = summary[summary["model"] == "segformer"]
    assert len(refused) == 1 and (refused["status"] == "infeasible").all() and refused["params"].gt(3.5e6).all()
    assert refused["latency_ms"].gt(0).all() and refused["best_val_miou"].isna().all()
    trained = summary[summary["model"] == lraspp]
    assert len(trained) == 2 and (trained["stop_reason"] == "completed").all() and trained["epochs"].eq(2).all()
    (refused_id,) = refused.index
    assert not list((experiment / f"trial_{refused_id}").glob("checkpoint_*"))  # never trained
    fate = json.loads((experiment / "fates" / f"{refused_id}.json").read_text())
    assert fate["fate"] == "infeasible" and fate["detail"].startswith("params") and fate["cost"]["latency_ms"] > 0

    study = optuna.load_study(study_name="constrained", storage=f"sqlite:///{experiment / 'optuna.db'}")
    told = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert told[refused_id].state.name == "PRUNED" and told[refused_id].system_attrs["constraints"][0] > 0
    for trial_id, row in trained.iterrows():
        trial, last = told[trial_id], tune_results(experiment, trial_id)[-1]
        assert trial.state.name == "COMPLETE" and trial.user_attrs["constraints"]["params:max"] <= 0
        assert trial.values == pytest.approx([last["val_miou"], row["latency_ms"]])
        assert trial.user_attrs["val_miou_curve"].keys() == {"1", "2"}


def test_optuna_dashboard_reads_each_trials_constraints_and_feasibility(searcher, tmp_path: Path) -> None:
    """optuna-dashboard (0.21) reads a trial's constraints as the list in its system attribute ``constraints``
    (``SELECT value_json FROM trial_system_attributes WHERE key = 'constraints'``) and draws a trial feasible when
    every value is <= 0; the user attributes name each value by its bound."""
    import sqlite3

    search = searcher("val_miou", "max", constraints={"latency_ms": {"max": 5.0}, "params": {"max": 2e6}})
    for trial_id in ("met", "broken", "errored"):
        search.suggest(trial_id)
    search.on_trial_complete("met", {"epoch": 4, "val_miou": 0.5, "latency_ms": 2.0, "params": 1e6})
    search.on_trial_complete("broken", {"epoch": 4, "val_miou": 0.6, "latency_ms": 10.0, "params": 1e6})
    search.on_trial_complete("errored", None, error=True)
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        rows = db.execute("SELECT a.value_json, u.value_json FROM trial_system_attributes a JOIN trial_user_attributes"
                          " u ON u.trial_id = a.trial_id AND u.key = 'tune_trial_id' WHERE a.key = 'constraints'")
        shown = {json.loads(trial): json.loads(value) for value, trial in rows}
    assert shown == {"met": [pytest.approx(-0.6), -0.5], "broken": [pytest.approx(1.0), -0.5]}  # none when errored
    feasible = {trial: all(v <= 0 for v in values) for trial, values in shown.items()}  # the dashboard's rule
    assert feasible == {"met": True, "broken": False}
    told = {t.user_attrs["tune_trial_id"]: t for t in search._ot_study.get_trials()}
    assert told["broken"].user_attrs["constraints"] == {"latency_ms:max": pytest.approx(1.0), "params:max": -0.5}
    assert told["met"].user_attrs["feasible"] and not told["broken"].user_attrs["feasible"]
    assert list(told["broken"].constraints.values()) == shown["broken"]  # what Optuna's samplers read: once each
