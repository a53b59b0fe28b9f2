"""HTTPS_PROXY / HTTP_PROXY / NO_PROXY through a running gateway and a real forward proxy.

The upstream is named ``upstream.test``, a name only the proxy resolves (to the local mock): a request that
succeeds went through the proxy. SQLite only: the store plays no part.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme
import yaml

from keyrelay.app import create_app
from keyrelay.config import ConfigError
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import running_server
from tests.conftest import make_api_key
from tests.http_servers import ForwardProxy, server_context
from tests.integration.gateway.helpers import assert_error, chat, provider_config, sqlite_settings
from tests.serving import serve_until_exit

PASSWORD = "p@ss w0rd"  # percent-encoded in the proxy URL
CREDENTIALS = b"Basic " + base64.b64encode(f"relay:{PASSWORD}".encode())


@pytest.fixture
async def https_mock(ca: trustme.CA) -> AsyncIterator[MockUpstream]:
    async with MockUpstream(ssl_context=server_context(ca, "upstream.test")) as mock:
        yield mock


@pytest.fixture
async def proxy(https_mock: MockUpstream, mock: MockUpstream) -> AsyncIterator[ForwardProxy]:
    hosts = {"upstream.test:443": ("127.0.0.1", https_mock.port), "upstream.test:8000": ("127.0.0.1", mock.port)}
    async with ForwardProxy(hosts=hosts, credentials=CREDENTIALS) as forward_proxy:
        yield forward_proxy


def _proxy_url(proxy: ForwardProxy, password: str = "p%40ss%20w0rd") -> str:
    return f"http://relay:{password}@127.0.0.1:{proxy.port}"


async def test_https_proxy_from_the_environment_tunnels_with_connect(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    proxy: ForwardProxy,
    https_mock: MockUpstream,
    mock: MockUpstream,
    ca_file: str,
) -> None:
    caplog.set_level(logging.INFO, logger="keyrelay")
    monkeypatch.setenv("HTTPS_PROXY", _proxy_url(proxy))
    monkeypatch.delenv("https_proxy", raising=False)
    settings = sqlite_settings(
        tmp_path,
        provider_config("far", "https://upstream.test/v1", tls_ca_file=ca_file),
        provider_config("near", mock.base_url),  # loopback: always direct
    )
    assert settings.https_proxy == _proxy_url(proxy)
    async with running_server(settings) as server, httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        key = await make_api_key(server, "a@example.com")
        assert (await chat(client, key, model="far/gpt-4o-mini")).status_code == 200
        r = await chat(client, key, model="far/gpt-4o-mini", stream=True)
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        assert (await chat(client, key, model="near/gpt-4o-mini")).status_code == 200
    assert proxy.connects == ["upstream.test:443"]  # one tunnel, reused; "near" never went through the proxy
    assert proxy.authorizations == [CREDENTIALS]
    assert len(https_mock.requests) == 2 and len(mock.requests) == 1
    # TLS ran end to end inside the tunnel: the upstream saw its own host name and none of the proxy's headers.
    assert all(q.headers["host"] == "upstream.test" for q in https_mock.requests)
    assert all("proxy-authorization" not in q.headers for q in https_mock.requests)
    assert f"provider far: reached through the HTTP proxy 127.0.0.1:{proxy.port}" in caplog.text
    assert PASSWORD not in caplog.text and "p%40ss" not in caplog.text


async def test_http_proxy_gets_absolute_form_requests(tmp_path: Path, proxy: ForwardProxy, mock: MockUpstream) -> None:
    settings = sqlite_settings(
        tmp_path, provider_config("far", "http://upstream.test:8000/v1"), http_proxy=_proxy_url(proxy)
    )
    async with running_server(settings) as server, httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        key = await make_api_key(server, "a@example.com")
        r = await chat(client, key)
        assert r.status_code == 200, r.text
    assert proxy.forwarded == [b"POST http://upstream.test:8000/v1/chat/completions HTTP/1.1"]
    assert proxy.authorizations == [CREDENTIALS]
    assert mock.requests[0].path == "/v1/chat/completions"


@pytest.mark.parametrize("no_proxy", ["upstream.test", ".test", "example.com, upstream.test:443", "*"])
async def test_no_proxy_hosts_are_reached_directly(
    tmp_path: Path, proxy: ForwardProxy, ca_file: str, no_proxy: str
) -> None:
    # Directly, upstream.test does not resolve: the failure proves that the proxy was bypassed.
    settings = sqlite_settings(
        tmp_path,
        provider_config("far", "https://upstream.test/v1", tls_ca_file=ca_file),
        https_proxy=_proxy_url(proxy),
        no_proxy=no_proxy,
    )
    async with running_server(settings) as server, httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        key = await make_api_key(server, "a@example.com")
        err = assert_error(await chat(client, key), 502, "UPSTREAM_ERROR")
        assert err["message"] == "Could not reach the upstream: name resolution failed."
    assert proxy.connects == []


async def test_a_proxy_refusing_the_tunnel(
    tmp_path: Path, proxy: ForwardProxy, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keyrelay")
    settings = sqlite_settings(
        tmp_path,
        provider_config("far", "https://upstream.test/v1", tls_ca_file=ca_file),
        https_proxy=_proxy_url(proxy, "wrong-secret"),
    )
    async with running_server(settings) as server, httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        key = await make_api_key(server, "a@example.com")
        err = assert_error(await chat(client, key), 502, "UPSTREAM_ERROR")
        assert err["message"] == "Could not reach the upstream: the HTTP proxy refused to open a tunnel to it."
    assert "407 Proxy Authentication Required" in caplog.text and "upstream far at upstream.test:443" in caplog.text
    assert "wrong-secret" not in caplog.text


async def test_an_unusable_proxy_stops_start_up_only_where_it_applies(tmp_path: Path, mock: MockUpstream) -> None:
    socks = "socks5://relay:hunter2@proxy.example:1080"
    # Only a loopback provider: the proxy applies to nothing, the gateway starts.
    async with running_server(sqlite_settings(tmp_path, provider_config("near", mock.base_url), https_proxy=socks)):
        pass
    app = create_app(sqlite_settings(tmp_path, provider_config("far", "https://api.example.com/v1"), https_proxy=socks))
    with pytest.raises(ConfigError) as info:
        await app.startup()  # the first thing start-up does, before the store is opened
    assert str(info.value) == (
        "provider 'far': HTTPS_PROXY is socks5://proxy.example: keyrelay reaches upstreams only through http:// "
        "proxies (an https:// upstream is tunnelled with CONNECT, so TLS still runs end to end)"
    )
    assert app.runtime is None


async def test_serve_with_an_unusable_proxy_exits_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "keyrelay.yaml"
    provider = {"name": "far", "base_url": "https://api.example.com/v1", "models": [{"id": "m"}]}
    config.write_text(yaml.safe_dump({"providers": [provider]}))
    code, text = await serve_until_exit(tmp_path, config, HTTPS_PROXY="socks5://relay:hunter2@proxy.example:1080")
    assert code == 3  # uvicorn's start-up failure code
    assert "start-up failed: provider 'far': HTTPS_PROXY is socks5://proxy.example" in text
    assert "hunter2" not in text and "Traceback" not in text
