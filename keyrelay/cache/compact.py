"""Compact bookkeeping for the key cache: an index of one string (or a set) per ident, counted sharing of values.

The key cache holds up to ``KEYRELAY_KEY_CACHE_SIZE`` keys, so what it keeps per key is what grows with the
number of keys. An empty set alone weighs 216 bytes, and most keys have one secret and most accounts one key;
most keys of one account hold equal account records, and most keys equal policies.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

Ident = TypeVar("Ident", str, int)
Value = TypeVar("Value", bound=Hashable)


class SecretIndex(Generic[Ident]):
    """Ident (key hash, account or group id) → the secret hashes cached under it.

    One member is kept as the string itself, more in a set: an index entry costs a dict slot, not a set.
    """

    __slots__ = ("_members",)

    def __init__(self) -> None:
        self._members: dict[Ident, str | set[str]] = {}

    def __len__(self) -> int:
        """Idents indexed."""
        return len(self._members)

    def add(self, ident: Ident, secret_hash: str) -> None:
        """Index ``secret_hash`` under ``ident``."""
        members = self._members.get(ident)
        if members is None:
            self._members[ident] = secret_hash
        elif isinstance(members, str):
            if members != secret_hash:
                self._members[ident] = {members, secret_hash}
        else:
            members.add(secret_hash)

    def discard(self, ident: Ident, secret_hash: str) -> None:
        """Unindex ``secret_hash`` from ``ident``; the ident goes with its last member."""
        members = self._members.get(ident)
        if members is None:
            return
        if isinstance(members, str):
            if members == secret_hash:
                del self._members[ident]
            return
        members.discard(secret_hash)
        if len(members) == 1:
            self._members[ident] = members.pop()
        elif not members:
            del self._members[ident]

    def get(self, ident: Ident) -> set[str]:
        """The secret hashes indexed under ``ident`` (a new set; empty when none)."""
        members = self._members.get(ident)
        if members is None:
            return set()
        return {members} if isinstance(members, str) else set(members)

    def pop(self, ident: Ident) -> set[str]:
        """The secret hashes indexed under ``ident``, which leaves the index."""
        members = self.get(ident)
        self._members.pop(ident, None)
        return members

    def count(self) -> int:
        """Secret hashes indexed, over every ident."""
        return sum(1 if isinstance(m, str) else len(m) for m in self._members.values())

    def clear(self) -> None:
        """Forget everything."""
        self._members.clear()


class Shared(Generic[Value]):
    """One object for equal immutable values held by many cache entries, counted.

    ``take`` returns the object already held for an equal value (or keeps this one) and counts one more holder;
    ``release`` counts one less, and the last holder's release forgets it: what is held follows the entries.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[Value, tuple[Value, int]] = {}

    def __len__(self) -> int:
        """Distinct values held."""
        return len(self._held)

    def take(self, value: Value) -> Value:
        """The shared object equal to ``value``, with one more holder."""
        held = self._held.get(value)
        shared, holders = (value, 0) if held is None else held
        self._held[shared] = (shared, holders + 1)
        return shared

    def release(self, value: Value) -> None:
        """One holder less for the value equal to ``value``; forgotten with its last holder."""
        held = self._held.get(value)
        if held is None:
            return
        shared, holders = held
        if holders <= 1:
            del self._held[shared]
        else:
            self._held[shared] = (shared, holders - 1)

    def clear(self) -> None:
        """Forget everything."""
        self._held.clear()
