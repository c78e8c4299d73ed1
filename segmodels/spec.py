"""What one registry entry knows: how to build its network, where its encoder is, how to fetch pretrained
encoder weights and how to turn the network's output into logits at the input size.

A family (torchvision, Hugging Face) is one subclass; ``segmodels.registry`` maps a ``--model`` name to an
instance. ``SegModel`` and the encoder files (``segmodels.model``) only ever talk to this interface, so a new
family is one new subclass and one line in the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from foundation.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """One ``--model`` entry. ``name`` is the spelling the user gave (``fcn_resnet50``, ``tv:NAME``, ``hf:ID``)."""

    name: str
    variant: str | None = None
    family: ClassVar[str] = ""
    min_image_size: ClassVar[int] = 8  # pixels per side the forward pass needs (study.config checks it)
    min_size_reason: ClassVar[str] = ""
    pretrained_sources: ClassVar[str] = "a file"  # for help texts and errors
    local_sources: ClassVar[str] = "a state-dict or segstudy checkpoint file"  # what works offline

    @property
    def key(self) -> str:
        """The canonical name: aliases resolved, so an encoder file's model can be compared with ours."""
        return self.name

    @property
    def default_pretrained(self) -> str | None:
        """The encoder source of ``finetune``/``freeze`` when ``--pretrained`` is not given."""
        return None

    def build(self, num_classes: int, class_names: Sequence[str] | None = None) -> nn.Module:
        """The network for ``num_classes`` classes, every weight random (no download)."""
        raise NotImplementedError

    def encoder_of(self, net: nn.Module) -> nn.Module:
        """The part of ``net`` that ``freeze`` freezes and a pretrained source fills."""
        raise NotImplementedError

    def head_of(self, net: nn.Module) -> list[nn.Module]:
        """The modules a head lr multiplier applies to: every child of ``net`` outside the encoder (torchvision's
        ``classifier`` and ``aux_classifier``, a Hugging Face model's ``decode_head``, ``auxiliary_head``, a DPT's
        ``neck`` and ``head``), as MMSegmentation's ``head`` key reaches its decode and auxiliary heads."""
        encoder = self.encoder_of(net)
        inside = {id(m) for m in encoder.modules()}
        return [child for child in net.children()
                if id(child) not in inside and not any(m is encoder for m in child.modules())]

    def encoder_state(self, source: str, encoder: nn.Module) -> dict[str, torch.Tensor]:
        """Weights for ``encoder`` from a named (non-file) source; OSError/RuntimeError/ValueError when they
        cannot be had (offline, not cached)."""
        raise ConfigError(f"--pretrained {source}: expected {self.pretrained_sources}")

    def logits(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, H, W) at the size of ``images``."""
        raise NotImplementedError

    def check_available(self) -> None:
        """Raise a UsageError now when what building this model needs is not here (before a study starts)."""

    def check(self, image_size: tuple[int, int] | None = None) -> None:
        """Raise ConfigError for what can be known wrong before building (never touches the network)."""
        if image_size is not None and min(image_size) < self.min_image_size:
            raise ConfigError(f"--image-size: {self.name} needs at least {self.min_image_size} pixels per side "
                              f"({self.min_size_reason}), got {image_size[0]}x{image_size[1]}")


def label_maps(num_classes: int, class_names: Sequence[str] | None) -> tuple[dict[int, str], dict[str, int]]:
    """id2label / label2id for ``num_classes``: the task's names, else ``class_0``, ``class_1``, ..."""
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"classes: {len(class_names)} names given for {num_classes} classes")
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
    return dict(enumerate(names)), {name: i for i, name in enumerate(names)}
