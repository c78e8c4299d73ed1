"""Record, convert or extract curve files (``benchmarks/curves.py``) for ``benchmarks.search_replay`` (no Ray).

    python -m benchmarks.replay_curves --grid toy --data-root /tmp/toy [--out benchmarks/results/...json]
    python -m benchmarks.replay_curves --from-study STORAGE/NAME --out benchmarks/results/curves-NAME.json
    python -m benchmarks.replay_curves --convert OLD.json --out NEW.json

Recording: each configuration of a registered grid (``GRIDS``: what is searched, the loop's fixed settings, its
seeds) trains once per seed to its last epoch with the study's own loop, validating every ``val_every`` epochs;
``epoch_seconds`` is the run's measured time (model built, every epoch trained and validated) over its epochs.
Toy data: ``python -m study.data.toy --root /tmp/toy``. ``--part i/n`` records every n-th run (run n of them side
by side), ``--merge`` joins the parts.

``--from-study``: a finished grid study's trials that reached the study's last epoch, each one run: its searched
values (``analysis.load.searched_keys``) as params, its seed, its val mIoU at each validation (``result.json``,
read by ``study.summary.load_history``) and its epoch_seconds: the median over its validations after the first of
Tune's ``time_this_iter_s`` over the epochs since the one before (train and validation; the first interval is
left out, as it also holds the trial's start: data, model, cost measurement). A trial with a single validation
gives its one interval over its epochs. Trials stopped early, errored or unfinished are left out, and counted.

``--convert``: the first recording's format (model, lr, gamma, curve, train_s per configuration) into this one,
epoch_seconds per model from the recorded train_s (``convert``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.curves import Run, curves_json, parse_curves
from foundation.errors import ConfigError

DEFAULT_OUT = "benchmarks/results/curves-toy.json"
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
# The grids this module records, by name: what is searched (every combination), the loop's fixed settings, the
# training seeds, and a description kept in the file. Their data: --data-root (toy: python -m study.data.toy).
GRIDS: dict[str, dict[str, Any]] = {
    "toy": {"searched": {"model": ("segformer", "tv:lraspp_mobilenet_v3_large", "fcn_resnet50"), "lr": LRS,
                         "gamma": (0.8, 0.9, 0.98)},
            "fixed": {"dataset": "pets", "init": "scratch", "epochs": 8, "batch_size": 16, "image_size": [32, 32],
                      "val_every": 1},
            "seeds": (0,), "data": "study.data.toy (pets), 32x32, batch 16, init scratch, seed 0"},
    "pets-samples": {"searched": {"model": ("segformer", "tv:lraspp_mobilenet_v3_large"), "lr": LRS,
                                  "gamma": (0.8, 0.9, 0.98)},
                     "fixed": {"dataset": "pets", "init": "scratch", "epochs": 16, "batch_size": 16,
                               "image_size": [64, 64], "val_every": 2},
                     "seeds": (0,), "data": "the genuine Oxford-IIIT Pet samples (../shared/data: 198 trainval, "
                                            "val split from them as the study does), 64x64, batch 16, "
                                            "init scratch, seed 0, validated every 2 epochs"},
    "toy-cityscapes-2seeds": {"searched": {"model": ("segformer", "tv:lraspp_mobilenet_v3_large"), "lr": LRS,
                                           "gamma": (0.85, 0.97)},
                              "fixed": {"dataset": "cityscapes", "init": "scratch", "epochs": 12, "batch_size": 8,
                                        "image_size": [32, 64], "val_every": 1},
                              "seeds": (0, 1), "data": "study.data.toy (cityscapes, 19 classes, 255 ignored), 32x64, "
                                                       "batch 8, init scratch, seeds 0 and 1"},
}


def grid(name: str = "toy") -> list[dict[str, Any]]:
    searched = GRIDS[name]["searched"]
    return [dict(zip(searched, values, strict=True)) for values in itertools.product(*searched.values())]


def record(data_root: str, part: tuple[int, int], name: str = "toy") -> list[dict[str, Any]]:
    """Train every ``part[1]``-th run (configuration x seed) from ``part[0]`` of grid ``name``; one record per run."""
    from study.config import TrainConfig
    from study.loop import train
    from study.trial import build_trial_model, load_splits

    spec, found = GRIDS[name], []
    runs = [(config, seed) for config in grid(name) for seed in spec["seeds"]]
    for config, seed in runs[part[0]::part[1]]:
        cfg = TrainConfig(data_root=data_root, seed=seed, **spec["fixed"], **config)
        train_set, val_set = load_splits(cfg)
        started = time.perf_counter()
        result = train(cfg, train_set, val_set, build_trial_model(cfg, train_set.num_classes))
        curve = {int(r["epoch"]): float(r["val_miou"]) for r in result.rows}
        train_s = time.perf_counter() - started
        found.append({"params": config, "curve": curve, "epoch_seconds": round(train_s / cfg.epochs, 3),
                      "seed": seed})
        print(json.dumps(found[-1]), flush=True)
    return found


def convert(data: dict[str, Any], source: str) -> dict[str, Any]:
    """The first recording's format -> the curve file's. ``epoch_seconds``: per model, the median over its
    configurations of ``train_s`` / epochs (an epoch's cost is the model's; one run's time was noisy, the parts
    having shared two cores)."""
    epochs, configs = data["epochs"], data["configurations"]
    per_model = {m: statistics.median(c["train_s"] / epochs for c in configs if c["model"] == m)
                 for m in {c["model"] for c in configs}}
    runs = [Run({k: c[k] for k in ("model", "lr", "gamma")}, {int(k): v for k, v in c["curve"].items()},
                round(per_model[c["model"]], 4), 0) for c in configs]
    meta = {k: v for k, v in data.items() if k not in ("epochs", "configurations")}
    return curves_json(epochs, runs, **meta, converted_from=source, epoch_seconds_source=(
        "per model, the median over its configurations of train_s / epochs; train_s is each configuration's wall "
        "time recorded in the source file, measured around build_trial_model + study.loop.train (model built, "
        "every epoch trained and validated, 32x32 toy Pets, batch 16, on the machine above)"))


def epoch_seconds(rows: list[dict[str, Any]]) -> float | None:
    """Seconds per epoch from Tune's rows of one trial (see the module's docstring); None without timings."""
    timed = sorted((r["epoch"], r["time_this_iter_s"]) for r in rows if "time_this_iter_s" in r and "epoch" in r)
    if not timed:
        return None
    if len(timed) == 1:
        return timed[0][1] / timed[0][0]
    return statistics.median(t / (e - prev) for (prev, _), (e, t) in itertools.pairwise(timed) if e > prev)


def from_study(folder: str | Path) -> dict[str, Any]:
    """A finished grid study's folder as a curve file's object."""
    from analysis.load import searched_keys, study_settings
    from study.layout import tune_results
    from study.options import is_missing
    from study.summary import load_history, results_experiment, trial_ids

    results = results_experiment(str(folder))
    if not trial_ids(results):
        raise ConfigError(f"--from-study {folder}: no Ray Tune trials (trial_*/params.json) there")
    settings = study_settings(folder)
    history = load_history(results, default_seed=settings.get("seed", 0)).dropna(subset=["val_miou"])
    epochs = int(settings.get("epochs") or history["epoch"].max())
    keys = [k for k in searched_keys(settings, history) if k != "seed"]
    runs, left_out = [], []
    for trial_id, group in history.groupby("trial_id", sort=True):
        seconds = epoch_seconds(tune_results(results, trial_id))
        if group["epoch"].max() < epochs or seconds is None:
            left_out.append(trial_id)
            continue
        first = group.iloc[0]
        params = {k: first[k].item() if hasattr(first[k], "item") else first[k] for k in keys}
        curve = {int(e): float(v) for e, v in zip(group["epoch"], group["val_miou"], strict=True)}
        runs.append(Run({k: v for k, v in params.items() if not is_missing(v)}, curve, round(seconds, 4),
                        int(first["seed"])))
    if not runs:
        raise ConfigError(f"--from-study {folder}: no trial reached the study's last epoch ({epochs}) with timings")
    return curves_json(epochs, runs, source=str(folder), dataset=settings.get("dataset"),
                       image_size=settings.get("image_size"), val_every=settings.get("val_every"),
                       trials_left_out=left_out, epoch_seconds_source=(
                           "median over each trial's validations after the first of Tune's time_this_iter_s / "
                           "epochs since the previous validation"))


def write_checked(out: str, data: dict[str, Any]) -> None:
    """Write a curve file, after reading it back as the benchmark will (a bad one is never written)."""
    parse_curves(data, Path(out).stem, out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="/tmp/toy")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="toy", help="the grid to record (GRIDS)")
    parser.add_argument("--part", default="0/1")
    parser.add_argument("--merge", nargs="*", help="part files to join into --out")
    parser.add_argument("--from-study", help="a finished grid study's folder (STORAGE/NAME)")
    parser.add_argument("--convert", help="a curve file in the first recording's format")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        if args.from_study:
            write_checked(args.out, from_study(args.from_study))
            return 0
        if args.convert:
            write_checked(args.out, convert(json.loads(Path(args.convert).read_text()), args.convert))
            return 0
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    from benchmarks.throughput import machine_info, now_utc

    if args.merge:
        configs = [c for path in args.merge for c in json.loads(Path(path).read_text())["configurations"]]
        first = json.loads(Path(args.merge[0]).read_text())
        configs.sort(key=lambda c: json.dumps(c["params"], sort_keys=True))
        write_checked(args.out, {**first, "configurations": configs})
        return 0
    index, count = (int(v) for v in args.part.split("/"))
    started = time.perf_counter()
    configs = record(args.data_root, (index, count), args.grid)
    spec = GRIDS[args.grid]
    data = {"benchmark": "replay_curves", "grid": args.grid, "when": now_utc(), "machine": machine_info("cpu"),
            "data": spec["data"], "data_root": args.data_root, "fixed": spec["fixed"],
            "recording_s": round(time.perf_counter() - started, 1), "epochs": spec["fixed"]["epochs"],
            "configurations": configs}
    if count == 1:
        write_checked(args.out, data)
    else:  # a part: joined and checked by --merge
        Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
