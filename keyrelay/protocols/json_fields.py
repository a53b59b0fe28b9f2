"""Checks of a parsed JSON request body's fields, shared by the translators: each names the field at fault.

Also the escapes of a raw body that could spell given names (``escapes_of``), for the checks that count names in
the bytes rather than in the parsed body.

Every check raises ``GatewayError(INVALID_REQUEST, field=...)`` with a message naming the field, so that a
client sees which part of its body is wrong (a 400, never a 5xx).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
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


def escapes_of(names: Iterable[str]) -> re.Pattern[bytes]:
    r"""The JSON escapes that could spell a character of ``names`` (``\u00XX``, the hex digits in either case).

    The names are ASCII, so a key equal to one is written with its characters as they are or escaped that way
    (RFC 8259 §7; ``\n`` and the like spell control characters): a body holding none of these escapes has its judged
    names where a search for the plain names finds them. Other escapes (``\u4f60``, common where clients write JSON
    as ASCII) need no second parse. The pattern opens with a literal, so it is searched for at C speed.
    """
    codes = {f"{ord(char):02x}" for name in names for char in name}
    variants = sorted({variant for code in codes for variant in (code, code.upper())})
    return re.compile(rb"\\u00(?:" + b"|".join(variant.encode() for variant in variants) + rb")")


def spelled_plainly(raw: bytes, escapes: re.Pattern[bytes]) -> bool:
    r"""Whether ``raw`` holds none of ``escapes`` (``escapes_of`` some names): a byte count of them counts them all.

    A body whose first 2 KB hold an escape is taken to be JSON written as ASCII throughout (``\u4f60`` everywhere),
    where a search through every byte is slow (0.55 µs a KB, ten times a walk of its parsed objects): False
    without searching it, so callers count on the parsed body.
    """
    return raw.find(b"\\u", 0, 2048) < 0 and escapes.search(raw) is None


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
