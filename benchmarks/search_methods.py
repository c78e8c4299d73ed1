"""The searchers ``benchmarks.search_replay`` replays, on one protocol, sequentially (one trial at a time):

    job = method.ask()                         a new trial: its suggested values and the epoch it may run to
    method.observe(job, epoch, val_miou)       after each validation; False stops the trial there
    method.finish(job, epoch, val_miou, completed)

The Ray-based methods run here without Ray, with the same algorithms: Optuna's own ask/tell (the sampler Ray's
``OptunaSearch`` would build, told what Ray tells it) and ``Asha``, a line-for-line reimplementation of Ray's
``AsyncHyperBandScheduler`` (tests/test_search_bench.py checks its decisions against Ray's on a small case).
A real Tune run costs seconds per trial; a replay of thousands of trials must not.

``Space`` is the search space a curve set implies: a numeric key with three values or more becomes a range
(log-scaled when its values span a factor of 10 or more), any other key a choice; a suggestion replays the
recorded configuration nearest to it (the same choices, then the nearest numbers on the scaled axes).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Space:
    def __init__(self, configurations: list[dict[str, Any]]) -> None:
        self.configurations = configurations
        self.ranges: dict[str, tuple[float, float, bool]] = {}  # key -> (low, high, log)
        self.choices: dict[str, list[str]] = {}  # key -> the JSON of each value
        for key in configurations[0]:
            values = [c.get(key) for c in configurations]
            distinct = sorted({json.dumps(v, sort_keys=True) for v in values})
            if all(map(_is_number, values)) and len(distinct) >= 3:
                low, high = min(values), max(values)
                self.ranges[key] = (float(low), float(high), low > 0 and high / low >= 10)
            else:
                self.choices[key] = distinct

    def scaled(self, key: str, value: float) -> float:
        low, high, log = self.ranges[key]
        if log:
            return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
        return (value - low) / (high - low)

    def nearest(self, values: dict[str, Any]) -> int:
        """The index of the recorded configuration nearest to suggested ``values`` (choices as their JSON)."""
        def distance(config: dict[str, Any]) -> tuple[int, float]:
            mismatched = sum(json.dumps(config.get(k), sort_keys=True) != values[k] for k in self.choices)
            return mismatched, sum(abs(self.scaled(k, config[k]) - self.scaled(k, float(values[k])))
                                   for k in self.ranges)

        return min(range(len(self.configurations)), key=lambda i: distance(self.configurations[i]))

    def suggest_optuna(self, trial: Any) -> dict[str, Any]:
        values: dict[str, Any] = {k: trial.suggest_float(k, low, high, log=log)
                                  for k, (low, high, log) in self.ranges.items()}
        values.update({k: trial.suggest_categorical(k, labels) for k, labels in self.choices.items()})
        return values


@dataclass
class Job:
    handle: Any
    values: dict[str, Any]
    max_epoch: float
    results: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Asha:
    """Ray's ``AsyncHyperBandScheduler`` (ray/tune/schedulers/async_hyperband.py, ray 2.60), stop_last_trials
    on: rungs at grace * rf**k per bracket; a trial reaching a rung it has no value in is stopped when its value is
    below the rung's ``np.nanpercentile(recorded, (1 - 1/rf) * 100)`` of the values recorded before it, then
    records its value there. Brackets are drawn as Ray draws them (softmax of their rung counts), from ``rng``."""

    def __init__(self, max_t: int, grace_period: int = 1, reduction_factor: float = 4, brackets: int = 1,
                 rng: np.random.Generator | None = None) -> None:
        self.rf, self.max_t = reduction_factor, max_t
        self.brackets = []
        for s in range(brackets):
            count = int(np.log(max_t / grace_period) / np.log(reduction_factor) - s + 1)
            self.brackets.append([(grace_period * reduction_factor ** (k + s), {}) for k in reversed(range(count))])
        self.assigned: dict[Any, list] = {}
        self.rng = rng or np.random.default_rng(0)

    def add(self, trial: Any) -> None:
        sizes = np.array([len(b) for b in self.brackets])
        probs = np.e ** (sizes - sizes.max())
        self.assigned[trial] = self.brackets[self.rng.choice(len(self.brackets), p=probs / probs.sum())]

    def result(self, trial: Any, t: float, value: float) -> bool:
        """True: continue."""
        return t < self.max_t and self._on_result(self.assigned[trial], trial, t, value)

    def complete(self, trial: Any, t: float, value: float) -> None:
        self._on_result(self.assigned.pop(trial), trial, t, value)

    def _on_result(self, bracket: list, trial: Any, t: float, value: float) -> bool:
        for milestone, recorded in bracket:
            if t < milestone or trial in recorded:
                continue
            cutoff = np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100) if recorded else None
            recorded[trial] = value
            return cutoff is None or value >= cutoff
        return True


class OptunaMethod:
    """An Optuna sampler asked and told directly, optionally with ``Asha`` or an Optuna pruner deciding stops.

    ``told``: how a stopped trial is told, "complete" (Ray's ``OptunaSearch``: COMPLETE with its last value) or
    "pruned" (segstudy's ``StoredOptunaSearch``: PRUNED, its intermediate values kept). ``step``: the step of its
    intermediate values, "iteration" (Ray's: the result's count) or "epoch" (segstudy's and a pruner's)."""

    def __init__(self, space: Space, epochs: int, sampler: Any, asha: Asha | None = None, pruner: Any = None,
                 told: str = "complete", step: str = "epoch") -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.space, self.epochs, self.asha, self.pruner = optuna, space, epochs, asha, pruner
        self.told, self.step = told, step
        # a fixed name: HyperbandPruner draws each trial's bracket from crc32(study name, trial number), and an
        # unnamed study's name is random, so a rerun would not repeat itself
        self.study = optuna.create_study(study_name="replay", direction="maximize", sampler=sampler,
                                         pruner=pruner or optuna.pruners.NopPruner())

    def ask(self) -> Job:
        trial = self.study.ask()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant_liar's ExperimentalWarning
            values = self.space.suggest_optuna(trial)
        if self.asha is not None:
            self.asha.add(trial.number)
        return Job(trial, values, self.epochs)

    def observe(self, job: Job, epoch: int, value: float) -> bool:
        job.results += 1
        job.handle.report(value, step=epoch if self.step == "epoch" else job.results)
        if self.asha is not None:
            return self.asha.result(job.handle.number, epoch, value)
        return self.pruner is None or not job.handle.should_prune()

    def finish(self, job: Job, epoch: int, value: float, completed: bool) -> None:
        if self.asha is not None:
            self.asha.complete(job.handle.number, epoch, value)
        state = self.optuna.trial.TrialState
        if completed or self.told == "complete":
            self.study.tell(job.handle, value, state=state.COMPLETE)
        else:
            self.study.tell(job.handle, state=state.PRUNED)


def optuna_method(name: str, space: Space, epochs: int, seed: int) -> OptunaMethod:
    """The Optuna-based methods, each with its own defaults (``METHODS`` says which)."""
    import optuna

    tpe = optuna.samplers.TPESampler
    rng = np.random.default_rng(seed)
    if name == "segstudy":  # study/samplers.py, study/orchestrate/tuner.py + optuna_store.py, study/settings.py
        return OptunaMethod(space, epochs, tpe(seed=seed, constant_liar=True), told="pruned", step="epoch",
                            asha=Asha(epochs, grace_period=min(2, epochs), reduction_factor=2, rng=rng))
    if name == "ray_default":  # OptunaSearch() + ASHAScheduler(time_attr="epoch", max_t=epochs), Ray's defaults
        return OptunaMethod(space, epochs, tpe(seed=seed), told="complete", step="iteration",
                            asha=Asha(epochs, grace_period=1, reduction_factor=4, rng=rng))
    if name == "random_asha":
        return OptunaMethod(space, epochs, optuna.samplers.RandomSampler(seed=seed), told="complete",
                            step="iteration", asha=Asha(epochs, grace_period=1, reduction_factor=4, rng=rng))
    if name == "tpe_no_stopping":
        return OptunaMethod(space, epochs, tpe(seed=seed))
    if name == "tpe_hyperband":
        return OptunaMethod(space, epochs, tpe(seed=seed), pruner=optuna.pruners.HyperbandPruner())
    raise KeyError(name)


OPTUNA_METHODS = {
    "segstudy": "TPESampler(constant_liar=True) + ASHA(grace 2, rf 2); a stopped trial told PRUNED (today's default)",
    "ray_default": "OptunaSearch's TPESampler() + ASHAScheduler() defaults (grace 1, rf 4); stopped -> COMPLETE",
    "random_asha": "RandomSampler() + ASHAScheduler() defaults (grace 1, rf 4); stopped -> COMPLETE",
    "tpe_no_stopping": "TPESampler(), every trial to its last epoch",
    "tpe_hyperband": "TPESampler() + HyperbandPruner() defaults (min_resource 1, max 'auto', rf 3)",
}
