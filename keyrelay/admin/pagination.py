"""Opaque page tokens for keyset pagination over (created_at, hash)."""

from __future__ import annotations

import base64
from datetime import datetime

import orjson

from keyrelay.clock import ensure_utc
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.fields import is_key_hash, parse_timestamp


def encode_token(created_at: datetime, key_hash: str) -> str:
    """A URL-safe token that resumes listing after this key."""
    raw = orjson.dumps({"c": ensure_utc(created_at).isoformat(), "h": key_hash})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[datetime, str]:
    """The position a token stands for.

    Raises:
        GatewayError: INVALID_REQUEST naming ``page_token`` when the token is not one of ours.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = orjson.loads(raw)
        # Decoded values go into a query: hold them to what we encode (a forged token must not reach
        # the store with a time or text it cannot hold).
        created_at, key_hash = parse_timestamp(data["c"]), data["h"]
        if not isinstance(key_hash, str) or not is_key_hash(key_hash):
            raise ValueError
        return created_at, key_hash
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise GatewayError(ErrorType.INVALID_REQUEST, "page_token is not valid", field="page_token") from None
