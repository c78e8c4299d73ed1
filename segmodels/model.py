"""Build a segmentation model from the registry and load or freeze its pretrained encoder.

``build_model(name, num_classes, init, pretrained=None, variant="b0", class_names=None)`` returns a
``SegModel`` whose forward gives logits (N, num_classes, H, W) at the input resolution. Everything that
differs between models is asked of the registry entry (``segmodels.registry``): nothing here branches on a name.

init strategies:
  scratch   every weight random
  finetune  encoder weights loaded from ``pretrained`` (default: the entry's own source), decoder/head
            fresh, all trained
  freeze    as finetune, and the encoder is frozen: ``requires_grad=False`` and kept in
            eval mode (BatchNorm statistics and dropout fixed) while the rest trains
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from foundation.errors import ConfigError, PretrainedUnavailable, UsageError
from foundation.files import atomic_torch_save
from segmodels.registry import model_spec
from segmodels.spec import ModelSpec

log = logging.getLogger(__name__)

INITS = ("scratch", "finetune", "freeze")
ENCODER_FORMAT = "segstudy-encoder/1"


class SegModel(nn.Module):
    """Any registry entry behind one interface: logits at input size, an encoder to load or freeze."""

    def __init__(self, spec: ModelSpec, net: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.variant = spec.variant
        self.net = net
        self.frozen = False

    @property
    def encoder(self) -> nn.Module:
        return self.spec.encoder_of(self.net)

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
        return self.spec.logits(self.net, images)


def build_model(name: str, num_classes: int, init: str = "scratch", pretrained: str | None = None,
                variant: str = "b0", class_names: Sequence[str] | None = None) -> SegModel:
    """Build ``name`` for ``num_classes`` with the given init strategy (see module docstring).

    ``class_names`` (the task's, in label order) become a Hugging Face model's id2label/label2id.
    """
    spec = model_spec(name, variant)
    if init not in INITS:
        raise ConfigError(f"--init: expected one of {', '.join(INITS)}, got {init!r}")
    model = SegModel(spec, spec.build(num_classes, class_names))
    if init in ("finetune", "freeze"):
        load_encoder(model, pretrained or spec.default_pretrained)
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
        f"pass --pretrained PATH ({model.spec.local_sources}) or fetch the weights once on a machine with internet"
    )
    try:
        with torch.random.fork_rng(devices=[]):  # a donor model's random init must not shift the trial's seed
            return model.spec.encoder_state(source, model.encoder)
    except UsageError:
        raise
    except (RuntimeError, ValueError) as exc:
        if path.is_dir():  # a local model that was read but does not fit (e.g. other hidden sizes)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"--pretrained {source}: does not fit the {model.name} encoder ({first})") from None
        raise PretrainedUnavailable(f"{offline_help} [{type(exc).__name__}]") from None
    except OSError as exc:  # no network and nothing cached, or a folder without weights
        raise PretrainedUnavailable(f"{offline_help} [{type(exc).__name__}]") from None


def encoder_prefix(model: SegModel) -> str:
    """Where the encoder sits in ``model.net``'s state dict: ``backbone.``, ``segformer.``, ``dpt.``..."""
    encoder = model.encoder
    return next(name + "." for name, module in model.net.named_modules() if module is encoder)


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
        if not _same_family(data.get("model"), data.get("variant"), model.spec):
            raise ConfigError(f"--pretrained {path}: holds a {data.get('model')} encoder, not {model.name}")
        return data["encoder"]
    state = data.get("model_state", data)
    bare_prefix = encoder_prefix(model)
    prefix = "net." + bare_prefix
    if any(key.startswith(prefix) for key in state):  # a whole segstudy model: keep its encoder part
        return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if any(key.startswith(bare_prefix) for key in state):  # a whole torchvision / HF model
        return {key[len(bare_prefix):]: value for key, value in state.items() if key.startswith(bare_prefix)}
    return state


def _same_family(stored: object, variant: object, spec: ModelSpec) -> bool:
    """An encoder file fits a model of its own family (e.g. tv:fcn_resnet50's ResNet-50 into
    tv:deeplabv3_resnet50); whether the weights fit is then the strict load's to say."""
    try:
        other = model_spec(stored, variant if isinstance(variant, str) else "b0")
    except ConfigError:
        return False
    return other.family == spec.family


def save_encoder(model: SegModel, path: str | Path) -> Path:
    """Write the encoder's weights atomically, in the format ``build_model(pretrained=path)`` reads."""
    payload = {"format": ENCODER_FORMAT, "model": model.name, "variant": model.variant,
               "encoder": {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()}}
    return atomic_torch_save(payload, path)
