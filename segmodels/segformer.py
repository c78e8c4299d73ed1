"""The ``segformer`` alias: Hugging Face SegFormer (MiT-b0..b5) built offline from the paper's configs.

It is an entry of the Hugging Face family (``segmodels.hf``) whose config comes from ``VARIANTS`` instead of a
Hub id, so it builds with no file and no network. The encoder (``net.segformer``, the Mix Transformer) loads
from ``nvidia/mit-{variant}`` by default, any other Hugging Face id or folder, or an encoder file segstudy
wrote itself (its own Cityscapes pretraining stage).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig, SegformerConfig

from segmodels.hf import HuggingFaceSpec

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


@dataclass(frozen=True)
class SegformerSpec(HuggingFaceSpec):
    min_size_reason = "its last stage downsamples 32x"

    @property
    def key(self) -> str:
        return "segformer"

    @property
    def default_pretrained(self) -> str:
        return f"nvidia/mit-{self.variant}"

    def config(self) -> PretrainedConfig:
        return SegformerConfig(**VARIANTS[self.variant])

    def check(self, image_size: tuple[int, int] | None = None) -> None:
        super(HuggingFaceSpec, self).check(image_size)  # the size only: the config is ours, always buildable
