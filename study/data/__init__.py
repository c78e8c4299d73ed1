"""Datasets in five formats (``study.data.formats``: pets, cityscapes, voc, ade20k, folder), decoded and
resized once.

``build_dataset(name, split, root, image_size, labels=...)`` returns a ``SegDataset`` holding the
decoded uint8 tensors ``.images`` (N, 3, H, W) and ``.masks`` (N, H, W), memory-mapped from the cache:
the train loop moves a split to its device once and cuts batches there, or, when it does not fit the
trial's share of GPU memory, streams it batch by batch (``study.data.stream``); flips and normalisation
happen on the device (``study.data.transforms``). Indexing gives one normalised ``(image, mask)`` pair,
for use with a ``DataLoader``.

With a base scale (``base_size``) the images keep their aspect ratio, padded to one size per split, and
``.valid`` (N, 2) gives each one's (height, width); with ``originals`` the labels are also kept at their own
resolution, ``.originals`` (``study.data.cache.OriginalLabels``), for evaluation at the original resolution.
"""

from __future__ import annotations

from pathlib import Path

import torch

from study.config import parse_image_size
from study.data.cache import DEFAULT_LAYOUT, Layout, OriginalLabels, load_or_build
from study.data.formats import DEFAULT_LABELS, Labels, open_source
from study.data.sources import IGNORE_INDEX
from study.data.transforms import normalize

__all__ = ["Labels", "Layout", "OriginalLabels", "SegDataset", "build_dataset"]


class SegDataset(torch.utils.data.Dataset):
    """A decoded, resized split held as uint8 tensors."""

    def __init__(self, name: str, split: str, images: torch.Tensor, masks: torch.Tensor, files: list[str],
                 class_names: tuple[str, ...], class_pixels: torch.Tensor | None = None,
                 valid: torch.Tensor | None = None, originals: OriginalLabels | None = None) -> None:
        self.name = name
        self.split = split
        self.images = images
        self.masks = masks
        self.files = files
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = IGNORE_INDEX
        self._class_pixels = class_pixels
        self.valid = valid  # (N, 2) each padded image's (height, width); None: all of every image
        self.originals = originals  # the labels at their original sizes; None: not kept

    @property
    def class_pixels(self) -> torch.Tensor:
        """Labelled pixels per class (int64, K), counted when the cache was built (class weights, frequencies)."""
        if self._class_pixels is None:  # a cache file from before the counts were kept
            self._class_pixels = torch.bincount(self.masks.flatten().long(), minlength=256)
        return self._class_pixels[: self.num_classes]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image float32 3xHxW normalised, mask int64 HxW)``, for a ``torch.utils.data.DataLoader``."""
        return normalize(self.images[index : index + 1])[0], self.masks[index].long()


def build_dataset(name: str, split: str, root: str | Path, image_size: int | str | tuple[int, int] = 64,
                  cache_dir: str | Path | None = None, download: bool = False,
                  labels: Labels = DEFAULT_LABELS, layout: Layout = DEFAULT_LAYOUT) -> SegDataset:
    """Open ``name``'s ``split`` under ``root`` with the task's ``labels``, decoded via the on-disk cache and
    stored as ``layout`` says (``study.data.cache.Layout``; the default: resized to ``image_size``)."""
    size = parse_image_size(image_size)
    source = open_source(name, split, root, download=download, labels=labels)
    data = load_or_build(source, size, cache_dir, layout)
    originals = OriginalLabels(data["labels"], data["label_sizes"]) if "labels" in data else None
    return SegDataset(name, split, data["images"], data["masks"], data["files"], source.class_names,
                      data.get("class_pixels"), data.get("valid"), originals)
