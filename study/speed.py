"""The loop's speed options (``--tf32``, ``--fused-adamw``, ``--channels-last``, ``--compile``), each ``auto``
decided by what was measured to pay on that device for that trial's length (docs/performance.md). No Ray.

A compiled step keeps its shapes static, so no epoch recompiles or captures new CUDA graphs: the last, partial
batch of an epoch is filled up to the batch size with images from the start of the same permutation whose
labels are all ignore_index (``pad_order``). They add nothing to the loss, the gradients or the train metric;
the one thing they change is BatchNorm's statistics over that one batch (taken over batch_size images instead
of the tail's few). Evaluation runs the eager model, so it compiles nothing. Every compiling trial on a node
shares one Inductor cache (``inductor_cache_dir``): after the first, trials compile warm.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

import torch
from torch import nn

from segmodels import model_spec
from study.config import TrainConfig

log = logging.getLogger(__name__)

CONVNET_FAMILIES = ("torchvision",)  # channels_last's auto applies to these (the HF transformers are mostly Linear)
# Measured (docs/performance.md, benchmarks.step_variants / benchmarks/gpu_study.sh); CUDA values are
# the expected ones until the GPU script has run.
FUSED_ADAMW_AUTO = {"cuda": True, "cpu": False}
CHANNELS_LAST_AUTO = {"cuda": True, "cpu": False}
# auto compiles a trial of at least this many optimizer steps (None: never), in this mode:
COMPILE_AUTO = {"cuda": ("reduce-overhead", 1000), "cpu": (None, None)}


@dataclass(frozen=True)
class Speed:
    """The speed options in effect for one trial, every ``auto`` resolved."""

    tf32: bool
    fused_adamw: bool
    channels_last: bool
    compile: str  # off, default, max-autotune or reduce-overhead (CUDA graphs)

    @property
    def static_shapes(self) -> bool:
        return self.compile != "off"


def resolve_speed(cfg: TrainConfig, device: torch.device, steps: int, world: int = 1) -> Speed:
    """``cfg``'s speed options on ``device`` for a trial of ``steps`` optimizer steps over ``world`` ranks."""
    kind = "cuda" if device.type == "cuda" else "cpu"

    def switch(value: str, auto: bool) -> bool:
        return value == "on" or (value == "auto" and auto)

    convnet = model_spec(cfg.model, cfg.variant).family in CONVNET_FAMILIES
    mode = cfg.compile
    if mode == "auto":
        auto_mode, min_steps = COMPILE_AUTO[kind]
        mode = auto_mode if auto_mode and steps >= min_steps else "off"
        if mode == "reduce-overhead" and world > 1:  # DDP's gradient hooks: compiled, but not graphed
            mode = "default"
    if mode == "reduce-overhead" and kind != "cuda":
        log.warning("--compile reduce-overhead: CUDA graphs need CUDA; compiling with mode default on %s", device)
        mode = "default"
    return Speed(tf32=kind == "cuda" and cfg.tf32 != "off",
                 fused_adamw=switch(cfg.fused_adamw, FUSED_ADAMW_AUTO[kind]),
                 channels_last=switch(cfg.channels_last, convnet and CHANNELS_LAST_AUTO[kind]),
                 compile=mode)


def apply_tf32(speed: Speed, device: torch.device) -> None:
    """TF32 for fp32 matmuls and convolutions on CUDA, or strict fp32 (a process-wide setting, so set each trial)."""
    if device.type != "cuda":
        return
    torch.set_float32_matmul_precision("high" if speed.tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = speed.tf32


def inductor_cache_dir() -> str:
    """One Inductor cache per node for every trial (``$TORCHINDUCTOR_CACHE_DIR`` if set), so trials after the
    first compile warm."""
    default = os.path.join(tempfile.gettempdir(), "segstudy-inductor")
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", default)


class FastForward(nn.Module):
    """``net``'s training forward under the speed options: NHWC input, torch.compile, a CUDA-graph step mark.

    The compiled callable is kept outside the module tree: ``train()``/``eval()`` reach ``net`` once, and
    evaluation keeps calling the eager ``net``.
    """

    def __init__(self, net: nn.Module, speed: Speed) -> None:
        super().__init__()
        self.net, self.speed = net, speed
        compiled = net
        if speed.compile != "off":
            log.info("compiling the model (mode %s, Inductor cache %s)", speed.compile, inductor_cache_dir())
            # A reused Tune actor trains one model after another: without a reset, each would count towards
            # dynamo's recompile limit and the ninth would silently run eager. The disk cache stays warm.
            torch._dynamo.reset()
            compiled = torch.compile(net, mode=speed.compile, dynamic=False)
        self.__dict__["compiled"] = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.speed.compile == "reduce-overhead":  # a new step: the last step's graph outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(x)


def pad_order(order: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``order`` filled up to whole batches with its own first entries (their labels are then ignored)."""
    short = -len(order) % batch_size
    if not short:
        return order
    fill = order[torch.arange(short, device=order.device) % len(order)]
    return torch.cat([order, fill])
