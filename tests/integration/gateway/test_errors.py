"""Every row of the client-facing error table, produced through real HTTP against a running gateway."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.errors import GatewayError
from keyrelay.keys.hashing import key_hash
from keyrelay.keys.spec import KeyUpdate
from keyrelay.runtime import open_runtime
from keyrelay.services.inputs import AccountUpdate
from keyrelay.testing.clock import FakeClock
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.poll import poll_until
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import PG_ADMIN_DSN, TEST_ACTOR, make_api_key, make_management_key
from tests.integration.gateway.conftest import provider_for
from tests.integration.gateway.helpers import (
    CHAT,
    assert_error,
    auth,
    break_store,
    chat,
    chat_body,
    make_account,
    max_cost_micros,
    usage_rows,
)

# --- 401 ------------------------------------------------------------------------------------------------------------


async def test_invalid_api_key_in_every_form(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream
) -> None:
    good = await make_api_key(server, "a@example.com")
    mgmt = await make_management_key(server, "a@example.com")
    unknown = "kr_live_" + secrets.token_urlsafe(32)
    cases: list[dict[str, str]] = [
        {},  # missing
        {"Authorization": f"Basic {good}"},  # wrong scheme
        {"Authorization": "Bearer"},  # empty token
        {"Authorization": "Bearer sk-not-a-keyrelay-key"},  # malformed
        {"Authorization": f"Bearer {good[:-1]}"},  # truncated (wrong shape)
        {"Authorization": f"Bearer {unknown}"},  # well-formed, unknown
        {"Authorization": f"Bearer {mgmt}"},  # management key on an LLM endpoint
    ]
    for headers in cases:
        r = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert_error(r, 401, "INVALID_API_KEY")
        assert good not in r.text and mgmt not in r.text  # never echoed back
    # The management-key message says what to use instead; GET endpoints are guarded too.
    r = await client.get("/v1/models", headers=auth(mgmt))
    assert "kr_live_" in assert_error(r, 401, "INVALID_API_KEY")["message"]
    r = await client.get("/v1/key", headers=auth(unknown))
    assert_error(r, 401, "INVALID_API_KEY")
    assert mock.requests == []  # nothing reached the upstream
    # The good key itself works (so the failures above are about the credential).
    assert (await chat(client, good)).status_code == 200


async def test_disabled_key(server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream) -> None:
    key = await make_api_key(server, "a@example.com", disabled=True)
    assert_error(await chat(client, key), 401, "API_KEY_DISABLED")
    assert_error(await client.get("/v1/models", headers=auth(key)), 401, "API_KEY_DISABLED")
    assert mock.requests == []


async def test_expired_key(settings: Settings, mock: MockUpstream) -> None:
    clock = FakeClock(datetime.now(UTC))
    async with (
        running_server(settings, clock=clock) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=10) as client,
    ):
        # A key works until its expiry and is refused from that instant on, also while it sits in the cache.
        expiry = clock.now_utc() + timedelta(hours=1)
        key = await make_api_key(server, "a@example.com", expires_at=expiry.isoformat())
        assert (await chat(client, key)).status_code == 200
        clock.advance(3600 - 0.001)
        assert (await chat(client, key)).status_code == 200
        clock.advance(0.001)
        assert_error(await chat(client, key), 401, "API_KEY_EXPIRED")
        assert_error(await client.get("/v1/models", headers=auth(key)), 401, "API_KEY_EXPIRED")
        assert len(mock.requests) == 2
        # A key cannot be made already expired: it would be dead on arrival.
        with pytest.raises(GatewayError) as refused:
            await make_api_key(server, "a@example.com", expires_at=(clock.now_utc() - timedelta(hours=1)).isoformat())
        assert refused.value.field == "expires_at"


# --- 403 ------------------------------------------------------------------------------------------------------------


async def test_inactive_account(server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream) -> None:
    account = await make_account(server, "gone@example.com", status="inactive")
    key = await make_api_key(server, "gone@example.com")
    assert_error(await chat(client, key), 403, "USER_INACTIVE")
    assert mock.requests == []
    # Re-activating through the management API takes effect on the next request.
    admin = await make_management_key(server, "root@example.com", admin=True)
    r = await client.patch(f"/api/v1/accounts/{account.id}", json={"status": "active"}, headers=auth(admin))
    assert r.status_code == 200, r.text
    assert (await chat(client, key)).status_code == 200
    r = await client.patch(f"/api/v1/accounts/{account.id}", json={"status": "inactive"}, headers=auth(admin))
    assert r.status_code == 200, r.text
    assert_error(await chat(client, key), 403, "USER_INACTIVE")


async def test_ip_rules_use_the_real_peer(server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream) -> None:
    elsewhere = await make_api_key(server, "a@example.com", ip_allowlist=["10.0.0.0/8"])
    err = assert_error(await chat(client, elsewhere), 403, "ACCESS_DENIED")
    assert "127.0.0.1" in err["message"]
    # No trusted proxies are configured: X-Forwarded-For cannot be used to pretend to be inside 10/8.
    for spoof in ("10.1.2.3", "10.1.2.3, 10.9.9.9", "127.0.0.1, 10.1.2.3"):
        r = await client.post("/v1/chat/completions", json=CHAT, headers={**auth(elsewhere), "X-Forwarded-For": spoof})
        assert_error(r, 403, "ACCESS_DENIED")
    here = await make_api_key(server, "a@example.com", ip_allowlist=["127.0.0.1"])
    here_ok = await chat(client, here)
    assert here_ok.status_code == 200, here_ok.text
    denied = await make_api_key(server, "a@example.com", ip_denylist=["127.0.0.0/8"])
    assert_error(await chat(client, denied), 403, "ACCESS_DENIED")
    # The denylist wins over an allowlist that also matches.
    both = await make_api_key(server, "a@example.com", ip_allowlist=["127.0.0.1"], ip_denylist=["127.0.0.1"])
    assert_error(await chat(client, both), 403, "ACCESS_DENIED")
    # A denied spoof header does not help either.
    r = await client.post("/v1/chat/completions", json=CHAT, headers={**auth(denied), "X-Forwarded-For": "8.8.8.8"})
    assert_error(r, 403, "ACCESS_DENIED")
    assert len(mock.requests) == 1
    [row] = await usage_rows(server, here_ok.headers["x-request-id"])
    assert row["client_ip"] == "127.0.0.1"


class TestBehindTrustedProxy:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"trusted_proxies": "127.0.0.1/32"})

    async def test_forwarded_for_is_honoured(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream
    ) -> None:
        key = await make_api_key(server, "a@example.com", ip_allowlist=["10.0.0.0/8"])
        assert_error(await chat(client, key), 403, "ACCESS_DENIED")  # the proxy itself is not the client

        def via(xff: str) -> dict[str, str]:
            return {**auth(key), "X-Forwarded-For": xff}

        ok = await client.post("/v1/chat/completions", json=CHAT, headers=via("10.1.2.3"))
        assert ok.status_code == 200, ok.text
        # Right to left, the first address that is not a trusted proxy is the client; what a client writes
        # to the left of that cannot help it.
        chained = await client.post("/v1/chat/completions", json=CHAT, headers=via("1.2.3.4, 10.1.2.3, 127.0.0.1"))
        assert chained.status_code == 200, chained.text
        spoofed = await client.post("/v1/chat/completions", json=CHAT, headers=via("10.1.2.3, 1.2.3.4"))
        assert "1.2.3.4" in assert_error(spoofed, 403, "ACCESS_DENIED")["message"]
        # Garbage falls back to the peer.
        assert_error(
            await client.post("/v1/chat/completions", json=CHAT, headers=via("nonsense")), 403, "ACCESS_DENIED"
        )
        first, second = await usage_rows(server, ok.headers["x-request-id"], chained.headers["x-request-id"])
        assert first["client_ip"] == "10.1.2.3"
        assert second["client_ip"] == "10.1.2.3"
        denied = await make_api_key(server, "a@example.com", ip_denylist=["10.1.2.3"])
        r = await client.post(
            "/v1/chat/completions", json=CHAT, headers={**auth(denied), "X-Forwarded-For": "10.1.2.3"}
        )
        assert_error(r, 403, "ACCESS_DENIED")
        r = await client.post(
            "/v1/chat/completions", json=CHAT, headers={**auth(denied), "X-Forwarded-For": "10.1.2.4"}
        )
        assert r.status_code == 200, r.text


async def test_model_provider_and_region_rules(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream
) -> None:
    only_4o = await make_api_key(server, "a@example.com", allowed_models=["gpt-4o"])
    err = assert_error(await chat(client, only_4o), 403, "ACCESS_DENIED")
    assert "gpt-4o-mini" in err["message"]
    assert (await chat(client, only_4o, model="gpt-4o")).status_code == 200
    assert (await chat(client, only_4o, model="mock/gpt-4o")).status_code == 200
    qualified = await make_api_key(server, "a@example.com", allowed_models=["mock/gpt-4o-mini"])
    assert (await chat(client, qualified)).status_code == 200
    assert_error(await chat(client, qualified, model="gpt-4o"), 403, "ACCESS_DENIED")

    other_provider = await make_api_key(server, "a@example.com", allowed_providers=["openai"])
    err = assert_error(await chat(client, other_provider), 403, "ACCESS_DENIED")
    assert "mock" in err["message"]
    mock_provider = await make_api_key(server, "a@example.com", allowed_providers=["mock"])
    assert (await chat(client, mock_provider)).status_code == 200

    eu = await make_api_key(server, "a@example.com", region="eu")
    err = assert_error(await chat(client, eu), 403, "ACCESS_DENIED")
    assert "eu" in err["message"]
    r = await client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}, headers=auth(eu))
    assert_error(r, 403, "ACCESS_DENIED")
    us = await make_api_key(server, "a@example.com", region="us")
    assert (await chat(client, us)).status_code == 200
    assert [r.body["model"] for r in mock.requests] == ["gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini"]


# --- 402 / 429: money and windows ----------------------------------------------------------------------------------


async def test_insufficient_balance(server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream) -> None:
    await make_account(server, "broke@example.com", balance=0)
    broke = await make_api_key(server, "broke@example.com")
    err = assert_error(await chat(client, broke), 402, "INSUFFICIENT_BALANCE", source="account")
    assert "$0.000000 left" in err["message"]
    assert mock.requests == []
    # A balance that covers one request's maximum cost but not a second one once the first (2 µ$) is charged.
    worst = max_cost_micros(chat_body(max_tokens=1), 1)
    await make_account(server, "tight@example.com", balance=Decimal(f"{(worst + 1) / 1e6:.6f}"))
    tight = await make_api_key(server, "tight@example.com")
    assert (await chat(client, tight, max_tokens=1)).status_code == 200
    assert_error(await chat(client, tight, max_tokens=1), 402, "INSUFFICIENT_BALANCE", source="account")
    # The account limit applies across all keys of the account.
    sibling = await make_api_key(server, "tight@example.com")
    assert_error(await chat(client, sibling, max_tokens=1), 402, "INSUFFICIENT_BALANCE", source="account")
    assert len(mock.requests) == 1


async def test_balance_holds_when_keys_alternate(server: RunningServer, client: httpx.AsyncClient) -> None:
    """Two keys of one account, cached at different times (before and after charges reached the store)."""
    worst = max_cost_micros(chat_body(max_tokens=1), 1)
    await make_account(server, "shared@example.com", balance=Decimal(f"{(worst + 5) / 1e6:.6f}"))
    first = await make_api_key(server, "shared@example.com")
    second = await make_api_key(server, "shared@example.com")
    statuses = []
    for key in (first, second) * 3:
        r = await chat(client, key, max_tokens=1)
        statuses.append(r.status_code)
        if r.status_code == 200:
            await usage_rows(server, r.headers["x-request-id"])  # charged in the store before the next request
    # Each request really costs 2 µ$: three fit (0 + worst, 2 + worst, 4 + worst ≤ worst + 5), a fourth does not.
    assert statuses == [200, 200, 200, 402, 402, 402]


async def test_key_limit_holds_across_both_secrets_of_a_rotated_key(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    worst = max_cost_micros(chat_body(max_tokens=1), 1)
    old = await make_api_key(server, "a@example.com", limit=Decimal(f"{(worst + 5) / 1e6:.6f}"))
    mgmt = await make_management_key(server, "a@example.com")
    assert (await chat(client, old, max_tokens=1)).status_code == 200
    r = await client.post(f"/api/v1/keys/{key_hash(old)}/rotate", json={"grace_seconds": 600}, headers=auth(mgmt))
    new = r.json()["key"]
    statuses = []
    for key in (old, new, old, new, old):
        r = await chat(client, key, max_tokens=1)
        statuses.append(r.status_code)
        if r.status_code == 200:
            await usage_rows(server, r.headers["x-request-id"])  # charged in the store before the next request
    assert statuses == [200, 200, 429, 429, 429]


async def test_key_quota_exhausted(settings: Settings, mock: MockUpstream) -> None:
    clock = FakeClock(datetime(2026, 3, 10, 21, 30, tzinfo=UTC))  # 2.5 h before the daily period ends
    async with running_server(settings, clock=clock) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        # The limit covers the worst case of one request, but not of a second one after the first really cost 2 µ$.
        worst = max_cost_micros(chat_body(max_tokens=1), 1)
        key = await make_api_key(server, "a@example.com", limit=Decimal(worst + 1) / 1_000_000, limit_reset="daily")
        assert (await chat(client, key, max_tokens=1)).status_code == 200
        r = await chat(client, key, max_tokens=1)
        err = assert_error(r, 429, "API_KEY_QUOTA_EXHAUSTED", source="key")
        assert "max_tokens" in err["message"]
        assert r.headers["retry-after"] == str(150 * 60)
        # Another key of the same account is not affected; a lifetime cap has no Retry-After.
        other = await make_api_key(server, "a@example.com", limit=Decimal("0.000001"))
        r = await chat(client, other, max_tokens=1)
        assert_error(r, 429, "API_KEY_QUOTA_EXHAUSTED", source="key")
        assert "retry-after" not in r.headers
        assert (await chat(client, await make_api_key(server, "a@example.com"), max_tokens=1)).status_code == 200
    assert len(mock.requests) == 2


async def test_request_rate_limit(server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream) -> None:
    key = await make_api_key(server, "a@example.com", rate_limits={"rpm": 2, "per_1d": 100})
    first, second = await chat(client, key), await chat(client, key)
    for r, remaining in ((first, "1"), (second, "0")):
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-requests"] == "2"
        assert r.headers["x-ratelimit-remaining-requests"] == remaining
        reset = r.headers["x-ratelimit-reset-requests"]
        assert reset.endswith("s") and 0 < int(reset[:-1]) <= 60
    r = await chat(client, key)
    err = assert_error(r, 429, "RATE_LIMIT_EXCEEDED")
    assert "rpm=2" in err["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert float(r.headers["x-keyrelay-overhead-ms"]) >= 0
    assert len(mock.requests) == 2
    # Streams and GETs: the window counts LLM calls only, and /v1/models stays available.
    assert (await client.get("/v1/models", headers=auth(key))).status_code == 200
    r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth(key))
    assert_error(r, 429, "RATE_LIMIT_EXCEEDED")


# --- upstream failures ----------------------------------------------------------------------------------------------


async def test_upstream_failures(server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream) -> None:
    key = await make_api_key(server, "a@example.com")
    r = await chat(client, key, model="gpt-4o-mini-fail-429")
    assert "Rate limit reached" in assert_error(r, 429, "UPSTREAM_RATE_LIMITED")["message"]
    assert r.headers["retry-after"] == "1"
    assert_error(await chat(client, key, model="gpt-4o-mini-fail-500"), 502, "UPSTREAM_ERROR")
    assert_error(await chat(client, key, model="gpt-4o-mini-fail-503"), 503, "UPSTREAM_ERROR")
    assert_error(await chat(client, key, model="gpt-4o-mini-fail-400"), 400, "INVALID_REQUEST")
    assert_error(await chat(client, key, model="gpt-4o-mini-cut-stream"), 502, "UPSTREAM_ERROR")
    # A stream that fails before its first byte is an ordinary JSON error, too.
    r = await client.post(
        "/v1/chat/completions", json={**CHAT, "model": "gpt-4o-mini-fail-500", "stream": True}, headers=auth(key)
    )
    assert_error(r, 502, "UPSTREAM_ERROR")
    assert len(mock.requests) == 6
    # The client's key never goes upstream.
    for recorded in mock.requests:
        assert key not in str(recorded.headers) and key.encode() not in recorded.raw_body


def _failover_providers(mock: MockUpstream) -> tuple[ProviderConfig, ...]:
    mini = ModelConfig(id="gpt-4o-mini", input_per_mtok="0.15", output_per_mtok="0.60")
    # Higher priorities first: "down" and "flaky" are tried before "mock", whatever the draw.
    down = ProviderConfig(
        name="down",
        base_url="http://127.0.0.1:9/v1",
        region="us",
        models=(mini,),
        timeout_s=1,
        connect_timeout_s=1,
        priority=1,
    )
    # Serves gpt-4o through the mock's failing model: every call answers 503.
    flaky = ProviderConfig(
        name="flaky",
        base_url=mock.base_url,
        region="us",
        models=(ModelConfig(id="gpt-4o", upstream_id="gpt-4o-mini-fail-503"),),
        priority=1,
    )
    main = provider_for(mock).model_copy(update={"timeout_s": 0.4, "api_key": SecretStr("sk-upstream-secret")})
    return (down, flaky, main)


class TestFailoverAndTimeouts:
    @pytest.fixture
    def settings(self, settings: Settings, mock: MockUpstream) -> Settings:
        return settings.model_copy(update={"providers": _failover_providers(mock)})

    async def test_failover_to_the_next_provider(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream
    ) -> None:
        key = await make_api_key(server, "a@example.com")
        r = await chat(client, key)  # "down" refuses the connection, "mock" answers
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "gpt-4o-mini"
        r2 = await chat(client, key, model="gpt-4o")  # "flaky" answers 503, "mock" answers
        assert r2.status_code == 200, r2.text
        assert [(q.body["model"], q.headers.get("authorization")) for q in mock.requests] == [
            ("gpt-4o-mini", "Bearer sk-upstream-secret"),
            ("gpt-4o-mini-fail-503", None),
            ("gpt-4o", "Bearer sk-upstream-secret"),
        ]
        first, second = await usage_rows(server, r.headers["x-request-id"], r2.headers["x-request-id"])
        assert (first["provider"], first["status"], first["error_type"]) == ("mock", 200, None)
        assert (second["provider"], second["status"], second["error_type"]) == ("mock", 200, None)
        # Naming one provider pins the request to it: no failover.
        r = await chat(client, key, model="down/gpt-4o-mini")
        assert_error(r, 502, "UPSTREAM_ERROR")
        assert_error(await chat(client, key, model="flaky/gpt-4o"), 503, "UPSTREAM_ERROR")
        # A key limited to the dead provider gets the dead provider's error.
        pinned = await make_api_key(server, "a@example.com", allowed_providers=["down"])
        assert_error(await chat(client, pinned), 502, "UPSTREAM_ERROR")

    async def test_hanging_upstream_times_out(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream
    ) -> None:
        key = await make_api_key(server, "a@example.com")
        # The mock never answers: only the gateway's own timeout (timeout_s=0.4) can end these calls, and it must
        # end them with a 504 well before the client gives up (10 s).
        r = await chat(client, key, model="gpt-4o-mini-hang")
        assert_error(r, 504, "UPSTREAM_TIMEOUT")
        r = await client.post(
            "/v1/chat/completions", json={**CHAT, "model": "gpt-4o-mini-hang", "stream": True}, headers=auth(key)
        )
        assert_error(r, 504, "UPSTREAM_TIMEOUT")
        assert [(q.body["model"], q.body.get("stream")) for q in mock.requests] == [
            ("gpt-4o-mini-hang", None),
            ("gpt-4o-mini-hang", True),
        ]
        [row] = await usage_rows(server, r.headers["x-request-id"])
        assert (row["status"], row["error_type"], row["cost_micros"]) == (504, "UPSTREAM_TIMEOUT", 0)


# --- 400 / 404 / 405 / 413 ------------------------------------------------------------------------------------------


async def test_invalid_requests(server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream) -> None:
    key = await make_api_key(server, "a@example.com")
    h = {**auth(key), "content-type": "application/json"}
    r = await client.post("/v1/chat/completions", content=b"{not json", headers=h)
    assert assert_error(r, 400, "INVALID_REQUEST")["param"] == "body"
    r = await client.post("/v1/chat/completions", content=b"[1, 2]", headers=h)
    assert assert_error(r, 400, "INVALID_REQUEST")["param"] == "body"
    r = await client.post("/v1/chat/completions", content=b"", headers=h)
    assert_error(r, 400, "INVALID_REQUEST")
    r = await client.post("/v1/chat/completions", json={"messages": CHAT["messages"]}, headers=h)
    assert assert_error(r, 400, "INVALID_REQUEST")["param"] == "model"
    r = await client.post("/v1/chat/completions", json={"model": "gpt-4o-mini"}, headers=h)
    assert assert_error(r, 400, "INVALID_REQUEST")["param"] == "messages"
    r = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 0}, headers=h)
    assert assert_error(r, 400, "INVALID_REQUEST")["param"] == "max_tokens"
    r = await client.post("/v1/embeddings", json={"model": "text-embedding-3-small"}, headers=h)
    assert assert_error(r, 400, "INVALID_REQUEST")["param"] == "input"
    # Over 1 MiB: refused by its Content-Length before it is read, and while reading a chunked upload.
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (1024 * 1024)}]}
    assert_error(await client.post("/v1/chat/completions", json=big, headers=h), 413, "PAYLOAD_TOO_LARGE")

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(17):
            yield b" " * 65536
        yield b"{}"

    r = await client.post("/v1/chat/completions", content=chunked(), headers=h)
    assert r.request.headers["transfer-encoding"] == "chunked" and "content-length" not in r.request.headers
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    # Exactly at the limit is fine (the body is read and then judged on its content).
    padded = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    padded += b" " * (1024 * 1024 - len(padded))
    assert (await client.post("/v1/chat/completions", content=padded, headers=h)).status_code == 200
    # Wrong method and unknown routes under /v1.
    assert_error(await client.get("/v1/chat/completions", headers=h), 405, "METHOD_NOT_ALLOWED")
    assert_error(await client.post("/v1/models", headers=h), 405, "METHOD_NOT_ALLOWED")
    assert_error(await client.get("/v1/nope", headers=h), 404, "NOT_FOUND")
    assert len(mock.requests) == 1


async def test_model_not_found(server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream) -> None:
    key = await make_api_key(server, "a@example.com")
    for model in ("gpt-5-ultra", "other/gpt-4o-mini", "mock/"):
        err = assert_error(await chat(client, key, model=model), 404, "MODEL_NOT_FOUND")
        assert "/v1/models" in err["message"] and model in err["message"]
        assert err["param"] == "model"
    r = await client.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers=auth(key))
    assert_error(r, 404, "MODEL_NOT_FOUND")
    assert_error(await client.get("/v1/models/gpt-5-ultra", headers=auth(key)), 404, "MODEL_NOT_FOUND")
    assert mock.requests == []


# --- 503: the store is down -------------------------------------------------------------------------------------------


async def test_store_down_is_503_not_401(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, database_url: str
) -> None:
    cached = await make_api_key(server, "a@example.com")
    assert (await chat(client, cached)).status_code == 200  # now in the key cache
    # The store poll that sees the key's row as just changed (it was written a moment ago) keeps the cached entry:
    # nothing newer is in the store. Run here explicitly, so the poll that once evicted it runs on every run.
    assert await server.runtime.cache_sync.poll_once() == 0
    not_cached = await make_api_key(server, "a@example.com")
    await break_store(database_url, PG_ADMIN_DSN, server.runtime.engine)
    assert await server.runtime.cache_sync.poll_once() == 0  # a poll during the outage evicts nothing
    for key in (not_cached, "kr_live_" + secrets.token_urlsafe(32)):
        err = assert_error(await chat(client, key), 503, "SERVICE_UNAVAILABLE")
        assert "store" in err["message"]
    assert (await client.get("/readyz")).status_code == 503
    # Keys already in the cache keep working: the hot path needs no database.
    r = await chat(client, cached)
    assert r.status_code == 200, r.text
    assert len(mock.requests) == 2


async def test_break_store_closes_a_connection_held_meanwhile(server: RunningServer, database_url: str) -> None:
    # A connection checked out while the store breaks (as by a usage flush) goes back to the dropped pool later:
    # closed then by break_store's listener, not left to the garbage collector (aiosqlite warns there: a flaky
    # error in CI).
    engine = server.runtime.engine
    held = await engine.connect()
    driver = (await held.get_raw_connection()).driver_connection
    await break_store(database_url, PG_ADMIN_DSN, engine)
    if isinstance(driver, asyncpg.Connection):
        await poll_until(_closed(driver), what="the held connection terminated by the dropped database")
    else:
        assert driver._connection is not None  # aiosqlite's own handle: still open while held
    await held.close()
    if isinstance(driver, asyncpg.Connection):
        assert driver.is_closed()
    else:
        assert driver._connection is None  # None once closed


def _closed(driver: asyncpg.Connection) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return driver.is_closed()

    return probe


# --- lifecycle: revoke, disable, rotate, changes from another process ----------------------------------------------


async def test_revoked_key_fails_on_the_very_next_request(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "a@example.com")
    mgmt = await make_management_key(server, "a@example.com")
    assert (await chat(client, key)).status_code == 200
    r = await client.delete(f"/api/v1/keys/{key_hash(key)}", headers=auth(mgmt))
    assert r.status_code == 200, r.text
    assert_error(await chat(client, key), 401, "INVALID_API_KEY")
    assert_error(await client.get("/v1/key", headers=auth(key)), 401, "INVALID_API_KEY")


async def test_disable_then_enable(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "a@example.com")
    mgmt = await make_management_key(server, "a@example.com")
    url = f"/api/v1/keys/{key_hash(key)}"
    assert (await chat(client, key)).status_code == 200
    assert (await client.patch(url, json={"disabled": True}, headers=auth(mgmt))).status_code == 200
    assert_error(await chat(client, key), 401, "API_KEY_DISABLED")
    assert (await client.patch(url, json={"disabled": False}, headers=auth(mgmt))).status_code == 200
    assert (await chat(client, key)).status_code == 200


async def test_rotation(server: RunningServer, client: httpx.AsyncClient) -> None:
    mgmt = await make_management_key(server, "a@example.com")
    old = await make_api_key(server, "a@example.com")
    assert (await chat(client, old)).status_code == 200
    r = await client.post(f"/api/v1/keys/{key_hash(old)}/rotate", json={"grace_seconds": 0}, headers=auth(mgmt))
    assert r.status_code == 200, r.text
    new = r.json()["key"]
    assert new != old
    assert_error(await chat(client, old), 401, "INVALID_API_KEY")
    assert (await chat(client, new)).status_code == 200

    graced = await make_api_key(server, "a@example.com")
    assert (await chat(client, graced)).status_code == 200
    r = await client.post(f"/api/v1/keys/{key_hash(graced)}/rotate", json={"grace_seconds": 3600}, headers=auth(mgmt))
    assert r.status_code == 200, r.text
    successor = r.json()["key"]
    assert (await chat(client, graced)).status_code == 200
    assert (await chat(client, successor)).status_code == 200
    # Both secrets act as the same key.
    info_old = (await client.get("/v1/key", headers=auth(graced))).json()["data"]
    info_new = (await client.get("/v1/key", headers=auth(successor))).json()["data"]
    assert info_old["label"] == info_new["label"] == successor[:8] + "..." + successor[-4:]
    # Rotating again without grace ends the old secret's grace at once.
    r = await client.post(f"/api/v1/keys/{key_hash(graced)}/rotate", json={}, headers=auth(mgmt))
    latest = r.json()["key"]
    assert_error(await chat(client, graced), 401, "INVALID_API_KEY")
    assert_error(await chat(client, successor), 401, "INVALID_API_KEY")
    assert (await chat(client, latest)).status_code == 200


async def _eventually(client: httpx.AsyncClient, key: str, status: int) -> httpx.Response:
    return await poll_until(
        lambda: chat(client, key), lambda r: r.status_code == status, what=f"the key answered with {status}"
    )


async def test_changes_by_another_process(server: RunningServer, client: httpx.AsyncClient, settings: Settings) -> None:
    """The gateway's own background poll (every 0.2 s here) applies each change; nothing polls it explicitly.

    tests/integration/gateway/test_cache_sync.py drives the same poll step by step.
    """
    key = await make_api_key(server, "a@example.com")
    stable = key_hash(key)
    assert (await chat(client, key)).status_code == 200  # cached
    other = await open_runtime(settings, migrate=False)  # its own cache: the server's is not told
    try:
        record = await other.keys.get(key_hash=stable)
        assert record is not None
        await other.key_service.update(record=record, spec=KeyUpdate(disabled=True), actor=TEST_ACTOR)
        assert_error(await _eventually(client, key, 401), 401, "API_KEY_DISABLED")

        await other.key_service.update(
            record=record, spec=KeyUpdate(disabled=False, rate_limits={"rpm": 1}), actor=TEST_ACTOR
        )
        r = await _eventually(client, key, 200)
        assert r.headers["x-ratelimit-limit-requests"] == "1"

        account = await other.accounts.get(account_id=record.account_id)
        assert account is not None
        await other.account_service.update_account(account, AccountUpdate(status="inactive"), actor=TEST_ACTOR)
        assert_error(await _eventually(client, key, 403), 403, "USER_INACTIVE")
        await other.account_service.update_account(account, AccountUpdate(status="active"), actor=TEST_ACTOR)

        await other.key_service.revoke(record=record, actor=TEST_ACTOR)
        assert_error(await _eventually(client, key, 401), 401, "INVALID_API_KEY")
    finally:
        await other.close()


# --- headers on every answer ----------------------------------------------------------------------------------------


async def test_request_id_and_overhead_headers_everywhere(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "a@example.com", rate_limits={"rpm": 100})
    ok = await chat(client, key)
    stream = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth(key))
    emb = await client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}, headers=auth(key))
    bad = await chat(client, "nope")
    upstream = await chat(client, key, model="gpt-4o-mini-fail-500")
    for r in (ok, stream, emb, bad, upstream):
        assert r.headers["x-request-id"].startswith("req_")
        assert float(r.headers["x-keyrelay-overhead-ms"]) >= 0
    for r in (ok, stream, emb):
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "100"
        assert r.headers["x-ratelimit-reset-requests"] in ("59s", "60s")  # the oldest request leaves in ~60 s
    assert [int(r.headers["x-ratelimit-remaining-requests"]) for r in (ok, stream, emb)] == [99, 98, 97]
    assert stream.headers["content-type"].startswith("text/event-stream")
    ids = {r.headers["x-request-id"] for r in (ok, stream, emb, bad, upstream)}
    assert len(ids) == 5
    # Non-LLM answers carry a request id too.
    for path in ("/healthz", "/readyz", "/metrics", "/nowhere", "/api/v1/keys"):
        r = await client.get(path)
        assert r.headers["x-request-id"].startswith("req_"), path
