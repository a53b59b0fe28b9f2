"""keyrelay's error table through each of the three wires: the body in the client's wire with keyrelay's type in
its documented place, ``limit_source`` where it applies, and the official SDK's own exception class.

Also mid-stream failures (``*-stream-error``, ``*-cut-stream``), passthrough and translated: the client's stream
ends with its wire's error event, and the usage record has status 502 with the partial usage. And an upstream
that never answers: 504 ``UPSTREAM_TIMEOUT`` in each wire, unary and streamed, passthrough and translated.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.errors import ErrorType
from keyrelay.testing.clock import FakeClock
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import make_api_key
from tests.integration.gateway.helpers import make_account, usage_rows
from tests.integration.protocols.conftest import KINDS, PRICES
from tests.integration.protocols.session_helpers import body, call, credential, sqlite_url, sse_frames, url

WIRES = ("openai", "anthropic", "gemini")
MAX_BODY = 64 * 1024
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}
GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
SDK_CLASSES: dict[int, tuple[type[Exception], type[Exception]]] = {  # status → (openai, anthropic) exception class
    400: (openai.BadRequestError, anthropic.BadRequestError),
    401: (openai.AuthenticationError, anthropic.AuthenticationError),
    # anthropic >= 0.69 has its own class for 402 (an APIStatusError); older ones raise APIStatusError itself.
    402: (openai.APIStatusError, getattr(anthropic, "PaymentRequiredError", anthropic.APIStatusError)),
    403: (openai.PermissionDeniedError, anthropic.PermissionDeniedError),
    404: (openai.NotFoundError, anthropic.NotFoundError),
    429: (openai.RateLimitError, anthropic.RateLimitError),
    502: (openai.InternalServerError, anthropic.InternalServerError),
}
# A same-wire upstream for each client wire, and another kind to translate to.
SAME = {"openai": "oa", "anthropic": "an", "gemini": "ge"}
OTHER = {"openai": "an", "anthropic": "ge", "gemini": "oa"}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path)


@pytest.fixture
def settings(database_url: str, mock: MockUpstream, settings: Settings) -> Settings:
    return settings.model_copy(update={"max_body_bytes": MAX_BODY})


def check_error(response: httpx.Response, wire: str, status: int, error_type: str, *, source: str | None = None) -> str:
    """Check an error answer in ``wire``'s shape; return its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    request_id = response.headers["x-request-id"]
    code = ErrorType[error_type].code
    data = response.json()
    if wire == "openai":
        err = data["error"]
        assert (err["type"], err["code"], err["request_id"]) == (error_type, code, request_id), err
        assert err.get("metadata") == ({"limit_source": source} if source else None)
        message: str = err["message"]
    elif wire == "anthropic":
        assert data["type"] == "error" and data["request_id"] == request_id
        err = data["error"]
        assert err["type"] == ANTHROPIC_TYPES[status], err
        own = err["keyrelay"]
        assert (own["type"], own["code"], own.get("limit_source")) == (error_type, code, source), err
        message = err["message"]
    else:
        err = data["error"]
        assert (err["code"], err["status"]) == (status, GOOGLE_STATUS[status]), err
        [detail] = err["details"]
        assert detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
        assert (detail["reason"], detail["domain"]) == (error_type, "keyrelay"), detail
        meta = detail["metadata"]
        assert (meta["code"], meta.get("limit_source"), meta["request_id"]) == (code, source, request_id), meta
        message = err["message"]
    assert isinstance(message, str) and message
    return message


async def sdk_error(server: RunningServer, wire: str, key: str, model: str, **fields: Any) -> Exception:
    """The exception the wire's official SDK raises for one call (no retries)."""
    try:
        if wire == "openai":
            async with openai.AsyncOpenAI(api_key=key, base_url=f"{server.base_url}/v1", max_retries=0) as oa:
                await oa.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], **{"max_tokens": 5, **fields}
                )
        elif wire == "anthropic":
            async with anthropic.AsyncAnthropic(api_key=key, base_url=server.base_url, max_retries=0) as an:
                await an.messages.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], **{"max_tokens": 5, **fields}
                )
        else:
            async with httpx.AsyncClient() as http:
                options = genai_types.HttpOptions(
                    base_url=server.base_url, api_version="v1beta", httpx_async_client=http
                )
                ge = genai.Client(api_key=key, http_options=options)
                config = genai_types.GenerateContentConfig(max_output_tokens=fields.get("max_tokens", 5))
                await ge.aio.models.generate_content(model=model, contents="hi", config=config)
    except Exception as exc:
        return exc
    raise AssertionError("the SDK call succeeded")


def check_sdk(exc: Exception, wire: str, status: int, error_type: str) -> None:
    if wire == "gemini":
        expected: type[Exception] = genai_errors.ServerError if status >= 500 else genai_errors.ClientError
        assert isinstance(exc, expected), repr(exc)
        assert isinstance(exc, genai_errors.APIError)
        assert (exc.code, exc.status) == (status, GOOGLE_STATUS[status])
        assert exc.details["error"]["details"][0]["reason"] == error_type
        return
    openai_class, anthropic_class = SDK_CLASSES[status]
    expected = openai_class if wire == "openai" else anthropic_class
    assert type(exc) is expected, repr(exc)
    assert exc.status_code == status  # type: ignore[attr-defined]
    if wire == "openai":
        assert exc.type == error_type  # type: ignore[attr-defined]
    else:
        assert exc.body["error"]["keyrelay"]["type"] == error_type  # type: ignore[attr-defined]


# --- the table ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row: how to get a key (and model) that provokes it, and what it answers."""

    status: int
    error_type: str
    key: Callable[[RunningServer, str], Awaitable[str]]
    model: Callable[[str], str] = lambda wire: f"{SAME[wire]}-model"
    source: str | None = None
    fields: dict[str, Any] | None = None  # for the SDK call
    warmup: int = 0  # successful calls first (rpm)


async def plain(server: RunningServer, wire: str) -> str:
    return await make_api_key(server, f"{wire}@example.com")


async def unknown_key(server: RunningServer, wire: str) -> str:
    return "kr_live_" + "A" * 43


async def disabled(server: RunningServer, wire: str) -> str:
    return await make_api_key(server, f"{wire}@example.com", disabled=True)


async def broke(server: RunningServer, wire: str) -> str:
    await make_account(server, f"broke-{wire}@example.com", balance=0)
    return await make_api_key(server, f"broke-{wire}@example.com")


async def inactive(server: RunningServer, wire: str) -> str:
    await make_account(server, f"gone-{wire}@example.com", status="inactive")
    return await make_api_key(server, f"gone-{wire}@example.com")


async def ip_denied(server: RunningServer, wire: str) -> str:
    return await make_api_key(server, f"{wire}@example.com", ip_denylist=["127.0.0.0/8"])


async def other_models_only(server: RunningServer, wire: str) -> str:
    return await make_api_key(server, f"{wire}@example.com", allowed_models=["no-such-model-allowed"])


async def tiny_limit(server: RunningServer, wire: str) -> str:
    return await make_api_key(server, f"{wire}@example.com", limit=Decimal("0.000001"))


async def rpm_one(server: RunningServer, wire: str) -> str:
    return await make_api_key(server, f"{wire}@example.com", rate_limits={"rpm": 1})


CASES: dict[str, Case] = {
    "invalid_request": Case(400, "INVALID_REQUEST", plain, fields={"max_tokens": 0}),
    "invalid_api_key": Case(401, "INVALID_API_KEY", unknown_key),
    "api_key_disabled": Case(401, "API_KEY_DISABLED", disabled),
    "insufficient_balance": Case(402, "INSUFFICIENT_BALANCE", broke, source="account"),
    "user_inactive": Case(403, "USER_INACTIVE", inactive),
    "ip_rule": Case(403, "ACCESS_DENIED", ip_denied),
    "model_whitelist": Case(403, "ACCESS_DENIED", other_models_only),
    "model_not_found": Case(404, "MODEL_NOT_FOUND", plain, model=lambda wire: "no-such-model"),
    "key_quota": Case(429, "API_KEY_QUOTA_EXHAUSTED", tiny_limit, source="key"),
    "rpm": Case(429, "RATE_LIMIT_EXCEEDED", rpm_one, warmup=1),
    "upstream_429": Case(429, "UPSTREAM_RATE_LIMITED", plain, model=lambda wire: f"{OTHER[wire]}-model-fail-429"),
    "upstream_500": Case(502, "UPSTREAM_ERROR", plain, model=lambda wire: f"{OTHER[wire]}-model-fail-500"),
}


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("case", list(CASES))
async def test_error_in_each_wire(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, wire: str, case: str
) -> None:
    row = CASES[case]
    key = await row.key(server, wire)
    model = row.model(wire)
    for _ in range(row.warmup):
        assert (await call(client, wire, key, model)).status_code == 200
    if row.error_type == "INVALID_REQUEST":
        headers = {"content-type": "application/json", **credential(wire, key)}
        r = await client.post(url(wire, model), content=b"{not json", headers=headers)
    else:
        r = await call(client, wire, key, model)
    check_error(r, wire, row.status, row.error_type, source=row.source)
    if row.error_type == "RATE_LIMIT_EXCEEDED" or row.error_type.startswith("UPSTREAM_RATE"):
        assert int(r.headers["retry-after"]) >= 1
    # The official SDK raises its own class for it (an rpm window is still full; the rest do not change).
    exc = sdk_error(server, wire, key, model, **(row.fields or {}))
    check_sdk(await exc, wire, row.status, row.error_type)
    # Streams are refused the same way, before any byte of a stream.
    if row.warmup == 0 and row.error_type != "INVALID_REQUEST":
        check_error(
            await call(client, wire, key, model, stream=True), wire, row.status, row.error_type, source=row.source
        )


async def test_expired_key_in_each_wire(settings: Settings, mock: MockUpstream) -> None:
    clock = FakeClock(datetime.now(UTC))
    async with (
        running_server(settings, clock=clock) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=10) as client,
    ):
        keys = {}
        for wire in WIRES:
            keys[wire] = await make_api_key(
                server, f"{wire}@example.com", expires_at=(clock.now_utc() + timedelta(hours=1)).isoformat()
            )
        clock.advance(3600)
        for wire in WIRES:
            model = f"{SAME[wire]}-model"
            check_error(await call(client, wire, keys[wire], model), wire, 401, "API_KEY_EXPIRED")
            check_sdk(await sdk_error(server, wire, keys[wire], model), wire, 401, "API_KEY_EXPIRED")
    assert not mock.requests


@pytest.mark.parametrize("wire", WIRES)
async def test_route_errors_in_each_wire(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, wire: str
) -> None:
    key = await plain(server, wire)
    headers = {"content-type": "application/json", **credential(wire, key)}
    unknown = {"openai": "/v1/nothing", "anthropic": "/v1/messages/batches", "gemini": "/v1beta/nothing"}[wire]
    message = check_error(await client.post(unknown, content=b"{}", headers=headers), wire, 404, "NOT_FOUND")
    assert unknown in message
    r = await client.get(url(wire, "ge-model"), headers=headers)
    check_error(r, wire, 405, "METHOD_NOT_ALLOWED")
    assert r.headers["allow"] == "POST"
    # 413: the body is refused while it is read, in the client's wire.
    big = body(wire, f"{SAME[wire]}-model", text="x" * MAX_BODY)
    r = await client.post(url(wire, f"{SAME[wire]}-model"), content=orjson.dumps(big), headers=headers)
    check_error(r, wire, 413, "PAYLOAD_TOO_LARGE")
    assert not mock.requests


# --- mid-stream failures --------------------------------------------------------------------------------------------


def stream_error_frame(wire: str, response: httpx.Response) -> Any:
    """Check that ``wire``'s stream ended with its error event, and return that event's data."""
    assert response.status_code == 200, response.text
    frames = sse_frames(response.content)
    name, last = frames[-1]
    if wire == "openai":
        assert name is None and "error" in last, frames[-3:]
        assert "[DONE]" not in [data for _, data in frames]
    elif wire == "anthropic":
        assert name == "error" and last["type"] == "error", frames[-3:]
        assert "message_stop" not in [n for n, _ in frames]
        assert frames[0][0] == "message_start"
    else:
        assert name is None and "error" in last, frames[-3:]
        assert isinstance(last["error"]["code"], int) and last["error"]["status"]
    return last


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("fault", ["stream-error", "cut-stream"])
@pytest.mark.parametrize("path", ["passthrough", "translated"])
async def test_mid_stream_failure_in_each_wire(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, wire: str, fault: str, path: str
) -> None:
    key = await plain(server, wire)
    upstream = SAME[wire] if path == "passthrough" else OTHER[wire]
    r = await call(client, wire, key, f"{upstream}-model-{fault}", stream=True)
    stream_error_frame(wire, r)
    [row] = await usage_rows(server, r.headers["x-request-id"])
    assert (row["status"], row["error_type"]) == (502, "UPSTREAM_ERROR"), row
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0, row
    assert row["cost_micros"] > 0


# --- upstream timeouts ---------------------------------------------------------------------------------------------


def hanging(mock: MockUpstream, short: str) -> ProviderConfig:
    """A provider of ``short``'s kind serving ``<short>-hang``, which the mock never answers; read timeout 0.4 s."""
    _, kind, path, upstream = KINDS[short]
    model = ModelConfig(id=f"{short}-hang", upstream_id=f"{upstream}-hang", **PRICES)
    return ProviderConfig(
        name=f"{short}-slow", kind=kind, base_url=f"{mock.origin}{path}", models=(model,), timeout_s=0.4
    )


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("path", ["passthrough", "translated"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_upstream_timeout_in_each_wire(
    settings: Settings, mock: MockUpstream, wire: str, path: str, stream: bool
) -> None:
    # Only the gateway's own read timeout can end these calls (the client waits 10 s): a 504 in the client's wire.
    upstream = SAME[wire] if path == "passthrough" else OTHER[wire]
    settings = settings.model_copy(update={"providers": (*settings.providers, hanging(mock, upstream))})
    async with running_server(settings) as server, httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        key = await make_api_key(server, "timeouts@example.com")
        r = await call(client, wire, key, f"{upstream}-hang", stream=stream)
        check_error(r, wire, 504, "UPSTREAM_TIMEOUT")
        [row] = await usage_rows(server, r.headers["x-request-id"])
        assert (row["status"], row["error_type"], row["cost_micros"]) == (504, "UPSTREAM_TIMEOUT", 0)
