"""Usage records: an in-memory queue flushed to the store, one transaction per flush.

Each flush, in one transaction (of up to ``max_batch`` records, 5,000 by default), inserts the records, adds their
cost to each key's lifetime usage (its ``key_usage`` row) and each group's and to each account's ``spent_micros``,
adds it to the spend of the key's and group's period of ADMISSION in the spend ledger (whenever the record is written:
a request admitted at 23:59:59 and finished after midnight is the old day's, as its reservation was), and writes
coalesced last uses (``key_usage.last_used_*``). ``close()`` flushes whatever is left, so a clean stop (SIGTERM) loses
nothing. While records wait, ``pending`` tells the limits backends what the store does not show yet, per spend
counter.

With a journal (``usage/journal.py``), each record is appended to it when queued, so that a process killed
before a flush loses nothing either: the next process to start replays it (``replay``). A record is
recognised by its request id, so no replay charges twice.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Iterator
from datetime import datetime
from typing import TypeVar

from sqlalchemy import BigInteger, ColumnElement, bindparam, case, func, select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyrelay.store.driver_sql import DriverStatement, upsert_insert
from keyrelay.store.schema import accounts, groups, key_usage, keys, usage_records
from keyrelay.store.spend import add_charges
from keyrelay.tasks import finish_then_cancel
from keyrelay.usage.journal import UsageJournal
from keyrelay.usage.records import SentRecords, UsageRecord

log = logging.getLogger("keyrelay.usage")
T = TypeVar("T")


# A spend counter as the limits backends name it: (scope, ident, counter), counter "life" or "daily:2026-11-23".
SpendCounter = tuple[str, str, str]

# A key's number: the one its record or its use carries (b_key_id, from the key cache), else looked up by its hash (a
# record decoded from its JSON form: a journal's replay, a Redis stream entry another process settled). COALESCE
# evaluates the look-up only when the first is NULL (SQLite and PostgreSQL both stop at the first non-NULL argument):
# with keys in rotation, each look-up by hash read a page of the hash index and one of the wide key rows that no other
# key of the flush shared.
_KEYS_BY_HASH = keys.alias("by_hash")


def _key_number(number: str, key_hash: str) -> ColumnElement[int]:
    """``COALESCE(:number, (SELECT id FROM keys WHERE hash = :key_hash))``, of the two parameters named."""
    lookup = select(_KEYS_BY_HASH.c.id).where(_KEYS_BY_HASH.c.hash == bindparam(key_hash)).scalar_subquery()
    return func.coalesce(bindparam(number, type_=BigInteger), lookup)


# A key's charge and last use in one statement, into its ``key_usage`` row (migration 0014) by its number: the row is
# created at the first charge (an upsert, so two processes charging a new key at once cannot collide) and added to
# after. A flush upserts each key once, in the sorted order of its keys' hashes (see _insert_and_charge). b_used_at
# NULL: the row's last use stays as it is. A key the store does not hold selects no row: nothing is charged (as the
# key row's UPDATE did before). The key's row is found by number in ``ux_keys_id`` (SQLite reads the index alone).
_KEY_USAGE_ROW = select(
    keys.c.id,
    bindparam("b_cost", type_=key_usage.c.usage_micros.type),
    bindparam("b_used_at", type_=key_usage.c.last_used_at.type),
    bindparam("b_ip", type_=key_usage.c.last_used_ip.type),
).where(keys.c.id == _key_number("b_key_id", "b_ident"))


def _charge_key(dialect: Dialect) -> DriverStatement:
    """The key charge's upsert for ``dialect`` (parameters b_cost, b_used_at, b_ip, b_key_id, b_ident).

    Raises:
        NotImplementedError: A database other than SQLite or PostgreSQL.
    """
    insert = upsert_insert(key_usage, dialect)
    new = insert.excluded
    upsert = insert.from_select([c.name for c in key_usage.c], _KEY_USAGE_ROW).on_conflict_do_update(
        index_elements=[key_usage.c.key_id],
        set_={
            "usage_micros": key_usage.c.usage_micros + new.usage_micros,
            "last_used_at": func.coalesce(new.last_used_at, key_usage.c.last_used_at),
            "last_used_ip": case((new.last_used_at.is_(None), key_usage.c.last_used_ip), else_=new.last_used_ip),
        },
    )
    statement = DriverStatement(upsert, dialect)
    if statement.names != _KEY_CHARGE_PARAMETERS:  # _insert_and_charge gives a key's values in this order
        raise NotImplementedError(f"unexpected parameters of the key charge: {statement.names}")
    return statement


_KEY_CHARGE_PARAMETERS = ("b_cost", "b_used_at", "b_ip", "b_key_id", "b_ident")
_CHARGE_GROUP = (
    groups.update()
    .where(groups.c.id == bindparam("b_ident"))
    .values(usage_micros=groups.c.usage_micros + bindparam("b_cost"))
)
# spent_micros only: the credit (balance_micros) is the administrator's, never rewritten here.
_CHARGE_ACCOUNT = (
    accounts.update()
    .where(accounts.c.id == bindparam("b_ident"))
    .values(spent_micros=accounts.c.spent_micros + bindparam("b_cost"))
)


# A record's key number (``keys.id``, migration 0013): the one the record carries, else looked up by the insert
# itself from the record's key hash (a record decoded from its JSON form, which does not carry it). The index
# of records by key holds this 8-byte number, given in creation order, rather than the 64-character hash: a flush of
# records of distinct keys wrote a page of that index per record wherever its hash fell (docs/benchmarks.md,
# "2026-12-07, key numbers").
_INSERT = usage_records.insert().values(key_id=_key_number("b_key_id", "b_key_hash"))
_COLUMNS = tuple(c.name for c in usage_records.c if c.name not in ("id", "key_id"))  # UsageRecord fields
_FIELD_OF = {"b_key_hash": "key_hash", "b_key_id": "key_id"}  # the insert's parameters not named after their field

# Rows per driver call within a flush's transaction: the event loop runs other requests between two calls, so the
# Python work it waits for at a time (parameters of this many rows: ~2.6 µs a record of one key, up to ~8 µs of
# distinct keys, measured) stays 1–4 ms, however many records the transaction holds.
CHUNK = 500


def slices(items: list[T], size: int) -> Iterator[list[T]]:
    """``items`` in consecutive slices of ``size`` (the last may be shorter), in order."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def counters_of(record: UsageRecord) -> list[SpendCounter]:
    """Every spend counter a record's cost adds to: lifetime of key, account and group, and their periods."""
    out: list[SpendCounter] = [("key", record.key_hash, "life"), ("account", str(record.account_id), "life")]
    if record.key_period is not None:
        out.append(("key", record.key_hash, record.key_period.counter))
    if record.group_id is not None:
        group = str(record.group_id)
        out.append(("group", group, "life"))
        if record.group_period is not None:
            out.append(("group", group, record.group_period.counter))
    return out


class LastUses:
    """Each key's latest use (time, client IP) since the last flush, by key hash, and the key's number where known.

    Dictionaries rather than one of tuples: a tuple is a container object the garbage collector tracks, and with
    many distinct keys one a key would wait for the next flush (see ``keyrelay/app.py``'s young threshold).
    """

    __slots__ = ("at", "ids", "ip")

    def __init__(self) -> None:
        self.at: dict[str, datetime] = {}
        self.ip: dict[str, str | None] = {}
        self.ids: dict[str, int] = {}  # the key's number (keys.id), for the keys whose user knew it

    def __bool__(self) -> bool:
        return bool(self.at)

    def note(self, key_hash: str, when: datetime, ip: str | None, key_id: int | None = None) -> None:
        """``key_hash`` (number ``key_id``, None: unknown) was used at ``when`` (UTC) from ``ip``: the latest wins."""
        self.at[key_hash] = when
        self.ip[key_hash] = ip
        if key_id is not None:
            self.ids[key_hash] = key_id

    def keep_older(self, older: LastUses) -> None:
        """Add the uses of ``older`` (an earlier, unwritten set) for the keys not used since."""
        for key_hash, when in older.at.items():
            if key_hash not in self.at:
                self.note(key_hash, when, older.ip[key_hash], older.ids.get(key_hash))


class UsageWriter:
    """Batches usage records and charges keys and accounts."""

    def __init__(
        self, engine: AsyncEngine, *, max_batch: int = 5000, chunk: int = CHUNK, journal: UsageJournal | None = None
    ) -> None:
        """A writer to ``engine``; ``journal``: append each record there first (``usage/journal.py``).

        ``max_batch``: the most records one transaction writes. One flush is one transaction up to it: a small
        transaction costs more per record than a large one (measured, docs/benchmarks.md "2026-12-07": flushes of
        3,500 records in 500-record transactions cost 1.1–1.3× the CPU per record of one transaction for one key's
        records, 1.33–1.36× for distinct keys', whose rows share pages more often in a larger one), while the event
        loop never waits for more than ``chunk`` rows of Python work at a time (``CHUNK`` unless a test asks for
        less).
        """
        self._engine = engine
        self._journal = journal
        self._queue: list[UsageRecord] = []
        self._segments: list[int] = []  # the journal segment of each queued record (0 without a journal)
        self._max_batch = max_batch
        self._chunk = chunk
        self._lock = asyncio.Lock()
        self._pending: dict[SpendCounter, int] = {}
        self._last_used = LastUses()
        # The records this process's settlements put in the Redis usage stream, for its drain (usage/stream.py).
        self.sent = SentRecords()
        # Every statement of a flush compiled once and run by the driver with plain tuples (store/driver_sql.py):
        # SQLAlchemy's per-row parameter processing cost ~11 µs a row on the event loop (measured), a 20 ms stall
        # per 2000 records, and a flush of records of distinct keys has as many key and spend-ledger rows.
        dialect = engine.dialect
        self._insert = DriverStatement(_INSERT, dialect, columns=_COLUMNS)
        # A record's parameters, in the statement's order.
        self._row = operator.attrgetter(*(_FIELD_OF.get(name, name) for name in self._insert.names))
        self._charge_key = _charge_key(dialect)
        self._charge_group = DriverStatement(_CHARGE_GROUP, dialect)
        self._charge_account = DriverStatement(_CHARGE_ACCOUNT, dialect)

    def enqueue(self, record: UsageRecord) -> None:
        """Queue a record; its cost counts as pending on each of its counters until flushed.

        With a journal, the record is appended to it first (written at the end of this tick, with the tick's other
        records): call this, then await ``journaled``, before the response's last bytes are sent, so that a
        response the client saw complete always has its record.
        """
        self._segments.append(self._journal.append(record) if self._journal is not None else 0)
        self._queue.append(record)
        cost = record.cost_micros
        if cost:
            pending = self._pending
            for counter in counters_of(record):
                pending[counter] = pending.get(counter, 0) + cost

    async def journaled(self) -> None:
        """Wait until the records queued so far are in the journal (the end of this tick's group commit)."""
        if self._journal is not None and (batch := self._journal.written()) is not None:
            # The write was scheduled (call_soon) when the tick's first record was queued, so a plain yield resumes
            # after it: callbacks run in the order they were scheduled. Cheaper than a future of one's own, which
            # shield() makes (the batch is shared by the tick's requests: one cancelled must not cancel the others).
            await asyncio.sleep(0)
            if not batch.done():
                await asyncio.shield(batch)

    def touch(self, key_hash: str, when: datetime, ip: str | None, key_id: int | None = None) -> None:
        """Remember the latest use of a key (``key_id``: its number, if known); written at the next flush."""
        self._last_used.note(key_hash, when, ip, key_id)

    def pending(self, scope: str, ident: str, counter: str) -> int:
        """Cost queued for one spend counter but not yet in the store (micro-dollars).

        Args:
            scope: "key", "account" or "group".
            ident: The key hash, or the account or group id as text.
            counter: "life" (lifetime) or a period's counter name ("daily:2026-11-23").
        """
        return self._pending.get((scope, ident, counter), 0)

    @property
    def queued(self) -> int:
        """Records waiting to be written."""
        return len(self._queue)

    async def flush(self) -> int:
        """Write the records queued when called (and every last-use time), batch by batch.

        Records enqueued while the flush runs wait for the next one: under steady load a flush ends, and
        each interval costs one transaction (of up to ``max_batch`` records) rather than one per handful of
        records. On failure the rest stays queued for the next try. A transaction's statements run ``chunk``
        rows at a time and the loop runs other tasks between them, so a burst of records never stalls the
        event loop for long.

        Returns:
            The number of records written.
        """
        written = 0
        left = len(self._queue)
        if self._journal is not None:
            self._journal.seal()  # the records queued now are in sealed segments, deleted once written
        while True:
            # A batch's transaction and bookkeeping run to their end even when shutdown cancels the periodic flush.
            count = await finish_then_cancel(self._flush_batch(min(left, self._max_batch)))
            written += count
            left -= count
            if left <= 0 or count == 0:  # 0 with records left: a concurrent flush wrote them
                return written
            await asyncio.sleep(0)

    async def _flush_batch(self, limit: int) -> int:
        async with self._lock:
            if not self._queue and not self._last_used:
                return 0
            batch = self._queue[:limit]
            touched = self._last_used
            self._last_used = LastUses()
            try:
                try:
                    await self._write(batch, touched)
                except IntegrityError:
                    # A record of this batch is in the store already (replayed from a journal meanwhile): write
                    # again without the records the store holds; the failed transaction charged nothing.
                    await self._write(batch, touched, skip_stored=True)
            except Exception:
                self._last_used.keep_older(touched)
                raise
            del self._queue[: len(batch)]
            del self._segments[: len(batch)]
            if self._journal is not None:
                self._journal.release_before(self._segments[0] if self._segments else self._journal.segment)
            for record in batch:
                if record.cost_micros:
                    self._release(record)
            if not self._pending:
                self._pending = {}  # emptied: a dict keeps the table it grew to, here one entry per key used
            return len(batch)

    async def replay(self, records: list[UsageRecord]) -> int:
        """Write records journaled by a process that died, in batches: those the store holds already are skipped.

        A record and its charges are written in one transaction, and a record is recognised by its request id
        (a unique index), so a replay, however often repeated or interrupted, charges each record exactly once.

        Returns:
            The number of records written (not already in the store).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: The store failed; what was written stays written.
        """
        written = 0
        for batch in slices(records, self._max_batch):
            try:
                written += await finish_then_cancel(self._write(batch, LastUses()))  # most often none is stored
            except IntegrityError:
                # The failed transaction charged nothing.
                written += await finish_then_cancel(self._write(batch, LastUses(), skip_stored=True))
        return written

    async def sync(self) -> None:
        """``fsync`` the journal if it changed (run once a second)."""
        if self._journal is not None:
            await self._journal.sync()

    def _release(self, record: UsageRecord) -> None:
        pending = self._pending
        for counter in counters_of(record):
            left = pending.get(counter, 0) - record.cost_micros
            if left > 0:
                pending[counter] = left
            else:
                pending.pop(counter, None)

    async def _write(self, batch: list[UsageRecord], touched: LastUses, *, skip_stored: bool = False) -> int:
        """Insert ``batch`` and charge it, in one transaction; returns how many records were inserted.

        ``skip_stored``: first leave out the records whose request id the store holds (a replay).
        """
        async with self._engine.begin() as conn:
            if skip_stored and batch:
                stored: set[str] = set()
                for part in slices(batch, self._chunk):  # a chunk of ids a query, as the statements below
                    ids = [r.request_id for r in part]
                    held = select(usage_records.c.request_id).where(usage_records.c.request_id.in_(ids))
                    stored.update((await conn.execute(held)).scalars().all())
                batch = [r for r in batch if r.request_id not in stored]
            await self._insert_and_charge(conn, batch, touched)
        return len(batch)

    async def _insert_and_charge(self, conn: AsyncConnection, batch: list[UsageRecord], touched: LastUses) -> None:
        per_key: dict[str, int] = {}
        key_ids: dict[str, int] = dict(touched.ids)  # a key's number, where its use or a record of it carries one
        per_group: dict[int, int] = {}
        per_account: dict[int, int] = {}
        per_period: dict[tuple[str, str, str, datetime], int] = {}
        step = self._chunk
        for chunk in slices(batch, step):
            for record in chunk:
                if record.key_id is not None:
                    key_ids[record.key_hash] = record.key_id
                cost = record.cost_micros
                if not cost:
                    continue
                per_key[record.key_hash] = per_key.get(record.key_hash, 0) + cost
                per_account[record.account_id] = per_account.get(record.account_id, 0) + cost
                if record.key_period is not None:
                    slot = ("key", record.key_hash, record.key_period.reset, record.key_period.start)
                    per_period[slot] = per_period.get(slot, 0) + cost
                if record.group_id is not None:
                    per_group[record.group_id] = per_group.get(record.group_id, 0) + cost
                    if record.group_period is not None:
                        gslot = ("group", str(record.group_id), record.group_period.reset, record.group_period.start)
                        per_period[gslot] = per_period.get(gslot, 0) + cost
            # One C call a record's row; the event loop runs while the driver executes it.
            await self._insert.executemany(conn, self._insert.from_tuples(map(self._row, chunk)))
        # Every row is updated once, tables in one order (key usage, groups, accounts, spend periods) and rows in sorted
        # order within each (chunks in that order too): any two flushes, of any processes, lock rows in the same
        # order, so none waits on another in a cycle (no deadlock, however hot the keys they share).
        hashes = sorted(per_key.keys() | touched.at.keys())
        used_at, used_ip = touched.at, touched.ip
        for part in slices(hashes, step):
            key_rows = [(per_key.get(h, 0), used_at.get(h), used_ip.get(h), key_ids.get(h), h) for h in part]
            await self._charge_key.executemany(conn, self._charge_key.from_tuples(key_rows))
        for stmt, amounts in ((self._charge_group, per_group), (self._charge_account, per_account)):
            rows = [{"b_ident": i, "b_cost": c} for i, c in sorted(amounts.items())]
            for rows_part in slices(rows, step):
                await stmt.executemany(conn, stmt.from_mappings(rows_part))
        # Each cost goes to the period of its admission only; no statement restarts or lowers a period. The charges
        # of a chunk are built for it alone: a flush of distinct keys has one a key.
        for slots in slices(sorted(per_period), step):
            await add_charges(conn, [(*slot, per_period[slot]) for slot in slots])

    async def close(self) -> None:
        """Flush everything; called on shutdown (SIGTERM included). The journal keeps what could not be written."""
        try:
            while self._queue or self._last_used:
                await self.flush()
        except Exception:
            log.exception(
                "usage flush failed during shutdown; %d records not written (kept in the usage journal%s)",
                len(self._queue),
                "" if self._journal is not None else ": none is configured, so they are lost",
            )
        if self._journal is not None:
            self._journal.close(empty=not self._queue)
