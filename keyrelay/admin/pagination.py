"""Opaque page tokens for keyset pagination.

Keys over (created_at, hash), the audit log over its id, usage records over (created_at, id).
"""

from __future__ import annotations

import base64
from datetime import datetime

import orjson

from keyrelay.clock import ensure_utc
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.fields import is_key_hash, parse_timestamp

# The largest id a BIGINT holds: a decoded id beyond it would reach the store as a value it cannot compare.
_MAX_ID = 2**63 - 1


def _encode(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


def _invalid() -> GatewayError:
    return GatewayError(ErrorType.INVALID_REQUEST, "page_token is not valid", field="page_token")


def encode_token(created_at: datetime, key_hash: str) -> str:
    """A URL-safe token that resumes listing after this key."""
    return _encode({"c": ensure_utc(created_at).isoformat(), "h": key_hash})


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
        raise _invalid() from None


def encode_id_token(entry_id: int) -> str:
    """A URL-safe token that resumes listing below this id (newest first)."""
    return _encode({"i": entry_id})


def decode_id_token(token: str) -> int:
    """The id a token made by ``encode_id_token`` stands for.

    Raises:
        GatewayError: INVALID_REQUEST naming ``page_token`` when the token is not one of ours.
    """
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        entry_id = data["i"]
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise _invalid() from None
    if isinstance(entry_id, bool) or not isinstance(entry_id, int) or not 1 <= entry_id <= _MAX_ID:
        raise _invalid()
    return entry_id


def encode_record_token(created_at: datetime, record_id: int) -> str:
    """A URL-safe token that resumes the request log after this usage record (newest first)."""
    return _encode({"c": ensure_utc(created_at).isoformat(), "i": record_id})


def decode_record_token(token: str) -> tuple[datetime, int]:
    """The (created_at, id) position a token made by ``encode_record_token`` stands for.

    Raises:
        GatewayError: INVALID_REQUEST naming ``page_token`` when the token is not one of ours.
    """
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        created_at, record_id = parse_timestamp(data["c"]), data["i"]
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise _invalid() from None
    if isinstance(record_id, bool) or not isinstance(record_id, int) or not 1 <= record_id <= _MAX_ID:
        raise _invalid()
    return created_at, record_id
