"""The benchmarks and scripts import only what artcap still has: each `from artcap... import name` in
them (at the top or inside a function) names a module and an attribute that exist. They are not run by the
suite, so without this a moved function breaks them silently until someone reproduces a number."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted([*REPO.glob("benchmarks/*.py"), *REPO.glob("scripts/*.py")])


def missing_names(source: str) -> list[str]:
    """'module.name' for each name imported from an artcap module that the module does not have."""
    missing = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "artcap":
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{alias.name}" for alias in node.names
                        if not hasattr(module, alias.name) and importlib.util.find_spec(
                            f"{node.module}.{alias.name}") is None]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "artcap" and importlib.util.find_spec(alias.name) is None:
                    missing.append(alias.name)
    return missing


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_benchmark_or_script_imports_only_what_artcap_has(tool):
    assert missing_names(tool.read_text(encoding="utf-8")) == []


def test_a_name_artcap_no_longer_has_is_found():
    assert missing_names("from artcap.decoders import emotion_ids, DecoderConfig\nimport artcap.gone\n") == [
        "artcap.decoders.emotion_ids", "artcap.gone"]
