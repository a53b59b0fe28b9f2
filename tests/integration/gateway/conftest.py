"""Gateway fixtures: a gateway configured to use the mock OpenAI upstream (``mock``, from tests/conftest.py)."""

from __future__ import annotations

import pytest

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.testing.mock_upstream import MockUpstream


def provider_for(mock: MockUpstream, name: str = "mock", region: str | None = "us") -> ProviderConfig:
    models = [
        ModelConfig(id="gpt-4o-mini", input_per_mtok="0.15", output_per_mtok="0.60"),
        ModelConfig(id="gpt-4o", input_per_mtok="2.5", output_per_mtok="10"),
        ModelConfig(id="text-embedding-3-small", input_per_mtok="0.02"),
    ]
    for fault in ("fail-429", "fail-500", "fail-503", "fail-400", "hang", "cut-stream", "no-usage", "slow-ttfb"):
        models.append(ModelConfig(id=f"gpt-4o-mini-{fault}", input_per_mtok="0.15", output_per_mtok="0.60"))
    return ProviderConfig(
        name=name, kind="openai", base_url=mock.base_url, region=region, models=tuple(models), timeout_s=2
    )


@pytest.fixture
def settings(database_url: str, mock: MockUpstream) -> Settings:
    return Settings(
        database_url=database_url,
        cache_poll_interval_s=0.2,
        usage_flush_interval_s=0.1,
        log_level="warning",
        providers=(provider_for(mock),),
    )
