"""The torchvision family: the segmentation builders of ``torchvision.models.segmentation``, by name.

``tv:NAME`` is built through ``torchvision.models.get_model`` with a fresh head for K classes; the encoder is
``.backbone``. Pretrained encoder sources: the builder's own ImageNet backbone (``imagenet``, the default), the
COCO-with-VOC-labels model minus its heads (``coco_voc``), or a file (``segmodels.model``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models

from foundation.errors import ConfigError
from segmodels.spec import ModelSpec

TV_BUILDERS = tuple(models.list_models(module=models.segmentation))


@dataclass(frozen=True)
class TorchvisionSpec(ModelSpec):
    builder: str = "fcn_resnet50"
    family = "torchvision"
    min_image_size = 8  # the project's floor: every builder runs at 8x8 (1x1 features at output stride 8-16)
    min_size_reason = "smaller inputs leave no features"
    pretrained_sources = "imagenet, coco_voc or an existing file"

    @property
    def key(self) -> str:
        return f"tv:{self.builder}"

    @property
    def default_pretrained(self) -> str:
        return "imagenet"

    def build(self, num_classes: int, class_names: Sequence[str] | None = None) -> nn.Module:
        return models.get_model(self.builder, weights=None, weights_backbone=None, num_classes=num_classes)

    def encoder_of(self, net: nn.Module) -> nn.Module:
        return net.backbone

    def encoder_state(self, source: str, encoder: nn.Module) -> dict[str, torch.Tensor]:
        """The backbone's state dict from torchvision's weights (downloads unless cached in $TORCH_HOME)."""
        if source == "imagenet":
            # The builder's own default (e.g. ResNet50_Weights.IMAGENET1K_V1, not DEFAULT = V2): what
            # torchvision's legacy pretrained_backbone=True gave and what fcn_resnet50 always loaded here.
            weights = inspect.signature(models.get_model_builder(self.builder)).parameters["weights_backbone"].default
            net = models.get_model(self.builder, weights=None, weights_backbone=weights, num_classes=2)
        elif source == "coco_voc":  # these weights refuse num_classes != 21: load 21 and keep the backbone
            net = models.get_model(self.builder, weights=models.get_model_weights(self.builder).COCO_WITH_VOC_LABELS_V1)
        else:
            raise ConfigError(f"--pretrained {source}: expected {self.pretrained_sources}")
        return net.backbone.state_dict()

    def logits(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return net(images)["out"]  # torchvision upsamples bilinearly to the input size itself
