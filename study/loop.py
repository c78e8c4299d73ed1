"""The shared train loop: one function, read top to bottom. No Ray in here.

Recipe (the report's): AdamW(lr, amsgrad=True), ExponentialLR(gamma) stepped per
epoch, cross-entropy ignoring 255, validation every ``val_every`` epochs and at
the last one, best weights kept by val mIoU.

Batches are cut from the decoded uint8 tensors, which are moved to the training
device once; flips and normalisation happen there. Under torch.distributed (e.g.
DDP set up by Ray Train) each rank trains on its own shard of every epoch's
permutation and the validation confusion matrix is summed over ranks, so every
rank computes the same mIoU. Callers hook in through ``on_validation``.

Precision: ``auto`` trains under bf16 autocast on CPUs with native bf16 (AVX512-BF16 or
AMX), where ``benchmarks.precision`` measured training faster with val mIoU unchanged;
everywhere else, CUDA included until benchmarks/gpu.py part (c) has been run, it trains in
fp32. Validation is always fp32.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from study.config import TrainConfig
from study.data import SegDataset
from study.data.transforms import normalize, random_hflip
from study.metrics import SegMetric

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "train_loss", "train_miou", "val_loss", "val_miou", "lr", "images_per_s")


@dataclass
class ValidationEvent:
    """What ``on_validation`` receives after each validation."""

    row: dict[str, float]
    is_best: bool
    model: nn.Module  # the unwrapped model (no DDP)
    checkpoint: Callable[[], dict[str, Any]]  # the resumable state, built on demand


@dataclass
class TrainResult:
    rows: list[dict[str, float]] = field(default_factory=list)
    best_val_miou: float = -math.inf
    best_epoch: int = 0
    best_model_state: dict[str, torch.Tensor] | None = None


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls/convolutions run natively instead of being emulated (slower)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``precision`` (auto, fp32, bf16) on ``device``."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shard(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's part of ``order``, padded by wrap-around so every rank takes the same number of steps."""
    total = math.ceil(len(order) / world) * world
    padded = torch.cat([order, order[: total - len(order)]]) if total > len(order) else order
    return padded[rank::world]


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, num_classes: int, batch_size: int,
             ignore_index: int = 255,
             on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None) -> tuple[SegMetric, float]:
    """Confusion matrix and mean per-pixel loss over (this rank's shard of) a split, summed over ranks.

    Always in fp32 (as torchvision's reference evaluates), so val and test scores do not depend on
    the precision a model was trained in.

    ``on_batch(indices, logits, targets)`` sees every batch (e.g. to keep probabilities for ROC curves).
    """
    rank, world = dist_info()
    device = images.device
    metric = SegMetric(num_classes, ignore_index, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    pixels = torch.zeros((), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    indices = torch.arange(rank, len(images), world)
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size].to(device)
        x, y = normalize(images[idx]), masks[idx].long()
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, ignore_index=ignore_index, reduction="sum")
        pixels += (y != ignore_index).sum()
        metric.update(logits, y)
        if on_batch is not None:
            on_batch(idx, logits, y)
    if world > 1:
        metric.all_reduce()
        torch.distributed.all_reduce(loss_sum)
        torch.distributed.all_reduce(pixels)
    model.train(was_training)
    return metric, float(loss_sum / pixels.clamp(min=1))


def train(cfg: TrainConfig, train_set: SegDataset, val_set: SegDataset, model: nn.Module, *,
          on_validation: Callable[[ValidationEvent], None] | None = None,
          wrap_model: Callable[[nn.Module], nn.Module] | None = None,
          resume: dict[str, Any] | None = None, progress: bool = False) -> TrainResult:
    """Train ``model`` on ``train_set`` with ``cfg``'s recipe; validate on ``val_set``.

    ``wrap_model`` (e.g. Ray Train's ``prepare_model``) moves the model to its device
    and wraps it for DDP; without it the model goes to ``cfg.device``. ``resume`` is a
    dict from ``ValidationEvent.checkpoint()``: training continues after its epoch.
    """
    rank, world = dist_info()
    net = wrap_model(model) if wrap_model else model.to(resolve_device(cfg.device))
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precision = resolve_precision(cfg.precision, device)
    bf16 = precision == "bf16"
    log.info("training on %s in %s (--precision %s)", device, precision, cfg.precision)
    num_classes, ignore_index = train_set.num_classes, train_set.ignore_index
    train_images, train_masks = train_set.images.to(device), train_set.masks.to(device)
    val_images, val_masks = val_set.images.to(device), val_set.masks.to(device)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, amsgrad=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
    result = TrainResult()
    start_epoch = 1
    if resume is not None:
        model.load_state_dict(resume["model_state"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng_cpu"])
        start_epoch = int(resume["epoch"]) + 1
        result.best_val_miou, result.best_epoch = float(resume["best_val_miou"]), int(resume["best_epoch"])

    train_metric = SegMetric(num_classes, ignore_index, device=device)
    steps_per_epoch = math.ceil(math.ceil(len(train_images) / world) / cfg.batch_size)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=(cfg.epochs - start_epoch + 1) * steps_per_epoch, unit="batch", dynamic_ncols=True)

    for epoch in range(start_epoch, cfg.epochs + 1):
        # ---- train one epoch on this rank's shard ----
        net.train()
        validates = epoch % cfg.val_every == 0 or epoch == cfg.epochs
        train_metric.reset()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        pixels = torch.zeros((), dtype=torch.float64, device=device)
        epoch_rng = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # same order and flips on resume
        order = _shard(torch.randperm(len(train_images), generator=epoch_rng), rank, world)
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        for step, start in enumerate(range(0, len(order), cfg.batch_size)):
            idx = order[start : start + cfg.batch_size].to(device)
            x, y = random_hflip(train_images[idx], train_masks[idx], epoch_rng)
            x, y = normalize(x), y.long()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(x)
            valid = (y != ignore_index).sum()
            loss = F.cross_entropy(logits.float(), y, ignore_index=ignore_index, reduction="sum") / valid.clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * valid
            pixels += valid
            if validates:  # train mIoU is reported with validation only; elsewhere it is wasted work
                train_metric.update(logits.detach(), y)
            if bar is not None:
                bar.update(1)
                if step % 5 == 0:
                    bar.set_postfix(epoch=epoch, loss=f"{float(loss_sum / pixels.clamp(min=1)):.4f}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        scheduler.step()

        if not validates:
            continue
        # ---- validate (metrics summed over ranks) ----
        if world > 1:
            train_metric.all_reduce()
            torch.distributed.all_reduce(loss_sum)
            torch.distributed.all_reduce(pixels)
        val_metric, val_loss = evaluate(net, val_images, val_masks, num_classes, cfg.batch_size, ignore_index)
        row = {
            "epoch": epoch,
            "train_loss": float(loss_sum / pixels.clamp(min=1)),
            "train_miou": train_metric.miou(),
            "val_loss": val_loss,
            "val_miou": val_metric.miou(),
            "lr": lr,
            "images_per_s": len(order) * world / seconds,
        }
        result.rows.append(row)
        is_best = row["val_miou"] > result.best_val_miou
        if is_best:
            result.best_val_miou, result.best_epoch = row["val_miou"], epoch
            result.best_model_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        if bar is not None:
            bar.write(f"epoch {epoch}: train_loss {row['train_loss']:.4f} val_loss {val_loss:.4f} "
                      f"val_miou {row['val_miou']:.4f}{' (best)' if is_best else ''}")
        if on_validation is not None:
            def checkpoint(epoch: int = epoch) -> dict[str, Any]:
                return {
                    "epoch": epoch,
                    "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng_cpu": torch.get_rng_state(),
                    "best_val_miou": result.best_val_miou,
                    "best_epoch": result.best_epoch,
                }

            on_validation(ValidationEvent(row=row, is_best=is_best, model=model, checkpoint=checkpoint))
    if bar is not None:
        bar.close()
    return result
