"""Segmentation models behind one interface: torchvision's FCN ResNet-50 and Hugging Face's SegFormer.

``build_model(name, num_classes, init, pretrained=None)`` returns a ``SegModel`` whose forward gives
logits (N, num_classes, H, W) at the input resolution. The logic lives in named modules: ``model``
(building, init strategies, encoder files), ``fcn`` and ``segformer`` (each library's side), ``errors``
(the project's error classes) and ``files`` (the atomic write). This file only re-exports.
"""

from segmodels.errors import ConfigError, DataError, ModelError, PretrainedUnavailable, UsageError
from segmodels.files import atomic_torch_save, atomic_write
from segmodels.model import (
                             DEFAULT_PRETRAINED,
                             ENCODER_FORMAT,
                             INITS,
                             MODELS,
                             SEGFORMER_VARIANTS,
                             SegModel,
                             build_model,
                             load_encoder,
                             save_encoder,
)

__all__ = ["DEFAULT_PRETRAINED", "ENCODER_FORMAT", "INITS", "MODELS", "SEGFORMER_VARIANTS", "ConfigError",
           "DataError", "ModelError", "PretrainedUnavailable", "SegModel", "UsageError", "atomic_torch_save",
           "atomic_write", "build_model", "load_encoder", "save_encoder"]
