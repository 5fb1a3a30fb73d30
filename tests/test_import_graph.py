"""The house has no import circle: the module-level imports among artcap's modules form a DAG.

Imports inside functions (lazy imports that keep the CLI quick to start) and under `if TYPE_CHECKING:`
do not run when a module is imported, so they are not edges."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import artcap

PACKAGE_ROOT = Path(artcap.__file__).parent


def module_name(path: Path, root: Path) -> str:
    parts = (root.name, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(tree: ast.Module):
    """Import statements that run at import time: the module body and its if/try blocks, except TYPE_CHECKING."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """Module of the package at `root` -> the package's modules it imports at import time."""
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
        for node in module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
                continue
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(filter(None, [base, node.module]))
            submodules = {f"{target}.{a.name}" for a in node.names} & modules.keys()
            edges |= submodules or ({target} & modules.keys())
        edges.discard(name)
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return error.args[1]
    return None


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert "artcap.decoders.sat" in graph["artcap.decoders"]  # the walk sees the registry lines
    assert "artcap.decoders.base" in graph["artcap.decoders.sat"]
    cycle = import_cycle(graph)
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_the_walk_finds_a_circle_like_the_old_model_sat_one(tmp_path):
    """The check can fail: model.py importing sat at its end, sat importing model's names."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text("import torch\nclass Config: ...\nfrom . import sat\n")
    (package / "sat.py").write_text("from .model import Config\n")
    (package / "lazy.py").write_text("def f():\n    from .model import Config\n")
    graph = import_graph(package)
    assert graph["pkg.lazy"] == set()  # an import inside a function is not an edge
    assert set(import_cycle(graph)) == {"pkg.model", "pkg.sat"}


def test_a_decoder_module_imports_alone_in_a_fresh_interpreter():
    for module in ("artcap.decoders.sat", "artcap.decoders.merge", "artcap.decoders.base"):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
