"""Record the full-length val mIoU curves of a grid on toy data, for ``benchmarks.search_replay`` (no Ray).

    python -m benchmarks.replay_curves --data-root /tmp/toy [--epochs 8] [--out benchmarks/results/...json]

Each configuration (model x lr x gamma, init scratch, seed 0) trains once to its last epoch with the study's
own loop, validating every epoch; the curves are saved as JSON so the replay is reproducible without training.
Toy data: ``python -m study.data.toy --root /tmp/toy``. ``--part i/n`` records every n-th configuration
(run n of them side by side), ``--merge`` joins the parts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

MODELS = ("segformer", "tv:lraspp_mobilenet_v3_large", "fcn_resnet50")
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
GAMMAS = (0.8, 0.9, 0.98)
DEFAULT_OUT = "benchmarks/results/cpu-search-replay-curves.json"


def grid() -> list[dict[str, Any]]:
    return [{"model": m, "lr": lr, "gamma": g} for m, lr, g in itertools.product(MODELS, LRS, GAMMAS)]


def record(data_root: str, epochs: int, part: tuple[int, int]) -> list[dict[str, Any]]:
    """Train every ``part[1]``-th configuration from ``part[0]``; returns one record per configuration."""
    from study.config import TrainConfig
    from study.loop import train
    from study.trial import build_trial_model, load_splits

    found = []
    for config in grid()[part[0]::part[1]]:
        cfg = TrainConfig(dataset="pets", data_root=data_root, init="scratch", epochs=epochs, batch_size=16,
                          image_size=[32, 32], val_every=1, seed=0, **config)
        train_set, val_set = load_splits(cfg)
        started = time.perf_counter()
        result = train(cfg, train_set, val_set, build_trial_model(cfg, train_set.num_classes))
        curve = {int(r["epoch"]): float(r["val_miou"]) for r in result.rows}
        found.append({**config, "curve": curve, "train_s": round(time.perf_counter() - started, 2)})
        print(json.dumps(found[-1]), flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="/tmp/toy")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--part", default="0/1")
    parser.add_argument("--merge", nargs="*", help="part files to join into --out")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from benchmarks.throughput import machine_info, now_utc, write_json

    if args.merge:
        configs = [c for path in args.merge for c in json.loads(Path(path).read_text())["configurations"]]
        first = json.loads(Path(args.merge[0]).read_text())
        configs.sort(key=lambda c: (c["model"], c["lr"], c["gamma"]))
        write_json(args.out, {**first, "configurations": configs})
        return 0
    index, count = (int(v) for v in args.part.split("/"))
    configs = record(args.data_root, args.epochs, (index, count))
    write_json(args.out, {"benchmark": "replay_curves", "when": now_utc(), "machine": machine_info("cpu"),
                          "data": "study.data.toy (pets), 32x32, batch 16, init scratch, seed 0",
                          "epochs": args.epochs, "configurations": configs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
