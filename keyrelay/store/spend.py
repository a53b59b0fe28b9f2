"""The spend ledger (``spend_periods``): each key's and group's spend per calendar period, only ever added to.

A charge is added to the row of the period its request was admitted in, created if new (an upsert, so
two gateway processes charging the same new period at once cannot collide). No statement ever sets or
restarts a period's figure, so a late usage record cannot rewrite a newer period and no stored counter
goes backwards. Readers want the current period; they get the latest stored period of each reset kind,
and :func:`keyrelay.limits.periods.stored_usage` tells whether it is the current one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from keyrelay.clock import ensure_utc
from keyrelay.limits.periods import counter_name
from keyrelay.store.driver_sql import DriverStatement, upsert_insert
from keyrelay.store.schema import spend_periods

_PK = ["scope", "ident", "reset", "period_start"]
_ADD = spend_periods.c.usage_micros  # the row's current figure, which the charge is added to


class PeriodCharge(NamedTuple):
    """Micro-dollars to add to one key's or group's spend in one period (a row of the ledger, in its columns' order).

    A tuple: ``add_charges`` hands it to the driver as it is, and a caller with many charges may pass plain tuples of
    the same five values.
    """

    scope: str  # "key" | "group"
    ident: str  # key hash | group id
    reset: str
    period_start: datetime
    cost_micros: int


_COLUMNS = ("scope", "ident", "reset", "period_start", "usage_micros")
_UPSERTS: dict[str, DriverStatement] = {}  # by dialect name, compiled on first use


def _upsert(dialect: Dialect) -> DriverStatement:
    """The ledger's upsert for ``dialect``: insert the period's row at the charge, or add the charge to it."""
    insert = upsert_insert(spend_periods, dialect)
    upsert = insert.on_conflict_do_update(
        index_elements=_PK, set_={"usage_micros": _ADD + insert.excluded.usage_micros}
    )
    statement = DriverStatement(upsert, dialect, columns=_COLUMNS)
    if statement.names != _COLUMNS:  # a PeriodCharge's values are in _COLUMNS' order
        raise NotImplementedError(f"unexpected parameters of the spend ledger upsert: {statement.names}")
    return statement


async def add_charges(conn: AsyncConnection, charges: Sequence[tuple[str, str, str, datetime, int]]) -> None:
    """Add each charge (a ``PeriodCharge`` or a tuple of its values) to its period's row (created at 0 if new).

    One driver-level ``executemany``.

    Callers pass at most one charge per row (the upsert cannot touch a row twice in one statement) and
    in a fixed order (sorted), so concurrent flushes of two processes lock rows in the same order.

    Raises:
        NotImplementedError: A database other than SQLite or PostgreSQL.
        sqlalchemy.exc.SQLAlchemyError: The store failed; nothing was added.
    """
    if not charges:
        return
    dialect = conn.dialect
    statement = _UPSERTS.get(dialect.name)
    if statement is None:
        statement = _UPSERTS[dialect.name] = _upsert(dialect)
    await statement.executemany(conn, statement.from_tuples(charges))


_NEWER = spend_periods.alias("newer")
_LATEST = (
    select(func.max(_NEWER.c.period_start))
    .where(
        _NEWER.c.scope == spend_periods.c.scope,
        _NEWER.c.ident == spend_periods.c.ident,
        _NEWER.c.reset == spend_periods.c.reset,
    )
    .scalar_subquery()
)
# One key's and one group's latest periods: a fixed statement (compiled once), the two idents bound.
_KEY_AND_GROUP = select(
    spend_periods.c.scope,
    spend_periods.c.reset,
    spend_periods.c.period_start,
    spend_periods.c.usage_micros,
).where(
    or_(
        and_(spend_periods.c.scope == "key", spend_periods.c.ident == bindparam("key")),
        and_(spend_periods.c.scope == "group", spend_periods.c.ident == bindparam("group")),
    ),
    spend_periods.c.period_start == _LATEST,
)


async def key_and_group_periods(
    conn: AsyncConnection, *, key_hash: str, group_id: int | None
) -> tuple[dict[str, int], dict[str, int]]:
    """``latest_periods`` of one key and of one group (None: none), in one query: ``(key's, group's)``."""
    group = None if group_id is None else str(group_id)
    out: dict[str, dict[str, int]] = {"key": {}, "group": {}}
    for row in (await conn.execute(_KEY_AND_GROUP, {"key": key_hash, "group": group})).all():
        out[row.scope][counter_name(row.reset, ensure_utc(row.period_start))] = int(row.usage_micros)
    return out["key"], out["group"]


async def latest_periods(conn: AsyncConnection, *, scope: str, idents: Sequence[str]) -> dict[str, dict[str, int]]:
    """The latest stored period of each reset kind, per ident: ``{ident: {counter name: micro-dollars}}``.

    Idents without any stored period are absent. One indexed query (the primary key serves the
    correlated ``max``).
    """
    if not idents:
        return {}
    stmt = select(
        spend_periods.c.ident, spend_periods.c.reset, spend_periods.c.period_start, spend_periods.c.usage_micros
    ).where(
        spend_periods.c.scope == scope,
        spend_periods.c.ident.in_(list(dict.fromkeys(idents))),
        spend_periods.c.period_start == _LATEST,
    )
    out: dict[str, dict[str, int]] = {}
    for row in (await conn.execute(stmt)).all():
        out.setdefault(row.ident, {})[counter_name(row.reset, ensure_utc(row.period_start))] = int(row.usage_micros)
    return out
