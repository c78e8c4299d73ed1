"""Datasets kept as plain image and mask folders: the ``folder`` layout (MMSegmentation's, shared by ADE20K
and CamVid) and ADE20K SceneParsing, which is that layout under its own top folder.

    ROOT/images/<split>/<stem>.<jpg|jpeg|png>      ROOT/annotations/<split>/<stem>.png

A mask is a single-channel PNG of class indices (a palette PNG counts by its indices), matched to its
image by stem. Nothing here maps or checks label values: ``study.data.formats`` does, for every format.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from foundation.errors import DataError
from study.data.sources import Source, class_indices, seeded_split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = ".png"
ADE20K_FOLDER = "ADEChallengeData2016"
# The 150 SceneParsing classes in their label order (1..150 on disk; 0 is "other", ignored).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


class ImageMaskPairs(torch.utils.data.Dataset):
    """(RGB image, mask) pairs as PIL images, as torchvision's segmentation datasets return them."""

    def __init__(self, images: list[Path], masks: list[Path]) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, Image.Image]:
        return Image.open(self.images[index]).convert("RGB"), Image.open(self.masks[index])


def paired_files(image_dir: Path, mask_dir: Path) -> tuple[list[Path], list[Path]]:
    """Images and masks matched by stem, sorted by stem; an image without its mask, or a mask without its
    image, is an error naming the file."""
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: split folder missing (expected images/<split>/ and annotations/<split>/)")
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in images:
                raise DataError(f"{path}: a second image with stem {path.stem!r} ({images[path.stem].name})")
            images[path.stem] = path
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() == MASK_SUFFIX}
    for stem, path in images.items():
        if stem not in masks:
            raise DataError(f"{path}: image without its mask (expected {mask_dir / (stem + MASK_SUFFIX)})")
    for stem, path in masks.items():
        if stem not in images:
            raise DataError(f"{path}: mask without its image (expected {image_dir / stem}.jpg or .png)")
    stems = sorted(images)
    if not stems:
        raise DataError(f"{image_dir}: the split is empty (no .jpg, .jpeg or .png images)")
    return [images[s] for s in stems], [masks[s] for s in stems]


def split_source(name: str, base: Path, split: str, folders: dict[str, str], class_names: tuple[str, ...],
                 hold_out: dict[str, str]) -> Source:
    """A split of an images/ + annotations/ tree. ``folders`` maps our split to its folder name; a split in
    ``hold_out`` is instead a seeded part of another folder's pairs (``val``: 10 % of train, ``train`` the rest)."""
    folder = folders.get(split)
    if folder is None or not (base / "images" / folder).is_dir():
        if split not in hold_out:
            raise DataError(f"{base / 'images' / (folder or split)}: the {name} dataset has no {split} split "
                            f"(expected images/{folder or split}/ and annotations/{folder or split}/)")
        images, masks = paired_files(base / "images" / hold_out[split], base / "annotations" / hold_out[split])
        keep = seeded_split(len(images), split)
        images, masks = [images[i] for i in keep], [masks[i] for i in keep]
    else:
        images, masks = paired_files(base / "images" / folder, base / "annotations" / folder)
    return Source(name=name, split=split, dataset=ImageMaskPairs(images, masks), indices=list(range(len(images))),
                  image_files=images, label_files=masks, class_names=class_names, label_to_class=class_indices)


def folder_source(root: Path, split: str, class_names: tuple[str, ...]) -> Source:
    """``ROOT/images/{train,val,test}``: a missing ``val`` is a seeded 10 % of ``train``, as for Pets; a
    missing ``test`` is an error when asked for."""
    train_only = not (root / "images" / "val").is_dir()
    folders = {"train": "train", "val": "val", "test": "test"}
    hold_out = {"val": "train", "train": "train"} if train_only else {}
    if train_only:
        folders.pop("val")
        folders.pop("train")
    return split_source("folder", root, split, folders, class_names, hold_out)


def ade20k_source(root: Path, split: str) -> Source:
    """ADE20K SceneParsing: ``test`` is the official validation set (the test labels are withheld); ``val``
    a seeded 10 % of the training set, ``train`` the rest."""
    base = root / ADE20K_FOLDER
    if not (base / "images").is_dir():
        raise DataError(f"{base}: ADE20K SceneParsing not found (expected images/{{training,validation}}/ and "
                        "annotations/{training,validation}/ there, from ADEChallengeData2016.zip)")
    return split_source("ade20k", base, split, {"test": "validation"}, ADE20K_CLASSES,
                        {"train": "training", "val": "training"})
