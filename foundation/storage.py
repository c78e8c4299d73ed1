"""A study's files on a local folder or on object storage, through the filesystem Ray itself uses.

``--storage`` is either a local path or a URI that ``pyarrow.fs.FileSystem.from_uri`` understands
(``s3://bucket/prefix``, ``gs://...``, with query options such as
``?endpoint_override=http://minio:9000&scheme=http``). Ray Train and Tune resolve ``storage_path``
the same way, so these helpers read and write the very files the trials write. Paths are joined
in front of the query string, which every node needs intact.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from foundation.files import atomic_write

log = logging.getLogger(__name__)


def is_remote(path: str | Path) -> bool:
    return "://" in str(path)


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...``, keeping a URI's query string (``?endpoint_override=...``) at the end."""
    head, sep, query = str(base).partition("?")
    return "/".join([head.rstrip("/"), *(p.strip("/") for p in parts if p)]) + sep + query


def _resolve(uri: str | Path):  # -> tuple[pyarrow.fs.FileSystem, str]
    import pyarrow.fs

    if not is_remote(uri):
        return pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())
    return pyarrow.fs.FileSystem.from_uri(str(uri))


def display(uri: str | Path) -> str:
    """The URI without its query string (which may carry endpoints or keys), for messages."""
    return str(uri).partition("?")[0]


def exists(uri: str | Path) -> bool:
    import pyarrow.fs

    fs, path = _resolve(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def is_file(uri: str | Path) -> bool:
    import pyarrow.fs

    fs, path = _resolve(uri)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def list_files(uri: str | Path) -> list[str]:
    """Every file below ``uri``, as paths relative to it (empty when it does not exist)."""
    import pyarrow.fs

    fs, root = _resolve(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(i.path[len(root):].lstrip("/") for i in infos if i.type == pyarrow.fs.FileType.File)


def list_folders(uri: str | Path) -> list[str]:
    """The names of the folders directly below ``uri``, empty ones included (empty when it does not exist):
    Tune's syncs copy a trial's folder as soon as it exists, before any file is in it."""
    import pyarrow.fs

    fs, root = _resolve(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=False, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory)


def read_bytes(uri: str | Path) -> bytes:
    fs, path = _resolve(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _write(uri: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """The one place that writes a file at a local path or URI: one object put on object storage
    (readers see all of it or nothing), ``foundation.files.atomic_write`` locally."""
    if not is_remote(uri):
        atomic_write(uri, write)
        return
    fs, path = _resolve(uri)
    with fs.open_output_stream(path) as stream:
        write(stream)


def write_bytes(uri: str | Path, data: bytes) -> None:
    _write(uri, lambda stream: stream.write(data))


def delete_file(uri: str | Path) -> None:
    fs, path = _resolve(uri)
    fs.delete_file(path)


def upload(local: str | Path, uri: str | Path) -> None:
    """Copy a local file, or a folder's files, to ``uri`` (a local path or a URI)."""
    local = Path(local)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for file in files:
        target = uri if file == local else join(uri, file.relative_to(local).as_posix())
        with open(file, "rb") as source:
            _write(target, lambda stream, source=source: shutil.copyfileobj(source, stream, length=8 * 2**20))


def download(uri: str | Path, local: str | Path, skip: Callable[[str], bool] | None = None) -> Path:
    """Copy the file at ``uri`` to the file ``local``, or every file below it into the folder ``local``.

    ``skip(relative_path)`` leaves files out (e.g. model weights nobody will read).
    """
    local = Path(local)
    if is_file(uri):
        local.parent.mkdir(parents=True, exist_ok=True)
        _download_file(uri, local)
        return local
    for rel in list_files(uri):
        if skip is None or not skip(rel):
            _download_file(join(uri, rel), local / rel)
    return local


def _download_file(uri: str | Path, local: Path) -> None:
    fs, path = _resolve(uri)
    with fs.open_input_stream(path) as stream:
        atomic_write(local, lambda f: shutil.copyfileobj(stream, f, length=8 * 2**20))


def default_cache_dir() -> Path:
    """The cache folder on this node: ``$SEGSTUDY_CACHE``, else ``$XDG_CACHE_HOME/segstudy`` or ~/.cache/segstudy."""
    import os

    if os.environ.get("SEGSTUDY_CACHE"):
        return Path(os.environ["SEGSTUDY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segstudy"


def local_copy(uri: str, cache_dir: str | Path | None = None) -> Path:
    """A local file with the contents of ``uri`` (downloaded once per node into the cache folder)."""
    import hashlib

    fs, path = _resolve(uri)
    info = fs.get_file_info(path)
    key = hashlib.sha256(f"{uri}|{info.size}|{info.mtime_ns}".encode()).hexdigest()[:20]
    target = Path(cache_dir or default_cache_dir()) / "remote" / key / display(uri).rstrip("/").rsplit("/", 1)[-1]
    if not target.is_file():
        log.info("downloading %s to %s", display(uri), target)
        download(uri, target)
    return target
