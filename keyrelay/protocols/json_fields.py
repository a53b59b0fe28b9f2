"""Checks of a parsed JSON request body's fields, shared by the translators: each names the field at fault.

Every check raises ``GatewayError(INVALID_REQUEST, field=...)`` with a message naming the field, so that a
client sees which part of its body is wrong (a 400, never a 5xx).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from keyrelay.errors import ErrorType, GatewayError


def invalid(message: str, field: str) -> GatewayError:
    """An INVALID_REQUEST error naming ``field``."""
    return GatewayError(ErrorType.INVALID_REQUEST, message, field=field)


def body_object(raw: bytes) -> dict[str, Any]:
    """A request body parsed as a JSON object (RFC 8259). Raises: GatewayError naming ``body`` otherwise."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid("The request body is not valid JSON.", "body") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", "body")
    return body


def count_objects(value: object, match: Callable[[dict[str, Any]], bool]) -> int:
    """How many objects inside ``value`` (a parsed JSON value, any depth: iterative) ``match`` accepts."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += match(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def text(value: object, field: str) -> str:
    """``value`` if it is a string. Raises: GatewayError naming ``field``."""
    if not isinstance(value, str):
        raise invalid(f"{field} must be a string.", field)
    return value


def obj(value: object, field: str) -> dict[str, Any]:
    """``value`` if it is a JSON object. Raises: GatewayError naming ``field``."""
    if not isinstance(value, dict):
        raise invalid(f"{field} must be an object.", field)
    return value


def array(value: object, field: str) -> list[Any]:
    """``value`` if it is a JSON array. Raises: GatewayError naming ``field``."""
    if not isinstance(value, list):
        raise invalid(f"{field} must be an array.", field)
    return value


def number(body: dict[str, Any], name: str) -> float | None:
    """``body[name]`` as a float, None when absent or null. Raises: GatewayError when it is not a number."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise invalid(f"{name} must be a number.", name)
    return float(value)


def positive(body: dict[str, Any], name: str) -> int | None:
    """``body[name]``, None when absent or null. Raises: GatewayError when it is not an integer >= 1."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(f"{name} must be a positive integer.", name)
    return value


def part_type(part: object, field: str) -> tuple[dict[str, Any], str]:
    """An object and its string ``type``. Raises: GatewayError naming ``field`` or ``field.type``."""
    value = obj(part, field)
    kind = value.get("type")
    if not isinstance(kind, str):
        raise invalid(f"{field}.type must be a string.", f"{field}.type")
    return value, kind


def unknown_key(value: dict[str, Any], allowed: frozenset[str]) -> str | None:
    """The first key of ``value`` outside ``allowed`` that holds a value (null means absent), if any."""
    for key, item in value.items():
        if key not in allowed and item is not None:
            return key
    return None


def untranslatable(body: dict[str, Any], known: frozenset[str], defaults: dict[str, tuple[object, ...]]) -> str | None:
    """The first top-level field another wire cannot express: not ``known``, and not at one of its ``defaults``.

    ``defaults`` maps a field another wire cannot express to the values that mean "not used" (accepted).
    """
    for name, value in body.items():
        if name in known or value is None:
            continue
        accepted = defaults.get(name)
        if accepted is None or not any(same(value, default) for default in accepted):
            return name
    return None


def same(value: object, default: object) -> bool:
    """JSON equality: ``0`` and ``0.0`` are the same number, ``false`` is not ``0``."""
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    if isinstance(default, int):
        return isinstance(value, int | float) and value == default
    return value == default
