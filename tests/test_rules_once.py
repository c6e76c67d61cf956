"""Each rule that guards money is written once: a second copy of its condition, in Python or in
SQL text, is a place where the two can drift apart. The conditional UPDATEs of
``service.vouchers`` (``SPENDABLE``, ``within_cap``, ``used_up_unless``) and of
``service.applications`` (``PLACE_FOR_NEWCOMER``) are the copies that count; the driver's
statements are compiled from them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"

# In SQL text: the condition itself, not a CHECK constraint's ``>= 0``.
_SQL = {
    "voucher can give the amount": re.compile(r"balance_cents\s*>=\s*(?!0\b)[:$?\w]"),
    "within the provider's cap": re.compile(r"received_cents\s*\+\s*(\w+\.)?held_cents"),
    "used up once nothing is left": re.compile(r"THEN\s+'used_up'"),
    "a place is left": re.compile(r"places_used\s*<\s*(\w+\.)?max_places"),
}


_COLUMNS = re.compile(r"^(_[A-Z]+\.c|Voucher|Enrolment|Scheme)\.")
"""How a statement names a column (a table's ``c`` or a mapped class); a page comparing loaded
values only shows what the statement will decide."""


def _python_rules(node: ast.AST) -> list[str]:
    found = []
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and _COLUMNS.match(ast.unparse(node.left)):
        left, right = ast.unparse(node.left), node.comparators[0]
        if isinstance(node.ops[0], ast.GtE) and left.endswith("balance_cents") and not (
                isinstance(right, ast.Constant) and right.value == 0):
            found.append("voucher can give the amount")
        if isinstance(node.ops[0], ast.LtE) and "received_cents" in left and "held_cents" in left:
            found.append("within the provider's cap")
        if isinstance(node.ops[0], ast.Lt) and left.endswith("places_used"):
            found.append("a place is left")
    if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("case") and any(
            isinstance(arg, ast.Tuple) and len(arg.elts) == 2 and isinstance(arg.elts[1], ast.Constant)
            and arg.elts[1].value == "used_up" for arg in node.args):
        found.append("used up once nothing is left")
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            ids.add(id(first.value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # attribute docstrings
            ids.add(id(node.value))
    return ids


def test_each_money_rule_is_written_once() -> None:
    places: dict[str, list[str]] = {rule: [] for rule in _SQL}
    for path in sorted(SERVICE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            where = f"{path.relative_to(SERVICE.parent)}:{getattr(node, 'lineno', '?')}"
            for rule in _python_rules(node):
                places[rule].append(where)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                for rule, pattern in _SQL.items():
                    if pattern.search(node.value):
                        places[rule].append(where)
    twice = {rule: where for rule, where in places.items() if len(where) != 1}
    assert not twice, f"each rule once, found: {twice}"
