"""The upstream client's transport over real sockets: body framing, interim answers, failure kinds, TLS and proxies.

Each test runs on both event loops keyrelay meets: asyncio's (tests, embedded use) and uvloop (``keyrelay serve``),
because TLS start-up inside a tunnel and the exceptions raised on a failed connect are the loop's own code.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections.abc import Coroutine
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import pytest
import trustme
import uvloop

from keyrelay.gateway.proxy import ProxyRules
from keyrelay.gateway.upstream_client import (
    Origin,
    TransportFailure,
    UpstreamConnectionError,
    UpstreamPool,
    UpstreamTimeoutError,
    request_head,
)
from keyrelay.testing.mock_upstream import MockUpstream
from tests.http_servers import (
    ForwardProxy,
    ScriptedUpstream,
    chat_completion_json,
    chat_completion_sse,
    close_delimited,
    server_context,
    silent_server,
)

T = TypeVar("T")
CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
STREAM = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True})


class Runner(Protocol):
    """``asyncio.run`` or ``uvloop.run``: runs a coroutine to its end on a new event loop, returns its result."""

    def __call__(self, main: Coroutine[Any, Any, T], /) -> T: ...


@pytest.fixture(params=[pytest.param(asyncio.run, id="asyncio"), pytest.param(uvloop.run, id="uvloop")])
def run(request: pytest.FixtureRequest) -> Runner:
    """Each event loop keyrelay meets: a test taking ``run`` runs once on each."""
    runner: Runner = request.param
    return runner


def _head(origin: Origin) -> bytes:
    return request_head(origin, "/chat/completions", [("content-type", "application/json")])


async def _read(pool: UpstreamPool, origin: Origin, body: bytes = CHAT, timeout: float = 5) -> tuple[int, bytes]:
    response = await pool.request(origin, _head(origin), body, connect_timeout=timeout, read_timeout=timeout)
    return response.status, await response.read()


async def _failure(pool: UpstreamPool, origin: Origin, timeout: float = 5) -> UpstreamConnectionError:
    with pytest.raises(UpstreamConnectionError) as info:
        await _read(pool, origin, timeout=timeout)
    return info.value


async def _failure_at(
    url: str, *, proxies: ProxyRules | None = None, timeout: float = 5, **origin: Any
) -> UpstreamConnectionError:
    """The failure of a request to ``url`` from a new pool (``origin``: ca_file, verify)."""
    with closing(UpstreamPool(proxies=proxies)) as pool:
        return await _failure(pool, pool.origin(url, **origin), timeout)


async def _scripted_failure(answer: bytes, *, reset_after_answer: bool = False) -> TransportFailure:
    """The kind of failure of a request to a :class:`ScriptedUpstream` that writes ``answer`` and closes (or resets)."""
    async with ScriptedUpstream(lambda _h, _b: answer, reset_after_answer=reset_after_answer) as upstream:
        return (await _failure_at(upstream.base_url)).reason


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- bodies delimited by the connection closing ---------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_body_delimited_by_close_completes_and_is_not_reused(
    run: Runner, tls: bool, ca: trustme.CA, ca_file: str
) -> None:
    async def main() -> None:
        def answer(_head: bytes, body: bytes) -> bytes:
            if orjson.loads(body).get("stream"):
                return close_delimited(chat_completion_sse(), b"text/event-stream")
            return close_delimited(chat_completion_json())

        context = server_context(ca, "127.0.0.1") if tls else None
        async with ScriptedUpstream(answer, ssl_context=context) as upstream:
            with closing(UpstreamPool()) as pool:
                origin = pool.origin(upstream.base_url, ca_file=ca_file)
                for _ in range(2):
                    assert await _read(pool, origin) == (200, chat_completion_json())
                    assert not pool._idle.get(origin)  # the connection ended with the body: never pooled
                response = await pool.request(origin, _head(origin), STREAM, connect_timeout=5, read_timeout=5)
                assert b"".join([chunk async for chunk in response.chunks()]) == chat_completion_sse()
                assert upstream.connections == 3

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + chat_completion_json()[:50],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n" + chat_completion_json()[:16] + b"\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_a_framed_body_cut_by_close_is_a_failure(run: Runner, answer: bytes) -> None:
    assert run(_scripted_failure(answer)) is TransportFailure.CONNECTION_CLOSED


def test_a_close_delimited_body_cut_by_a_reset_is_a_failure(run: Runner) -> None:
    answer = close_delimited(chat_completion_json())
    assert run(_scripted_failure(answer, reset_after_answer=True)) is TransportFailure.CONNECTION_CLOSED


# --- interim answers ------------------------------------------------------------------------------------------------


def test_interim_answers_are_skipped(run: Runner) -> None:
    async def main() -> None:
        body = chat_completion_json()
        final = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        async with ScriptedUpstream(lambda _h, _b: interim + final, close_after_answer=False) as upstream:
            with closing(UpstreamPool()) as pool:
                origin = pool.origin(upstream.base_url)
                for _ in range(2):
                    response = await pool.request(origin, _head(origin), CHAT, connect_timeout=5, read_timeout=5)
                    assert response.status == 200
                    assert response.header(b"link") is None and response.header(b"content-type") == b"application/json"
                    assert await response.read() == body
                assert upstream.connections == 1  # kept alive across the interim answers

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    ],
    ids=["101", "not-http"],
)
def test_an_answer_that_is_not_http_is_an_invalid_response(run: Runner, answer: bytes) -> None:
    assert run(_scripted_failure(answer)) is TransportFailure.INVALID_RESPONSE


# --- the kind of each connect failure -------------------------------------------------------------------------------


def test_connection_refused(run: Runner) -> None:
    for host in ("127.0.0.1", "localhost"):  # localhost: refused on every address it resolves to
        exc = run(_failure_at(f"http://{host}:{_closed_port()}/v1"))
        assert exc.reason is TransportFailure.CONNECTION_REFUSED, exc


def test_name_resolution_failure(run: Runner) -> None:
    # RFC 6761: .invalid never resolves.
    exc = run(_failure_at("https://upstream.invalid/v1", timeout=30))
    assert exc.reason is TransportFailure.NAME_RESOLUTION
    assert "upstream.invalid:443" in str(exc)


def test_untrusted_certificate(run: Runner, ca: trustme.CA, ca_file: str) -> None:
    async def main() -> None:
        async with MockUpstream(ssl_context=server_context(ca, "127.0.0.1")) as mock:
            exc = await _failure_at(mock.base_url)  # the system store does not know our CA
            assert exc.reason is TransportFailure.TLS_CERTIFICATE
            assert "CERTIFICATE_VERIFY_FAILED" in str(exc)
            with closing(UpstreamPool()) as pool:
                assert (await _read(pool, pool.origin(mock.base_url, ca_file=ca_file)))[0] == 200
                assert (await _read(pool, pool.origin(mock.base_url, verify=False)))[0] == 200

    run(main())


def test_certificate_for_another_host(run: Runner, ca: trustme.CA, ca_file: str) -> None:
    async def main() -> UpstreamConnectionError:
        async with MockUpstream(ssl_context=server_context(ca, "other.example")) as mock:
            return await _failure_at(mock.base_url, ca_file=ca_file)

    exc = run(main())
    assert exc.reason is TransportFailure.TLS_CERTIFICATE
    assert "mismatch" in str(exc)


def test_tls_to_a_server_that_does_not_speak_tls(run: Runner) -> None:
    async def main() -> UpstreamConnectionError:
        async def plain(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(plain, "127.0.0.1", 0)
        try:
            return await _failure_at(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1")
        finally:
            server.close()

    exc = run(main())
    assert exc.reason is TransportFailure.TLS_HANDSHAKE, exc


def test_connect_and_read_timeouts(run: Runner) -> None:
    async def main() -> None:
        async with silent_server() as port:
            with closing(UpstreamPool()) as pool:
                # TCP connects, the TLS handshake never completes: a connect timeout.
                with pytest.raises(UpstreamTimeoutError) as info:
                    await _read(pool, pool.origin(f"https://127.0.0.1:{port}/v1"), timeout=0.3)
                assert info.value.reason is TransportFailure.CONNECT_TIMEOUT
                # Plain HTTP connects at once, the answer never comes: a read timeout.
                with pytest.raises(UpstreamTimeoutError) as info:
                    await _read(pool, pool.origin(f"http://127.0.0.1:{port}/v1"), timeout=0.3)
                assert info.value.reason is TransportFailure.READ_TIMEOUT

    run(main())


# --- TLS contexts ---------------------------------------------------------------------------------------------------


def test_one_tls_context_per_distinct_setting(ca_file: str, tmp_path: Path) -> None:
    pool = UpstreamPool()
    a = pool.origin("https://a.example/v1")
    b = pool.origin("https://b.example/v1", ca_file=ca_file)
    c = pool.origin("https://c.example/v1", ca_file=ca_file)
    d = pool.origin("https://d.example/v1", verify=False)
    assert a.ssl_context is not None and b.ssl_context is not None and d.ssl_context is not None
    assert b.ssl_context is c.ssl_context and len({id(a.ssl_context), id(b.ssl_context), id(d.ssl_context)}) == 3
    assert d.ssl_context.verify_mode is ssl.CERT_NONE and not d.ssl_context.check_hostname
    assert pool.origin("http://e.example/v1").ssl_context is None
    # Same host, different trust: different pool keys, so connections are never shared between them.
    assert pool.origin("https://a.example/v1") == a != pool.origin("https://a.example/v1", ca_file=ca_file)


# --- proxies --------------------------------------------------------------------------------------------------------


def test_https_through_a_connect_tunnel(run: Runner, ca: trustme.CA, ca_file: str) -> None:
    async def main() -> None:
        mock = MockUpstream(ssl_context=server_context(ca, "upstream.test"))
        proxy = ForwardProxy()
        async with mock, proxy:
            proxy.hosts["upstream.test:443"] = ("127.0.0.1", mock.port)
            with closing(UpstreamPool(proxies=ProxyRules(https_proxy=proxy.url))) as pool:
                origin = pool.origin("https://upstream.test/v1", ca_file=ca_file)
                assert origin.proxy is not None and origin.proxy.port == proxy.port
                for _ in range(2):
                    status, body = await _read(pool, origin)
                    assert status == 200 and orjson.loads(body)["object"] == "chat.completion"
                assert proxy.connects == ["upstream.test:443"]  # one tunnel, kept alive
                assert mock.requests[0].headers["host"] == "upstream.test"

    run(main())


def test_http_through_a_proxy_in_absolute_form(run: Runner) -> None:
    async def main() -> None:
        async with MockUpstream() as mock:
            hosts = {"upstream.test:8000": ("127.0.0.1", mock.port)}
            async with ForwardProxy(hosts=hosts, credentials=b"Basic " + base64.b64encode(b"u:p@ss")) as proxy:
                proxies = ProxyRules(http_proxy=f"http://u:p%40ss@127.0.0.1:{proxy.port}")
                with closing(UpstreamPool(proxies=proxies)) as pool:
                    assert (await _read(pool, pool.origin("http://upstream.test:8000/v1")))[0] == 200
                assert proxy.forwarded == [b"POST http://upstream.test:8000/v1/chat/completions HTTP/1.1"]
                assert "proxy-authorization" not in mock.requests[0].headers

    run(main())


def test_proxy_refusing_the_tunnel(run: Runner, ca_file: str) -> None:
    async def main() -> None:
        async with ForwardProxy(credentials=b"Basic c2VjcmV0") as proxy:
            proxies = ProxyRules(https_proxy=f"http://wrong:creds@127.0.0.1:{proxy.port}")
            exc = await _failure_at("https://upstream.test/v1", proxies=proxies, ca_file=ca_file)
            assert exc.reason is TransportFailure.PROXY_REFUSED
            assert "407" in str(exc) and "creds" not in str(exc)

    run(main())
    proxies = ProxyRules(https_proxy=f"http://127.0.0.1:{_closed_port()}")
    exc = run(_failure_at("https://upstream.test/v1", proxies=proxies))
    assert exc.reason is TransportFailure.CONNECTION_REFUSED and "through proxy" in str(exc)


def test_origin_request_line_and_host() -> None:
    pool = UpstreamPool(proxies=ProxyRules(https_proxy="http://proxy:3128", http_proxy="http://proxy:3128"))
    https = pool.origin("https://api.example.com/v1")
    assert _head(https).startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.example.com\r\n")
    http = pool.origin("http://vllm.internal:8000/v1")
    assert _head(http).startswith(b"POST http://vllm.internal:8000/v1/chat/completions HTTP/1.1\r\n")
    assert b"Proxy-Authorization" not in _head(http)
    # Loopback is never proxied.
    assert pool.origin("http://127.0.0.1:8000/v1").proxy is None
    assert pool.origin("https://localhost/v1").proxy is None
