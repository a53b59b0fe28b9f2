"""Row → record conversion shared by the repositories (UTC re-attachment, JSON lists to tuples)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime
from typing import Any, TypeVar

from keyrelay.clock import ensure_utc

T = TypeVar("T")


def to_record(cls: type[T], row: Mapping[Any, Any], **extra: Any) -> T:
    """Build a record dataclass from a row mapping with the same column names; ``extra`` fills the others."""
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in extra:
            values[f.name] = extra[f.name]
            continue
        value = row[f.name]
        if isinstance(value, datetime):
            value = ensure_utc(value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)
