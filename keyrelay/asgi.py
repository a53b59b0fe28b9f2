"""Small ASGI helpers shared by the edges: JSON answers, request ids, body size limits."""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from keyrelay.errors import ErrorType, GatewayError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_CT = (b"content-type", b"application/json")


_ID_PREFIX = "req_" + secrets.token_hex(6)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A fresh request id, unique across processes: a random 48-bit process prefix and a counter.

    (Not a secret; cheaper than drawing random bytes from the OS for every request.)
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


async def send_json(send: Send, status: int, body: object, headers: Headers | None = None) -> None:
    """Send a complete JSON response: ``body`` as bytes already encoded, or a value to encode."""
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    out: Headers = [JSON_CT, (b"content-length", str(len(payload)).encode())]
    if headers:
        out.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": payload})


async def send_error(send: Send, err: GatewayError, request_id: str | None, extra: Headers | None = None) -> None:
    """Send a GatewayError as the shared JSON error body."""
    headers: Headers = list(extra or [])
    if err.retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(err.retry_after))).encode()))
    if err.allow is not None:
        headers.append((b"allow", err.allow.encode()))
    await send_json(send, err.status, err.to_body(request_id), headers)


def header(scope: Scope, name: bytes) -> bytes | None:
    """First value of a request header (name in lowercase); for a header that may repeat, see ``client_ip``."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def limit_body(receive: Receive, max_bytes: int) -> Receive:
    """Wrap ``receive`` so that a body larger than ``max_bytes`` raises PAYLOAD_TOO_LARGE."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise GatewayError(ErrorType.PAYLOAD_TOO_LARGE, f"The request body exceeds {max_bytes} bytes.")
        return message

    return limited


async def read_body(receive: Receive, max_bytes: int) -> bytes:
    """Read the whole request body, refusing more than ``max_bytes``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise GatewayError(ErrorType.PAYLOAD_TOO_LARGE, f"The request body exceeds {max_bytes} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
