"""Tiny Hugging Face model folders, written offline: what tests and toy studies name as ``hf:FOLDER``.

Each is a real ``AutoModelForSemanticSegmentation`` architecture shrunk to a few thousand parameters
(``TINY_CONFIGS``), saved with ``save_pretrained``: ``config.json`` alone (``weights=False``: what a scratch
build reads) or with random weights too (what ``finetune``/``freeze`` load their encoder from).
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModelForSemanticSegmentation

TINY_CONFIGS: dict[str, dict] = {
    "segformer": {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1],
                  "decoder_hidden_size": 16},
    "upernet": {"backbone_config": {"model_type": "convnext", "hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1],
                                    "out_features": ["stage1", "stage2", "stage3", "stage4"]},
                "hidden_size": 16, "auxiliary_channels": 8, "pool_scales": [1, 2]},
    "dpt": {"hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 16,
            "image_size": 32, "patch_size": 8, "neck_hidden_sizes": [8, 8, 8, 8], "fusion_hidden_size": 8,
            "backbone_out_indices": [0, 1, 2, 3], "use_auxiliary_head": False},
    "mobilevit": {"hidden_sizes": [16, 16, 16], "neck_hidden_sizes": [8, 8, 8, 8, 8, 8, 16], "num_attention_heads": 2,
                  "image_size": 32, "aspp_out_channels": 16},
    "beit": {"hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 16,
             "image_size": 32, "patch_size": 8, "out_indices": [0, 1, 2, 3], "pool_scales": [1, 2],
             "use_auxiliary_head": False},
}


def write_tiny_model(folder: str | Path, model_type: str = "segformer", num_classes: int = 19,
                     weights: bool = False) -> Path:
    """Write a tiny ``model_type`` model folder (config, and random weights when ``weights``)."""
    folder = Path(folder)
    config = AutoConfig.for_model(model_type, num_labels=num_classes, **TINY_CONFIGS[model_type])
    if weights:
        AutoModelForSemanticSegmentation.from_config(config).save_pretrained(folder)
    else:
        config.save_pretrained(folder)
    return folder
