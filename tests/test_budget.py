"""Issue 36, deliverable 3: a budget in device-time (``--budget``, ``budget:`` in a space file).

Known answers: the parser's on spelled durations; the accounting's on constructed results (seconds x devices, per
model, the confirm stage included); the scheduler's decisions on constructed results (no Ray started); and one tiny
real study whose budget is spent by its first trial's first validation, then resumed with a larger budget.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from foundation.errors import ConfigError
from study import budget
from study.fates import BUDGET, read_fate
from study.options import Duration, declaration
from study.settings import StudySettings


@pytest.mark.parametrize(("text", "seconds"), [("2h", 7200.0), ("30m", 1800.0), ("90s", 90.0), ("7200", 7200.0),
                                               ("1.5h", 5400.0), (" 2H ", 7200.0), (45, 45.0), (0.5, 0.5)])
def test_a_budget_is_read_in_seconds_from_s_m_h_or_plain_seconds(text: object, seconds: float) -> None:
    assert Duration().check(text) == seconds


@pytest.mark.parametrize("bad", ["2d", "0", "-1h", "", "h", "inf", "nan", True, 0, [2]])
def test_a_budget_that_is_no_positive_duration_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="a duration > 0"):
        Duration().check(bad)


def test_the_budget_is_one_option_of_the_command_line_a_space_file_and_resume(tmp_path: Path) -> None:
    from study.cli import add_option
    from study.resolve import resolve, resume_values

    parser = argparse.ArgumentParser()
    add_option(parser, declaration(StudySettings, "budget"))
    assert parser.parse_args(["--budget", "2h"]).budget == 7200.0
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({"budget": "30m"}))
    assert resolve({}, space_file=str(space)).budget == 1800.0
    assert resolve({"budget": 60.0}, space_file=str(space)).budget == 60.0  # the command line wins
    space.write_text(yaml.safe_dump({"budget": "2 days"}))
    with pytest.raises(ConfigError, match=r"s\.yaml: budget: expected a duration"):
        resolve({}, space_file=str(space))
    # --resume may raise it: the recorded 1 h gives way to 2 h
    assert resume_values(StudySettings, {"budget": 3600.0}, {"budget": 7200.0}, "the study")["budget"] == 7200.0


def write_trial(experiment: Path, trial_id: str, model: str, rows: list[dict]) -> None:
    """A Tune trial folder as a study writes it: params.json and result.json."""
    folder = experiment / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"model": model}))
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_device_time_is_seconds_times_devices_summed_per_model_with_the_confirm_stage(tmp_path: Path) -> None:
    write_trial(tmp_path, "a", "segformer", [{"epoch": 1, "time_this_iter_s": 10.0, "devices": 1.0},
                                             {"epoch": 2, "time_this_iter_s": 6.0, "devices": 1.0}])
    write_trial(tmp_path, "b", "fcn", [{"epoch": 1, "time_this_iter_s": 8.0, "devices": 0.5},  # a shared GPU
                                       {"epoch": 2, "time_this_iter_s": 4.0, "devices": 2.0}])  # DDP, 2 GPUs
    write_trial(tmp_path, "c", "segformer", [{"epoch": 1, "time_this_iter_s": 3.0}])  # recorded without devices: 1
    write_trial(tmp_path / "confirm", "d", "fcn", [{"epoch": 1, "time_this_iter_s": 5.0, "devices": 1.0}])
    assert budget.spent_by_model(str(tmp_path)) == {"segformer": 19.0, "fcn": 17.0}
    assert budget.devices_held(0.0, 1) == 1 and budget.devices_held(0.0, 4) == 4 and budget.devices_held(0.25) == 0.25
    assert budget.read_limit(str(tmp_path)) is None and not budget.is_spent(str(tmp_path))
    budget.write_limit(str(tmp_path), 36.0)
    assert budget.read_limit(str(tmp_path)) == 36.0 and budget.is_spent(str(tmp_path))
    budget.write_limit(str(tmp_path), 37.0)
    assert not budget.is_spent(str(tmp_path))
    assert budget.spent_text({"fcn": 17.0, "segformer": 19.0}, 37.0) == (
        "device-time spent: 36 s of the 37 s budget; per model: fcn 17 s, segformer 19 s")
    assert budget.report_lines(str(tmp_path))[0] == "## Device-time budget"


class FakeSearch:
    def __init__(self) -> None:
        self.finished = False

    def is_finished(self) -> bool:
        return self.finished

    def set_finished(self) -> None:
        self.finished = True


class FakeController:
    """What Tune lets a scheduler see (``TrialRunnerWrapper``): the search, the trials, stop_trial."""

    def __init__(self, trials: list) -> None:
        self.search_alg, self.trials, self.stopped = FakeSearch(), trials, []

    def get_trials(self) -> list:
        return self.trials

    def stop_trial(self, trial: SimpleNamespace) -> None:
        self.stopped.append(trial.trial_id)
        trial.status = "TERMINATED"


def test_the_scheduler_stops_each_trial_at_its_next_result_once_spent_and_starts_none(tmp_path: Path) -> None:
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from study.orchestrate.budget import BudgetedFIFO

    root, staging = tmp_path / "study", tmp_path / "staging"
    write_trial(root, "old", "segformer", [{"epoch": 1, "time_this_iter_s": 4.0, "devices": 1.0}])  # an earlier run
    budget.write_limit(str(root), 10.0)

    def trial(trial_id: str, status: str) -> SimpleNamespace:
        return SimpleNamespace(trial_id=trial_id, status=status, local_path=str(staging / f"trial_{trial_id}"))

    a, b, c, pending = trial("a", Trial.RUNNING), trial("b", Trial.RUNNING), trial("c", Trial.RUNNING), trial(
        "p", Trial.PENDING)
    controller = FakeController([a, b, c, pending])
    scheduler = BudgetedFIFO().keep_budget(str(root), epochs=3)

    def result(epoch: int, seconds: float, devices: float = 1.0, done: bool = False) -> dict:
        return {"epoch": epoch, "time_this_iter_s": seconds, "devices": devices, "val_miou": 0.1, "done": done}

    assert scheduler.on_trial_result(controller, a, result(1, 2.0, devices=0.5)) == TrialScheduler.CONTINUE  # 4 + 1
    assert scheduler.on_trial_result(controller, a, result(1, 2.0, done=True)) == TrialScheduler.CONTINUE  # a repeat
    assert scheduler.on_trial_result(controller, b, result(1, 4.0)) == TrialScheduler.CONTINUE  # 9 of 10
    assert scheduler.choose_trial_to_run(controller) is pending  # not spent yet: it may start
    assert scheduler.on_trial_result(controller, b, result(2, 1.0)) == TrialScheduler.STOP  # 10 of 10: spent
    assert read_fate(str(staging), "b")["fate"] == BUDGET and read_fate(str(staging), "b")["epoch"] == 2
    assert controller.search_alg.finished and controller.stopped == ["p"]  # no trial starts
    assert read_fate(str(staging), "p")["fate"] == BUDGET and read_fate(str(staging), "p")["epoch"] == 0
    assert scheduler.choose_trial_to_run(controller) is None
    assert scheduler.on_trial_result(controller, a, result(2, 3.0)) == TrialScheduler.STOP  # at its next result
    assert read_fate(str(staging), "a")["fate"] == BUDGET
    # a trial whose next result is its last epoch completed: no budget fate (the FateRecorder records it)
    assert scheduler.on_trial_result(controller, c, result(3, 3.0)) == TrialScheduler.CONTINUE
    assert read_fate(str(staging), "c") == {}


def test_a_resumed_search_reopens_when_the_budget_was_raised(tmp_path: Path) -> None:
    from ray.tune.search import Searcher

    from study.orchestrate.budget import BudgetSearch

    write_trial(tmp_path, "a", "segformer", [{"epoch": 1, "time_this_iter_s": 5.0}])
    state = {"counter": 1, "total_samples": 3, "finished": True, "experiment": None}  # ended by the budget
    search = BudgetSearch(Searcher(), str(tmp_path))
    budget.write_limit(str(tmp_path), 5.0)  # spent: it stays finished
    search.set_state(dict(state))
    assert search.is_finished()
    budget.write_limit(str(tmp_path), 60.0)  # raised on --resume: it asks for trials again
    search.set_state(dict(state))
    assert not search.is_finished()


def test_optuna_is_told_pruned_for_a_trial_the_budget_stopped_short() -> None:
    from optuna.trial import TrialState

    from study.orchestrate.optuna_store import told_state

    assert told_state({"val_miou": 0.2, "epoch": 1}, False, 2) == TrialState.PRUNED
    assert told_state({"val_miou": 0.2, "epoch": 2}, False, 2) == TrialState.COMPLETE


@pytest.mark.slow
def test_a_study_whose_budget_is_spent_by_its_first_validation_starts_no_other_trial_and_resumes_with_more(
        ray_cluster: str, small_toy_root: Path, cache_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    import optuna

    from study import run
    from study.cli import main_guard

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "dataset": "pets", "epochs": 2, "batch_size": 8, "image_size": "32", "val_every": 1, "num_samples": 2,
        "searcher": "optuna", "sampler": "random", "scheduler": "none", "pretrain": "none", "budget": "0.001s",
        "space": {"model": {"choice": ["segformer"]}, "init": {"choice": ["scratch"]},
                  "lr": {"loguniform": [1.0e-4, 3.0e-3]}}}, sort_keys=False))
    argv = ["--space", str(space), "--name", "b", "--storage", str(tmp_path / "results"), "--data-root",
            str(small_toy_root), "--cache-dir", str(cache_dir), "--max-concurrent", "1", "--no-report"]
    assert main_guard("study.run", run.main, argv) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    experiment = tmp_path / "results" / "b"
    summary = pd.read_csv(experiment / "summary.csv")
    assert len(summary) == 1, summary  # the second trial never started
    assert summary["stop_reason"].tolist() == [BUDGET] and summary["epochs"].tolist() == [1]
    assert summary["best_checkpoint"].notna().all() and summary["best_checkpoint"].astype(str).str.len().gt(0).all()
    assert "device-time spent: " in out and "of the 0.001 s budget (spent); per model: segformer" in out, out[-2000:]
    study = optuna.load_study(study_name="b", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["PRUNED"]

    # --resume with more: the search goes on with what is left, the stopped trial stays stopped
    assert main_guard("study.run", run.main, [*argv, "--resume", "--budget", "1h"]) == 0, \
        capsys.readouterr().err[-3000:]
    summary = pd.read_csv(experiment / "summary.csv")
    assert len(summary) == 2 and sorted(summary["stop_reason"]) == [BUDGET, "completed"], summary
    assert json.loads((experiment / "budget.json").read_text())["budget_s"] == 3600.0
    study = optuna.load_study(study_name="b", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "PRUNED"]
