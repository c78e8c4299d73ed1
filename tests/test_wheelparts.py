"""The GPU study's wheel route (benchmarks.wheelparts): split over two calls, join, check, install --target."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks import wheelparts


def fake_wheel(folder: Path, name: str, payload_bytes: int) -> Path:
    """A minimal pure-Python wheel whose module carries ``payload_bytes`` of incompressible data."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "VALUE = 42\n")
        z.writestr(f"{name}/payload.bin", os.urandom(payload_bytes))
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"{name}/__init__.py,,\n{name}/payload.bin,,\n{info}/METADATA,,\n"
                                     f"{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def test_split_over_two_calls_join_and_install_into_a_target(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    fake_wheel(wheels, "fakealpha", 150_000)
    fake_wheel(wheels, "fakebeta", 60_000)
    manifest = wheelparts.split(wheels, tmp_path / "parts", per_call_mib=0.2, calls=2)
    limit = 0.2 * wheelparts.MIB
    calls = {entry["call"] for entry in manifest["parts"]}
    assert calls == {1, 2} and len(manifest["parts"]) >= 3
    for call in (1, 2):
        carried = sum(p.stat().st_size for p in (tmp_path / "parts" / f"call{call}").glob("wheels.tar.*"))
        assert 0 < carried <= limit

    target = tmp_path / "site"
    names = wheelparts.install(tmp_path / "parts", target)
    assert names == ["fakealpha-0.1-py3-none-any.whl", "fakebeta-0.1-py3-none-any.whl"]
    out = subprocess.run([sys.executable, "-c", "import fakealpha, fakebeta; print(fakealpha.VALUE)"],
                         env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "42"


def test_a_missing_or_damaged_part_is_named(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    fake_wheel(wheels, "fakegamma", 120_000)
    manifest = wheelparts.split(wheels, tmp_path / "parts", per_call_mib=0.1, calls=2)
    last = manifest["parts"][-1]
    part = tmp_path / "parts" / f"call{last['call']}" / last["name"]
    data = part.read_bytes()
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(SystemExit, match="damaged"):
        wheelparts.join(tmp_path / "parts")
    part.unlink()
    with pytest.raises(SystemExit, match="missing"):
        wheelparts.join(tmp_path / "parts")


def test_a_set_too_large_for_the_calls_is_refused(tmp_path: Path) -> None:
    fake_wheel(tmp_path / "wheels", "fakedelta", 300_000)
    with pytest.raises(SystemExit, match="do not fit"):
        wheelparts.split(tmp_path / "wheels", tmp_path / "parts", per_call_mib=0.1, calls=2)
