"""Routes and status codes clients rely on, the client address behind proxies, model names, and /v1/key."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.gateway.client_ip import client_address, forwarded_for_hops, parse_ip, x_forwarded_for_hops
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import PG_ADMIN_DSN, TEST_ACTOR, make_api_key
from tests.integration.gateway.helpers import CHAT, assert_error, auth, break_store, chat, make_account, usage_rows

# --- 7. routes: 404 for unknown paths whatever the method, 405 + Allow only for known ones -------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/audio/speech"),
        ("GET", "/v1/images/generations"),
        ("POST", "/v1/nope"),
        ("DELETE", "/v1/chat"),
        ("PUT", "/v1/"),
        ("POST", "/v1/models/"),
    ],
)
async def test_unknown_path_is_404_naming_it(
    server: RunningServer, client: httpx.AsyncClient, method: str, path: str
) -> None:
    key = await make_api_key(server, "routes@example.com")
    for headers in (auth(key), {}):  # with a good key or none: the route decides first
        r = await client.request(method, path, json=CHAT, headers=headers)
        err = assert_error(r, 404, "NOT_FOUND")
        assert path in err["message"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("GET", "/v1/responses", "POST"),
        ("PUT", "/v1/completions", "POST"),
        ("PUT", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET, HEAD"),
        ("DELETE", "/v1/models/gpt-4o-mini", "GET, HEAD"),
        ("POST", "/v1/key", "GET, HEAD"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    server: RunningServer, client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    r = await client.request(method, path)
    err = assert_error(r, 405, "METHOD_NOT_ALLOWED")
    assert r.headers["allow"] == allow and allow.split(",")[0] in err["message"]


async def test_head_is_get_without_a_body(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "head@example.com")
    for path in ("/v1/models", "/v1/key", "/v1/models/gpt-4o-mini"):
        r = await client.head(path, headers=auth(key))
        assert r.status_code == 200 and r.content == b"", path


async def test_openai_string_codes(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "codes@example.com")
    assert (await chat(client, None)).json()["error"]["code"] == "invalid_api_key"
    assert (await chat(client, key, model="no-such-model")).json()["error"]["code"] == "model_not_found"
    limited = await make_api_key(server, "codes@example.com", rate_limits={"rpm": 1})
    assert (await chat(client, limited)).status_code == 200
    assert (await chat(client, limited)).json()["error"]["code"] == "rate_limit_exceeded"


# --- 3. the client address: every split of the forwarded hops over header lines gives the same answer -------------

NETS = tuple(__import__("ipaddress").ip_network(n) for n in ("127.0.0.1/32", "10.9.0.0/16"))


def splits(hops: list[str]) -> list[list[str]]:
    """Every way of cutting the hop list into consecutive header lines."""
    out = []
    for mask in itertools.product([False, True], repeat=max(0, len(hops) - 1)):
        lines, current = [], [hops[0]]
        for cut, hop in zip(mask, hops[1:], strict=True):
            if cut:
                lines.append(", ".join(current))
                current = []
            current.append(hop)
        lines.append(", ".join(current))
        out.append(lines)
    return out


def test_client_address_does_not_depend_on_line_splits() -> None:
    peer = parse_ip("127.0.0.1")
    cases = [
        (["203.0.113.10", "198.51.100.9"], "198.51.100.9"),
        (["198.51.100.9", "203.0.113.10", "10.9.1.1", "127.0.0.1"], "203.0.113.10"),
        (["10.9.0.7", "127.0.0.1"], "10.9.0.7"),  # every hop trusted: the leftmost
        (["unknown", "10.9.0.1"], None),  # the client's hop is not an address: unknown client
        (["[2001:db8::1]:4711", "10.9.0.2"], "2001:db8::1"),
        (["203.0.113.7:8080"], "203.0.113.7"),
    ]
    for hops, expected in cases:
        answers = set()
        for lines in splits(hops):
            joined = ",".join(lines)  # what RFC 9110 §5.3 says repeated lines mean
            answers.add(client_address(peer, x_forwarded_for_hops(joined), NETS))
        assert answers == {parse_ip(expected)}, (hops, answers)


def test_forwarded_header_rfc7239() -> None:
    value = 'for=192.0.2.43;proto=https, for="[2001:db8:cafe::17]:4711";by=10.9.0.1, For=10.9.3.3'
    assert forwarded_for_hops(value) == ["192.0.2.43", '"[2001:db8:cafe::17]:4711"', "10.9.3.3"]
    assert client_address(parse_ip("127.0.0.1"), forwarded_for_hops(value), NETS) == parse_ip("2001:db8:cafe::17")
    quoted = 'for="_hidden;x=1, y", for=198.51.100.4'
    assert forwarded_for_hops(quoted) == ['"_hidden;x=1, y"', "198.51.100.4"]
    assert client_address(parse_ip("127.0.0.1"), ["_hidden"], NETS) is None


class TestRepeatedForwardedLines:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"trusted_proxies": "127.0.0.1/32"})

    async def test_two_header_lines_are_one_list(self, server: RunningServer, client: httpx.AsyncClient) -> None:
        key = await make_api_key(server, "xff@example.com", ip_allowlist=["203.0.113.10"])
        one_line = [("X-Forwarded-For", "203.0.113.10, 198.51.100.9")]
        two_lines = [("X-Forwarded-For", "203.0.113.10"), ("X-Forwarded-For", "198.51.100.9")]
        for extra in (one_line, two_lines):
            headers = [("Authorization", f"Bearer {key}"), ("Content-Type", "application/json"), *extra]
            r = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert "198.51.100.9" in assert_error(r, 403, "ACCESS_DENIED")["message"]
        # The client's own address, added by the proxy on a line of its own, is what counts.
        headers = [
            ("Authorization", f"Bearer {key}"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("X-Forwarded-For", "203.0.113.10"),
        ]
        ok = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert ok.status_code == 200, ok.text
        [row] = await usage_rows(server, ok.headers["x-request-id"])
        assert row["client_ip"] == "203.0.113.10"
        # The Forwarded header is ignored unless the operator says the proxies maintain it.
        spoof = [("Authorization", f"Bearer {key}"), ("Forwarded", "for=203.0.113.10")]
        assert_error(await client.post("/v1/chat/completions", json=CHAT, headers=spoof), 403, "ACCESS_DENIED")


class TestForwardedHeader:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"trusted_proxies": "127.0.0.1/32", "trusted_proxy_header": "forwarded"})

    async def test_forwarded_lines(self, server: RunningServer, client: httpx.AsyncClient) -> None:
        key = await make_api_key(server, "fwd@example.com", ip_allowlist=["203.0.113.10"])
        lines = [("Forwarded", "for=203.0.113.10"), ("Forwarded", "for=198.51.100.9;proto=https")]
        r = await client.post("/v1/chat/completions", json=CHAT, headers=[("Authorization", f"Bearer {key}"), *lines])
        assert_error(r, 403, "ACCESS_DENIED")
        lines = [("Forwarded", 'for="198.51.100.9"'), ("Forwarded", "for=203.0.113.10")]
        r = await client.post("/v1/chat/completions", json=CHAT, headers=[("Authorization", f"Bearer {key}"), *lines])
        assert r.status_code == 200, r.text
        xff = [("Authorization", f"Bearer {key}"), ("X-Forwarded-For", "203.0.113.10")]
        assert_error(await client.post("/v1/chat/completions", json=CHAT, headers=xff), 403, "ACCESS_DENIED")


# --- 4. one resolution rule: listing, retrieval, routing, whitelist and price agree -------------------------------


@pytest.fixture
async def groq() -> AsyncIterator[MockUpstream]:
    async with MockUpstream() as upstream:
        yield upstream


@pytest.fixture
async def openai_up() -> AsyncIterator[MockUpstream]:
    async with MockUpstream() as upstream:
        yield upstream


async def test_one_model_resolution_rule(
    database_url: str, groq: MockUpstream, openai_up: MockUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    providers = (
        ProviderConfig(
            name="groq",
            base_url=groq.base_url,
            models=(
                ModelConfig(id="openai/gpt-oss-20b", input_per_mtok=Decimal("0.1"), output_per_mtok=Decimal("0.5")),
            ),
        ),
        ProviderConfig(
            name="openai",
            base_url=openai_up.base_url,
            models=(
                ModelConfig(id="gpt-oss-20b", input_per_mtok=Decimal("9"), output_per_mtok=Decimal("9")),
                ModelConfig(id="meta-llama/Llama-3.3-70B-Instruct"),
            ),
        ),
    )
    settings = Settings(database_url=database_url, log_level="warning", providers=providers, usage_flush_interval_s=0.1)
    caplog.set_level(logging.WARNING)
    async with running_server(settings) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        # The hidden provider/model name is reported at start-up, naming both providers and the name.
        assert any("openai/gpt-oss-20b" in r.message and "'groq'" in r.message for r in caplog.records)
        key = await make_api_key(server, "models@example.com")
        listed = {m["id"]: m["owned_by"] for m in (await client.get("/v1/models", headers=auth(key))).json()["data"]}
        assert listed["openai/gpt-oss-20b"] == "groq" and listed["gpt-oss-20b"] == "openai"
        one = (await client.get("/v1/models/openai/gpt-oss-20b", headers=auth(key))).json()
        assert one["owned_by"] == "groq"
        llama = await client.get("/v1/models/meta-llama/Llama-3.3-70B-Instruct", headers=auth(key))
        assert llama.status_code == 200 and llama.json()["owned_by"] == "openai"
        r = await chat(client, key, model="openai/gpt-oss-20b")
        assert r.status_code == 200, r.text
        assert len(groq.requests) == 1 and openai_up.requests == []  # served where it was listed
        [row] = await usage_rows(server, r.headers["x-request-id"])
        assert row["provider"] == "groq"
        # groq's price: (prompt x 0.1 + completion x 0.5) per million tokens, rounded up to a micro-dollar.
        assert row["cost_micros"] == -(-(row["prompt_tokens"] * 100_000 + row["completion_tokens"] * 500_000) // 10**6)
        # A key allowed only "openai/gpt-oss-20b" cannot call the other model through the bare name.
        scoped = await make_api_key(server, "models@example.com", allowed_models=["openai/gpt-oss-20b"])
        assert_error(await chat(client, scoped, model="gpt-oss-20b"), 403, "ACCESS_DENIED")
        assert (await chat(client, scoped, model="openai/gpt-oss-20b")).status_code == 200
        ids = [m["id"] for m in (await client.get("/v1/models", headers=auth(scoped))).json()["data"]]
        assert ids == ["openai/gpt-oss-20b"]
        assert (await client.get("/v1/key", headers=auth(scoped))).json()["data"]["allowed_models"] == ids
        assert_error(await client.get("/v1/models/gpt-oss-20b", headers=auth(scoped)), 404, "MODEL_NOT_FOUND")
        # Ids with a slash keep working as themselves.
        assert (await chat(client, key, model="meta-llama/Llama-3.3-70B-Instruct")).status_code == 200


# --- 12. /v1/key shows every level that limits the key, and one meaning for lists --------------------------------


async def test_key_view_shows_every_spend_level(server: RunningServer, client: httpx.AsyncClient) -> None:
    rt = server.runtime
    await rt.account_service.create_group(
        GroupCreate(name="team", quota=Decimal("3"), quota_reset="monthly", allowed_models=["gpt-4o"]), actor=TEST_ACTOR
    )
    await make_account(server, "broke@example.com", balance="0", group="team")
    key = await make_api_key(server, "broke@example.com")
    # No limit of its own, but the empty account balance refuses it: the key holder sees why.
    assert_error(await chat(client, key, model="gpt-4o"), 402, "INSUFFICIENT_BALANCE", source="account")
    info = (await client.get("/v1/key", headers=auth(key))).json()["data"]
    assert info["limit"] is None and info["limit_remaining"] is None
    levels = {level["scope"]: level for level in info["limits"]}
    assert levels["account"]["limit"] == 0 and levels["account"]["remaining"] == 0
    assert levels["group"]["limit"] == 3 and levels["group"]["remaining"] == 3
    assert levels["group"]["reset"] == "monthly" and levels["group"]["resets_at"].startswith("20")
    assert "key" not in levels
    assert set(info) >= {"name", "label", "limits", "allowed_models", "allowed_providers"}
    assert "email" not in str(info) and "broke@example.com" not in str(info)  # nothing else of the account


async def test_list_meanings_are_the_same_everywhere(server: RunningServer, client: httpx.AsyncClient) -> None:
    await server.runtime.account_service.create_account(AccountCreate(email="lists@example.com"), actor=TEST_ACTOR)
    free = await make_api_key(server, "lists@example.com", allowed_models=[])
    info = (await client.get("/v1/key", headers=auth(free))).json()["data"]
    assert info["allowed_models"] is None and info["allowed_providers"] is None  # no restriction: null
    # A key that can call nothing shows an empty list, and means it.
    nothing = await make_api_key(server, "lists@example.com", region="nowhere")
    info = (await client.get("/v1/key", headers=auth(nothing))).json()["data"]
    assert info["allowed_models"] == [] and info["region"] == "nowhere"
    assert (await client.get("/v1/models", headers=auth(nothing))).json()["data"] == []


async def test_key_view_with_the_store_down_is_503(
    server: RunningServer, client: httpx.AsyncClient, database_url: str
) -> None:
    key = await make_api_key(server, "down@example.com", limit=1)
    assert (await client.get("/v1/key", headers=auth(key))).status_code == 200  # cached now
    await break_store(database_url, PG_ADMIN_DSN, server.runtime.engine)
    err = assert_error(await client.get("/v1/key", headers=auth(key)), 503, "SERVICE_UNAVAILABLE")
    assert "store" in err["message"]


async def test_probes_and_trailing_slashes(server: RunningServer, client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        r = await client.post(path)
        assert_error(r, 405, "METHOD_NOT_ALLOWED")
        assert r.headers["allow"] == "GET, HEAD"
        assert (await client.get(path)).status_code == 200
    r = await client.get("/api/v1/keys/")
    err = assert_error(r, 404, "NOT_FOUND")
    assert "/api/v1/keys/" in err["message"] and "location" not in r.headers
