"""No input, however strange, makes /v1 answer 500: every field of the LLM endpoints with every odd value."""

from __future__ import annotations

import json
from typing import Any

import httpx

from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key
from tests.integration.gateway.helpers import CHAT, auth

ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**31,
    2**63,
    -(2**63) - 1,
    10**40,
    1.5,
    1e308,
    "",
    "x" * 5000,
    "\u0000",
    "\ud7ff\ue000",
    [],
    [None],
    {},
    {"a": {"b": {"c": [1, [2, [3]]]}}},
]
CHAT_FIELDS = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "tools",
    "user",
]
RAW_BODIES = [
    b"",
    b"null",
    b"[]",
    b'"text"',
    b"{",
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}' + b" " * 10,
    b"\xff\xfe\x00",
    b"[" * 5000 + b"]" * 5000,
    b'{"model":"gpt-4o-mini","messages":' + b"[" * 1000 + b"]" * 1000 + b',"model":"gpt-4o-mini"}',
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"n":1e400}',
]


async def test_no_strange_chat_body_is_a_server_error(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "odd@example.com")
    bodies: list[bytes] = list(RAW_BODIES)

    for field in CHAT_FIELDS:
        for value in ODD_VALUES:
            bodies.append(json.dumps({**CHAT, field: value}).encode())
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        for body in bodies:
            r = await client.post(path, content=body, headers={**auth(key), "content-type": "application/json"})
            assert (
                r.status_code != 500 and r.json()["error"]["type"] != "INTERNAL_ERROR" if r.status_code >= 400 else True
            ), (
                path,
                body[:200],
                r.text,
            )


async def test_no_strange_header_or_path_is_a_server_error(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "odd@example.com")
    headers_list = [
        {"Authorization": "Bearer " + "k" * 10_000},
        {"Authorization": "Bearer kr_live_" + "\u00e9" * 43},
        {"Authorization": "bearer    " + key},
        {"Authorization": f"Bearer {key}", "X-Forwarded-For": "\u00ff" * 100},
        {"Authorization": f"Bearer {key}", "Forwarded": 'for="' + '"' * 50},
    ]
    for headers in headers_list:
        for method, path in (
            ("GET", "/v1/models"),
            ("GET", "/v1/key"),
            ("GET", "/v1/models/%00%ff"),
            ("POST", "/v1/chat/completions"),
        ):
            raw_headers = [(name.encode(), value.encode()) for name, value in headers.items()]
            r = await client.request(method, path, json=CHAT, headers=raw_headers)
            assert r.status_code < 500, (headers, path, r.text)
