"""Case-insensitive text conditions for queries: equality (emails) and substring search (names, emails).

Both sides are folded by the database's own ``lower()``, never one in Python and the other in SQL: SQLite's
``lower()`` folds ASCII letters only and Python's every letter, so ``lower(email) = 'ä@x'`` with the right side
folded in Python misses ``Ä@x`` on SQLite. Equality is written ``lower(column) = lower(:text)`` so that it
uses the unique index on ``lower(email)`` (migration 0010).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, literal

_LIKE_ESCAPE = "\\"


def equals_folded(column: ColumnElement[Any], text: str) -> ColumnElement[bool]:
    """``lower(column) = lower(text)``."""
    return func.lower(column) == func.lower(literal(text))


def contains_folded(column: ColumnElement[Any], text: str) -> ColumnElement[bool]:
    """``lower(column) LIKE lower('%text%')`` with ``%``, ``_`` and backslash in ``text`` taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(column).like(func.lower(literal(f"%{escaped}%")), escape=_LIKE_ESCAPE)
