"""The Redis usage stream: records settled into Redis with their charge, drained into the store by any process.

In the scaled-out shape (``KEYRELAY_REDIS_URL``) the settlement script (``limits/lua/settle_v4.lua``) appends each
request's usage record to the stream ``<prefix>:usage`` in the same atomic step as its charge, before the
response's last bytes are sent. So a response the client saw complete has its record in Redis, whatever happens
to the process afterwards, and its cost is in the Redis spend counters exactly when its record is in the stream.

Every gateway process drains the stream into the store, one at a time (a lock, ``<prefix>:usage:drain``, held
for at most ``lock_ttl_s`` per batch: redis-py's ``Lock``): it reads the oldest entries (``XRANGE``, 500 a
command so that Redis never serves one read for long), writes a batch of them (5,000) with
``UsageWriter.replay`` (one transaction, leaving out request ids the store holds already) and only then deletes
them (``XDEL``, 500 a command). A drainer stopped at any point loses nothing (entries leave the stream only
after their transaction committed) and counts nothing twice (entries written but not yet deleted are found in
the store by the next drainer and skipped; ``usage_records.request_id`` is unique). An entry that is not a
record (it can only come from another program or version), or one the store refuses (a value too long for its
column), is moved to ``<prefix>:usage:rejected`` and logged, never dropped, and never holds up the others. An
entry a newer keyrelay wrote, in a record format this version cannot read (``usage/records.py``'s
``NewerRecord``: during a rolling upgrade, both versions drain the same stream), is left in the stream for a
newer drainer: neither written, nor deleted, nor rejected; the drain goes on past it. Its charge is already in
Redis, like every entry's. Such entries count in ``pending`` (``XLEN``) and every drain reads them again until a
newer drainer writes them (after a rollback: until the upgrade is done again).
Commands: https://redis.io/docs/latest/commands/xrange/, https://redis.io/docs/latest/commands/xdel/.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from keyrelay.usage.records import NewerRecord, UsageRecord
from keyrelay.usage.writer import UsageWriter, slices

log = logging.getLogger("keyrelay.usage")
_Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry: its id and its fields
_Read = tuple[bytes, dict[bytes, bytes], UsageRecord]  # an entry and its record
_TELL_NEWER_EVERY_S = 60.0  # a drain that leaves a newer keyrelay's entries logs it at most this often
_RENEW_EVERY = 50  # records written one by one between two renewals of the drain lock


def _after(ident: bytes) -> str:
    """The smallest stream id after ``ident`` ("ms-seq"): where the next ``XRANGE`` starts (any Redis ≥ 5)."""
    ms, _, seq = ident.decode().partition("-")
    return f"{ms}-{int(seq) + 1}" if int(seq) < 2**64 - 1 else f"{int(ms) + 1}-0"


class UsageStream:
    """Drains one Redis usage stream into the store through a usage writer."""

    def __init__(
        self,
        client: Redis,
        writer: UsageWriter,
        *,
        key: str,
        batch: int = 5000,
        per_command: int = 500,
        lock_ttl_s: float = 2.0,
    ) -> None:
        """A drainer of the stream ``key`` (``RedisLimits.usage_stream``) on ``client``, ``batch`` entries a time.

        ``batch``: entries per store transaction (the writer's CPU per record falls with its size: see
        ``UsageWriter``); ``per_command``: entries per ``XRANGE`` and per ``XDEL`` (``XRANGE`` of 5,000 entries
        held Redis ~7 ms, of 500 ~0.9 ms, measured: every other client waits meanwhile). ``lock_ttl_s``: how long
        the drain lock outlives a drainer that died holding it (seconds); a drainer renews it before each batch's
        store write and before its deletion. A write taking longer only lets a second drainer start early, which
        writes nothing twice (see the module doc).
        """
        self._redis = client
        self._writer = writer
        self._key = key
        self._rejected = key + ":rejected"
        self._batch = batch
        self._per_command = per_command
        self._lock_ttl_s = lock_ttl_s
        self._draining = asyncio.Lock()  # one drain at a time in this process (start-up, periodic, flush, shutdown)
        self._told_newer = -_TELL_NEWER_EVERY_S  # when the last drain that left newer entries said so (monotonic s)

    async def drain(self, *, max_batches: int | None = None, wait: bool = False) -> int:
        """Write the stream's records into the store, oldest first, until it is empty (or ``max_batches`` are done).

        Does nothing if another drain runs, in this process or another (it holds the lock), unless ``wait``: then
        it waits for this process's drain to end and for another process's lock for up to twice its lifetime. A
        failure of Redis or of the store is logged and ends this drain: the entries stay in the stream for the next
        one (every flush interval).

        Returns:
            The number of records written (those the store held already are not counted).
        """
        if self._draining.locked() and not wait:
            return 0
        async with self._draining:
            # A Lock object per drain: redis-py's keeps the token it holds, which must be this drain's own.
            lock = self._redis.lock(
                self._key + ":drain",
                timeout=self._lock_ttl_s,
                blocking=wait,
                blocking_timeout=2 * self._lock_ttl_s if wait else None,
                thread_local=False,
            )
            try:
                if not await lock.acquire():
                    return 0
            except RedisError as exc:
                log.warning("usage stream: cannot take the drain lock now: %s", exc)
                return 0
            try:
                return await self._drain_locked(lock, max_batches)
            finally:
                with contextlib.suppress(RedisError, LockError):  # expired or unreachable: it frees itself
                    await lock.release()

    async def _drain_locked(self, lock: Lock, max_batches: int | None) -> int:
        written = batches = newer = 0
        start = "-"  # the oldest entry not read yet in this drain: entries left for a newer drainer are behind it
        try:
            while True:
                entries, start = await self._read(start)
                if not entries:
                    break
                records, left = await self._records(entries)
                newer += left
                if records:
                    await lock.reacquire()  # raises LockError if it was lost meanwhile
                    try:
                        written += await self._writer.replay([record for _, _, record in records])
                    except (DataError, IntegrityError):
                        # A record the store refuses (a value it cannot hold) must not stop every later one: one by one.
                        written += await self._one_by_one(lock, records)
                    await lock.reacquire()
                    await self._delete([ident for ident, _, _ in records])
                batches += 1
                if len(entries) < self._batch or batches == max_batches:
                    break
        except (RedisError, LockError, SQLAlchemyError, OSError) as exc:
            log.warning("usage stream: drain interrupted, the rest stays for the next one: %s", exc)
        if newer and time.monotonic() - self._told_newer >= _TELL_NEWER_EVERY_S:
            self._told_newer = time.monotonic()
            log.warning("usage stream: %d entries of a newer keyrelay's record format left for its drainers", newer)
        return written

    async def _read(self, start: str) -> tuple[list[_Entry], str]:
        """Up to a batch of entries from the id ``start`` on (``per_command`` a command), and where to read next."""
        entries: list[_Entry] = []
        while len(entries) < self._batch:
            count = min(self._per_command, self._batch - len(entries))
            got = cast(list[_Entry], await self._redis.xrange(self._key, min=start, count=count))
            if got:
                start = _after(got[-1][0])
                entries += got
            if len(got) < count:  # the end of the stream
                break
        return entries, start

    async def _delete(self, ids: list[bytes]) -> None:
        """``XDEL`` ``ids``, ``per_command`` a command, in one round trip.

        A pipeline, not a transaction: Redis serves other clients between two of its commands.
        """
        async with self._redis.pipeline(transaction=False) as deleting:
            for part in slices(ids, self._per_command):
                deleting.xdel(self._key, *part)
            await deleting.execute()

    async def _records(self, entries: list[_Entry]) -> tuple[list[_Read], int]:
        """The records of ``entries``, each with its entry, and how many entries were left for a newer drainer.

        An entry that is no record is moved to the rejected stream; one of a newer keyrelay is left where it is.
        """
        records: list[_Read] = []
        left = 0
        read = self._writer.sent.read
        for ident, fields in entries:
            try:
                records.append((ident, fields, read(fields[b"r"])))
            except NewerRecord:
                left += 1
            except (KeyError, ValueError) as exc:
                await self._reject(ident, fields, f"not a usage record: {exc}")
        return records, left

    async def _one_by_one(self, lock: Lock, records: list[_Read]) -> int:
        """Write each record alone; one the store refuses twice is moved to the rejected stream.

        Twice: a conflict with a concurrent drain's insert of the same record is not a refusal. The drain lock is
        renewed every ``_RENEW_EVERY`` records (a batch's worth of transactions outlasts it), so that no second
        drainer starts the same records meanwhile; ``LockError`` if it was lost.
        """
        written = 0
        for n, (ident, fields, record) in enumerate(records):
            if n % _RENEW_EVERY == 0:
                await lock.reacquire()
            try:
                written += await self._writer.replay([record])
            except (DataError, IntegrityError):
                try:
                    written += await self._writer.replay([record])
                except (DataError, IntegrityError) as exc:
                    await self._reject(ident, fields, f"refused by the store: {type(exc.orig).__name__}")
        return written

    async def _reject(self, ident: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        """Move one entry to the rejected stream (copied and deleted in one transaction: never copied twice)."""
        log.error("usage stream entry %s set aside in %s (%s)", ident.decode(), self._rejected, reason)
        async with self._redis.pipeline(transaction=True) as moving:
            moving.xadd(self._rejected, cast(Any, fields) or {b"r": b""})
            moving.xdel(self._key, ident)
            await moving.execute()

    async def pending(self) -> int:
        """Entries in the stream, not yet in the store (``XLEN``)."""
        return int(await self._redis.xlen(self._key))
