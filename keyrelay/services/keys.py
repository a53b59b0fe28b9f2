"""Key lifecycle: create, update, rotate, revoke. The single write path for keys.

The API, the CLI and the dashboard all come here. This module generates secrets and timestamps,
writes the store, and invalidates the key cache before returning, which is what makes a revocation
take effect on the very next request. Every write names its ``Actor`` and is recorded in the audit log
in its own transaction (``services/audit.py``): ``key.*`` for API keys, ``management_key.*`` for
management keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keyrelay.cache.keycache import KeyCache
from keyrelay.clock import Clock
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.keys.format import KeyType, display_form, generate
from keyrelay.keys.hashing import key_hash
from keyrelay.keys.spec import RATE_FIELDS, KeyCreate, KeyUpdate, usd_to_micros
from keyrelay.services.audit import Actor, AuditTrail
from keyrelay.store.keys import KeyRepository
from keyrelay.store.records import AccountRecord, KeyRecord

_RATE_FIELDS = RATE_FIELDS
_LIST_FIELDS = ("allowed_models", "allowed_providers", "ip_allowlist", "ip_denylist")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key record together with its plaintext, which exists only in this object, once."""

    record: KeyRecord
    plaintext: str
    warnings: tuple[str, ...] = ()


def _rate_values(spec: KeyCreate | KeyUpdate) -> dict[str, int | None]:
    """Columns for ``rate_limits``: null clears every window; an object changes only the windows it names."""
    rates = spec.rate_limits
    if rates is None:
        return dict.fromkeys(_RATE_FIELDS)
    return {name: getattr(rates, name) for name in _RATE_FIELDS if name in rates.model_fields_set}


def _action(key_type: str, verb: str) -> str:
    """The audit action of a write to a key of this type: ``key.<verb>`` or ``management_key.<verb>``."""
    return f"{'management_key' if key_type == KeyType.MANAGEMENT.value else 'key'}.{verb}"


class KeyService:
    """Creates and changes keys; every change invalidates the cache."""

    def __init__(
        self,
        *,
        keys: KeyRepository,
        cache: KeyCache | None,
        clock: Clock,
        audit: AuditTrail,
        known_models: frozenset[str],
        known_regions: frozenset[str] | None = None,
        known_providers: frozenset[str] | None = None,
    ) -> None:
        """Build the service.

        Args:
            keys: The key repository.
            cache: The key cache to invalidate after each write (None in tools without one).
            clock: The source of ``now`` for timestamps and the expiry rule.
            audit: Records each write in the audit log, in the write's transaction.
            known_models: Model ids the configured providers offer; empty when none are configured.
            known_regions: Regions the configured providers serve; None when no provider is configured
                (then no region is judged, as no model is judged without providers).
            known_providers: Names of the configured providers; None when none is configured.
        """
        self._keys = keys
        self._cache = cache
        self._clock = clock
        self._audit = audit
        self._known_models = known_models
        self._known_regions = known_regions
        self._known_providers = known_providers

    def set_catalog(
        self, known_models: frozenset[str], known_regions: frozenset[str] | None, known_providers: frozenset[str] | None
    ) -> None:
        """Replace what key specs are checked against (after a configuration reload); see ``__init__``."""
        self._known_models = known_models
        self._known_regions = known_regions
        self._known_providers = known_providers

    def _warnings(self, spec: KeyCreate | KeyUpdate, present: set[str]) -> tuple[str, ...]:
        """What is accepted but cannot work yet: models, providers and regions no configured provider serves."""
        warnings: list[str] = []
        if "allowed_models" in present and spec.allowed_models and self._known_models:
            unknown = [m for m in spec.allowed_models if m not in self._known_models]
            warnings.extend(f"allowed_models: {m!r} is not offered by any configured provider" for m in unknown)
        if "allowed_providers" in present and spec.allowed_providers and self._known_providers:
            strangers = [p for p in spec.allowed_providers if p not in self._known_providers]
            warnings.extend(f"allowed_providers: {p!r} is not a configured provider" for p in strangers)
        region = spec.region if "region" in present else None
        if region is not None and self._known_regions is not None and region not in self._known_regions:
            served = ", ".join(sorted(self._known_regions)) or "none"
            warnings.append(
                f"region: no configured provider serves region {region!r} (regions served: {served}); "
                "the key cannot make requests until one does"
            )
        return tuple(warnings)

    def _check_expiry(self, values: dict[str, Any], now: datetime) -> None:
        """Refuse an ``expires_at`` that is not in the future: such a key would be dead on arrival.

        Raises:
            GatewayError: INVALID_REQUEST naming ``expires_at``.
        """
        expires_at = values.get("expires_at")
        if expires_at is not None and expires_at <= now:
            raise GatewayError(
                ErrorType.INVALID_REQUEST,
                f"expires_at: must be in the future (it is {expires_at.isoformat()}, now is {now.isoformat()}); "
                "to stop a key now, disable or delete it",
                field="expires_at",
            )

    def _field_values(self, spec: KeyCreate | KeyUpdate, present: set[str]) -> dict[str, Any]:
        now = self._clock.now_utc()
        values: dict[str, Any] = {}
        if "name" in present:
            values["name"] = spec.name
        if "disabled" in present:
            values["disabled"] = bool(spec.disabled)
        if "limit" in present:
            values["limit_micros"] = None if spec.limit is None else usd_to_micros(spec.limit)
        if "limit_reset" in present:
            values["limit_reset"] = spec.limit_reset
        if "expires_at" in present:
            values["expires_at"] = spec.expires_at
        if "expires_in_days" in present:
            days = spec.expires_in_days
            values["expires_at"] = now + timedelta(days=days) if days else None
        if "rate_limits" in present:
            values.update(_rate_values(spec))
        for name in _LIST_FIELDS:
            if name in present:
                values[name] = getattr(spec, name)
        if "region" in present:
            values["region"] = spec.region
        if "expires_at" in present:
            self._check_expiry(values, now)
        return values

    async def create(
        self,
        *,
        account: AccountRecord,
        spec: KeyCreate,
        actor: Actor,
        key_type: KeyType = KeyType.REGULAR,
        is_admin: bool = False,
    ) -> IssuedKey:
        """Issue a new key for an account; the plaintext is returned once and never stored.

        The answer's ``warnings`` name accepted input that cannot work yet (unknown models, unserved region).

        Raises:
            GatewayError: INVALID_REQUEST naming ``expires_at`` when it is not after the clock's now.
        """
        now = self._clock.now_utc()
        plaintext = generate(key_type)
        secret_hash = key_hash(plaintext)
        values = {
            "hash": secret_hash,
            "secret_hash": secret_hash,
            "display": display_form(plaintext),
            "key_type": key_type.value,
            "is_admin": is_admin,
            "account_id": account.id,
            "disabled": False,
            "created_at": now,
            "updated_at": now,
            "usage_micros": 0,
        }
        values.update(self._field_values(spec, set(spec.model_fields_set) | {"name"}))
        audit = self._audit.hook(actor=actor, action=_action(key_type.value, "create"))
        record = await self._keys.insert(values=values, audit=audit)
        if self._cache is not None:
            await self._cache.key_changed(record)  # its mark makes it usable at once where it was unknown
        return IssuedKey(record=record, plaintext=plaintext, warnings=self._warnings(spec, set(spec.model_fields_set)))

    async def update(self, *, record: KeyRecord, spec: KeyUpdate, actor: Actor) -> tuple[KeyRecord, tuple[str, ...]]:
        """Apply the fields present in ``spec``; absent fields stay as they are.

        Returns:
            The updated record and the warnings about the fields set (as for ``create``).

        Raises:
            GatewayError: INVALID_REQUEST naming ``expires_at`` when it is set to a time not after the clock's
                now; NOT_FOUND when the key is gone.
        """
        # A new limit_reset needs no reset here: the spend ledger keeps each reset kind's periods apart,
        # so the new kind's current period counts only what was admitted under that kind (as the limits
        # backends' counters, named by kind and period, do).
        values = self._field_values(spec, set(spec.model_fields_set))
        values["updated_at"] = self._clock.now_utc()
        audit = self._audit.hook(actor=actor, action=_action(record.key_type, "update"))
        updated = await self._keys.update(key_hash=record.hash, values=values, audit=audit)
        if updated is None:
            raise GatewayError(ErrorType.NOT_FOUND, "No such key.")
        if self._cache is not None:
            await self._cache.key_changed(updated)
        return updated, self._warnings(spec, set(spec.model_fields_set))

    async def rotate(self, *, record: KeyRecord, grace_seconds: int, actor: Actor) -> IssuedKey:
        """Replace the secret, keeping the record; the old secret works for ``grace_seconds`` more."""
        now = self._clock.now_utc()
        plaintext = generate(KeyType(record.key_type))
        values: dict[str, Any] = {
            "secret_hash": key_hash(plaintext),
            "display": display_form(plaintext),
            "prev_secret_hash": record.secret_hash if grace_seconds > 0 else None,
            "prev_secret_expires_at": now + timedelta(seconds=grace_seconds) if grace_seconds > 0 else None,
            "updated_at": now,
        }
        audit = self._audit.hook(actor=actor, action=_action(record.key_type, "rotate"))
        updated = await self._keys.update(key_hash=record.hash, values=values, audit=audit)
        if updated is None:
            raise GatewayError(ErrorType.NOT_FOUND, "No such key.")
        if self._cache is not None:
            await self._cache.key_changed(updated)
        return IssuedKey(record=updated, plaintext=plaintext)

    async def revoke(self, *, record: KeyRecord, actor: Actor) -> None:
        """Delete a key for good: it fails on the next request and cannot be restored."""
        now = self._clock.now_utc()
        values = {"deleted_at": now, "updated_at": now, "prev_secret_hash": None, "prev_secret_expires_at": None}
        audit = self._audit.hook(actor=actor, action=_action(record.key_type, "revoke"))
        revoked = await self._keys.update(key_hash=record.hash, values=values, audit=audit)
        if revoked is None:
            raise GatewayError(ErrorType.NOT_FOUND, "No such key.")
        if self._cache is not None:
            await self._cache.key_changed(revoked)
