"""Input field types shared by every edge (management API, CLI, dashboard): strict, bounded, storable.

Every value a client sends is checked here before it reaches a store, so that a value the store cannot
hold is a 400 naming the field rather than a database error:

- JSON types are strict: ``"yes"`` is not a boolean, ``"5"`` is not a number, ``false`` is not an integer.
- Text holds no NUL character (PostgreSQL refuses it in ``text``/``varchar``: "invalid byte sequence for
  encoding UTF8: 0x00") and no unpaired surrogate (not encodable as UTF-8 by either driver).
- Timestamps are ISO 8601 text within the range every store and every UTC offset can represent.
- Integers that name rows fit the store's ``INTEGER`` columns.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from keyrelay.store.schema import INT32_MAX

# Python's datetime (and the text SQLite stores) holds years 1 to 9999; PostgreSQL's timestamptz holds
# more. One day of margin at each end lets any UTC offset (always under 24 h) show the instant too:
# 9999-12-31T23:59:59-14:00 is 10000-01-01T13:59:59Z, which no store here can hold.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
TIMESTAMP_EXAMPLE = "2030-01-31T12:00:00Z"
NO_NUL_PATTERN = "^[^\\u0000]*$"  # JSON Schema (ECMA 262) spelling of "no NUL character"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def check_text(value: str) -> str:
    """Refuse text a store cannot hold: a NUL character or an unpaired surrogate.

    Raises:
        ValueError: The text holds a NUL (PostgreSQL rejects it) or cannot be encoded as UTF-8.
    """
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds an unpaired surrogate)") from None
    return value


class _Storable:
    """Annotation marker: text the store can hold (see ``check_text``), declared in the JSON Schema too."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> CoreSchema:
        return core_schema.no_info_after_validator_function(check_text, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault("pattern", NO_NUL_PATTERN)
        return json_schema


Storable = _Storable()


def parse_timestamp(value: object) -> datetime:
    """An ISO 8601 date-time as timezone-aware UTC; a value without an offset is taken as UTC.

    Accepts ``datetime`` objects (CLI, tests) and ISO 8601 text (JSON, query strings); refuses numbers,
    which lax parsers read as Unix times (``?start=0.5``).

    Raises:
        ValueError: Not ISO 8601 text, or outside ``EARLIEST``..``LATEST`` once in UTC.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(check_text(value).strip())
        except ValueError:
            raise ValueError(f"must be an ISO 8601 date-time such as {TIMESTAMP_EXAMPLE}") from None
    else:
        raise ValueError(f"must be an ISO 8601 date-time string such as {TIMESTAMP_EXAMPLE}")
    try:
        utc = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise ValueError("must be between 0001-01-02T00:00:00Z and 9999-12-30T23:59:59Z")
    return utc


Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp)]


def json_number(value: object) -> object:
    """A JSON number (int or float) or a Decimal as a Decimal; anything else is left for the type to refuse.

    Floats go through their shortest repr, so ``0.1`` becomes ``Decimal("0.1")``, not the binary value.
    """
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Decimal):
        return value
    raise ValueError("must be a number")


class _NumberOnly:
    """Annotation marker: the JSON Schema of a Decimal read by ``json_number`` is a number, never a string.

    Put it (with ``BeforeValidator(json_number)``) after the ``Field`` constraints, so that they apply to
    the Decimal and are declared on the number.
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> CoreSchema:
        return handler(source)  # type: ignore[no-any-return]

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        branches = [b for b in json_schema.pop("anyOf", []) if b.get("type") != "string"]
        if len(branches) == 1:
            json_schema.update(branches[0])
        elif branches:
            json_schema["anyOf"] = branches
        return json_schema


NumberOnly = _NumberOnly()
_DIGITS = re.compile(r"^[0-9]+$")


def digits_only(value: object) -> object:
    """Refuse an integer written in a path or query string as anything but ASCII digits (``1.0``, `` 1``, ``+1``).

    Raises:
        ValueError: Text that is not plain ASCII digits.
    """
    if isinstance(value, str) and not _DIGITS.match(value):
        raise ValueError("must be a whole number written with the digits 0-9 only")
    return value


RowId = Annotated[int, BeforeValidator(digits_only), Field(ge=1, le=INT32_MAX)]
Count = Annotated[int, BeforeValidator(digits_only)]  # a query-string integer (bounds set where it is used)


def is_key_hash(value: str) -> bool:
    """Whether ``value`` has the shape of a stored key hash (64 lowercase hex digits)."""
    return _HEX64.match(value) is not None


class StrictInput(BaseModel):
    """Base of every request body: strict JSON types, no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")
