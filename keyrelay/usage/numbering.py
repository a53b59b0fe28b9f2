"""Key numbers for the usage records written without one: by a process of an earlier release, in a rolling upgrade.

Migration 0013 gives every stored record its key's number (``usage_records.key_id``), and this release's usage writer
gives each new record its number as it inserts it. A process still on the earlier release (a rolling upgrade of
several processes or machines on one database) inserts records without it, and the usage API finds a key's records
by number only: such records would be missing from their key's log and totals. So every process numbers them, at
start-up and then once a minute, in batches of at most ``batch`` records in id order, each batch its own short
transaction. They are found through the index by key number, ``(key_id, created_at, id)``, where the records
without one sort together: once no earlier release writes, a sweep reads one index page. A record of a hash that no
key has keeps no number (it matches no key anyway).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from keyrelay.store.schema import keys, usage_records
from keyrelay.tasks import finish_then_cancel

log = logging.getLogger("keyrelay.usage")
NUMBERING_INTERVAL_S = 60.0


class Numbering:
    """Gives the usage records without a key number their key's (``keys.id``)."""

    def __init__(self, engine: AsyncEngine, *, batch: int = 5000) -> None:
        self._engine = engine
        self._batch = batch

    async def _number(self, after: int) -> tuple[int, int]:
        """Number the next batch of records without a number, of ids above ``after``: ``(last id seen, numbered)``.

        The last id is ``after`` when there were none left.
        """
        c = usage_records.c
        async with self._engine.begin() as conn:
            next_ids = select(c.id).where(c.key_id.is_(None), c.id > after).order_by(c.id).limit(self._batch)
            ids = list((await conn.execute(next_ids)).scalars().all())
            if not ids:
                return after, 0
            numbered = await conn.execute(
                update(usage_records)
                .where(c.id.in_(ids), c.key_id.is_(None), c.key_hash == keys.c.hash)
                .values(key_id=keys.c.id)
            )
            return ids[-1], numbered.rowcount or 0

    async def sweep(self) -> int:
        """Number every record without a key number whose key exists, batch by batch; returns how many.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: The store failed; the batches before stay numbered.
        """
        after, total = 0, 0
        while True:
            # A shutdown waits for the batch's commit.
            last, numbered = await finish_then_cancel(self._number(after))
            total += numbered
            if last == after:
                break
            after = last
            await asyncio.sleep(0)  # let requests and the usage writers run between batches
        if total:
            log.info("gave %d usage record(s) written without one their key's number (an earlier release's)", total)
        return total
