"""Usage record retention: records older than ``KEYRELAY_USAGE_RETENTION_DAYS`` are deleted, in small batches.

Each batch is its own short transaction deleting at most ``batch`` of the oldest expired records, found
through the ``(created_at, id)`` index, and the sweep yields to the event loop between batches. A batch
locks only the old rows it deletes (PostgreSQL), or holds SQLite's write lock for the milliseconds of one
batch, so the usage writers, which insert new rows, are never held up for longer than that.

Only the records go: the totals they were charged into (a key's and group's ``usage_micros``, an account's
``spent_micros``, the spend ledger's periods) stay, so spend limits and balances do not change; usage
queries over a deleted range answer as if nothing happened then. Every process sweeps once an hour; sweeps of
several processes at once delete disjoint or already deleted rows, so they only share the work.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import Delete, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from keyrelay.clock import Clock
from keyrelay.store.schema import usage_records
from keyrelay.tasks import finish_then_cancel

log = logging.getLogger("keyrelay.usage")
SWEEP_INTERVAL_S = 3600.0


class Retention:
    """Deletes usage records older than a number of days (UTC, from the injected clock)."""

    def __init__(self, engine: AsyncEngine, clock: Clock, *, days: int, batch: int = 5000) -> None:
        self._engine = engine
        self._clock = clock
        self._age = timedelta(days=days)
        self._batch = batch

    async def _delete(self, statement: Delete) -> int:
        async with self._engine.begin() as conn:
            return (await conn.execute(statement)).rowcount or 0

    async def sweep(self) -> int:
        """Delete every record created more than ``days`` ago, batch by batch; returns how many.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: The store failed; the batches before stay deleted.
        """
        cutoff = self._clock.now_utc() - self._age
        oldest = (
            select(usage_records.c.id)
            .where(usage_records.c.created_at < cutoff)
            .order_by(usage_records.c.created_at, usage_records.c.id)
            .limit(self._batch)
        )
        statement = delete(usage_records).where(usage_records.c.id.in_(oldest.scalar_subquery()))
        deleted = 0
        while True:
            count = await finish_then_cancel(self._delete(statement))  # a shutdown waits for the batch's commit
            deleted += count
            if count < self._batch:
                break
            await asyncio.sleep(0)  # let requests and the usage writers run between batches
        if deleted:
            log.info("deleted %d usage record(s) created before %s (retention)", deleted, cutoff.isoformat())
        return deleted
