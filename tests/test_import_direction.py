"""Layering: ``render/`` imports nothing from ``selfsup``; ``eval/`` imports neither.

The sources are parsed with ``ast`` (never imported), so an import hidden inside a function
or behind ``importlib.import_module("...")`` counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "render": ("selfsup",),
    "eval": ("selfsup", "render"),
}


def imported_modules(source: str, filename: str = "<string>") -> set[str]:
    """Absolute module names a Python source imports, statically or by a literal string."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                modules.add(node.args[0].value)
    return modules


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        for module in imported_modules(path.read_text(), str(path)):
            if module.split(".")[0] in FORBIDDEN[package]:
                found.append(f"{path.relative_to(REPO)} imports {module}")
    return found


def test_the_checker_sees_every_import_form():
    source = (
        "import selfsup.data\n"
        "from selfsup.losses import photometric\n"
        "from . import sibling\n"
        "def f():\n"
        "    import importlib\n"
        "    return importlib.import_module('render.volume')\n"
    )
    assert imported_modules(source) == {"selfsup.data", "selfsup.losses", "importlib", "render.volume"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layering(package):
    if package == "render":
        assert list((REPO / "render").glob("*.py")), "render/ has no sources to check"
    assert violations(package) == []
