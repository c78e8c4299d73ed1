"""The shared train loop, read like torchvision's reference: ``train_one_epoch``, ``evaluate`` and the
``train`` that ties them together. No Ray in here.

Recipe (the report's, the defaults): AdamW(lr, amsgrad=True), ExponentialLR(gamma) stepped per
epoch, cross-entropy ignoring 255, validation every ``val_every`` epochs and at
the last one, best weights kept by val mIoU. The recipe options change each piece in its own function:
``build_training`` (parameter groups, a poly or cosine schedule with warmup, stepped per iteration),
``augment_spec`` (rescale, crop, flip and photometric steps, ``study.augment``) and ``inference_options``
(validation at each label's original size, whole or in sliding windows, ``study.inference``).
Class weights (``--class-weights``) weight the training loss only: the validation loss and mIoU stay
unweighted, so they compare across weightings.

Batches are cut from the decoded uint8 tensors, which are moved to the training
device once (a split too large for the trial's share of GPU memory stays in host
memory and is copied batch by batch: ``study.data.stream``); flips and normalisation
happen on the device. Under torch.distributed (e.g.
DDP set up by Ray Train) each rank trains on its own shard of every epoch's
permutation and the validation confusion matrix is summed over ranks, so every
rank computes the same mIoU. Callers hook in through ``on_validation``.

Precision: ``auto`` trains under bf16 autocast on CPUs with native bf16 (AVX512-BF16 or
AMX), where ``benchmarks.precision`` measured training faster with val mIoU unchanged;
everywhere else in fp32, CUDA included, where bf16 autocast measured slower at the report's sizes
(docs/performance.md and ``benchmarks/results/gpu-h200*.json`` have the numbers).
Validation is always fp32.

Speed options (``--tf32``, ``--fused-adamw``, ``--channels-last``, ``--compile``): ``study.speed``.
"""

from __future__ import annotations

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

from foundation.errors import ConfigError
from study.augment import AugmentSpec, augment_batch, draw_params
from study.config import TrainConfig, iterations_per_epoch, warmup_iterations
from study.data import OriginalLabels, SegDataset
from study.data.frequencies import class_weights
from study.data.stream import Split, as_split, attach, place_splits, training_reserve
from study.data.transforms import hflip_where, normalize
from study.inference import infer, padded_logits
from study.metrics import SegMetric
from study.schedules import build_optimizer, build_scheduler
from study.speed import FastForward, apply_tf32, pad_order, resolve_speed

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


@dataclass
class EpochStats:
    """What ``train_one_epoch`` measured (sums stay on the device until the epoch validates)."""

    loss_sum: torch.Tensor
    pixels: torch.Tensor
    metric: SegMetric | None
    images: int
    seconds: float


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
def evaluate(model: nn.Module, images: torch.Tensor | Split, masks: torch.Tensor | None, num_classes: int,
             batch_size: int,
             ignore_index: int = 255,
             on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
             valid: torch.Tensor | None = None, originals: OriginalLabels | None = None,
             **inference: Any) -> tuple[SegMetric, float]:
    """Confusion matrix and mean per-pixel loss over (this rank's shard of) a split, summed over ranks.

    Always in fp32 (as torchvision's reference evaluates), so val and test scores do not depend on
    the precision a model was trained in. ``inference`` are ``study.inference.infer``'s keywords (test scale,
    whole or sliding windows); none: the model's logits at the input size, scored against the split's masks.

    ``on_batch(indices, logits, targets)`` sees every batch (e.g. to keep probabilities for ROC curves).
    ``images`` is a tensor beside ``masks``, or a placed split (``study.data.stream``) with ``masks`` None.
    ``valid`` (N, 2, on the host) and ``originals`` (default: the placed split's own, ``study.data.stream.attach``):
    images padded to one size are inferred on their valid region, and scored against their original-size labels
    when given (else against their masks' valid region): ``scored_batch``.
    """
    rank, world = dist_info()
    data = as_split(images, masks)
    valid = valid if valid is not None else data.valid
    originals = originals if originals is not None else data.originals
    device = data.device
    metric = SegMetric(num_classes, ignore_index, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    pixels = torch.zeros((), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    indices = torch.arange(rank, len(data), world)
    for batch in data.batches(indices, batch_size):
        for idx, logits, y in scored_batch(model, *batch, valid, originals, inference):
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


def scored_batch(model: nn.Module, idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor | None,
                 originals: OriginalLabels | None,
                 inference: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(indices, logits, int64 targets) of a uint8 batch: one triple for the whole batch when its images fill it
    and its masks are the targets (the report's recipe); else one per image, its valid region inferred and its
    logits resized to its target, the original-size label (``originals``) or its mask's valid region."""
    x = normalize(x)
    if valid is None and originals is None:
        return [(idx, infer(model, x, tuple(y.shape[-2:]), **inference), y.long())]
    rows = idx.tolist()
    extents = [tuple(valid[k].tolist()) for k in rows] if valid is not None else [tuple(x.shape[-2:])] * len(rows)
    if originals is not None:
        targets = [originals[k].to(x.device) for k in rows]
    else:
        targets = [y[j, : h, : w] for j, (h, w) in enumerate(extents)]
    logits = padded_logits(model, x, extents, [tuple(t.shape) for t in targets], **inference)
    return [(idx[j:j + 1], logits[j], targets[j][None].long()) for j in range(len(rows))]


def pixel_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
               class_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over labelled pixels, its denominator): the weighted mean when ``class_weight`` is
    given, as ``F.cross_entropy(weight=...)`` averages; the denominator lets an epoch's mean be summed exactly."""
    labelled = targets != ignore_index
    if class_weight is None:
        denominator = labelled.sum()
    else:
        denominator = torch.where(labelled, class_weight[targets.clamp(max=len(class_weight) - 1)], 0).sum()
    total = F.cross_entropy(logits.float(), targets, weight=class_weight, ignore_index=ignore_index, reduction="sum")
    return total / denominator.clamp(min=1e-12), denominator


def train_one_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor | Split,
                    masks: torch.Tensor | None, cfg: TrainConfig, epoch: int, *, num_classes: int,
                    ignore_index: int, bf16: bool, track_metric: bool,
                    on_step: Callable[[torch.Tensor], None] | None = None,
                    class_weight: torch.Tensor | None = None, static_shapes: bool = False,
                    augment: AugmentSpec | None = None, scheduler: Any = None) -> EpochStats:
    """One pass over this rank's shard of a seeded permutation, with seeded flips (or, with ``augment``, the
    seeded rescale, crop, flip and photometric steps of ``study.augment``); the loss is weighted per class
    by ``class_weight`` (K,) when given (``study.data.frequencies.class_weights``). ``scheduler``, when given,
    is stepped after every optimizer step (a per-iteration schedule, ``study.schedules``).

    The permutation and the flips come from a CPU generator seeded by (seed, epoch), and augmentation
    parameters from one per (seed, epoch, sample), so a resumed run draws the same ones on any device, with
    any placement; they (and a resident split's order) are moved to the device once per epoch, so the steps
    never wait on a host-to-device copy. ``images``/``masks`` as in ``evaluate``; a placed split's ``valid``
    extents (``study.data.stream.attach``) tell ``augment`` where each padded image ends.
    """
    rank, world = dist_info()
    data = as_split(images, masks)
    device = data.device
    epoch_rng = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(len(data), generator=epoch_rng)
    flips = torch.rand(len(data), generator=epoch_rng) < 0.5
    order = _shard(order, rank, world)
    real = len(order)  # this rank's images; with static_shapes (a compiled step) fillers follow: pad_order
    order = pad_order(order, cfg.batch_size) if static_shapes else order
    flips = flips[order].to(device)
    params = draw_params(cfg.seed, epoch, order).to(device) if augment is not None else None
    extent = data.valid.to(device) if augment is not None and data.valid is not None else None
    metric = SegMetric(num_classes, ignore_index, device=device) if track_metric else None
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    pixels = torch.zeros((), dtype=torch.float64, device=device)
    net.train()
    started = time.perf_counter()
    for step, (idx, x, y) in enumerate(data.batches(order, cfg.batch_size)):
        start = step * cfg.batch_size
        extents = extent.index_select(0, idx.to(device)) if extent is not None else None
        x, y = augment_step(x, y, flips, params, start, cfg.batch_size, augment, extents)
        if start + cfg.batch_size > real:
            y[max(real - start, 0):] = ignore_index  # fillers (static shapes): no loss, no gradient, no metric
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
        loss, valid = pixel_loss(logits, y, ignore_index, class_weight)  # class weights: the loss, not the metric
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * valid
        pixels += valid
        if metric is not None:  # train mIoU is reported with validation only; elsewhere it is wasted work
            metric.update(logits.detach(), y)
        if on_step is not None:
            on_step(loss_sum / pixels.clamp(min=1))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return EpochStats(loss_sum, pixels, metric, real * world, time.perf_counter() - started)


def augment_spec(cfg: TrainConfig, ignore_index: int) -> AugmentSpec | None:
    """The training augmentation of ``cfg``'s recipe: with a ``base_size``, MMSegmentation's rescale, crop to
    ``image_size``, flip and (``photometric``) distortion; None: the report's seeded flip only."""
    if cfg.base_size is None:
        return None
    return AugmentSpec(crop_size=tuple(cfg.image_size), base_size=tuple(cfg.base_size),
                       ratio_range=tuple(cfg.ratio_range), cat_max_ratio=cfg.cat_max_ratio,
                       photometric=cfg.photometric, ignore_index=ignore_index)


def inference_options(cfg: TrainConfig) -> dict[str, Any]:
    """``study.inference.infer``'s keywords for validation and test: whole or sliding windows. The test scale is
    the stored one (``study.trial.split_layouts``), so none is given here."""
    return {"mode": cfg.eval_mode, "window": cfg.slide_window, "stride": cfg.slide_stride}


def build_training(cfg: TrainConfig, model: nn.Module, total_iters: int,
                   fused: bool | None) -> tuple[torch.optim.Optimizer, Any, bool]:
    """(optimizer, scheduler, stepped per iteration) of ``cfg``'s recipe: AdamW with the head's lr and the norms'
    decay multipliers (``study.schedules``), and its schedule over ``total_iters`` optimizer steps, the warmup a
    share of them. The report's recipe: one group, ExponentialLR per epoch."""
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.head_lr_mult, cfg.norm_decay_mult, fused=fused)
    warmup_iters = warmup_iterations(cfg.warmup, total_iters)
    scheduler, per_iteration = build_scheduler(cfg.schedule, optimizer, total_iters, warmup_iters=warmup_iters,
                                               power=cfg.poly_power, gamma=cfg.gamma)
    return optimizer, scheduler, per_iteration


def augment_step(x: torch.Tensor, y: torch.Tensor, flips: torch.Tensor, params: torch.Tensor | None, start: int,
                 batch_size: int, augment: AugmentSpec | None,
                 valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as the model sees it: flipped where ``flips`` says (the report's recipe), or augmented with its
    rows of ``params`` (``study.augment``; ``valid``: each padded image's extent); normalised, masks as int64."""
    if augment is None:
        x, y = hflip_where(x, y, flips[start : start + batch_size])
    else:
        x, y = augment_batch(x, y, params[start : start + batch_size], augment, valid)
    return normalize(x), y.long()


def train(cfg: TrainConfig, train_set: SegDataset, val_set: SegDataset, model: nn.Module, *,
          on_validation: Callable[[ValidationEvent], None] | None = None,
          wrap_model: Callable[[nn.Module], nn.Module] | None = None,
          resume: dict[str, Any] | None = None, progress: bool = False) -> TrainResult:
    """Train ``model`` on ``train_set`` with ``cfg``'s recipe; validate on ``val_set``.

    ``wrap_model`` (e.g. Ray Train's ``prepare_model``) moves the model to its device
    and wraps it for DDP; without it the model goes to ``cfg.device``. ``resume`` is a
    dict from ``ValidationEvent.checkpoint()``: training continues after its epoch.
    """
    net = wrap_model(model) if wrap_model else model.to(resolve_device(cfg.device))
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precision = resolve_precision(cfg.precision, device)
    log.info("training on %s in %s (--precision %s)", device, precision, cfg.precision)
    num_classes, ignore_index = train_set.num_classes, train_set.ignore_index
    class_weight = _class_weight(cfg, train_set, device)
    train_data, val_data = place_splits([(train_set.images, train_set.masks), (val_set.images, val_set.masks)],
                                        device, cfg.data_placement, cfg.device_memory_share,
                                        reserve=lambda: training_reserve(cfg, num_classes))
    train_data, val_data = attach(train_data, train_set.valid), attach(val_data, val_set.valid, val_set.originals)
    steps = iterations_per_epoch(len(train_data), cfg.batch_size, dist_info()[1])
    speed = resolve_speed(cfg, device, cfg.epochs * steps, dist_info()[1])
    apply_tf32(speed, device)
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)
    log.info("speed options: %s", speed)
    fast = FastForward(net, speed)
    optimizer, scheduler, per_iteration = build_training(cfg, model, cfg.epochs * steps, speed.fused_adamw or None)
    augment = augment_spec(cfg, ignore_index)
    result = TrainResult()
    start_epoch = _restore(resume, model, optimizer, scheduler, result) if resume is not None else 1
    bar = ProgressBar((cfg.epochs - start_epoch + 1) * steps) if progress and dist_info()[0] == 0 else None

    for epoch in range(start_epoch, cfg.epochs + 1):
        validates = epoch % cfg.val_every == 0 or epoch == cfg.epochs
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(fast, optimizer, train_data, None, cfg, epoch, num_classes=num_classes,
                                ignore_index=ignore_index, bf16=precision == "bf16", track_metric=validates,
                                on_step=bar.step if bar else None, class_weight=class_weight,
                                static_shapes=speed.static_shapes, augment=augment,
                                scheduler=scheduler if per_iteration else None)
        if not per_iteration:
            scheduler.step()
        if validates:
            row, is_best = _validate(net, val_data, cfg, epoch, stats, lr, num_classes, ignore_index, result, bar)
            if on_validation is not None:
                on_validation(ValidationEvent(row=row, is_best=is_best, model=model, checkpoint=_resumable_state(
                    model, optimizer, scheduler, epoch, result)))
    if bar is not None:
        bar.close()
    return result


def _class_weight(cfg: TrainConfig, train_set: SegDataset, device: torch.device) -> torch.Tensor | None:
    """``--class-weights`` as a (K,) tensor on ``device`` (None: unweighted), logged once."""
    class_weight = class_weights(cfg.class_weights, train_set.class_pixels)
    if class_weight is not None:
        class_weight = class_weight.to(device)
        log.info("class weights (%s): %s", cfg.class_weights if isinstance(cfg.class_weights, str) else "given",
                 ", ".join(f"{w:.3g}" for w in class_weight.tolist()))
    return class_weight


def _validate(net: nn.Module, val_data: Split, cfg: TrainConfig, epoch: int, stats: EpochStats, lr: float,
              num_classes: int, ignore_index: int, result: TrainResult,
              bar: ProgressBar | None) -> tuple[dict[str, float], bool]:
    """The epoch's metrics row (train stats summed over ranks, then validation), recorded in ``result``;
    returns it and whether it is the best so far."""
    if dist_info()[1] > 1:
        stats.metric.all_reduce()
        torch.distributed.all_reduce(stats.loss_sum)
        torch.distributed.all_reduce(stats.pixels)
    val_metric, val_loss = evaluate(net, val_data, None, num_classes, cfg.batch_size, ignore_index,
                                    **inference_options(cfg))
    row = {"epoch": epoch, "train_loss": float(stats.loss_sum / stats.pixels.clamp(min=1)),
           "train_miou": stats.metric.miou(), "val_loss": val_loss, "val_miou": val_metric.miou(), "lr": lr,
           "images_per_s": stats.images / stats.seconds}
    result.rows.append(row)
    is_best = row["val_miou"] > result.best_val_miou
    if is_best:
        result.best_val_miou, result.best_epoch = row["val_miou"], epoch
    if bar is not None:
        bar.write(f"epoch {epoch}: train_loss {row['train_loss']:.4f} val_loss {val_loss:.4f} "
                  f"val_miou {row['val_miou']:.4f}{' (best)' if is_best else ''}")
    return row, is_best


def _restore(resume: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             result: TrainResult) -> int:
    """Load a ``ValidationEvent.checkpoint()`` dict; returns the epoch to continue from."""
    model.load_state_dict(resume["model_state"])
    optimizer.load_state_dict(resume["optimizer"])
    planned, saved = schedule_lengths(scheduler.state_dict()), schedule_lengths(resume["scheduler"])
    if planned != saved:  # --epochs changed on --resume: a per-iteration schedule cannot be stretched exactly
        raise ConfigError(f"--epochs: the resumed run's schedule was planned over {saved} iterations, this one's "
                          f"over {planned}; resume with the run's --epochs, or start a new run")
    scheduler.load_state_dict(resume["scheduler"])
    torch.set_rng_state(resume["rng_cpu"])
    if resume.get("rng_cuda") and torch.cuda.is_available():  # dropout and drop-path draw on the GPU
        torch.cuda.set_rng_state_all(resume["rng_cuda"])
    result.best_val_miou, result.best_epoch = float(resume["best_val_miou"]), int(resume["best_epoch"])
    return int(resume["epoch"]) + 1


def schedule_lengths(state: dict[str, Any]) -> list[Any]:
    """The lengths in a scheduler's state (warmup and poly ``total_iters``, cosine ``T_max``; None for the
    exponential schedule), to tell a resumed run whose length changed."""
    return [inner.get("total_iters", inner.get("T_max")) for inner in state.get("_schedulers", [state])]


def _resumable_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int,
                     result: TrainResult) -> Callable[[], dict[str, Any]]:
    """What ``resume`` takes, built only when a caller saves it (copying weights to the CPU costs time)."""
    best_val_miou, best_epoch = result.best_val_miou, result.best_epoch

    def checkpoint() -> dict[str, Any]:
        return {"epoch": epoch, "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng_cpu": torch.get_rng_state(), "best_val_miou": best_val_miou, "best_epoch": best_epoch,
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}

    return checkpoint


class ProgressBar:
    """A tqdm bar over all steps; the running loss is read from the device every 5 steps only."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self.bar, self.count = tqdm(total=total, unit="batch", dynamic_ncols=True), 0

    def step(self, running_loss: torch.Tensor) -> None:
        self.bar.update(1)
        if self.count % 5 == 0:
            self.bar.set_postfix(loss=f"{float(running_loss):.4f}")
        self.count += 1

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
