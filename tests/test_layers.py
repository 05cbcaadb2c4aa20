"""Imports point one way: core <- blocks <- tasks <- flows <- deployments <- app.

Every import in every module is read with `ast` (top-level and the ones inside functions, which
the project uses for heavy libraries), so a late import cannot hide a wrong direction.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from driftloop.core.settings import PROJECT_ROOT

# Lowest first. A module may import its own layer and any layer before it.
LAYERS: tuple[tuple[str, str], ...] = (
    ("core", "driftloop.core"),
    ("blocks", "blocks"),
    ("tasks", "tasks"),
    ("flows", "flows"),
    ("deployments", "deployments"),
    ("app", "driftloop.app"),
)


def layer_of(module: str) -> int | None:
    """The index of the layer a dotted module name belongs to, or None for third-party code."""
    for index, (_, prefix) in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return index
    return None


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every absolute import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from driftloop import app` names a package through its parent.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__")


SOURCES = sorted(
    path
    for folder in ("driftloop", "blocks", "tasks", "flows", "deployments")
    for path in (PROJECT_ROOT / folder).rglob("*.py")
)


def test_every_module_belongs_to_a_layer():
    loose = [module_name(p) for p in SOURCES if layer_of(module_name(p)) is None]
    # `driftloop/__init__.py` only names the package; it imports nothing.
    assert loose == ["driftloop"]
    assert not imports_of(PROJECT_ROOT / "driftloop" / "__init__.py")


@pytest.mark.parametrize("path", SOURCES, ids=module_name)
def test_no_module_imports_a_higher_layer(path: Path):
    own = layer_of(module_name(path))
    if own is None:
        return
    upward = [
        f"{path.relative_to(PROJECT_ROOT)}:{line} imports {module} "
        f"({LAYERS[target][0]} is above {LAYERS[own][0]})"
        for line, module in imports_of(path)
        if (target := layer_of(module)) is not None and target > own
    ]
    assert not upward, "\n".join(upward)


def test_the_check_catches_an_upward_import(tmp_path: Path):
    """The rule can fail: a core module that imports a task is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tasks.registry import find_champion\n")
    assert [layer_of(m) for _, m in imports_of(bad)] == [2, 2]
