"""The dataset formats, one registry entry each, and the one label pipeline they all go through.

A format knows where its data lives under ``root``, how to open a split as a ``Source``, and the classes
it names itself (``None``: the task names them). ``open_source`` adds what the task says of the labels:
the on-disk ignore value, ADE20K's ``reduce_zero_label`` (0 -> ignored, k -> k - 1), and the check that
every mask value is a class index or ignored, which catches a wrong class count or a copied
``reduce_zero_label`` on the first offending file, before anything trains.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foundation.errors import ConfigError, DataError
from study.config import DATASETS, SPLITS
from study.data.folders import ADE20K_CLASSES, ADE20K_FOLDER, ade20k_source, folder_source
from study.data.sources import (
    CITYSCAPES_TRAIN_CLASSES,
    IGNORE_INDEX,
    PETS_CLASSES,
    VOC_CLASSES,
    Source,
    cityscapes_source,
    pets_source,
    voc_source,
)

ID2LABEL_FILE = "id2label.json"


@dataclass(frozen=True)
class Labels:
    """What a task says of its labels; ``None`` means the format's own (``TrainConfig``'s fields of the same names)."""

    classes: tuple[str, ...] | None = None
    ignore_index: int = IGNORE_INDEX
    reduce_zero_label: bool | None = None

    @classmethod
    def of(cls, cfg: object) -> Labels:
        """From a TrainConfig or StudySettings, or the dict of either (a checkpoint's config, study.json)."""
        get = cfg.get if isinstance(cfg, dict) else lambda name, default: getattr(cfg, name, default)
        classes = get("classes", None)
        return cls(tuple(classes) if classes else None, get("ignore_index", IGNORE_INDEX),
                   get("reduce_zero_label", None))


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    layout: str  # where the data lives under root, for messages and docs
    open: Callable[[Path, str, tuple[str, ...], bool], Source]  # (root, split, classes, download)
    classes: tuple[str, ...] | None  # None: the task names them
    reduce_zero_label: bool = False
    indices_on_disk: bool = True  # False: the format maps its own label ids (trimaps, Cityscapes labelIds)
    test_is_val: bool = False  # True: "test" opens the official val split (its test labels are withheld)


FORMATS = {f.name: f for f in (
    DatasetFormat("pets", "ROOT/oxford-iiit-pet/{images,annotations}",
                  lambda root, split, classes, download: pets_source(root, split, download=download),
                  PETS_CLASSES, indices_on_disk=False),
    DatasetFormat("cityscapes", "ROOT/cityscapes/{leftImg8bit,gtFine}/<split>/<city>",
                  lambda root, split, classes, download: cityscapes_source(root, split),
                  CITYSCAPES_TRAIN_CLASSES, indices_on_disk=False, test_is_val=True),
    DatasetFormat("voc", "ROOT/VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets}",
                  lambda root, split, classes, download: voc_source(root, split, download=download), VOC_CLASSES),
    DatasetFormat("ade20k", f"ROOT/{ADE20K_FOLDER}/{{images,annotations}}/{{training,validation}}",
                  lambda root, split, classes, download: ade20k_source(root, split), ADE20K_CLASSES,
                  reduce_zero_label=True),
    DatasetFormat("folder", "ROOT/{images,annotations}/{train,val,test}",
                  lambda root, split, classes, download: folder_source(root, split, classes), None),
)}
assert tuple(FORMATS) == DATASETS, "study.config.DATASETS lists the formats, in this order"


DEFAULT_LABELS = Labels()


def dataset_format(name: str) -> DatasetFormat:
    if name not in FORMATS:
        raise ConfigError(f"--dataset: expected one of {', '.join(FORMATS)}, got {name!r}")
    return FORMATS[name]


def read_id2label(path: Path) -> tuple[str, ...]:
    """Class names from a Hugging Face style ``{"0": "background", "1": "road", ...}`` file."""
    try:
        data = json.loads(path.read_text())
        names = {int(k): str(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: not an id2label JSON object of index -> class name ({exc})") from None
    if sorted(names) != list(range(len(names))):
        raise ConfigError(f"{path}: class indices must be 0..{len(names) - 1} without gaps, got {sorted(names)[:8]}")
    return tuple(names[k] for k in range(len(names)))


def check_class_names(classes: tuple[str, ...], where: str) -> tuple[str, ...]:
    if not classes:
        raise ConfigError(f"{where}: the class list is empty")
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise ConfigError(f"{where}: duplicate class names {duplicates}")
    if len(classes) > IGNORE_INDEX:
        raise ConfigError(f"{where}: at most {IGNORE_INDEX} classes (masks are uint8, {IGNORE_INDEX} is ignored), "
                          f"got {len(classes)}")
    return classes


def resolve_classes(fmt: DatasetFormat, labels: Labels, root: Path) -> tuple[str, ...]:
    """The task's class names: its own list, the format's, or ``ROOT/id2label.json``; they must agree."""
    id2label = root / ID2LABEL_FILE
    on_disk = read_id2label(id2label) if fmt.classes is None and id2label.is_file() else None
    known = fmt.classes or on_disk
    if labels.classes is not None:
        check_class_names(labels.classes, "classes")
        if known is not None and tuple(labels.classes) != known:
            source = id2label if on_disk else f"the {fmt.name} format"
            raise ConfigError(f"classes: {len(labels.classes)} names disagree with {source} ({len(known)}: "
                              f"{', '.join(known[:5])}{', ...' if len(known) > 5 else ''})")
        return tuple(labels.classes)
    if known is None:
        raise ConfigError(f"classes: the {fmt.name} format needs the class names (a list in the task file, the "
                          f"path of an id2label.json, or {id2label})")
    return check_class_names(known, str(id2label) if on_disk else fmt.name)


def label_mapping(num_classes: int, ignore_index: int, reduce_zero_label: bool,
                  raw: Callable[[np.ndarray, Path], np.ndarray]) -> Callable[[np.ndarray, Path], np.ndarray]:
    """``raw``'s class ids with the task's ignore value moved to 255 and, with ``reduce_zero_label``, 0 ignored
    and k -> k - 1 (as MMSegmentation's); any other value outside 0..K-1 stops the run naming the file."""

    def to_classes(label: np.ndarray, path: Path) -> np.ndarray:
        values = raw(label, path).astype(np.int64)
        ignored = values == ignore_index
        if reduce_zero_label:
            ignored |= values == 0
            values = values - 1
        bad = np.unique(values[~ignored & ((values < 0) | (values >= num_classes))])
        if bad.size:
            found = (bad + 1 if reduce_zero_label else bad).tolist()
            rule = ", reduce_zero_label on: 0 is ignored and 1..K are the classes" if reduce_zero_label else ""
            raise DataError(f"{path}: mask values {found[:8]} are neither class indices 0..{num_classes - 1} nor the "
                            f"ignore value {ignore_index} ({num_classes} classes{rule}); check the task's classes, "
                            "ignore_index and reduce_zero_label")
        return np.where(ignored, IGNORE_INDEX, values).astype(np.uint8)

    return to_classes


def open_source(name: str, split: str, root: str | Path, download: bool = False,
                labels: Labels = DEFAULT_LABELS) -> Source:
    """``name``'s ``split`` under ``root`` with the task's labels applied (see the module docstring)."""
    fmt = dataset_format(name)
    if split not in SPLITS:
        raise DataError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data-root {root}: not a folder (the {name} format expects {fmt.layout})")
    reduce_zero_label = fmt.reduce_zero_label if labels.reduce_zero_label is None else labels.reduce_zero_label
    if not fmt.indices_on_disk and (reduce_zero_label or labels.ignore_index != IGNORE_INDEX):
        raise ConfigError(f"--dataset {name}: maps its own label files to classes; ignore_index and "
                          "reduce_zero_label do not apply")
    classes = resolve_classes(fmt, labels, root)
    lowest, highest = (1, len(classes)) if reduce_zero_label else (0, len(classes) - 1)  # class values on disk
    if lowest <= labels.ignore_index <= highest:
        raise ConfigError(f"ignore_index: {labels.ignore_index} is also a class value on disk ({lowest}..{highest})")
    source = fmt.open(root, split, classes, download)
    if not source.indices:
        raise DataError(f"--data-root {root}: the {name} '{split}' split is empty")
    source.class_names = classes
    if fmt.indices_on_disk:
        source.label_to_class = label_mapping(len(classes), labels.ignore_index, reduce_zero_label,
                                              source.label_to_class)
    source.mapping = {"classes": list(classes), "ignore_index": labels.ignore_index,
                      "reduce_zero_label": reduce_zero_label}
    return source
