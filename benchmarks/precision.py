"""fp32 against bf16 autocast through the real ``study.loop.train``: speed, and whether val mIoU moves.

    python -m benchmarks.precision --data-root R --model segformer --device cpu \
        [--epochs 30] [--seeds 0,1,2] [--batch-size 64] [--image-size 64] [--out FILE]

Each seed trains the same model twice on the Pets ``train`` split, once per precision, and validates
every epoch. bf16 counts as "unchanged" when the difference of the mean final val mIoU is no larger
than the seed-to-seed spread of either precision (floor 0.02): the noise a study already lives with.
This is the evidence behind ``--precision auto`` (``study.loop.resolve_precision``) and part (c) of
``benchmarks/gpu.py``. No Ray here.
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


def compare_precision(data_root: str, cache: str, model: str, device: str, batch_size: int, image_size: Any,
                      epochs: int, seeds: list[int]) -> dict[str, Any]:
    from study.config import TrainConfig
    from study.loop import train
    from study.trial import build_trial_model, load_splits

    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PRECISIONS}
    for seed in seeds:
        for precision in PRECISIONS:
            cfg = TrainConfig(dataset="pets", data_root=data_root, model=model, epochs=epochs, batch_size=batch_size,
                              image_size=image_size, val_every=1, seed=seed, device=device, precision=precision,
                              cache_dir=cache)
            train_set, val_set = load_splits(cfg)
            net = build_trial_model(cfg, train_set.num_classes)
            started = time.perf_counter()
            result = train(cfg, train_set, val_set, net)
            timed = result.rows[1:] or result.rows  # epoch 1 (cudnn autotuning, allocator, oneDNN kernels) untimed
            seconds = sum(len(train_set) / r["images_per_s"] for r in timed)
            runs[precision].append({"seed": seed, "img_s": round(len(train_set) * len(timed) / seconds, 1),
                                    "final_val_miou": round(result.rows[-1]["val_miou"], 4),
                                    "best_val_miou": round(result.best_val_miou, 4),
                                    "final_train_loss": round(result.rows[-1]["train_loss"], 4),
                                    "wall_s": round(time.perf_counter() - started, 2)})
    mean = {k: statistics.mean(r["final_val_miou"] for r in v) for k, v in runs.items()}
    speed = {k: statistics.mean(r["img_s"] for r in v) for k, v in runs.items()}
    same_seed = [abs(a["final_val_miou"] - b["final_val_miou"])
                 for a, b in zip(runs["fp32"], runs["bf16"], strict=True)]
    spread = [max(r["final_val_miou"] for r in v) - min(r["final_val_miou"] for r in v) for v in runs.values()]
    noise = max(spread) if len(seeds) > 1 else math.nan
    return {
        "model": model, "epochs": epochs, "seeds": seeds, "runs": runs,
        "fp32_img_s": round(speed["fp32"], 1), "bf16_img_s": round(speed["bf16"], 1),
        "bf16_speedup": round(speed["bf16"] / speed["fp32"], 3),
        "fp32_val_miou_mean": round(mean["fp32"], 4), "bf16_val_miou_mean": round(mean["bf16"], 4),
        "val_miou_delta": round(mean["bf16"] - mean["fp32"], 4),
        "same_seed_abs_delta_max": round(max(same_seed), 4),
        "seed_spread_max": round(noise, 4) if not math.isnan(noise) else None,
        "within_noise": abs(mean["bf16"] - mean["fp32"]) <= max(noise if not math.isnan(noise) else 0, 0.02),
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
