"""What a key holder may read about their own key: ``GET /v1/models``, ``/v1/models/{id}`` and ``/v1/key``.

Model answers follow OpenAI's ``model`` object (https://platform.openai.com/docs/api-reference/models)
and use the one resolution rule of :class:`keyrelay.routing.table.RouteTable`. ``/v1/key`` shows the key
its own settings with inheritance resolved and every spend level that can refuse it (key limit, group
quota, account balance) with what is left, never the account's other data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from keyrelay.cache.keycache import Principal
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.admit import Pending, spend_levels
from keyrelay.gateway.authorize import channel_allowed
from keyrelay.keys.spec import micros_to_usd
from keyrelay.limits.backend import LimitsBackend, SpendLevel
from keyrelay.routing.table import RouteTable
from keyrelay.store.keys import KeyRepository


def model_not_found(model: str) -> GatewayError:
    """The 404 for a model name that resolves to nothing this key may call."""
    return GatewayError(
        ErrorType.MODEL_NOT_FOUND,
        f"The model {model!r} does not exist or is not available to this key. "
        "GET /v1/models lists the models this key may call.",
        field="model",
    )


def list_models(principal: Principal, routes: RouteTable) -> dict[str, Any]:
    """``GET /v1/models``: every model id this key may call, each owned by the first provider it resolves to."""
    data: dict[str, dict[str, Any]] = {}
    for channel in routes.models:
        model = channel.model
        if model in data:
            continue
        allowed = [c for c in routes.resolve(model) if channel_allowed(principal, c, routes)]
        if allowed:
            data[model] = {"id": model, "object": "model", "created": 0, "owned_by": allowed[0].provider}
    return {"object": "list", "data": list(data.values())}


def anthropic_models(openai_list: dict[str, Any]) -> dict[str, Any]:
    """The model list in Anthropic's shape (https://docs.anthropic.com/en/api/models-list), one page."""
    data = [
        {"type": "model", "id": m["id"], "display_name": m["id"], "created_at": "1970-01-01T00:00:00Z"}
        for m in openai_list["data"]
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def anthropic_model(openai_model: dict[str, Any]) -> dict[str, Any]:
    """One model in Anthropic's shape (https://docs.anthropic.com/en/api/models)."""
    model = openai_model["id"]
    return {"type": "model", "id": model, "display_name": model, "created_at": "1970-01-01T00:00:00Z"}


_GEMINI_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]


def gemini_model(openai_model: dict[str, Any]) -> dict[str, Any]:
    """One model in Gemini's ``Model`` shape (https://ai.google.dev/api/models#Model)."""
    model = openai_model["id"]
    return {
        "name": f"models/{model}",
        "baseModelId": model,
        "version": "001",
        "displayName": model,
        "description": f"{model}, served by keyrelay",
        "supportedGenerationMethods": _GEMINI_METHODS,
    }


def gemini_models(openai_list: dict[str, Any]) -> dict[str, Any]:
    """The model list in Gemini's shape (https://ai.google.dev/api/models#method:-models.list), one page."""
    return {"models": [gemini_model(m) for m in openai_list["data"]]}


def retrieve_model(principal: Principal, routes: RouteTable, model: str) -> dict[str, Any]:
    """``GET /v1/models/{model}``: the model as the key would be served it.

    Raises:
        GatewayError: MODEL_NOT_FOUND when the name resolves to no channel the key may use.
    """
    allowed = [c for c in routes.resolve(model) if channel_allowed(principal, c, routes)]
    if not allowed:
        raise model_not_found(model)
    return {"id": model, "object": "model", "created": 0, "owned_by": allowed[0].provider}


def callable_models(principal: Principal, routes: RouteTable) -> list[str] | None:
    """The model ids the key can call, or None when nothing restricts it (an empty list: it can call none)."""
    policy = principal.policy
    if policy.allowed_models is None and policy.allowed_providers is None and policy.region is None:
        return None
    return [entry["id"] for entry in list_models(principal, routes)["data"]]


def _reset_at(level: SpendLevel, now: datetime) -> str | None:
    if level.resets_in_s is None:
        return None
    return datetime.fromtimestamp(now.timestamp() + level.resets_in_s, now.tzinfo).isoformat()


async def key_info(
    principal: Principal,
    *,
    routes: RouteTable,
    limits: LimitsBackend,
    keys: KeyRepository,
    pending: Pending,
    now: datetime,
) -> dict[str, Any]:
    """``GET /v1/key``: the key's own view.

    ``limits`` lists each spend level that can refuse the key, in the order they are checked:
    ``{"scope": "account"|"group"|"key", "limit": USD, "remaining": USD, "reset": period|None,
    "resets_at": ISO-8601 UTC|None}``; ``limit``/``limit_remaining`` repeat the key level for clients
    of the OpenRouter-style shape.

    Raises:
        GatewayError: SERVICE_UNAVAILABLE when the store or the limits backend cannot be read.
    """
    key, policy = principal.key, principal.policy
    levels = []
    key_remaining: int | None = None
    try:
        for level in spend_levels(principal, now, pending):
            spent = await limits.spent(level)
            remaining = max(0, level.cap_micros - spent)
            if level.scope == "key":
                key_remaining = remaining
            reset = {"key": policy.limit_reset, "group": principal.group.quota_reset if principal.group else None}
            levels.append(
                {
                    "scope": level.scope,
                    "limit": micros_to_usd(level.cap_micros),
                    "remaining": micros_to_usd(remaining),
                    "reset": reset.get(level.scope),
                    "resets_at": _reset_at(level, now),
                }
            )
        # Not the hot path: one read of the key's stored lifetime usage (the cached copy is a snapshot).
        stored = await keys.get(key_hash=key.hash)
    except (SQLAlchemyError, OSError) as exc:
        raise GatewayError(ErrorType.SERVICE_UNAVAILABLE, "The key store is unreachable; try again shortly.") from exc
    usage = (stored.usage_micros if stored else key.usage_micros) + pending.key(key.hash)
    limit = policy.limit_micros
    return {
        "data": {
            "name": key.name,
            "label": key.display,
            "limit": None if limit is None else micros_to_usd(limit),
            "limit_remaining": None if key_remaining is None else micros_to_usd(key_remaining),
            "limit_reset": policy.limit_reset,
            "limits": levels,
            "usage": micros_to_usd(usage),
            "rate_limits": {
                "rpm": policy.rpm,
                "per_5h": policy.per_5h,
                "per_1d": policy.per_1d,
                "per_7d": policy.per_7d,
                "tpm": policy.tpm,
                "max_concurrent": policy.max_concurrent,
            },
            # What this key can actually call, after its own list, its group's and the providers'.
            "allowed_models": callable_models(principal, routes),
            "allowed_providers": sorted(policy.allowed_providers) if policy.allowed_providers is not None else None,
            "region": policy.region,
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        }
    }
