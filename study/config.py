"""A trial's configuration, declared once: each field is an option (``study.options.option``) whose metadata
carries its help, group, value kind and where it may be set. ``study.settings.StudySettings`` extends it with
the study's own options, so a study and its trials share one declaration and one default per field.

Defaults are the report's recipe: 30 epochs, batch 64, AdamW(lr 1e-3, amsgrad), ExponentialLR(gamma 0.98),
validation every 2 epochs, 64x64 images.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from foundation.errors import ConfigError
from segmodels import INITS, SEGFORMER_VARIANTS, check_model
from study.options import Choice, Flag, Kind, LocalPath, Number, Pair, Size, Text, check_fields, declared, names, option
from study.options import flag as flag_of
from study.recipe_checks import AugmentSpec, check_augment, check_inference
from study.recipes import RECIPES

__all__ = ["CLASS_WEIGHTINGS", "DATASETS", "DEVICES", "EQUIVALENCE_MARGIN", "SPLITS", "PRECISIONS", "SEARCHABLE",
           "STUDY_STAGE", "TRIAL_RUNNERS", "TrainConfig", "check_trial_data", "iterations_per_epoch",
           "parse_image_size", "warmup_iterations", "DATA_PLACEMENTS"]

DATASETS = ("pets", "cityscapes", "voc", "ade20k", "folder")  # study.data.formats has one entry each
CLASS_WEIGHTINGS = ("none", "inverse_frequency", "median_frequency")  # or a list of K weights
SPLITS = ("train", "val", "test")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
DATA_PLACEMENTS = ("auto", "device", "host")  # --data-placement (study.data.stream)
SWITCHES = ("auto", "on", "off")  # --tf32, --fused-adamw, --channels-last
COMPILE_MODES = ("auto", "off", "default", "max-autotune", "reduce-overhead")  # --compile (torch.compile modes)
TRIAL_RUNNERS = ("auto", "tune", "train")
EVAL_AT = ("input", "original")  # --eval-at: labels at the input (test) scale, or each label as it is on disk
STUDY_STAGE = "cityscapes"  # as --pretrained-fcn/--pretrained-segformer: the study's own Cityscapes stage
EQUIVALENCE_MARGIN = 0.01  # mIoU: the default margin of the report's equivalence claim (analysis.findings)
SPEED = ("run", "trial", "resume")  # how fast a trial trains, never what it learns: may change on --resume


class ModelName(Kind):
    """A registry name (``segmodels``): fcn_resnet50, segformer, tv:NAME or hf:ID_OR_FOLDER."""

    expected = "fcn_resnet50, segformer, tv:NAME or hf:ID_OR_FOLDER"
    metavar = "NAME"

    def check(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(self.expected)
        return value  # the registry's own check (with the variant and size) runs in TrainConfig.__post_init__


class ClassWeights(Kind):
    """``none``, ``inverse_frequency``, ``median_frequency`` or a list of weights >= 0 (one per class)."""

    expected = f"one of {', '.join(CLASS_WEIGHTINGS)} or a list of weights >= 0 (one per class, not all 0)"
    metavar = "WEIGHTING"

    def check(self, value: Any) -> Any:
        if isinstance(value, str):
            if value not in CLASS_WEIGHTINGS:
                raise ValueError(self.expected)
            return value
        numbers = isinstance(value, (list, tuple)) and value and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 and math.isfinite(w) for w in value)
        if not numbers or not any(value):
            raise ValueError(self.expected)
        return [float(w) for w in value]

    def parse(self, text: str) -> Any:
        if "," not in text:
            return text
        try:
            return [float(w) for w in text.split(",")]
        except ValueError:
            raise ValueError(f"numbers separated by commas, or {self.expected}") from None


class ClassNames(Kind):
    expected = "a list of class names"

    def check(self, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) and c for c in value):
            raise ValueError(self.expected)
        return list(value)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one trial. Field names are the option names (``--image-size`` etc.)."""

    # model
    model: str = option("segformer", "fcn_resnet50, segformer, tv:NAME or hf:ID_OR_FOLDER (docs/models.md)", "model",
                        ModelName(), where=("trial", "search"))
    init: str = option("scratch", "scratch, finetune (a pretrained encoder, all trained) or freeze (encoder frozen)",
                       "model", Choice(INITS), where=("trial", "search"))
    pretrained: str | None = option(None, "encoder source: a file, a Hugging Face id/folder (hf:), imagenet or "
                                          "coco_voc (tv:)", "model", Text(metavar="SOURCE"), where=("trial",))
    variant: str = option("b0", "SegFormer MiT variant", "model", Choice(SEGFORMER_VARIANTS))
    # recipe
    epochs: int = option(30, "training epochs", "recipe", Number(int, 1), where=("run", "trial", "space", "resume"))
    batch_size: int = option(64, "images per training step", "recipe", Number(int, 1),
                             where=("run", "trial", "space", "search"))
    lr: float = option(1e-3, "AdamW's learning rate", "recipe", Number(float, 0, 1, low_open=True),
                       where=("trial", "search"), fmt=".2e")
    gamma: float = option(0.98, "ExponentialLR's decay per epoch", "recipe", Number(float, 0, 1, low_open=True),
                          where=("trial", "search"), fmt=".4f")
    weight_decay: float = option(0.01, "AdamW's weight decay", "recipe", Number(float, 0, 1),
                                 where=("run", "trial", "space", "search"))
    recipe: str = option("report", "a named set of recipe defaults, each overridable: report (the report's: resize, "
                                   "flip, ExponentialLR per epoch) or standard (MMSegmentation's, scaled to the crop)",
                         "recipe", Choice(lambda: tuple(RECIPES)), where=("run", "trial", "task", "space"))
    schedule: str = option("exponential", "learning-rate schedule: exponential (per epoch, by gamma), or poly or "
                                          "cosine (per iteration, after the warmup)", "recipe",
                           Choice(("exponential", "poly", "cosine")), where=("run", "trial", "space", "search"))
    warmup: float = option(0.0, "linear warmup over this share of the iterations (poly, cosine)", "recipe",
                           Number(float, 0, 0.5), where=("run", "trial", "space", "search"), fmt=".3g")
    poly_power: float = option(1.0, "the poly schedule's power", "recipe", Number(float, 0, 10, low_open=True),
                               where=("run", "trial", "space", "search"))
    head_lr_mult: float = option(1.0, "learning-rate multiplier of the decode head (the registry's head)", "recipe",
                                 Number(float, 0, 1000, low_open=True), where=("run", "trial", "space", "search"))
    norm_decay_mult: float = option(1.0, "weight-decay multiplier of norms, biases and position parameters",
                                    "recipe", Number(float, 0, 1), where=("run", "trial", "space", "search"))
    base_size: tuple[int, int] | None = option(
        None, "random rescale around this scale, LONGxSHORT as MMSegmentation's (keeping the aspect ratio), then a "
              "random crop of --image-size (default: none: images resized to --image-size, flip only)", "recipe",
        Size(optional=True), where=("run", "trial", "task", "space", "search"))
    ratio_range: tuple[float, float] = option((0.5, 2.0), "the random rescale's range of ratios of --base-size",
                                              "recipe", Pair(), where=("run", "trial", "space"))
    cat_max_ratio: float = option(1.0, "retry a crop in which one class covers more than this share (1: off)",
                                  "recipe", Number(float, 0, 1, low_open=True),
                                  where=("run", "trial", "space", "search"))
    photometric: bool = option(False, "random brightness, contrast, saturation and hue (MMSegmentation's "
                                      "PhotoMetricDistortion)", "recipe", Flag(),
                              where=("run", "trial", "space", "search"))
    eval_at: str = option("input", "where val and test mIoU are computed: input (labels resized to the input) or "
                                   "original (logits resized to each label's own size)", "recipe",
                          Choice(EVAL_AT), where=("run", "trial", "space"))
    eval_mode: str = option("whole", "whole-image or sliding-window inference (at --eval-at original)", "recipe",
                            Choice(("whole", "slide")), where=("run", "trial", "space"))
    slide_window: tuple[int, int] | None = option(None, "sliding-window size, HxW", "recipe", Size(optional=True),
                                                  where=("run", "trial", "space"))
    slide_stride: tuple[int, int] | None = option(None, "sliding-window stride, HxW", "recipe", Size(optional=True),
                                                  where=("run", "trial", "space"))
    val_every: int = option(2, "validate every N epochs (and at the last)", "recipe", Number(int, 1),
                            where=("run", "trial", "space"))
    seed: int = option(0, "random seed of the weights, the order and the flips", "recipe", Number(int, 0))
    # task and data
    dataset: str = option("pets", "dataset format", "task and data", Choice(DATASETS),
                          where=("run", "trial", "task", "space"))
    data_root: str = option("data", "the dataset's root, e.g. the folder holding oxford-iiit-pet/", "task and data",
                            LocalPath(optional=False, metavar="DIR"), where=("run", "trial", "task", "space", "resume"),
                            task_key="root")
    classes: list[str] | None = option(None, "class names, in label order", "task and data", ClassNames(),
                                       where=("task",))
    ignore_index: int = option(255, "the label value that is not a class", "task and data", Number(int, 0, 255),
                               where=("task",))
    reduce_zero_label: bool | None = option(None, "labels are 1-based: 0 is ignored and the rest shift down",
                                            "task and data", Flag(optional=True), where=("task",))
    class_weights: str | list[float] = option(
        "none", "loss weights per class: none, inverse_frequency, median_frequency or w0,w1,...", "recipe",
        ClassWeights(), where=("run", "trial", "task", "search"))
    image_size: tuple[int, int] = option((64, 64), "training image size, N or HxW (height x width)", "task and data",
                                         Size(), where=("run", "trial", "task", "space", "search"))
    # resources and speed
    device: str = option("auto", "where the trial trains (auto: cuda when available)", "resources", Choice(DEVICES),
                         where=("trial", "resume"))
    precision: str = option("auto", "autocast dtype (auto: bf16 on CPUs with native bf16, fp32 elsewhere)", "speed",
                            Choice(PRECISIONS))
    cache_dir: str | None = option(None, "decoded-data cache folder (default: $SEGSTUDY_CACHE or "
                                         "~/.cache/segstudy)", "storage and resume", LocalPath(metavar="DIR"),
                                   where=SPEED)
    remeasure_cost: bool = option(False, "measure each model's cost (latency, memory) again instead of trusting the "
                                         "cost cache", "storage and resume", Flag(), where=SPEED)
    data_placement: str = option("auto", "where the splits live while training: device, host (streamed to the GPU "
                                         "batch by batch) or auto (device when they fit half the free GPU memory)",
                                 "speed", Choice(DATA_PLACEMENTS), where=SPEED)
    device_memory_share: float = option(1.0, "the trial's share of its GPU's memory (set by the study)", "resources",
                                        Number(float, 0, 1, low_open=True), where=("resume",))
    tf32: str = option("auto", "TF32 matmuls and convolutions on CUDA (auto: on; off: strict fp32)", "speed",
                       Choice(SWITCHES), where=SPEED)
    fused_adamw: str = option("auto", "AdamW(fused=True), amsgrad kept (auto: on CUDA)", "speed", Choice(SWITCHES),
                              where=SPEED)
    channels_last: str = option("auto", "NHWC memory format (auto: the convnets on CUDA)", "speed", Choice(SWITCHES),
                                where=SPEED)
    compile: str = option("auto", "torch.compile the model; reduce-overhead adds CUDA graphs (auto: reduce-overhead "
                                  "on CUDA for trials long enough to pay for it, off on the CPU)", "speed",
                          Choice(COMPILE_MODES), where=SPEED)

    def __post_init__(self) -> None:
        check_fields(self)
        check_model(self.model, self.variant, self.image_size)  # the name, and the image size it can take
        check_recipe(self)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON keeps them (a pair as a list)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def check_recipe(cfg: TrainConfig) -> None:
    """The recipe options against each other, each ConfigError naming an option (augmentation, schedule and
    inference say what cannot work: ``study.augment``, ``study.schedules``, ``study.inference``)."""
    checks = [(flag_of("base_size"), lambda: cfg.base_size and check_augment(AugmentSpec(
                  cfg.image_size, cfg.base_size, cfg.ratio_range, cfg.cat_max_ratio, ignore_index=cfg.ignore_index))),
              (flag_of("warmup"), lambda: cfg.warmup and cfg.schedule == "exponential" and _raise(
                  "the exponential schedule steps per epoch and has no warmup; use --schedule poly or cosine")),
              (flag_of("eval_mode"), lambda: check_inference(cfg.eval_mode, cfg.slide_window, cfg.slide_stride)),
              (flag_of("class_weights"), lambda: check_class_weights(cfg.class_weights, _weighted_classes(cfg)))]
    for which, check in checks:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{which}: {exc}") from None


def _raise(message: str) -> None:
    raise ValueError(message)


def _weighted_classes(cfg: TrainConfig) -> int | None:
    """For a list of class weights, the class count known before any data is read (the task's classes, else its
    format's); None otherwise."""
    if not isinstance(cfg.class_weights, list):  # only a list of weights needs it: skip the import
        return None
    from study.summary import study_num_classes

    return study_num_classes({"classes": cfg.classes, "dataset": cfg.dataset})


def check_class_weights(weights: str | list[float], num_classes: int | None) -> None:
    """ValueError unless a list of weights has one weight per class (``num_classes``, when known)."""
    if isinstance(weights, list) and num_classes is not None and len(weights) != num_classes:
        raise ValueError(f"{len(weights)} weights for {num_classes} classes; give one weight per class")


def iterations_per_epoch(train_images: int, batch_size: int, workers: int = 1) -> int:
    """Optimizer steps per epoch: each of ``workers`` takes its share of the train split, in batches."""
    return math.ceil(math.ceil(train_images / workers) / batch_size)


def warmup_iterations(warmup: float, total_iters: int) -> int:
    """The warmup's iterations: its share of the run's ``total_iters``, rounded up."""
    return math.ceil(warmup * total_iters) if warmup > 0 else 0


def check_trial_data(cfg: TrainConfig, train_images: int, num_classes: int, workers: int = 1) -> None:
    """What can be checked of a trial once its data is known (``train_images`` in the train split, ``num_classes``):
    one class weight per class, and a schedule whose warmup ends before the run does."""
    try:
        check_class_weights(cfg.class_weights, num_classes)
    except ValueError as exc:
        raise ConfigError(f"{flag_of('class_weights')}: {exc}") from None
    from study.schedules import check_schedule  # torch

    steps = iterations_per_epoch(train_images, cfg.batch_size, workers)
    total = cfg.epochs * steps
    warmup = warmup_iterations(cfg.warmup, total)
    try:
        check_schedule(cfg.schedule, total, warmup, power=cfg.poly_power, gamma=cfg.gamma)
    except ValueError as exc:
        if cfg.schedule == "exponential" or warmup < total:
            raise ConfigError(f"{flag_of('schedule')} {cfg.schedule}: {exc}") from None
        raise ConfigError(f"{flag_of('warmup')} {cfg.warmup:g}: {warmup} of the run's {total} iterations "
                          f"({cfg.epochs} epochs x {steps} per epoch: {train_images} train images at batch "
                          f"{cfg.batch_size}); the warmup must end before the run does: lower --warmup, or raise "
                          "--epochs") from None


SEARCHABLE = names(TrainConfig, "search")  # what a space file may search (its `space:` and `points:`)
SPEED_OPTIONS = tuple(f.name for f in declared(TrainConfig) if f.metadata["group"] == "speed")  # how fast, not what


def parse_image_size(value: Any, option: str = "--image-size") -> tuple[int, int]:
    """``64`` -> (64, 64); ``"64x128"`` or ``[64, 128]`` -> (64, 128) as (height, width)."""
    try:
        return Size().check(value)
    except ValueError as exc:
        raise ConfigError(f"{option}: expected {exc}, got {value!r}") from None
