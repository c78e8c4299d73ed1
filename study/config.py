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

from segmodels import INITS, MODELS, SEGFORMER_VARIANTS, check_model
from study.errors import ConfigError

__all__ = ["CLASS_WEIGHTINGS", "DATASETS", "DEVICES", "EQUIVALENCE_MARGIN", "SPLITS", "INITS", "MODELS", "PRECISIONS",
           "SEGFORMER_VARIANTS", "STUDY_STAGE", "TRIAL_RUNNERS", "TrainConfig", "parse_image_size", "DATA_PLACEMENTS"]

DATASETS = ("pets", "cityscapes", "voc", "ade20k", "folder")  # study.data.formats has one entry each
CLASS_WEIGHTINGS = ("none", "inverse_frequency", "median_frequency")  # or a list of K weights
SPLITS = ("train", "val", "test")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
DATA_PLACEMENTS = ("auto", "device", "host")  # --data-placement (study.data.stream)
SWITCHES = ("auto", "on", "off")  # --tf32, --fused-adamw, --channels-last
COMPILE_MODES = ("auto", "off", "default", "max-autotune", "reduce-overhead")  # --compile (torch.compile modes)
TRIAL_RUNNERS = ("auto", "tune", "train")
STUDY_STAGE = "cityscapes"  # as --pretrained-fcn/--pretrained-segformer: the study's own Cityscapes stage
EQUIVALENCE_MARGIN = 0.01  # mIoU: the default margin of the report's equivalence claim (analysis.findings)
# The TrainConfig fields a study may search (a space file's `space:` and `points:`; study.trial.trial_config).
SEARCHABLE = ("model", "init", "lr", "gamma", "batch_size", "weight_decay", "image_size", "class_weights")


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
    weight_decay: float = 0.01  # AdamW's (torch's default, the report's recipe)
    # The task beyond the dataset's name (study.task): None/defaults mean the format's own.
    classes: list[str] | None = None
    ignore_index: int = 255
    reduce_zero_label: bool | None = None
    class_weights: str | list[float] = "none"  # none | inverse_frequency | median_frequency | [w0, w1, ...]
    # Where the splits live while training (study.data.stream): auto keeps them on the device when they fit
    # the trial's share of its memory, else in host memory, copied batch by batch. Results are the same.
    data_placement: str = "auto"  # auto | device | host
    device_memory_share: float = 1.0  # the trial's share of its GPU (e.g. a fractional gpus_per_trial)
    # Speed options of the loop (study.loop); each "auto" is decided by measurement there.
    tf32: str = "auto"  # TF32 matmuls/convolutions on CUDA; off: strict fp32
    fused_adamw: str = "auto"  # AdamW(fused=True), amsgrad kept
    channels_last: str = "auto"  # NHWC memory format for the convnets
    compile: str = "auto"  # torch.compile of the forward + loss; reduce-overhead adds CUDA graphs (CUDA only)

    def __post_init__(self) -> None:
        self.image_size = parse_image_size(self.image_size)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the option if a value is unknown or out of range."""
        _choice("dataset", self.dataset, DATASETS)
        check_model(self.model, self.variant, self.image_size)  # the name, and the image size it can take
        _choice("init", self.init, INITS)
        _choice("variant", self.variant, SEGFORMER_VARIANTS)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("data-placement", self.data_placement, DATA_PLACEMENTS)
        _number("device-memory-share", self.device_memory_share, float, lambda v: 0 < v <= 1, "a number in (0, 1]")
        for option in ("tf32", "fused_adamw", "channels_last"):
            _choice(option.replace("_", "-"), getattr(self, option), SWITCHES)
        _choice("compile", self.compile, COMPILE_MODES)
        _number("weight-decay", self.weight_decay, float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")
        _number("ignore-index", self.ignore_index, int, lambda v: 0 <= v <= 255, "an integer in 0..255")
        if self.reduce_zero_label not in (None, True, False):
            raise ConfigError(f"--reduce-zero-label: expected true or false, got {self.reduce_zero_label!r}")
        if self.classes is not None and not (isinstance(self.classes, (list, tuple))
                                             and all(isinstance(c, str) and c for c in self.classes)):
            raise ConfigError(f"--classes: expected a list of class names, got {self.classes!r}")
        check_class_weights(self.class_weights)
        _number("lr", self.lr, float, lambda v: v > 0 and math.isfinite(v), "a number > 0")
        _number("gamma", self.gamma, float, lambda v: 0 < v <= 1, "a number in (0, 1]")
        _number("epochs", self.epochs, int, lambda v: v >= 1, "an integer >= 1")
        _number("batch-size", self.batch_size, int, lambda v: v >= 1, "an integer >= 1")
        _number("val-every", self.val_every, int, lambda v: v >= 1, "an integer >= 1")
        _number("seed", self.seed, int, lambda v: v >= 0, "an integer >= 0")

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


def check_class_weights(value: Any, option: str = "--class-weights") -> None:
    """``none``, ``inverse_frequency``, ``median_frequency`` or a list of positive weights (one per class)."""
    if isinstance(value, str):
        _choice(option.lstrip("-"), value, CLASS_WEIGHTINGS)
        return
    numbers = isinstance(value, (list, tuple)) and value and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 and math.isfinite(w) for w in value)
    if not numbers or not any(value):
        raise ConfigError(f"{option}: expected one of {', '.join(CLASS_WEIGHTINGS)} or a list of weights >= 0 "
                          f"(one per class, not all 0), got {value!r}")


def _choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{option}: expected one of {', '.join(choices)}, got {value!r}")


def _number(option: str, value: Any, kind: type, ok: Any, expected: str) -> None:
    valid_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        valid_type = valid_type and float(value).is_integer()
    if not valid_type or not ok(value):
        raise ConfigError(f"--{option}: expected {expected}, got {value!r}")
