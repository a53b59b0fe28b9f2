"""Authorization: a pure function of principal, client IP, requested channels and time. No I/O."""

from __future__ import annotations

from datetime import datetime

from keyrelay.cache.keycache import Principal
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.client_ip import IPAddress
from keyrelay.routing.table import Channel, RouteTable


def authorize_key(principal: Principal, client_ip: IPAddress | None, now: datetime) -> None:
    """Checks that do not depend on the request body: status, expiry, account, IP rules.

    Raises:
        GatewayError: The first failing check, in the documented order.
    """
    key = principal.key
    policy = principal.policy
    if principal.via_previous_secret and (key.prev_secret_expires_at is None or key.prev_secret_expires_at <= now):
        raise GatewayError(ErrorType.INVALID_API_KEY)
    if key.disabled:
        raise GatewayError(ErrorType.API_KEY_DISABLED)
    if key.expires_at is not None and key.expires_at <= now:
        raise GatewayError(ErrorType.API_KEY_EXPIRED)
    if not principal.account.active:
        raise GatewayError(ErrorType.USER_INACTIVE)
    if policy.ip_allowlist or policy.ip_denylist:
        if client_ip is None:
            raise GatewayError(ErrorType.ACCESS_DENIED, "The client IP address could not be determined.")
        if policy.ip_denylist and any(client_ip in net for net in policy.ip_denylist):
            raise GatewayError(ErrorType.ACCESS_DENIED, f"Requests from {client_ip} are denied for this key.")
        if policy.ip_allowlist and not any(client_ip in net for net in policy.ip_allowlist):
            raise GatewayError(ErrorType.ACCESS_DENIED, f"Requests from {client_ip} are not allowed for this key.")


def _admits(rule: frozenset[str] | None, channel: Channel, routes: RouteTable) -> bool:
    # An entry admits exactly the channels its name resolves to (RouteTable.resolve), nothing else.
    return rule is None or channel.qualified_name in routes.whitelisted(rule)


def channel_allowed(principal: Principal, channel: Channel, routes: RouteTable) -> bool:
    """Whether the key's model, provider and region rules admit this channel."""
    policy = principal.policy
    if not (_admits(policy.allowed_models, channel, routes) and _admits(policy.model_ceiling, channel, routes)):
        return False
    if policy.allowed_providers is not None and channel.provider not in policy.allowed_providers:
        return False
    return policy.region is None or channel.region == policy.region


def allowed_channels(
    principal: Principal, requested: str, channels: tuple[Channel, ...], routes: RouteTable
) -> tuple[Channel, ...]:
    """The channels this key may use for the requested model.

    Raises:
        GatewayError: ACCESS_DENIED naming the rule when no channel is allowed.
    """
    allowed = tuple(c for c in channels if channel_allowed(principal, c, routes))
    if allowed:
        return allowed
    policy = principal.policy
    channel = channels[0]
    if not any(
        _admits(policy.allowed_models, c, routes) and _admits(policy.model_ceiling, c, routes) for c in channels
    ):
        raise GatewayError(ErrorType.ACCESS_DENIED, f"This key may not use model {requested!r}.")
    if policy.allowed_providers is not None and not any(c.provider in policy.allowed_providers for c in channels):
        raise GatewayError(ErrorType.ACCESS_DENIED, f"This key may not use provider {channel.provider!r}.")
    raise GatewayError(
        ErrorType.ACCESS_DENIED, f"This key is pinned to region {policy.region!r}; no channel serves it."
    )
