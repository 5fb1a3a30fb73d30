"""No function in artcap is longer than a screen (80 lines) unless the line above its `def` says why
(`# long: <reason>`): a long function is usually several jobs that want names of their own."""

from __future__ import annotations

import ast
from pathlib import Path

import artcap

PACKAGE_ROOT = Path(artcap.__file__).parent
LIMIT = 80


def long_functions(root: Path = PACKAGE_ROOT, limit: int = LIMIT) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - node.lineno + 1
            reason = lines[first - 2].strip() if first >= 2 else ""
            if length > limit and not reason.startswith("# long:"):
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_a_screen_without_a_stated_reason():
    assert long_functions() == []


def test_the_check_finds_a_long_function_and_honours_a_stated_reason(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "long.py").write_text(f"def sprawling():\n{body}\n", encoding="utf-8")
    (tmp_path / "reasoned.py").write_text(f"# long: one table of cases\ndef table():\n{body}\n", encoding="utf-8")
    assert long_functions(tmp_path) == [f"long.py:1 sprawling ({LIMIT + 1} lines)"]
