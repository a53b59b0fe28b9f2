"""Authorization: a pure function of principal, client IP, requested channels and time. No I/O."""

from __future__ import annotations

import functools
import ipaddress
from datetime import datetime

from keyrelay.cache.keycache import Principal
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.routing.table import Channel

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str | None) -> IPAddress | None:
    """An IP address, with IPv4-mapped IPv6 unwrapped; None when unparseable."""
    if not text:
        return None
    return _parse_ip(text)


@functools.lru_cache(maxsize=8192)
def _parse_ip(text: str) -> IPAddress | None:
    # Clients come back from the same few addresses; ip_address() costs microseconds each time.
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


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
    if policy.expires_at is not None and policy.expires_at <= now:
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


def _names(rule: frozenset[str] | None, channel: Channel) -> bool:
    return rule is None or channel.model in rule or channel.qualified_name in rule


def channel_allowed(principal: Principal, channel: Channel) -> bool:
    """Whether the key's model, provider and region rules admit this channel."""
    policy = principal.policy
    if not (_names(policy.allowed_models, channel) and _names(policy.model_ceiling, channel)):
        return False
    if policy.allowed_providers is not None and channel.provider not in policy.allowed_providers:
        return False
    return policy.region is None or channel.region == policy.region


def allowed_channels(principal: Principal, requested: str, channels: tuple[Channel, ...]) -> tuple[Channel, ...]:
    """The channels this key may use for the requested model.

    Raises:
        GatewayError: ACCESS_DENIED naming the rule when no channel is allowed.
    """
    allowed = tuple(c for c in channels if channel_allowed(principal, c))
    if allowed:
        return allowed
    policy = principal.policy
    channel = channels[0]
    if not any(_names(policy.allowed_models, c) and _names(policy.model_ceiling, c) for c in channels):
        raise GatewayError(ErrorType.ACCESS_DENIED, f"This key may not use model {requested!r}.")
    if policy.allowed_providers is not None and not any(c.provider in policy.allowed_providers for c in channels):
        raise GatewayError(ErrorType.ACCESS_DENIED, f"This key may not use provider {channel.provider!r}.")
    raise GatewayError(
        ErrorType.ACCESS_DENIED, f"This key is pinned to region {policy.region!r}; no channel serves it."
    )
