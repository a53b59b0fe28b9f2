"""OpenTelemetry traces of LLM requests, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; nothing otherwise.

One server span per request on ``/v1`` and ``/v1beta``, named after its route (``POST /v1/chat/completions``),
with child spans for the admission (``keyrelay.admission``) and for each upstream attempt (``chat gpt-4o``, a
client span, from the request's sending to the upstream's status line). Attributes follow the OpenTelemetry
semantic conventions for generative AI (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/,
development status): ``gen_ai.operation.name``, ``gen_ai.provider.name`` and, as the conventions before
v1.37 named it, ``gen_ai.system``, ``gen_ai.request.model``, ``gen_ai.request.max_tokens``,
``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``; and those for HTTP (``http.request.method``,
``http.route``, ``http.response.status_code``, ``error.type``, ``server.address``). No prompt, answer or
secret is ever an attribute; the key is named by its name (``keyrelay.key.name``).

The SDK reads its own configuration from the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ...) and exports over
OTLP/HTTP from a background thread, in batches. Without the endpoint, the SDK is not even imported, and the
request path pays one ``is None`` test per span it would have made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keyrelay.config import Settings
from keyrelay.protocols.base import Operation, ProtocolName

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

# gen_ai.operation.name by (client wire, operation): the conventions' well-known values.
_OPERATIONS: dict[Operation, str] = {
    Operation.CHAT: "chat",
    Operation.EMBEDDINGS: "embeddings",
    Operation.COMPLETIONS: "text_completion",
}
# gen_ai.provider.name by provider kind: the conventions' well-known values (others: the provider's own name).
_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini"}


def operation_name(operation: Operation | None, protocol: ProtocolName) -> str | None:
    """``gen_ai.operation.name`` of a request: ``chat``, ``generate_content`` (Gemini), ``embeddings``, ..."""
    if operation is Operation.CHAT and protocol is ProtocolName.GEMINI:
        return "generate_content"
    return None if operation is None else _OPERATIONS.get(operation)


def provider_name(kind: str, provider: str) -> str:
    """``gen_ai.provider.name`` of a channel: the well-known value of its kind, else the provider's name."""
    return _PROVIDERS.get(kind, provider)


def traces_endpoint(settings: Settings) -> str | None:
    """Where spans are sent: the traces URL, else ``/v1/traces`` under the base URL; None: no tracing.

    The OpenTelemetry exporter specification's rule for ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` and
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (https://opentelemetry.io/docs/specs/otel/protocol/exporter/).
    """
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        return settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    return None


def tracer_provider(settings: Settings) -> TracerProvider | None:
    """The process's tracer provider exporting over OTLP/HTTP, or None when no endpoint is set.

    The service is named by ``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` when set, else ``keyrelay``.
    """
    endpoint = traces_endpoint(settings)
    if endpoint is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "keyrelay"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def tracer_of(provider: Any) -> Tracer | None:
    """The keyrelay tracer of a tracer provider (``opentelemetry.sdk.trace.TracerProvider``), or None for none."""
    if provider is None:
        return None
    from keyrelay import __version__

    tracer: Tracer = provider.get_tracer("keyrelay", __version__)
    return tracer
