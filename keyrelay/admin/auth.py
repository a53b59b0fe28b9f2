"""Management-key authentication for /api/v1: own-account scope, or admin scope."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from keyrelay.cache.keycache import Principal
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.client_ip import ClientAddress
from keyrelay.keys.format import KeyType, key_type_of, looks_like_key
from keyrelay.keys.hashing import key_hash
from keyrelay.runtime import Runtime
from keyrelay.services.audit import Actor
from keyrelay.store.records import KeyRecord


@dataclass(frozen=True, slots=True)
class Manager:
    """The authenticated caller of the management API, and the client address it called from."""

    principal: Principal
    ip: str | None = None

    @property
    def account_id(self) -> int:
        """The caller's account."""
        return self.principal.account.id

    @property
    def is_admin(self) -> bool:
        """Whether the caller may manage every account, group and key."""
        return self.principal.key.is_admin

    @property
    def actor(self) -> Actor:
        """Who the audit log names for this caller's changes: the key's name and display form, and the IP."""
        return Actor.management_key(self.principal.key, ip=self.ip)

    def can_see(self, record: KeyRecord) -> bool:
        """Whether this caller may read or change a key."""
        return record.key_type == KeyType.REGULAR.value and (self.is_admin or record.account_id == self.account_id)

    def require_admin(self) -> None:
        """Raise FORBIDDEN unless the caller holds an admin management key."""
        if not self.is_admin:
            raise GatewayError(ErrorType.FORBIDDEN, "This operation needs an admin management key.")


def runtime_of(request: Request) -> Runtime:
    """The process runtime the app was built with."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def require_manager(request: Request) -> Manager:
    """FastAPI dependency: the management key of the request, checked like any key."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise GatewayError(ErrorType.INVALID_API_KEY, "Send a management key as 'Authorization: Bearer kr_mgmt_...'.")
    if key_type_of(token) is KeyType.REGULAR:
        raise GatewayError(
            ErrorType.INVALID_API_KEY, "API keys (kr_live_) cannot call the management API; use a kr_mgmt_ key."
        )
    if not looks_like_key(token):
        raise GatewayError(ErrorType.INVALID_API_KEY)
    runtime = runtime_of(request)
    principal = await runtime.cache.get(key_hash(token))
    if principal is not None:
        # Revoked through another process: refused now (with Redis down, as without Redis: the poll's bound).
        principal = await runtime.cache.current(principal, strict=False)
    if principal is None or principal.key.key_type != KeyType.MANAGEMENT.value:
        raise GatewayError(ErrorType.INVALID_API_KEY)
    now = runtime.clock.now_utc()
    if principal.via_previous_secret and (
        principal.key.prev_secret_expires_at is None or principal.key.prev_secret_expires_at <= now
    ):
        raise GatewayError(ErrorType.INVALID_API_KEY)
    if principal.key.disabled:
        raise GatewayError(ErrorType.API_KEY_DISABLED)
    if principal.key.expires_at is not None and principal.key.expires_at <= now:
        raise GatewayError(ErrorType.API_KEY_EXPIRED)
    if not principal.account.active:
        raise GatewayError(ErrorType.USER_INACTIVE)
    settings = runtime.settings
    ip = ClientAddress(settings.trusted_proxy_networks, settings.trusted_proxy_header)(request.scope)
    return Manager(principal, ip=None if ip is None else str(ip))
