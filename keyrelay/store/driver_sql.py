"""Statements compiled once and run through the database driver's own executemany, with plain tuples.

SQLAlchemy's ``conn.execute(statement, [dict, ...])`` compiles nothing twice, but it still builds and processes each
row's parameters in Python: about 11 µs a row on the event loop (measured for the usage records' insert), so a flush
of 500 rows of distinct keys stalled the loop for several milliseconds. A ``DriverStatement`` does that work once:
the SQL text and the order of its parameters come from SQLAlchemy's compiler for the engine's dialect, and the
only per-row work left is the bind processing of the types that have one (SQLite's DATETIME, which stores text, and
BOOLEAN), applied to those positions only: SQLAlchemy's own processors, except that timestamps are converted to UTC
first and, on SQLite, printed by ``_sqlite_datetime`` (the same text as SQLAlchemy's, without its per-value dict).
Rows then go to ``exec_driver_sql`` as tuples.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import DateTime, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Row = tuple[Any, ...]


def _in_utc(process: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """A timestamp's processor that first converts an aware value to UTC.

    The store holds UTC; SQLite's DATETIME processor would otherwise keep the wall time and drop the offset.
    """

    def in_utc(value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value if process is None else process(value)

    return in_utc


_SQLITE_STAMP = "%04d-%02d-%02d %02d:%02d:%02d.%06d"
# Values the fast SQLite timestamp must print as SQLAlchemy does before it is used (see _sqlite_datetime).
# Naive ones included: the library prints those too (as their wall time).
_PROBES = (
    datetime(1, 1, 1),  # noqa: DTZ001 - naive on purpose
    datetime(999, 12, 31, 23, 59, 59, 999999),  # noqa: DTZ001 - naive on purpose
    datetime(2026, 12, 6, 23, 0, 0),  # noqa: DTZ001 - naive on purpose
    datetime(2026, 6, 1, 12, 30, 45, 123456, tzinfo=UTC),
    datetime(2026, 6, 1, 1, 30, 45, 1, tzinfo=timezone(timedelta(hours=2))),  # the day before, in UTC
    datetime(2026, 12, 31, 23, 0, tzinfo=timezone(-timedelta(hours=5))),  # the year after, in UTC
    datetime(9999, 12, 31, 23, 59, 59, 999999),  # noqa: DTZ001 - naive on purpose
)


def _sqlite_datetime(library: Callable[[Any], Any]) -> Callable[[Any], Any] | None:
    """A timestamp's processor for SQLite that prints what ``library`` (SQLAlchemy's, after ``_in_utc``) prints.

    SQLAlchemy's SQLite DATETIME formats its storage format (``%(year)04d-%(month)02d-%(day)02d %(hour)02d:``
    ``%(minute)02d:%(second)02d.%(microsecond)06d``) with a dict of the fields, after ``_in_utc`` converted the value:
    1.5–2 µs a value on the benchmark machine, and a flush of records of distinct keys binds three a record (the
    record's time, its key's last use, its key's spend period). The same format with a tuple, and no conversion of a
    value already in UTC (the clock's), takes about half of that. Anything but a plain ``datetime`` (None, a
    subclass, a date) goes to ``library``. None when the two disagree on a probe, or the library fails on one
    (another storage format, a change in SQLAlchemy): then ``library`` is used.
    """

    def process(value: Any) -> Any:
        if type(value) is datetime:
            if value.tzinfo is not None and value.tzinfo is not UTC:
                value = value.astimezone(UTC)
            return _SQLITE_STAMP % (
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minute,
                value.second,
                value.microsecond,
            )
        return library(value)

    try:
        agree = all(process(probe) == library(probe) for probe in _PROBES)
    except Exception:  # whatever a changed library raises, its own processor is the one to use
        return None
    return process if agree else None


def upsert_insert(table: Table, dialect: Dialect) -> sqlite.Insert | postgresql.Insert:
    """An INSERT into ``table`` that takes ``on_conflict_do_update`` (``INSERT ... ON CONFLICT``) for ``dialect``.

    Raises:
        NotImplementedError: A database other than SQLite or PostgreSQL (the engine accepts only these two).
    """
    if dialect.name == "sqlite":
        return sqlite.insert(table)
    if dialect.name == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"no INSERT ... ON CONFLICT for {dialect.name}")


_NOTHING = object()  # no value yet (see DriverStatement.from_tuples)


class DriverStatement:
    """``statement`` compiled for ``dialect``: its SQL text (``sql``) and its parameters' names in order (``names``).

    ``columns``: for an INSERT, the columns given per row (SQLAlchemy's ``column_keys``; each becomes a parameter
    named after its column). A name may come twice in ``names`` (SQLite's positional style repeats a parameter used
    twice); ``from_mappings`` fills every position. A value given in consecutive rows as the same object is processed
    once (``from_tuples``): a caller does not change a value in place between the rows of one call.
    """

    def __init__(self, statement: ClauseElement, dialect: Dialect, *, columns: Sequence[str] | None = None) -> None:
        """Compile ``statement`` once.

        Raises:
            ValueError: The dialect's parameter style is not positional (SQLite's qmark and asyncpg's
                numeric_dollar are), or the statement has no parameters.
        """
        compiled = statement.compile(dialect=dialect, column_keys=list(columns) if columns is not None else None)
        if not isinstance(compiled, SQLCompiler) or not compiled.positiontup:
            raise ValueError(f"a DriverStatement needs a positional parameter style (not {dialect.paramstyle})")
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup)
        self._pick: Callable[[Mapping[str, Any]], Any] = operator.itemgetter(*self.names)
        processors: list[tuple[int, Callable[[Any], Any]]] = []
        first: dict[str, int] = {}  # the first position of each name that has a processor
        copies: list[tuple[int, int]] = []  # (position, earlier position of the same name): processed once, copied
        for position, name in enumerate(self.names):
            if name in first:
                copies.append((position, first[name]))
                continue
            kind = compiled.binds[name].type
            process: Callable[[Any], Any] | None = kind.dialect_impl(dialect).bind_processor(dialect)
            if isinstance(kind, DateTime):
                process = _in_utc(process)
                if dialect.name == "sqlite":
                    process = _sqlite_datetime(process) or process
            if process is not None:
                first[name] = position
                processors.append((position, process))
        self._processors = processors
        self._copies = copies

    def from_tuples(self, rows: Iterable[Row]) -> list[Row]:
        """The driver's parameters of ``rows``, each a tuple of values in the order of ``names``.

        A name that comes twice (SQLite's positional style repeats a parameter used twice) is processed at its first
        position and copied to the others. A value that is the very object the previous row had at its position is
        given that row's processed value rather than processed again (processors are pure, their values immutable).
        """
        if not self._processors:
            return rows if isinstance(rows, list) else list(rows)
        out: list[Row] = []
        copies = self._copies
        processors = self._processors
        # Each position's last value and what it became: a value that is the previous row's (the same object: a
        # spend period's start shared by every key of the period, None, a boolean) is not processed again. An identity
        # test, not equality: a dict of recent values cost one key's records more than it saved (benchmarks.md,
        # "2026-12-07, night").
        last_in: list[Any] = [_NOTHING] * len(processors)
        last_out: list[Any] = [None] * len(processors)
        for row in rows:
            values = list(row)
            for slot, (position, process) in enumerate(processors):
                value = values[position]
                if value is last_in[slot]:
                    values[position] = last_out[slot]
                else:
                    last_in[slot] = value
                    values[position] = last_out[slot] = process(value)
            for position, source in copies:
                values[position] = values[source]
            out.append(tuple(values))
        return out

    def from_mappings(self, rows: Iterable[Mapping[str, Any]]) -> list[Row]:
        """The driver's parameters of ``rows``, each a mapping of parameter name to value."""
        pick = self._pick
        if len(self.names) == 1:
            return self.from_tuples((pick(row),) for row in rows)
        return self.from_tuples(pick(row) for row in rows)

    async def executemany(self, conn: AsyncConnection, rows: list[Row]) -> None:
        """Run the statement once per row of driver parameters (``from_tuples``/``from_mappings``), in one call.

        Raises:
            sqlalchemy.exc.DBAPIError: The database refused a row (wrapped as SQLAlchemy wraps the driver's errors).
        """
        if rows:
            await conn.exec_driver_sql(self.sql, rows)
