"""Cross-process cache coherence: poll the store for rows changed by other processes.

Every ``interval`` seconds one cheap indexed query per table (keys, accounts, groups) asks for the
rows whose ``updated_at`` is recent, with their ``version``. A cached entry is evicted only when it
was loaded from an older version of such a row: a change is found by time, but judged by version.
So an entry this process has just written and reloaded is never evicted (nothing in the store is
newer), and an entry is evicted however close together two writes were (the same ``updated_at``
does not hide the second one).

The query window overlaps the previous one by ``OVERLAP`` so that a transaction that committed late,
or a writer whose clock runs a little behind, is still seen; seeing a row twice costs one dict
lookup, because eviction depends on versions only.

When the store cannot be reached, a poll changes nothing: cached keys keep being served (a key
cannot be revoked through a store that is down), the window start stays where it was so that the
first poll after the outage sees every change made before it, and the outage is logged once.

Writes made through this process's services have already invalidated the cache synchronously; this
is for the CLI and for other gateway instances (with Redis, ``fanout.py`` tells them sooner).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from keyrelay.cache.keycache import KeyCache
from keyrelay.clock import Clock
from keyrelay.store.accounts import AccountRepository, GroupRepository
from keyrelay.store.keys import KeyRepository
from keyrelay.store.records import Change

OVERLAP = timedelta(seconds=5)
log = logging.getLogger("keyrelay.cache")


class CacheSync:
    """Polls keys, accounts and groups for changes and evicts the cache entries they made stale."""

    def __init__(
        self,
        *,
        cache: KeyCache,
        keys: KeyRepository,
        accounts: AccountRepository,
        groups: GroupRepository,
        clock: Clock,
    ) -> None:
        self._cache = cache
        self._keys = keys
        self._accounts = accounts
        self._groups = groups
        self._clock = clock
        self._since = clock.now_utc() - OVERLAP
        self._store_down = False

    async def _changes(self) -> tuple[list[Change], list[Change], list[Change]] | None:
        """The recent changes of the three tables, or None when the store is unreachable."""
        since = self._since
        try:
            return (
                await self._keys.changed_since(since=since),
                await self._accounts.changed_since(since=since),
                await self._groups.changed_since(since=since),
            )
        except (SQLAlchemyError, OSError) as exc:
            if not self._store_down:
                self._store_down = True
                log.warning(
                    "key store unreachable (%s); serving the %d cached keys and evicting none until it is back",
                    type(exc).__name__,
                    len(self._cache),
                )
            return None

    async def poll_once(self) -> int:
        """Run one poll and evict the cache entries that are older than their rows in the store.

        Returns:
            How many cached entries (secret hashes) were evicted; 0 when the store is unreachable.
        """
        now = self._clock.now_utc()
        changes = await self._changes()
        if changes is None:
            return 0
        if self._store_down:
            self._store_down = False
            log.info("key store reachable again; catching up on changes since %s", self._since.isoformat())
        key_changes, account_changes, group_changes = changes
        cache = self._cache
        evicted = 0
        for change in key_changes:
            evicted += cache.evict_stale_key(
                change.ident, version=change.version, updated_at=change.updated_at, secrets=change.secrets
            )
        for change in account_changes:
            evicted += cache.evict_stale_account(
                int(change.ident), version=change.version, updated_at=change.updated_at
            )
        for change in group_changes:
            evicted += cache.evict_stale_group(int(change.ident), version=change.version, updated_at=change.updated_at)
        self._since = now - OVERLAP
        return evicted
