"""Password hashing for portal sign-in: argon2id through argon2-cffi, off the event loop.

Parameters are argon2-cffi's defaults (RFC 9106's second recommended profile: 64 MiB, 3 passes, 4 lanes),
which the library keeps current; ``needs_rehash`` tells when a stored hash used older ones. Hashing takes
tens of milliseconds of CPU, so it runs in a worker thread.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["MAX_PASSWORD_CHARS", "MIN_PASSWORD_CHARS", "Passwords"]

MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 256  # argon2 takes any length; a bound keeps one request from costing much more


class Passwords:
    """Hashes and checks passwords (argon2id, encoded as ``$argon2id$v=19$m=...,t=...,p=...$salt$hash``)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        # Each hash takes 64 MiB and tens of ms of CPU, on routes anyone can call: two at a time per process.
        self._slots = asyncio.Semaphore(2)
        # A hash of nothing anyone knows, checked when the email is unknown: the answer takes as long
        # as for a wrong password, so timing does not tell which accounts exist. Made on first need.
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        """The argon2id encoding of ``password``."""
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, encoded: str | None, password: str) -> bool:
        """Whether ``password`` matches ``encoded``; False for None (no password set) or a malformed hash."""
        if encoded is None and self._dummy is None:
            self._dummy = await self.hash("keyrelay: no such account")
        try:
            async with self._slots:
                matches = await asyncio.to_thread(self._hasher.verify, encoded or self._dummy or "", password)
        except (VerificationError, InvalidHashError):
            return False
        return matches and encoded is not None

    def needs_rehash(self, encoded: str) -> bool:
        """Whether ``encoded`` was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(encoded)
