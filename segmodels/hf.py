"""The Hugging Face family: any ``AutoModelForSemanticSegmentation`` model, by Hub id or local folder.

``hf:ID_OR_FOLDER`` is built from that config alone (no weights) with ``num_labels``/``id2label``/``label2id``
from the task. The encoder is the model's base model (``segformer``, ``dpt``, ``beit``, ``mobilevit``...) or,
for models without one (UperNet), its ``backbone``. Pretrained encoder weights come from the same id or folder
unless ``--pretrained`` names another one (or a file): the donor is loaded with ``ignore_mismatched_sizes=True``
and only its encoder is kept, so the decoder and head start fresh, as for every other entry.

Image processors are never used: the study normalises and resizes its own data, so a checkpoint's
``do_reduce_labels`` (set by the ADE-finetuned SegFormers) cannot shift the task's labels; the flag is also
dropped from the config so that nothing downstream can read it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForSemanticSegmentation, PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
    MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES,
)

from foundation.errors import ConfigError, ModelError, PretrainedUnavailable
from segmodels.spec import ModelSpec, label_maps

HF_TYPES = tuple(sorted(MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES))  # config.model_type values we build
UNIVERSAL_TYPES = tuple(sorted(MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES))
IMAGE_PROCESSOR_KEYS = ("do_reduce_labels", "reduce_labels")


@dataclass(frozen=True)
class HuggingFaceSpec(ModelSpec):
    source: str = ""  # the Hub id or folder after ``hf:``
    family = "huggingface"
    min_image_size = 32
    min_size_reason = "its encoder downsamples up to 32x"
    pretrained_sources = "a Hugging Face id or folder, or an existing file"
    local_sources = "a state-dict or segstudy checkpoint file, or a Hugging Face model folder"

    @property
    def key(self) -> str:
        return f"hf:{self.source}"

    @property
    def default_pretrained(self) -> str:
        return self.source

    @property
    def folder(self) -> Path | None:
        """The local folder ``hf:`` names, or None for a Hub id (segmodels.cost keys a folder's cost by content)."""
        return Path(self.source).expanduser() if _is_path(self.source) and _is_path_to_config(self.source) else None

    def config(self) -> PretrainedConfig:
        """The model's config, read from its folder or the Hub (or the Hub cache when offline)."""
        return read_config(self.source, f"--model {self.name}")

    def check_available(self) -> None:
        self.config()  # its folder, or the Hub cache when offline

    def check(self, image_size: tuple[int, int] | None = None) -> None:
        super().check(image_size)
        if _is_path(self.source) and not _is_path_to_config(self.source):
            return  # maybe another machine's folder (a recorded study): building it will say so
        config = _local_config(self.source)
        if config is None:  # not readable without the network: building it will say what is wrong
            return
        check_type(config, f"--model {self.name}")
        if image_size is not None and image_size[0] != image_size[1] and _square_only(config):
            raise ConfigError(f"--image-size: {self.name} ({config.model_type} on a plain ViT) takes square images "
                              f"only, got {image_size[0]}x{image_size[1]}")

    def build(self, num_classes: int, class_names: Sequence[str] | None = None) -> nn.Module:
        config = self.config()
        check_type(config, f"--model {self.name}")
        id2label, label2id = label_maps(num_classes, class_names)
        config.num_labels = num_classes
        config.id2label, config.label2id = id2label, label2id
        for key in IMAGE_PROCESSOR_KEYS:
            if hasattr(config, key):
                delattr(config, key)
        if getattr(config, "use_pretrained_backbone", False):  # older UperNet-style configs: no download
            config.use_pretrained_backbone = False
        return AutoModelForSemanticSegmentation.from_config(config)

    def encoder_of(self, net: nn.Module) -> nn.Module:
        base = getattr(net, "base_model", net)
        if base is not net:
            return base
        backbone = getattr(net, "backbone", None)
        if isinstance(backbone, nn.Module):
            return backbone
        raise ModelError(f"--model {self.name}: {type(net).__name__} has neither a base model nor a backbone to "
                         "use as its encoder")

    def encoder_state(self, source: str, encoder: nn.Module) -> dict[str, torch.Tensor]:
        """The encoder's weights from a Hub id or folder: the encoder part of any checkpoint of a
        semantic-segmentation model type (``nvidia/mit-b0``, an image classifier, counts: its ``segformer.*``),
        else an encoder-only checkpoint (a ConvNeXt for UperNet) read by the encoder's own class."""
        config = load_config(source, f"--pretrained {source}")
        source = str(Path(source).expanduser()) if _is_path(source) else source
        if config.model_type in HF_TYPES:
            donor = AutoModelForSemanticSegmentation.from_pretrained(source, ignore_mismatched_sizes=True)
            return self.encoder_of(donor).state_dict()
        if hasattr(type(encoder), "from_pretrained"):  # with our config: the same stages and output norms
            return type(encoder).from_pretrained(source, config=encoder.config).state_dict()
        raise ConfigError(f"--pretrained {source}: a {config.model_type} checkpoint cannot fill this encoder")

    def logits(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        logits = net(pixel_values=images).logits  # e.g. H/4 x W/4 for SegFormer, 2H x 2W for DPT
        if logits.shape[-2:] == images.shape[-2:]:
            return logits
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def check_type(config: PretrainedConfig, option: str) -> None:
    """One line for a config this family cannot build, naming what it can."""
    model_type = getattr(config, "model_type", "?")
    if model_type in HF_TYPES:
        return
    what = ("a universal-segmentation model (query logits, not per-pixel logits)" if model_type in UNIVERSAL_TYPES
            else "not a semantic-segmentation model")
    raise ConfigError(f"{option}: {model_type} is {what}; hf: supports AutoModelForSemanticSegmentation models "
                      f"({', '.join(HF_TYPES)})")


def load_config(source: str, option: str, local_only: bool = False) -> PretrainedConfig:
    """AutoConfig of a Hub id or folder; OSError when the Hub cannot be reached and nothing is cached."""
    if _is_path(source):
        if not _is_path_to_config(source):
            raise ConfigError(f"{option}: {source} is not a Hugging Face model folder (no config.json)")
        source = str(Path(source).expanduser())
    return AutoConfig.from_pretrained(source, local_files_only=local_only)


def _square_only(config: PretrainedConfig) -> bool:
    """DPT's neck reshapes a plain ViT's tokens to a square grid (transformers' DPT, non-hybrid)."""
    return config.model_type == "dpt" and not getattr(config, "is_hybrid", False) and \
        getattr(config, "backbone_config", None) is None


def read_config(source: str, option: str, local_only: bool = False) -> PretrainedConfig:
    """``load_config`` with one line naming ``option`` when the config cannot be had."""
    try:
        return load_config(source, option, local_only)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PretrainedUnavailable(f"{option}: cannot read the Hugging Face config of {source} ({first}); "
                                    "offline, name a local folder holding config.json") from None


@functools.lru_cache(maxsize=64)
def _cached_local_config(source: str) -> PretrainedConfig | None:
    try:
        return read_config(source, "", local_only=True)
    except (ConfigError, PretrainedUnavailable):
        return None


def _local_config(source: str) -> PretrainedConfig | None:
    """The config if it can be read without the network (cached: validation runs on every TrainConfig)."""
    config = _cached_local_config(source)
    return copy.deepcopy(config) if config is not None else None


def _is_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().is_dir()


def _is_path_to_config(source: str) -> bool:
    return (Path(source).expanduser() / "config.json").is_file()
