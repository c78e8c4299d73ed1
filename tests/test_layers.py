"""The layers, checked on the source: dependencies point one way, and Ray stays in one folder, with no exemptions.

foundation (errors, files, storage) <- segmodels <- study core (options, data, metric, loop: no Ray, no analysis)
<- study/orchestrate (the only Ray; no analysis) <- the CLIs. search_spaces is data only; analysis reads results
from disk and never needs Ray.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLIS = {"study/run.py"}  # the study's CLI: imports the Ray layer once its options are checked, then analysis


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


@pytest.mark.parametrize("path", files("foundation", "study", "analysis", "segmodels", "search_spaces"),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_each_layer_imports_only_what_lies_below_it(path: Path) -> None:
    rel = path.relative_to(REPO).as_posix()
    used = imports(path)
    tops = {top(m) for m in used}
    project = {"foundation", "segmodels", "study", "analysis", "search_spaces"}
    if rel.startswith("foundation/"):
        assert not tops & (project - {"foundation"}) and "ray" not in tops, used
    elif rel.startswith("segmodels/"):
        assert not tops & {"study", "analysis", "search_spaces", "ray"}, used
    elif rel.startswith("search_spaces/"):
        assert not used, used  # data only
    elif rel.startswith("analysis/"):
        assert "ray" not in tops and "search_spaces" not in tops, used
        assert not any(m.startswith("study.orchestrate") for m in used), used
    elif rel.startswith("study/orchestrate/"):
        assert not tops & {"analysis", "search_spaces"}, used
    elif rel in CLIS:
        assert "search_spaces" not in tops, used
    else:  # the study core
        assert not tops & {"ray", "analysis", "search_spaces"}, used
        assert not any(m.startswith("study.orchestrate") for m in used), used


def test_the_ray_layer_imports_ray_at_the_top_of_its_modules() -> None:
    for path in files("study/orchestrate"):
        top_level = {alias.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.Import)
                     for alias in node.names}
        top_level |= {node.module for node in ast.parse(path.read_text()).body
                      if isinstance(node, ast.ImportFrom) and node.module}
        uses_ray = any(top(m) == "ray" for m in imports(path))
        if uses_ray:
            assert any(top(m) == "ray" for m in top_level), f"{path.name} imports Ray inside a function"


# Inside the study core: the options and the checks of a trial's settings lie below the data, which lies below
# augmentation, inference, the loop and the trial helpers (issue 35: three imports ran up).
CORE_BELOW = {"study/options.py", "study/config.py", "study/recipes.py", "study/recipe_checks.py",
              "study/settings.py"}
ABOVE_DATA = ("study.augment", "study.inference", "study.loop", "study.trial", "study.preflight", "study.space")


@pytest.mark.parametrize("path", [p for p in files("study") if "orchestrate" not in p.parts],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_the_study_core_imports_only_downwards(path: Path) -> None:
    rel = path.relative_to(REPO).as_posix()
    used = imports(path)
    if rel in CORE_BELOW:
        assert not any(m.startswith(("study.data", *ABOVE_DATA)) for m in used), used
    elif rel.startswith("study/data/"):
        assert not any(m.startswith(ABOVE_DATA) for m in used), used
