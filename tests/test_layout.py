"""Rooms and doors (docs: ../shared/STYLE.md): which package may import which, and module size.

Every module of every project package is parsed with `ast`; every `import` and `from ...
import` counts, at module level or inside a function, relative ones resolved against the
module's package.  A forbidden edge fails the test with the file, line and import.
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "protos", "planner", "device", "cloud", "testbed", "bench")

# package -> the project packages it must never import.  Downwards only: common (the wire code
# shared by both ends) and protos at the bottom, planner below device and cloud, the link
# testbed and bench on top, imported by nothing in the runtime.
FORBIDDEN: dict[str, frozenset[str]] = {
    "protos": frozenset({"common", "planner", "device", "cloud", "testbed", "bench"}),
    "common": frozenset({"planner", "device", "cloud", "testbed", "bench"}),
    "planner": frozenset({"device", "cloud", "testbed", "bench"}),
    "device": frozenset({"cloud", "testbed", "bench"}),
    "cloud": frozenset({"device", "testbed", "bench"}),
    "testbed": frozenset({"planner", "device", "cloud", "bench"}),
    "bench": frozenset(),
}

MAX_LINES = 400
SIZE_CHECKED = ("device", "cloud", "planner", "common", "bench", "testbed")
# a module over MAX_LINES says why in its docstring: "long: ..." or "This module is long because ..."
LONG_REASON = re.compile(r"(^|\s)long:|This module is long because", re.IGNORECASE)


@dataclass(frozen=True)
class Edge:
    path: Path
    line: int
    target: str          # the imported module, absolute and dotted

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}: imports {self.target}"


def modules(package: str) -> list[Path]:
    """The package's Python files, generated stubs included (they import too)."""
    return sorted(p for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[Edge]:
    """Every import in the file (module level, functions, classes, conditionals), absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            edges += [Edge(path, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import mod` may import a module: count both pkg and pkg.mod
            edges.append(Edge(path, node.lineno, module))
            edges += [Edge(path, node.lineno, f"{module}.{alias.name}") for alias in node.names
                      if alias.name != "*"]
    return edges


def forbidden_edges(package: str) -> list[Edge]:
    banned = FORBIDDEN[package]
    return [e for p in modules(package) for e in imports(p) if e.target.split(".")[0] in banned]


def test_every_package_has_a_rule():
    here = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    assert here <= set(FORBIDDEN), f"packages without an import rule: {sorted(here - set(FORBIDDEN))}"


def test_the_walk_sees_imports_inside_functions(tmp_path, monkeypatch):
    """The checker itself: an import inside a function and a relative one both count."""
    pkg = tmp_path / "device"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("def f():\n    from bench import link\n    from .y import z\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    targets = {e.target for e in imports(pkg / "x.py")}
    assert {"bench", "bench.link", "device.y", "device.y.z"} <= targets
    assert [e.target for e in forbidden_edges("device")] == ["bench", "bench.link"]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_downwards(package):
    if not (REPO / package).is_dir():
        pytest.skip(f"no package {package}/ here")
    bad = forbidden_edges(package)
    assert not bad, (f"{package} must not import {', '.join(sorted(FORBIDDEN[package]))}:\n"
                     + "\n".join(map(str, bad)))


def oversized() -> list[str]:
    out = []
    for package in SIZE_CHECKED:
        for path in modules(package):
            text = path.read_text()
            n = len(text.splitlines())
            if n <= MAX_LINES:
                continue
            doc = ast.get_docstring(ast.parse(text)) or ""
            if not LONG_REASON.search(doc):
                out.append(f"{path.relative_to(REPO)}: {n} lines")
    return out


def test_modules_are_read_in_one_sitting():
    """At most MAX_LINES lines, unless the module docstring says why ("long: ...")."""
    bad = oversized()
    assert not bad, (f"modules over {MAX_LINES} lines without a reason in their docstring "
                     "('long: ...' or 'This module is long because ...'):\n" + "\n".join(bad))


# --- one source per fact: the contract ---------------------------------------------------------
SHARED_CONTRACTS = REPO.parent / "shared" / "CONTRACTS.md"


def test_docs_contracts_is_the_shared_contract():
    """docs/CONTRACTS.md holds every line of ../shared/CONTRACTS.md, in order, plus what this
    project added (the shared copy is read-only to us and may lag our additions): nothing the
    contract names is dropped, renamed or reordered."""
    ours = REPO / "docs" / "CONTRACTS.md"
    assert ours.is_file(), "docs/CONTRACTS.md is missing"
    if not SHARED_CONTRACTS.is_file():
        pytest.skip(f"{SHARED_CONTRACTS} absent (a clone without the shared directory): nothing to compare")
    ours_lines = ours.read_text().splitlines()
    at = 0
    for number, line in enumerate(SHARED_CONTRACTS.read_text().splitlines(), 1):
        try:
            at = ours_lines.index(line, at) + 1
        except ValueError:
            pytest.fail(f"{SHARED_CONTRACTS} line {number} is missing from docs/CONTRACTS.md "
                        f"(or out of order): {line!r}")
