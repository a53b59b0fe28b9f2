"""In-process key cache: secret hash → Principal (key, account, group, effective policy).

Filled on first use from the store, then served from memory: the hot path does no database I/O in
steady state, so cached keys keep working while the store is down. At most ``KEYRELAY_KEY_CACHE_SIZE``
keys are held; beyond that the least recently used is evicted (and loaded again on its next use), so the
cache's memory does not grow with the number of keys. Writes through ``services``
invalidate entries at once; ``CacheSync`` evicts, within its poll interval, the entries that writes
made by other processes have made stale, comparing row versions. Unknown hashes are remembered
(bounded) so that a spray of bad keys cannot turn into a spray of database queries.

An entry holds as little as it can (``cache/compact.py``): equal account and group records and equal policies
are one object for all the keys that hold them, the indexes hold strings rather than sets, and the state marks
are kept only when a shared backend compares them.

With a shared limits backend (Redis) every write through the services also records a state mark, the
row's new version (``key_changed`` and its siblings): every process's next admission compares the
versions it holds with the marks and reloads a stale principal (``refreshed``), so a revocation holds
on the very next request everywhere, not a pub/sub delivery later.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from keyrelay.cache.compact import Ident, SecretIndex, Shared
from keyrelay.errors import GatewayError
from keyrelay.keys.policy import Policy
from keyrelay.limits.backend import StaleState
from keyrelay.store.records import AccountRecord, GroupRecord, KeyRecord


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key, its account and group, and the resolved policy."""

    key: KeyRecord
    account: AccountRecord
    group: GroupRecord | None
    policy: Policy
    via_previous_secret: bool
    # principal_marks() of its rows; () when built by hand (tests) or cached without a shared backend to compare
    # them with (KeyCache.checker): never judged stale.
    marks: Marks = ()

    @property
    def secret_hash(self) -> str:
        """The hash of the secret the caller presented (the current one, or the previous one in its grace)."""
        previous = self.key.prev_secret_hash
        return previous if self.via_previous_secret and previous is not None else self.key.secret_hash


Loader = Callable[[str], Awaitable[Principal | None]]
Marks = tuple[tuple[str, int], ...]
Marker = Callable[[Marks], Awaitable[None]]


def key_mark(key_hash: str) -> str:
    """The state mark of a key row (by its stable hash)."""
    return f"k:{key_hash}"


def account_mark(account_id: int) -> str:
    """The state mark of an account row."""
    return f"a:{account_id}"


def group_mark(group_id: int) -> str:
    """The state mark of a group row."""
    return f"g:{group_id}"


def principal_marks(key: KeyRecord, account: AccountRecord, group: GroupRecord | None) -> Marks:
    """The rows a principal was built from, as ``(mark, version)`` pairs for the limits backend."""
    marks = ((key_mark(key.hash), key.version), (account_mark(account.id), account.version))
    return marks if group is None else (*marks, (group_mark(group.id), group.version))


class _Versioned(Protocol):
    @property
    def version(self) -> int: ...

    @property
    def updated_at(self) -> datetime: ...


def _is_stale(cached: _Versioned | None, version: int, updated_at: datetime) -> bool:
    """Whether a cached row is older than the row now in the store (its ``version`` and ``updated_at``).

    A lower version is older. At the same version a different ``updated_at`` means a writer that does not
    bump versions changed the row (a process still on the release before versions). A higher cached version
    is newer than what the poll read (this process wrote and reloaded it meanwhile): not stale.
    """
    if cached is None:
        return False
    return cached.version < version or (cached.version == version and cached.updated_at != updated_at)


class KeyCache:
    """Secret-hash → Principal map with invalidation by key, account, group or everything."""

    def __init__(self, loader: Loader, *, max_entries: int = 100_000, max_negative: int = 100_000) -> None:
        """A cache filled by ``loader``; at most ``max_entries`` keys, the least recently used evicted first."""
        self._loader = loader
        # Oldest use first: a hit moves its entry to the end, and an insertion beyond max_entries evicts the first.
        self._entries: OrderedDict[str, Principal] = OrderedDict()
        self._max_entries = max_entries
        self._by_key: SecretIndex[str] = SecretIndex()
        self._by_account: SecretIndex[int] = SecretIndex()
        self._by_group: SecretIndex[int] = SecretIndex()
        self._accounts: Shared[AccountRecord] = Shared()
        self._groups: Shared[GroupRecord] = Shared()
        self._policies: Shared[Policy] = Shared()
        self._negative: dict[str, int] = {}  # unknown hash → the version of its key mark when it was found unknown
        self._max_negative = max_negative
        self._generation = 0
        self.on_invalidate: Callable[[str, str], None] | None = None  # cross-process fan-out hook
        self.marker: Marker | None = None  # records state marks (``LimitsBackend.mark``) with a shared backend
        self.checker: Marker | None = None  # compares them (``LimitsBackend.check_current``): raises StaleState

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, secret_hash: str) -> Principal | None:
        """The principal for a secret hash, loading it on a miss; None for an unknown key.

        Raises:
            GatewayError: SERVICE_UNAVAILABLE when the store cannot be reached on a miss.
        """
        principal = self._entries.get(secret_hash)
        if principal is not None:
            self._entries.move_to_end(secret_hash)
            return principal
        seen = 0
        known = self._negative.get(secret_hash)
        if known is not None:
            newer = await self._changed_since(secret_hash, known)
            if newer is None:
                return None
            seen = newer
        generation = self._generation
        principal = await self._loader(secret_hash)
        if generation != self._generation:
            # An invalidation ran while we were loading: the row we read may be stale, so don't keep it.
            return principal
        if principal is None:
            if len(self._negative) >= self._max_negative:
                self._negative.clear()
            self._negative[secret_hash] = seen
            return None
        return self._store(secret_hash, principal)

    async def _changed_since(self, secret_hash: str, known: int) -> int | None:
        """The key mark of a remembered unknown hash when it is newer than ``known``, else None.

        A key's first secret hash is its stable hash, so a key created elsewhere is usable here at once. The mark
        seen is remembered with the hash, so a revoked key (whose mark stays) costs one reload, not one per
        request. Without a shared backend, or when the marks cannot be read, the memory stands.
        """
        if self.checker is None:
            return None
        try:
            await self.checker(((key_mark(secret_hash), known),))
        except StaleState as stale:
            self._negative.pop(secret_hash, None)
            return stale.version if stale.version is not None else known + 1
        except GatewayError:
            return None
        return None

    def peek(self, secret_hash: str) -> Principal | None:
        """The cached principal for a secret hash, or None when it is not cached (never loads)."""
        return self._entries.get(secret_hash)

    def _store(self, secret_hash: str, principal: Principal) -> Principal:
        """Cache ``principal`` under ``secret_hash``, with its shared parts; returns what is cached."""
        self._remove(secret_hash)  # a concurrent load of the same key stored it already: replaced, not leaked
        principal = self._shared(principal)
        own = principal.secret_hash
        if own == secret_hash:
            secret_hash = own  # the record's string: one object for the entry, the record and the limits state
        self._entries[secret_hash] = principal
        if len(self._entries) > self._max_entries:
            # An eviction is no invalidation: the generation stays, so loads under way keep their results.
            self._remove(next(iter(self._entries)))
        self._by_key.add(principal.key.hash, secret_hash)
        self._by_account.add(principal.account.id, secret_hash)
        if principal.group is not None:
            self._by_group.add(principal.group.id, secret_hash)
        return principal

    def _shared(self, principal: Principal) -> Principal:
        """``principal`` with the account, group and policy objects other entries hold when equal.

        Its marks are dropped when no shared backend compares them (``checker``): they would never be read.
        """
        account = self._accounts.take(principal.account)
        group = None if principal.group is None else self._groups.take(principal.group)
        policy = self._policies.take(principal.policy)
        marks = principal.marks if self.checker is not None else ()
        same = account is principal.account and group is principal.group and policy is principal.policy
        if same and marks is principal.marks:
            return principal
        return Principal(principal.key, account, group, policy, principal.via_previous_secret, marks)

    def _drop(self, secret_hashes: set[str]) -> None:
        self._generation += 1
        for secret_hash in secret_hashes:
            self._remove(secret_hash)

    def _remove(self, secret_hash: str) -> None:
        principal = self._entries.pop(secret_hash, None)
        if principal is None:
            return
        self._by_key.discard(principal.key.hash, secret_hash)
        self._by_account.discard(principal.account.id, secret_hash)
        self._accounts.release(principal.account)
        self._policies.release(principal.policy)
        if principal.group is not None:
            self._by_group.discard(principal.group.id, secret_hash)
            self._groups.release(principal.group)

    def _evict_stale(
        self,
        index: SecretIndex[Ident],
        ident: Ident,
        row_of: Callable[[Principal], _Versioned | None],
        version: int,
        updated_at: datetime,
    ) -> int:
        stale = {h for h in index.get(ident) if _is_stale(row_of(self._entries[h]), version, updated_at)}
        if stale:
            self._drop(stale)
        return len(stale)

    def _broadcast(self, kind: str, ident: str, broadcast: bool) -> None:
        if broadcast and self.on_invalidate is not None:
            self.on_invalidate(kind, ident)

    def invalidate_key(self, key_hash: str, *, broadcast: bool = True) -> None:
        """Forget every cached secret of one key (by its stable hash); also forget unknown-key memory."""
        self._drop(self._by_key.pop(key_hash))
        self._negative.clear()
        self._broadcast("k", key_hash, broadcast)

    def invalidate_account(self, account_id: int, *, broadcast: bool = True) -> None:
        """Forget every cached key of one account."""
        self._drop(self._by_account.pop(account_id))
        self._broadcast("a", str(account_id), broadcast)

    def invalidate_group(self, group_id: int, *, broadcast: bool = True) -> None:
        """Forget every cached key whose account is in one group."""
        self._drop(self._by_group.pop(group_id))
        self._broadcast("g", str(group_id), broadcast)

    async def key_changed(self, record: KeyRecord) -> None:
        """After a write to a key row (its version bumped): forget it here and everywhere, record its mark."""
        self.invalidate_key(record.hash)
        if self.marker is not None:
            await self.marker(((key_mark(record.hash), record.version),))

    async def account_changed(self, record: AccountRecord) -> None:
        """After a write to an account row: forget its keys here and everywhere, record its mark."""
        self.invalidate_account(record.id)
        if self.marker is not None:
            await self.marker(((account_mark(record.id), record.version),))

    async def group_changed(self, record: GroupRecord) -> None:
        """After a write to a group row: forget its accounts' keys here and everywhere, record its mark."""
        self.invalidate_group(record.id)
        if self.marker is not None:
            await self.marker(((group_mark(record.id), record.version),))

    async def refreshed(self, principal: Principal) -> Principal | None:
        """The principal reloaded from the store, after the limits backend found it stale (``StaleState``).

        Its key, account and group are forgotten in this process only (the writer told the others), so the load
        starts after the change was recorded and sees it. None when the key no longer authenticates.

        Raises:
            GatewayError: SERVICE_UNAVAILABLE when the store cannot be reached.
        """
        self.invalidate_key(principal.key.hash, broadcast=False)
        self.invalidate_account(principal.account.id, broadcast=False)
        if principal.group is not None:
            self.invalidate_group(principal.group.id, broadcast=False)
        return await self.get(principal.secret_hash)

    async def current(self, principal: Principal, *, strict: bool = True) -> Principal | None:
        """The principal, or its reload when a recorded change is newer; for requests without an admission.

        None when the reloaded key no longer authenticates. Without a shared backend the principal is returned.
        ``strict=False`` (the management API): when the marks cannot be read, the cached principal is used, as
        without Redis, so that an outage of Redis does not lock the administrators out.

        Raises:
            GatewayError: LIMITS_UNAVAILABLE (``strict``, the marks cannot be read, failing closed);
                SERVICE_UNAVAILABLE (the store cannot be reached for the reload).
        """
        if self.checker is None or not principal.marks:
            return principal
        try:
            await self.checker(principal.marks)
        except StaleState:
            return await self.refreshed(principal)
        except GatewayError:
            if strict:
                raise
        return principal

    def evict_stale_key(self, key_hash: str, *, version: int, updated_at: datetime, secrets: Iterable[str] = ()) -> int:
        """Forget the cached secrets of a key that were loaded from an older row than the store's.

        Args:
            key_hash: The key's stable hash.
            version: The key row's version in the store now.
            updated_at: The key row's ``updated_at`` in the store now (UTC).
            secrets: The key's current and previous secret hashes in the store now: no longer unknown, so they
                leave the unknown-key memory (and only they: it is not cleared for an unrelated change).

        Returns:
            How many cached secrets were forgotten (0 when every cached one is current).
        """
        for secret in secrets:
            self._negative.pop(secret, None)
        return self._evict_stale(self._by_key, key_hash, lambda p: p.key, version, updated_at)

    def evict_stale_account(self, account_id: int, *, version: int, updated_at: datetime) -> int:
        """Forget the cached keys of an account that were loaded with an older account row; returns how many."""
        return self._evict_stale(self._by_account, account_id, lambda p: p.account, version, updated_at)

    def evict_stale_group(self, group_id: int, *, version: int, updated_at: datetime) -> int:
        """Forget the cached keys of a group's accounts that were loaded with an older group row; returns how many."""
        return self._evict_stale(self._by_group, group_id, lambda p: p.group, version, updated_at)

    def clear(self) -> None:
        """Forget everything."""
        self._generation += 1
        self._entries.clear()
        self._by_key.clear()
        self._by_account.clear()
        self._by_group.clear()
        self._accounts.clear()
        self._groups.clear()
        self._policies.clear()
        self._negative.clear()
