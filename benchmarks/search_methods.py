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


@dataclass(frozen=True)
class Recipe:
    """An Optuna-based method: its sampler, how trials are stopped, and how a stopped trial is told.

    ``startup``: TPE's random startup trials (None: Optuna's 10); ``grace``: ASHA's first rung in epochs (an int),
    or a share of the epochs (a float below 1: 0.5 is half the epochs, rounded down, at least 1); ``brackets``:
    Ray's ``brackets`` (Hyperband over grace periods)."""

    what: str
    sampler: str = "tpe"  # tpe | tpe_liar | random
    startup: int | None = None
    asha: bool = True
    grace: int | float = 1
    rf: int = 4
    brackets: int = 1
    told: str = "complete"
    step: str = "iteration"
    pruner: str | None = None  # "hyperband": Optuna's HyperbandPruner() instead of ASHA


OPTUNA_RECIPES: dict[str, Recipe] = {
    # segstudy's default: study/samplers.py (tpe), the study's ASHA (StudySettings: grace_period, reduction_factor),
    # optuna_store.py (a stopped trial told PRUNED, its values by epoch)
    "segstudy": Recipe("TPESampler(constant_liar=True) + ASHA(grace 2, rf 2); a stopped trial told PRUNED (the "
                       "default, kept by the benchmark: docs/search-benchmark.md)", "tpe_liar", grace=2, rf=2,
                       told="pruned", step="epoch"),
    "ray_default": Recipe("OptunaSearch's TPESampler() + ASHAScheduler() defaults (grace 1, rf 4); stopped -> "
                          "COMPLETE"),
    "random_asha": Recipe("RandomSampler() + ASHAScheduler() defaults (grace 1, rf 4); stopped -> COMPLETE",
                          "random"),
    "tpe_no_stopping": Recipe("TPESampler(), every trial to its last epoch", asha=False),
    "tpe_hyperband": Recipe("TPESampler() + HyperbandPruner() defaults (min_resource 1, max 'auto', rf 3)",
                            asha=False, pruner="hyperband", step="epoch"),
}
# Candidates for the default, measured beside it (docs/search-benchmark.md says which won and why).
CANDIDATES: dict[str, Recipe] = {
    "cand_startup4": Recipe("TPE(liar, 4 startup) + ASHA(grace 2, rf 2), PRUNED", "tpe_liar", startup=4, grace=2,
                            rf=2, told="pruned", step="epoch"),
    "cand_brackets3": Recipe("TPE(liar) + ASHA(grace 1, rf 2, 3 brackets), PRUNED", "tpe_liar", grace=1, rf=2,
                             brackets=3, told="pruned", step="epoch"),
    "cand_half4": Recipe("TPE(liar, 4 startup) + ASHA(grace half the epochs, rf 2), PRUNED", "tpe_liar", startup=4,
                        grace=0.5, rf=2, told="pruned", step="epoch"),
    "cand_half10": Recipe("TPE(liar) + ASHA(grace half the epochs, rf 2), PRUNED", "tpe_liar", grace=0.5, rf=2,
                          told="pruned", step="epoch"),
    "cand_half_rf3": Recipe("TPE(liar, 4 startup) + ASHA(grace half the epochs, rf 3), PRUNED", "tpe_liar",
                            startup=4, grace=0.5, rf=3, told="pruned", step="epoch"),
    "cand_third": Recipe("TPE(liar, 4 startup) + ASHA(grace a third of the epochs, rf 2), PRUNED", "tpe_liar",
                         startup=4, grace=0.34, rf=2, told="pruned", step="epoch"),
    "cand_quarter_b2": Recipe("TPE(liar, 4 startup) + ASHA(grace a quarter, rf 2, 2 brackets), PRUNED", "tpe_liar",
                           startup=4, grace=0.25, rf=2, brackets=2, told="pruned", step="epoch"),
    "cand_nostop4": Recipe("TPE(liar, 4 startup), no stopping", "tpe_liar", startup=4, asha=False),
    "cand_b3_startup4": Recipe("TPE(liar, 4 startup) + ASHA(grace 1, rf 2, 3 brackets), PRUNED", "tpe_liar",
                               startup=4, grace=1, rf=2, brackets=3, told="pruned", step="epoch"),
    "cand_b3_rf3": Recipe("TPE(liar, 4 startup) + ASHA(grace 1, rf 3, 3 brackets), PRUNED", "tpe_liar", startup=4,
                          grace=1, rf=3, brackets=3, told="pruned", step="epoch"),
    "cand_b2": Recipe("TPE(liar, 4 startup) + ASHA(grace 1, rf 2, 2 brackets), PRUNED", "tpe_liar", startup=4,
                      grace=1, rf=2, brackets=2, told="pruned", step="epoch"),
    "cand_b4": Recipe("TPE(liar, 4 startup) + ASHA(grace 1, rf 2, 4 brackets), PRUNED", "tpe_liar", startup=4,
                      grace=1, rf=2, brackets=4, told="pruned", step="epoch"),
}


def optuna_method(name: str, space: Space, epochs: int, seed: int) -> OptunaMethod:
    """An Optuna-based method built from its ``Recipe``."""
    import optuna

    recipe = {**OPTUNA_RECIPES, **CANDIDATES}[name]
    startup = {} if recipe.startup is None else {"n_startup_trials": recipe.startup}
    sampler = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, **startup),
               "tpe_liar": lambda: optuna.samplers.TPESampler(seed=seed, constant_liar=True, **startup),
               "random": lambda: optuna.samplers.RandomSampler(seed=seed)}[recipe.sampler]()
    asha = None
    if recipe.asha:
        grace = min(int(recipe.grace), epochs) if isinstance(recipe.grace, int) else max(1, int(epochs * recipe.grace))
        asha = Asha(epochs, grace_period=grace, reduction_factor=recipe.rf, brackets=recipe.brackets,
                    rng=np.random.default_rng(seed))
    pruner = optuna.pruners.HyperbandPruner() if recipe.pruner == "hyperband" else None
    return OptunaMethod(space, epochs, sampler, asha=asha, pruner=pruner, told=recipe.told, step=recipe.step)


OPTUNA_METHODS = {name: recipe.what for name, recipe in OPTUNA_RECIPES.items()}
