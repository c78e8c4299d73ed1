"""Measured cost on one device: a larger model must measure slower than a smaller one (no Ray).

    python -m benchmarks.cost [--device auto] [--image-size 64] [--batch-size 16] [--precision fp32] [--runs 20]
                              [--out benchmarks/results/cpu-cost.json]

Measures ``segmodels.cost.measure_cost`` (latency at batch 1, throughput at ``--batch-size``, training step,
peak memory; what the study records per trial in ``summary.csv``) for SegFormer-B0 (the baseline), LR-ASPP
MobileNetV3 and FCN ResNet-50, built from scratch for 3 classes, in one process on one device, and prints ONE JSON
object: each model's measurement with its counted parameters and FLOPs, its ratios against SegFormer-B0, and
``checks``: FCN ResNet-50 (about 9x SegFormer-B0's parameters, 20x its FLOPs) has the higher latency and training
step time; its latency is above LR-ASPP's. Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

MODELS = ("segformer", "tv:lraspp_mobilenet_v3_large", "fcn_resnet50")  # the first is the baseline


def measure_models(device: torch.device, size: tuple[int, int], batch: int, precision: str, runs: int) -> dict:
    from segmodels import build_model
    from segmodels.cost import count_flops, count_parameters, measure_cost

    found = {}
    for name in MODELS:
        torch.manual_seed(0)
        net = build_model(name, 3, "scratch")
        counted = {"params": count_parameters(net), "flops": count_flops(net, size)}
        found[name] = {**measure_cost(net, size, batch, device, precision, runs=runs), **counted}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from benchmarks.throughput import library_versions, machine_info, now_utc, write_json
    from study.loop import resolve_device

    device = resolve_device(args.device)
    started = time.perf_counter()
    found = measure_models(device, (args.image_size, args.image_size), args.batch_size, args.precision, args.runs)
    base = found[MODELS[0]]
    ratios = {name: {k: round(m[k] / base[k], 3) for k in ("latency_ms", "train_step_ms", "throughput_ips", "params",
                                                             "flops")} for name, m in found.items()}
    fcn, lraspp, segformer = found["fcn_resnet50"], found["tv:lraspp_mobilenet_v3_large"], found["segformer"]
    checks = {"fcn_latency_above_segformer": fcn["latency_ms"] > segformer["latency_ms"],
              "fcn_train_step_above_segformer": fcn["train_step_ms"] > segformer["train_step_ms"],
              "fcn_latency_above_lraspp": fcn["latency_ms"] > lraspp["latency_ms"]}
    report = {"benchmark": "cost", "when": now_utc(), "machine": machine_info(device), "versions": library_versions(),
              "device": str(device), "image_size": args.image_size, "batch_size": args.batch_size,
              "precision": args.precision, "runs": args.runs, "baseline": MODELS[0], "models": found,
              "ratios_vs_baseline": ratios, "checks": checks, "wall_s": round(time.perf_counter() - started, 1)}
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
