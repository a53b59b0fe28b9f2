"""Model name → ordered upstream channels, built once from the provider configuration.

One resolution rule serves every place that reads a model name (routing, ``/v1/models`` and
``/v1/models/{id}``, whitelist matching, pricing), through :meth:`RouteTable.resolve`:

1. a model id that a provider offers, written exactly, means every provider offering that id (each is
   a *channel*; the order they are tried in is drawn per request by ``routing/failover.py`` from their
   ``priority`` and ``weight``, never from the file's order);
2. otherwise ``provider/model`` means that provider's model.

Exact ids come first because they are what ``/v1/models`` lists and what clients copy, and because
ids that carry a vendor prefix are common (``openai/gpt-oss-20b`` on Groq, ``meta-llama/...`` on
Together): a provider named like that prefix must not silently take such a name over. A
``provider/model`` name hidden by an exact id this way is reported at start-up (``shadowed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keyrelay.config import ProviderConfig, Settings
from keyrelay.protocols.base import ProtocolName

_WIRES = {
    "openai": ProtocolName.OPENAI,
    "openai-compatible": ProtocolName.OPENAI,
    "anthropic": ProtocolName.ANTHROPIC,
    "gemini": ProtocolName.GEMINI,
}


@dataclass(frozen=True, slots=True)
class Credential:
    """One provider key of a channel's pool: ``label`` (its environment variable's name) is what logs show."""

    label: str
    secret: str | None  # None: the provider takes no key (a local server)
    index: int = 0  # its place in the provider's pool

    def __repr__(self) -> str:
        return f"Credential({self.label!r}, index={self.index})"  # never the secret


@dataclass(frozen=True, slots=True)
class Channel:
    """One way to serve a model: a provider endpoint, its credentials, the upstream model id, prices and rank.

    ``priority`` (higher first) and ``weight`` (share within one priority) place it in the failover order;
    ``credentials`` is the provider's pool (one entry without a pool), shared by all its channels.
    """

    provider: str
    kind: str
    base_url: str
    api_key: str | None  # the first credential's secret (the pool is ``credentials``)
    model: str
    upstream_model: str
    input_micros_per_mtok: int
    output_micros_per_mtok: int
    region: str | None
    timeout_s: float
    connect_timeout_s: float
    tls_ca_file: str | None = None  # PEM bundle trusted instead of the system store
    tls_verify: bool = True
    cache_read_micros_per_mtok: int = 0
    cache_write_micros_per_mtok: int = 0
    priority: int = 0
    weight: float = 1.0
    credentials: tuple[Credential, ...] = ()
    wire: ProtocolName = field(init=False)  # the wire the upstream speaks (``openai-compatible`` speaks OpenAI's)
    qualified_name: str = field(init=False)  # ``provider/model``: the channel's name

    def __post_init__(self) -> None:
        # Read on every request: computed once.
        object.__setattr__(self, "wire", _WIRES[self.kind])
        object.__setattr__(self, "qualified_name", f"{self.provider}/{self.model}")
        if not self.credentials:
            object.__setattr__(self, "credentials", (Credential("api_key", self.api_key),))


def _channels_of(provider: ProviderConfig) -> list[Channel]:
    credentials = tuple(Credential(label, secret, i) for i, (label, secret) in enumerate(provider.credentials))
    return [
        Channel(
            provider=provider.name,
            kind=provider.kind,
            base_url=provider.base_url,
            api_key=credentials[0].secret,
            model=m.id,
            upstream_model=m.upstream_id or m.id,
            input_micros_per_mtok=m.input_micros_per_mtok,
            output_micros_per_mtok=m.output_micros_per_mtok,
            region=provider.region,
            timeout_s=provider.timeout_s,
            connect_timeout_s=provider.connect_timeout_s,
            tls_ca_file=provider.tls_ca_file,
            tls_verify=provider.tls_verify,
            cache_read_micros_per_mtok=m.cache_read_micros_per_mtok,
            cache_write_micros_per_mtok=m.cache_write_micros_per_mtok,
            priority=provider.priority if m.priority is None else m.priority,
            weight=provider.weight if m.weight is None else m.weight,
            credentials=credentials,
        )
        for m in provider.models
    ]


class RouteTable:
    """Resolves a requested model name to its channels in O(1); see the module docstring for the rule."""

    def __init__(self, providers: tuple[ProviderConfig, ...]) -> None:
        self.models: tuple[Channel, ...] = tuple(c for p in providers for c in _channels_of(p))
        exact: dict[str, list[Channel]] = {}
        for channel in self.models:
            exact.setdefault(channel.model, []).append(channel)
        self._routes: dict[str, tuple[Channel, ...]] = {m: tuple(cs) for m, cs in exact.items()}
        self.shadowed: tuple[tuple[str, Channel, tuple[Channel, ...]], ...] = ()
        shadowed = []
        for channel in self.models:
            name = channel.qualified_name
            if name in exact:
                shadowed.append((name, channel, self._routes[name]))
            else:
                self._routes[name] = (channel,)
        self.shadowed = tuple(shadowed)
        self._whitelists: dict[frozenset[str], frozenset[str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RouteTable:
        """The table for the configured providers."""
        return cls(settings.providers)

    def resolve(self, model: str) -> tuple[Channel, ...]:
        """The channels a model name means (unordered: ``routing/failover.py`` orders them); empty: none."""
        return self._routes.get(model, ())

    def whitelisted(self, names: frozenset[str]) -> frozenset[str]:
        """Qualified names of the channels a whitelist admits: the union of what each entry resolves to.

        Memoised per distinct list (a handful in practice; the memo is bounded all the same).
        """
        hit = self._whitelists.get(names)
        if hit is None:
            hit = frozenset(c.qualified_name for name in names for c in self.resolve(name))
            if len(self._whitelists) >= 10_000:
                self._whitelists.clear()
            self._whitelists[names] = hit
        return hit

    def shadow_warnings(self) -> list[str]:
        """One sentence per ``provider/model`` name that an exact model id of another provider takes."""
        return [
            f"model name {name!r} is the id of a model of provider(s) {', '.join(repr(c.provider) for c in owners)}, "
            f"so it does not mean provider {channel.provider!r}'s model {channel.model!r}: call that one by its "
            "bare id, or give one of them another id in keyrelay.yaml"
            for name, channel, owners in self.shadowed
        ]
