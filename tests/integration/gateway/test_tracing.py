"""OpenTelemetry traces: a server span per request with GenAI attributes, child spans for admission and upstream.

The spans are collected by the SDK's in-memory exporter; a last test checks that the OTLP/HTTP exporter is used
when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (an in-process receiver takes its POST).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from keyrelay.config import Settings
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer, running_server
from keyrelay.tracing import tracer_provider, traces_endpoint
from tests.conftest import make_api_key
from tests.integration.gateway.conftest import provider_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture
async def traced(tmp_path: Path, mock: MockUpstream) -> AsyncIterator[tuple[RunningServer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 't.db'}", log_level="warning", providers=(provider_for(mock),)
    )
    async with running_server(settings, tracer_provider=provider) as server:
        yield server, exporter


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


async def test_a_chat_request_is_one_server_span_with_admission_and_upstream_children(
    traced: tuple[RunningServer, InMemorySpanExporter],
) -> None:
    server, exporter = traced
    key = await make_api_key(server, "t@example.com", name="traced")
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    spans = exporter.get_finished_spans()
    request = _by_name(spans, "POST /v1/chat/completions")
    admission = _by_name(spans, "keyrelay.admission")
    upstream = _by_name(spans, "chat gpt-4o-mini")
    assert request.kind is SpanKind.SERVER and upstream.kind is SpanKind.CLIENT
    assert request.parent is None
    assert admission.parent is not None and admission.parent.span_id == request.context.span_id
    assert upstream.parent is not None and upstream.parent.span_id == request.context.span_id
    usage = r.json()["usage"]
    attributes = dict(request.attributes or {})
    assert isinstance(attributes.pop("keyrelay.cost_micros"), int)  # as in the usage record
    assert attributes == {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "http.response.status_code": 200,
        "keyrelay.request_id": r.headers["x-request-id"],
        "keyrelay.key.name": "traced",
        "keyrelay.provider": "mock",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.max_tokens": 5,
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": usage["completion_tokens"],
    }
    assert dict(upstream.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "keyrelay.provider": "mock",
        "http.response.status_code": 200,
    }
    # No prompt, answer or key material in any attribute.
    for span in spans:
        assert key not in str(span.attributes) and "hi" not in (span.attributes or {}).values()


async def test_failures_are_marked(traced: tuple[RunningServer, InMemorySpanExporter]) -> None:
    server, exporter = traced
    key = await make_api_key(server, "t@example.com", rate_limits={"rpm": 1})
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        failed = await client.post(
            "/v1/chat/completions", json={**CHAT, "model": "gpt-4o-mini-fail-500"}, headers=headers
        )
        limited = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        unknown = await client.get("/v1/models", headers={"Authorization": "Bearer kr_live_" + "x" * 43})
    assert (failed.status_code, limited.status_code, unknown.status_code) == (502, 429, 401)
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert [(s.attributes or {}).get("http.response.status_code") for s in servers] == [502, 429, 401]
    assert [(s.attributes or {}).get("error.type") for s in servers] == [
        "UPSTREAM_ERROR",
        "RATE_LIMIT_EXCEEDED",
        "INVALID_API_KEY",
    ]
    assert [s.status.status_code for s in servers] == [StatusCode.ERROR, StatusCode.UNSET, StatusCode.UNSET]
    attempts = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert attempts and all((s.attributes or {}).get("http.response.status_code") == 500 for s in attempts)
    assert all(s.status.status_code is StatusCode.ERROR for s in attempts)
    admissions = [s for s in spans if s.name == "keyrelay.admission"]
    assert [s.status.status_code for s in admissions] == [StatusCode.UNSET, StatusCode.ERROR]  # the refusal


async def test_a_gemini_route_names_no_model_in_the_span(traced: tuple[RunningServer, InMemorySpanExporter]) -> None:
    server, exporter = traced
    key = await make_api_key(server, "t@example.com")
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        r = await client.post("/v1beta/models/gpt-4o-mini:generateContent", json=body, headers={"x-goog-api-key": key})
    assert r.status_code == 200
    (request,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert request.name == "POST /v1beta/models/{model}:generateContent"
    assert (request.attributes or {})["gen_ai.operation.name"] == "generate_content"


async def test_without_the_endpoint_nothing_is_traced() -> None:
    none = Settings(otel_exporter_otlp_endpoint=None, otel_exporter_otlp_traces_endpoint=None)
    assert tracer_provider(none) is None


def test_the_traces_endpoint_follows_the_otlp_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert traces_endpoint(Settings(otel_exporter_otlp_endpoint="http://c:4318/")) == "http://c:4318/v1/traces"
    both = Settings(otel_exporter_otlp_endpoint="http://c:4318", otel_exporter_otlp_traces_endpoint="http://t/x")
    assert traces_endpoint(both) == "http://t/x"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env/traces")
    assert traces_endpoint(Settings()) == "http://env/traces"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu")
    provider = tracer_provider(Settings())
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "gateway-eu"
    finally:
        provider.shutdown()


async def test_the_endpoint_variable_turns_on_the_otlp_exporter(
    tmp_path: Path, mock: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def traces(request: web.Request) -> web.Response:
        await received.put(await request.read())
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'o.db'}", log_level="warning", providers=(provider_for(mock),)
    )
    assert settings.otel_exporter_otlp_endpoint == f"http://127.0.0.1:{port}"
    try:
        async with running_server(settings) as server:
            key = await make_api_key(server, "t@example.com")
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                r = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        # The shutdown flushed the batch: the receiver got it (OTLP protobuf holding the route's span name).
        body = await asyncio.wait_for(received.get(), timeout=30)
        assert b"POST /v1/chat/completions" in body and b"gen_ai.request.model" in body
    finally:
        await runner.cleanup()


def test_without_the_endpoint_the_sdk_is_not_even_imported(tmp_path: Path) -> None:
    """No cost when unset: a gateway started and stopped without the endpoint never imports the SDK."""
    script = (
        "import asyncio, sys\n"
        "from keyrelay.app import create_app\n"
        "from keyrelay.config import Settings\n"
        f"app = create_app(Settings(database_url='sqlite+aiosqlite:///{tmp_path / 'n.db'}'))\n"
        "async def main():\n"
        "    await app.startup()\n"
        "    await app.shutdown()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KEYRELAY_"))}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
