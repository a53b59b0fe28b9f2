"""Upstream TLS through a running gateway: a provider behind a private CA, per-provider trust, and config errors.

The upstream is the mock served over HTTPS with a certificate from a test CA (trustme), so the system store does
not trust it; the store plays no part, so these run on SQLite only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme
import yaml
from pydantic import ValidationError

from keyrelay.config import ConfigError, ModelConfig, ProviderConfig, load_settings
from keyrelay.gateway.upstream_client import UpstreamPool
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import running_server
from tests.conftest import make_api_key
from tests.http_servers import server_context
from tests.integration.gateway.helpers import assert_error, auth, chat, provider_config, sqlite_settings, usage_rows
from tests.serving import serve_until_exit

MODELS = (ModelConfig(id="gpt-4o-mini"), ModelConfig(id="text-embedding-3-small"))


@pytest.fixture
async def https_mock(ca: trustme.CA) -> AsyncIterator[MockUpstream]:
    async with MockUpstream(ssl_context=server_context(ca, "127.0.0.1")) as mock:
        yield mock


def _provider(name: str, base_url: str, **tls: object) -> ProviderConfig:
    return provider_config(name, base_url, *MODELS, **tls)


async def test_private_ca_trusted_per_provider(tmp_path: Path, https_mock: MockUpstream, ca_file: str) -> None:
    # The same HTTPS upstream twice: "private" trusts the test CA, "system" only the system store.
    settings = sqlite_settings(
        tmp_path,
        _provider("private", https_mock.base_url, tls_ca_file=ca_file),
        _provider("system", https_mock.base_url),
    )
    async with running_server(settings) as server, httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        key = await make_api_key(server, "a@example.com")
        r = await chat(client, key, model="private/gpt-4o-mini")
        assert r.status_code == 200, r.text
        r = await chat(client, key, model="private/gpt-4o-mini", stream=True)
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        r = await client.post(
            "/v1/embeddings", json={"model": "private/text-embedding-3-small", "input": "hi"}, headers=auth(key)
        )
        assert r.status_code == 200, r.text
        # Bare model name: "private" answers; the untrusted "system" channel is never needed.
        assert (await chat(client, key)).status_code == 200
        assert len(https_mock.requests) == 4


async def test_an_untrusted_certificate_is_a_clear_error(
    tmp_path: Path, https_mock: MockUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keyrelay")
    settings = sqlite_settings(tmp_path, _provider("private", https_mock.base_url))  # no tls_ca_file
    async with running_server(settings) as server, httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        key = await make_api_key(server, "a@example.com")
        caplog.clear()
        r = await chat(client, key)
        err = assert_error(r, 502, "UPSTREAM_ERROR")
        assert err["message"] == "Could not reach the upstream: TLS certificate verification failed."
        [line] = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
        assert f"upstream private at 127.0.0.1:{https_mock.port}" in line
        assert "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate" in line
        [row] = await usage_rows(server, r.headers["x-request-id"])
        assert (row["status"], row["error_type"], row["provider"]) == (502, "UPSTREAM_ERROR", "private")
    assert https_mock.requests == []  # the handshake failed: nothing was sent


async def test_a_certificate_for_another_name_is_refused(tmp_path: Path, ca: trustme.CA, ca_file: str) -> None:
    async with MockUpstream(ssl_context=server_context(ca, "not-this-host.example")) as mock:
        settings = sqlite_settings(tmp_path, _provider("private", mock.base_url, tls_ca_file=ca_file))
        async with (
            running_server(settings) as server,
            httpx.AsyncClient(base_url=server.base_url, timeout=10) as client,
        ):
            key = await make_api_key(server, "a@example.com")
            err = assert_error(await chat(client, key), 502, "UPSTREAM_ERROR")
            assert "TLS certificate verification failed" in err["message"]


async def test_tls_verify_false_works_and_warns_at_start_up(
    tmp_path: Path, https_mock: MockUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keyrelay")
    settings = sqlite_settings(
        tmp_path,
        _provider("lab-vllm", https_mock.base_url, tls_verify=False),
        _provider("checked", https_mock.base_url),
    )
    async with running_server(settings) as server, httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings  # before any request: at start-up, for that provider only
        assert warnings[0].startswith("provider lab-vllm: tls_verify is false")
        assert f"127.0.0.1:{https_mock.port}" in warnings[0]
        key = await make_api_key(server, "a@example.com")
        r = await chat(client, key, model="lab-vllm/gpt-4o-mini")
        assert r.status_code == 200, r.text
        # The other provider on the same host still checks certificates (its own context and connections).
        err = assert_error(await chat(client, key, model="checked/gpt-4o-mini"), 502, "UPSTREAM_ERROR")
        assert "TLS certificate verification failed" in err["message"]


# --- configuration errors -------------------------------------------------------------------------------------------


def _yaml(tmp_path: Path, **provider: object) -> Path:
    path = tmp_path / "keyrelay.yaml"
    entry = {"name": "private", "base_url": "https://vllm.internal:8443/v1", "models": [{"id": "m"}], **provider}
    path.write_text(yaml.safe_dump({"providers": [entry]}))
    return path


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tls_ca_file": "{tmp}/missing.pem"}, "provider 'private': tls_ca_file {tmp}/missing.pem: no such file"),
        ({"tls_ca_file": "{tmp}"}, "provider 'private': tls_ca_file {tmp}: is a directory, not a PEM file"),
        (
            {"tls_ca_file": "{tmp}/keyrelay.yaml"},
            "provider 'private': tls_ca_file {tmp}/keyrelay.yaml: holds no usable PEM certificate",
        ),
        (
            {"tls_ca_file": "{ca}", "tls_verify": False},
            "provider 'private': tls_ca_file has no effect with tls_verify: false",
        ),
        (
            {"tls_verify": False, "base_url": "http://vllm.internal:8000/v1"},
            "provider 'private': tls_ca_file and tls_verify apply only to an https:// base_url",
        ),
    ],
)
def test_unusable_tls_settings_stop_start_up(
    tmp_path: Path, ca_file: str, fields: dict[str, object], message: str
) -> None:
    values = {k: str(v).format(tmp=tmp_path, ca=ca_file) if isinstance(v, str) else v for k, v in fields.items()}
    with pytest.raises(ConfigError) as info:
        load_settings(_yaml(tmp_path, **values))
    assert str(info.value).startswith("invalid setting providers.0: " + message.format(tmp=tmp_path)), info.value
    with pytest.raises(ValidationError):
        ProviderConfig.model_validate({"name": "private", "base_url": "https://vllm.internal:8443/v1", **values})


def test_ca_file_gone_by_start_up(tmp_path: Path, ca_file: str) -> None:
    # Validated when the settings were read, removed before the gateway started: start-up still says why.
    settings = sqlite_settings(tmp_path, _provider("private", "https://vllm.internal:8443/v1", tls_ca_file=ca_file))
    os.remove(ca_file)
    with pytest.raises(ConfigError, match=r"^provider 'private': tls_ca_file .*: no such file$"):
        UpstreamPool.from_settings(settings)


async def test_serve_with_a_missing_ca_file_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    config = _yaml(tmp_path, tls_ca_file=str(tmp_path / "missing.pem"))
    code, err = await serve_until_exit(tmp_path, config)
    assert code == 2
    assert err.strip() == (
        f"error: invalid setting providers.0: provider 'private': tls_ca_file {tmp_path}/missing.pem: no such file"
    )
