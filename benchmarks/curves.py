"""The search benchmark's curve file: recorded val mIoU curves that ``benchmarks.search_replay`` replays.

One JSON object; every key but these is free (what recorded it, when, on which machine)::

    {"epochs": E,                                   the full length of a trial
     "configurations": [
        {"params": {"model": "segformer", "lr": 0.001, ...},   whatever was searched
         "curve": {"1": 0.41, "2": 0.45, ..., "E": 0.52},      val mIoU at each validated epoch (every epoch, or
                                                               every k-th: the last must be E)
         "epoch_seconds": 3.85,                                the measured train time of one epoch (seconds)
         "seed": 0},                                           the training seed; a configuration may have several
        ...]}

Nothing here imports torch, Ray or the study: the benchmark's own environment (``.venv-search``) reads it.
``python -m benchmarks.replay_curves`` writes it (``--from-study`` from a finished grid study, ``--convert``
from the first recording's format).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundation.errors import ConfigError


@dataclass(frozen=True)
class Run:
    """One recorded training run: a configuration at one seed."""

    params: dict[str, Any]
    curve: dict[int, float]  # validated epoch -> val mIoU
    epoch_seconds: float
    seed: int


@dataclass
class CurveSet:
    name: str
    epochs: int
    runs: list[Run]
    meta: dict[str, Any] = field(default_factory=dict)

    def configurations(self) -> list[dict[str, Any]]:
        """The distinct ``params``, in the file's order."""
        seen: dict[str, dict[str, Any]] = {}
        for run in self.runs:
            seen.setdefault(params_key(run.params), run.params)
        return list(seen.values())

    def seeds(self) -> list[int]:
        return sorted({run.seed for run in self.runs})


def params_key(params: dict[str, Any]) -> str:
    """A hashable, order-free name for a configuration."""
    return json.dumps(params, sort_keys=True)


def read_curves(path: str | Path) -> CurveSet:
    """Read and check a curve file; a bad one raises ConfigError naming the file and what was expected."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--curves {path}: not a readable JSON file ({exc})") from None
    return parse_curves(data, path.stem, str(path))


def parse_curves(data: Any, name: str, where: str) -> CurveSet:
    def bad(what: str) -> ConfigError:
        return ConfigError(f"--curves {where}: {what} (see benchmarks/curves.py for the format)")

    if not isinstance(data, dict) or not isinstance(data.get("configurations"), list) or not data["configurations"]:
        raise bad('expected {"epochs": E, "configurations": [...]} with at least one configuration')
    epochs = data.get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise bad(f'"epochs" must be a positive integer, not {epochs!r}')
    runs = []
    for i, item in enumerate(data["configurations"]):
        if not isinstance(item, dict) or not {"params", "curve", "epoch_seconds", "seed"} <= set(item):
            raise bad(f"configuration {i} needs params, curve, epoch_seconds and seed")
        if not isinstance(item["params"], dict) or not item["params"]:
            raise bad(f"configuration {i}: params must be a non-empty object")
        try:
            curve = {int(k): float(v) for k, v in item["curve"].items()}
            seconds, seed = float(item["epoch_seconds"]), int(item["seed"])
        except (AttributeError, TypeError, ValueError):
            what = "curve must map epochs to numbers, epoch_seconds and seed be numbers"
            raise bad(f"configuration {i}: {what}") from None
        if not curve or min(curve) < 1 or max(curve) != epochs or not all(map(math.isfinite, curve.values())):
            raise bad(f"configuration {i}: curve must hold finite values at epochs 1..{epochs}, ending at {epochs}")
        if not (math.isfinite(seconds) and seconds > 0):
            raise bad(f"configuration {i}: epoch_seconds must be a positive number, not {item['epoch_seconds']!r}")
        runs.append(Run(item["params"], dict(sorted(curve.items())), seconds, seed))
    keys = [(params_key(r.params), r.seed) for r in runs]
    if len(set(keys)) != len(keys):
        raise bad("a configuration appears twice with the same seed")
    meta = {k: v for k, v in data.items() if k not in ("epochs", "configurations")}
    return CurveSet(name, epochs, runs, meta)


def curves_json(epochs: int, runs: list[Run], **meta: Any) -> dict[str, Any]:
    """The file's object (``meta`` first: what recorded it)."""
    return {**meta, "epochs": epochs, "configurations": [
        {"params": r.params, "curve": {str(k): v for k, v in sorted(r.curve.items())},
         "epoch_seconds": r.epoch_seconds, "seed": r.seed} for r in runs]}
