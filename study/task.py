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

from pathlib import Path
from typing import Any

from foundation.errors import ConfigError
from foundation.io import read_yaml
from study.config import DATASETS, TrainConfig
from study.data.formats import check_class_names, dataset_format, read_id2label
from study.options import check_value, declared

# The options a task file sets, by the key each is spelled with there (``root`` is ``data_root``).
FIELDS = {f.metadata["task_key"] or f.name: f.name for f in declared(TrainConfig) if "task" in f.metadata["where"]}
TASK_KEYS = tuple(FIELDS)


def load_task(path: str | Path) -> dict[str, Any]:
    """The task file's values, checked, keyed by field name; any mistake is one ConfigError naming the file."""
    path = Path(path)
    what = f"--task {path}"
    data = read_yaml(path, what)
    unknown = sorted(set(map(str, data)) - set(TASK_KEYS))
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {', '.join(unknown)} (expected {', '.join(TASK_KEYS)})")
    if "dataset" not in data:
        raise ConfigError(f"{what}: missing key dataset (one of {', '.join(DATASETS)})")
    values = {FIELDS[key]: _value(key, value, path.parent, f"{what}: {key}") for key, value in data.items()}
    _check_weights(values, what)
    return values


def _value(key: str, value: Any, here: Path, where: str) -> Any:
    if key == "root":
        root = (here / value).resolve() if isinstance(value, str) and value else None
        if root is None or not root.is_dir():
            raise ConfigError(f"{where}: {root or repr(value)}: not a folder")
        return str(root)
    if key == "classes" and isinstance(value, str):  # the path of an id2label.json
        file = (here / value).resolve()
        if not file.is_file():
            raise ConfigError(f"{where}: {file}: no such file (expected a list of names or an id2label.json)")
        return list(read_id2label(file))
    value = check_value(TrainConfig, FIELDS[key], value, where)
    if key == "classes":
        return list(check_class_names(tuple(value), where))
    return list(value) if key == "image_size" else value


def _check_weights(values: dict[str, Any], what: str) -> None:
    """A list of class weights has one weight per class: checked here, before any data is read."""
    weights = values.get("class_weights")
    known = values.get("classes") or dataset_format(values["dataset"]).classes
    if isinstance(weights, list) and known is not None and len(weights) != len(known):
        raise ConfigError(f"{what}: class_weights: {len(weights)} weights for {len(known)} classes; give one "
                          "weight per class")
