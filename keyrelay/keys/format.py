"""Key strings: the two prefixes, secret generation and the display form.

A key is ``kr_live_`` (API key) or ``kr_mgmt_`` (management key) followed by 43 URL-safe
characters from ``secrets.token_urlsafe(32)``: 256 bits of randomness, 51 characters in all.
"""

from __future__ import annotations

import re
import secrets
from enum import StrEnum


class KeyType(StrEnum):
    """The two kinds of key; the value is the ``key_type`` field of the API."""

    REGULAR = "regular"
    MANAGEMENT = "management"


PREFIXES: dict[KeyType, str] = {KeyType.REGULAR: "kr_live_", KeyType.MANAGEMENT: "kr_mgmt_"}
SECRET_BYTES = 32
_SHAPE = re.compile(r"^kr_(live|mgmt)_[A-Za-z0-9_-]{43}$")


def generate(key_type: KeyType) -> str:
    """A new key of the given type, with 256 bits from ``secrets``."""
    return PREFIXES[key_type] + secrets.token_urlsafe(SECRET_BYTES)


def looks_like_key(candidate: str) -> bool:
    """Whether a string has the exact shape of a keyrelay key (cheap pre-check before hashing)."""
    return _SHAPE.fullmatch(candidate) is not None  # fullmatch: "$" alone would accept a trailing newline


def key_type_of(plaintext: str) -> KeyType | None:
    """The key type a plaintext key claims by its prefix, or None."""
    for key_type, prefix in PREFIXES.items():
        if plaintext.startswith(prefix):
            return key_type
    return None


def display_form(plaintext: str) -> str:
    """What is shown after creation: the prefix and the last four characters."""
    key_type = key_type_of(plaintext)
    prefix = PREFIXES[key_type] if key_type else plaintext[:3]
    return f"{prefix}...{plaintext[-4:]}"
