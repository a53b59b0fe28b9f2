"""The effective policy of a key: its own fields over its group's defaults, parsed once at cache fill."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from keyrelay.limits.backend import RequestWindow
from keyrelay.limits.windows import WINDOW_SECONDS
from keyrelay.store.records import GroupRecord, KeyRecord

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything authorization and admission need, with inheritance already resolved.

    ``None`` for a limit means unlimited (after inheritance), as does ``0`` from the user. Request
    windows and the spend limit inherit the group's default when the key leaves them empty; the
    model and provider whitelists of the group are ceilings: a key's own model list is checked
    together with the group's (``model_ceiling``), each entry matching a bare model id or a
    ``provider/model`` name, and the provider lists are intersected (see ``_pick_list``).

    Nothing in it is the key's alone (its expiry is read from the key), so keys with the same limits and rules
    have equal policies, and the key cache holds one of them for all (``cache/keycache.py``).
    """

    limit_micros: int | None
    limit_reset: str | None
    rpm: int | None
    per_5h: int | None
    per_1d: int | None
    per_7d: int | None
    tpm: int | None
    max_concurrent: int | None
    allowed_models: frozenset[str] | None
    model_ceiling: frozenset[str] | None  # the group's model list when the key narrows it with its own
    allowed_providers: frozenset[str] | None
    ip_allowlist: tuple[Network, ...]
    ip_denylist: tuple[Network, ...]
    region: str | None
    price_multiplier_ppm: int
    # The request windows the admission checks (rpm, per_5h, per_1d, per_7d that are set), built once here
    # rather than per request; derived from the fields above, so not compared.
    windows: tuple[RequestWindow, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        windows = tuple(
            RequestWindow(name, WINDOW_SECONDS[name], limit)
            for name in REQUEST_WINDOWS
            if (limit := getattr(self, name))
        )
        object.__setattr__(self, "windows", windows)


REQUEST_WINDOWS = ("rpm", "per_5h", "per_1d", "per_7d")


def _pick(own: int | None, default: int | None) -> int | None:
    value = own if own is not None else default
    return value or None  # 0 means "no limit"


def _as_set(value: tuple[str, ...] | None) -> frozenset[str] | None:
    return frozenset(value) if value else None


def _pick_list(own: tuple[str, ...] | None, group: tuple[str, ...] | None) -> frozenset[str] | None:
    """A whitelist: the group's list is a ceiling the key may narrow but never widen.

    An empty or missing list on the key inherits the group's; with both set, the key gets their
    intersection (which may be empty: then nothing is allowed, and requests say so).
    """
    if not own:
        return frozenset(group) if group else None
    if not group:
        return frozenset(own)
    return frozenset(own) & frozenset(group)


def effective_policy(key: KeyRecord, group: GroupRecord | None) -> Policy:
    """Resolve a key's policy against its group's defaults."""
    g = group
    own_limit_set = key.limit_micros is not None
    return Policy(
        limit_micros=_pick(key.limit_micros, g.default_limit_micros if g else None),
        limit_reset=key.limit_reset if own_limit_set else (g.default_limit_reset if g else None),
        rpm=_pick(key.rpm, g.default_rpm if g else None),
        per_5h=_pick(key.per_5h, g.default_per_5h if g else None),
        per_1d=_pick(key.per_1d, g.default_per_1d if g else None),
        per_7d=_pick(key.per_7d, g.default_per_7d if g else None),
        tpm=_pick(key.tpm, g.default_tpm if g else None),
        max_concurrent=_pick(key.max_concurrent, g.default_max_concurrent if g else None),
        allowed_models=frozenset(key.allowed_models or ()) or _as_set(g.allowed_models if g else None),
        model_ceiling=_as_set(g.allowed_models if g else None) if key.allowed_models else None,
        allowed_providers=_pick_list(key.allowed_providers, g.allowed_providers if g else None),
        ip_allowlist=tuple(ipaddress.ip_network(c, strict=False) for c in key.ip_allowlist or ()),
        ip_denylist=tuple(ipaddress.ip_network(c, strict=False) for c in key.ip_denylist or ()),
        region=key.region,
        price_multiplier_ppm=g.price_multiplier_ppm if g else 1_000_000,
    )
