"""The key form of the portal: HTML form fields to ``KeyCreate`` / ``KeyUpdate`` input, and back for display.

Every field is text in a form. An empty field means "inherit the group's default" (``None`` in the key
model), as in the API; ``0`` in a limit means "no limit". Lists (models, providers, IP rules) are typed
one per line or separated by commas. The expiry is a date and time in UTC (``datetime-local``).

Parsing and errors are ``forms.py``'s: ``GatewayError(INVALID_REQUEST)`` naming the form field.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData

from keyrelay.keys.spec import RATE_FIELDS, KeyCreate, KeyUpdate
from keyrelay.portal.forms import FormField, body_of, shown, text_of, usd_text, validated
from keyrelay.store.records import GroupRecord, KeyRecord

__all__ = [
    "FIELDS",
    "GROUP_DEFAULT",
    "FormField",
    "form_values",
    "group_placeholders",
    "key_create",
    "key_update",
    "record_values",
]

FIELDS: tuple[FormField, ...] = (
    FormField("limit", "Spend limit (USD)", "money", "0 for no limit."),
    FormField("limit_reset", "Limit resets", "reset"),
    FormField("expires_at", "Expires (UTC)", "datetime"),
    FormField("rpm", "Requests per minute", "int"),
    FormField("per_5h", "Requests per 5 hours", "int"),
    FormField("per_1d", "Requests per day", "int"),
    FormField("per_7d", "Requests per 7 days", "int"),
    FormField("tpm", "Tokens per minute", "int"),
    FormField("max_concurrent", "Concurrent requests", "int"),
    FormField("allowed_models", "Allowed models", "list", "One per line or comma-separated."),
    FormField("allowed_providers", "Allowed providers", "list", "One per line or comma-separated."),
    FormField("ip_allowlist", "IP allowlist", "list", "Addresses or CIDRs, e.g. 203.0.113.0/24."),
    FormField("ip_denylist", "IP denylist", "list", "Addresses or CIDRs."),
    FormField("region", "Region", "text", "Only upstreams in this region serve the key."),
)
_BY_NAME = {f.name: f for f in FIELDS}
GROUP_DEFAULT = "group default: "  # how a placeholder begins when the group gives the field a default


def form_values(form: FormData) -> dict[str, str]:
    """The raw text of every key field (and the name) as typed, to show the form again after an error."""
    return {name: text_of(form, name) for name in ("name", *_BY_NAME)}


def _body(form: FormData, *, every_field: bool) -> dict[str, Any]:
    """The key model's input from a form: empty fields left out, or (``every_field``) given as None."""
    return body_of(form, FIELDS, nested=frozenset(RATE_FIELDS), into="rate_limits", every_field=every_field)


def key_create(form: FormData) -> KeyCreate:
    """A ``KeyCreate`` from the Create key form; raises INVALID_REQUEST naming the field at fault."""
    body = _body(form, every_field=False)
    body["name"] = text_of(form, "name")
    return validated(KeyCreate, body, nested=("rate_limits",))


def key_update(form: FormData) -> KeyUpdate:
    """A ``KeyUpdate`` setting every field of the edit form (empty clears to the group default)."""
    body = _body(form, every_field=True)
    body["name"] = text_of(form, "name")
    return validated(KeyUpdate, body, nested=("rate_limits",))


def record_values(record: KeyRecord) -> dict[str, str]:
    """A key's stored values as the edit form shows them."""
    values = {"name": record.name}
    for field in FIELDS:
        if field.name == "limit":
            values["limit"] = "" if record.limit_micros is None else usd_text(record.limit_micros)
        else:
            values[field.name] = shown(getattr(record, field.name))
    return values


def group_placeholders(group: GroupRecord | None) -> dict[str, str]:
    """What an empty field inherits, shown as its placeholder ("inherits: …")."""
    if group is None:
        return {f.name: _nothing(f) for f in FIELDS}
    defaults: dict[str, object] = {
        "limit": None if group.default_limit_micros is None else usd_text(group.default_limit_micros),
        "limit_reset": group.default_limit_reset,
        "allowed_models": ", ".join(group.allowed_models) if group.allowed_models else None,
        "allowed_providers": ", ".join(group.allowed_providers) if group.allowed_providers else None,
    }
    for name in RATE_FIELDS:
        defaults[name] = getattr(group, f"default_{name}")
    out: dict[str, str] = {}
    for field in FIELDS:
        value = defaults.get(field.name)
        if value is not None:
            out[field.name] = f"{GROUP_DEFAULT}{value}"
        else:
            out[field.name] = _nothing(field)
    return out


def _nothing(field: FormField) -> str:
    """The placeholder of a field that inherits nothing."""
    if field.kind in ("money", "int"):
        return "no limit"
    return {"ip_denylist": "none", "region": "any"}.get(field.name, "any" if field.kind == "list" else "")
