"""The built-in presets, as data: ``search_spaces/<name>.yaml`` (report, search, demo).

Each is written in the one grammar of a search space (``search_spaces.spec``), the grammar of a user's
``--space FILE.yaml`` too, and is loaded through the same checks. A preset's ``points`` are full
configurations: with ``searcher: grid`` exactly these run; with ``searcher: optuna`` they are evaluated
first and TPE proposes the rest. ``study.run`` turns them into ``StudySettings``; nothing here imports Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from search_spaces import spec
from study.errors import ConfigError

FOLDER = Path(__file__).resolve().parent
PRESETS = tuple(sorted(path.stem for path in FOLDER.glob("*.yaml")))


def load_preset(name: str) -> dict[str, Any]:
    """The preset ``search_spaces/<name>.yaml``, checked and resolved (a fresh dict: callers may change it)."""
    if name not in PRESETS:
        raise ConfigError(f"--preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    path = FOLDER / f"{name}.yaml"
    return spec.resolve(spec.load(path), str(path))


def load_space(path: str, preset: dict[str, Any]) -> dict[str, Any]:
    """A ``--space`` file over ``preset`` (each key the file gives wins), checked and resolved."""
    return spec.resolve(spec.overlay(preset, spec.load(path)), path)
