"""A task file: a segmentation task described in one place (``--task FILE`` of every command).

    dataset: folder            # folder | voc | ade20k | pets | cityscapes
    root: /data/mytask         # relative paths are relative to this file's folder
    classes: [background, road, car]   # or the path of an id2label.json; voc/ade20k/pets/cityscapes know theirs
    ignore_index: 255          # default 255
    reduce_zero_label: false   # default false (ade20k: true)
    image_size: 256x512        # HxW or N
    class_weights: none        # none | inverse_frequency | median_frequency | [w0, w1, ...]

``load_task`` checks every key and returns the values under ``TrainConfig``'s field names (``root`` is
``data_root``). A command-line option beats the task file, which beats the preset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from study import storage
from study.config import DATASETS, check_class_weights, parse_image_size
from study.data.formats import check_class_names, read_id2label
from study.errors import ConfigError, UsageError
from study.layout import STUDY_FILE

TASK_KEYS = ("dataset", "root", "classes", "ignore_index", "reduce_zero_label", "image_size", "class_weights")
# The TrainConfig / StudySettings fields a task sets, and the key each comes from.
FIELDS = {"dataset": "dataset", "root": "data_root", "classes": "classes", "ignore_index": "ignore_index",
          "reduce_zero_label": "reduce_zero_label", "image_size": "image_size", "class_weights": "class_weights"}


def load_task(path: str | Path) -> dict[str, Any]:
    """The task file's values, checked, keyed by field name; any mistake is one ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--task {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--task {path}: not readable YAML ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--task {path}: expected a mapping of {', '.join(TASK_KEYS)}, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - set(TASK_KEYS))
    if unknown:
        raise ConfigError(f"--task {path}: unknown key(s) {', '.join(unknown)} (expected {', '.join(TASK_KEYS)})")
    if "dataset" not in data:
        raise ConfigError(f"--task {path}: missing key dataset (one of {', '.join(DATASETS)})")
    try:
        return {FIELDS[key]: _value(key, value, path.parent) for key, value in data.items()}
    except UsageError as exc:
        raise ConfigError(f"--task {path}: {str(exc).removeprefix('--')}") from None


def _value(key: str, value: Any, here: Path) -> Any:
    if key == "dataset":
        if value not in DATASETS:
            raise ConfigError(f"dataset: expected one of {', '.join(DATASETS)}, got {value!r}")
        return value
    if key == "root":
        root = (here / str(value)).resolve() if value is not None else None
        if root is None or not root.is_dir():
            raise ConfigError(f"root: {root or value}: not a folder")
        return str(root)
    if key == "classes":
        if isinstance(value, str):  # the path of an id2label.json
            file = (here / value).resolve()
            if not file.is_file():
                raise ConfigError(f"classes: {file}: no such file (expected a list of names or an id2label.json)")
            return list(read_id2label(file))
        if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
            raise ConfigError(f"classes: expected a list of class names or the path of an id2label.json, got {value!r}")
        return list(check_class_names(tuple(value), "classes"))
    if key == "ignore_index":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise ConfigError(f"ignore_index: expected an integer in 0..255, got {value!r}")
        return value
    if key == "reduce_zero_label":
        if not isinstance(value, bool):
            raise ConfigError(f"reduce_zero_label: expected true or false, got {value!r}")
        return value
    if key == "image_size":
        return list(parse_image_size(value))
    check_class_weights(value, "class_weights")
    return value


def recorded_task(experiment_dir: str) -> dict[str, Any]:
    """The task fields a study recorded in its ``study.json`` (``--resume`` continues the same task without
    ``--task``); empty when there is no record."""
    record = storage.join(experiment_dir, STUDY_FILE)
    if not storage.is_file(record):
        return {}
    data = json.loads(storage.read_bytes(record))
    return {name: data[name] for name in (*FIELDS.values(), "task") if name in data}
