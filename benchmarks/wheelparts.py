"""Carry a wheel set larger than one device call to the GPU machine: split it here, join it there.

    python -m benchmarks.wheelparts download --dest .whl/wheels          # here: pip download the set (cp312)
    python -m benchmarks.wheelparts split --wheels .whl/wheels --out .whl [--per-call-mib 52]
    python benchmarks/wheelparts.py install --parts .whl --target /tmp/site  # there: join, check, pip install

A device call carries at most 64 MiB (the working tree included), and the study's wheels beyond the
device image (Ray 2.60 alone is 79 MB) come to about 94 MiB. ``split`` tars the wheels (they are zip
files already, so no compression) and cuts the tar into parts, then deals the parts into ``call1/`` and
``call2/``, each at most ``--per-call-mib``. The first device call carries ``.whl/call1`` and does
nothing else; the second, on the still-warm machine, carries ``.whl/call2`` (``call1`` stays where the
first left it, as an ignored folder the second call does not name) and runs ``install``: it joins the
parts, checks every part's and the whole tar's SHA-256 against ``manifest.json``, unpacks the wheels and
runs ``pip install --no-index --no-deps --no-compile --target``. Standard library only: it runs before
anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MIB = 2**20
MANIFEST = "manifest.json"
PYTHON_VERSION = "3.12"  # the device image's (KINDS.md: Python 3.12.3)
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
# What Ray, Ray Tune and Optuna need beyond the device image (the image has torch, pandas, pyarrow,
# aiohttp, grpcio, msgpack, protobuf, pyyaml, requests, click, filelock, ...): one version each.
WHEELS = ["ray==2.60.0", "optuna", "alembic", "sqlalchemy", "greenlet", "colorlog", "mako", "tensorboardX",
          "jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "aiohttp-cors", "colorful", "py-spy",
          "smart-open", "virtualenv", "distlib", "platformdirs", "pydantic", "pydantic-core", "annotated-types",
          "opencensus", "opencensus-context", "google-api-core", "googleapis-common-protos", "proto-plus",
          "google-auth", "cachetools", "pyasn1-modules", "pyasn1", "rsa", "typing-inspection", "python-discovery",
          "opentelemetry-api", "importlib-metadata", "lazy-importer", "cryptography", "cffi", "pycparser"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(wheels: Path) -> bytes:
    """An uncompressed tar of every ``*.whl`` in ``wheels`` (sorted, so the same set gives the same bytes)."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise SystemExit(f"wheelparts: no *.whl in {wheels}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as f:
                tar.addfile(info, f)
    return buffer.getvalue()


def split(wheels: Path, out: Path, per_call_mib: float = 52.0, calls: int = 2) -> dict:
    """Tar ``wheels`` and deal the parts into ``out/call1`` ... ``out/callN``, each at most ``per_call_mib``."""
    data = pack(wheels)
    limit = int(per_call_mib * MIB)
    part_size = max(1, limit // 2)  # two parts per call: a call's folder fills to within half a part of its limit
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    folders: list[list[int]] = [[] for _ in range(calls)]
    sizes = [0] * calls
    call = 0
    for index, part in enumerate(parts):
        while sizes[call] + len(part) > limit:
            call += 1
            if call == calls:
                raise SystemExit(f"wheelparts: {len(data) / MIB:.1f} MiB of wheels do not fit {calls} calls of "
                                 f"{per_call_mib} MiB")
        folders[call].append(index)
        sizes[call] += len(part)
    manifest = {"tar_sha256": sha256(data), "tar_bytes": len(data), "wheels": sorted(p.name for p in
                                                                                  wheels.glob("*.whl")),
                "parts": [{"name": f"wheels.tar.{i:03d}", "call": next(c for c, f in enumerate(folders, 1) if i in f),
                           "bytes": len(p), "sha256": sha256(p)} for i, p in enumerate(parts)]}
    for c in range(1, calls + 1):
        folder = out / f"call{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("wheels.tar.*"):
            stale.unlink()
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    for entry, part in zip(manifest["parts"], parts, strict=True):
        (out / f"call{entry['call']}" / entry["name"]).write_bytes(part)
    manifest["call_mib"] = [round(s / MIB, 2) for s in sizes]
    return manifest


def join(parts: Path) -> tuple[bytes, dict]:
    """The tar, from every ``call*/wheels.tar.NNN`` under ``parts``, checked against the manifest."""
    manifests = sorted(parts.glob(f"call*/{MANIFEST}"))
    if not manifests:
        raise SystemExit(f"wheelparts: no call*/{MANIFEST} under {parts}")
    manifest = json.loads(manifests[0].read_text())
    chunks = []
    for entry in manifest["parts"]:
        path = parts / f"call{entry['call']}" / entry["name"]
        if not path.is_file():
            raise SystemExit(f"wheelparts: {path} is missing (did call {entry['call']} carry it?)")
        chunk = path.read_bytes()
        if sha256(chunk) != entry["sha256"]:
            raise SystemExit(f"wheelparts: {path} is damaged (SHA-256 differs from the manifest)")
        chunks.append(chunk)
    data = b"".join(chunks)
    if sha256(data) != manifest["tar_sha256"]:
        raise SystemExit("wheelparts: the joined tar's SHA-256 differs from the manifest")
    return data, manifest


def install(parts: Path, target: Path, python: str = sys.executable) -> list[str]:
    """Join, unpack and ``pip install --no-index --no-deps --target`` the wheels; returns their names."""
    data, manifest = join(parts)
    with tempfile.TemporaryDirectory(prefix="wheelparts-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            tar.extractall(tmp, filter="data")
        wheels = sorted(str(p) for p in Path(tmp).glob("*.whl"))
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(target), *wheels], check=True)
    return manifest["wheels"]


def download(dest: Path, names: list[str]) -> None:
    """``pip download`` each wheel for CPython 3.12 on manylinux x86-64, no dependencies (the list names them)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    PYTHON_VERSION, "--implementation", "cp", *platforms, "-d", str(dest), *names], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wheelparts", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="pip download the wheel set (here)")
    d.add_argument("--dest", default=".whl/wheels")
    d.add_argument("names", nargs="*", help=f"default: {' '.join(WHEELS)}")
    s = sub.add_parser("split", help="tar the wheels and deal the parts into OUT/call1, OUT/call2")
    s.add_argument("--wheels", default=".whl/wheels")
    s.add_argument("--out", default=".whl")
    s.add_argument("--per-call-mib", type=float, default=52.0,
                   help="parts per call at most (64 MiB per call less the working tree, ~6 MiB, and a margin)")
    s.add_argument("--calls", type=int, default=2)
    i = sub.add_parser("install", help="join the parts, check them, pip install --target (there)")
    i.add_argument("--parts", default=".whl")
    i.add_argument("--target", default="/tmp/site")
    args = parser.parse_args(argv)
    if args.command == "download":
        download(Path(args.dest), args.names or WHEELS)
    elif args.command == "split":
        manifest = split(Path(args.wheels), Path(args.out), args.per_call_mib, args.calls)
        print(json.dumps({k: manifest[k] for k in ("tar_bytes", "call_mib")} | {"wheels": len(manifest["wheels"])}))
    else:
        names = install(Path(args.parts), Path(args.target))
        print(f"wheelparts: installed {len(names)} wheels into {args.target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
