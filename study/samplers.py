"""The Optuna sampler of a search (``settings.sampler``), seeded with the study's seed.

- ``tpe`` (the default): TPE with ``constant_liar``, Optuna's advice for parallel workers: the trials still
  running count as bad points, so trials suggested at the same time do not pile onto one point. One objective
  or several (MOTPE).
- ``nsga2``: NSGA-II, whose population is a quarter of the study's trials (4 to 50; Optuna's default of 50
  would leave a study of fewer than 50 trials all random).
- ``gp``: Optuna's Gaussian-process sampler.
- ``random``: independent uniform draws (the baseline of ``benchmarks.search_replay``).
- ``auto``: optunahub's ``AutoSampler`` (it picks one of the above as the study grows), when optunahub is
  installed and its module can be had; else a one-line ``ConfigError``.

Constraints reach every sampler through each trial's constraint values (``optuna_store``), which the samplers
read from the trial (``FrozenTrial.constraints``), as the Optuna 5 API has it instead of a ``constraints_func``.

Every sampler built here can be pickled: Ray pickles the searcher with it, when the Tuner is built and each time
it saves the searcher's state. Optuna 5.1's genetic samplers hold a ``threading.Lock``, which pickle refuses:
``NSGAIISampler`` here leaves it out and makes a new one when unpickled, keeping the rest of its state (its
random state among it). ``study.preflight.check_sampler`` refuses, before Ray, a sampler that cannot be pickled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import optuna

from foundation.errors import ConfigError


def nsga2_population(num_samples: int) -> int:
    """NSGA-II's population for a study of ``num_samples`` trials: a quarter of them, 4 to 50."""
    return max(4, min(50, num_samples // 4))


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable: its lock (``BaseGASampler._thread_lock``) is not pickled but made anew."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def auto_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """optunahub's AutoSampler, or a one-line ConfigError when it cannot be had."""
    try:
        import optunahub
    except ImportError:
        raise ConfigError("--sampler auto: optunahub is not installed (pip install optunahub), or choose one of "
                          "tpe, nsga2, gp, random") from None
    try:
        module = optunahub.load_module("samplers/auto_sampler")
    except Exception as exc:  # the hub is a download: offline, or the module's own dependencies missing
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"--sampler auto: optunahub's AutoSampler could not be loaded ({type(exc).__name__}: "
                          f"{first}); choose one of tpe, nsga2, gp, random") from None
    return module.AutoSampler(seed=seed)


SAMPLERS: dict[str, Callable[[int, int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, trials: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
    "nsga2": lambda seed, trials: NSGAIISampler(seed=seed, population_size=nsga2_population(trials)),
    "gp": lambda seed, trials: optuna.samplers.GPSampler(seed=seed),
    "random": lambda seed, trials: optuna.samplers.RandomSampler(seed=seed),
    "auto": lambda seed, trials: auto_sampler(seed),
}


def build_sampler(name: str, seed: int, num_samples: int = 8) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` (one of ``SAMPLERS``), seeded with ``seed``."""
    if name not in SAMPLERS:
        raise ConfigError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name](seed, num_samples)
