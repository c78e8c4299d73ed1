"""Does telling Optuna the truth about ASHA's stops change what the search finds? A replay, not a test.

    python -m benchmarks.search_replay [--seeds 10] [--num-samples 16] [--out benchmarks/results/cpu-search-replay.json]

Recorded full-length val mIoU curves (``benchmarks.replay_curves``: a grid of model x lr x gamma trained once on
toy data, every epoch validated, saved in ``benchmarks/results/cpu-search-replay-curves.json``) are replayed through
the real Tune + OptunaSearch + ASHA: the trainable reports the recorded curve of the grid point nearest to the
suggested configuration (lr on a log scale), one result per epoch, and ASHA stops it as it would a real trial.
Three searchers, each with the same seeds, the same ASHA and the same number of trials and concurrency:

- ``told_complete``: Ray's own ``OptunaSearch`` (a stopped trial is told ``COMPLETE`` with its last value);
- ``told_pruned``: segstudy's ``StoredOptunaSearch`` (a stopped trial is ``PRUNED`` with its curve);
- ``random``: ``OptunaSearch`` with Optuna's ``RandomSampler``.

Both TPE searchers use ``TPESampler(seed, constant_liar=True)``, as the study does. For each run it records, in
the order Tune received them, every result (one trial-epoch each), and prints ONE JSON object: per searcher, the
best val mIoU found (any epoch of any trial, and among trials that ran all their epochs) against the budget spent
in trial-epochs, mean and standard deviation over the seeds, and how often the grid's best configuration was
found; the ratios are against ``told_complete`` measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

CURVES = "benchmarks/results/cpu-search-replay-curves.json"
SEARCHERS = ("told_complete", "told_pruned", "random")


def load_curves(path: str | Path) -> tuple[dict[tuple, dict[int, float]], dict[str, Any]]:
    data = json.loads(Path(path).read_text())
    curves = {(c["model"], c["lr"], c["gamma"]): {int(k): v for k, v in c["curve"].items()}
              for c in data["configurations"]}
    return curves, data


def nearest(curves: dict[tuple, dict[int, float]], config: dict[str, Any]) -> tuple:
    """The recorded grid point nearest to a suggested configuration (same model; lr in log, gamma linear)."""
    points = [k for k in curves if k[0] == config["model"]]
    return min(points, key=lambda k: (abs(math.log(k[1]) - math.log(config["lr"])), abs(k[2] - config["gamma"])))


def replay(config: dict[str, Any], curves: dict[tuple, dict[int, float]]) -> None:
    """The trainable: report the recorded curve of ``config``'s grid point, one result per epoch."""
    from ray import tune

    for epoch, value in sorted(curves[nearest(curves, config)].items()):
        tune.report({"epoch": epoch, "val_miou": value})


def searcher(kind: str, seed: int, epochs: int, folder: Path) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from study.orchestrate.optuna_store import OptunaDatabase, StoredOptunaSearch

    if kind == "random":
        return OptunaSearch(metric="val_miou", mode="max", sampler=optuna.samplers.RandomSampler(seed=seed))
    tpe = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if kind == "told_complete":
        return OptunaSearch(metric="val_miou", mode="max", sampler=tpe)
    db = OptunaDatabase(str(folder / f"optuna-{seed}.db"))
    return StoredOptunaSearch(db, "replay", epochs=epochs, metric="val_miou", mode="max", sampler=tpe)


def run_once(kind: str, seed: int, curves: dict, args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """One search; every result in the order Tune received it."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    received: list[dict[str, Any]] = []

    class Record(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            received.append({"trial": trial.trial_id, "epoch": result["epoch"], "val_miou": result["val_miou"]})

    models = sorted({k[0] for k in curves})
    lrs, gammas = sorted({k[1] for k in curves}), sorted({k[2] for k in curves})
    space = {"model": tune.choice(models), "lr": tune.loguniform(lrs[0], lrs[-1]),
             "gamma": tune.uniform(gammas[0], gammas[-1])}
    epochs = max(max(c) for c in curves.values())
    tuner = tune.Tuner(
        tune.with_parameters(replay, curves=curves), param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_miou", mode="max", search_alg=searcher(kind, seed, epochs, folder), reuse_actors=True,
            scheduler=ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=args.grace_period,
                                    reduction_factor=args.reduction_factor),
            num_samples=args.num_samples, max_concurrent_trials=args.max_concurrent),
        run_config=tune.RunConfig(name=f"{kind}-{seed}", storage_path=str(folder), verbose=0, callbacks=[Record()]))
    tuner.fit()
    return received


def trajectory(received: list[dict[str, Any]], epochs: int, budgets: list[int]) -> dict[str, Any]:
    """Best val mIoU found within each budget of trial-epochs: at any epoch, and among full-length trials."""
    best_any, best_full, found_any, found_full = [], [], -math.inf, -math.inf
    for row in received:
        found_any = max(found_any, row["val_miou"])
        if row["epoch"] >= epochs:
            found_full = max(found_full, row["val_miou"])
        best_any.append(found_any)
        best_full.append(found_full)

    def at(series: list[float], budget: int) -> float | None:
        value = series[min(budget, len(series)) - 1] if series else -math.inf
        return None if value == -math.inf else value

    return {"budget_spent": len(received), "completed_trials": sum(r["epoch"] >= epochs for r in received),
            "best_any_epoch": {b: at(best_any, b) for b in budgets}, "best_full_length": {b: at(best_full, b)
                                                                                         for b in budgets}}


def summarise(runs: list[dict[str, Any]], budgets: list[int], grid_best: float) -> dict[str, Any]:
    def stats(key: str, budget: int) -> dict[str, Any]:
        values = [r[key][budget] for r in runs if r[key][budget] is not None]
        return {"mean": round(statistics.mean(values), 4) if values else None,
                "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None, "runs_with_one": len(values)}

    final = budgets[-1]
    return {"budget_spent_mean": statistics.mean(r["budget_spent"] for r in runs),
            "completed_trials_mean": statistics.mean(r["completed_trials"] for r in runs),
            "best_any_epoch": {b: stats("best_any_epoch", b) for b in budgets},
            "best_full_length": {b: stats("best_full_length", b) for b in budgets},
            "found_grid_best": sum(r["best_any_epoch"][final] == grid_best for r in runs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", default=CURVES)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/cpu-search-replay.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial files: only the search counts
    import ray

    from benchmarks.throughput import library_versions, machine_info, now_utc, write_json

    curves, recorded = load_curves(args.curves)
    epochs = max(max(c) for c in curves.values())
    grid_best = max(max(c.values()) for c in curves.values())
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in SEARCHERS}
    with tempfile.TemporaryDirectory(prefix="search-replay-") as folder:
        for seed in range(args.seeds):  # searchers alternate within a seed: a slow moment hits them alike
            for kind in SEARCHERS:
                received = run_once(kind, seed, curves, args, Path(folder))
                runs[kind].append(received)
    ray.shutdown()
    budget_max = max(len(r) for kind in runs.values() for r in kind)
    budgets = sorted({*range(8, budget_max + 1, 8), budget_max})
    per_run = {kind: [trajectory(r, epochs, budgets) for r in found] for kind, found in runs.items()}
    results = {kind: summarise(per_run[kind], budgets, grid_best) for kind in SEARCHERS}
    base = results["told_complete"]["best_any_epoch"][budget_max]["mean"]
    report = {
        "benchmark": "search_replay", "when": now_utc(), "machine": machine_info("cpu"), "device": "cpu (replay)",
        "versions": library_versions(), "curves": args.curves, "curves_recorded_on": recorded.get("machine"),
        "grid": {"configurations": len(curves), "epochs": epochs, "best_val_miou": grid_best,
                 "best_configuration": list(max(curves, key=lambda k: max(curves[k].values())))},
        "settings": {k: getattr(args, k) for k in ("seeds", "num_samples", "max_concurrent", "grace_period",
                                                   "reduction_factor")},
        "results": results, "per_run": per_run,
        "ratio_best_vs_told_complete_at_end": {
            kind: round(results[kind]["best_any_epoch"][budget_max]["mean"] / base, 4) for kind in SEARCHERS},
        "wall_s": round(time.perf_counter() - started, 1)}
    write_json(args.out, report)
    print(json.dumps({k: v for k, v in report.items() if k != "per_run"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
