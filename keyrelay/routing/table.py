"""Model name → ordered upstream channels, built once from the provider configuration.

A client may name a model ``provider/model`` (exactly that channel) or bare ``model`` (every provider
offering it, in configuration order, which is also the failover order).
"""

from __future__ import annotations

from dataclasses import dataclass

from keyrelay.config import ProviderConfig, Settings


@dataclass(frozen=True, slots=True)
class Channel:
    """One way to serve a model: a provider endpoint, its credential, the upstream model id and prices."""

    provider: str
    kind: str
    base_url: str
    api_key: str | None
    model: str
    upstream_model: str
    input_micros_per_mtok: int
    output_micros_per_mtok: int
    region: str | None
    timeout_s: float
    connect_timeout_s: float
    tls_ca_file: str | None = None  # PEM bundle trusted instead of the system store
    tls_verify: bool = True

    @property
    def qualified_name(self) -> str:
        """``provider/model``."""
        return f"{self.provider}/{self.model}"


def _channels_of(provider: ProviderConfig) -> list[Channel]:
    secret = provider.api_key.get_secret_value() if provider.api_key is not None else None
    return [
        Channel(
            provider=provider.name,
            kind=provider.kind,
            base_url=provider.base_url,
            api_key=secret,
            model=m.id,
            upstream_model=m.upstream_id or m.id,
            input_micros_per_mtok=m.input_micros_per_mtok,
            output_micros_per_mtok=m.output_micros_per_mtok,
            region=provider.region,
            timeout_s=provider.timeout_s,
            connect_timeout_s=provider.connect_timeout_s,
            tls_ca_file=provider.tls_ca_file,
            tls_verify=provider.tls_verify,
        )
        for m in provider.models
    ]


class RouteTable:
    """Resolves a requested model to its channels in O(1)."""

    def __init__(self, providers: tuple[ProviderConfig, ...]) -> None:
        self._routes: dict[str, tuple[Channel, ...]] = {}
        bare: dict[str, list[Channel]] = {}
        for provider in providers:
            for channel in _channels_of(provider):
                self._routes[channel.qualified_name] = (channel,)
                bare.setdefault(channel.model, []).append(channel)
        for model, channels in bare.items():
            self._routes.setdefault(model, tuple(channels))
        self.models: tuple[Channel, ...] = tuple(c for p in providers for c in _channels_of(p))

    @classmethod
    def from_settings(cls, settings: Settings) -> RouteTable:
        """The table for the configured providers."""
        return cls(settings.providers)

    def channels(self, model: str) -> tuple[Channel, ...]:
        """Channels for a requested model name; empty when unknown."""
        return self._routes.get(model, ())
