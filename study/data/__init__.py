"""Datasets: Oxford-IIIT Pet and Cityscapes through torchvision, decoded and resized once.

``build_dataset(name, split, root, image_size)`` returns a ``SegDataset`` holding the
decoded uint8 tensors ``.images`` (N, 3, H, W) and ``.masks`` (N, H, W): the train loop
moves a whole split to its device once and cuts batches there (flips and normalisation
happen on the device too, ``study.data.transforms``). Indexing gives one normalised
``(image, mask)`` pair, for use with a ``DataLoader``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from study.config import parse_image_size
from study.data.cache import load_or_build
from study.data.sources import IGNORE_INDEX, open_source
from study.data.transforms import normalize


class SegDataset(torch.utils.data.Dataset):
    """A decoded, resized split held as uint8 tensors."""

    def __init__(self, name: str, split: str, images: torch.Tensor, masks: torch.Tensor, files: list[str],
                 class_names: tuple[str, ...]) -> None:
        self.name = name
        self.split = split
        self.images = images
        self.masks = masks
        self.files = files
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = IGNORE_INDEX

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image float32 3xHxW normalised, mask int64 HxW)``, for a ``torch.utils.data.DataLoader``."""
        return normalize(self.images[index : index + 1])[0], self.masks[index].long()


def build_dataset(name: str, split: str, root: str | Path, image_size: int | str | tuple[int, int] = 64,
                  cache_dir: str | Path | None = None, download: bool = False) -> SegDataset:
    """Open ``name``'s ``split`` under ``root`` through torchvision, decoded via the on-disk cache."""
    size = parse_image_size(image_size)
    source = open_source(name, split, root, download=download)
    data = load_or_build(source, size, cache_dir)
    return SegDataset(name, split, data["images"], data["masks"], data["files"], source.class_names)
