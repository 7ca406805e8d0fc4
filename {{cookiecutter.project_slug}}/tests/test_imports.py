"""Every module imports on its own, and no two modules import each other, even indirectly:
a cycle makes the import order matter, which breaks as soon as a feature is pruned."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import {{ cookiecutter.package_name }}

PACKAGE = Path({{ cookiecutter.package_name }}.__file__).parent
NAME = {{ cookiecutter.package_name }}.__name__
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def local_imports(module: str) -> set[str]:
    """The package's modules `module` imports when it is imported (not under TYPE_CHECKING)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is not None:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names if alias.name in MODULES)
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, as the modules along it, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
            if (found := visit(imported, [*path, module])) is not None:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        if (found := visit(module, [])) is not None:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_through_others() -> None:
    graph = {module: local_imports(module) for module in MODULES}
    assert cycle(graph) is None


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {NAME}.{module}"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_only_the_composition_root_and_the_command_line_read_the_settings() -> None:
    # A feature gets its own settings group passed in; one that imported settings.py would
    # depend on every other feature's settings too.
    readers = {module for module in MODULES if "settings" in local_imports(module)}
    assert readers == {"app", "__main__"}
