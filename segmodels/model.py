"""Build a segmentation model and load or freeze its pretrained encoder.

``build_model(name, num_classes, init, pretrained=None)`` returns a ``SegModel``
whose forward gives logits (N, num_classes, H, W) at the input resolution.

init strategies:
  scratch   every weight random
  finetune  encoder weights loaded from ``pretrained``, decoder/head fresh, all trained
  freeze    as finetune, and the encoder is frozen: ``requires_grad=False`` and kept in
            eval mode (BatchNorm statistics and dropout fixed) while the rest trains
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segmodels import fcn, segformer
from segmodels.errors import ConfigError, PretrainedUnavailable
from segmodels.files import atomic_torch_save

log = logging.getLogger(__name__)

MODELS = ("fcn_resnet50", "segformer")
INITS = ("scratch", "finetune", "freeze")
SEGFORMER_VARIANTS = tuple(segformer.VARIANTS)
ENCODER_FORMAT = "segstudy-encoder/1"
DEFAULT_PRETRAINED = {"fcn_resnet50": "imagenet", "segformer": "nvidia/mit-{variant}"}


class SegModel(nn.Module):
    """A torchvision FCN or a HF SegFormer behind one interface: logits at input size, an encoder."""

    def __init__(self, name: str, net: nn.Module, variant: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.variant = variant
        self.net = net
        self.frozen = False

    @property
    def encoder(self) -> nn.Module:
        return fcn.encoder_of(self.net) if self.name == "fcn_resnet50" else segformer.encoder_of(self.net)

    def freeze_encoder(self) -> None:
        self.frozen = True
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> SegModel:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # keep BatchNorm statistics and dropout fixed
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.name == "fcn_resnet50":
            return self.net(images)["out"]
        logits = self.net(pixel_values=images).logits  # H/4 x W/4
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def build_model(name: str, num_classes: int, init: str = "scratch", pretrained: str | None = None,
                variant: str = "b0") -> SegModel:
    """Build ``name`` for ``num_classes`` with the given init strategy (see module docstring)."""
    if name not in MODELS:
        raise ConfigError(f"--model: expected one of {', '.join(MODELS)}, got {name!r}")
    if init not in INITS:
        raise ConfigError(f"--init: expected one of {', '.join(INITS)}, got {init!r}")
    if name == "fcn_resnet50":
        model = SegModel(name, fcn.build_fcn(num_classes))
    else:
        if variant not in segformer.VARIANTS:
            raise ConfigError(f"--variant: expected one of {', '.join(segformer.VARIANTS)}, got {variant!r}")
        model = SegModel(name, segformer.build_segformer(num_classes, variant), variant)
    if init in ("finetune", "freeze"):
        source = pretrained or DEFAULT_PRETRAINED[name].format(variant=variant)
        load_encoder(model, source)
        if init == "freeze":
            model.freeze_encoder()
    return model


def load_encoder(model: SegModel, source: str) -> None:
    """Load encoder weights from ``source`` into ``model.encoder`` (strict: every key must match)."""
    state = _encoder_state(model, source)
    try:
        model.encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise ConfigError(f"--pretrained {source}: does not fit the {model.name} encoder "
                          f"({first[0].strip()})") from None
    log.info("loaded %s encoder weights from %s", model.name, source)


def _encoder_state(model: SegModel, source: str) -> dict[str, torch.Tensor]:
    path = Path(source)
    if path.is_file():
        return _encoder_state_from_file(model, path)
    offline_help = (
        f"--pretrained {source}: cannot load {model.name} encoder weights offline and none are cached; "
        "pass --pretrained PATH (a state-dict or segstudy checkpoint file"
        + (", or a Hugging Face model folder" if model.name == "segformer" else "")
        + ") or fetch the weights once on a machine with internet"
    )
    try:
        if model.name == "fcn_resnet50":
            if source not in ("imagenet", "coco_voc"):
                raise ConfigError(f"--pretrained {source}: expected imagenet, coco_voc or an existing file")
            return fcn.load_torchvision_encoder(source)
        return segformer.load_hf_encoder(source)
    except ConfigError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        raise PretrainedUnavailable(f"{offline_help} [{type(exc).__name__}]") from None


def _encoder_state_from_file(model: SegModel, path: Path) -> dict[str, torch.Tensor]:
    """Accepts an encoder file written by ``save_encoder``, a segstudy checkpoint, or a plain state dict."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"--pretrained {path}: not a readable PyTorch checkpoint "
                          f"({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--pretrained {path}: expected a state dict, got {type(data).__name__}")
    if data.get("format") == ENCODER_FORMAT:
        if data.get("model") != model.name:
            raise ConfigError(f"--pretrained {path}: holds a {data.get('model')} encoder, not {model.name}")
        return data["encoder"]
    state = data.get("model_state", data)
    prefix = "net." + ("backbone." if model.name == "fcn_resnet50" else "segformer.")
    if any(key.startswith(prefix) for key in state):  # a whole segstudy model: keep its encoder part
        return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    bare_prefix = prefix[len("net."):]
    if any(key.startswith(bare_prefix) for key in state):  # a whole torchvision / HF model
        return {key[len(bare_prefix):]: value for key, value in state.items() if key.startswith(bare_prefix)}
    return state


def save_encoder(model: SegModel, path: str | Path) -> Path:
    """Write the encoder's weights atomically, in the format ``build_model(pretrained=path)`` reads."""
    payload = {"format": ENCODER_FORMAT, "model": model.name, "variant": model.variant,
               "encoder": {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()}}
    return atomic_torch_save(payload, path)
