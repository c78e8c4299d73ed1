"""Learning-rate schedules, built from torch's own schedulers.

- ``exponential``: the report's ``ExponentialLR(gamma)``, stepped once per epoch, no warmup.
- ``poly``: ``LinearLR`` warmup from ``warmup_ratio`` x lr to lr over ``warmup_iters`` iterations, then
  ``PolynomialLR(power)`` down to 0 at ``total_iters`` (MMSegmentation's ``LinearLR`` + ``PolyLR``, stepped per
  iteration: the SegFormer recipe warms up over 1500 iterations from 1e-6 x lr, then decays with power 1).
- ``cosine``: the same warmup, then ``CosineAnnealingLR`` down to ``min_lr_ratio`` x lr at ``total_iters``.

Warmup and decay are chained with ``SequentialLR``, so ``scheduler.state_dict()`` resumes them as they were.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LinearLR,
    LRScheduler,
    PolynomialLR,
    SequentialLR,
)

from segmodels.groups import param_groups

SCHEDULES = ("exponential", "poly", "cosine")


def check_schedule(name: str, total_iters: int, warmup_iters: int = 0, warmup_ratio: float = 1e-6,
                   power: float = 1.0, gamma: float = 0.98) -> None:
    """ValueError with one line for a schedule that cannot be built (what a config check can call early)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {name!r}")
    if name == "exponential":
        if warmup_iters:
            raise ValueError("warmup_iters: the exponential schedule steps per epoch and has no warmup; use 0")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma: expected 0 < gamma <= 1, got {gamma}")
        return
    if warmup_iters < 0 or warmup_iters >= total_iters:
        raise ValueError(f"warmup_iters: expected 0 <= warmup_iters < the run's {total_iters} iterations, "
                         f"got {warmup_iters}")
    if not 0 < warmup_ratio <= 1:
        raise ValueError(f"warmup_ratio: expected 0 < warmup_ratio <= 1, got {warmup_ratio}")
    if power <= 0:
        raise ValueError(f"poly_power: expected a power > 0, got {power}")


def build_scheduler(name: str, optimizer: Optimizer, total_iters: int, warmup_iters: int = 0,
                    warmup_ratio: float = 1e-6, power: float = 1.0, gamma: float = 0.98,
                    min_lr_ratio: float = 0.0) -> tuple[LRScheduler, bool]:
    """(scheduler, steps_per_iteration) for ``name`` in ``SCHEDULES``.

    ``total_iters`` counts optimizer steps over the whole run (epochs x steps per epoch); the caller steps the
    scheduler after every optimizer step when ``steps_per_iteration``, else once per epoch. ``min_lr_ratio`` is
    the cosine schedule's floor (``eta_min`` as a share of each group's lr; poly always ends at 0, as torch's
    ``PolynomialLR`` does). Each parameter group's own lr (e.g. a head multiplier) is scaled alike.
    """
    check_schedule(name, total_iters, warmup_iters, warmup_ratio, power, gamma)
    if name == "exponential":
        return ExponentialLR(optimizer, gamma=gamma), False
    decay_iters = total_iters - warmup_iters
    if name == "poly":
        decay: LRScheduler = PolynomialLR(optimizer, total_iters=decay_iters, power=power)
    else:
        base = [group["lr"] for group in optimizer.param_groups]
        if min_lr_ratio and len(set(base)) > 1:
            raise ValueError("min_lr_ratio: a cosine floor needs one lr for all parameter groups")
        decay = CosineAnnealingLR(optimizer, T_max=decay_iters, eta_min=min_lr_ratio * base[0])
    if warmup_iters == 0:
        return decay, True
    warmup = LinearLR(optimizer, start_factor=warmup_ratio, end_factor=1.0, total_iters=warmup_iters)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_iters]), True


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                    norm_decay_mult: float = 1.0, fused: bool | None = None) -> torch.optim.AdamW:
    """The recipe's AdamW (amsgrad) over the trainable parameters, in groups when a multiplier is not 1
    (``segmodels.groups.param_groups``: the head's lr x ``head_lr_mult``; norms', biases' and position
    parameters' decay x ``norm_decay_mult``); with both 1, one group, exactly as without groups."""
    groups = param_groups(model, lr, weight_decay, head_lr_mult, norm_decay_mult)
    return torch.optim.AdamW(groups, lr=lr, amsgrad=True, weight_decay=weight_decay, fused=fused)
