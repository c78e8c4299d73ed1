"""The peers of ``benchmarks.search_replay``, each with its own recommended defaults, on the same protocol as
``benchmarks.search_methods`` (ask, observe after each validation, finish). Their packages live in the benchmark's
own environment only (``benchmarks/requirements-search.txt``, ``.venv-search``); a missing one raises ImportError,
and the replay records the peer as skipped.

- ``dehb``: DEHB (``dehb.DEHB``, eta 3, its DE defaults), asked and told one job at a time. A job trains its
  configuration from scratch to its fidelity (epochs; the first validated epoch at or past it) and DEHB is told
  1 - val mIoU there, with the epochs spent as cost: DEHB does not continue a run from a lower fidelity.
- ``smac_mf``: SMAC3's ``MultiFidelityFacade`` (Hyperband intensifier, eta 3, random forest, its defaults),
  through ``ask``/``tell`` the same way, from scratch at each budget.
- ``mobster``, ``hyper_tune``: Syne Tune's MOBSTER (ASHA + a multi-fidelity GP searcher) and Hyper-Tune (its GP
  model across rungs, brackets drawn from it), their defaults (grace 1, rf 3, ``type="stopping"``: the replay does
  not pause and resume trials), told every validation and stopping trials themselves. Syne Tune 0.16, PyPI's
  newest, dropped both: ``syne-tune[gpsearchers]==0.14.2`` has them (``legacy_baselines``).
- ``synetune_bohb``: Syne Tune's ``BOHB`` (asynchronous successive halving with BOHB's KDE searcher, grace 1,
  rf 3), the same way, also from ``legacy_baselines``: 0.14.2's newer schedulers import botorch's searcher, which
  fails without torch (``NameError: name 'Tensor' is not defined``), and this environment has no torch.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from datetime import datetime
from typing import Any

from benchmarks.search_methods import Job, Space

PEER_METHODS = {
    "dehb": "DEHB 0.1.2 defaults (eta 3, rand1_bin, F 0.5, CR 0.5); each job from scratch to its fidelity",
    "smac_mf": "SMAC3 2.4 MultiFidelityFacade defaults (Hyperband eta 3, RF); each trial from scratch to its budget",
    "mobster": "Syne Tune 0.14.2 MOBSTER defaults (ASHA grace 1, rf 3, GP searcher, type stopping)",
    "hyper_tune": "Syne Tune 0.14.2 HyperTune defaults (grace 1, rf 3, Hyper-Tune GP, type stopping)",
    "synetune_bohb": "Syne Tune 0.14.2 BOHB defaults (ASHA grace 1, rf 3, KDE searcher), stopping trials",
}


def config_space(space: Space, seed: int) -> Any:
    from ConfigSpace import Categorical, ConfigurationSpace, Constant, Float

    cs = ConfigurationSpace(seed=seed)
    for key, (low, high, log) in space.ranges.items():
        cs.add(Float(key, (low, high), log=log))
    for key, labels in space.choices.items():
        cs.add(Categorical(key, labels) if len(labels) > 1 else Constant(key, labels[0]))
    return cs


def _values(config: Any) -> dict[str, Any]:
    return {k: config[k] for k in config.keys()}


class Dehb:
    def __init__(self, space: Space, epochs: int, first_epoch: int, seed: int) -> None:
        from dehb import DEHB

        self.folder = tempfile.mkdtemp(prefix="dehb-")
        self.dehb = DEHB(cs=config_space(space, seed), min_fidelity=first_epoch, max_fidelity=epochs, eta=3,
                         n_workers=1, seed=seed, output_path=self.folder, save_freq="end", log_level="ERROR")

    def ask(self) -> Job:
        job = self.dehb.ask()
        return Job(job, _values(job["config"]), float(job["fidelity"]))  # a ConfigSpace Configuration

    def observe(self, job: Job, epoch: int, value: float) -> bool:
        return True

    def finish(self, job: Job, epoch: int, value: float, completed: bool) -> None:
        self.dehb.tell(job.handle, {"fitness": 1 - value, "cost": float(epoch)})

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)


class SmacMultiFidelity:
    def __init__(self, space: Space, epochs: int, first_epoch: int, seed: int) -> None:
        from smac import MultiFidelityFacade, Scenario
        from smac.runhistory.dataclasses import TrialValue

        self.folder = tempfile.mkdtemp(prefix="smac-")
        scenario = Scenario(config_space(space, seed), deterministic=True, n_trials=100_000,
                            min_budget=first_epoch, max_budget=epochs, seed=seed, output_directory=self.folder)

        def never_called(config: Any, seed: int = 0, budget: float = 1.0) -> float:
            raise RuntimeError("the replay asks and tells")

        self.value = TrialValue
        self.smac = MultiFidelityFacade(scenario, never_called, overwrite=True, logging_level=40)

    def ask(self) -> Job:
        info = self.smac.ask()
        return Job(info, _values(info.config), float(info.budget))

    def observe(self, job: Job, epoch: int, value: float) -> bool:
        return True

    def finish(self, job: Job, epoch: int, value: float, completed: bool) -> None:
        self.smac.tell(job.handle, self.value(cost=1 - value, time=float(epoch)))

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)


def synetune_space(space: Space) -> dict[str, Any]:
    from syne_tune.config_space import choice, loguniform, uniform

    config: dict[str, Any] = {k: (loguniform if log else uniform)(low, high)
                              for k, (low, high, log) in space.ranges.items()}
    config.update({k: choice(labels) for k, labels in space.choices.items()})
    return config


class SyneTune:
    """A Syne Tune scheduler told every validation; it stops trials itself (``name``: which one)."""

    def __init__(self, name: str, space: Space, epochs: int, first_epoch: int, seed: int) -> None:
        from syne_tune.backend.trial_status import Trial
        from syne_tune.optimizer.legacy_baselines import BOHB, MOBSTER, HyperTune

        logging.getLogger("syne_tune").setLevel(logging.WARNING)  # a line per result otherwise
        self.trial_class, self.count = Trial, 0
        scheduler = {"mobster": MOBSTER, "hyper_tune": HyperTune, "synetune_bohb": BOHB}[name]
        self.scheduler = scheduler(synetune_space(space), metric="val_miou", resource_attr="epoch", mode="max",
                                   max_t=epochs, random_seed=seed)

    def ask(self) -> Job | None:
        suggestion = self.scheduler.suggest(self.count)
        if suggestion is None:
            return None
        trial = self.trial_class(trial_id=self.count, config=suggestion.config, creation_time=datetime.now())
        self.count += 1
        self.scheduler.on_trial_add(trial)
        return Job(trial, {k: suggestion.config[k] for k in suggestion.config}, float("inf"))

    def observe(self, job: Job, epoch: int, value: float) -> bool:
        from syne_tune.optimizer.scheduler import SchedulerDecision

        decision = self.scheduler.on_trial_result(job.handle, {"epoch": epoch, "val_miou": value})
        return decision == SchedulerDecision.CONTINUE

    def finish(self, job: Job, epoch: int, value: float, completed: bool) -> None:
        if completed:
            self.scheduler.on_trial_complete(job.handle, {"epoch": epoch, "val_miou": value})


def peer_method(name: str, space: Space, epochs: int, first_epoch: int, seed: int) -> Any:
    if name == "dehb":
        return Dehb(space, epochs, first_epoch, seed)
    if name == "smac_mf":
        return SmacMultiFidelity(space, epochs, first_epoch, seed)
    if name in ("mobster", "hyper_tune", "synetune_bohb"):
        return SyneTune(name, space, epochs, first_epoch, seed)
    raise KeyError(f"unknown method {name!r}; known: {json.dumps(sorted(PEER_METHODS))}")
