"""Fixtures for the three wires: one mock upstream speaking OpenAI, Anthropic and Gemini, and a gateway with a
provider of each kind on it.

Model names a client uses: ``oa-model`` (an ``openai`` provider), ``an-model`` (``anthropic``) and ``ge-model``
(``gemini``), each with ``-<behaviour>`` variants (``parallel``, ``cache-hit``, ``stream-error``, ...) that the
mock reads from the upstream model id; and ``oc-model`` (``openai-compatible``, no variants).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key

# client model name prefix → (provider name, kind, base path on the mock, upstream model id prefix)
KINDS = {
    "oa": ("oa", "openai", "/v1", "gpt-4o-mini"),
    "an": ("an", "anthropic", "/v1", "claude-sonnet-4-5"),
    "ge": ("ge", "gemini", "/v1beta", "gemini-2.5-flash"),
}
VARIANTS = ("", "parallel", "cache-hit", "cache-write", "stream-error", "cut-stream", "prompt-too-long", "fail-429")
VARIANTS += ("fail-500", "fail-400", "safety", "blocked-prompt", "no-usage")
PRICES = {"input_per_mtok": Decimal("3"), "output_per_mtok": Decimal("15")}
CACHE_PRICES = {"cache_read_per_mtok": Decimal("0.3"), "cache_write_per_mtok": Decimal("3.75")}


def provider(mock: MockUpstream, short: str) -> ProviderConfig:
    name, kind, path, upstream = KINDS[short]
    models = []
    for variant in VARIANTS:
        suffix = f"-{variant}" if variant else ""
        models.append(
            ModelConfig(id=f"{short}-model{suffix}", upstream_id=f"{upstream}{suffix}", **PRICES, **CACHE_PRICES)
        )
    return ProviderConfig(
        name=name,
        kind=kind,
        base_url=f"{mock.origin}{path}",
        models=tuple(models),
        timeout_s=5,  # type: ignore[arg-type]
    )


def compatible(mock: MockUpstream) -> ProviderConfig:
    """An ``openai-compatible`` provider (vLLM, SGLang, ...): model ``oc-model`` on the mock's OpenAI wire."""
    model = ModelConfig(id="oc-model", upstream_id="gpt-4o-mini", **PRICES)
    return ProviderConfig(
        name="oc", kind="openai-compatible", base_url=f"{mock.origin}/v1", models=(model,), timeout_s=5
    )


@pytest.fixture
def settings(database_url: str, mock: MockUpstream) -> Settings:
    return Settings(
        database_url=database_url,
        cache_poll_interval_s=0.2,
        usage_flush_interval_s=0.1,
        log_level="warning",
        providers=(*(provider(mock, short) for short in KINDS), compatible(mock)),
    )


@pytest.fixture
async def key(server: RunningServer) -> AsyncIterator[str]:
    yield await make_api_key(server, "wires@example.com", name="wires")
