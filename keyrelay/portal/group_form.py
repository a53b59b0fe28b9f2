"""The group form of the admin pages: HTML form fields to ``GroupCreate`` / ``GroupUpdate`` input, and back.

An empty field means "not set": no default for the group's keys, no quota, no ceiling on models or
providers, a price multiplier of 1. Parsing and errors are ``forms.py``'s.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData

from keyrelay.keys.spec import RATE_FIELDS
from keyrelay.portal.forms import FormField, body_of, shown, text_of, usd_text, validated
from keyrelay.services.inputs import GroupCreate, GroupUpdate
from keyrelay.store.records import GroupRecord

__all__ = ["GROUP_FIELDS", "group_create", "group_form_values", "group_update", "group_values"]

GROUP_FIELDS: tuple[FormField, ...] = (
    FormField("description", "Description", "text"),
    FormField(
        "price_multiplier",
        "Price multiplier",
        "decimal",
        "Multiplies every price for the group's accounts; 1 when empty.",
    ),
    FormField("default_limit", "Default key spend limit (USD)", "money", "For keys without their own; 0 for no limit."),
    FormField("default_limit_reset", "Default limit resets", "reset"),
    FormField("rpm", "Requests per minute", "int"),
    FormField("per_5h", "Requests per 5 hours", "int"),
    FormField("per_1d", "Requests per day", "int"),
    FormField("per_7d", "Requests per 7 days", "int"),
    FormField("tpm", "Tokens per minute", "int"),
    FormField("max_concurrent", "Concurrent requests", "int"),
    FormField("allowed_models", "Allowed models", "list", "A ceiling for every key of the group; empty: any."),
    FormField("allowed_providers", "Allowed providers", "list", "A ceiling for every key of the group; empty: any."),
    FormField("quota", "Group quota (USD)", "money", "Spend shared by every key of the group's accounts."),
    FormField("quota_reset", "Quota resets", "reset"),
)


def group_form_values(form: FormData) -> dict[str, str]:
    """The raw text of every group field (and the name) as typed, to show the form again after an error."""
    return {name: text_of(form, name) for name in ("name", *(f.name for f in GROUP_FIELDS))}


def _body(form: FormData, *, every_field: bool) -> dict[str, Any]:
    nested = frozenset(RATE_FIELDS)
    body = body_of(form, GROUP_FIELDS, nested=nested, into="default_rate_limits", every_field=every_field)
    body["name"] = text_of(form, "name")
    return body


def group_create(form: FormData) -> GroupCreate:
    """A ``GroupCreate`` from the form; raises INVALID_REQUEST naming the field at fault."""
    return validated(GroupCreate, _body(form, every_field=False), nested=("default_rate_limits",))


def group_update(form: FormData) -> GroupUpdate:
    """A ``GroupUpdate`` setting every field of the form (empty clears it)."""
    body = _body(form, every_field=True)
    if body.get("price_multiplier") is None:
        body.pop("price_multiplier", None)  # empty: leave it (the store has no "unset" multiplier)
    return validated(GroupUpdate, body, nested=("default_rate_limits",))


def group_values(group: GroupRecord) -> dict[str, str]:
    """A group's stored values as the form shows them."""
    values = {"name": group.name, "description": group.description or ""}
    values["price_multiplier"] = str(group.price_multiplier_ppm / 1_000_000)
    values["default_limit"] = "" if group.default_limit_micros is None else usd_text(group.default_limit_micros)
    values["default_limit_reset"] = group.default_limit_reset or ""
    for name in RATE_FIELDS:
        values[name] = shown(getattr(group, f"default_{name}"))
    values["allowed_models"] = shown(group.allowed_models)
    values["allowed_providers"] = shown(group.allowed_providers)
    values["quota"] = "" if group.quota_micros is None else usd_text(group.quota_micros)
    values["quota_reset"] = group.quota_reset or ""
    return values
