"""Hugging Face SegFormer (MiT-b0..b5), built offline from a config.

The encoder (``model.segformer``, the Mix Transformer) can be loaded from a Hugging
Face id or folder (e.g. ``nvidia/mit-b0``) or from an encoder checkpoint that
segstudy wrote itself (its own Cityscapes pretraining stage).
"""

from __future__ import annotations

from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerModel

# Hidden sizes, depths and decoder width of the MiT variants (SegFormer paper, Table 6).
VARIANTS: dict[str, dict] = {
    "b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b1": {"hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
    "b3": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 18, 3], "decoder_hidden_size": 768},
    "b4": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 8, 27, 3], "decoder_hidden_size": 768},
    "b5": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 6, 40, 3], "decoder_hidden_size": 768},
}


def segformer_config(variant: str, num_classes: int) -> SegformerConfig:
    return SegformerConfig(num_labels=num_classes, **VARIANTS[variant])


def build_segformer(num_classes: int, variant: str = "b0") -> SegformerForSemanticSegmentation:
    return SegformerForSemanticSegmentation(segformer_config(variant, num_classes))


def encoder_of(net: SegformerForSemanticSegmentation) -> nn.Module:
    return net.segformer


def load_hf_encoder(source: str) -> dict:
    """The MiT encoder's state dict from a Hugging Face id or local folder (raises OSError offline)."""
    return SegformerModel.from_pretrained(source).state_dict()
