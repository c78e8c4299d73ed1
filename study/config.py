"""The one source of truth for a trial's hyperparameters and their valid ranges, and the one place that
lists every allowed value (models, inits and SegFormer variants come from ``segmodels``, which builds them).

Defaults are the report's recipe: 30 epochs, batch 64, AdamW(lr 1e-3, amsgrad),
ExponentialLR(gamma 0.98), validation every 2 epochs, 64x64 images.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from segmodels import INITS, MODELS, SEGFORMER_VARIANTS
from study.errors import ConfigError

__all__ = ["DATASETS", "DEVICES", "EQUIVALENCE_MARGIN", "SPLITS", "INITS", "MODELS", "PRECISIONS",
           "SEGFORMER_VARIANTS", "STUDY_STAGE", "TRIAL_RUNNERS", "TrainConfig", "parse_image_size"]

DATASETS = ("pets", "cityscapes")
SPLITS = ("train", "val", "test")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
TRIAL_RUNNERS = ("auto", "tune", "train")
STUDY_STAGE = "cityscapes"  # as --pretrained-fcn/--pretrained-segformer: the study's own Cityscapes stage
EQUIVALENCE_MARGIN = 0.01  # mIoU: the default margin of the report's equivalence claim (analysis.findings)
SEGFORMER_MIN_SIZE = 32


def parse_image_size(value: Any) -> tuple[int, int]:
    """``64`` -> (64, 64); ``"64x128"`` or ``[64, 128]`` -> (64, 128) as (height, width)."""
    if isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, int):
        parts = [value, value]
    else:
        text = str(value).lower().strip()
        parts = text.split("x") if "x" in text else [text, text]
    try:
        height, width = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"--image-size: expected N or HxW with positive integers, got {value!r}") from None
    if height < 8 or width < 8:
        raise ConfigError(f"--image-size: expected sides of at least 8 pixels, got {value!r}")
    return height, width


@dataclass
class TrainConfig:
    """Everything that defines one trial. Field names are the option names (``--image-size`` etc.)."""

    dataset: str = "pets"
    data_root: str = "data"
    model: str = "segformer"
    init: str = "scratch"
    pretrained: str | None = None
    variant: str = "b0"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    gamma: float = 0.98
    image_size: tuple[int, int] = (64, 64)
    val_every: int = 2
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # autocast dtype; auto: see study.loop.resolve_precision
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        self.image_size = parse_image_size(self.image_size)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the option if a value is unknown or out of range."""
        _choice("dataset", self.dataset, DATASETS)
        _choice("model", self.model, MODELS)
        _choice("init", self.init, INITS)
        _choice("variant", self.variant, SEGFORMER_VARIANTS)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _number("lr", self.lr, float, lambda v: v > 0 and math.isfinite(v), "a number > 0")
        _number("gamma", self.gamma, float, lambda v: 0 < v <= 1, "a number in (0, 1]")
        _number("epochs", self.epochs, int, lambda v: v >= 1, "an integer >= 1")
        _number("batch-size", self.batch_size, int, lambda v: v >= 1, "an integer >= 1")
        _number("val-every", self.val_every, int, lambda v: v >= 1, "an integer >= 1")
        _number("seed", self.seed, int, lambda v: v >= 0, "an integer >= 0")
        if self.model == "segformer" and min(self.image_size) < SEGFORMER_MIN_SIZE:
            raise ConfigError(f"--image-size: SegFormer needs at least {SEGFORMER_MIN_SIZE} pixels per side "
                              f"(its last stage downsamples 32x), got {self.image_size[0]}x{self.image_size[1]}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{option}: expected one of {', '.join(choices)}, got {value!r}")


def _number(option: str, value: Any, kind: type, ok: Any, expected: str) -> None:
    valid_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        valid_type = valid_type and float(value).is_integer()
    if not valid_type or not ok(value):
        raise ConfigError(f"--{option}: expected {expected}, got {value!r}")
