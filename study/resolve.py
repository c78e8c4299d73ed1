"""The one resolution rule of a study's settings: defaults < recipe < preset < space file < task file < command line
(the recipe named by any of them fills the recipe options none of them gives).

On ``--resume`` the record wins over all of them for what the study (or the trial) is: ``resume_values`` is the one
rule of ``study.run --resume`` and ``study.run_trial --resume``. An option declared to change on ``--resume`` (where
the data lives, the epochs) and how the study runs (resources, speed, views) may be given anew; anything else given
must equal the record (a space or task file's keys count as given); an option not given keeps its recorded value.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from foundation import storage
from foundation.errors import ConfigError
from study import space as space_files
from study.config import parse_image_size
from study.layout import STUDY_FILE
from study.options import check_value, declared, flag, show
from study.recipes import apply_recipe
from study.settings import ResourcePlan, StudySettings
from study.space import load_preset, load_space
from study.task import load_task

HOW = ("resources", "speed", "views")  # option groups that say how a study runs, never what it studies
IDENTITY = ("name", "storage", "resume")  # which experiment: never read from its own record
STRUCTURE = ("space", "points", "pretrain")  # the grammar's values beside the options: recorded with them
PLANNED = tuple(ResourcePlan.__dataclass_fields__)  # study.json records the plan made from these: a resume plans anew


def resolve(cli: dict[str, Any], preset: str | None = None, space_file: str | None = None,
            task_file: str | None = None) -> StudySettings:
    """The settings of ``study.run`` from its layers (``cli``: the options given, by field name)."""
    given = {**cli, **({"preset": preset} if preset else {})}  # what this invocation says, for --resume
    preset = preset or ("search" if space_file else "demo")
    values = load_preset(preset)
    if space_file:
        values = load_space(space_file, values, cli)
        given = {**_file_keys(values, space_files.load(space_file, cli), f"--space {space_file}"), **given}
    values = {"preset": preset, "name": Path(space_file).stem if space_file else preset, **values}
    if task_file:  # the task file beats the preset (its data is the user's: no toy data is written)
        task = {**load_task(task_file), "task": task_file, "toy": False}
        values = {**values, **task}
        given = {**_file_keys(task, task, f"--task {task_file}"), **given}
    values.update(cli)
    values = apply_recipe(values, parse_image_size(values.get("image_size", StudySettings.image_size)))
    if cli.get("resume"):
        values = _recorded_over(values, given)
    return StudySettings(**values)


class Given:
    """A value a file gave, with the file and key to name when it differs from the record."""

    def __init__(self, value: Any, label: str) -> None:
        self.value, self.label = value, label


def _file_keys(values: dict[str, Any], in_file: dict[str, Any], source: str) -> dict[str, Given]:
    keys = set(in_file) | (set(STRUCTURE[:2]) if set(in_file) & set(STRUCTURE[:2]) else set())  # a grid: both
    return {key: Given(values[key], f"{source}: {key}") for key in keys if key in values}


def _recorded_over(values: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    experiment = storage.join(values.get("storage", "results"), values["name"])
    recorded = {k: v for k, v in recorded_settings(experiment).items() if k not in PLANNED}
    if not recorded:  # nothing recorded: study.preflight says there is nothing to resume
        return values
    what = f"the study being resumed at {storage.display(experiment)}"
    out = {**values, **resume_values(StudySettings, recorded, given, what)}
    for key in STRUCTURE:
        if key not in recorded:
            continue
        if key in given and _plain(given[key].value) != _plain(recorded[key]):
            raise ConfigError(f"{given[key].label}{_first_difference(given[key].value, recorded[key])}: differs from "
                              f"{what}; a space cannot change on --resume")
        out[key] = recorded[key]
    return out


def may_change_on_resume(field: Any, recorded: dict[str, Any]) -> bool:
    """Whether option ``field`` may take a new value on ``--resume``: declared so (``where`` has ``resume``), or how
    the run goes (``HOW``); never the epochs of a poly or cosine schedule, planned over the recorded iterations."""
    if field.name == "epochs" and recorded.get("schedule", "exponential") != "exponential":
        return False
    return "resume" in field.metadata["where"] or field.metadata["group"] in HOW


def resume_values(cls: type, recorded: dict[str, Any], given: dict[str, Any], what: str) -> dict[str, Any]:
    """The one ``--resume`` rule (``study.run`` and ``study.run_trial``): each option of ``cls`` but ``IDENTITY``
    takes its recorded value, read through its declaration (an option the record lacks: its default, which the run
    had), unless ``given`` (by field name; a ``Given`` names the file it came from) gives it; a given value that
    differs from the record is refused, naming the option, unless it ``may_change_on_resume``."""
    out: dict[str, Any] = {}
    for field in declared(cls):
        key = field.name
        if key in IDENTITY:
            continue
        default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
        before = check_value(cls, key, recorded[key], f"{what}: {key}") if key in recorded else default
        if key not in given:
            out[key] = before
            continue
        item = given[key]
        label = item.label if isinstance(item, Given) else flag(key)
        value = check_value(cls, key, item.value if isinstance(item, Given) else item, label)
        if value != before and not may_change_on_resume(field, recorded):
            raise ConfigError(f"{label}: {show(cls, key, value)} differs from {what} ({show(cls, key, before)}); it "
                              "cannot change on --resume")
        out[key] = value
    return out


def recorded_settings(experiment_dir: str) -> dict[str, Any]:
    """What a study recorded in its ``study.json``; empty when there is no record."""
    record = storage.join(experiment_dir, STUDY_FILE)
    if not storage.is_file(record):
        return {}
    data = json.loads(storage.read_bytes(record))
    if "space" in data:  # JSON holds a space entry's tuple as a list
        data["space"] = {key: tuple(entry) for key, entry in data["space"].items()}
    return data


def _plain(value: Any) -> Any:
    """A value as JSON holds it (tuples as lists), for comparing the grammar's values with their record."""
    return json.loads(json.dumps(value, default=list))


def _first_difference(given: Any, recorded: Any) -> str:
    """``.lr`` when a space's entry for lr differs (a key of a mapping), else nothing."""
    if isinstance(given, dict) and isinstance(recorded, dict):
        for key in [*given, *(k for k in recorded if k not in given)]:
            if _plain(given.get(key)) != _plain(recorded.get(key)):
                return f".{key}"
    return ""
