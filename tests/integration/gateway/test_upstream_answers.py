"""Upstream answers that are not results, transport failures and close-delimited bodies, through a running gateway.

What the client is told, what is logged (the cause, with provider and host, never a secret) and what is recorded.
The store plays no part here, so these run on SQLite only.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import SecretStr

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.testing.mock_upstream import REDIRECT_LOCATION, MockUpstream
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import make_api_key
from tests.http_servers import (
    ScriptedUpstream,
    chat_completion_json,
    chat_completion_sse,
    close_delimited,
    is_stream_request,
    silent_server,
)
from tests.integration.gateway.conftest import provider_for
from tests.integration.gateway.helpers import (
    CHAT,
    assert_error,
    auth,
    chat,
    provider_config,
    sqlite_settings,
    usage_rows,
)

REDIRECTS = (300, 301, 302, 303, 304, 307, 308)  # every 3xx status RFC 9110 §15.4 defines
SECRET = "sk-provider-secret-never-logged"


def _provider(name: str, base_url: str, *models: ModelConfig, **fields: object) -> ProviderConfig:
    provider = provider_config(name, base_url, *models, **{"timeout_s": 2, "connect_timeout_s": 2, **fields})
    return provider.model_copy(update={"api_key": SecretStr(SECRET)})


@pytest.fixture
def settings(tmp_path: Path, mock: MockUpstream) -> Settings:
    return sqlite_settings(tmp_path, provider_for(mock))


@pytest.fixture
def caplog_warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="keyrelay")
    return caplog


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("keyrelay")]


# --- 3xx: an upstream redirect is an upstream failure ---------------------------------------------------------------


class TestRedirects:
    @pytest.fixture
    def settings(self, tmp_path: Path, mock: MockUpstream) -> Settings:
        moved = [ModelConfig(id=f"r{status}", upstream_id=f"gpt-4o-mini-redirect-{status}") for status in REDIRECTS]
        # "moved" serves gpt-4o-mini through a redirecting endpoint and comes first (its priority is higher):
        # failover must pass it by.
        moved.append(ModelConfig(id="gpt-4o-mini", upstream_id="gpt-4o-mini-redirect-301"))
        return sqlite_settings(
            tmp_path, _provider("moved", mock.base_url, *moved, priority=1), _provider("mock", mock.base_url)
        )

    @pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
    async def test_every_redirect_is_a_502_and_is_logged_with_its_location(
        self,
        server: RunningServer,
        client: httpx.AsyncClient,
        mock: MockUpstream,
        caplog_warnings: pytest.LogCaptureFixture,
        stream: bool,
    ) -> None:
        key = await make_api_key(server, "a@example.com")
        ids = []
        for status in REDIRECTS:
            caplog_warnings.clear()
            r = await chat(client, key, model=f"moved/r{status}", stream=stream)
            err = assert_error(r, 502, "UPSTREAM_ERROR")
            assert f"HTTP {status}" in err["message"] and "redirect" in err["message"]
            assert "moved.upstream.example" not in r.text  # the Location is for the operator's log only
            [line] = _warnings(caplog_warnings)
            assert "moved" in line and f"HTTP {status}" in line and REDIRECT_LOCATION in line, line
            assert f"127.0.0.1:{mock.port}" in line
            ids.append(r.headers["x-request-id"])
        # Not followed: one upstream request per client request, none to the Location.
        assert len(mock.requests) == len(REDIRECTS)
        for row in await usage_rows(server, *ids):
            assert (row["status"], row["error_type"], row["provider"]) == (502, "UPSTREAM_ERROR", "moved")

    async def test_a_redirect_fails_over_to_the_next_channel(
        self, server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream
    ) -> None:
        key = await make_api_key(server, "a@example.com")
        r = await chat(client, key)
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "chat.completion"
        assert [q.body["model"] for q in mock.requests] == ["gpt-4o-mini-redirect-301", "gpt-4o-mini"]
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth(key))
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")


# --- transport failures: the client learns the kind, the log says the cause -----------------------------------------


async def test_each_transport_failure_is_named_to_the_client_and_logged(
    tmp_path: Path, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    async with (
        ScriptedUpstream(lambda _h, _b: None) as hangs_up,
        ScriptedUpstream(lambda _h, _b: b"SSH-2.0-OpenSSH_9.6\r\n\r\n") as not_http,
        ScriptedUpstream(lambda _h, _b: b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"id":') as cut_body,
        silent_server() as silent_port,
    ):
        cases = {
            # provider: (base_url, client message, cause in the log)
            "refused": (f"http://127.0.0.1:{closed_port}/v1", "connection refused", "refused"),
            "nxdomain": ("https://upstream.invalid/v1", "name resolution failed", "upstream.invalid:443"),
            "hangs-up": (hangs_up.base_url, "closed before the answer was complete", "closed the connection"),
            "not-http": (not_http.base_url, "not valid HTTP", "invalid HTTP response"),
            # The status line and headers came, the body was cut: the failure surfaces while reading it.
            "cut-body": (cut_body.base_url, "closed before the answer was complete", "closed the connection"),
            "no-tls": (f"https://127.0.0.1:{silent_port}/v1", "Connecting to the upstream timed out", "timed out"),
        }
        providers = [
            _provider(name, url, ModelConfig(id=f"m-{name}"), connect_timeout_s=30 if name == "nxdomain" else 0.5)
            for name, (url, _, _) in cases.items()
        ]
        async with (
            running_server(sqlite_settings(tmp_path, *providers)) as server,
            httpx.AsyncClient(base_url=server.base_url, timeout=60) as client,
        ):
            key = await make_api_key(server, "a@example.com")
            for name, (url, words, cause) in cases.items():
                caplog_warnings.clear()
                r = await chat(client, key, model=f"m-{name}")
                kind = "UPSTREAM_TIMEOUT" if name == "no-tls" else "UPSTREAM_ERROR"
                err = assert_error(r, 504 if name == "no-tls" else 502, kind)
                assert words in err["message"], (name, err["message"])
                assert "Error" not in err["message"] and "127.0.0.1" not in err["message"]  # no internals
                [line] = _warnings(caplog_warnings)
                host = url.split("//")[1].split("/")[0]
                host = host if ":" in host else f"{host}:443"
                assert f"upstream {name} at {host}" in line and cause in line, line
            assert SECRET not in caplog_warnings.text


async def test_a_stream_cut_midway_is_logged_with_its_cause(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    key = await make_api_key(server, "a@example.com")
    r = await client.post(
        "/v1/chat/completions", json={**CHAT, "model": "gpt-4o-mini-cut-stream", "stream": True}, headers=auth(key)
    )
    assert r.status_code == 200 and '"error"' in r.text  # the status line had gone out: an error event ends it
    [line] = _warnings(caplog_warnings)
    assert f"upstream mock at 127.0.0.1:{mock.port} failed: connection_closed: upstream closed the connection" in line


# --- bodies delimited by the connection closing ---------------------------------------------------------------------


@pytest.fixture
async def close_delimited_upstream() -> AsyncIterator[ScriptedUpstream]:
    def answer(_head: bytes, body: bytes) -> bytes:
        if is_stream_request(body):
            return close_delimited(chat_completion_sse(("Hello", " from", " afar")), b"text/event-stream")
        return close_delimited(chat_completion_json("Hello from afar", prompt_tokens=7, completion_tokens=4))

    async with ScriptedUpstream(answer) as upstream:
        yield upstream


async def test_a_body_delimited_by_close_is_served(tmp_path: Path, close_delimited_upstream: ScriptedUpstream) -> None:
    settings = sqlite_settings(tmp_path, _provider("plain", close_delimited_upstream.base_url))
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=10) as client,
    ):
        key = await make_api_key(server, "a@example.com")
        ids = []
        for _ in range(2):
            r = await chat(client, key)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "Hello from afar"
            ids.append(r.headers["x-request-id"])
        r = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            headers=auth(key),
        )
        assert r.status_code == 200
        events = [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert "".join(e["choices"][0]["delta"]["content"] for e in events if e["choices"]) == "Hello from afar"
        assert r.text.rstrip().endswith("data: [DONE]")
        ids.append(r.headers["x-request-id"])
        rows = await usage_rows(server, *ids)
        assert [(row["status"], row["prompt_tokens"], row["completion_tokens"]) for row in rows] == [
            (200, 7, 4),
            (200, 7, 4),
            (200, 5, 3),
        ]
        assert not any(row["usage_estimated"] for row in rows)
    assert close_delimited_upstream.connections == 3  # each such connection ended with its body
