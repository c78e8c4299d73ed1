"""File formats of a run (JSON, CSV, checkpoints): written atomically (``segmodels.files``), read safely."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from segmodels.files import atomic_torch_save, atomic_write
from study.errors import DataError

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "csv_text", "json_text", "write_json",
           "write_csv", "load_checkpoint"]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json_text(data))


def csv_text(rows: list[dict[str, Any]], columns: list[str] | tuple[str, ...]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | tuple[str, ...]) -> Path:
    return atomic_write_text(path, csv_text(rows, columns))


def load_checkpoint(path: str | Path, option: str = "--checkpoint") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with a one-line error for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{option} {path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{option} {path}: not a readable checkpoint, truncated or corrupt? "
                        f"({type(exc).__name__})") from None
    if not isinstance(data, dict) or "model_state" not in data:
        raise DataError(f"{option} {path}: not a segstudy checkpoint (no model_state)")
    return data
