"""What ``study.run`` shows a person: a line per stage, a live table of trials, a line per ended trial,
then the ranked table. Ray's own output stays in its log files (``--verbose`` brings it back).

On a terminal the trial table updates in place (rich ``Live``); otherwise (CI, ``tee``) it is printed
as a few plain lines every ``interval_s`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pandas as pd
from ray import tune
from rich.console import Console
from rich.live import Live
from rich.table import Table

from foundation import storage
from study.budget import read_limit, spent_by_model, spent_text
from study.fates import BUDGET, COMPLETED, ERROR, INFEASIBLE, STOPPED_BY_ASHA, fate_of
from study.layout import SUMMARY_FILE, error_file, trial_dir, tune_results
from study.options import show
from study.orchestrate.stops import staging_dir
from study.settings import StudySettings
from study.summary import trial_error


def console() -> Console:
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, highlight=False)


def say(text: str) -> None:
    """One line of the study's progress (a stage, a finished trial)."""
    console().print(text, markup=False, soft_wrap=True)


class TrialTable(tune.Callback):
    """Tune callback that keeps one row per trial and shows them (see module docstring)."""

    def __init__(self, settings: StudySettings, interval_s: float = 30.0) -> None:
        self.settings, self.interval_s = settings, interval_s
        self.rows: dict[str, dict[str, Any]] = {}
        self.live: Live | None = None
        self.last_print = time.monotonic()

    # ---- Tune's hooks
    def setup(self, **info: Any) -> None:
        if sys.stdout.isatty():
            self.live = Live(self.render(), console=console(), refresh_per_second=2, transient=True)
            self.live.start()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self.rows.setdefault(trial.trial_id, {"epoch": 0, "val_miou": None, "best": None})
        row.update({k: trial.config.get(k) for k in self.settings.searched_keys()}, status="running")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self.rows.setdefault(trial.trial_id, {"best": None})
        row.update(epoch=result.get("epoch", 0), val_miou=result.get("val_miou"), status="running")
        if row["val_miou"] is not None and (row["best"] is None or row["val_miou"] > row["best"]):
            row["best"] = row["val_miou"]

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.announce_end(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.announce_end(trial)

    def announce_end(self, trial: Any) -> None:
        """One line per ended trial, from what the summary reads too: the fate recorded for it
        (``study.fates``, by the callback before this one) and every result Tune recorded (the driver's copy,
        which storage receives at Tune's next sync), restored results included."""
        row = self.rows.setdefault(trial.trial_id, {"epoch": 0, "best": None})
        staging, experiment = staging_dir(trial), self.settings.experiment_dir
        record = fate_of(trial.trial_id, staging, experiment)
        fate = record.get("fate", "")
        if fate == INFEASIBLE:
            row["status"] = "infeasible"
            self.announce(f"trial {trial.trial_id} infeasible, not trained: {record.get('detail', '')}")
            return
        if fate == ERROR:
            error = trial_error(experiment, trial.trial_id) or trial_error(staging, trial.trial_id)
            row["status"] = "error"
            self.announce(f"trial {trial.trial_id} error: {error} (details: "
                          f"{storage.display(error_file(self.settings.experiment_dir, trial.trial_id))}, "
                          f"{storage.display(trial_dir(self.settings.experiment_dir, trial.trial_id))}/error.txt)")
            return
        # The staging copy, once Tune has logged this trial in this run (it then holds the restored rows too);
        # storage's, for a trial restored in a new Ray session that ended at once.
        recorded = max(tune_results(staging, trial.trial_id), tune_results(experiment, trial.trial_id), key=len)
        row["epoch"] = max([0, *(r["epoch"] for r in recorded if "epoch" in r)])
        scores = [r["val_miou"] for r in recorded if r.get("val_miou") is not None]
        row["best"] = max(scores) if scores else None
        row["status"] = {STOPPED_BY_ASHA: "stopped", BUDGET: "budget"}.get(fate, "done")
        best = f"{row['best']:.4f}" if row["best"] is not None else "-"
        if fate == BUDGET and not recorded:  # it was waiting to start when the budget was spent
            self.announce(f"trial {trial.trial_id} not started: the device-time budget is spent")
            return
        said = {STOPPED_BY_ASHA: "stopped by ASHA", COMPLETED: "finished",
                BUDGET: "stopped (budget spent)"}.get(fate, fate or "ended")
        self.announce(f"trial {trial.trial_id} {said} at epoch {row['epoch']}/{self.settings.epochs}: "
                      f"best val mIoU {best}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.live is not None:
            self.live.update(self.render())
        elif time.monotonic() - self.last_print >= self.interval_s:
            self.last_print = time.monotonic()
            self.print_plain()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    # ---- showing it
    def announce(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, markup=False, soft_wrap=True)
        else:
            say(text)

    def cells(self, trial_id: str, row: dict[str, Any]) -> list[str]:
        return [trial_id, *(show(StudySettings, key, row.get(key)) for key in self.settings.searched_keys()),
                row.get("status", "pending"),
                f"{row.get('epoch', 0)}/{self.settings.epochs}", _fmt(row.get("val_miou"), ".4f"),
                _fmt(row.get("best"), ".4f")]

    def render(self) -> Table:
        columns = ("trial", *self.settings.searched_keys(), "status", "epoch", "val mIoU", "best")
        table = Table(*columns, title=f"segstudy {self.settings.name}: trials", title_justify="left")
        for trial_id, row in self.rows.items():
            table.add_row(*self.cells(trial_id, row))
        return table

    def print_plain(self) -> None:
        counts = pd.Series([r.get("status", "pending") for r in self.rows.values()]).value_counts()
        say(time.strftime("%H:%M:%S ") + ", ".join(f"{n} {s}" for s, n in counts.items()))
        for trial_id, row in self.rows.items():
            if row.get("status") == "running":
                say("  " + " ".join(self.cells(trial_id, row)))


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(settings: StudySettings, summary: pd.DataFrame) -> None:
    table = Table(title=f"segstudy {settings.name}: trials ranked by best val mIoU", title_justify="left")
    keys = settings.searched_keys()
    for column in ("rank", "trial", *keys, "seed", "epochs", "best val mIoU", "stopped early"):
        table.add_column(column, justify="right" if column not in ("trial", "model", "init") else "left")
    for rank, row in enumerate(summary.itertuples(), start=1):
        table.add_row(str(rank), str(row.trial_id), *(show(StudySettings, k, getattr(row, k, None)) for k in keys),
                      str(row.seed), f"{row.epochs}/{settings.epochs}", f"{row.best_val_miou:.4f}",
                      "yes" if row.stopped_early else "budget" if getattr(row, "stop_reason", "") == BUDGET else
                      (row.status if row.status != "done" else "no"))
    console().print(table)
    limit = read_limit(settings.experiment_dir)
    if limit is not None:  # one line: what the trials spent of the budget, per model (study.budget)
        say(spent_text(spent_by_model(settings.experiment_dir), limit))
    say(f"results: {storage.display(settings.experiment_dir)} ({SUMMARY_FILE})")
