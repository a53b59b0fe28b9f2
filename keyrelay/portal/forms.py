"""Form fields of the portal's editing forms (keys, groups): typed text in, model input out, and back.

Every field is text in an HTML form. An empty field means "not set" (``None`` in the service's input model:
inherit, or no limit). Amounts are USD, counts whole numbers, lists one item per line or comma-separated,
times ``datetime-local`` values in UTC. Errors are ``GatewayError(INVALID_REQUEST)`` naming the form field;
the input models' own rules (pydantic) give the message, so the portal and the API refuse the same input
for the same reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from keyrelay.errors import ErrorType, GatewayError

__all__ = ["FormField", "body_of", "is_digits", "parse_field", "shown", "text_of", "usd_text", "validated"]

M = TypeVar("M", bound=BaseModel)
_MAX_CHARS = 20_000  # a list field of a thousand CIDRs fits; more is not something a person typed
RESETS = ("daily", "weekly", "monthly")


@dataclass(frozen=True, slots=True)
class FormField:
    """One input of a form: its name, visible label, kind and a hint."""

    name: str
    label: str
    kind: str  # "text" | "money" | "int" | "decimal" | "reset" | "datetime" | "list"
    hint: str = ""


_DIGITS = re.compile(r"[0-9]+")


def is_digits(text: str) -> bool:
    """Whether ``text`` is ASCII digits only (``str.isdigit`` also admits "²", which ``int`` refuses)."""
    return _DIGITS.fullmatch(text) is not None


def text_of(form: FormData, name: str) -> str:
    """A text field, stripped ('' when missing or a file); raises INVALID_REQUEST when implausibly long."""
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    if len(value) > _MAX_CHARS:
        raise GatewayError(ErrorType.INVALID_REQUEST, "This field is too long.", field=name)
    return value.strip()


def body_of(
    form: FormData, fields: tuple[FormField, ...], *, nested: frozenset[str], into: str, every_field: bool
) -> dict[str, Any]:
    """An input model's body from ``form``: each of ``fields`` parsed, those named in ``nested`` under ``into``.

    An empty field is left out, or (``every_field``, an edit form that sets everything) given as None.
    Raises INVALID_REQUEST naming the first field that cannot be read.
    """
    body: dict[str, Any] = {}
    inner: dict[str, Any] = {}
    for field in fields:
        text = text_of(form, field.name)
        if not text and not every_field:
            continue
        value = parse_field(field, text) if text else None
        (inner if field.name in nested else body)[field.name] = value
    if inner:
        body[into] = inner
    return body


def parse_field(field: FormField, text: str) -> Any:
    """The model value of one non-empty field; raises INVALID_REQUEST naming it when it cannot be read."""
    if field.kind in ("money", "decimal"):
        example = "5 or 12.50" if field.kind == "money" else "1 or 0.8"
        try:
            value = Decimal(text.replace(",", "").removeprefix("$"))
        except InvalidOperation:
            value = Decimal("NaN")
        if not value.is_finite():
            what = "an amount in USD" if field.kind == "money" else "a number"
            raise GatewayError(ErrorType.INVALID_REQUEST, f"Enter {what}, e.g. {example}.", field=field.name)
        return value
    if field.kind == "int":
        if not is_digits(text) or len(text) > 12:
            raise GatewayError(ErrorType.INVALID_REQUEST, "Enter a whole number, 0 for no limit.", field=field.name)
        return int(text)
    if field.kind == "list":
        return [item.strip() for line in text.splitlines() for item in line.split(",") if item.strip()]
    if field.kind == "reset":
        if text not in RESETS:
            raise GatewayError(ErrorType.INVALID_REQUEST, "Choose daily, weekly, monthly or never.", field=field.name)
        return text
    if field.kind == "datetime":
        return f"{text}:00" if len(text) == 16 else text  # datetime-local omits the seconds; no offset is UTC
    return text


def validated(model: type[M], body: dict[str, Any], *, nested: tuple[str, ...] = ()) -> M:
    """``model`` from ``body``; a pydantic error becomes INVALID_REQUEST naming the form field.

    A field inside one of the ``nested`` objects (``rate_limits.rpm``) is named by its last part (``rpm``).
    """
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ())]
        name = loc[-1] if loc and loc[0] in nested else (loc[0] if loc else "name")
        message = str(first.get("msg", "Not valid.")).removeprefix("Value error, ")
        raise GatewayError(ErrorType.INVALID_REQUEST, f"{message[:1].upper()}{message[1:]}.", field=name) from None


def shown(value: object) -> str:
    """A stored value as a form shows it."""
    if value is None:
        return ""
    if isinstance(value, tuple | list):
        return "\n".join(str(v) for v in value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M")
    return str(value)


def usd_text(micros: int) -> str:
    """Micro-dollars as the plain USD number a form shows (``12.5``, ``0.000001``)."""
    return f"{Decimal(micros) / Decimal(1_000_000):f}".rstrip("0").rstrip(".") or "0"
