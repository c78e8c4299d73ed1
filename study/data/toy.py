"""Write small synthetic data in the datasets' real on-disk layouts: Pets, Cityscapes, and (for a user's own
task) the ``folder`` layout, Pascal VOC 2012 and ADE20K.

The very same loaders read it, so the demo and the tests exercise the real loading code. Images are
simple but learnable: a pet is a warm-coloured blob on a cool textured background, bordered by a thin
boundary band; a street scene is sky over buildings over road, with cars and vegetation.

    python -m study.data.toy --root data/toy [--formats pets,cityscapes,folder,voc,ade20k]
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from study.data.sources import voc_palette

log = logging.getLogger(__name__)

# (breed, official CLASS-ID, SPECIES 1=cat 2=dog, BREED-ID), as in the official list.txt
PET_BREEDS = (("Abyssinian", 1, 1, 1), ("Bengal", 6, 1, 2), ("american_bulldog", 2, 2, 1), ("beagle", 5, 2, 4))
# Cityscapes labelIds used by the toy scenes: unlabeled, road, sidewalk, building, vegetation, sky, car
CITY_COLOURS = {0: (0, 0, 0), 7: (128, 64, 128), 8: (230, 35, 200), 11: (70, 70, 70), 21: (60, 160, 40),
                23: (70, 130, 220), 26: (200, 20, 20)}
CITY_SPLITS = {"train": ("aachen", "bremen"), "val": ("frankfurt",)}


def _noisy(rng: np.random.Generator, shape: tuple[int, int], colour: tuple[int, int, int],
           spread: float = 18.0) -> np.ndarray:
    base = np.asarray(colour, dtype=np.float32) + rng.normal(0, 25, size=3)
    return base + rng.normal(0, spread, size=(*shape, 3))


def pet_pair(rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """One RGB image and its trimap (1 pet, 2 background, 3 boundary)."""
    height, width = int(rng.integers(72, 128)), int(rng.integers(72, 128))
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    ry, rx = rng.uniform(0.2, 0.35) * height, rng.uniform(0.2, 0.35) * width
    radius = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    trimap = np.full((height, width), 2, dtype=np.uint8)
    trimap[radius < 1.0] = 1
    trimap[(radius >= 0.85) & (radius < 1.15)] = 3
    background = _noisy(rng, (height, width), (60, 110, 150), spread=30)
    pet = _noisy(rng, (height, width), (190, 140, 80))
    image = np.where((radius < 1.0)[..., None], pet, background)
    return Image.fromarray(image.clip(0, 255).astype(np.uint8)), Image.fromarray(trimap)


def write_pets(root: Path, n_trainval: int, n_test: int, rng: np.random.Generator) -> None:
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for split, count in (("trainval", n_trainval), ("test", n_test)):
        for k in range(count):
            breed, class_id, species, breed_id = PET_BREEDS[k % len(PET_BREEDS)]
            name = f"{breed}_{len(lines['trainval']) + len(lines['test']) + 1}"
            image, trimap = pet_pair(rng)
            image.save(base / "images" / f"{name}.jpg", quality=92)
            trimap.save(base / "annotations" / "trimaps" / f"{name}.png")
            lines[split].append(f"{name} {class_id} {species} {breed_id}")
    for split, split_lines in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(split_lines) + "\n")


def street_pair(rng: np.random.Generator, height: int = 128, width: int = 256) -> tuple[Image.Image, Image.Image]:
    """One street-like RGB image and its Cityscapes labelIds."""
    label = np.full((height, width), 11, dtype=np.uint8)  # building
    horizon = int(rng.uniform(0.25, 0.4) * height)
    skyline = horizon + (rng.integers(-12, 12, size=width // 16 + 1).repeat(16)[:width])
    yy = np.arange(height)[:, None]
    label[yy < skyline[None, :]] = 23  # sky
    road_top = int(rng.uniform(0.6, 0.7) * height)
    label[road_top:] = 7  # road
    label[road_top : road_top + 6] = 8  # sidewalk
    for _ in range(int(rng.integers(1, 4))):  # cars on the road
        x0, w = int(rng.integers(0, width - 40)), int(rng.integers(24, 40))
        y0 = int(rng.integers(road_top - 4, height - 16))
        label[y0 : y0 + 14, x0 : x0 + w] = 26
    x0 = int(rng.integers(0, width - 30))  # a tree
    label[horizon : road_top, x0 : x0 + int(rng.integers(12, 30))] = 21
    label[-3:] = 0  # ego-vehicle-like void strip: ignored in training
    image = np.zeros((height, width, 3), dtype=np.float32)
    for label_id, colour in CITY_COLOURS.items():
        where = label == label_id
        image[where] = _noisy(rng, (height, width), colour)[where]
    return Image.fromarray(image.clip(0, 255).astype(np.uint8)), Image.fromarray(label)


def write_cityscapes(root: Path, n_train: int, n_val: int, rng: np.random.Generator) -> None:
    base = root / "cityscapes"
    for split, count in (("train", n_train), ("val", n_val)):
        cities = CITY_SPLITS[split]
        for k in range(count):
            city = cities[k % len(cities)]
            stem = f"{city}_{k:06d}_000019"
            image_dir, label_dir = base / "leftImg8bit" / split / city, base / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            image, label = street_pair(rng)
            image.save(image_dir / f"{stem}_leftImg8bit.png")
            label.save(label_dir / f"{stem}_gtFine_labelIds.png")


# The folder toy's classes: street labelIds -> class index (void -> 255, everything else background).
FOLDER_CLASSES = ("background", "road", "sidewalk", "car")
_STREET_TO_FOLDER = {0: 255, 7: 1, 8: 2, 26: 3}
# ...and the ADE20K SceneParsing ids of the same scene (0 is "other", ignored with reduce_zero_label).
_STREET_TO_ADE20K = {0: 0, 7: 7, 8: 12, 11: 2, 21: 5, 23: 3, 26: 21}


def _street_classes(label: np.ndarray, table: dict[int, int], default: int) -> np.ndarray:
    out = np.full(label.shape, default, dtype=np.uint8)
    for label_id, class_id in table.items():
        out[label == label_id] = class_id
    return out


def write_folder(root: Path, counts: dict[str, int], rng: np.random.Generator,
                 size: tuple[int, int] = (64, 96)) -> None:
    """``root/images/<split>/<stem>.{jpg,png}`` and ``root/annotations/<split>/<stem>.png`` (class indices)."""
    for split, count in counts.items():
        for k in range(count):
            image, label = street_pair(rng, *size)
            stem = f"{split}_{k:04d}"
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
            image.save(root / "images" / split / f"{stem}.{'jpg' if k % 2 else 'png'}")  # both image kinds
            mask = _street_classes(np.asarray(label), _STREET_TO_FOLDER, 0)
            Image.fromarray(mask).save(root / "annotations" / split / f"{stem}.png")


def write_voc(root: Path, counts: dict[str, int], rng: np.random.Generator) -> None:
    """``root/VOCdevkit/VOC2012``: JPEGImages, palette-PNG SegmentationClass (cat 8 or dog 12, 255 on the
    object border, as VOC marks its borders) and ImageSets/Segmentation/{train,val}.txt."""
    base = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    number = 0
    for split, count in counts.items():
        names = []
        for k in range(count):
            number += 1
            name = f"2007_{number:06d}"
            image, trimap = pet_pair(rng)
            trimap = np.asarray(trimap)
            mask = np.where(trimap == 1, 8 if k % 2 else 12, 0).astype(np.uint8)
            mask[trimap == 3] = 255
            png = Image.fromarray(mask, mode="P")
            png.putpalette(voc_palette())
            image.save(base / "JPEGImages" / f"{name}.jpg", quality=92)
            png.save(base / "SegmentationClass" / f"{name}.png")
            names.append(name)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


def write_ade20k(root: Path, counts: dict[str, int], rng: np.random.Generator) -> None:
    """``root/ADEChallengeData2016/{images,annotations}/{training,validation}``: labels 1..150, 0 for "other"."""
    base = root / "ADEChallengeData2016"
    for split, count in counts.items():
        for folder in ("images", "annotations"):
            (base / folder / split).mkdir(parents=True, exist_ok=True)
        kind = "train" if split == "training" else "val"
        for k in range(count):
            image, label = street_pair(rng, 64, 96)
            stem = f"ADE_{kind}_{k + 1:08d}"
            image.save(base / "images" / split / f"{stem}.jpg", quality=92)
            Image.fromarray(_street_classes(np.asarray(label), _STREET_TO_ADE20K, 0)).save(
                base / "annotations" / split / f"{stem}.png")


OWN_TASK_TOYS = {  # the formats a user's own task comes in (the folder toy in root/folder: it has no top folder)
    "folder": lambda root, rng: write_folder(root / "folder", {"train": 32, "val": 8, "test": 8}, rng),
    "voc": lambda root, rng: write_voc(root, {"train": 32, "val": 8}, rng),
    "ade20k": lambda root, rng: write_ade20k(root, {"training": 32, "validation": 8}, rng),
}
TOY_FORMATS = ("pets", "cityscapes", *OWN_TASK_TOYS)


def write_toy(root: str | Path, seed: int = 0, pets: tuple[int, int] = (80, 24), cityscapes: tuple[int, int] = (24, 8),
              formats: tuple[str, ...] = ("pets", "cityscapes")) -> Path:
    """Write the toy datasets of ``formats`` under ``root`` (deterministic for a given seed); returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    writers = {"pets": lambda r, g: write_pets(r, *pets, g),
               "cityscapes": lambda r, g: write_cityscapes(r, *cityscapes, g), **OWN_TASK_TOYS}
    for name in formats:
        writers[name](root, rng)
    log.info("wrote toy %s data under %s", ", ".join(formats), root)
    return root


def toy_exists(root: str | Path) -> bool:
    root = Path(root)
    return ((root / "oxford-iiit-pet" / "annotations" / "test.txt").is_file()
            and (root / "cityscapes" / "gtFine" / "val").is_dir())


def main(argv: list[str] | None = None) -> int:
    from study.cli import OneLineParser

    parser = OneLineParser(prog="python -m study.data.toy", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="folder to write oxford-iiit-pet/ and cityscapes/ into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default="pets,cityscapes", help=f"comma-separated, of {', '.join(TOY_FORMATS)}")
    args = parser.parse_args(argv)
    formats = tuple(f for f in args.formats.split(",") if f)
    unknown = sorted(set(formats) - set(TOY_FORMATS))
    if unknown:
        parser.error(f"--formats: unknown {', '.join(unknown)} (expected {', '.join(TOY_FORMATS)})")
    write_toy(args.root, seed=args.seed, formats=formats)
    return 0


if __name__ == "__main__":
    from study.cli import exit_cli

    exit_cli("study.data.toy", main)
