"""The datasets read through torchvision's own loaders: Oxford-IIIT Pet, Cityscapes and Pascal VOC 2012.

Each source turns (root, split) into a torchvision dataset plus the order in which to read it and a
function that maps a decoded label image to class ids. Nothing here resizes or caches (``study.data.cache``);
the registry of formats, with the task's class list and label mapping, is ``study.data.formats``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torchvision.datasets import Cityscapes, OxfordIIITPet, VOCSegmentation

from foundation.errors import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
VAL_FRACTION = 0.1
VAL_SPLIT_SEED = 0  # fixed: every trial of every study validates on the same images

PETS_CLASSES = ("pet", "background", "boundary")
CITYSCAPES_TRAIN_CLASSES = tuple(c.name for c in sorted(Cityscapes.classes, key=lambda c: c.train_id)
                                 if 0 <= c.train_id < 255)
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
CITYSCAPES_DOWNLOAD_HELP = (
    "Cityscapes cannot be downloaded automatically: register at https://www.cityscapes-dataset.com, "
    "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip and unpack both into"
)


@dataclass
class Source:
    """A torchvision dataset and how to read it: which indices, which files, how to map labels.

    ``mapping`` describes the label mapping as plain values; the cache key covers it, so a changed
    class list or ignore rule decodes anew.
    """

    name: str
    split: str
    dataset: torch.utils.data.Dataset
    indices: list[int]
    image_files: list[Path]
    label_files: list[Path]
    class_names: tuple[str, ...]
    label_to_class: Callable[[np.ndarray, Path], np.ndarray]
    mapping: dict[str, Any] = field(default_factory=dict)


def seeded_split(count: int, split: str) -> list[int]:
    """``val``: a seeded 10 % of ``count`` items; ``train``: the rest (sorted indices, the same every run)."""
    order = np.random.default_rng(VAL_SPLIT_SEED).permutation(count)
    n_val = max(1, round(VAL_FRACTION * count))
    chosen = order[:n_val] if split == "val" else order[n_val:]
    return sorted(int(i) for i in chosen)


def pets_source(root: str | Path, split: str, download: bool = False) -> Source:
    """Oxford-IIIT Pet: trimap value - 1 gives 0 pet, 1 background, 2 boundary.

    ``test`` is the official test list; ``val`` a seeded 10 % of trainval; ``train`` the rest.
    """
    root = Path(root)
    official = "test" if split == "test" else "trainval"
    try:
        dataset = OxfordIIITPet(root, split=official, target_types="segmentation", download=download)
    except RuntimeError as exc:
        raise DataError(
            f"{root / 'oxford-iiit-pet'}: Oxford-IIIT Pet not found (expected images/ and annotations/ there; "
            f"pass --download to fetch it when online) [{exc}]"
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{root / 'oxford-iiit-pet' / 'annotations' / (official + '.txt')}: cannot read the split "
                        f"list: {exc}") from None
    indices = seeded_split(len(dataset), split) if split in ("train", "val") else list(range(len(dataset)))
    return Source(
        name="pets",
        split=split,
        dataset=dataset,
        indices=indices,
        image_files=[dataset._images[i] for i in indices],
        label_files=[dataset._segs[i] for i in indices],
        class_names=PETS_CLASSES,
        label_to_class=_trimap_to_class,
    )


def _trimap_to_class(trimap: np.ndarray, path: Path) -> np.ndarray:
    values = np.unique(trimap)
    bad = values[(values < 1) | (values > 3)]
    if bad.size:
        raise DataError(f"{path}: trimap values must be 1, 2 or 3, found {bad.tolist()[:5]}")
    return (trimap - 1).astype(np.uint8)


def _cityscapes_lut() -> np.ndarray:
    """labelId -> trainId (0..18) from torchvision's class table; every other id -> 255."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for c in Cityscapes.classes:
        if 0 <= c.id < 256 and 0 <= c.train_id < IGNORE_INDEX:
            lut[c.id] = c.train_id
    return lut


_CITYSCAPES_LUT = _cityscapes_lut()
_CITYSCAPES_MAX_ID = max(c.id for c in Cityscapes.classes)


def _label_ids_to_train_ids(label_ids: np.ndarray, path: Path) -> np.ndarray:
    if label_ids.min() < 0 or label_ids.max() > _CITYSCAPES_MAX_ID:
        raise DataError(
            f"{path}: labelIds must lie in 0..{_CITYSCAPES_MAX_ID} (Cityscapes' class table), "
            f"found {int(label_ids.min())}..{int(label_ids.max())}"
        )
    return _CITYSCAPES_LUT[label_ids.astype(np.int64)]


def cityscapes_source(root: str | Path, split: str) -> Source:
    """Cityscapes fine labels; ``test`` means ``val`` because the official test labels are withheld."""
    city_root = Path(root) / "cityscapes"
    official = "val" if split == "test" else split
    try:
        dataset = Cityscapes(str(city_root), split=official, mode="fine", target_type="semantic")
    except RuntimeError:
        raise DataError(
            f"{city_root}: Cityscapes split '{official}' not found; {CITYSCAPES_DOWNLOAD_HELP} {city_root} "
            f"(leftImg8bit/{official}/<city>/ and gtFine/{official}/<city>/)"
        ) from None
    order = sorted(range(len(dataset)), key=lambda i: dataset.images[i])
    return Source(
        name="cityscapes",
        split=split,
        dataset=dataset,
        indices=order,
        image_files=[Path(dataset.images[i]) for i in order],
        label_files=[Path(dataset.targets[i][0]) for i in order],
        class_names=CITYSCAPES_TRAIN_CLASSES,
        label_to_class=_label_ids_to_train_ids,
    )


def voc_source(root: str | Path, split: str, download: bool = False) -> Source:
    """Pascal VOC 2012 segmentation (``ROOT/VOCdevkit/VOC2012``): PNG palette masks of class indices, 255 on
    void and object borders. ``test`` is the official ``val`` list (the official test labels are withheld);
    ``val`` a seeded 10 % of the official ``train`` list, ``train`` the rest, so the split that chooses a
    configuration never tests it."""
    root = Path(root)
    official = "val" if split == "test" else "train"
    try:
        dataset = VOCSegmentation(str(root), year="2012", image_set=official, download=download)
    except RuntimeError:
        raise DataError(
            f"{root / 'VOCdevkit' / 'VOC2012'}: Pascal VOC 2012 not found (expected JPEGImages/, SegmentationClass/ "
            f"and ImageSets/Segmentation/{official}.txt there; pass --download to fetch it when online)"
        ) from None
    except OSError as exc:
        raise DataError(f"{root / 'VOCdevkit' / 'VOC2012' / 'ImageSets' / 'Segmentation' / (official + '.txt')}: "
                        f"cannot read the split list: {exc}") from None
    indices = seeded_split(len(dataset), split) if split != "test" else list(range(len(dataset)))
    return Source(
        name="voc",
        split=split,
        dataset=dataset,
        indices=indices,
        image_files=[Path(dataset.images[i]) for i in indices],
        label_files=[Path(dataset.masks[i]) for i in indices],
        class_names=VOC_CLASSES,
        label_to_class=class_indices,
    )


def class_indices(label: np.ndarray, path: Path) -> np.ndarray:
    """A mask that already holds class indices (a palette PNG counts by its indices): kept as it is."""
    return label


def voc_palette(count: int = 256) -> list[int]:
    """Pascal VOC's colour map (the devkit's bit-interleaving rule), flat RGB for ``Image.putpalette``."""
    palette = []
    for index in range(count):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r, g, b = r | ((c >> 0) & 1) << shift, g | ((c >> 1) & 1) << shift, b | ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette
