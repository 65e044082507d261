"""The package's layers import downwards only (see docs/architecture.md): a module never imports
from a layer above its own, so data never depends on models, models never on methods, and so on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "attribution_analysis"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
LAYERS = {
    "utils": 0,
    "config": 0,
    "data": 1,
    "models": 2,
    "methods": 3,
    "evaluation": 4,
    "reporting": 5,
}
APPLICATION = 6
"""Everything else (the ``app`` folder and the commands at the package top) is the top layer."""


def layer_of(module: str) -> int:
    """Layer of a dotted module name inside the package (``attribution_analysis.x.y``)."""
    parts = module.split(".")
    return LAYERS.get(parts[1], APPLICATION) if len(parts) > 1 else APPLICATION


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> list[str]:
    """Package modules imported anywhere in the file (lazy imports in functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")]


def test_layer_rule_sees_an_upward_import(tmp_path):
    assert layer_of("attribution_analysis.models.training") == 2
    assert layer_of("attribution_analysis.evaluation.compare") == 4
    assert layer_of("attribution_analysis.app.workspace") == APPLICATION
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from attribution_analysis.evaluation.compare import x\n")
    assert imported_modules(bad) == ["attribution_analysis.evaluation.compare"]


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    source = module_name(path)
    upward = [m for m in imported_modules(path) if layer_of(m) > layer_of(source)]
    assert not upward, f"{source} (layer {layer_of(source)}) imports {upward} from above"


def test_the_first_releases_import_path_still_works():
    from attribution_analysis.app import workspace
    from attribution_analysis.pipeline import open_workspace, split_examples

    assert open_workspace is workspace.open_workspace
    assert split_examples is workspace.split_examples
