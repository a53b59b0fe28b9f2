"""In-process key cache: secret hash → Principal (key, account, group, effective policy).

Filled on first use from the store, then served from memory: the hot path does no database I/O in
steady state. Writes through ``services`` invalidate entries at once; ``CacheSync`` picks up writes
made by other processes within its poll interval. Unknown hashes are remembered (bounded) so that a
spray of bad keys cannot turn into a spray of database queries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from keyrelay.keys.policy import Policy
from keyrelay.store.records import AccountRecord, GroupRecord, KeyRecord


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key, its account and group, and the resolved policy."""

    key: KeyRecord
    account: AccountRecord
    group: GroupRecord | None
    policy: Policy
    via_previous_secret: bool


Loader = Callable[[str], Awaitable[Principal | None]]


class KeyCache:
    """Secret-hash → Principal map with invalidation by key, account, group or everything."""

    def __init__(self, loader: Loader, *, max_negative: int = 100_000) -> None:
        self._loader = loader
        self._entries: dict[str, Principal] = {}
        self._by_key: dict[str, set[str]] = {}
        self._by_account: dict[int, set[str]] = {}
        self._by_group: dict[int, set[str]] = {}
        self._negative: set[str] = set()
        self._max_negative = max_negative
        self._generation = 0
        self.on_invalidate: Callable[[str, str], None] | None = None  # cross-process fan-out hook

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, secret_hash: str) -> Principal | None:
        """The principal for a secret hash, loading it on a miss; None for an unknown key.

        Raises:
            GatewayError: SERVICE_UNAVAILABLE when the store cannot be reached on a miss.
        """
        principal = self._entries.get(secret_hash)
        if principal is not None:
            return principal
        if secret_hash in self._negative:
            return None
        generation = self._generation
        principal = await self._loader(secret_hash)
        if generation != self._generation:
            # An invalidation ran while we were loading: the row we read may be stale, so don't keep it.
            return principal
        if principal is None:
            if len(self._negative) >= self._max_negative:
                self._negative.clear()
            self._negative.add(secret_hash)
        else:
            self._store(secret_hash, principal)
        return principal

    def _store(self, secret_hash: str, principal: Principal) -> None:
        self._entries[secret_hash] = principal
        self._by_key.setdefault(principal.key.hash, set()).add(secret_hash)
        self._by_account.setdefault(principal.account.id, set()).add(secret_hash)
        if principal.group is not None:
            self._by_group.setdefault(principal.group.id, set()).add(secret_hash)

    def _drop(self, secret_hashes: set[str] | None) -> None:
        self._generation += 1
        for secret_hash in secret_hashes or ():
            principal = self._entries.pop(secret_hash, None)
            if principal is None:
                continue
            self._by_key.get(principal.key.hash, set()).discard(secret_hash)
            self._by_account.get(principal.account.id, set()).discard(secret_hash)
            if principal.group is not None:
                self._by_group.get(principal.group.id, set()).discard(secret_hash)

    def _broadcast(self, kind: str, ident: str, broadcast: bool) -> None:
        if broadcast and self.on_invalidate is not None:
            self.on_invalidate(kind, ident)

    def invalidate_key(self, key_hash: str, *, broadcast: bool = True) -> None:
        """Forget every cached secret of one key (by its stable hash); also forget unknown-key memory."""
        self._drop(self._by_key.pop(key_hash, None))
        self._negative.clear()
        self._broadcast("k", key_hash, broadcast)

    def invalidate_account(self, account_id: int, *, broadcast: bool = True) -> None:
        """Forget every cached key of one account."""
        self._drop(self._by_account.pop(account_id, None))
        self._broadcast("a", str(account_id), broadcast)

    def invalidate_group(self, group_id: int, *, broadcast: bool = True) -> None:
        """Forget every cached key whose account is in one group."""
        self._drop(self._by_group.pop(group_id, None))
        self._broadcast("g", str(group_id), broadcast)

    def clear(self) -> None:
        """Forget everything."""
        self._generation += 1
        self._entries.clear()
        self._by_key.clear()
        self._by_account.clear()
        self._by_group.clear()
        self._negative.clear()
