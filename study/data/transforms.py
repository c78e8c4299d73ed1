"""Batch transforms that run wherever the tensors live (CPU or GPU): normalise and flip."""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) in 0..255 -> float32 normalised with ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    return (images.float().div_(255) - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of ``normalize`` to float in 0..1, for figures."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    return (images * std + mean).clamp(0, 1)


def hflip_where(images: torch.Tensor, masks: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip the (image, mask) pairs of a batch left-right where the boolean ``flip`` (N,) is true.

    images: (N, C, H, W); masks: (N, H, W); ``flip`` lives on their device, so nothing waits on the host.
    """
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    masks = torch.where(flip.view(-1, 1, 1), masks.flip(-1), masks)
    return images, masks
