"""Cross-process cache coherence: poll the store for rows changed by other processes.

Every ``interval`` seconds one cheap indexed query per table asks for rows whose ``updated_at`` is
recent; each change not seen before invalidates the matching cache entries. The query window
overlaps the previous one by ``OVERLAP`` so a transaction that committed late, or a writer whose
clock runs a little behind, is still seen. Writes made through this process's services have already
invalidated the cache synchronously; this is for the CLI and for other gateway instances.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from keyrelay.cache.keycache import KeyCache
from keyrelay.clock import Clock, ensure_utc
from keyrelay.store.accounts import AccountRepository, GroupRepository
from keyrelay.store.keys import KeyRepository

OVERLAP = timedelta(seconds=5)
log = logging.getLogger("keyrelay.cache")


class CacheSync:
    """Polls keys, accounts and groups for changes and invalidates the cache accordingly."""

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
        self._seen: dict[tuple[str, str], datetime] = {}

    def _fresh(self, table: str, ident: str, updated_at: datetime) -> bool:
        marker = (table, ident)
        updated_at = ensure_utc(updated_at)
        if self._seen.get(marker) == updated_at:
            return False
        self._seen[marker] = updated_at
        return True

    async def poll_once(self) -> int:
        """Run one poll; returns the number of invalidations made."""
        now = self._clock.now_utc()
        since = self._since
        count = 0
        for change in await self._keys.changed_since(since=since):
            if self._fresh("k", change.ident, change.updated_at):
                self._cache.invalidate_key(change.ident, broadcast=False)
                count += 1
        for change in await self._accounts.changed_since(since=since):
            if self._fresh("a", change.ident, change.updated_at):
                self._cache.invalidate_account(int(change.ident), broadcast=False)
                count += 1
        for change in await self._groups.changed_since(since=since):
            if self._fresh("g", change.ident, change.updated_at):
                self._cache.invalidate_group(int(change.ident), broadcast=False)
                count += 1
        self._since = now - OVERLAP
        self._seen = {m: t for m, t in self._seen.items() if t >= self._since}
        return count
