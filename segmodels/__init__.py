"""Segmentation models behind one interface: torchvision's segmentation builders and Hugging Face's
semantic-segmentation models, from one registry.

``build_model(name, num_classes, init, pretrained=None, variant="b0", class_names=None)`` returns a ``SegModel``
whose forward gives logits (N, num_classes, H, W) at the input resolution; ``model_spec(name)`` is the registry
entry (family, encoder, pretrained sources, minimum image size). The logic lives in named modules: ``registry``
(names -> entries), ``spec`` (what an entry knows), ``tv`` and ``hf`` (each family), ``segformer`` (the
``segformer`` alias), ``model`` (building, init strategies, encoder files), ``cost`` (parameters, FLOPs).
The error classes and the atomic write live below, in ``foundation``. This file only re-exports.
"""

from segmodels.model import (
    ENCODER_FORMAT,
    INITS,
    SegModel,
    build_model,
    load_encoder,
    save_encoder,
)
from segmodels.registry import MODELS, SEGFORMER_VARIANTS, TV_MODELS, check_model, model_spec
from segmodels.spec import ModelSpec

__all__ = ["ENCODER_FORMAT", "INITS", "MODELS", "SEGFORMER_VARIANTS", "TV_MODELS",
           "ModelSpec", "SegModel", "build_model", "check_model", "load_encoder", "model_spec",
           "save_encoder"]
