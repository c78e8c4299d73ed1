"""Every command the README and docs/*.md print is run as printed (tests/doc_commands.py reads them from the
Markdown), in a new working folder, with ``python`` the project's interpreter; a block marked ``test=skip: WHY``
is skipped with its reason. The demo folder's block is run by the ``demo_report`` fixture (conftest.py), once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from doc_commands import REPO, Block, blocks, commands_of

BLOCKS = blocks()


def run_block(block: Block, folder: Path, env: dict[str, str] | None = None) -> None:
    """The block's commands in order, each as printed, through bash in ``folder``; each must exit 0."""
    env = {**os.environ, **(env or {}), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in block.commands:
        done = subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{block.id}: {command}\n" + (done.stdout + done.stderr)[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_documented_commands_run_as_printed(block: Block, tmp_path: Path, cache_dir: Path,
                                            request: pytest.FixtureRequest) -> None:
    if block.skip_reason:
        pytest.skip(f"{len(block.commands)} command(s) not run here: {block.skip_reason}")
    if block.marker == "in-demo-folder":
        report = request.getfixturevalue("demo_report")  # it ran this block in the demo's folder
        assert (report / "report.md").is_file()
        return
    run_block(block, tmp_path)


def test_every_block_is_run_or_says_why_not() -> None:
    assert len(BLOCKS) >= 15 and all(b.commands for b in BLOCKS)
    assert any(b.id.startswith("README.md") and not b.marker for b in BLOCKS)
    assert [b for b in BLOCKS if b.marker == "in-demo-folder"], "the README's report command runs on the demo"
    assert all(b.skip_reason for b in BLOCKS if b.marker not in ("", "in-demo-folder"))


def test_commands_are_read_as_bash_reads_them() -> None:
    body = "# a comment\npython -m a --x 1 \\\n    --y 2   # trailing\n\npython -m b\n"
    assert commands_of(body) == ("python -m a --x 1      --y 2   # trailing", "python -m b")
    assert REPO.joinpath("README.md").is_file()
