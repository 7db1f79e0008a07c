"""The layering rules of STYLE.md, enforced: dependencies run coordinator -> shards -> dn.

- dn/ never imports ray, shards or coordinator; shards/ never imports coordinator.
- Only dn/store/s3.py imports boto3 or botocore.
- ``.remote(`` appears only in shards/ and coordinator/.
- ruff (lint and the banned-import rule in pyproject.toml) passes on the whole tree.
- No import circle between the modules of dn/, shards/, coordinator/ and bench/ (the rules of
  the import graph are above ``GRAPH_FOLDERS``); no private name (one leading underscore) taken
  by one of those modules from another; no module of them over ``MAX_MODULE_LINES`` lines.
  Each check lists every violation it finds, and each is also run on a small planted tree to
  show that it can fail.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _py(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_dn_depends_on_nothing_above_it():
    for path in _py("dn"):
        bad = _imports(path) & {"ray", "shards", "coordinator"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_shards_do_not_import_the_coordinator():
    for path in _py("shards"):
        assert "coordinator" not in _imports(path), f"{path.relative_to(ROOT)}"


def test_only_the_s3_store_imports_boto3():
    for folder in ("dn", "shards", "coordinator"):
        for path in _py(folder):
            if path == ROOT / "dn/store/s3.py":
                continue
            bad = _imports(path) & {"boto3", "botocore"}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_remote_calls_only_in_the_ray_shells():
    for path in _py("dn"):
        assert ".remote(" not in path.read_text(), f"{path.relative_to(ROOT)} calls .remote("


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_passes():
    proc = subprocess.run(
        ["ruff", "check", "dn", "shards", "coordinator", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_the_tree_is_formatted():
    """``ruff format`` is the house format: CI fails on a file it would change."""
    proc = subprocess.run(
        ["ruff", "format", "--check", "dn", "shards", "coordinator", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, "run `ruff format`:\n" + proc.stdout + proc.stderr


def test_importing_the_dn_command_does_not_import_ray():
    """Regression: `dn up` failed on a fresh machine because importing the coordinator package
    imported Ray before the command could set Ray's loopback and token-auth environment."""
    import sys

    code = "import sys, coordinator, coordinator.cli.main; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


# -- the module graph: no import circle, no private name across modules, no long module --------
#
# Rules of the graph (what counts as an edge ``a -> b``, "a needs b"):
#
# - Every ``import`` and ``from ... import`` of a project module is an edge, at module level, in a
#   class body and inside a function alike. A function-level (lazy) import does not fail at
#   import time, but it still ties the two modules together: neither can be understood, tested or
#   moved without the other, and a lazy import is the usual way a circle is hidden. So it counts.
# - An import inside ``if TYPE_CHECKING:`` is not an edge: it never runs (annotations only). Its
#   ``else:`` branch runs, so that is.
# - ``from pkg import name`` is an edge to the submodule ``pkg.name`` when there is one, else to
#   ``pkg`` itself (its ``__init__``). ``import pkg.sub`` is an edge to ``pkg.sub`` only: that
#   Python runs ``pkg/__init__.py`` first is machinery, not a choice of the importer, so a
#   package ``__init__`` re-exporting its submodules is no circle with them by itself.
# - A submodule that imports a name from its own package's ``__init__`` does depend on it (the name
#   must already be bound there when the submodule is imported halfway through that ``__init__``),
#   even if the ``__init__`` only re-exports the name from a sibling: the edge goes to the package,
#   and the circle is reported. Import the name from the sibling that defines it instead.
# - Imports by string (``importlib``) are not seen.

GRAPH_FOLDERS = ("dn", "shards", "coordinator", "bench")
MAX_MODULE_LINES = 400


@dataclass(frozen=True)
class _Edge:
    importer: str
    target: str
    path: Path
    line: int
    lazy: bool
    type_only: bool

    def where(self, root: Path) -> str:
        how = " (inside a function)" if self.lazy else ""
        return f"{self.path.relative_to(root)}:{self.line}: {self.importer} -> {self.target}{how}"


def _modules(root: Path, folders: tuple[str, ...]) -> dict[str, Path]:
    """Module name -> file for every ``*.py`` under ``folders``; ``pkg/__init__.py`` is ``pkg``."""
    out = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """(node, lazy, type_only) for every import statement in ``tree``."""
    stack: list[tuple[ast.AST, bool, bool]] = [(tree, False, False)]
    while stack:
        node, lazy, type_only = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, lazy, type_only
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend((child, lazy, True) for child in node.body)
            stack.extend((child, lazy, type_only) for child in node.orelse)
            continue
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        stack.extend((child, inner, type_only) for child in ast.iter_child_nodes(node))


def _from_module(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module name of a ``from ... import`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _edges(root: Path, modules: dict[str, Path]) -> list[_Edge]:
    """Every import of one project module by another (see the rules above)."""
    out = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node, lazy, type_only in _walk_imports(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    while parts and ".".join(parts) not in modules:
                        parts.pop()
                    targets.append(".".join(parts))
            else:
                base = _from_module(node, name, is_package)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in dict.fromkeys(targets):
                if target in modules and target != name:
                    out.append(_Edge(name, target, path, node.lineno, lazy, type_only))
    return out


def _circles(edges: list[_Edge]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if not e.type_only:
            graph.setdefault(e.importer, set()).add(e.target)
            graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(found)


def _circle_report(root: Path, folders: tuple[str, ...]) -> list[str]:
    """One paragraph per import circle: its modules and the imports that close it."""
    edges = _edges(root, _modules(root, folders))
    report = []
    for circle in _circles(edges):
        members = set(circle)
        inside = sorted(
            (e for e in edges if not e.type_only and e.importer in members and e.target in members),
            key=lambda e: (str(e.path), e.line),
        )
        report.append(
            f"circle of {len(circle)} modules: {', '.join(circle)}\n"
            + "\n".join(f"    {e.where(root)}" for e in inside)
        )
    return report


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _private_report(root: Path, folders: tuple[str, ...]) -> list[str]:
    """Every private name (one leading underscore) one project module takes from another: by
    ``from m import _name``, by a private module in an import path from outside its package, or
    as ``m._name`` on a module it imported."""
    modules = _modules(root, folders)
    tops = {name.split(".")[0] for name in modules}
    found = []
    for name, path in modules.items():
        where = path.relative_to(root)
        tree = ast.parse(path.read_text(), str(path))
        bound: dict[str, str] = {}  # local name -> the project module it is bound to
        for node, _, _ in _walk_imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] not in tops:
                        continue
                    _check_module_path(alias.name, name, f"{where}:{node.lineno}", found)
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        bound[top] = top
                continue
            base = _from_module(node, name, path.name == "__init__.py")
            if base.split(".")[0] not in tops:
                continue
            _check_module_path(base, name, f"{where}:{node.lineno}", found)
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(f"{where}:{node.lineno}: imports {alias.name} from {base}")
                elif f"{base}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                continue
            dotted = _dotted(node.value)
            if dotted is None or dotted.split(".")[0] not in bound:
                continue
            head, _, rest = dotted.partition(".")
            module = bound[head] + ("." + rest if rest else "")
            if module in modules and module != name:
                found.append(f"{where}:{node.lineno}: uses {module}.{node.attr}")
    return sorted(set(found))


def _check_module_path(module: str, importer: str, where: str, found: list[str]) -> None:
    """A private module (``pkg._impl``) may be imported only from inside ``pkg``."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        owner = ".".join(parts[:i])
        if _is_private(part) and not importer.startswith(owner + "."):
            found.append(f"{where}: imports the private module {'.'.join(parts[: i + 1])}")


def _long_report(root: Path, folders: tuple[str, ...]) -> list[str]:
    out = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > MAX_MODULE_LINES:
                out.append(f"{path.relative_to(root)}: {lines} lines")
    return out


def test_no_import_circle():
    circles = _circle_report(ROOT, GRAPH_FOLDERS)
    assert not circles, (
        f"{len(circles)} import circle(s); cut one import of each (move the "
        "shared thing down, or import it from where it lives):\n" + "\n".join(circles)
    )


def test_no_private_name_is_imported_across_modules():
    found = _private_report(ROOT, GRAPH_FOLDERS)
    assert not found, (
        f"{len(found)} private name(s) used across modules; make each public "
        "(a proper name, documented) or move it to its one user:\n" + "\n".join(found)
    )


def test_no_module_is_over_the_line_limit():
    found = _long_report(ROOT, GRAPH_FOLDERS)
    assert not found, (
        f"{len(found)} module(s) over {MAX_MODULE_LINES} lines; split each by "
        "concern:\n" + "\n".join(found)
    )


# The checks above must be able to fail: each is run on a small planted tree.


def _plant(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_circle_check_finds_a_planted_circle(tmp_path):
    _plant(
        tmp_path,
        {
            "p/__init__.py": "from p.a import A\nfrom p.b import B\n",  # re-exports: no circle
            "p/a.py": "import typing\nif typing.TYPE_CHECKING:\n    from p.b import B\nA = 1\n",
            "p/b.py": "import p.c\nB = 2\n",
            "p/c.py": "def f():\n    from p import d\n    return d\n",  # lazy: still an edge
            "p/d.py": "from p.b import B\n",
            "q/__init__.py": "from q.x import X\nY = 1\n",
            "q/x.py": "X = 1\n",
            # the package's own name: no circle (q does not import y)
            "q/y.py": "from q import Y\n",
        },
    )
    report = _circle_report(tmp_path, ("p", "q"))
    assert len(report) == 1, report
    assert report[0].startswith("circle of 3 modules: p.b, p.c, p.d"), report
    assert "p/c.py:2: p.c -> p.d (inside a function)" in report[0], report
    _plant(tmp_path, {"q/x.py": "from q import Y\nX = 1\n"})  # a name from its own __init__
    report = _circle_report(tmp_path, ("p", "q"))
    assert len(report) == 2 and report[1].startswith("circle of 2 modules: q, q.x"), report


def test_the_private_check_finds_planted_private_imports(tmp_path):
    _plant(
        tmp_path,
        {
            "p/__init__.py": "",
            "p/a.py": "_hidden = 1\n__all__ = []\n\ndef _f():\n    return _hidden\n",
            "p/b.py": "from p.a import _hidden, __all__\n",
            "p/c.py": "from p import a\nimport p.a as pa\nx = a._f() + pa._hidden + a.__all__\n",
            "p/_impl.py": "",
            "p/d.py": "from p._impl import *\n",  # inside its package: fine
            "q/__init__.py": "import p._impl\n",
        },
    )
    found = _private_report(tmp_path, ("p", "q"))
    assert found == [
        "p/b.py:1: imports _hidden from p.a",
        "p/c.py:3: uses p.a._f",
        "p/c.py:3: uses p.a._hidden",
        "q/__init__.py:1: imports the private module p._impl",
    ], found


def test_the_length_check_finds_a_planted_long_module(tmp_path):
    _plant(
        tmp_path,
        {"p/ok.py": "x = 1\n" * MAX_MODULE_LINES, "p/long.py": "x = 1\n" * (MAX_MODULE_LINES + 1)},
    )
    assert _long_report(tmp_path, ("p",)) == [f"p/long.py: {MAX_MODULE_LINES + 1} lines"]
