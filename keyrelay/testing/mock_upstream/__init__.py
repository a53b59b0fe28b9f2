"""Mock LLM upstream used by keyrelay's tests, ``make demo`` and the benchmark: OpenAI, Anthropic and Gemini wires.

One small, fast :mod:`aiohttp.web` application speaks each provider's HTTP wire format the way the real API does,
so that the official SDKs (``openai``, ``anthropic``, ``google-genai``) and keyrelay itself can talk to it
unchanged. One module per wire -- :mod:`.openai` (Chat Completions, with :mod:`.openai_chat`; the Responses API in
:mod:`.responses` and :mod:`.responses_render`; legacy text completions in :mod:`.completions`; embeddings in
:mod:`.embeddings`), :mod:`.anthropic` and :mod:`.gemini` -- all served on one port, with what the model answers
in :mod:`.behaviour` (the same on every wire: tool calls, tool results, thinking, structured output, cache tokens,
stop and length cuts), the shared machinery in :mod:`.core` and the serving in :mod:`.server`.

Replies are deterministic: the assistant text is :data:`REPLY_TEXT` cycled word by word to
:attr:`MockOptions.reply_words` words (9 by default, i.e. exactly :data:`REPLY_TEXT`), cut short by
``max_completion_tokens`` / ``max_tokens`` (then ``finish_reason`` is ``"length"``). A JSON schema asking for
structured output (chat ``response_format`` ``json_schema``, Responses ``text.format`` ``json_schema``, Anthropic
``output_config.format``, Gemini ``responseJsonSchema`` / ``responseSchema``) makes the reply the compact JSON that
schema asks for (:func:`.behaviour.arguments_for`), in one piece.

Token-counting rule (documented so that tests can compute expected usage):

* chat prompt tokens = ``ceil(B / 4) + 3 * len(messages)`` where ``B`` is the total number of UTF-8 bytes of the
  message contents (string contents, plus the ``text`` of list-of-parts contents; other parts count 0 bytes);
* chat completion tokens = number of reply words emitted (one streamed content chunk per word);
* Responses input tokens = ``ceil(B / 4) + 3 * len(input items)`` where ``B`` counts ``instructions`` and the text
  of the input messages and tool outputs (:func:`count_responses_tokens`; a string ``input`` is one item);
* legacy completion prompt tokens = sum over prompts of ``ceil(utf8_bytes / 4)`` (``len(tokens)`` for token
  arrays);
* embedding prompt tokens = sum over inputs of ``ceil(utf8_bytes / 4)`` for strings, ``len(tokens)`` for token
  arrays.

Faults and behaviours are chosen per request through the model name (substring match), on every wire in that
wire's shape: ``fail-NNN`` (any 4xx/5xx status; ``fail-429`` carries ``retry-after: 1``), ``prompt-too-long``,
``redirect-3NN``, ``slow-ttfb``, ``hang``, ``held``, ``cut-stream``, ``stream-error`` (the wire's in-stream error
after 3 content deltas; Responses: ``response.failed``), their ``early-`` forms (before any content), ``no-usage``
(OpenAI and Gemini), ``paced``, ``framing-crlf`` / ``framing-cr``, and the behaviours ``parallel``, ``cache-hit``,
``cache-write``, ``safety``, ``blocked-prompt``; see :func:`create_mock_app` and :mod:`.behaviour`.
Every request received is recorded (bounded) in :attr:`MockState.requests`.

Given an :class:`ssl.SSLContext`, :class:`MockUpstream` serves HTTPS instead of HTTP (for TLS tests).

The server can run inside the current event loop (:class:`MockUpstream`, an async context manager), in a daemon
thread with its own loop (:func:`run_in_thread`, for synchronous tests), or from the command line
(``python -m keyrelay.testing.mock_upstream --port 8099``).
"""

from keyrelay.testing.mock_upstream.completions import count_completion_tokens
from keyrelay.testing.mock_upstream.core import (
    FAULT_REDIRECT,
    FRAMING,
    REDIRECT_LOCATION,
    REPLY_TEXT,
    MockOptions,
    MockState,
    RecordedRequest,
    reply_words,
)
from keyrelay.testing.mock_upstream.embeddings import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    MAX_EMBEDDING_DIMENSIONS,
    count_embedding_tokens,
    embedding_vector,
)
from keyrelay.testing.mock_upstream.openai import count_prompt_tokens
from keyrelay.testing.mock_upstream.openai_chat import SYSTEM_FINGERPRINT
from keyrelay.testing.mock_upstream.responses import CUSTOM_TOOL_INPUT, count_responses_tokens
from keyrelay.testing.mock_upstream.server import (
    DEFAULT_CLI_PORT,
    MOCK_KEY,
    SHUTDOWN_TIMEOUT_S,
    MockUpstream,
    create_mock_app,
    main,
    run_in_thread,
)

_SHUTDOWN_TIMEOUT_S = SHUTDOWN_TIMEOUT_S
"""Read by :class:`MockUpstream` at start-up (a test may monkeypatch it)."""

__all__ = [
    "CUSTOM_TOOL_INPUT",
    "DEFAULT_CLI_PORT",
    "DEFAULT_EMBEDDING_DIMENSIONS",
    "FAULT_REDIRECT",
    "FRAMING",
    "MAX_EMBEDDING_DIMENSIONS",
    "MOCK_KEY",
    "REDIRECT_LOCATION",
    "REPLY_TEXT",
    "SYSTEM_FINGERPRINT",
    "MockOptions",
    "MockState",
    "MockUpstream",
    "RecordedRequest",
    "count_embedding_tokens",
    "count_completion_tokens",
    "count_prompt_tokens",
    "count_responses_tokens",
    "create_mock_app",
    "embedding_vector",
    "main",
    "reply_words",
    "run_in_thread",
]
