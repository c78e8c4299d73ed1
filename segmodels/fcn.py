"""torchvision FCN ResNet-50 with a fresh head for ``num_classes``.

Pretrained encoder sources: torchvision's ImageNet ResNet-50 (``imagenet``, the
default), the COCO-with-VOC-labels FCN minus its heads (``coco_voc``), or a file.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.segmentation import FCN, FCN_ResNet50_Weights, fcn_resnet50


def build_fcn(num_classes: int, aux_loss: bool = False) -> FCN:
    return fcn_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss)


def encoder_of(net: FCN) -> nn.Module:
    return net.backbone


def load_torchvision_encoder(source: str) -> dict:
    """The ResNet-50 backbone's state dict from torchvision's weights (downloads unless cached)."""
    if source == "imagenet":
        # Building with weights_backbone is how torchvision itself prepares the backbone.
        net = fcn_resnet50(weights=None, weights_backbone=ResNet50_Weights.IMAGENET1K_V1, num_classes=2)
    else:  # coco_voc: torchvision refuses num_classes != 21 with these weights, so load 21 and keep the backbone
        net = fcn_resnet50(weights=FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1)
    return net.backbone.state_dict()
