"""One training step of the shared loop under its speed options, side by side, against the hardware.

    python -m benchmarks.step_variants --model segformer [--device cpu] [--steps 6] [--repeats 3] \
        [--variants eager,bf16,channels_last,fused_adamw,compile] [--compile-cost] [--out FILE]

The step is the loop's own (``study.speed.FastForward`` under a ``study.speed.Speed``, AdamW amsgrad with
or without ``fused``, summed cross-entropy over valid pixels) on random tensors already on the device,
batch 64 at 64x64 by default. A variant is ``+``-joined options:

- ``eager``: the loop with every speed option off (fp32, strict fp32 matmuls on CUDA): the reference,
  an eager step on resident tensors (not a bound: a launch-bound GPU step goes far faster compiled);
- ``bf16``: autocast to bfloat16 (the loop's ``--precision bf16``);
- ``tf32`` (CUDA only), ``fused_adamw``, ``channels_last``: the loop's ``--tf32/--fused-adamw/--channels-last on``;
- ``compile``, ``max_autotune``, ``graphs``: ``--compile default``, ``max-autotune``, ``reduce-overhead``
  (CUDA graphs; CUDA only);
- ``all``: every option that exists on the device (tf32, fused_adamw, channels_last, graphs on CUDA).

Every variant reports its median step time, images/s, the speed-up over ``eager``, and the yardstick
(``benchmarks.yardstick``): FLOPs per image (forward + backward), achieved TFLOP/s and MFU against this
device's bf16 matmul rate measured at the start of the run. ``first_step_s`` is the first step's time
(a compiled variant compiles there). ``--compile-cost`` also runs every compiled variant in two fresh
processes sharing a new Inductor cache, cold then warm, and reports the compile time of each and the
steps it takes to pay back (``break_even_steps``). Accuracy is not measured here (``benchmarks/gpu.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import throughput as tp
from benchmarks import yardstick as ys

TOKENS = ("eager", "bf16", "tf32", "fused_adamw", "channels_last", "compile", "max_autotune", "graphs", "all")
CUDA_ONLY = ("tf32", "graphs")
COMPILE_TOKENS = {"compile": "default", "max_autotune": "max-autotune", "graphs": "reduce-overhead"}
DEFAULT_VARIANTS = {"cpu": "eager,bf16,channels_last,fused_adamw,compile,compile+channels_last",
                    "cuda": "eager,tf32,fused_adamw,channels_last,bf16,compile,graphs,all,all+bf16"}


def parse_variant(name: str, device: torch.device) -> tuple[Any, bool]:
    """(study.speed.Speed, bf16) for a ``+``-joined variant name; a CUDA-only option on the CPU is an error."""
    from study.speed import Speed

    tokens = set(name.split("+"))
    unknown = sorted(tokens - set(TOKENS))
    if unknown:
        raise ValueError(f"--variants: unknown {', '.join(unknown)} in {name!r} (expected {', '.join(TOKENS)})")
    cuda = device.type == "cuda"
    if "all" in tokens:
        tokens |= {"tf32", "fused_adamw", "channels_last", "graphs"} if cuda else {"fused_adamw", "channels_last"}
    if not cuda and tokens & set(CUDA_ONLY):
        raise ValueError(f"--variants {name}: {', '.join(sorted(tokens & set(CUDA_ONLY)))} needs CUDA")
    modes = [COMPILE_TOKENS[t] for t in COMPILE_TOKENS if t in tokens]
    if len(modes) > 1:
        raise ValueError(f"--variants {name}: one compile mode at most")
    speed = Speed(tf32="tf32" in tokens, fused_adamw="fused_adamw" in tokens, channels_last="channels_last" in tokens,
                  compile=modes[0] if modes else "off")
    return speed, "bf16" in tokens


def time_variant(model_name: str, variant: str, device: torch.device, batch_size: int, size: tuple[int, int],
                 steps: int, num_classes: int = 3, seed: int = 0, warmup_steps: int = 3) -> dict[str, Any]:
    from study.speed import FastForward, apply_tf32

    speed, bf16 = parse_variant(variant, device)
    apply_tf32(speed, device)
    model = tp.fresh_model(model_name, num_classes, seed).to(device).train()
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, *size, generator=generator).to(device)
    y = torch.randint(0, num_classes, (batch_size, *size), generator=generator).to(device)
    forward = FastForward(model, speed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, amsgrad=True,
                                  fused=speed.fused_adamw or None)

    def step() -> None:
        tp.train_step(forward, optimizer, x, y, bf16=bf16)

    started = time.perf_counter()
    step()  # compiles, for a compiled variant
    tp.synchronize(device)
    first = time.perf_counter() - started
    for _ in range(warmup_steps - 1):  # oneDNN primitive caches, cudnn autotuning, CUDA-graph recording
        step()
    tp.synchronize(device)
    watch = tp.CpuWatch()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        tp.synchronize(device)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {"median_step_s": round(median, 5), "step_s": [round(t, 5) for t in times],
            "img_s": round(batch_size / median, 2), "first_step_s": round(first, 3), "speed": speed.__dict__,
            "bf16": bf16, "cpu": watch.stop()}


def compile_cost(args: argparse.Namespace, variant: str, eager_step_s: float, steps_per_epoch: int) -> dict[str, Any]:
    """``variant`` in two fresh processes over one new Inductor (and Triton) cache: cold, then warm."""
    runs = {}
    with tempfile.TemporaryDirectory(prefix="segstudy-inductor-cost-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": str(Path(cache) / "triton")}
        for kind in ("cold", "warm"):
            cmd = [sys.executable, "-m", "benchmarks.step_variants", "--model", args.model, "--device", args.device,
                   "--batch-size", str(args.batch_size), "--image-size", str(args.image_size), "--steps",
                   str(args.steps), "--repeats", "1", "--variants", variant, "--no-peak"]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            if proc.returncode != 0:
                return {"error": proc.stderr[-2000:]}
            runs[kind] = json.loads(proc.stdout)["variants"][variant]
    out: dict[str, Any] = {}
    for kind, r in runs.items():
        compile_s = r["first_step_s"] - r["median_step_s"]  # the first step, less what a step costs anyway
        gain = eager_step_s - r["median_step_s"]
        steps = compile_s / gain if gain > 0 else None
        out[kind] = {"compile_s": round(compile_s, 2), "median_step_s": r["median_step_s"],
                     "break_even_steps": None if steps is None else round(steps),
                     "break_even_epochs": None if steps is None else round(steps / steps_per_epoch, 2)}
    out["steps_per_epoch"] = steps_per_epoch
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_variants", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["segformer", "fcn_resnet50"], default="segformer")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", default="64")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--variants", help=f"comma-separated (default on cpu: {DEFAULT_VARIANTS['cpu']}; on cuda: "
                                           f"{DEFAULT_VARIANTS['cuda']})")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the variants, alternating their order")
    parser.add_argument("--compile-cost", action="store_true",
                        help="also time each compiled variant's cold and warm compile in fresh processes")
    parser.add_argument("--steps-per-epoch", type=int, default=52,
                        help="to express break-even in epochs (52: Pets' 3,312 train images at batch 64)")
    parser.add_argument("--no-peak", action="store_true", help="skip the matmul peak and the yardstick")
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
    variants = [v for v in (args.variants or DEFAULT_VARIANTS[device.type]).split(",") if v]
    try:
        for v in variants:
            parse_variant(v, device)
    except ValueError as exc:
        parser.error(str(exc))
    peak = None if args.no_peak else ys.device_peak(device)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for repeat in range(args.repeats):  # every other repeat in reverse order, so no variant always goes first
        if args.wait_quiet:
            tp.wait_for_quiet(args.wait_quiet, args.wait_max)
        for v in (variants if repeat % 2 == 0 else variants[::-1]):
            runs[v].append(time_variant(args.model, v, device, args.batch_size, size, args.steps))
    results = {v: {"median_step_s": round(statistics.median(r["median_step_s"] for r in rs), 5),
                   "per_repeat_median_step_s": [r["median_step_s"] for r in rs],
                   "first_step_s": max(r["first_step_s"] for r in rs),
                   "max_foreign_cpu_share": max((r["cpu"]["foreign_cpu_share"] or 0.0) for r in rs),
                   "runs": rs} for v, rs in runs.items()}
    base = results.get("eager", {}).get("median_step_s")
    flops = None if peak is None else ys.train_flops_per_image(tp.fresh_model(args.model, 3, 0), size)
    for r in results.values():
        r["img_s"] = round(args.batch_size / r["median_step_s"], 2)
        r["speedup_vs_eager"] = round(base / r["median_step_s"], 3) if base else None
        if peak is not None:
            r["yardstick"] = ys.yardstick(r["img_s"], flops, peak)
    out: dict[str, Any] = {
        "benchmark": "step_variants", "model": args.model, "device": args.device, "variants": results,
        "reference": "eager: the loop's step with every speed option off, on tensors resident on the device",
        "peak": peak, "gflop_per_image_fwd_bwd": None if flops is None else round(flops / 1e9, 4),
        "settings": {"batch_size": args.batch_size, "image_size": list(size), "steps": args.steps,
                     "warmup_steps": 3, "repeats": args.repeats},
        "cpu_native_bf16": torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported(),
        "machine": tp.machine_info(device), "versions": tp.library_versions(), "measured_at": tp.now_utc(),
        "command": "python -m benchmarks.step_variants " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.compile_cost and base:
        compiled = [v for v in variants if any(t in v.split("+") for t in (*COMPILE_TOKENS, "all"))]
        out["compile_cost"] = {v: compile_cost(args, v, base, args.steps_per_epoch) for v in compiled}
    print(json.dumps(out, indent=2))
    if args.out:
        tp.write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
