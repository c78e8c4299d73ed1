"""File formats of a run (JSON, CSV, checkpoints): written atomically (``foundation.files``), read safely."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any

import torch

from foundation.errors import ConfigError, DataError
from foundation.files import atomic_torch_save, atomic_write

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "csv_text", "json_text", "write_json",
           "write_csv", "load_checkpoint"]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def json_text(data: Any, sort_keys: bool = True) -> str:
    """Indented JSON; keys sorted unless ``sort_keys`` is False: a record whose order means something (a study's
    objectives, first the primary one) keeps its insertion order."""
    return json.dumps(data, indent=2, sort_keys=sort_keys) + "\n"


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


@functools.lru_cache(maxsize=1)
def _strict_loader() -> type:
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        """YAML as a config file means it: a duplicated key is refused, ``1e-3`` is a number (as in YAML 1.2), and
        ``0x64``, ``0o17``, ``1_000`` or ``1:30`` stay text (YAML 1.1 reads them as integers)."""

        def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201
            seen = set()
            for key_node, _value in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    mark = key_node.start_mark
                    raise yaml.constructor.ConstructorError(None, None, f"duplicated key {key!r}", mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    Loader.yaml_implicit_resolvers = {k: [(tag, regexp) for tag, regexp in v if tag != "tag:yaml.org,2002:int"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
                                 list("-+0123456789"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?(?:\d[\d_]*)?\.?\d*[eE][-+]?\d+$"), list("-+0123456789."))
    return Loader


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML config file holds; ``what`` (``--task FILE``) starts every ConfigError. An unreadable,
    non-UTF-8, empty or non-mapping file, invalid YAML and a duplicated key are each refused in one line."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return parse_yaml(text, what)


def parse_yaml(text: str, what: str) -> dict[str, Any]:
    """``read_yaml`` of a text already read."""
    import yaml

    try:
        data = yaml.load(text, Loader=_strict_loader())  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{what}: not valid YAML ({problem}{where})") from None
    if data is None:
        raise ConfigError(f"{what}: the file is empty; give at least one key")
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a mapping of keys, got {type(data).__name__}")
    return data
