"""Which searcher finds the best configuration for a budget? A replay of recorded curves, not a test.

    python -m benchmarks.search_replay [--curves FILE ...] [--seeds 20] [--budget-trials 12] [--methods ...]
        [--out benchmarks/results/search-benchmark-toy.json]

Each curve file (``benchmarks/curves.py``: recorded val mIoU per validated epoch, seconds per epoch, per
configuration and seed) is replayed through every method (``benchmarks.search_methods``, the peers in
``benchmarks.search_peers``), one trial at a time, without training and without Ray: a suggested configuration
replays the nearest recorded one, validation by validation, and the method decides after each whether it goes on.

- Budget: ``--budget-trials`` K full-length trials, stated two ways: K x E trial-epochs, and K x E x (mean
  epoch_seconds over the set's runs) device-seconds, spent from each run's own ``epoch_seconds``. A search runs
  until both are spent; what it found is read at 25 %, 50 % and 100 % of each.
- Found: the configuration and epoch with the best val mIoU seen within the budget (any trial, stopped or not:
  the study keeps every trial's best checkpoint). Before any validation, the set's worst configuration.
- Seeds: run r's searcher seed is r; with several recorded seeds per configuration it sees the curves of seed
  number r mod n, and its pick is scored by the mean of the other seeds' curves at the same epoch, so luck on one
  seed is not rewarded. The set's best and median are those of the scoring curves (each configuration's best
  epoch): normalised regret = (best - found) / (best - median).
- Statistics (``benchmarks.search_stats``): per budget, regret mean and IQM with percentile-bootstrap 95 % CIs,
  and the share of runs within 0.01 val mIoU of the best.

The output JSON: per curve set, keyed by its file's name, ``default`` (segstudy's default, ``segstudy``), the
budget, and ``methods: {NAME: {"budget_share": {"0.25"|"0.5"|"1.0": {...}}, "budget_share_trial_epochs": ...}}``
(``budget_share`` in device-seconds). The peers need ``.venv-search`` (``benchmarks/requirements-search.txt``);
a peer whose package is missing is recorded as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.curves import CurveSet, Run, params_key, read_curves
from benchmarks.search_methods import CANDIDATES, OPTUNA_METHODS, Space, optuna_method
from benchmarks.search_stats import normalised_regret, summarise
from foundation.errors import ConfigError

CURVES = "benchmarks/results/curves-toy.json"
DEFAULT = "segstudy"
SHARES = (0.25, 0.5, 1.0)
MAX_TRIALS = 5000  # a method that never spends the budget (nothing left to suggest) ends here


def make_method(name: str, space: Space, epochs: int, first_epoch: int, seed: int) -> Any:
    if name in OPTUNA_METHODS or name in CANDIDATES:
        return optuna_method(name, space, epochs, seed)
    from benchmarks.search_peers import peer_method

    return peer_method(name, space, epochs, first_epoch, seed)


def search(method: Any, space: Space, runs: list[Run], budget: dict[str, float]) -> list[tuple]:
    """One search until both budgets are spent: every validation seen, as
    (trial-epochs spent, device-seconds spent, configuration index, epoch, val mIoU)."""
    spent = {"trial_epochs": 0.0, "device_seconds": 0.0}
    seen: list[tuple] = []
    for _ in range(MAX_TRIALS):
        if all(spent[k] >= budget[k] for k in budget):
            break
        job = method.ask()
        if job is None:
            break
        index = space.nearest(job.values)
        run, done, epoch, value = runs[index], 0, 0, float("nan")
        for epoch, value in run.curve.items():
            spent["trial_epochs"] += epoch - done
            spent["device_seconds"] += (epoch - done) * run.epoch_seconds
            done = epoch
            seen.append((spent["trial_epochs"], spent["device_seconds"], index, epoch, value))
            if not method.observe(job, epoch, value) or epoch >= job.max_epoch:
                break
        method.finish(job, epoch, value, completed=epoch >= max(run.curve))
    return seen


def pick(seen: list[tuple], kind: int, budget: float) -> tuple[int, int] | None:
    """(configuration, epoch) with the best val mIoU seen within ``budget`` (``kind`` 0: trial-epochs,
    1: device-seconds)."""
    within = [s for s in seen if s[kind] <= budget + 1e-9]
    if not within:
        return None
    best = max(within, key=lambda s: s[4])
    return best[2], best[3]


def scoring_curves(curves: CurveSet, configs: list[dict], seed: int) -> list[dict[int, float]]:
    """Per configuration: the mean curve of its seeds other than ``seed`` (its own where it has no other)."""
    by_config: dict[str, list[Run]] = {}
    for run in curves.runs:
        by_config.setdefault(params_key(run.params), []).append(run)
    scored = []
    for config in configs:
        runs = by_config[params_key(config)]
        others = [r for r in runs if r.seed != seed] or [r for r in runs if r.seed == seed] or runs
        epochs = sorted(set.intersection(*(set(r.curve) for r in others)))
        scored.append({e: statistics.mean(r.curve[e] for r in others) for e in epochs})
    return scored


def observed_runs(curves: CurveSet, configs: list[dict], seed: int) -> list[Run]:
    by_key = {(params_key(r.params), r.seed): r for r in curves.runs}
    first = {}
    for run in curves.runs:
        first.setdefault(params_key(run.params), run)
    return [by_key.get((params_key(c), seed), first[params_key(c)]) for c in configs]


def benchmark_set(curves: CurveSet, methods: list[str], seeds: int, budget_trials: float) -> dict[str, Any]:
    configs = curves.configurations()
    space = Space(configs)
    recorded_seeds = curves.seeds()
    first_epoch = min(min(r.curve) for r in curves.runs)
    mean_seconds = statistics.mean(r.epoch_seconds for r in curves.runs)
    budget = {"trial_epochs": budget_trials * curves.epochs,
              "device_seconds": budget_trials * curves.epochs * mean_seconds}
    references = {}
    for seed in recorded_seeds:
        scored = scoring_curves(curves, configs, seed)
        per_config = [max(c.values()) for c in scored]
        references[seed] = {"scored": scored, "best": max(per_config), "median": float(np.median(per_config)),
                            "worst": min(c[max(c)] for c in scored)}
    out: dict[str, Any] = {}
    for name in methods:
        started = time.perf_counter()
        results: dict[str, dict[str, list]] = {k: {str(s): [] for s in SHARES} for k in budget}
        try:
            for r in range(seeds):
                seed = recorded_seeds[r % len(recorded_seeds)]
                ref = references[seed]
                method = make_method(name, space, curves.epochs, first_epoch, r)
                seen = search(method, space, observed_runs(curves, configs, seed), budget)
                for kind, column in (("trial_epochs", 0), ("device_seconds", 1)):
                    for share in SHARES:
                        chosen = pick(seen, column, share * budget[kind])
                        found = ref["worst"] if chosen is None else ref["scored"][chosen[0]].get(chosen[1],
                                                                                                ref["worst"])
                        results[kind][str(share)].append((normalised_regret(found, ref["best"], ref["median"]),
                                                          ref["best"] - found))
        except ImportError as exc:  # a peer whose package this environment lacks
            out[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            print(f"{curves.name}: {name} skipped ({exc})", flush=True)
            continue
        table = {kind: {share: summarise([v[0] for v in values], [v[1] for v in values])
                        for share, values in per_share.items()} for kind, per_share in results.items()}
        out[name] = {"budget_share": table["device_seconds"], "budget_share_trial_epochs": table["trial_epochs"],
                     "seconds": round(time.perf_counter() - started, 1)}
        print(f"{curves.name}: {name} regret@100% {table['device_seconds']['1.0']['regret_mean']} "
              f"within@100% {table['device_seconds']['1.0']['within_0.01']} ({out[name]['seconds']} s)", flush=True)
    return {"default": DEFAULT, "configurations": len(configs), "epochs": curves.epochs, "seeds": recorded_seeds,
            "budget": {"full_trials": budget_trials, "trial_epochs": budget["trial_epochs"],
                       "device_seconds": round(budget["device_seconds"], 2),
                       "stated_as": f"{budget_trials:g} full-length trials of {curves.epochs} epochs; device-seconds "
                                    f"at the set's mean epoch_seconds ({mean_seconds:.4g} s)"},
            "reference": {str(s): {"best": round(v["best"], 4), "median": round(v["median"], 4)}
                          for s, v in references.items()},
            "methods": out}


def versions() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in ("optuna", "numpy", "scipy", "dehb", "smac", "syne-tune", "ConfigSpace"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def main(argv: list[str] | None = None) -> int:
    from benchmarks.search_peers import PEER_METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", nargs="+", default=[CURVES])
    parser.add_argument("--seeds", type=int, default=20, help="searcher seeds per method and curve set")
    parser.add_argument("--budget-trials", type=float, default=12, help="the total budget, in full-length trials")
    parser.add_argument("--methods", nargs="+", default=[*OPTUNA_METHODS, *PEER_METHODS])
    parser.add_argument("--out", default="benchmarks/results/search-benchmark-toy.json")
    args = parser.parse_args(argv)
    known = {**OPTUNA_METHODS, **PEER_METHODS, **{k: v.what for k, v in CANDIDATES.items()}}
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        parser.exit(2, f"error: --methods: unknown {', '.join(unknown)}; known: {', '.join(OPTUNA_METHODS)}, "
                       f"{', '.join(PEER_METHODS)}\n")
    try:
        sets = [read_curves(path) for path in args.curves]  # every file checked before any search
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    started = time.perf_counter()
    report = {"benchmark": "search_replay", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "settings": {"seeds": args.seeds, "budget_trials": args.budget_trials, "shares": list(SHARES),
                           "sequential": "one trial at a time, no Ray"},
              "methods": {m: known[m] for m in args.methods}, "versions": versions(),
              "curve_sets": {}}
    for curves in sets:
        report["curve_sets"][Path(curves.name).name] = benchmark_set(curves, args.methods, args.seeds,
                                                                      args.budget_trials)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
