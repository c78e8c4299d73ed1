"""The registry table of docs/models.md, measured: ``python -m segmodels.table [--classes 3]``.

One row per built-in entry (and each SegFormer variant), plus the tiny Hugging Face folders of
``segmodels.toy`` and one Hub-sized UperNet built from its config alone: parameters and forward FLOPs per
image at 64x64 and 512x512, counted by ``segmodels.cost`` (torch's FlopCounterMode, fp32, eval mode, CPU).
Nothing is downloaded: every model is built from scratch.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from segmodels.cost import count_flops, count_parameters
from segmodels.model import build_model, encoder_prefix
from segmodels.registry import MODELS, SEGFORMER_VARIANTS, model_spec
from segmodels.toy import write_tiny_model

SIZES = ((64, 64), (512, 512))


def _upernet_convnext_tiny(folder: Path) -> Path:
    """UperNet's default head on a ConvNeXt-T backbone: the architecture of openmmlab/upernet-convnext-tiny."""
    from transformers import ConvNextConfig, UperNetConfig

    backbone = ConvNextConfig(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    UperNetConfig(backbone_config=backbone).save_pretrained(folder)
    return folder


def rows(num_classes: int, folder: Path) -> list[dict[str, str]]:
    entries = [(name, "b0") for name in MODELS if name != "segformer"]
    entries += [("segformer", v) for v in SEGFORMER_VARIANTS]
    hf = {"hf:TINY_SEGFORMER": write_tiny_model(folder / "segformer", "segformer"),
          "hf:TINY_UPERNET": write_tiny_model(folder / "upernet", "upernet"),
          "hf:UPERNET_CONVNEXT_T": _upernet_convnext_tiny(folder / "upernet-convnext-t")}
    entries += [(label, "b0") for label in hf]
    out = []
    for label, variant in entries:
        name = f"hf:{hf[label]}" if label in hf else label
        spec = model_spec(name, variant)
        torch.manual_seed(0)
        model = build_model(name, num_classes, variant=variant).eval()
        flops = [count_flops(model, size, batch_size=1) for size in SIZES]
        out.append({
            "name": label if label != "segformer" else f"segformer --variant {variant}",
            "family": spec.family,
            "encoder": f"`net.{encoder_prefix(model)[:-1]}` ({type(model.encoder).__name__})",
            "pretrained sources": f"{spec.default_pretrained if label not in hf else 'the folder'} (default); "
                                  f"{spec.pretrained_sources}",
            "parameters": f"{count_parameters(model) / 1e6:.2f} M",
            **{f"{h}x{w}": f"{f / 1e9:.3g} G" for (h, w), f in zip(SIZES, flops, strict=True)},
        })
    return out


def markdown(table: list[dict[str, str]]) -> str:
    header = list(table[0])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row[h] for h in header) + " |" for row in table)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=3, help="K, the head's classes (3: the Pets trimaps)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        print(markdown(rows(args.classes, Path(folder))))


if __name__ == "__main__":
    main()
