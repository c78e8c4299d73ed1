"""A trial's cost, measured on the device it trains on before it trains, and the check of the constraints that
can be checked then (no Ray: both runners call these, and so can a local run).

Measured in the trial's process, not on the driver: the driver of a GPU study often has no GPU, and a cluster's
trials may run on several kinds of device; each trial's results carry the measurement with the device kind
(``cost_device``), so the summary keeps the cost per kind. Measured once per (model, variant, classes, image
size, device kind, precision, batch size, torch version; an hf: folder's content) and node, in several readings
whose spread is kept, and checked against one quick reading whenever it is used (a cache measured under load is
measured again): ``segmodels.cost.cached_cost`` in the cache folder (``cache_dir``, else ``$SEGSTUDY_CACHE``, else
``~/.cache/segstudy``) under ``cost/``; ``--remeasure-cost`` measures again whatever it holds. A measurement runs on a
throwaway model built from scratch (its weights change), before the trial's model is built and seeded, so the
trial trains exactly as it would without it.

An infeasible configuration is still a Tune trial, so it counts against ``--num-samples``: it reports its cost as
its one result (``infeasible_result``), the driver records it ``infeasible`` and Optuna learns its constraint
values from it, so the sampler moves away from the infeasible region; it costs one measurement per key (none when
cached) and Tune's per-trial overhead, never any training. Not counting it would need a searcher that asks again
without Tune (Ray's searchers cannot), and would hide from the summary what the search tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from foundation.storage import default_cache_dir
from segmodels import build_model
from segmodels.cost import (
    CHECK_RUNS,
    cached_cost,
    count_flops,
    count_parameters,
    device_kind,
    measure_cost,
    model_content,
)
from study.config import TrainConfig
from study.constraints import INFEASIBLE_KEY, VIOLATIONS_KEY, before_training, violations
from study.loop import resolve_device, resolve_precision

COST_FOLDER = "cost"


def cost_folder(cfg: TrainConfig) -> Path:
    return Path(cfg.cache_dir or default_cache_dir()) / COST_FOLDER


def trial_cost(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    """``cfg``'s model on the trial's device at its precision: measured (``segmodels.cost.measure_cost``, at the
    trial's batch size and image size, repeated) and counted (``params``, forward ``flops`` per image); cached,
    and the cache checked by one quick reading (``segmodels.cost.cached_cost``); ``--remeasure-cost`` measures
    again whatever the cache holds."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    size = (int(cfg.image_size[0]), int(cfg.image_size[1]))
    key = {"model": cfg.model, "variant": cfg.variant, "classes": num_classes, "image_size": list(size),
           "device": device_kind(device), "precision": precision, "batch_size": cfg.batch_size,
           "torch": torch.__version__}
    content = model_content(cfg.model, cfg.variant)
    if content is not None:  # an hf: folder: another model saved there is another key
        key["content"] = content
    built: dict[str, Any] = {}

    def network() -> torch.nn.Module:  # built once, for every reading of this call
        if not built:
            net = build_model(cfg.model, num_classes, "scratch", variant=cfg.variant)
            built.update(net=net, counted={"params": count_parameters(net), "flops": count_flops(net, size)})
        return built["net"]

    def measure() -> dict[str, Any]:
        measured = measure_cost(network(), size, cfg.batch_size, device, precision)
        return {**measured, **built["counted"]}

    def check() -> dict[str, Any]:
        return measure_cost(network(), size, cfg.batch_size, device, precision, **CHECK_RUNS)

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # building and measuring draw random numbers
        cost = cached_cost(cost_folder(cfg), key, measure, check, force=cfg.remeasure_cost)
    built.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return cost


def infeasible_result(cost: dict[str, Any], constraints: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """The one result an infeasible configuration reports instead of training (its cost, epoch 0, the flag and
    the violated bounds), or None when ``cost`` meets every constraint that can be checked before training."""
    found = violations(before_training(constraints), cost)
    if not found:
        return None
    return {**cost, "epoch": 0, INFEASIBLE_KEY: True, VIOLATIONS_KEY: "; ".join(found)}
