"""Fills the key cache from the store; a store outage becomes SERVICE_UNAVAILABLE, never a bad-key 401."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from keyrelay.cache.keycache import Principal, principal_marks
from keyrelay.clock import Clock
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.keys.policy import effective_policy
from keyrelay.store.accounts import AccountRepository, GroupRepository
from keyrelay.store.keys import KeyRepository


class StoreLoader:
    """Loads a Principal for a secret hash with three indexed reads (key, account, group), on one connection.

    A key's first request waits for this load; one connection for the three reads spares two checkouts and
    returns of a pooled connection (each a round trip to the driver's thread on SQLite).
    """

    def __init__(
        self, *, keys: KeyRepository, accounts: AccountRepository, groups: GroupRepository, clock: Clock
    ) -> None:
        self._keys = keys
        self._accounts = accounts
        self._groups = groups
        self._clock = clock

    async def __call__(self, secret_hash: str) -> Principal | None:
        """The principal whose current or in-grace previous secret hashes to ``secret_hash``."""
        try:
            async with self._keys.connect() as conn:
                key = await self._keys.find_by_secret(secret_hash=secret_hash, now=self._clock.now_utc(), conn=conn)
                if key is None:
                    return None
                account = await self._accounts.get(account_id=key.account_id, conn=conn)
                if account is None:
                    return None
                group_id = account.group_id
                group = None if group_id is None else await self._groups.get(group_id=group_id, conn=conn)
        except (SQLAlchemyError, OSError) as exc:
            raise GatewayError(
                ErrorType.SERVICE_UNAVAILABLE, "The key store is unreachable; try again shortly."
            ) from exc
        return Principal(
            key=key,
            account=account,
            group=group,
            policy=effective_policy(key, group),
            via_previous_secret=key.secret_hash != secret_hash,
            marks=principal_marks(key, account, group),
        )
