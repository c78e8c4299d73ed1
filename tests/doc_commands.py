"""The shell commands the README and docs/*.md print, read from the Markdown itself, so that a command edited in the
docs is the command tested (tests/test_docs_commands.py).

A ```` ```bash ```` block is one unit: its commands run in order, in one working folder. The fence's info string
may carry a marker after the language:

- ``test=skip: WHY``: not run here (a GPU, a cluster, the network, the real datasets, long training), and why;
- ``test=in-demo-folder``: run in the demo study's working folder once the demo has run (``results/demo``,
  ``data/toy``);
- no marker: run in a new, empty working folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```bash(?:[ \t]+test=(?P<marker>[^\n]*))?\n(?P<body>.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository
    line: int  # the fence's line
    marker: str  # "" (run), "skip: WHY" or "in-demo-folder"
    commands: tuple[str, ...]  # each with its continuation lines joined, comment lines dropped

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        return self.marker.removeprefix("skip:").strip() if self.marker.startswith("skip:") else None


def commands_of(body: str) -> tuple[str, ...]:
    """The commands of a block: a line ending in a backslash continues on the next; lines that are only a comment
    (or blank) are prose, not commands."""
    commands, current = [], ""
    for line in body.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line
        if line.endswith("\\"):
            current = current[:-1] + " "
            continue
        commands.append(current)
        current = ""
    return tuple(commands)


def blocks(files: list[Path] = DOCS) -> list[Block]:
    """Every bash block of the documentation, in file and line order."""
    found = []
    for path in files:
        text = path.read_text()
        for match in FENCE.finditer(text):
            marker = (match.group("marker") or "").strip()
            assert marker == "" or marker == "in-demo-folder" or marker.startswith("skip:"), (path, marker)
            found.append(Block(str(path.relative_to(REPO)), text.count("\n", 0, match.start()) + 1, marker,
                               commands_of(match.group("body"))))
    return found
