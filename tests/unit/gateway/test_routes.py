"""The LLM route table: every path of every wire, methods, and the wire an error is written in."""

from __future__ import annotations

import pytest

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.routes import Read, Route, error_protocol, match
from keyrelay.protocols.base import Operation, ProtocolName

OPENAI, ANTHROPIC, GEMINI = ProtocolName.OPENAI, ProtocolName.ANTHROPIC, ProtocolName.GEMINI


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/chat/completions", Route(OPENAI, Operation.CHAT)),
        ("POST", "/v1/embeddings", Route(OPENAI, Operation.EMBEDDINGS)),
        ("POST", "/v1/messages", Route(ANTHROPIC, Operation.CHAT)),
        ("POST", "/v1/messages/count_tokens", Route(ANTHROPIC, Operation.COUNT_TOKENS)),
        (
            "POST",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            Route(GEMINI, Operation.CHAT, model="gemini-2.5-flash"),
        ),
        (
            "POST",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            Route(GEMINI, Operation.CHAT, model="gemini-2.5-flash", stream=True),
        ),
        ("POST", "/v1/models/g:countTokens", Route(GEMINI, Operation.COUNT_TOKENS, model="g")),
        ("POST", "/v1/models/g:generateContent", Route(GEMINI, Operation.CHAT, model="g")),
        ("GET", "/v1/models", Route(OPENAI, read=Read.MODELS)),
        ("HEAD", "/v1/models", Route(OPENAI, read=Read.MODELS)),
        ("GET", "/v1/models/gpt-4o", Route(OPENAI, read=Read.MODEL, model="gpt-4o")),
        ("GET", "/v1beta/models", Route(GEMINI, read=Read.MODELS)),
        ("GET", "/v1beta/models/gemini-2.5-flash", Route(GEMINI, read=Read.MODEL, model="gemini-2.5-flash")),
        ("GET", "/v1/key", Route(OPENAI, read=Read.KEY)),
        (
            "GET",
            "/v1/models/meta-llama/Llama-3.3-70B",
            Route(OPENAI, read=Read.MODEL, model="meta-llama/Llama-3.3-70B"),
        ),
        ("GET", "/v1/models/ft:gpt-4o-mini:org::abc", Route(OPENAI, read=Read.MODEL, model="ft:gpt-4o-mini:org::abc")),
    ],
)
def test_routes(method: str, path: str, expected: Route) -> None:
    assert match(method, path, [], b"") == expected


def test_model_listing_answers_in_the_wire_the_client_speaks() -> None:
    assert match("GET", "/v1/models", [(b"anthropic-version", b"2023-06-01")], b"").protocol is ANTHROPIC
    assert match("GET", "/v1/models/claude", [(b"anthropic-version", b"2023-06-01")], b"").protocol is ANTHROPIC
    assert match("GET", "/v1/models", [(b"x-goog-api-key", b"k")], b"").protocol is GEMINI
    assert match("GET", "/v1/models", [], b"key=kr_live_x").protocol is GEMINI
    assert match("GET", "/v1/models", [], b"pageSize=5&key=kr_live_x").protocol is GEMINI
    assert match("GET", "/v1/models", [], b"monkey=1").protocol is OPENAI


@pytest.mark.parametrize(
    "path",
    [
        "/v1/nope",
        "/v1/models/g:explode",
        "/v1beta/models/:generateContent",
        "/v1beta/models/a/b:generateContent",
        "/v1beta/models/a/b",
        "/v1beta/other",
        "/v1/models/ft:gpt-4o-mini:org::abc",
    ],
)
def test_unknown_paths_are_404_naming_the_path(path: str) -> None:
    with pytest.raises(GatewayError) as caught:
        match("POST", path, [], b"")
    assert caught.value.error_type is ErrorType.NOT_FOUND
    assert path in caught.value.message


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/messages", "POST"),
        ("PUT", "/v1beta/models/g:generateContent", "POST"),
        ("POST", "/v1beta/models", "GET, HEAD"),
        ("DELETE", "/v1/models/gpt-4o", "GET, HEAD"),
    ],
)
def test_other_methods_are_405_with_allow(method: str, path: str, allow: str) -> None:
    with pytest.raises(GatewayError) as caught:
        match(method, path, [], b"")
    assert caught.value.error_type is ErrorType.METHOD_NOT_ALLOWED
    assert caught.value.allow == allow


@pytest.mark.parametrize(
    ("path", "headers", "query", "expected"),
    [
        ("/v1beta/anything", [], b"", GEMINI),
        ("/v1/models/x:frobnicate", [], b"", GEMINI),
        ("/v1/messages/batches", [], b"", ANTHROPIC),
        ("/v1/unknown", [(b"anthropic-version", b"2023-06-01")], b"", ANTHROPIC),
        ("/v1/unknown", [], b"key=abc", GEMINI),
        ("/v1/unknown", [], b"", OPENAI),
    ],
)
def test_error_wire_of_unknown_paths(
    path: str, headers: list[tuple[bytes, bytes]], query: bytes, expected: ProtocolName
) -> None:
    assert error_protocol(path, headers, query) is expected
