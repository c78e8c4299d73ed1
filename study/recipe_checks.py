"""The recipe's settings checked without the data, the model or Ray: what augmentation and inference can do
(``study.augment``, ``study.inference``) and the one size rule they share. ``study.config`` checks every trial with
these, so they import nothing of the study above them."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("whole", "slide")


@dataclass(frozen=True)
class AugmentSpec:
    """What ``augment_batch`` does. ``base_size`` is MMSegmentation's ``scale``: the longer image side is
    rescaled to at most ``max(base_size)`` x ratio and the shorter to at most ``min(base_size)`` x ratio,
    keeping the aspect ratio (None: each image's own size x ratio). ``crop_size`` is (height, width);
    ``cat_max_ratio`` 1 turns the class-share check off."""

    crop_size: tuple[int, int]
    base_size: tuple[int, int] | None = None
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 1.0
    flip_prob: float = 0.5
    photometric: bool = True
    ignore_index: int = 255

    def __post_init__(self) -> None:
        check_augment(self)


def check_augment(spec: AugmentSpec) -> None:
    """ValueError with one line for settings that cannot work."""
    low, high = spec.ratio_range
    if not 0 < low <= high:
        raise ValueError(f"ratio_range: expected 0 < low <= high, got {low}, {high}")
    if min(spec.crop_size) < 1:
        raise ValueError(f"crop_size: expected positive sides, got {spec.crop_size}")
    if spec.base_size is not None and (max(spec.crop_size) > max(spec.base_size)
                                       or min(spec.crop_size) > min(spec.base_size)):
        raise ValueError(f"crop_size {spec.crop_size[0]}x{spec.crop_size[1]} is larger than the base size "
                         f"{spec.base_size[0]}x{spec.base_size[1]}")
    if not 0 < spec.cat_max_ratio <= 1:
        raise ValueError(f"cat_max_ratio: expected 0 < ratio <= 1, got {spec.cat_max_ratio}")
    if not 0 <= spec.flip_prob <= 1:
        raise ValueError(f"flip_prob: expected 0 <= p <= 1, got {spec.flip_prob}")


def check_inference(mode: str = "whole", window: tuple[int, int] | None = None,
                    stride: tuple[int, int] | None = None) -> None:
    """ValueError with one line for an inference setting that cannot work."""
    if mode not in MODES:
        raise ValueError(f"eval_mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "whole":
        return
    if window is None or stride is None:
        raise ValueError("slide inference needs a window and a stride")
    if min(window) < 1 or min(stride) < 1:
        raise ValueError(f"slide window {window} and stride {stride}: expected positive sides")
    if stride[0] > window[0] or stride[1] > window[1]:
        raise ValueError(f"slide window {window[0]}x{window[1]} is smaller than its stride {stride[0]}x{stride[1]}: "
                         "pixels between windows would get no prediction")


def rescale_size(height: int, width: int, scale: tuple[int, int] | None) -> tuple[int, int]:
    """mmcv's ``rescale_size`` keeping the aspect ratio: the longer side to at most ``max(scale)``, the shorter to
    at most ``min(scale)`` (None: unchanged)."""
    if scale is None:
        return height, width
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(int(height * factor + 0.5), 1), max(int(width * factor + 0.5), 1)
