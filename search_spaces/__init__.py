"""Named search spaces and presets, as plain data (one module each: report, search, demo).

A space maps each hyperparameter name to ``("choice", [..])``, ``("loguniform", lo, hi)`` or
``("uniform", lo, hi)``. A preset's ``points`` are full configurations: with ``searcher: "grid"`` exactly
these run; with ``searcher: "optuna"`` they are evaluated first and TPE proposes the rest.
``study.run`` turns them into Ray Tune / Optuna objects; nothing here imports Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

PRESETS = ("demo", "report", "search")


def load_preset(name: str) -> dict[str, Any]:
    """The preset dict of ``search_spaces/<name>.py`` (a copy: callers may change it)."""
    if name not in PRESETS:
        raise ValueError(f"--preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    module = importlib.import_module(f"search_spaces.{name}")
    return {**module.PRESET, "space": dict(module.PRESET.get("space", {})),
            "points": list(module.PRESET.get("points", []))}
