"""One training step of the shared loop's recipe under precision and memory-format variants, side by side.

    python -m benchmarks.step_variants --model segformer [--device cpu] [--steps 6] [--repeats 3]

The step is ``benchmarks.throughput``'s (AdamW amsgrad, summed cross-entropy over valid pixels) on
random tensors already on the device, batch 64 at 64x64 by default. Variants:

- ``fp32``: the loop's ``--precision fp32``;
- ``bf16``: ``torch.autocast(dtype=bfloat16)`` on the device, including the CPU (the loop's
  ``--precision bf16``, and what ``auto`` picks on CPUs with AVX512-BF16 or AMX);
- ``channels_last``: model and input in NHWC memory format (the loop does not offer it).

Each variant builds a fresh model (same seed), takes 2 warm-up steps and times ``--steps``; ``--repeats``
rounds alternate the order. Prints ONE JSON object with the median step time and the speed-up over
fp32 per variant; it says nothing about accuracy (that is ``benchmarks.precision``, and part (c) of
``benchmarks/gpu.py`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import throughput as tp

VARIANTS = ("fp32", "bf16", "channels_last")


def time_variant(model_name: str, variant: str, device: torch.device, batch_size: int, size: tuple[int, int],
                 steps: int, num_classes: int = 3, seed: int = 0) -> dict[str, Any]:
    model = tp.fresh_model(model_name, num_classes, seed).to(device).train()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, *size, generator=generator).to(device)
    y = torch.randint(0, num_classes, (batch_size, *size), generator=generator).to(device)
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer, _ = tp.make_optimizer(model, 1e-3, 1.0)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant == "bf16"):
            logits = model(x)
        valid = (y != 255).sum()
        loss = F.cross_entropy(logits.float(), y, ignore_index=255, reduction="sum") / valid.clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: oneDNN primitive caches, allocator
        step()
    tp.synchronize(device)
    watch = tp.CpuWatch()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        tp.synchronize(device)
        times.append(time.perf_counter() - started)
    return {"median_step_s": round(statistics.median(times), 4), "step_s": [round(t, 4) for t in times],
            "img_s": round(batch_size / statistics.median(times), 2), "cpu": watch.stop()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_variants", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["segformer", "fcn_resnet50"], default="segformer")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", default="64")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the variants, alternating their order")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SHARE",
                        help="before each repeat wait until other processes use < SHARE of the CPUs (e.g. 0.1)")
    parser.add_argument("--wait-max", type=float, default=600.0, help="seconds to wait for quiet at most")
    parser.add_argument("--quick", action="store_true", help="batch 8 at 32x32, 2 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.image_size, args.steps, args.repeats = 8, "32", 2, 1
    from study.config import parse_image_size

    size = parse_image_size(args.image_size)
    device = torch.device(args.device)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (expected {', '.join(VARIANTS)})")
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for repeat in range(args.repeats):  # every other repeat in reverse order, so no variant always goes first
        if args.wait_quiet:
            tp.wait_for_quiet(args.wait_quiet, args.wait_max)
        for v in (variants if repeat % 2 == 0 else variants[::-1]):
            runs[v].append(time_variant(args.model, v, device, args.batch_size, size, args.steps))
    results = {v: {"median_step_s": round(statistics.median(r["median_step_s"] for r in rs), 4),
                   "per_repeat_median_step_s": [r["median_step_s"] for r in rs],
                   "max_foreign_cpu_share": max((r["cpu"]["foreign_cpu_share"] or 0.0) for r in rs),
                   "runs": rs} for v, rs in runs.items()}
    base = results.get("fp32", {}).get("median_step_s")
    for r in results.values():
        r["img_s"] = round(args.batch_size / r["median_step_s"], 2)
        r["speedup_vs_fp32"] = round(base / r["median_step_s"], 3) if base else None
    out = {"benchmark": "step_variants", "model": args.model, "device": args.device, "variants": results,
           "settings": {"batch_size": args.batch_size, "image_size": list(size), "steps": args.steps,
                        "warmup_steps": 2, "repeats": args.repeats},
           "cpu_bf16_supported": torch.cpu._is_avx512_bf16_supported(),
           "machine": tp.machine_info(device), "versions": tp.library_versions(), "measured_at": tp.now_utc(),
           "command": "python -m benchmarks.step_variants " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(json.dumps(out, indent=2))
    if args.out:
        tp.write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
