"""No function over 60 lines in the hot path (a turn, an activity, a turn's commit): each step of the path reads
on one screen. Checked by reading the source with `ast` (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "duroxide_celery"
MAX_LINES = 60
#: The modules a turn or an activity runs through, from the Celery task to the store's statements.
HOT_PATH = (
    "tasks/turn.py",
    "tasks/turn_changes.py",
    "tasks/activity.py",
    "providers/turns.py",
    "providers/turn_shapes.py",
    "providers/commit.py",
    "providers/activities.py",
    "providers/dialect.py",
    "providers/base.py",
)


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function or method longer than `limit` lines, decorators included."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    lines = (child.end_lineno or child.lineno) - first + 1
                    if lines > limit:
                        found.append((name, lines))
                visit(child, f"{name}.")

    visit(ast.parse(source), "")
    return found


def test_the_checker_finds_a_long_function_and_a_long_method():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    source = f"def long():\n{body}\n\nclass C:\n    def m(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n"
    assert long_functions(source) == [("long", MAX_LINES + 1), ("C.m", MAX_LINES + 1)]
    assert long_functions("def short():\n    return 1\n") == []


def test_no_function_in_the_hot_path_is_longer_than_60_lines():
    too_long = {
        f"{module}:{name}": lines
        for module in HOT_PATH
        for name, lines in long_functions((PACKAGE_DIR / module).read_text())
    }
    assert too_long == {}, f"split these functions (at most {MAX_LINES} lines each): {too_long}"
