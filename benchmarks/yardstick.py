"""The yardstick every step is measured against: FLOPs per image, achieved TFLOP/s, and MFU.

MFU (model FLOPs utilisation) is the share of the device's own dense bf16 matmul rate that a training
step reaches, that rate measured in the same run, not taken from a data sheet: the same process, clocks
and thermal state. On a GPU it is an 8192^3 product; on a CPU the largest power of two up to 2048 whose
product takes under 0.5 s (a CPU without native bf16 emulates it, at well under 1 GFLOP/s, so there the
fp32 rate is reported beside it). FLOPs are counted, not estimated, by ``segmodels.cost.count_flops``
(torch's ``FlopCounterMode``: every matmul and convolution of one forward and backward pass at the run's
image size). An img/s figure alone says nothing about how far from the hardware a step is; these do.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

MATMUL_SIZE = {"cuda": 8192, "cpu": 2048}  # the largest; a CPU starts at 256 and doubles while quick


def matmul_tflops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, n: int | None = None,
                  min_seconds: float = 0.3) -> dict[str, Any]:
    """The dense ``n``^3 matmul rate of ``device`` in ``dtype`` (TFLOP/s), best of a few timed rounds."""
    device = torch.device(device)
    if n is None:
        n = MATMUL_SIZE["cuda"] if device.type == "cuda" else _cpu_size(dtype)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)
    torch.matmul(a, b)  # warm-up: kernel selection, thread pool
    _sync(device)
    started = time.perf_counter()
    torch.matmul(a, b)
    _sync(device)
    one = max(time.perf_counter() - started, 1e-6)
    reps = max(1, int(min_seconds / one))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - started) / reps)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "seconds": round(best, 6),
            "tflops": round(2 * n**3 / best / 1e12, 4)}


def _cpu_size(dtype: torch.dtype, limit_s: float = 0.5) -> int:
    n = 256
    while n < MATMUL_SIZE["cpu"]:
        a = torch.ones(n, n, dtype=dtype)
        torch.matmul(a, a)  # the thread pool's start is not the matmul's rate
        started = time.perf_counter()
        torch.matmul(a, a)
        if (time.perf_counter() - started) * 8 > limit_s:  # the next size costs 8x
            break
        n *= 2
    return n


def device_peak(device: torch.device | str) -> dict[str, Any]:
    """bf16 (the MFU denominator) and fp32 matmul rates; on CUDA fp32 as the run's matmul precision has it."""
    return {"bf16": matmul_tflops(device, torch.bfloat16), "fp32": matmul_tflops(device, torch.float32),
            "fp32_matmul_precision": torch.get_float32_matmul_precision()}


def train_flops_per_image(model: nn.Module, image_size: tuple[int, int]) -> float:
    """Forward + backward FLOPs per image at ``image_size``, counted on the model's own device."""
    from segmodels.cost import count_flops

    device = next(model.parameters()).device
    return count_flops(model, tuple(image_size), backward=True, device=device)


def yardstick(img_s: float, flops_per_image: float, peak: dict[str, Any]) -> dict[str, Any]:
    """FLOPs per image, achieved TFLOP/s and MFU (against the bf16 matmul rate; also against fp32's)."""
    achieved = img_s * flops_per_image / 1e12
    out = {"gflop_per_image": round(flops_per_image / 1e9, 4), "achieved_tflops": round(achieved, 4),
           "mfu": round(achieved / peak["bf16"]["tflops"], 5)}
    if peak.get("fp32"):
        out["mfu_vs_fp32_matmul"] = round(achieved / peak["fp32"]["tflops"], 5)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
