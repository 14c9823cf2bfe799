"""Functions short enough to read at once: none over 60 lines unless its docstring says why.

``pytest tests/test_code_shape.py -q`` lists any function that grew past the limit; the longest
ones are printed by ``python -m tests.test_code_shape`` (from the repository root).
"""

from __future__ import annotations

import ast
from pathlib import Path

import segdeploy

PACKAGE_ROOT = Path(segdeploy.__file__).parent
MAX_LINES = 60
#: The phrase a docstring uses to explain why a function is longer than :data:`MAX_LINES`.
REASON = "Longer than 60 lines because"


def function_lengths() -> list[tuple[int, str, str | None]]:
    """``(lines, "path:line name", docstring)`` of every function in the package, longest first."""
    found = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{path.relative_to(PACKAGE_ROOT.parent)}:{node.lineno} {node.name}"
                lines = node.end_lineno - node.lineno + 1
                found.append((lines, where, ast.get_docstring(node)))
    return sorted(found, reverse=True)


def test_no_function_is_longer_than_the_limit_without_a_reason():
    too_long = [
        f"{where} ({lines} lines)"
        for lines, where, doc in function_lengths()
        if lines > MAX_LINES and REASON not in (doc or "")
    ]
    assert not too_long, f"split these or say why in the docstring ('{REASON} ...'): {too_long}"


if __name__ == "__main__":
    for lines, where, _ in function_lengths()[:10]:
        print(f"{lines:4d}  {where}")
