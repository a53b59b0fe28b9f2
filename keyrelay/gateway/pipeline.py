"""The LLM hot path: authenticate → authorize → admit → route → forward → settle → respond.

Only this module knows the order of the stages. It does no database I/O in steady state: keys come
from the in-process cache, admission is one call to the limits backend (in memory, or one Redis
round trip), usage goes to the batched writer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from keyrelay.asgi import Headers, Receive, Scope, Send, read_body, send_json
from keyrelay.cache.keycache import KeyCache, Principal
from keyrelay.clock import Clock
from keyrelay.config import Settings
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.admit import Pending, admission_request
from keyrelay.gateway.attempts import Attempts
from keyrelay.gateway.authorize import allowed_channels, authorize_key
from keyrelay.gateway.call import Call, Outcome, RelayedError, with_output_limit
from keyrelay.gateway.client_ip import ClientAddress, IPAddress
from keyrelay.gateway.forward import (
    UpstreamFailure,
    classify_exception,
    classify_response,
    log_transport_failure,
)
from keyrelay.gateway.key_view import (
    anthropic_model,
    anthropic_models,
    gemini_model,
    gemini_models,
    key_info,
    list_models,
    model_not_found,
    retrieve_model,
)
from keyrelay.gateway.pricing import max_cost_micros
from keyrelay.gateway.relays import OpenAIRelay, PassthroughRelay, Relay, ResponsesRelay, TranslatingRelay
from keyrelay.gateway.routes import Read, Route, error_protocol, match
from keyrelay.gateway.settlement import Settlement, log_request
from keyrelay.gateway.upstream_client import (
    Origin,
    UpstreamConnectionError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeoutError,
    request_head,
)
from keyrelay.gateway.wires import INBOUND, OUTBOUND, Inbound, anthropic_head_lines, anthropic_headers
from keyrelay.keys.format import KeyType, key_type_of, looks_like_key
from keyrelay.keys.hashing import key_hash
from keyrelay.limits.backend import Admission, LimitsBackend, StaleState, WindowStatus
from keyrelay.logs import SecretScrubber, request_id_var
from keyrelay.metrics import Metrics
from keyrelay.protocols.base import IMAGE_TOKEN_BOUND, InboundRequest, Operation, ProtocolName, ProviderPreferences
from keyrelay.protocols.canonical import Usage
from keyrelay.protocols.openai_stream import estimate_tokens, response_usage
from keyrelay.providers.failure import FailureClass
from keyrelay.providers.responses_passthrough import ResponsesPassthroughReader
from keyrelay.routing.failover import AttemptPlan, draw_order, preferred
from keyrelay.routing.health import STATE_VALUES, BreakerPolicy, Health
from keyrelay.routing.table import Channel, Credential, RouteTable
from keyrelay.store.keys import KeyRepository
from keyrelay.tasks import DisconnectWatch
from keyrelay.tracing import operation_name, provider_name
from keyrelay.usage.writer import UsageWriter

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger("keyrelay.gateway")
_HOLD_BYTES = 65_536  # a stream is committed after this many relayed bytes even without content
_CREDENTIAL_HINT = {
    ProtocolName.OPENAI: "Send your key as 'Authorization: Bearer kr_live_...'.",
    ProtocolName.ANTHROPIC: "Send your key as 'x-api-key: kr_live_...' or 'Authorization: Bearer kr_live_...'.",
    ProtocolName.GEMINI: "Send your key as 'x-goog-api-key: kr_live_...' or the key query parameter.",
    ProtocolName.RESPONSES: "Send your key as 'Authorization: Bearer kr_live_...'.",
}


class Gateway:
    """Serves /v1/* for OpenAI-speaking clients."""

    def __init__(
        self,
        *,
        settings: Settings,
        cache: KeyCache,
        routes: RouteTable,
        limits: LimitsBackend,
        pending: Pending,
        keys: KeyRepository,
        writer: UsageWriter,
        pool: UpstreamPool,
        metrics: Metrics,
        clock: Clock,
        health: Health | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._settings = settings
        self._tracer = tracer  # None: no tracing, and nothing of OpenTelemetry imported (keyrelay/tracing.py)
        self._cache = cache
        self._routes = routes
        self._limits = limits
        self._pending = pending
        self._keys = keys
        self._pool = pool
        self._targets: dict[tuple[str, int, ProtocolName, Operation, bool], tuple[Origin, bytes]] = {}
        self._metrics = metrics
        self.health = health or Health(clock, BreakerPolicy.from_settings(settings))
        self.rng = random.Random()  # the weighted draw of channels; a test may seed it
        metrics.channel_states = self._channel_states
        self._settlement = Settlement(limits, writer, metrics)
        self._clock = clock
        self._client_ip = ClientAddress(settings.trusted_proxy_networks, settings.trusted_proxy_header)
        self._scrubber = SecretScrubber(sorted({k.secret for c in routes.models for k in c.credentials if k.secret}))
        for warning in routes.shadow_warnings():
            log.warning("%s", warning)

    # --- edges -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        """Dispatch one LLM-route request; every error leaves in the shape of the client's wire."""
        if self._tracer is None:
            await self._handle(scope, receive, send, request_id, Outcome())
        else:
            await self._handle_traced(scope, receive, send, request_id)

    async def _handle_traced(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        """``_handle`` inside the request's server span (``keyrelay/tracing.py``)."""
        from opentelemetry.trace import SpanKind

        assert self._tracer is not None
        method: str = scope["method"]
        path: str = scope["path"]
        route = _MODEL_IN_PATH.sub("/models/{model}", path)
        status = 0

        async def observed(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        outcome = Outcome()
        attributes = {"http.request.method": method, "http.route": route, "keyrelay.request_id": request_id}
        with self._tracer.start_as_current_span(
            f"{method} {route}", kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            await self._handle(scope, receive, observed, request_id, outcome)
            for name, value in _span_attributes(outcome, status).items():
                span.set_attribute(name, value)
            if status >= 500:
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR))

    async def _handle(self, scope: Scope, receive: Receive, send: Send, request_id: str, outcome: Outcome) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        headers: Headers = scope["headers"]
        query: bytes = scope.get("query_string", b"")
        principal: Principal | None = None
        protocol = ProtocolName.OPENAI
        rid = [(b"x-request-id", request_id.encode())]
        try:
            try:
                route = match(method, path, headers, query)
            except GatewayError:
                protocol = error_protocol(path, headers, query)
                raise
            protocol = route.protocol
            inbound = INBOUND[protocol]
            principal = await self._authenticate(inbound, headers, query)
            outcome.key_name = principal.key.name
            client_ip = self._client_ip(scope)
            if route.operation is None or route.operation is Operation.COUNT_TOKENS:
                # No admission to compare the key's state with the shared marks: compare them here.
                principal = self._authorized(await self._cache.current(principal), client_ip)
            else:
                principal = await self._authorize(principal, client_ip)
            if route.operation is Operation.COUNT_TOKENS:
                await self._count_tokens(receive, send, inbound, route, principal, headers, outcome, rid)
                log_request(request_id, principal, method, path, 200, "-", started)  # not billed: no record
            elif route.operation is not None:
                await self._llm(scope, receive, send, request_id, principal, client_ip, route, started, outcome)
            elif route.read is Read.KEY:
                await send_json(send, 200, await self._key_info(principal), rid)
            else:
                await send_json(send, 200, self._read(principal, route), rid)
        except GatewayError as err:
            if outcome.error_type is None:
                outcome.error_type = err.error_type.name
            overhead = outcome.overhead_s  # set when an admitted request failed: its upstream time is not ours
            if overhead is None:
                overhead = time.perf_counter() - started
            extra = [(b"x-keyrelay-overhead-ms", f"{overhead * 1000:.3f}".encode()), *rid]
            await self._send_error(send, err, protocol, request_id, extra)
            if not outcome.settled:  # an admitted request was already counted, with its model, when settled
                name = principal.key.name if principal else "-"
                group = principal.group.name if principal and principal.group else "-"
                self._metrics.count_request(name, group, "-", "-", err.status, err.error_type.name)
                self._metrics.observe_overhead(overhead)
                log_request(request_id, principal, method, path, err.status, err.error_type.name, started)
        except Exception:
            # Nothing else should escape; if it does, the client still gets the JSON body and request id.
            log.exception("unexpected error in %s %s", method, path)
            if not outcome.started:
                await self._send_error(send, GatewayError(ErrorType.INTERNAL_ERROR), protocol, request_id, rid)

    async def _send_error(
        self, send: Send, err: GatewayError, protocol: ProtocolName, request_id: str, extra: Headers
    ) -> None:
        """The error answer in the client's wire (or the upstream's own body, for a relayed error)."""
        headers: Headers = list(extra)
        if err.retry_after is not None:
            headers.append((b"retry-after", str(max(1, math.ceil(err.retry_after))).encode()))
        if err.allow is not None:
            headers.append((b"allow", err.allow.encode()))
        if isinstance(err, RelayedError):
            body, content_type = err.body, err.content_type
            headers.append((b"x-keyrelay-error-type", err.error_type.name.encode()))
        else:
            body, content_type = INBOUND[protocol].encode_error(err, request_id), b"application/json"
        headers += [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _authenticate(self, inbound: Inbound, headers: Headers, query: bytes) -> Principal:
        token = inbound.credential(headers, query)
        if token is None:
            raise GatewayError(ErrorType.INVALID_API_KEY, _CREDENTIAL_HINT[inbound.name])
        if key_type_of(token) is KeyType.MANAGEMENT:
            raise GatewayError(
                ErrorType.INVALID_API_KEY, "Management keys (kr_mgmt_) cannot call LLM endpoints; use a kr_live_ key."
            )
        if not looks_like_key(token):
            raise GatewayError(ErrorType.INVALID_API_KEY)
        principal = await self._cache.get(key_hash(token))
        if principal is None or principal.key.key_type != KeyType.REGULAR.value:
            raise GatewayError(ErrorType.INVALID_API_KEY)
        return principal

    async def _authorize(self, principal: Principal, client_ip: IPAddress | None) -> Principal:
        """``authorize_key`` on the cached principal; a refusal is final only once the shared marks confirm it.

        A key enabled again (or an account reactivated) through another process is served on its next request:
        the refusal path, rare, pays the one Redis read that the admission saves the normal path.
        """
        try:
            authorize_key(principal, client_ip, self._clock.now_utc())
        except GatewayError:
            current = await self._cache.current(principal)
            if current is principal:
                raise
            return self._authorized(current, client_ip)
        return principal

    async def _refreshed(self, principal: Principal, client_ip: IPAddress | None) -> Principal:
        """The principal reloaded after the limits backend found it older than a recorded change, authorized again.

        Raises:
            GatewayError: INVALID_API_KEY when the key no longer authenticates (deleted, rotated past its grace),
                or the failing check of ``authorize_key``.
        """
        return self._authorized(await self._cache.refreshed(principal), client_ip)

    def _authorized(self, principal: Principal | None, client_ip: IPAddress | None) -> Principal:
        """A reloaded principal, checked as ``_authenticate`` and ``authorize_key`` check a cached one."""
        if principal is None or principal.key.key_type != KeyType.REGULAR.value:
            raise GatewayError(ErrorType.INVALID_API_KEY)
        authorize_key(principal, client_ip, self._clock.now_utc())
        return principal

    def _read(self, principal: Principal, route: Route) -> dict[str, Any]:
        """A GET route's answer, in the route's wire (``/v1/key`` is keyrelay's own)."""
        protocol = route.protocol
        if route.read is Read.MODELS:
            listing = list_models(principal, self._routes)
            if protocol is ProtocolName.ANTHROPIC:
                return anthropic_models(listing)
            return gemini_models(listing) if protocol is ProtocolName.GEMINI else listing
        if route.read is Read.MODEL:
            name = route.model or ""
            if protocol is ProtocolName.GEMINI:
                name = name.removeprefix("models/")
            model = retrieve_model(principal, self._routes, name)
            if protocol is ProtocolName.ANTHROPIC:
                return anthropic_model(model)
            return gemini_model(model) if protocol is ProtocolName.GEMINI else model
        raise AssertionError("/v1/key is answered by _key_info")

    async def _key_info(self, principal: Principal) -> dict[str, Any]:
        return await key_info(
            principal,
            routes=self._routes,
            limits=self._limits,
            keys=self._keys,
            pending=self._pending,
            now=self._clock.now_utc(),
        )

    # --- token counting ----------------------------------------------------------------------------

    async def _count_tokens(
        self,
        receive: Receive,
        send: Send,
        inbound: Inbound,
        route: Route,
        principal: Principal,
        headers: Headers,
        outcome: Outcome,
        rid: Headers,
    ) -> None:
        """``count_tokens`` / ``countTokens``: authorized like a call, never admitted, billed or windowed.

        Forwarded to the first allowed channel of the client's wire, if the model has one; otherwise a
        local estimate: about four bytes a token over the whole request body (which over-counts text by
        its JSON syntax) plus ``IMAGE_TOKEN_BOUND`` per image, never 0.
        """
        raw = await read_body(receive, self._settings.max_body_bytes)
        request = inbound.decode(Operation.COUNT_TOKENS, raw, route.model, False)
        channels = self._routes.resolve(request.model)
        if not channels:
            raise model_not_found(request.model)
        channels = allowed_channels(principal, request.model, channels, self._routes)
        same = tuple(c for c in channels if c.wire is inbound.name)
        if not same:
            tokens = max(1, estimate_tokens(len(raw))) + request.images * IMAGE_TOKEN_BOUND
            await send_json(send, 200, inbound.count_tokens_body(tokens), rid)
            return
        call = Call(request, inbound, sse=False, anthropic_headers=anthropic_headers(headers))
        attempts = self._attempts(same)
        while True:
            response, credential = await self._open(call, attempts, outcome)
            channel = outcome.channel
            assert channel is not None
            t0 = time.perf_counter()
            try:
                payload = await response.read()
            except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
                attempts.failed(channel, credential, classify_exception(exc, channel), time.perf_counter() - t0)
                continue
            finally:
                response.release()
            attempts.succeeded(channel, credential, response.status, time.perf_counter() - t0)
            break
        payload = self._scrubber.known(payload)
        await send_json(send, response.status, payload, rid)

    # --- chat and embeddings -----------------------------------------------------------------------

    async def _llm(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        principal: Principal,
        client_ip: IPAddress | None,
        route: Route,
        started: float,
        outcome: Outcome,
    ) -> None:
        assert route.operation is not None
        raw = await read_body(receive, self._settings.max_body_bytes)
        inbound = INBOUND[route.protocol]
        request = inbound.decode(route.operation, raw, route.model, route.stream)
        outcome.request = request
        resolved = self._routes.resolve(request.model)
        if not resolved:
            raise model_not_found(request.model)
        now = self._clock.now_utc()
        try:
            channels, admission = await self._admit(principal, request, resolved, request_id, now, check=True)
        except StaleState:
            # Reloaded after the mark was read, so the principal is at least as new as the change: no second check.
            principal = await self._refreshed(principal, client_ip)
            channels, admission = await self._admit(principal, request, resolved, request_id, now, check=False)
        reservation, window = admission.reservation, admission.window
        headers: Headers = scope["headers"]
        sse = route.protocol is not ProtocolName.GEMINI or b"alt=sse" in scope.get("query_string", b"")
        # Only an Anthropic client's own version and beta flags are forwarded (to Anthropic upstreams).
        client_headers = anthropic_headers(headers) if route.protocol is ProtocolName.ANTHROPIC else []
        call = Call(request, inbound, sse=sse, anthropic_headers=client_headers)
        attempts = self._attempts(channels, request.routing)
        settlement = self._settlement

        async def record() -> None:  # before the response's last bytes: see Settlement.charge
            await settlement.charge(principal, request, reservation, outcome, request_id, client_ip, started, now)

        try:
            if request.stream:
                await self._stream(receive, send, call, attempts, window, outcome, started, record)
            else:
                await self._unary(send, call, attempts, window, outcome, started, record)
        except GatewayError as err:
            outcome.status, outcome.error_type = err.status, err.error_type.name
            outcome.overhead_s = time.perf_counter() - started - outcome.upstream_s
            raise
        except asyncio.CancelledError:
            outcome.status, outcome.error_type = 499, "CLIENT_DISCONNECTED"
            raise
        finally:
            # Settled against the admission time: the charge belongs to the periods the reservation was held in.
            await self._settlement.settle(principal, request, reservation, outcome, request_id, client_ip, started, now)

    async def _admit(
        self,
        principal: Principal,
        request: InboundRequest,
        resolved: tuple[Channel, ...],
        request_id: str,
        now: datetime,
        *,
        check: bool,
    ) -> tuple[tuple[Channel, ...], Admission]:
        """The channels this key may use and the admission of the request's largest possible cost on them.

        ``check``: whether the limits backend compares the principal's marks (StaleState when one is newer).

        Raises:
            GatewayError: ACCESS_DENIED (no allowed channel), a limit refusal, LIMITS_UNAVAILABLE.
            StaleState: ``check`` and the principal is older than a recorded change.
        """
        try:
            channels = allowed_channels(principal, request.model, resolved, self._routes)
        except GatewayError:
            if check:  # a model allowed through another process since: StaleState, and decided again
                await self._limits.check_current(principal.marks)
            raise
        if request.operation is Operation.COMPLETIONS:
            channels = _completions_channels(request.model, channels)
        per_choice = (
            request.max_output_tokens if request.max_output_tokens is not None else self._settings.default_max_tokens
        )
        max_out = per_choice * request.choices
        multiplier = principal.policy.price_multiplier_ppm
        max_cost = max(max_cost_micros(c, request.prompt_token_bound, max_out, multiplier) for c in channels)
        wanted = admission_request(
            principal,
            request_id=request_id,
            now=now,
            cost_micros=max_cost,
            max_tokens=request.prompt_token_bound + max_out,
            pending=self._pending,
            check=check,
        )
        if self._tracer is None:
            return channels, await self._limits.admit(wanted)
        with self._tracer.start_as_current_span("keyrelay.admission"):
            return channels, await self._limits.admit(wanted)

    def _attempts(self, channels: tuple[Channel, ...], wishes: ProviderPreferences | None = None) -> Attempts:
        """A request's attempt plan: ``channels`` by priority and weight, then its ``provider`` wishes, then health.

        Raises:
            GatewayError: INVALID_REQUEST (field ``provider``) when the wishes leave no channel.
        """
        settings = self._settings
        order = draw_order(channels, self.rng)
        if wishes is not None:
            order = preferred(order, wishes)
            if not order:
                raise GatewayError(
                    ErrorType.INVALID_REQUEST,
                    "provider: none of the providers it names serves this model for this key.",
                    field="provider",
                )
        plan = AttemptPlan(order, self.health, settings.max_attempts)
        return Attempts(plan, self.health, self._metrics, settings.total_timeout_s)

    def reload(self, settings: Settings) -> None:
        """Use ``settings``' providers and routing settings from the next request on (``keyrelay/reload.py``).

        Breaker and credential states are kept (by channel and credential name); request heads are rebuilt.
        """
        routes = RouteTable.from_settings(settings)
        for warning in routes.shadow_warnings():
            log.warning("%s", warning)
        scrubber = SecretScrubber(sorted({k.secret for c in routes.models for k in c.credentials if k.secret}))
        self.health.set_policy(BreakerPolicy.from_settings(settings))
        # One step for the request path: each assignment below is seen whole by the next request.
        self._settings, self._routes, self._scrubber, self._targets = settings, routes, scrubber, {}

    def channel_report(self) -> list[dict[str, object]]:
        """Every channel with its health (``GET /api/v1/providers``), in the route table's order."""
        health = self.health
        return [
            {
                "provider": c.provider,
                "model": c.model,
                "upstream_model": c.upstream_model,
                "kind": c.kind,
                "priority": c.priority,
                "weight": c.weight,
                **health.snapshot(c),
            }
            for c in self._routes.models
        ]

    def _channel_states(self) -> list[tuple[str, str, int]]:
        """(provider, model, state value) of every channel, for ``keyrelay_channel_state``."""
        health = self.health
        return [(c.provider, c.model, STATE_VALUES[health.state(c)]) for c in self._routes.models]

    def _target(
        self, channel: Channel, credential: Credential, wire: ProtocolName, operation: Operation, stream: bool
    ) -> tuple[Origin, bytes]:
        """Origin and prebuilt request head for a channel, credential and upstream wire, built once and reused."""
        slot = (channel.qualified_name, credential.index, wire, operation, stream)
        target = self._targets.get(slot)
        if target is None:
            origin = self._pool.origin(channel.base_url, ca_file=channel.tls_ca_file, verify=channel.tls_verify)
            out = OUTBOUND[wire]
            path = out.path(operation, stream, channel.upstream_model)
            accept = "text/event-stream" if stream else "application/json"
            headers = [
                ("content-type", "application/json"),
                ("accept", accept),
                *out.credential_headers(credential.secret),
            ]
            target = (origin, request_head(origin, path, headers))
            self._targets[slot] = target
        return target

    async def _call(self, channel: Channel, credential: Credential, call: Call, timeout: float) -> UpstreamResponse:
        request = call.request
        wire = call.upstream_wire(channel)
        origin, head = self._target(channel, credential, wire, request.operation, request.stream)
        out = OUTBOUND[wire]
        if call.same_wire(channel):
            body = out.passthrough_body(request, channel.upstream_model)
        else:
            canonical = call.to_canonical()
            if channel.wire is ProtocolName.ANTHROPIC:
                canonical = with_output_limit(canonical, self._settings.default_max_tokens)
            body = out.build(canonical, channel.upstream_model, channel.kind)
        if channel.wire is ProtocolName.ANTHROPIC:
            head += anthropic_head_lines(call.anthropic_headers, same_wire=request.protocol is ProtocolName.ANTHROPIC)
        return await self._pool.request(
            origin,
            head,
            body,
            connect_timeout=min(channel.connect_timeout_s, timeout),
            read_timeout=min(channel.timeout_s, timeout),
        )

    async def _call_traced(
        self, channel: Channel, credential: Credential, call: Call, timeout: float
    ) -> UpstreamResponse:
        """``_call`` in a client span of its own, until the upstream's status line (``keyrelay/tracing.py``)."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        assert self._tracer is not None
        wire = call.upstream_wire(channel)
        operation = operation_name(call.request.operation, wire) or call.request.operation.value
        provider = provider_name(channel.kind, channel.provider)
        attributes: dict[str, str | int] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
            "gen_ai.request.model": channel.upstream_model,
            "keyrelay.provider": channel.provider,
        }
        name = f"{operation} {channel.upstream_model}"
        with self._tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes) as span:
            response = await self._call(channel, credential, call, timeout)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 400:
                span.set_attribute("error.type", str(response.status))
                span.set_status(Status(StatusCode.ERROR))
            return response

    async def _open(self, call: Call, attempts: Attempts, outcome: Outcome) -> tuple[UpstreamResponse, Credential]:
        """Try the plan's next channels until one answers 2xx; failures that allow it move on.

        Returns the answer (its body unread) and the credential used; ``outcome.channel`` is its channel.
        The caller records the attempt's success once it has judged the answer (a stream: its first event).

        Raises:
            RelayedError: an upstream's own error answer, on a same-wire Anthropic or Gemini call.
            GatewayError: the failure chosen by ``Attempts.final_error``.
        """
        while not attempts.stopped_by_caller and (step := attempts.next()) is not None:
            channel, credential = step
            outcome.channel = channel
            t0 = time.perf_counter()
            try:
                if self._tracer is None:
                    response = await self._call(channel, credential, call, attempts.remaining())
                else:
                    response = await self._call_traced(channel, credential, call, attempts.remaining())
            except GatewayError as err:
                # The request cannot be written for this channel's wire (a translation refusal, before any
                # I/O): another channel, of the client's own wire for one, may still take it.
                if err.status != 400:
                    raise
                attempts.unsuitable(channel, err)
                continue
            except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
                latency = time.perf_counter() - t0
                outcome.upstream_s += latency
                attempts.failed(channel, credential, classify_exception(exc, channel), latency)
                continue
            if 200 <= response.status < 300:
                outcome.upstream_s += time.perf_counter() - t0
                return response, credential
            try:
                body = await response.read()
            except (UpstreamConnectionError, UpstreamTimeoutError):
                body = b""
            finally:
                response.release()
            latency = time.perf_counter() - t0
            outcome.upstream_s += latency
            # Scrubbed whole, before anything is cut from it: a secret cut in two could not be recognised.
            body = self._scrubber.data(body)
            out = OUTBOUND[call.upstream_wire(channel)]
            message, code = out.error(body)
            cls = out.failure_class(response.status, message, code)
            if channel.wire is not ProtocolName.OPENAI:
                code = None  # only OpenAI's codes are passed on in keyrelay's body (error.code)
            failure = classify_response(channel, response, message, code, cls, credential)
            relayed = None
            # A same-wire error is relayed as the upstream wrote it, except an answer that is about the
            # gateway's own provider credential or configuration: not the client's fault, and keyrelay says so.
            if (
                call.same_wire(channel)
                and channel.wire is not ProtocolName.OPENAI
                and response.status >= 400
                and cls not in (FailureClass.CREDENTIAL, FailureClass.MODEL_ACCESS)
            ):
                content_type = response.header(b"content-type") or b"application/json"
                relayed = RelayedError(failure.error, body, content_type)
            attempts.failed(channel, credential, failure, latency, relayed)
        outcome.attempts = attempts.records
        raise attempts.final_error()

    def _headers(self, window: WindowStatus | None, overhead_ms: float, content_type: bytes) -> Headers:
        headers: Headers = [
            (b"content-type", content_type),
            (b"x-keyrelay-overhead-ms", f"{overhead_ms:.3f}".encode()),
            (b"x-request-id", (request_id_var.get() or "").encode()),
        ]
        if window is not None:
            headers += [
                (b"x-ratelimit-limit-requests", str(window.limit).encode()),
                (b"x-ratelimit-remaining-requests", str(window.remaining).encode()),
                (b"x-ratelimit-reset-requests", f"{window.reset_s:.0f}s".encode()),
            ]
        return headers

    async def _unary(
        self,
        send: Send,
        call: Call,
        attempts: Attempts,
        window: WindowStatus | None,
        outcome: Outcome,
        started: float,
        record: Callable[[], Awaitable[None]],
    ) -> None:
        request = call.request
        while True:
            response, credential = await self._open(call, attempts, outcome)
            channel = outcome.channel
            assert channel is not None
            t0 = time.perf_counter()
            try:
                payload = await response.read()
            except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
                # Nothing has reached the client: another channel may still serve it.
                latency = time.perf_counter() - t0
                outcome.upstream_s += latency
                attempts.failed(channel, credential, classify_exception(exc, channel), latency)
                continue
            finally:
                response.release()
            latency = time.perf_counter() - t0
            outcome.upstream_s += latency
            attempts.succeeded(channel, credential, response.status, latency)
            break
        outcome.attempts = attempts.records
        payload = self._scrubber.known(payload)  # an answer may echo the gateway's provider secret
        status = response.status
        usage: Usage | None
        wire = call.upstream_wire(channel)
        if not call.same_wire(channel):
            answer = OUTBOUND[wire].decode_response(payload)
            usage = answer.usage
            output_bytes = len(payload)
            payload = call.inbound.encode_response(answer, call.to_canonical(), request)
            status = 200
        elif wire is ProtocolName.OPENAI:
            usage, output_bytes = response_usage(payload)
        else:
            usage, output_bytes = OUTBOUND[wire].body_usage(payload), len(payload)
        if usage is None:
            usage = Usage(estimate_tokens(len(request.raw)), estimate_tokens(output_bytes), estimated=True)
        outcome.usage, outcome.status = usage, status
        outcome.overhead_s = time.perf_counter() - started - outcome.upstream_s
        headers = self._headers(window, outcome.overhead_s * 1000, b"application/json")
        headers.append((b"content-length", str(len(payload)).encode()))
        await record()
        outcome.started = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _commit(
        self, call: Call, attempts: Attempts, outcome: Outcome, started: float
    ) -> tuple[UpstreamResponse, Relay, list[bytes]]:
        """Open a stream on the plan's channels and read it up to its first content: the commit point.

        A stream that ends, breaks, times out or sends an error event before that fails over like any
        failed attempt (nothing has reached the client yet). Returns the answer (to read on from), its
        relay, and the relayed bytes held so far (to send first).
        """
        while True:
            response, credential = await self._open(call, attempts, outcome)
            content_type = response.header(b"content-type")
            if content_type is not None and not content_type.lower().startswith(b"text/event-stream"):
                await self._not_a_stream(call, response, content_type, outcome)
            channel = outcome.channel
            assert channel is not None
            relay = self._relay(call, channel)
            held: list[bytes] = []
            size = 0
            t0 = time.perf_counter()
            failure: UpstreamFailure | None = None
            committed = False
            try:
                while not committed:
                    chunk = await response.next_chunk()
                    if chunk is None:
                        failure = _early_failure("ended before any content")
                        break
                    if outcome.ttft_ms is None:
                        outcome.ttft_ms = round((time.perf_counter() - started) * 1000)
                    out = relay.feed(chunk)
                    if relay.failed and not relay.content_seen and not relay.caller_fault:
                        failure = _early_failure("sent an error event before any content")
                        break
                    if out:
                        held.append(out)
                        size += len(out)
                    # An error after content (in the same read) is a mid-stream failure: relayed, not failed over.
                    committed = relay.failed or relay.commits(out) or size > _HOLD_BYTES
                    if response.ended and not committed:
                        failure = _early_failure("ended before any content")
                        break
            except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
                failure = classify_exception(exc, channel)
            latency = time.perf_counter() - t0
            outcome.upstream_s += latency
            if failure is None:
                attempts.succeeded(channel, credential, response.status, latency)
                outcome.attempts = attempts.records
                return response, relay, held
            response.release()
            outcome.ttft_ms = None
            attempts.failed(channel, credential, failure, latency)

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        call: Call,
        attempts: Attempts,
        window: WindowStatus | None,
        outcome: Outcome,
        started: float,
        record: Callable[[], Awaitable[None]],
    ) -> None:
        response, relay, held = await self._commit(call, attempts, outcome, started)
        outcome.overhead_s = time.perf_counter() - started - outcome.upstream_s
        outcome.status = response.status
        sse = call.sse
        headers = self._headers(window, outcome.overhead_s * 1000, b"text/event-stream" if sse else b"application/json")
        headers.append((b"cache-control", b"no-cache"))
        start = {"type": "http.response.start", "status": response.status, "headers": headers}
        if response.ended:
            await self._stream_whole(send, call, response, relay, held, start, outcome, record)
            return
        watcher = DisconnectWatch(receive)
        failure: GatewayError | None = None
        try:
            outcome.started = True
            await send(start)
            last = await self._relay_on(send, call, response, relay, b"".join(held), outcome, record)
            rest, failure = relay.close()
            if not outcome.recorded:
                self._ended(call, relay, outcome, failure)
                await record()  # before the last bytes: a stream the client saw end has its usage record
            await send({"type": "http.response.body", "body": last + rest})
        except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
            # Mid-stream upstream failure: the status line is already sent, so end the stream with an
            # error event in the client's wire; the partial usage is still billed.
            log_transport_failure(exc, outcome.channel)
            kind = ErrorType.UPSTREAM_TIMEOUT if isinstance(exc, UpstreamTimeoutError) else ErrorType.UPSTREAM_ERROR
            failure = GatewayError(kind, "The upstream stream ended unexpectedly.")
            ending = relay.fail(failure)
            self._ended(call, relay, outcome, failure)
            await record()
            await send({"type": "http.response.body", "body": ending})
        except asyncio.CancelledError:
            if not watcher.fired:
                raise
            # The client hung up: DisconnectWatch cancelled us to stop reading the upstream. That is
            # normal; settle the partial usage and end quietly (status 499) instead of propagating.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            outcome.status, outcome.error_type = 499, "CLIENT_DISCONNECTED"
        finally:
            watcher.stop()
            response.release()
            if not outcome.recorded:  # a disconnect, or a failure while sending: settled after this
                self._ended(call, relay, outcome, failure)

    async def _relay_on(
        self,
        send: Send,
        call: Call,
        response: UpstreamResponse,
        relay: Relay,
        held: bytes,
        outcome: Outcome,
        record: Callable[[], Awaitable[None]],
    ) -> bytes:
        """Relay a committed stream: ``held`` (read before the commit), then each read until the upstream ends it.

        Returns the last read's bytes, unsent: they go out with the closing bytes, in one write, after the record.
        """
        out = held
        while True:
            if relay.at_end and not outcome.recorded:
                # The client's terminal event is in these bytes, and the upstream's end may come in a read of its
                # own: a client may stop reading at the event, so the record is kept before it is sent.
                self._ended(call, relay, outcome, None)
                await record()
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            chunk = await response.next_chunk()
            if chunk is None:
                return b""
            out = relay.feed(chunk)
            if response.ended:
                return out  # nothing more can come

    async def _stream_whole(
        self,
        send: Send,
        call: Call,
        response: UpstreamResponse,
        relay: Relay,
        held: list[bytes],
        start: dict[str, Any],
        outcome: Outcome,
        record: Callable[[], Awaitable[None]],
    ) -> None:
        """A stream that came whole before its commit (a short answer), sent at once.

        Nothing is left to read, so nothing to watch for a disconnect, and the record is kept before the status
        line, which goes out with the bytes.
        """
        try:
            rest, closing = relay.close()
            self._ended(call, relay, outcome, closing)
            await record()
            outcome.started = True
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(held) + rest})
        finally:
            response.release()
            if not outcome.recorded:  # cancelled, or a failure before the record: settled after this
                self._ended(call, relay, outcome, None)

    @staticmethod
    def _ended(call: Call, relay: Relay, outcome: Outcome, failure: GatewayError | None) -> None:
        """A stream's outcome once it ended: the failure that ended it, if any, and its usage (else an estimate)."""
        if failure is not None:
            outcome.status, outcome.error_type = failure.status, failure.error_type.name
        outcome.usage = relay.usage or Usage(
            estimate_tokens(len(call.request.raw)), relay.output_tokens_estimate(), estimated=True
        )

    def _relay(self, call: Call, channel: Channel) -> Relay:
        """The relay for a stream from ``channel``: OpenAI's fast path, a passthrough, or a translation."""
        wire = call.upstream_wire(channel)
        if call.same_wire(channel):
            if wire is ProtocolName.OPENAI:
                return OpenAIRelay(call.request, self._scrubber)
            if wire is ProtocolName.RESPONSES:
                return ResponsesRelay(call.inbound, ResponsesPassthroughReader(), self._scrubber)
            reader = OUTBOUND[wire].passthrough_reader
            assert reader is not None
            return PassthroughRelay(call.inbound, reader(), self._scrubber)
        request = call.request
        encoder = call.inbound.stream_encoder(
            call.to_canonical(),
            request,
            request_id_var.get() or "",
            estimate_tokens(request.prompt_token_bound),
            call.sse,
        )
        return TranslatingRelay(OUTBOUND[wire].stream_decoder(), encoder, self._scrubber)

    async def _not_a_stream(
        self, call: Call, response: UpstreamResponse, content_type: bytes, outcome: Outcome
    ) -> None:
        """A stream request answered with a whole body (e.g. JSON): bill what it reports, and fail the request.

        Raises:
            GatewayError: UPSTREAM_ERROR (502), not retried: the upstream did the work, and another channel
                would be billed for it again.
        """
        try:
            payload = await response.read()
        except (UpstreamConnectionError, UpstreamTimeoutError):
            payload = b""
        finally:
            response.release()
        channel = outcome.channel
        wire = ProtocolName.OPENAI if channel is None else call.upstream_wire(channel)
        if wire is ProtocolName.OPENAI:
            usage, output_bytes = response_usage(payload)
        else:
            usage, output_bytes = OUTBOUND[wire].body_usage(payload), len(payload)
        request = call.request
        outcome.usage = usage or Usage(estimate_tokens(len(request.raw)), estimate_tokens(output_bytes), estimated=True)
        kind = content_type.decode("latin-1").split(";")[0].strip()[:100]
        raise GatewayError(
            ErrorType.UPSTREAM_ERROR,
            f"The upstream answered this stream request with {kind!r} instead of an event stream.",
        )


_MODEL_IN_PATH = re.compile(r"/models/[^/]+?(?=:|/|$)")


def _span_attributes(outcome: Outcome, status: int) -> dict[str, str | int]:
    """The server span's attributes once the request is answered (GenAI and HTTP semantic conventions)."""
    attributes: dict[str, str | int] = {"http.response.status_code": status}
    request = outcome.request
    if request is not None:
        attributes["gen_ai.request.model"] = request.model
        operation = operation_name(request.operation, request.protocol)
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        if request.max_output_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = request.max_output_tokens
    channel = outcome.channel
    if channel is not None:
        provider = provider_name(channel.kind, channel.provider)
        attributes["gen_ai.provider.name"] = attributes["gen_ai.system"] = provider
        attributes["keyrelay.provider"] = channel.provider
    usage = outcome.usage
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if outcome.recorded:
        attributes["keyrelay.cost_micros"] = outcome.cost_micros
    if outcome.key_name is not None:
        attributes["keyrelay.key.name"] = outcome.key_name
    if status >= 400 and outcome.error_type:
        attributes["error.type"] = outcome.error_type
    return attributes


def _completions_channels(model: str, channels: tuple[Channel, ...]) -> tuple[Channel, ...]:
    """The channels that serve the legacy ``/v1/completions``: OpenAI's wire (``openai``, ``openai-compatible``).

    Raises:
        GatewayError: INVALID_REQUEST (field ``model``) when the model has none.
    """
    served = tuple(c for c in channels if c.wire is ProtocolName.OPENAI)
    if not served:
        kinds = ", ".join(sorted({c.kind for c in channels}))
        raise GatewayError(
            ErrorType.INVALID_REQUEST,
            f"The provider of model {model!r} (kind {kinds}) does not offer the legacy /v1/completions;"
            " use /v1/chat/completions.",
            field="model",
        )
    return served


def _early_failure(what: str) -> UpstreamFailure:
    """A stream that failed before its first content: transient, so another channel may serve it."""
    err = GatewayError(ErrorType.UPSTREAM_ERROR, f"The upstream's stream {what}.")
    return UpstreamFailure(err, FailureClass.TRANSIENT, 200)
