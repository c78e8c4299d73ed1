"""The one grammar of a search space: the built-in presets (``search_spaces/*.yaml``) and a ``--space FILE.yaml``.
The keys a file may fix, and those it may search, are the options declared so (``study.options``).

A file is YAML with these keys, each optional: a key it gives replaces the preset's (a `space` without `points`
drops the preset's points, which belong to its space)::

    space:                                  # the searched TrainConfig fields (SEARCHABLE), one of:
      model: {choice: [segformer, fcn_resnet50]}
      lr: {loguniform: [1.0e-4, 3.0e-3]}    # also uniform: [lo, hi]; randint: [lo, hi] (both ends included)
      batch_size: {grid: [16, 32]}          # a grid axis: the grid searcher crosses them, Optuna takes a choice
      gamma: 0.98                           # one value: fixed
    points: [{model: segformer, init: scratch, lr: 1.0e-3, gamma: 0.98}]  # run first (a grid: exactly these)
    searcher: optuna                        # or grid
    scheduler: {asha: {grace_period: 4, reduction_factor: 2}}            # or none
    num_samples: 24
    epochs: 30                              # and every option declared for a space file: dataset, data_root,
                                            # batch_size, image_size, val_every, sampler, objectives, ...
    pretrain: {models: [segformer], dataset: cityscapes, image_size: 64x128, epochs: 30, batch_size: 64,
               lr: 1.0e-3, gamma: 0.98}     # the study's own encoder pretraining stage, or none; any
                                            # registered models, on another task with data_root, classes, ...

In memory (what ``StudySettings`` holds) a searched key is ``("choice", [..])``, ``("grid", [..])``,
``("loguniform", lo, hi)``, ``("uniform", lo, hi)`` or ``("randint", lo, hi)``. Every value is checked by its
declaration (a model by ``segmodels``' registry), a mistake a ConfigError naming the file and the key; what values
do together is checked on every trial the space can produce (``produced``) once the settings are resolved, by
``study.preflight.check_trials``, before Ray starts and by ``--print-space`` alike.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from pathlib import Path
from typing import Any

import yaml

from foundation.errors import ConfigError
from foundation.io import parse_yaml, read_yaml
from study.config import SEARCHABLE, TrainConfig, parse_image_size
from study.options import Size, check_value, declaration, declared, names, size_text
from study.recipes import apply_recipe
from study.settings import PRESET_FOLDER, PRESETS, StudySettings, entry_values

KINDS = ("choice", "grid", "loguniform", "uniform", "randint")
RANGES = {"loguniform": float, "uniform": float, "randint": int}  # the field type each range samples
PRODUCT_LIMIT = 20_000  # the trials of a space checked one by one (study.preflight.check_trials); beyond: pairs
ASHA_KEYS = ("grace_period", "reduction_factor")
PRETRAIN_KEYS = ("models", "dataset", "image_size", "epochs", "batch_size", "lr", "gamma")
# A pretraining task other than the study's data root: its root and labels (as a task file names them).
PRETRAIN_TASK_KEYS = tuple(f.name for f in declared(TrainConfig) if "task" in f.metadata["where"]
                           and f.metadata["group"] == "task and data" and f.name not in PRETRAIN_KEYS)
# The options a file may fix (the command line's options of the same names win); the scheduler's are its block's.
FIXED = tuple(k for k in names(StudySettings, "space") if k not in ("scheduler", *ASHA_KEYS))
FILE_KEYS = ("space", "points", "scheduler", *FIXED, "pretrain")
# What a loaded file holds, flat (the scheduler's parameters are keys of their own): StudySettings' field names.
PRESET_KEYS = (*[k for k in FILE_KEYS if k != "scheduler"], "scheduler", *ASHA_KEYS)


class _Flow(dict):
    """A mapping written on one line (``{choice: [a, b]}``), as the files spell a space's entries."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data,
                                                                              flow_style=True))


def load(path: str | Path, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checked contents of one file, flat as ``PRESET_KEYS`` (only the keys it gives); ``given``: the command
    line's options, which win over the file's (its recipe options are checked together with them)."""
    return parse(read(path), str(path), given)


def load_preset(name: str) -> dict[str, Any]:
    """The preset ``search_spaces/<name>.yaml``, checked and resolved (a fresh dict: callers may change it)."""
    if name not in PRESETS:
        raise ConfigError(f"--preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    path = PRESET_FOLDER / f"{name}.yaml"
    return resolve(load(path), str(path))


def load_space(path: str, preset: dict[str, Any], given: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``--space`` file over ``preset`` (each key the file gives wins), checked with the command line's options
    (``given``) and resolved."""
    return resolve(overlay(preset, load(path, given)), path)


def read(path: str | Path) -> dict[str, Any]:
    return read_yaml(path, f"--space {path}")


def loads(text: str, source: str) -> dict[str, Any]:
    """The mapping a file's text holds (not yet checked): what ``--print-space`` printed, read back."""
    return parse_yaml(text, source)


def parse(data: dict[str, Any], source: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a file's mapping and return it flat, space entries as tuples (the validator of every space). Its fixed
    recipe options are checked as one trial's, with the command line's options (``given``) over them: a file's
    ``warmup`` with ``--schedule poly`` is a poly schedule's warmup."""
    _known(source, "", data, FILE_KEYS)
    out: dict[str, Any] = {}
    space = _mapping(source, "space", data.get("space", {}))
    _known(source, "space", space, SEARCHABLE)
    models = _models(source, data, space)
    if "space" in data:
        out["space"] = {key: _entry(source, key, value, models) for key, value in space.items()}
    if "points" in data:
        out["points"] = _points(source, data["points"], models)
    if "scheduler" in data:
        out.update(_scheduler(source, data["scheduler"]))
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in (k for k in FIXED if k in data):
        out[key] = check_value(StudySettings, key, data[key], f"{source}: {key}")
    fixed = {k: v for k, v in {**out, **(given or {})}.items() if k in train_fields}  # + its recipe's, as resolved
    size = parse_image_size(fixed.get("image_size", TrainConfig.image_size))
    _train_config(source, "", apply_recipe(fixed, size), models)
    if "pretrain" in data:
        out["pretrain"] = _pretrain(source, data["pretrain"])
    return out


def overlay(preset: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A file's values over a preset's: each key it gives wins; a new space drops the preset's points (they
    belong to the preset's space)."""
    merged = {**preset, **values}
    if "space" in values and "points" not in values:
        merged["points"] = []
    return merged


def resolve(values: dict[str, Any], source: str) -> dict[str, Any]:
    """What the searcher runs. A grid runs exactly its trials: the points, then the cross product of the space's
    grid axes (one-value keys join each), so its space becomes ``{}``. Optuna has no grid: there a grid axis
    is a choice (Ray's OptunaSearch refuses ``tune.grid_search``); its points must lie in the space."""
    space, points = values.get("space", {}), values.get("points", [])
    if values.get("searcher", "optuna") == "grid":
        for key, (kind, *args) in space.items():
            if kind not in ("grid", "choice") or (kind == "choice" and len(args[0]) > 1):
                raise ConfigError(f"{source}: space.{key}: a {kind} needs searcher: optuna (the grid searcher runs "
                                  "the points and the grid axes, {grid: [...]})")
        if space:
            axes = [[(key, v) for v in args[0]] for key, (_kind, *args) in space.items()]
            points = [*points, *(dict(combination) for combination in itertools.product(*axes))]
        if not points:
            raise ConfigError(f"{source}: the grid searcher has nothing to run: give points or grid axes")
        keys = set(points[0])
        for k, point in enumerate(points):
            if set(point) != keys or not {"model", "init"} <= keys:
                raise ConfigError(f"{source}: grid trial {k + 1} {point}: every trial of a grid names the same keys, "
                                  f"model and init among them ({', '.join(sorted(keys | {'model', 'init'}))})")
        return {**values, "space": {}, "points": points}
    if not {"model", "init"} <= set(space):
        raise ConfigError(f"{source}: space: an Optuna search names model and init (a choice, or one value)")
    for k, point in enumerate(points):
        for key, value in point.items():
            if key not in space:
                raise ConfigError(f"{source}: points[{k}].{key}: not in the space (searched: {', '.join(space)})")
            if not _contains(space[key], value):
                raise ConfigError(f"{source}: points[{k}].{key}: {value!r} lies outside space.{key} "
                                  f"{to_entry(space[key])}")
    return values


def produced(space: dict[str, tuple]) -> list[dict[str, Any]]:
    """The searched values of every trial ``space`` can produce, as far as a check needs them: its choices
    enumerated and its ranges at their bounds, crossed. Beyond ``PRODUCT_LIMIT`` trials, every pair of keys' values
    (the other keys at their first): what two options do together is what the checks between options look at."""
    keys = list(space)
    values = [entry_values(space[key]) for key in keys]
    if math.prod(len(v) for v in values) <= PRODUCT_LIMIT:
        return [dict(zip(keys, combination, strict=True)) for combination in itertools.product(*values)]
    first = {key: v[0] for key, v in zip(keys, values, strict=True)}
    return [{**first, keys[i]: x, keys[j]: y} for i, j in itertools.combinations(range(len(keys)), 2)
            for x in values[i] for y in values[j]]


def to_text(values: dict[str, Any]) -> str:
    """``values`` (flat, as ``PRESET_KEYS``) written back in the file's grammar: what ``--print-space`` shows."""
    data: dict[str, Any] = {}
    for key in FILE_KEYS:
        if key == "scheduler" and "scheduler" in values:
            asha = {k: values[k] for k in ASHA_KEYS if values.get(k) is not None}
            data[key] = {"asha": _Flow(asha)} if values["scheduler"] == "asha" else "none"
        elif key == "pretrain" and key in values and not values[key]:
            data[key] = "none"
        elif key == "space" and key in values:
            data[key] = {name: _Flow(to_entry(entry)) for name, entry in values[key].items()}
        elif key == "image_size" and values.get(key) is not None:
            data[key] = size_text(values[key])
        elif key in values and values[key] is not None:
            data[key] = list(values[key]) if isinstance(values[key], tuple) else values[key]
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=120)


def to_entry(entry: tuple) -> dict[str, Any]:
    """``("loguniform", lo, hi)`` -> ``{"loguniform": [lo, hi]}``, as a file spells it."""
    kind, *args = entry
    return {kind: list(args[0]) if kind in ("choice", "grid") else list(args)}


# --- the checks --------------------------------------------------------------------------------------------


def _entry(source: str, key: str, value: Any, models: list[str]) -> tuple:
    where = f"space.{key}"
    if isinstance(value, list):
        raise ConfigError(f"{source}: {where}: a bare list is not a space entry; write {{choice: [...]}} or "
                          f"{{grid: [...]}} to search, or one value (an image size as HxW) to fix it, got {value!r}")
    if not isinstance(value, dict):  # one value: fixed
        return ("choice", [_value(source, where, key, value, models)])
    if len(value) != 1 or next(iter(value)) not in KINDS:
        raise ConfigError(f"{source}: {where}: expected one of {', '.join(f'{{{k}: ...}}' for k in KINDS)} "
                          f"or one value, got {value!r}")
    kind, args = next(iter(value.items()))
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{source}: {where}: a {kind} needs a non-empty list of values, got {args!r}")
        return (kind, [_value(source, where, key, v, models) for v in args])
    field_type = _field_type(key)
    if field_type is not RANGES[kind]:
        raise ConfigError(f"{source}: {where}: {key} cannot be sampled from a {kind} range; use choice or grid")
    numbers = int if kind == "randint" else (int, float)
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(v, numbers) and not isinstance(v, bool) for v in args)):
        expected = "integers" if kind == "randint" else "numbers"
        raise ConfigError(f"{source}: {where}: a {kind} needs [low, high], two {expected}, got {args!r}")
    low, high = (RANGES[kind](v) for v in args)
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{source}: {where}: a loguniform's bounds must be > 0, got [{low}, {high}]")
    if low >= high:
        raise ConfigError(f"{source}: {where}: a {kind} range needs low < high, got [{low}, {high}]")
    for bound in (low, high):
        _value(source, where, key, bound, models)
    return (kind, low, high)


def _value(source: str, where: str, key: str, value: Any, models: list[str]) -> Any:
    """One searched value, checked by its declaration (a model: by the registry too); a size becomes ``"HxW"``
    (Optuna's choices are scalars). What it does with the other options (a model with an image size, a schedule
    with a warmup) is checked on every trial the space can produce, once they are known
    (``study.preflight.check_trials``): alone, with the other options' defaults, it could be refused wrongly."""
    if isinstance(declaration(TrainConfig, key).metadata["kind"], Size):
        return _image_size(source, where, value)
    if isinstance(value, (list, dict)) or value is None:
        raise ConfigError(f"{source}: {where}: a searched value is one string or number, got {value!r}")
    if key == "model":
        _train_config(source, where, {key: value}, models)
    else:
        check_value(TrainConfig, key, value, f"{source}: {where}")
    return value


def _image_size(source: str, where: str, value: Any) -> str:
    try:
        height, width = parse_image_size(value)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {where}: {_bare(exc)}") from None
    return f"{height}x{width}"


def _points(source: str, points: Any, models: list[str]) -> list[dict[str, Any]]:
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ConfigError(f"{source}: points: expected a list of mappings ({{model: ..., init: ..., lr: ...}}), "
                          f"got {points!r}")
    checked = []
    for k, point in enumerate(points):
        where = f"points[{k}]"
        _known(source, where, point, SEARCHABLE)
        if not {"model", "init"} <= set(point):
            raise ConfigError(f"{source}: {where}: a point names its model and init, got {point}")
        checked.append({key: _value(source, f"{where}.{key}", key, v, [point["model"]]) for key, v in point.items()})
    return checked


def _scheduler(source: str, value: Any) -> dict[str, Any]:
    if value in ("none", None):
        return {"scheduler": "fifo"}
    if value == "asha":
        return {"scheduler": "asha"}
    if not isinstance(value, dict) or list(value) != ["asha"] or not isinstance(value["asha"] or {}, dict):
        raise ConfigError(f"{source}: scheduler: expected none, asha or {{asha: {{grace_period: N, "
                          f"reduction_factor: N}}}}, got {value!r}")
    params = value["asha"] or {}
    _known(source, "scheduler.asha", params, ASHA_KEYS)
    for key, minimum in zip(ASHA_KEYS, (1, 2), strict=True):
        if key in params:
            _integer(source, f"scheduler.asha.{key}", params[key], minimum)
    return {"scheduler": "asha", **params}


def _pretrain(source: str, block: Any) -> dict[str, Any]:
    if block in (None, "none", {}):  # no pretraining stage of the study's own
        return {}
    block = _mapping(source, "pretrain", block)
    _known(source, "pretrain", block, (*PRETRAIN_KEYS, *PRETRAIN_TASK_KEYS))
    missing = [k for k in PRETRAIN_KEYS if k not in block]
    if missing:
        raise ConfigError(f"{source}: pretrain: missing {', '.join(missing)}")
    models = block["models"]
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"{source}: pretrain.models: expected a non-empty list of model names, got {models!r}")
    _train_config(source, "pretrain", {k: v for k, v in block.items() if k != "models"}, models)
    return dict(block)


def _models(source: str, data: dict[str, Any], space: dict[str, Any]) -> list[str]:
    """The models a file names (its space's, then its points'), each checked: the other values are checked with
    each of them (SegFormer needs images of at least 32 pixels)."""
    entry = space.get("model")
    named = []
    if isinstance(entry, dict):
        values = next(iter(entry.values()), [])
        named = [("space.model", m) for m in (values if isinstance(values, list) else [])]
    elif "model" in space:
        named = [("space.model", entry)]
    points = data.get("points") if isinstance(data.get("points"), list) else []
    named += [(f"points[{k}].model", p["model"]) for k, p in enumerate(points) if isinstance(p, dict) and "model" in p]
    for where, model in named:
        if not isinstance(model, str):
            raise ConfigError(f"{source}: {where}: expected a model name, got {model!r}")
        _train_config(source, where, {"model": model}, [])
    return list(dict.fromkeys(model for _where, model in named))


def _train_config(source: str, where: str, fields: dict[str, Any], models: list[str]) -> None:
    """Let TrainConfig check ``fields``, with each model in turn (some ranges depend on it)."""
    try:
        if "model" in fields:
            TrainConfig(**fields)
        for model in [] if "model" in fields else models:
            TrainConfig(**fields, model=model)
        if not models and "model" not in fields:  # no model to check a size with: the size alone, here
            if "image_size" in fields:
                parse_image_size(fields["image_size"])
            TrainConfig(**{k: v for k, v in fields.items() if k != "image_size"})
    except ConfigError as exc:
        raise ConfigError(f"{source}: {where}: {_bare(exc)}" if where else f"{source}: {_as_key(exc)}") from None


def _contains(entry: tuple, value: Any) -> bool:
    kind, *args = entry
    if kind in ("choice", "grid"):
        return value in args[0]
    return isinstance(value, (int, float)) and args[0] <= value <= args[1]


def _known(source: str, where: str, data: dict[str, Any], keys: tuple[str, ...]) -> None:
    unknown = [k for k in data if k not in keys]
    if unknown:
        place = f"{where}: " if where else ""
        raise ConfigError(f"{source}: {place}unknown key {unknown[0]!r} (expected one of {', '.join(keys)})")


def _mapping(source: str, where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {value!r}")
    return value


def _integer(source: str, where: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{source}: {where}: expected an integer >= {minimum}, got {value!r}")


def _field_type(key: str) -> type:
    return type(next(f.default for f in dataclasses.fields(TrainConfig) if f.name == key))


def _as_key(exc: Exception) -> str:
    """``--batch-size: ...`` -> ``batch_size: ...``: TrainConfig names the option, a file names its key."""
    return re.sub(r"^--([\w-]+): ", lambda m: m.group(1).replace("-", "_") + ": ", str(exc))


def _bare(exc: Exception) -> str:
    """TrainConfig's message without its ``--option:`` prefix (the caller names the file's key instead)."""
    return re.sub(r"^--[\w-]+: ", "", str(exc))
