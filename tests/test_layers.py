"""The layers, checked on the source: dependencies point one way, and Ray stays in one folder.

segmodels <- study core (data, metric, loop, trial helpers: no Ray) <- study/orchestrate (the only Ray) <- CLIs;
search_spaces is data and its grammar (checked by study.config); analysis reads results from disk and never needs Ray.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLIS = {"study/run.py"}  # the study's CLI imports the Ray layer once its options are checked


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("path", files("study", "analysis", "segmodels", "search_spaces"),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_each_layer_imports_only_what_lies_below_it(path: Path) -> None:
    rel = path.relative_to(REPO).as_posix()
    used = imports(path)
    tops = {top(m) for m in used}
    if rel.startswith("segmodels/"):
        assert not tops & {"study", "analysis", "search_spaces", "ray"}, used
    elif rel.startswith("search_spaces/"):
        # data and its grammar, checked by study.config's TrainConfig; never Ray, the Ray layer or analysis
        assert not tops & {"ray", "analysis"} and not any(m.startswith("study.orchestrate") for m in used), used
    elif rel.startswith("analysis/"):
        assert "ray" not in tops and not any(m.startswith("study.orchestrate") for m in used), used
    elif rel.startswith("study/orchestrate/"):
        assert "analysis" not in tops or rel == "study/orchestrate/__init__.py", used  # the report, at the end
    elif rel not in CLIS:
        assert "ray" not in tops and not any(m.startswith("study.orchestrate") for m in used), used


def test_the_ray_layer_imports_ray_at_the_top_of_its_modules() -> None:
    for path in files("study/orchestrate"):
        top_level = {alias.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.Import)
                     for alias in node.names}
        top_level |= {node.module for node in ast.parse(path.read_text()).body
                      if isinstance(node, ast.ImportFrom) and node.module}
        uses_ray = any(top(m) == "ray" for m in imports(path))
        if uses_ray:
            assert any(top(m) == "ray" for m in top_level), f"{path.name} imports Ray inside a function"
