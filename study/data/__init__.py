"""Datasets: Oxford-IIIT Pet and Cityscapes through torchvision, decoded and resized once.

``build_dataset(name, split, root, image_size)`` returns a ``SegDataset`` whose
items are ``(image float32 3xHxW normalised, mask int64 HxW)``. The decoded uint8
tensors are also exposed as ``.images`` / ``.masks`` so the train loop can move a
whole split to the GPU once and batch from there.
"""

from __future__ import annotations

from pathlib import Path

import torch

from study.config import parse_image_size
from study.data.cache import load_or_build
from study.data.sources import IGNORE_INDEX, open_source
from study.data.transforms import normalize, random_hflip

DATASET_NAMES = ("pets", "cityscapes")


class SegDataset(torch.utils.data.Dataset):
    """A decoded, resized split held as uint8 tensors."""

    def __init__(self, name: str, split: str, images: torch.Tensor, masks: torch.Tensor, files: list[str],
                 class_names: tuple[str, ...], augment: bool = False) -> None:
        self.name = name
        self.split = split
        self.images = images
        self.masks = masks
        self.files = files
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = IGNORE_INDEX
        self.augment = augment

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index : index + 1], self.masks[index : index + 1]
        if self.augment:
            image, mask = random_hflip(image, mask)
        return normalize(image)[0], mask[0].long()


def build_dataset(name: str, split: str, root: str | Path, image_size: int | str | tuple[int, int] = 64,
                  cache_dir: str | Path | None = None, augment: bool | None = None,
                  download: bool = False) -> SegDataset:
    """Open ``name``'s ``split`` under ``root`` through torchvision, decoded via the on-disk cache.

    ``augment`` (random horizontal flip of image and mask together) defaults to on for ``train``.
    """
    size = parse_image_size(image_size)
    source = open_source(name, split, root, download=download)
    data = load_or_build(source, size, cache_dir)
    return SegDataset(name, split, data["images"], data["masks"], data["files"], source.class_names,
                      augment=(split == "train") if augment is None else augment)
