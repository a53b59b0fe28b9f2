"""Routing and failover through a running gateway, against the mock upstreams' fault models (docs/routing.md).

Every row of the failure table (which failures fail over, what the client sees when none serves the request),
weights and priorities, credential pools, circuit breakers on the fake clock, streams that fail before their
first content and after it, and one charge per request. The store plays no part: SQLite only.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.testing.clock import FakeClock
from keyrelay.testing.mock_upstream import REPLY_TEXT, MockUpstream
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import make_api_key, make_management_key
from tests.integration.gateway.helpers import assert_error, auth, chat, sqlite_settings, usage_rows

MINI = "gpt-4o-mini"
CHEAP = {"input_per_mtok": Decimal("0.15"), "output_per_mtok": Decimal("0.60")}
DEAR = {"input_per_mtok": Decimal("30"), "output_per_mtok": Decimal("60")}

# fault (in the primary's upstream model id) → (failure class, status and error type when no channel serves it)
FAILS_OVER = {
    "fail-500": ("transient", 502, "UPSTREAM_ERROR"),
    "fail-502": ("transient", 502, "UPSTREAM_ERROR"),
    "fail-503": ("transient", 503, "UPSTREAM_ERROR"),
    "fail-504": ("transient", 502, "UPSTREAM_ERROR"),
    "fail-529": ("transient", 502, "UPSTREAM_ERROR"),
    "fail-408": ("transient", 502, "UPSTREAM_ERROR"),
    "redirect-302": ("transient", 502, "UPSTREAM_ERROR"),
    "hang": ("transient", 504, "UPSTREAM_TIMEOUT"),  # no first byte before the read timeout
    "fail-429": ("rate_limit", 429, "UPSTREAM_RATE_LIMITED"),
    "fail-401": ("credential", 502, "UPSTREAM_ERROR"),
    "fail-402": ("credential", 502, "UPSTREAM_ERROR"),
    "fail-403": ("credential", 502, "UPSTREAM_ERROR"),
    "fail-404": ("model_access", 502, "UPSTREAM_ERROR"),
}
CALLER_FAULTS = ("fail-400", "fail-413", "fail-422", "prompt-too-long")


def _models(prefix: str, faults: tuple[str, ...], upstream: str | None, **prices: Any) -> tuple[ModelConfig, ...]:
    """``m-<fault>`` for each fault, sent upstream as ``gpt-4o-mini-<fault>`` (or ``upstream`` for all)."""
    return tuple(
        ModelConfig(id=f"{prefix}-{fault}", upstream_id=upstream or f"{MINI}-{fault}", **prices) for fault in faults
    )


def _provider(name: str, base_url: str, models: tuple[ModelConfig, ...], **fields: Any) -> ProviderConfig:
    values: dict[str, Any] = {"timeout_s": 0.5, "connect_timeout_s": 1, **fields}
    return ProviderConfig(name=name, base_url=base_url, models=models, **values)


def _attempts(row: dict[str, Any]) -> list[tuple[str, int, str | None]]:
    listed = orjson.loads(row["attempts"]) if row["attempts"] else []
    return [(a["provider"], a["status"], a["failure_class"]) for a in listed]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(settings: Settings, clock: FakeClock) -> AsyncIterator[RunningServer]:
    async with running_server(settings, clock=clock) as srv:
        yield srv


@pytest.fixture
async def key(server: RunningServer) -> str:
    return await make_api_key(server, "routing@example.com")


# --- every row of the failure table ---------------------------------------------------------------------------------


class TestFailureTable:
    @pytest.fixture
    def settings(self, tmp_path: Path, mock: MockUpstream) -> Settings:
        # One primary provider per fault ("p-<fault>"), so that one row's rests and breakers leave the others be.
        faults = (*FAILS_OVER, *CALLER_FAULTS)
        primaries = [
            _provider(f"p-{fault}", mock.base_url, _models("m", (fault,), None, **DEAR), priority=1) for fault in faults
        ]
        backup = _provider("backup", mock.base_url, _models("m", (*faults, "connect"), MINI, **CHEAP))
        down = _provider("down", "http://127.0.0.1:9/v1", _models("m", ("connect",), MINI), priority=1)
        return sqlite_settings(tmp_path, *primaries, backup, down)

    async def test_failures_that_fail_over_are_served_by_the_next_channel(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
    ) -> None:
        ids = {}
        for fault in (*FAILS_OVER, "connect"):
            mock.state.clear_requests()
            r = await chat(client, key, model=f"m-{fault}")
            assert r.status_code == 200, (fault, r.text)
            assert r.json()["choices"][0]["message"]["content"]
            upstream = [q.body["model"] for q in mock.requests]
            assert upstream == ([MINI] if fault == "connect" else [f"{MINI}-{fault}", MINI]), fault
            ids[fault] = r.headers["x-request-id"]
        rows = await usage_rows(server, *ids.values())
        for (fault, _), row in zip(ids.items(), rows, strict=True):
            cls = FAILS_OVER[fault][0] if fault != "connect" else "transient"
            first = "down" if fault == "connect" else f"p-{fault}"
            status = {"connect": 0, "hang": 0, "redirect-302": 302}.get(
                fault, int(fault[-3:]) if "fail" in fault else 0
            )
            assert _attempts(row) == [(first, status, cls), ("backup", 200, None)], fault
            assert (row["provider"], row["status"], row["error_type"]) == ("backup", 200, None)

    async def test_when_no_channel_serves_it_the_client_sees_the_tables_answer(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
    ) -> None:
        for fault, (_, status, error_type) in FAILS_OVER.items():
            r = await chat(client, key, model=f"p-{fault}/m-{fault}")  # one channel: nothing to fail over to
            err = assert_error(r, status, error_type)
            if fault in ("fail-401", "fail-402", "fail-403"):
                assert "gateway's provider credentials were refused" in err["message"], err
            if fault == "fail-429":
                assert r.headers["retry-after"] == "1"
        assert_error(await chat(client, key, model="down/m-connect"), 502, "UPSTREAM_ERROR")

    async def test_the_callers_faults_do_not_fail_over(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
    ) -> None:
        for fault in CALLER_FAULTS:
            mock.state.clear_requests()
            r = await chat(client, key, model=f"m-{fault}")
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["type"] == "INVALID_REQUEST"
            assert [q.body["model"] for q in mock.requests] == [f"{MINI}-{fault}"], fault  # never the backup
            if fault == "prompt-too-long":
                assert err["code"] == "context_length_exceeded"
                assert "maximum context length" in err["message"]

    async def test_a_refused_credential_is_logged_loudly_without_the_secret(
        self, server: RunningServer, client: httpx.AsyncClient, key: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.ERROR, logger="keyrelay")
        assert (await chat(client, key, model="m-fail-401")).status_code == 200
        [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert "p-fail-401" in line and "REFUSED" in line and "HTTP 401" in line


# --- priorities and weights -----------------------------------------------------------------------------------------


class TestPriorityAndWeight:
    @pytest.fixture
    def settings(self, tmp_path: Path, mock: MockUpstream) -> Settings:
        def one(upstream: str) -> tuple[ModelConfig, ...]:
            return (ModelConfig(id="m", upstream_id=upstream),)

        # Within priority 0: weights 1, 3 (model override) and 6; "standby" (priority -1) only after them.
        return sqlite_settings(
            tmp_path,
            _provider("standby", mock.base_url, one("standby"), priority=-1, weight=1000),
            _provider("a", mock.base_url, one("a")),
            _provider("b", mock.base_url, (ModelConfig(id="m", upstream_id="b", weight=3),)),
            _provider("c", mock.base_url, one("c"), weight=6),
        )

    async def test_requests_spread_by_weight_within_the_highest_priority(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
    ) -> None:
        assert server.app.gateway is not None
        server.app.gateway.rng.seed(20261206)
        draws = 500
        for _ in range(draws):
            assert (await chat(client, key, model="m")).status_code == 200
        seen = Counter(q.body["model"] for q in mock.requests)
        assert "standby" not in seen  # a lower priority is only tried after every higher one failed
        expected = {"a": draws / 10, "b": draws * 3 / 10, "c": draws * 6 / 10}
        chi2 = sum((seen[name] - e) ** 2 / e for name, e in expected.items())
        assert chi2 < 13.816, seen  # chi-square, 2 degrees of freedom, p = 0.001 (seeded: deterministic)


# --- credential pools -----------------------------------------------------------------------------------------------


class TestCredentialPools:
    @pytest.fixture
    def settings(self, tmp_path: Path, mock: MockUpstream) -> Settings:
        pool = _provider(
            "pool",
            mock.base_url,
            (ModelConfig(id="m", upstream_id=MINI, **CHEAP),),
            api_key_env=("POOL_A", "POOL_B", "POOL_C"),
            api_keys=(SecretStr("sk-pool-aaaaaaaa"), SecretStr("sk-pool-bbbbbbbb"), SecretStr("sk-pool-cccccccc")),
        )
        return sqlite_settings(tmp_path, pool)

    async def test_requests_take_the_credentials_in_turn(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
    ) -> None:
        for _ in range(6):
            assert (await chat(client, key, model="m")).status_code == 200
        used = [q.headers["authorization"][-1] for q in mock.requests]
        assert used == ["a", "b", "c", "a", "b", "c"]

    async def test_a_rate_limited_credential_rests_and_the_next_serves_the_request(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str, clock: FakeClock
    ) -> None:
        mock.options.key_status = {"sk-pool-aaaaaaaa": 429}
        r = await chat(client, key, model="m")
        assert r.status_code == 200, r.text
        assert [q.headers["authorization"][-1] for q in mock.requests] == ["a", "b"]
        [row] = await usage_rows(server, r.headers["x-request-id"])
        assert _attempts(row) == [("pool", 429, "rate_limit"), ("pool", 200, None)]
        assert orjson.loads(row["attempts"])[0]["credential"] == "POOL_A"
        # POOL_A rests for its Retry-After (1 s): the next requests use the two others only.
        mock.state.clear_requests()
        for _ in range(4):
            assert (await chat(client, key, model="m")).status_code == 200
        assert "a" not in {q.headers["authorization"][-1] for q in mock.requests}
        admin = await make_management_key(server, "ops@example.com", admin=True)
        listed = (await client.get("/api/v1/providers", headers=auth(admin))).json()["data"]
        [channel] = listed
        assert [c["name"] for c in channel["credentials"]] == ["POOL_A", "POOL_B", "POOL_C"]
        assert [c["state"] for c in channel["credentials"]] == ["resting", "ready", "ready"]
        assert "sk-pool" not in str(listed)
        scoped = await make_management_key(server, "member@example.com")
        assert_error(await client.get("/api/v1/providers", headers=auth(scoped)), 403, "FORBIDDEN")
        # After the rest it is used again.
        clock.advance(1.0)
        mock.options.key_status = {}
        mock.state.clear_requests()
        for _ in range(3):
            assert (await chat(client, key, model="m")).status_code == 200
        assert "a" in {q.headers["authorization"][-1] for q in mock.requests}

    async def test_a_refused_credential_rests_and_is_named_in_the_log(
        self,
        server: RunningServer,
        client: httpx.AsyncClient,
        mock: MockUpstream,
        key: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.ERROR, logger="keyrelay")
        mock.options.key_status = {"sk-pool-aaaaaaaa": 401}
        assert (await chat(client, key, model="m")).status_code == 200
        [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert "POOL_A" in line and "sk-pool" not in line
        mock.state.clear_requests()
        for _ in range(6):
            assert (await chat(client, key, model="m")).status_code == 200
        assert "a" not in {q.headers["authorization"][-1] for q in mock.requests}

    async def test_when_every_credential_fails_the_client_sees_the_shortest_retry_after(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
    ) -> None:
        mock.options.fail_status = 429
        r = await chat(client, key, model="m")
        assert_error(r, 429, "UPSTREAM_RATE_LIMITED")
        assert r.headers["retry-after"] == "1"
        assert len(mock.requests) == 3  # max_attempts: each credential once


# --- circuit breakers -----------------------------------------------------------------------------------------------


@pytest.fixture
async def second_mock() -> AsyncIterator[MockUpstream]:
    async with MockUpstream() as upstream:
        yield upstream


class TestBreakers:
    @pytest.fixture
    def settings(self, tmp_path: Path, mock: MockUpstream, second_mock: MockUpstream) -> Settings:
        model = (ModelConfig(id="m", upstream_id=MINI),)
        return sqlite_settings(
            tmp_path,
            _provider("primary", mock.base_url, model, priority=1),
            _provider("backup", second_mock.base_url, model),
            breaker_failures=3,
            breaker_cooldown_s=30,
        )

    async def test_opens_after_n_failures_not_one_then_probes_half_open_and_closes(
        self,
        server: RunningServer,
        client: httpx.AsyncClient,
        mock: MockUpstream,
        second_mock: MockUpstream,
        key: str,
        clock: FakeClock,
    ) -> None:
        admin = await make_management_key(server, "ops@example.com", admin=True)

        async def state() -> str:
            listed = (await client.get("/api/v1/providers", headers=auth(admin))).json()["data"]
            return str(next(c for c in listed if c["provider"] == "primary")["state"])

        mock.options.fail_status = 503
        for n in range(1, 4):  # each request tries the primary, then the backup serves it
            assert (await chat(client, key, model="m")).status_code == 200
            assert len(mock.requests) == n
            assert await state() == ("open" if n == 3 else "closed")
        for _ in range(3):  # open: skipped
            assert (await chat(client, key, model="m")).status_code == 200
        assert len(mock.requests) == 3 and len(second_mock.requests) == 6
        metrics = (await client.get("/metrics")).text
        assert 'keyrelay_channel_state{model="m",provider="primary"} 2.0' in metrics
        assert 'keyrelay_upstream_attempts_total{model="m",outcome="transient",provider="primary"} 3.0' in metrics
        assert 'keyrelay_upstream_attempts_total{model="m",outcome="success",provider="backup"} 6.0' in metrics
        # The cooldown passes: half-open. One probe; it fails, so the breaker opens again, for 60 s this time.
        clock.advance(30)
        assert await state() == "half_open"
        assert (await chat(client, key, model="m")).status_code == 200
        assert len(mock.requests) == 4 and await state() == "open"
        clock.advance(30)
        assert await state() == "open"
        clock.advance(30)
        assert await state() == "half_open"
        # The primary has recovered: the probe succeeds and closes the breaker; traffic returns to it.
        mock.options.fail_status = None
        for _ in range(3):
            assert (await chat(client, key, model="m")).status_code == 200
        assert len(mock.requests) == 7 and len(second_mock.requests) == 7
        assert await state() == "closed"

    async def test_when_every_channel_is_open_the_one_open_longest_is_still_tried(
        self,
        server: RunningServer,
        client: httpx.AsyncClient,
        mock: MockUpstream,
        second_mock: MockUpstream,
        key: str,
        clock: FakeClock,
    ) -> None:
        mock.options.fail_status = 503
        for _ in range(3):
            assert (await chat(client, key, model="m")).status_code == 200  # opens the primary's breaker
        clock.advance(5)
        second_mock.options.fail_status = 500
        for _ in range(3):
            assert_error(await chat(client, key, model="m"), 502, "UPSTREAM_ERROR")  # opens the backup's
        mock.state.clear_requests()
        second_mock.state.clear_requests()
        # Both are open: the request still makes one attempt, to the primary (open the longest), not none.
        assert_error(await chat(client, key, model="m"), 503, "UPSTREAM_ERROR")
        assert (len(mock.requests), len(second_mock.requests)) == (1, 0)


# --- streams: committed on the first content ------------------------------------------------------------------


def _sse_events(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


class TestStreams:
    @pytest.fixture
    def settings(self, tmp_path: Path, mock: MockUpstream) -> Settings:
        faults = ("early-stream-error", "early-cut-stream", "stream-error")
        primary = [_provider("primary", mock.base_url, _models("m", faults, None, **DEAR), priority=1)]
        backup = [_provider("backup", mock.base_url, _models("m", faults, MINI, **CHEAP))]
        for kind, path, upstream in (
            ("anthropic", "/v1", "claude-sonnet-4-5"),
            ("gemini", "/v1beta", "gemini-2.5-flash"),
        ):
            base = f"{mock.origin}{path}"
            early = (ModelConfig(id=f"{kind}-m", upstream_id=f"{upstream}-early-stream-error", **DEAR),)
            primary.append(_provider(f"{kind}-primary", base, early, kind=kind, priority=1))
            backup.append(
                _provider(
                    f"{kind}-backup", base, (ModelConfig(id=f"{kind}-m", upstream_id=upstream, **CHEAP),), kind=kind
                )
            )
        return sqlite_settings(tmp_path, *primary, *backup)

    @pytest.mark.parametrize("fault", ["early-stream-error", "early-cut-stream"])
    async def test_a_stream_that_fails_before_its_first_content_fails_over(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str, fault: str
    ) -> None:
        r = await chat(client, key, model=f"m-{fault}", stream=True, stream_options={"include_usage": True})
        assert r.status_code == 200
        assert r.text.rstrip().endswith("data: [DONE]")
        events = _sse_events(r.text)
        assert not any("error" in e for e in events), r.text
        text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
        assert text == " ".join(REPLY_TEXT.split()[:3])  # max_tokens 3: the backup's whole answer, once
        assert [q.body["model"] for q in mock.requests] == [f"{MINI}-{fault}", MINI]
        [row] = await usage_rows(server, r.headers["x-request-id"])
        assert _attempts(row) == [("primary", 0 if "cut" in fault else 200, "transient"), ("backup", 200, None)]

    async def test_after_the_first_content_there_is_no_failover_and_the_partial_output_is_charged(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
    ) -> None:
        r = await chat(client, key, model="m-stream-error", stream=True, max_tokens=50)
        assert r.status_code == 200
        events = _sse_events(r.text)
        assert "error" in events[-1]
        assert [q.body["model"] for q in mock.requests] == [f"{MINI}-stream-error"]  # never the backup
        [row] = await usage_rows(server, r.headers["x-request-id"])
        assert (row["provider"], row["status"], row["error_type"]) == ("primary", 502, "UPSTREAM_ERROR")
        assert row["completion_tokens"] > 0 and row["cost_micros"] > 0
        assert row["attempts"] is None  # one attempt, committed

    async def test_anthropic_and_gemini_streams_fail_over_too(
        self, server: RunningServer, client: httpx.AsyncClient, key: str
    ) -> None:
        body = {
            "model": "anthropic-m",
            "max_tokens": 20,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        r = await client.post("/v1/messages", json=body, headers={"x-api-key": key})
        assert r.status_code == 200
        names = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
        assert names.count("message_start") == 1 and names[-1] == "message_stop" and "error" not in names, names
        gemini = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        r = await client.post(
            "/v1beta/models/gemini-m:streamGenerateContent?alt=sse", json=gemini, headers={"x-goog-api-key": key}
        )
        assert r.status_code == 200
        chunks = _sse_events(r.text)
        assert not any("error" in c for c in chunks) and chunks[-1]["candidates"][0]["finishReason"] == "STOP"
        r = await chat(client, key, model="anthropic-m", stream=True)  # OpenAI client, Anthropic upstreams
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text


# --- accounting -------------------------------------------------------------------------------------------------


class TestOneCharge:
    @pytest.fixture
    def settings(self, tmp_path: Path, mock: MockUpstream) -> Settings:
        primary = _provider("primary", mock.base_url, _models("m", ("fail-503",), None, **DEAR), priority=1)
        backup = _provider("backup", mock.base_url, _models("m", ("fail-503",), MINI, **CHEAP))
        return sqlite_settings(tmp_path, primary, backup)

    @pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
    async def test_a_failed_over_request_is_charged_once_at_the_serving_channels_price(
        self, server: RunningServer, client: httpx.AsyncClient, stream: bool
    ) -> None:
        key = await make_api_key(server, "charged@example.com", limit=1)
        extra: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        r = await chat(client, key, model="m-fail-503", **extra)
        assert r.status_code == 200
        [row] = await usage_rows(server, r.headers["x-request-id"])
        # The backup's prices (0.15 / 0.60 per Mtok), never the failed primary's (30 / 60).
        expected = -(-(row["prompt_tokens"] * 150_000 + row["completion_tokens"] * 600_000) // 1_000_000)
        assert row["cost_micros"] == expected
        # The limits backend holds one charge, and no reservation is left: what remains is the limit less the cost.
        info = (await client.get("/v1/key", headers=auth(key))).json()["data"]
        assert round((1 - info["limit_remaining"]) * 1_000_000) == row["cost_micros"]
        assert round(info["usage"] * 1_000_000) == row["cost_micros"]


# --- per-request preferences ----------------------------------------------------------------------------------------


class TestRequestPreferences:
    @pytest.fixture
    def settings(self, tmp_path: Path, mock: MockUpstream) -> Settings:
        def one(name: str, upstream: str) -> ProviderConfig:
            return _provider(name, mock.base_url, (ModelConfig(id="m", upstream_id=upstream),))

        return sqlite_settings(tmp_path, one("a", "a-fail-503"), one("b", "b"), one("c", "c"))

    async def test_order_only_and_allow_fallbacks_steer_the_request_and_never_go_upstream(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, key: str
    ) -> None:
        async def upstreams(provider: dict[str, Any]) -> tuple[int, list[str]]:
            mock.state.clear_requests()
            r = await chat(client, key, model="m", provider=provider)
            assert all("provider" not in q.body for q in mock.requests)  # keyrelay's field, read and removed
            return r.status_code, [q.body["model"] for q in mock.requests]

        for _ in range(5):
            assert await upstreams({"order": ["c", "b"]}) == (200, ["c"])
            assert await upstreams({"only": ["b"]}) == (200, ["b"])
        status, seen = await upstreams({"order": ["a"]})  # a fails: the others follow
        assert status == 200 and seen[0] == "a-fail-503" and len(seen) == 2
        assert await upstreams({"order": ["a"], "allow_fallbacks": False}) == (503, ["a-fail-503"])
        assert await upstreams({"order": ["b"], "only": ["b", "c"], "allow_fallbacks": True}) == (200, ["b"])

    async def test_preferences_stay_within_the_keys_providers_and_bad_ones_name_their_field(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream
    ) -> None:
        key = await make_api_key(server, "narrow@example.com", allowed_providers=["b", "c"])
        r = await chat(client, key, model="m", provider={"only": ["a"]})
        assert assert_error(r, 400, "INVALID_REQUEST")["param"] == "provider"
        assert (await chat(client, key, model="m", provider={"order": ["a", "c"]})).status_code == 200
        assert [q.body["model"] for q in mock.requests] == ["c"]  # "a" is not this key's: passed over
        bad = {
            "provider": "a",
            "provider.order": {"order": "a"},
            "provider.only": {"only": [1]},
            "provider.allow_fallbacks": {"allow_fallbacks": "no"},
            "provider.sort": {"sort": "price"},
        }
        for field, value in bad.items():
            r = await chat(client, key, model="m", provider=value)
            assert assert_error(r, 400, "INVALID_REQUEST")["param"] == field, (field, r.text)
