"""fp32 against bf16 autocast through the real ``study.loop.train``: speed, and whether val mIoU moves.

    python -m benchmarks.precision --data-root R --model segformer --device cpu \
        [--epochs 30] [--seeds 0,1,2] [--batch-size 64] [--image-size 64] [--out FILE]

Each seed trains the same model twice on the Pets ``train`` split, once per precision, and validates
every epoch. bf16 counts as "unchanged" when the difference of the mean final val mIoU is no larger
than the seed-to-seed spread of either precision (floor 0.02): the noise a study already lives with.
This is the evidence behind ``--precision auto`` (``study.loop.resolve_precision``) and part (c) of
``benchmarks/gpu.py``; ``compare_speed`` asks the same of the loop's speed options (every one off against
a fast set: TF32, fused AdamW, channels_last, compile, CUDA graphs). No Ray here.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import throughput as tp

PRECISIONS = ("fp32", "bf16")
Runs = dict[str, list[dict[str, Any]]]  # variant -> one result per seed


def compare_precision(data_root: str, cache: str, model: str, device: str, batch_size: int, image_size: Any,
                      epochs: int, seeds: list[int], speed: dict[str, str] | None = None) -> dict[str, Any]:
    """fp32 against bf16, both with the loop's ``speed`` options (TrainConfig fields; default: auto)."""
    variants = {p: {"precision": p, **(speed or {})} for p in PRECISIONS}
    runs = train_variants(data_root, cache, model, device, batch_size, image_size, epochs, seeds, variants)
    return {**_compare(runs, "fp32", "bf16"), "model": model, "epochs": epochs, "seeds": seeds, "runs": runs,
            "speed": speed or {}}


def compare_speed(data_root: str, cache: str, model: str, device: str, batch_size: int, image_size: Any,
                  epochs: int, seeds: list[int], fast: dict[str, str]) -> dict[str, Any]:
    """Every speed option off against ``fast`` (TrainConfig fields), fp32 both: does the fast step learn the same?"""
    off = {"tf32": "off", "fused_adamw": "off", "channels_last": "off", "compile": "off", "precision": "fp32"}
    runs = train_variants(data_root, cache, model, device, batch_size, image_size, epochs, seeds,
                          {"off": off, "fast": {**off, **fast}})
    return {**_compare(runs, "off", "fast"), "model": model, "epochs": epochs, "seeds": seeds, "fast": fast,
            "runs": runs}


def train_variants(data_root: str, cache: str, model: str, device: str, batch_size: int, image_size: Any,
                   epochs: int, seeds: list[int], variants: dict[str, dict[str, Any]]) -> Runs:
    """Each seed trains the model once per variant (TrainConfig changes) through ``study.loop.train``."""
    from study.config import TrainConfig
    from study.loop import train
    from study.trial import build_trial_model, load_splits

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for seed in seeds:
        for name, changes in variants.items():
            cfg = TrainConfig(dataset="pets", data_root=data_root, model=model, epochs=epochs, batch_size=batch_size,
                              image_size=image_size, val_every=1, seed=seed, device=device, cache_dir=cache,
                              **changes)
            train_set, val_set = load_splits(cfg)
            net = build_trial_model(cfg, train_set.num_classes)
            started = time.perf_counter()
            result = train(cfg, train_set, val_set, net)
            timed = result.rows[1:] or result.rows  # epoch 1 (cudnn autotuning, allocator, oneDNN kernels) untimed
            seconds = sum(len(train_set) / r["images_per_s"] for r in timed)
            runs[name].append({"seed": seed, "img_s": round(len(train_set) * len(timed) / seconds, 1),
                                    "final_val_miou": round(result.rows[-1]["val_miou"], 4),
                                    "best_val_miou": round(result.best_val_miou, 4),
                                    "final_train_loss": round(result.rows[-1]["train_loss"], 4),
                                    "wall_s": round(time.perf_counter() - started, 2)})
    return runs


def _compare(runs: Runs, a: str, b: str) -> dict[str, Any]:
    """``b`` against ``a``: speed-up, and the val mIoU difference judged against the seed-to-seed spread."""
    mean = {k: statistics.mean(r["final_val_miou"] for r in v) for k, v in runs.items()}
    speed = {k: statistics.mean(r["img_s"] for r in v) for k, v in runs.items()}
    same_seed = [abs(x["final_val_miou"] - y["final_val_miou"]) for x, y in zip(runs[a], runs[b], strict=True)]
    spread = [max(r["final_val_miou"] for r in v) - min(r["final_val_miou"] for r in v) for v in runs.values()]
    noise = max(spread) if len(runs[a]) > 1 else math.nan
    return {
        f"{a}_img_s": round(speed[a], 1), f"{b}_img_s": round(speed[b], 1),
        f"{b}_speedup": round(speed[b] / speed[a], 3),
        f"{a}_val_miou_mean": round(mean[a], 4), f"{b}_val_miou_mean": round(mean[b], 4),
        "val_miou_delta": round(mean[b] - mean[a], 4),
        "same_seed_abs_delta_max": round(max(same_seed), 4),
        "seed_spread_max": round(noise, 4) if not math.isnan(noise) else None,
        "within_noise": abs(mean[b] - mean[a]) <= max(noise if not math.isnan(noise) else 0, 0.02),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", required=True, help="folder with oxford-iiit-pet/")
    parser.add_argument("--model", choices=["segformer", "fcn_resnet50"], default="segformer")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", default="64")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    import torch

    from study.loop import cpu_has_native_bf16

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="segstudy-precision-") as cache:
        result = compare_precision(args.data_root, cache, args.model, args.device, args.batch_size, args.image_size,
                                   args.epochs, [int(s) for s in args.seeds.split(",") if s])
    out = {"benchmark": "precision", "dataset": "pets", "device": args.device, **result,
           "cpu_native_bf16": cpu_has_native_bf16(),
           "settings": {k: v for k, v in vars(args).items() if k != "out"},
           "machine": tp.machine_info(device), "versions": tp.library_versions(), "measured_at": tp.now_utc()}
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
