"""The layout a reader relies on: every package ships, and data flows one way (nothing
below the command line imports it)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from tests.conftest import REPO

ROOT = REPO
PACKAGE = ROOT / "khod"


def test_every_package_is_in_the_distribution() -> None:
    """A package left out of pyproject.toml works from the checkout and is missing from
    the deb, the rpm and the wheel."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_nothing_below_the_command_line_imports_it() -> None:
    back = {
        str(p.relative_to(ROOT)): sorted(n for n in imported(p) if n.startswith("khod.cli"))
        for p in PACKAGE.rglob("*.py")
        if "cli" not in p.relative_to(PACKAGE).parts
    }
    assert {p: n for p, n in back.items() if n} == {}


# What each layer may not import: the packages above it (the house's floors, top down:
# cli; daemon; ingest and fleet; collect and checks; sources, adapters and store; parse).
ABOVE = {
    "khod.parse": ("khod.store", "khod.sources", "khod.adapters", "khod.collect",
                   "khod.checks", "khod.ingest", "khod.fleet", "khod.daemon"),
    "khod.store": ("khod.sources", "khod.collect", "khod.checks", "khod.ingest",
                   "khod.fleet", "khod.daemon"),
    "khod.sources": ("khod.collect", "khod.checks", "khod.ingest", "khod.fleet",
                     "khod.daemon"),
    "khod.collect": ("khod.ingest", "khod.fleet", "khod.daemon"),
    "khod.ingest": ("khod.fleet", "khod.daemon"),
    "khod.fleet": ("khod.ingest", "khod.daemon"),
}  # fmt: skip


def test_no_layer_imports_one_above_it() -> None:
    """Lazy imports included: the store does not reach into the fleet (its URL rules,
    TLS defaults included, are the store's: khod/store/url.py), a parser into nothing."""
    up = {
        str(p.relative_to(ROOT)): sorted(n for n in imported(p) if n.startswith(banned))
        for layer, banned in ABOVE.items()
        for p in (ROOT / layer.replace(".", "/")).rglob("*.py")
    }
    assert {p: n for p, n in up.items() if n} == {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_itself_round_a_circle() -> None:
    """Lazy imports included: a circle means two modules that cannot be read, tested or
    moved one without the other."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {n for n in imported(p) if n in modules and n != m} for m, p in modules.items()}
    circles: list[list[str]] = []

    def walk(m: str, path: list[str], done: set[str]) -> None:
        for n in sorted(graph[m]):
            if n in path:
                circles.append([*path[path.index(n) :], n])
            elif n not in done:
                walk(n, [*path, n], done)
        done.add(m)

    done: set[str] = set()
    for m in sorted(graph):
        if m not in done:
            walk(m, [m], done)
    assert circles == []


def test_no_private_name_of_another_library_is_imported() -> None:
    """``from lib import _Private`` breaks on the library's next release, unannounced."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("khod"):
                found += [
                    f"{path.relative_to(ROOT)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and a.name != "__future__"
                ]
    assert found == []


def test_the_tests_are_grouped_and_each_group_is_a_package() -> None:
    """docs/testing.md's layout: no test file at the top of tests/, and every folder of
    tests is a package (two groups may then hold files of the same name)."""
    tests = ROOT / "tests"
    assert sorted(p.name for p in tests.glob("test_*.py")) == []
    groups = {p.parent for p in tests.glob("*/test_*.py")}
    assert groups and all((g / "__init__.py").exists() for g in groups)
    documented = (ROOT / "docs" / "testing.md").read_text()
    assert sorted(g.name for g in groups if f"`tests/{g.name}/`" not in documented) == []
