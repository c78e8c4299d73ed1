"""The one atomic file write of the project: write beside the target, then rename over it.

A reader (another trial, a resumed study, the analysis) never sees half a file, and a failed
write leaves the previous file as it was. ``foundation.io`` and ``foundation.storage`` build on it.
``check_new_folder``: the one check of an output folder that must start empty.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

from foundation.errors import ConfigError

_UMASK = os.umask(0)  # read once, at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as tmp:
        try:
            write(tmp)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.chmod(tmp.name, 0o666 & ~_UMASK)  # the mode a plain open() gives, not the temporary file's 0600
    os.replace(tmp.name, path)
    return path


def atomic_torch_save(obj: object, path: str | Path) -> Path:
    """``torch.save`` through ``atomic_write``."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def check_new_folder(path: str | Path, option: str) -> None:
    """Refuse (``ConfigError``, one line naming ``option``) a path that is a file, or a folder that holds anything:
    what a command writes there would mix with, or overwrite, what is there. A missing or empty folder passes."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is a file; expected a folder")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"{option} {path}: not empty; choose a new or empty folder")
