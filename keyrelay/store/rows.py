"""Row → record conversion shared by the repositories (UTC re-attachment, JSON lists to tuples).

The key cache holds up to ``KEYRELAY_KEY_CACHE_SIZE`` records, so a record holds no more objects than it must:
a column of few values (key type, reset kind, status, region) and the entries of JSON lists (models, providers,
CIDRs) are one shared string per value, and equal timestamps of one row (``created_at`` and ``updated_at`` of a
row never updated) are one object.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeVar

from keyrelay.clock import ensure_utc

T = TypeVar("T")

# Columns that hold one of a few words: interned, one string object per word however many rows hold it.
_WORDS = frozenset({"key_type", "limit_reset", "status", "quota_reset", "default_limit_reset", "region"})

# The period spend of a key or group with none stored: one read-only empty mapping for all of them.
NO_PERIOD_USAGE: Mapping[str, int] = MappingProxyType({})


def to_record(cls: type[T], row: Mapping[Any, Any], **extra: Any) -> T:
    """Build a record dataclass from a row mapping with the same column names; ``extra`` fills the others."""
    values: dict[str, Any] = {}
    stamps: dict[datetime, datetime] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in extra:
            values[f.name] = extra[f.name]
            continue
        value = row[f.name]
        if isinstance(value, datetime):
            value = stamps.setdefault(value, ensure_utc(value))
        elif isinstance(value, list):
            value = tuple(sys.intern(v) if isinstance(v, str) else v for v in value)
        elif isinstance(value, str) and f.name in _WORDS:
            value = sys.intern(value)
        values[f.name] = value
    return cls(**values)
