"""The one resolution rule of a study's settings: defaults < recipe < preset < space file < task file < command line
(the recipe named by any of them fills the recipe options none of them gives).

On ``--resume`` the recorded ``study.json`` wins over all of them for what the study is; an option that is
declared to change on ``--resume`` (where the data lives, the epochs) keeps its recorded value unless the
command line gives one, and how the study runs (resources, speed, views) is the invocation's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from foundation import storage
from foundation.errors import ConfigError
from study.config import parse_image_size
from study.layout import STUDY_FILE
from study.options import declared, flag
from study.recipes import apply_recipe
from study.settings import StudySettings
from study.space import load_preset, load_space
from study.task import load_task

HOW = ("resources", "speed", "views")  # option groups that say how a study runs, never what it studies
IDENTITY = ("name", "storage", "resume")  # which experiment: never read from its own record
STRUCTURE = ("space", "points", "pretrain")  # the grammar's values beside the options: recorded with them


def resolve(cli: dict[str, Any], preset: str | None = None, space_file: str | None = None,
            task_file: str | None = None) -> StudySettings:
    """The settings of ``study.run`` from its layers (``cli``: the options given, by field name)."""
    preset = preset or ("search" if space_file else "demo")
    values = load_preset(preset)
    if space_file:
        values = load_space(space_file, values)
    values = {"preset": preset, "name": Path(space_file).stem if space_file else preset, **values}
    if task_file:  # the task file beats the preset (its data is the user's: no toy data is written)
        values = {**values, **load_task(task_file), "task": task_file, "toy": False}
    values.update(cli)
    values = apply_recipe(values, parse_image_size(values.get("image_size", StudySettings.image_size)))
    if cli.get("resume"):
        values = _recorded_over(values, cli)
    return StudySettings(**values)


def _recorded_over(values: dict[str, Any], cli: dict[str, Any]) -> dict[str, Any]:
    recorded = recorded_settings(storage.join(values.get("storage", "results"), values["name"]))
    fields = {f.name: f for f in declared(StudySettings)}
    out = dict(values)
    for key, value in recorded.items():
        field = fields.get(key)
        if key in STRUCTURE:
            out[key] = value
        elif field is None or key in IDENTITY or field.metadata["group"] in HOW:
            continue
        elif "resume" in field.metadata["where"] and not (key == "epochs" and _per_iteration(recorded)):
            out[key] = cli.get(key, value)
        elif key in cli and _comparable(cli[key]) != _comparable(value):
            raise ConfigError(f"{flag(key)}: {cli[key]!r} differs from the study being resumed ({value!r}); it "
                              "cannot change on --resume")
        else:
            out[key] = value
    return out


def _per_iteration(recorded: dict[str, Any]) -> bool:
    """A poly or cosine schedule was planned over the recorded epochs' iterations: they cannot change on resume."""
    return recorded.get("schedule", "exponential") != "exponential"


def recorded_settings(experiment_dir: str) -> dict[str, Any]:
    """What a study recorded in its ``study.json``; empty when there is no record."""
    record = storage.join(experiment_dir, STUDY_FILE)
    if not storage.is_file(record):
        return {}
    data = json.loads(storage.read_bytes(record))
    if "space" in data:  # JSON holds a space entry's tuple as a list
        data["space"] = {key: tuple(entry) for key, entry in data["space"].items()}
    return data


def _comparable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
