"""Fills the key cache from the store; a store outage becomes SERVICE_UNAVAILABLE, never a bad-key 401."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from keyrelay.cache.keycache import Principal, principal_marks
from keyrelay.clock import Clock
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.keys.policy import effective_policy
from keyrelay.store.keys import KeyRepository


class StoreLoader:
    """Loads a Principal for a secret hash: the key, its account and group in one read, their spend in another.

    A key's first request waits for this load (``KeyRepository.find_with_owner``).
    """

    def __init__(self, *, keys: KeyRepository, clock: Clock) -> None:
        self._keys = keys
        self._clock = clock

    async def __call__(self, secret_hash: str) -> Principal | None:
        """The principal whose current or in-grace previous secret hashes to ``secret_hash``."""
        try:
            found = await self._keys.find_with_owner(secret_hash=secret_hash, now=self._clock.now_utc())
        except (SQLAlchemyError, OSError) as exc:
            raise GatewayError(
                ErrorType.SERVICE_UNAVAILABLE, "The key store is unreachable; try again shortly."
            ) from exc
        if found is None:
            return None
        key, account, group = found
        return Principal(
            key=key,
            account=account,
            group=group,
            policy=effective_policy(key, group),
            via_previous_secret=key.secret_hash != secret_hash,
            marks=principal_marks(key, account, group),
        )
