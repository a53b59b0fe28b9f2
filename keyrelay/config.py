"""Settings: environment variables and keyrelay.yaml, read once, validated, frozen.

This is the only module that reads ``os.environ``. Everything else receives a ``Settings``.
Precedence: command-line flags > ``KEYRELAY_*`` environment variables > keyrelay.yaml > defaults.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from keyrelay.tls import TlsConfigError, TlsSettings, client_ssl_context

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./keyrelay.db"
MICROS_PER_USD = 1_000_000


class ConfigError(Exception):
    """The configuration is invalid; the message says where."""


class ModelConfig(BaseModel):
    """One model offered by a provider, with its prices in USD per million tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    upstream_id: str | None = Field(default=None, description="Model id sent upstream; defaults to id.")
    input_per_mtok: Decimal = Field(default=Decimal(0), ge=0)
    output_per_mtok: Decimal = Field(default=Decimal(0), ge=0)
    cache_read_per_mtok: Decimal | None = Field(default=None, ge=0, description="Default: the input price.")
    cache_write_per_mtok: Decimal | None = Field(default=None, ge=0, description="Default: the input price.")
    priority: int | None = Field(
        default=None, ge=-1_000_000, le=1_000_000, description="Overrides the provider's priority for this model."
    )
    weight: float | None = Field(
        default=None, gt=0, le=1_000_000, description="Overrides the provider's weight for this model."
    )

    @property
    def input_micros_per_mtok(self) -> int:
        """Input price in micro-dollars per million tokens."""
        return int(self.input_per_mtok * MICROS_PER_USD)

    @property
    def cache_read_micros_per_mtok(self) -> int:
        """Price of input tokens read from a prompt cache, micro-dollars per million (default: input price)."""
        price = self.cache_read_per_mtok if self.cache_read_per_mtok is not None else self.input_per_mtok
        return int(price * MICROS_PER_USD)

    @property
    def cache_write_micros_per_mtok(self) -> int:
        """Price of input tokens written to a prompt cache, micro-dollars per million (default: input price)."""
        price = self.cache_write_per_mtok if self.cache_write_per_mtok is not None else self.input_per_mtok
        return int(price * MICROS_PER_USD)

    @property
    def output_micros_per_mtok(self) -> int:
        """Output price in micro-dollars per million tokens."""
        return int(self.output_per_mtok * MICROS_PER_USD)


class ProviderConfig(BaseModel):
    """An upstream provider: where it is, how to authenticate, which models it serves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["openai", "openai-compatible", "anthropic", "gemini"] = "openai"
    base_url: str = Field(min_length=1)
    api_key_env: str | tuple[str, ...] | None = Field(
        default=None, description="Variable(s) holding the provider key; a list is a credential pool."
    )
    api_key: SecretStr | None = Field(default=None, description="Filled from api_key_env at load; never from the file.")
    api_keys: tuple[SecretStr, ...] = Field(
        default=(), description="A credential pool, filled from an api_key_env list at load; never from the file."
    )
    priority: int = Field(
        default=0, ge=-1_000_000, le=1_000_000, description="Channels of a higher priority are tried first."
    )
    weight: float = Field(
        default=1.0, gt=0, le=1_000_000, description="Share of requests among channels of one priority."
    )
    region: str | None = None
    timeout_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    tls_ca_file: str | None = Field(
        default=None, min_length=1, description="PEM bundle trusted for this provider instead of the system store."
    )
    tls_verify: bool = Field(default=True, description="False skips the certificate check (a start-up warning).")
    models: tuple[ModelConfig, ...] = ()

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _check_env_names(cls, value: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
        names = (value,) if isinstance(value, str) else value or ()
        if isinstance(value, tuple) and not value:
            raise ValueError("api_key_env: the list is empty")
        for name in names:
            if not name or len(name) > 200 or "=" in name or "\0" in name:
                raise ValueError(f"api_key_env: not an environment variable name: {name[:200]!r}")
        if len(set(names)) != len(names):
            raise ValueError("api_key_env: a variable is listed twice")
        return value

    @property
    def credentials(self) -> tuple[tuple[str, str | None], ...]:
        """The provider's credentials as (label, secret): the pool in order, else the one key (secret None: none).

        The label is the environment variable's name (never the secret), for logs and ``/api/v1/providers``.
        """
        env = self.api_key_env
        if self.api_keys:
            names = env if isinstance(env, tuple) else tuple(f"api_keys[{i}]" for i in range(len(self.api_keys)))
            return tuple((name, key.get_secret_value()) for name, key in zip(names, self.api_keys, strict=False))
        label = env if isinstance(env, str) else "api_key"
        return ((label, self.api_key.get_secret_value() if self.api_key is not None else None),)

    @model_validator(mode="after")
    def _check_tls(self) -> ProviderConfig:
        if self.tls_ca_file is None and self.tls_verify:
            return self
        if not self.base_url.startswith("https://"):
            raise ValueError(f"provider {self.name!r}: tls_ca_file and tls_verify apply only to an https:// base_url")
        if self.tls_ca_file is not None and not self.tls_verify:
            raise ValueError(f"provider {self.name!r}: tls_ca_file has no effect with tls_verify: false; keep one")
        if self.tls_ca_file is not None:
            try:  # read it now, so that a bad file stops start-up with this message
                client_ssl_context(TlsSettings(self.tls_ca_file))
            except TlsConfigError as exc:
                raise ValueError(f"provider {self.name!r}: {exc}") from None
        return self


class Settings(BaseSettings):
    """Every setting keyrelay has. Environment variables are ``KEYRELAY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="KEYRELAY_", frozen=True, extra="forbid")

    database_url: str = DEFAULT_DATABASE_URL
    config: Path | None = Field(default=None, description="Path of keyrelay.yaml.")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    trusted_proxies: str = Field(default="", description="Comma-separated CIDRs whose forwarding header is honoured.")
    trusted_proxy_header: Literal["x-forwarded-for", "forwarded"] = Field(
        default="x-forwarded-for", description="The header the trusted proxies maintain (the other one is ignored)."
    )
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Client connections (keyrelay/connections.py, keyrelay/http1.py).
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=3600, description="Time a connection has to send complete request headers (408)."
    )
    keepalive_timeout_s: int = Field(
        default=5, ge=1, le=3600, description="An idle keep-alive connection is closed after this many seconds."
    )
    max_connections: int = Field(
        default=10_000, ge=1, description="Open client connections per process; beyond it, requests get 503."
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest request line and headers together; a larger one gets 431 and its connection closed.",
    )
    cache_poll_interval_s: float = Field(default=1.0, gt=0)
    key_cache_size: int = Field(default=100_000, ge=1, description="Keys held in each process's key cache (LRU).")
    usage_flush_interval_s: float = Field(default=1.0, gt=0)
    usage_retention_days: int | None = Field(
        default=None, ge=1, le=36_500, description="Usage records older than this many days are deleted; unset: kept."
    )
    usage_journal_dir: Path | None = Field(
        default=None,
        description="Where usage records are journaled before each response completes (keyrelay/usage/journal.py).",
    )
    default_max_tokens: int = Field(default=4096, gt=0, description="Output-token ceiling assumed without max_tokens.")
    # Routing and failover (docs/routing.md).
    max_attempts: int = Field(default=3, ge=1, le=20, description="Upstream attempts per request, first included.")
    total_timeout_s: float = Field(
        default=600.0, gt=0, description="Time for every attempt until one answers (a stream: its first event)."
    )
    breaker_failures: int = Field(
        default=5, ge=2, le=1000, description="Failures within the window that open a channel's breaker."
    )
    breaker_window_s: float = Field(default=60.0, gt=0, description="The window in which breaker failures count.")
    breaker_cooldown_s: float = Field(default=30.0, gt=0, description="How long a breaker stays open the first time.")
    breaker_max_cooldown_s: float = Field(
        default=300.0, gt=0, description="The longest cooldown (it doubles on each reopening up to this)."
    )
    redis_url: str | None = Field(default=None, description="Redis for shared limits and cache invalidation.")
    redis_prefix: str = Field(default="keyrelay", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    limits_fail_open: bool = Field(default=False, description="Use local limits while Redis is unreachable.")
    migrate_on_start: bool = Field(default=True, description="Apply migrations at start-up.")
    metrics_per_key: bool = Field(
        default=False, description="Label requests, tokens and spend on /metrics by key name (small deployments)."
    )
    pid_file: Path | None = Field(default=None, description="Where serve writes its process id (keyrelay reload).")
    # Also read from the standard HTTPS_PROXY / HTTP_PROXY / NO_PROXY (see _StandardProxyVariables).
    https_proxy: str | None = Field(default=None, description="HTTP proxy for https:// upstreams (CONNECT tunnel).")
    http_proxy: str | None = Field(default=None, description="HTTP proxy for http:// upstreams.")
    no_proxy: str | None = Field(default=None, description="Hosts reached without the proxy, comma-separated.")
    # Also read from the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT (keyrelay/tracing.py).
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP base URL; traces go to <it>/v1/traces. Unset (both): no tracing."
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        default=None, description="The full OTLP/HTTP URL for traces; wins over the base URL."
    )
    providers: tuple[ProviderConfig, ...] = ()
    # The portal (docs/portal.md).
    signup: Literal["closed", "invite", "open"] = Field(
        default="closed", description="Who may create an account in the portal: nobody, invited emails, anyone."
    )
    signup_credit_usd: Decimal = Field(
        default=Decimal(0), ge=0, le=Decimal(1_000_000), description="Credit of an account made by sign-up."
    )
    signup_group: str | None = Field(default=None, description="Group an account made by sign-up joins.")
    public_url: str | None = Field(
        default=None,
        description="The portal's address as users reach it, for emailed links (e.g. https://kr.example.com).",
    )
    smtp_url: SecretStr | None = Field(
        default=None, description="smtp://[user:password@]host[:port] (STARTTLS) or smtps://...; unset: mail is logged."
    )
    smtp_user: str | None = Field(
        default=None, max_length=320, description="SMTP user when the URL names none (a password may then be anything)."
    )
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password when the URL holds none.")
    mail_from: str = Field(default="keyrelay <keyrelay@localhost>", min_length=3, max_length=320)
    session_idle_s: int = Field(default=7 * 86400, gt=0, description="A portal session ends after this long unused.")
    session_absolute_s: int = Field(
        default=30 * 86400, gt=0, description="A portal session ends this long after sign-in."
    )
    notify_interval_s: float = Field(default=60.0, gt=0, description="How often notifications due are looked for.")
    low_balance_usd: Decimal = Field(
        default=Decimal(5), ge=0, description="An account is told by email when its credit falls below this."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``KEYRELAY_*`` variables win over keyrelay.yaml's values, then the standard proxy, then OTLP variables."""
        return (
            env_settings,
            init_settings,
            _StandardProxyVariables(settings_cls),
            _StandardOtelVariables(settings_cls),
        )

    @field_validator("trusted_proxies")
    @classmethod
    def _check_cidrs(cls, value: str) -> str:
        for part in _split_csv(value):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError as exc:
                raise ValueError(f"not a CIDR: {part!r}") from exc
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"not an http(s) URL without query or fragment: {value!r}")
        return value.rstrip("/")

    @field_validator("smtp_url")
    @classmethod
    def _check_smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        parts = urllib.parse.urlsplit(value.get_secret_value())
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("not an smtp:// or smtps:// URL with a host")  # the URL may hold a password: not echoed
        return value

    @model_validator(mode="after")
    def _smtp_credentials_in_one_place(self) -> Settings:
        url = urllib.parse.urlsplit(self.smtp_url.get_secret_value()) if self.smtp_url is not None else None
        if url is not None and url.username and self.smtp_user:
            raise ValueError("the SMTP user is in both smtp_url and smtp_user: give it in one of them")
        if url is not None and url.password and self.smtp_password is not None:
            raise ValueError("the SMTP password is in both smtp_url and smtp_password: give it in one of them")
        if url is None and (self.smtp_user or self.smtp_password is not None):
            raise ValueError("smtp_user or smtp_password is set without smtp_url: no mail would use them")
        if self.smtp_password is not None and not (self.smtp_user or (url is not None and url.username)):
            raise ValueError("smtp_password is set without an SMTP user (smtp_user, or the user in smtp_url)")
        return self

    @model_validator(mode="after")
    def _cooldowns_ordered(self) -> Settings:
        if self.breaker_max_cooldown_s < self.breaker_cooldown_s:
            raise ValueError("breaker_max_cooldown_s is below breaker_cooldown_s")
        return self

    @model_validator(mode="after")
    def _unique_provider_names(self) -> Settings:
        names = [p.name for p in self.providers]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate provider names: {sorted(dupes)}")
        return self

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The trusted proxy CIDRs, parsed."""
        return tuple(ipaddress.ip_network(p, strict=False) for p in _split_csv(self.trusted_proxies))

    @property
    def is_sqlite(self) -> bool:
        """Whether the store is an SQLite file."""
        return self.database_url.startswith("sqlite")


class _StandardProxyVariables(PydanticBaseSettingsSource):
    """``https_proxy``, ``http_proxy`` and ``no_proxy`` as curl and Python's urllib read them.

    ``urllib.request.getproxies_environment``: either case, the lowercase name winning; an empty lowercase
    variable unsets; ``HTTP_PROXY`` is ignored when ``REQUEST_METHOD`` is set (a CGI environment, where
    a client's ``Proxy:`` header becomes ``HTTP_PROXY``; CVE-2016-1000110).
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: ``__call__`` reads the three variables at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """The proxy settings found in the environment."""
        found = urllib.request.getproxies_environment()
        names = {"https": "https_proxy", "http": "http_proxy", "no": "no_proxy"}
        return {field: found[key] for key, field in names.items() if found.get(key)}


class _StandardOtelVariables(PydanticBaseSettingsSource):
    """``OTEL_EXPORTER_OTLP_ENDPOINT`` and ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``: whether and where traces go.

    As the OpenTelemetry exporter specification defines them: the first a base URL (traces to ``/v1/traces``
    under it), the second the traces URL itself, winning. The SDK reads the other ``OTEL_*`` variables itself.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: ``__call__`` reads the variables at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """The endpoints found in the environment, if any."""
        found: dict[str, Any] = {}
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            if value := os.environ.get(name, "").strip():
                found[name.lower()] = value
        return found


def _split_csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _resolve_provider_secrets(providers: list[dict[str, Any]]) -> None:
    for provider in providers:
        if "api_key" in provider:
            raise ConfigError(
                f"provider {provider.get('name')!r}: put the upstream secret in an environment variable "
                "and name it with api_key_env; api_key is not read from the file"
            )
        if "api_keys" in provider:
            raise ConfigError(
                f"provider {provider.get('name')!r}: list the variables holding the keys in api_key_env; "
                "api_keys is not read from the file"
            )
        env_name = provider.get("api_key_env")
        if isinstance(env_name, list):
            # A pool: every variable must hold a key (a silent gap would shrink the pool unnoticed).
            missing = [str(n) for n in env_name if not os.environ.get(str(n))]
            if missing:
                raise ConfigError(
                    f"provider {provider.get('name')!r}: api_key_env lists variable(s) that are unset or empty: "
                    + ", ".join(missing)
                )
            provider["api_keys"] = [os.environ[str(n)] for n in env_name]
        elif env_name:
            secret = os.environ.get(str(env_name))
            if secret:
                provider["api_key"] = secret


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from keyrelay.yaml (if any), the environment and explicit overrides.

    Args:
        config_file: Path of keyrelay.yaml; ``KEYRELAY_CONFIG`` is used when None.
        **overrides: Values that win over everything (command-line flags); None values are ignored.

    Raises:
        ConfigError: The file is missing or unreadable, or a value is invalid.
    """
    path = config_file if config_file is not None else os.environ.get("KEYRELAY_CONFIG")
    file_values: dict[str, Any] = {}
    if path:
        file_values = _read_yaml(Path(path))
        file_values["config"] = str(path)
    providers = file_values.get("providers") or []
    if not isinstance(providers, list):
        raise ConfigError(f"{path}: providers must be a list")
    _resolve_provider_secrets(providers)
    try:
        settings = Settings(**file_values)
        clean = {k: v for k, v in overrides.items() if v is not None}
        if clean:
            # Flags are already typed by the CLI parser; model_copy keeps them above the environment.
            settings = settings.model_copy(update=clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])  # empty for a rule between settings
        message = str(first["msg"]).removeprefix("Value error, ")  # never the input: it may hold a secret
        raise ConfigError(f"invalid setting {where}: {message}" if where else f"invalid settings: {message}") from None
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def export_multiprocess_metrics(directory: Path) -> None:
    """Make the worker processes started after this call keep their metrics in ``directory``.

    prometheus-client's multiprocess mode: each worker's counters and histograms live in memory-mapped files
    there, and a scrape of any worker reads them all (``keyrelay/metrics.py``). The variable is read when a
    worker first imports prometheus-client, so it is set before the workers start.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def export_env(settings: Settings) -> None:
    """Put the settings into this process's environment for worker processes to read back.

    ``serve --workers N`` starts N processes that each call ``load_settings()``; flags given on the
    command line reach them this way. Providers are re-read from the same config file.
    """
    # The proxy settings reach the workers through the inherited environment, like every other variable.
    proxies = {"https_proxy", "http_proxy", "no_proxy"}
    for name, value in settings.model_dump(exclude={"providers", "config", *proxies}).items():
        if isinstance(value, SecretStr):  # str() of it is "**********": the workers need the secret itself
            value = value.get_secret_value()
        if value is not None:
            os.environ[f"KEYRELAY_{name.upper()}"] = str(value)
    if settings.config is not None:
        os.environ["KEYRELAY_CONFIG"] = str(settings.config)
