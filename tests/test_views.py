"""The two views a Tune or Optuna user opens on a finished study (the session's demo study): optuna-dashboard on
``STORAGE/NAME/optuna.db`` and TensorBoard on ``STORAGE/NAME`` (``study/orchestrate/optuna_store.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from study.layout import tune_results


def validations(demo_study: Path, trial_id: str) -> dict[int, float]:
    """{epoch: val mIoU} of every result Tune recorded for a trial (``result.json``)."""
    return {int(r["epoch"]): float(r["val_miou"]) for r in tune_results(demo_study, trial_id) if "val_miou" in r}


@pytest.fixture(scope="module")
def summary(demo_study: Path) -> pd.DataFrame:
    return pd.read_csv(demo_study / "summary.csv", dtype={"trial_id": str})


def test_the_search_is_an_optuna_study_in_optuna_db(demo_study: Path, summary: pd.DataFrame) -> None:
    """Every trial is one finished Optuna trial of the study NAME: its per-validation val mIoU as intermediate
    values (step: the epoch), and as its value the val mIoU of its last result (for an ASHA-stopped trial, told
    PRUNED, where ASHA stopped it), not its best."""
    import optuna

    storage = f"sqlite:///{demo_study / 'optuna.db'}"
    assert optuna.get_all_study_names(storage) == ["demo"]
    study = optuna.load_study(study_name="demo", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and study.metric_names == ["val_miou"]
    trials = {t.user_attrs["tune_trial_id"]: t for t in study.get_trials()}
    assert len(trials) == len(study.trials) == len(summary)  # one Optuna trial per Tune trial, none twice
    assert set(trials) == set(summary["trial_id"])
    for row in summary[summary["status"] == "done"].itertuples():
        trial, curve = trials[row.trial_id], validations(demo_study, row.trial_id)
        told = "COMPLETE" if row.stop_reason == "completed" else "PRUNED"  # ASHA's stops: test_optuna_states.py
        assert trial.state.name == told
        assert trial.intermediate_values == pytest.approx(curve)
        assert max(curve) == row.epochs  # ASHA-stopped trials too: the result it was stopped at is there
        assert trial.value == pytest.approx(curve[max(curve)])
        assert trial.user_attrs["best_val_miou"] == pytest.approx(row.best_val_miou)
        assert (trial.params["model"], trial.params["init"]) == (row.model, row.init)
        assert (trial.params["lr"], trial.params["gamma"]) == pytest.approx((row.lr, row.gamma))


def test_tensorboard_has_each_trials_curves_by_epoch(demo_study: Path, summary: pd.DataFrame) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for trial_id in summary["trial_id"]:
        folder = demo_study / f"trial_{trial_id}"
        assert list(folder.glob("events.out.tfevents.*")), f"{folder}: no TensorBoard event file"
        events = EventAccumulator(str(folder))
        events.Reload()
        assert {f"ray/tune/{m}" for m in ("val_miou", "val_loss", "train_loss", "lr")} <= set(events.Tags()["scalars"])
        logged = {e.step: e.value for e in events.Scalars("ray/tune/val_miou")}
        assert logged == pytest.approx(validations(demo_study, trial_id), rel=1e-6)  # step: the epoch


@pytest.mark.parametrize("remote", [False, True], ids=["local", "object-storage"])
def test_a_resumed_search_continues_its_optuna_study(remote: bool, tmp_path: Path, monkeypatch) -> None:
    """The searcher saved, asked once more (Tune's saved state then misses that trial, as after a killed driver),
    and restored in a new process: the same study continues and its warm-start points are not enqueued twice.
    Locally, the trial Tune does not know is failed and its point enqueued again. On a storage URI (``file://``: the
    object-storage path of the code, on a local folder) the file is a local copy, uploaded with the searcher's state;
    restored on another machine (no local copy), the study is the uploaded one, which never had that trial."""
    import optuna
    from ray import tune

    from foundation import storage
    from study.orchestrate import optuna_store
    from study.orchestrate.optuna_store import OptunaDatabase, StoredOptunaSearch

    uri = f"{'file://' if remote else ''}{tmp_path}/storage/exp/optuna.db"
    points = [{"model": "a", "lr": 1e-3}, {"model": "b", "lr": 1e-3}, {"model": "a", "lr": 5e-4}]
    space = {"model": tune.choice(["a", "b"]), "lr": tune.loguniform(1e-4, 1e-2)}

    def searcher(cache: str) -> StoredOptunaSearch:  # as Tune makes it: constructed, then given the space
        made = StoredOptunaSearch(OptunaDatabase(uri, str(tmp_path / cache)), "exp", metric="val_miou", mode="max",
                                  sampler=optuna.samplers.TPESampler(seed=0), points_to_evaluate=points)
        made.set_search_properties(None, None, space)
        return made

    (tmp_path / "storage" / "exp").mkdir(parents=True)  # the experiment folder, as the study makes it
    first = searcher("cache-1")
    assert first.suggest("t1") == points[0] and first.suggest("t2") == points[1]
    first.on_trial_result("t1", {"epoch": 2, "val_miou": 0.5, "training_iteration": 1})
    first.on_trial_complete("t1", {"epoch": 4, "val_miou": 0.4, "training_iteration": 2})  # ASHA's stop: no result
    first.on_trial_result("t2", {"epoch": 2, "val_miou": 0.3, "training_iteration": 1})
    first.save(str(tmp_path / "searcher.pkl"))
    assert storage.is_file(uri) and bool(list((tmp_path / "cache-1").rglob("optuna.db"))) == remote  # local copy
    assert first.suggest("t3") == points[2]  # after Tune's last save of its state: Tune will not know it

    monkeypatch.setattr(optuna_store, "_OPENED", set())  # a new process, on another machine (cache-2) ...
    if remote:
        shutil.rmtree(tmp_path / "cache-1")  # ... where nothing is at the first one's path
    resumed = searcher("cache-2")
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert resumed.suggest("t3-again") == points[2]  # the forgotten trial's point, asked again
    resumed.on_trial_result("t2", {"epoch": 4, "val_miou": 0.6, "training_iteration": 2})
    resumed.on_trial_complete("t2", {"epoch": 4, "val_miou": 0.6, "training_iteration": 2})
    resumed.save(str(tmp_path / "searcher.pkl"))

    local = storage.download(uri, tmp_path / "check" / "optuna.db")  # what storage holds now
    assert optuna.get_all_study_names(f"sqlite:///{local}") == ["exp"]
    trials = optuna.load_study(study_name="exp", storage=f"sqlite:///{local}").get_trials()
    states = [(t.user_attrs.get("tune_trial_id"), t.state.name) for t in trials]
    forgotten = [] if remote else [("t3", "FAIL")]
    assert states == [("t1", "COMPLETE"), ("t2", "COMPLETE"), *forgotten, ("t3-again", "RUNNING")]
    assert trials[0].value == 0.4 and trials[0].intermediate_values == {2: 0.5, 4: 0.4}  # the last, not the best
    assert trials[0].user_attrs["best_val_miou"] == 0.5
    assert trials[1].value == 0.6 and trials[1].intermediate_values == {2: 0.3, 4: 0.6}
    assert trials[-1].params == points[2]
