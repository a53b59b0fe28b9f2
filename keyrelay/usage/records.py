"""The usage record: one request's accounting line, as the store, the journal, the Redis stream and the writer know it.

Its JSON form (``record_to_json``) is the line format of the usage journal (``usage/journal.py``) and the entry of
the Redis usage stream (``usage/stream.py``).

Format version 1 (``FORMAT_VERSION``): one JSON object of the record's fields but ``key_id`` (the key's number, known
to the process that made the record: a record decoded from its JSON form has None unless the object names it);
``"v"``, when present, names the format (absent: 1). Several versions of keyrelay run side by side during a rolling
upgrade (the stream is shared) and after a rollback (a journal outlives its process), so a reader tells a record it
cannot read because a newer keyrelay wrote it (``NewerRecord``: a ``"v"`` above its own, or every field it needs
plus fields it does not know) from one that is broken (a torn journal line, another program's entry). The first is
left for a newer reader, never rejected or dropped. A later format that only adds fields (with defaults, as the
ones since added here have) needs no new number: older readers leave its records alone, newer ones read older
records by name. Any other change (a field renamed, removed or given another meaning) must set ``"v"`` above 1.
Releases before this rule set such records aside (the stream's rejected entries) or skipped them (a journal): a
rolling upgrade from one of them goes through a release with this rule first.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import MISSING, dataclass, fields
from datetime import datetime
from typing import Any

import orjson

from keyrelay.limits.periods import SpendPeriod


@dataclass(slots=True)
class UsageRecord:
    """One request's accounting line.

    ``created_at`` is the admission time, and ``key_period`` / ``group_period`` are the spend periods the
    request was admitted in (None for a key or group whose spend never resets): the ones its reservation
    was held against, and the only ones its cost is added to.
    """

    request_id: str
    created_at: datetime
    key_hash: str
    key_name: str
    account_id: int
    key_period: SpendPeriod | None
    group_id: int | None
    group_period: SpendPeriod | None
    model: str | None
    provider: str | None
    streamed: bool
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    usage_estimated: bool
    status: int
    error_type: str | None
    latency_ms: int | None
    ttft_ms: int | None
    client_ip: str | None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    protocol: str = "openai"
    upstream_kind: str | None = None
    attempts: str | None = None  # JSON list of the upstream attempts, when one failed (None: one that succeeded)
    # The key's number (``keys.id``) when the process that made the record knew it (its key cache does): the writer
    # then stores and charges the key by it, without a look-up of the number by hash. Not written in the JSON form: a
    # record decoded from it (a journal's replay, a Redis stream entry another process settled) has None, and the
    # writer looks its number up; the records this process sent to the stream come back as the objects it sent.
    key_id: int | None = None


_LOCAL = frozenset({"key_id"})  # fields not written in the JSON form (read if an object names them)
_FIELDS = tuple(field.name for field in fields(UsageRecord) if field.name not in _LOCAL)  # the JSON form's, in order
_VALUES = operator.attrgetter(*_FIELDS)
_KNOWN = frozenset(_FIELDS) | _LOCAL
# The fields without a default: a record that has them all, and others this version does not know, is a newer one.
_REQUIRED = frozenset(
    f.name
    for f in fields(UsageRecord)
    if f.default is MISSING and f.default_factory is MISSING and f.name not in _LOCAL
)
FORMAT_VERSION = 1  # the record format this version writes and reads (see the module doc)


class NewerRecord(ValueError):
    """A record written by a newer keyrelay, in a format this version cannot read: leave it for a newer reader."""


@functools.lru_cache(maxsize=64)
def _period_json(period: SpendPeriod) -> orjson.Fragment:
    # A period is one shared object for a whole day of records (limits/periods.py): serialised once.
    return orjson.Fragment(orjson.dumps(period))


def record_to_json(record: UsageRecord, *, newline: bool = False) -> bytes:
    """The record as one JSON object (datetimes in RFC 3339, periods as ``{"reset", "start"}``), LF-ended if asked.

    The bytes of ``orjson.dumps(record)`` without the fields of this process alone (``key_id``), in about half its
    time: orjson serialises a slotted dataclass field by field through Python attribute lookups, the two nested
    periods included; a dict of the same fields, in the same order, with the periods as prebuilt fragments, gives
    the same bytes.
    """
    values = dict(zip(_FIELDS, _VALUES(record), strict=True))
    if record.key_period is not None:
        values["key_period"] = _period_json(record.key_period)
    if record.group_period is not None:
        values["group_period"] = _period_json(record.group_period)
    return orjson.dumps(values, option=orjson.OPT_APPEND_NEWLINE if newline else 0)


@functools.lru_cache(maxsize=64)
def _period_of(reset: str, start: str) -> SpendPeriod:
    # Every record of a day names the same few periods: one shared (frozen) object each, parsed once.
    return SpendPeriod(reset=reset, start=datetime.fromisoformat(start))


def _period(value: Any) -> SpendPeriod | None:
    if value is None:
        return None
    return _period_of(value["reset"], value["start"])


class SentRecords:
    """Records this process serialised and sent away recently (to the Redis usage stream), by their JSON form.

    The process that drains the stream is most often the one that settled its records: reading such an entry back is
    then a lookup of its exact bytes, not a decode (6 µs a record). Bounded: entries drained by another process
    are dropped, the oldest first, once ``size`` are held.
    """

    def __init__(self, size: int = 16_384) -> None:
        """An empty map of at most ``size`` records."""
        self._size = size
        self._by_line: dict[bytes, UsageRecord] = {}

    def add(self, line: bytes, record: UsageRecord) -> None:
        """Remember that ``line`` is ``record_to_json(record)``."""
        by_line = self._by_line
        if len(by_line) >= self._size:
            del by_line[next(iter(by_line))]
        by_line[line] = record

    def read(self, line: bytes) -> UsageRecord:
        """The record of ``line``: the one sent as exactly these bytes (forgotten now), else ``record_from_json``.

        Raises:
            ValueError: ``line`` is not a record (see ``record_from_json``).
        """
        record = self._by_line.pop(line, None)
        return record if record is not None else record_from_json(line)

    def __len__(self) -> int:
        return len(self._by_line)


def record_from_json(data: bytes) -> UsageRecord:
    """A record from its JSON form (the inverse of ``record_to_json``).

    A record written by ``record_to_json`` names every field in the dataclass's order and is built from its
    values by position: by keyword, CPython matches each of the 26 names against the parameters one by one (the
    decoded names are not the interned parameter names), which took 5 of this function's 11 µs. Any other
    object with the same fields (another order, defaults left out) is still read by keyword.

    Raises:
        NewerRecord: A newer keyrelay's record (a format version above ``FORMAT_VERSION``, or fields unknown here
            beside every field this version needs; see the module doc).
        ValueError: ``data`` is not a whole record (a torn journal line, another program's).
    """
    fields = orjson.loads(data)
    if not isinstance(fields, dict):
        raise ValueError("not a record")
    if fields.keys() - _KNOWN:
        _check_newer(fields)
    try:
        fields["created_at"] = datetime.fromisoformat(fields["created_at"])
        fields["key_period"] = _period(fields["key_period"])
        fields["group_period"] = _period(fields["group_period"])
        if tuple(fields) == _FIELDS:
            return UsageRecord(*fields.values())
        return UsageRecord(**fields)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a record: {exc}") from exc


def _check_newer(fields: dict[str, Any]) -> None:
    """Raise ``NewerRecord`` if ``fields`` (an object with names this version does not know) is a newer record.

    Otherwise return, and the caller's reading of the fields finds the object is no record (a ``ValueError``);
    ``"v"``, once read, is taken out of ``fields``.
    """
    version = fields.pop("v", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"not a record: format version {version!r}")
    if version > FORMAT_VERSION:
        raise NewerRecord(f"a record of format {version}, newer than this keyrelay's {FORMAT_VERSION}")
    unknown = sorted(fields.keys() - _KNOWN)
    if unknown and fields.keys() >= _REQUIRED:
        raise NewerRecord(f"a newer keyrelay's record: fields {', '.join(unknown)} unknown to this version")
