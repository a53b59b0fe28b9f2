"""The LLM hot path: authenticate → authorize → admit → route → forward → settle → respond.

Only this module knows the order of the stages. It does no database I/O in steady state: keys come
from the in-process cache, admission is one call to the limits backend (in memory, or one Redis
round trip), usage goes to the batched writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from keyrelay.asgi import Headers, Receive, Scope, Send, header, read_body, send_error, send_json
from keyrelay.cache.keycache import KeyCache, Principal
from keyrelay.clock import Clock
from keyrelay.config import Settings
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.admit import Pending, admission_request
from keyrelay.gateway.authorize import allowed_channels, authorize_key
from keyrelay.gateway.client_ip import (
    IPAddress,
    client_address,
    forwarded_for_hops,
    joined_header,
    parse_ip,
    x_forwarded_for_hops,
)
from keyrelay.gateway.forward import (
    UpstreamFailure,
    classify_exception,
    classify_response,
    log_transport_failure,
    upstream_headers,
)
from keyrelay.gateway.key_view import key_info, list_models, model_not_found, retrieve_model
from keyrelay.gateway.pricing import cost_micros
from keyrelay.gateway.upstream_client import (
    Origin,
    UpstreamConnectionError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeoutError,
    request_head,
)
from keyrelay.keys.format import KeyType, key_type_of, looks_like_key
from keyrelay.keys.hashing import key_hash
from keyrelay.limits.backend import LimitsBackend, Reservation, WindowStatus
from keyrelay.limits.periods import spend_period
from keyrelay.logs import SecretScrubber, request_id_var
from keyrelay.metrics import Metrics
from keyrelay.protocols.canonical import Usage
from keyrelay.protocols.openai import InboundRequest, Operation, bearer_credential, decode_request, upstream_body
from keyrelay.protocols.openai_stream import StreamRelay, estimate_tokens, response_usage
from keyrelay.providers.openai import upstream_error
from keyrelay.routing.table import Channel, RouteTable
from keyrelay.store.keys import KeyRepository
from keyrelay.tasks import DisconnectWatch
from keyrelay.usage.writer import UsageRecord, UsageWriter

log = logging.getLogger("keyrelay.gateway")
# path → (the one method it accepts, the LLM operation it performs, or None for a read of the key's view)
_ROUTES: dict[str, tuple[str, Operation | None]] = {
    "/v1/chat/completions": ("POST", Operation.CHAT),
    "/v1/embeddings": ("POST", Operation.EMBEDDINGS),
    "/v1/models": ("GET", None),
    "/v1/key": ("GET", None),
}
_MODEL_PREFIX = "/v1/models/"


def route(method: str, path: str) -> Operation | None:
    """The operation of a /v1 path; None for the GET routes.

    Raises:
        GatewayError: NOT_FOUND naming the path when there is no such route (whatever the method);
            METHOD_NOT_ALLOWED with ``Allow`` for a known path and another method.
    """
    entry = _ROUTES.get(path)
    if entry is None and path.startswith(_MODEL_PREFIX) and len(path) > len(_MODEL_PREFIX):
        entry = ("GET", None)
    if entry is None:
        raise GatewayError(ErrorType.NOT_FOUND, f"No such endpoint: {path}. See the README for the /v1 routes.")
    allowed, operation = entry
    if method != allowed and not (method == "HEAD" and allowed == "GET"):  # HEAD is GET without the body
        allow = "GET, HEAD" if allowed == "GET" else allowed
        raise GatewayError(ErrorType.METHOD_NOT_ALLOWED, f"Use {allowed} for {path}.", allow=allow)
    return operation


@dataclass(slots=True)
class Outcome:
    """What happened to one request, for settlement and the usage record."""

    status: int = 0
    error_type: str | None = None
    channel: Channel | None = None
    usage: Usage | None = None
    ttft_ms: int | None = None
    upstream_s: float = 0.0
    overhead_s: float | None = None  # keyrelay's own time before the first byte: the header and the metric
    settled: bool = False  # counted in the metrics and the usage record
    started: bool = False  # the response status line has been sent


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
    ) -> None:
        self._settings = settings
        self._cache = cache
        self._routes = routes
        self._limits = limits
        self._pending = pending
        self._keys = keys
        self._writer = writer
        self._pool = pool
        self._targets: dict[tuple[str, Operation, bool], tuple[Origin, bytes]] = {}
        self._metrics = metrics
        self._clock = clock
        self._trusted = settings.trusted_proxy_networks
        self._forwarded = settings.trusted_proxy_header == "forwarded"
        self._scrubber = SecretScrubber([c.api_key for c in routes.models if c.api_key])
        for warning in routes.shadow_warnings():
            log.warning("%s", warning)

    # --- edges -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        """Dispatch one /v1 request; every error leaves as the OpenAI-shaped JSON error body."""
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        principal: Principal | None = None
        outcome = Outcome()
        rid = [(b"x-request-id", request_id.encode())]
        try:
            operation = route(method, path)
            principal = await self._authenticate(scope)
            client_ip = self._client_ip(scope)
            authorize_key(principal, client_ip, self._clock.now_utc())
            if operation is not None:
                await self._llm(scope, receive, send, request_id, principal, client_ip, operation, started, outcome)
            elif path == "/v1/models":
                await send_json(send, 200, list_models(principal, self._routes), rid)
            elif path == "/v1/key":
                await send_json(send, 200, await self._key_info(principal), rid)
            else:
                model = retrieve_model(principal, self._routes, path.removeprefix(_MODEL_PREFIX))
                await send_json(send, 200, model, rid)
        except GatewayError as err:
            overhead = outcome.overhead_s  # set when an admitted request failed: its upstream time is not ours
            if overhead is None:
                overhead = time.perf_counter() - started
            extra = [(b"x-keyrelay-overhead-ms", f"{overhead * 1000:.3f}".encode()), *rid]
            await send_error(send, err, request_id, extra)
            if not outcome.settled:  # an admitted request was already counted, with its model, when settled
                name = principal.key.name if principal else "-"
                self._metrics.count_request(name, "-", err.status, err.error_type.name)
                self._metrics.overhead.observe(overhead)
                log_request(request_id, principal, method, path, err.status, err.error_type.name, started)
        except Exception:
            # Nothing else should escape; if it does, the client still gets the JSON body and request id.
            log.exception("unexpected error in %s %s", method, path)
            if not outcome.started:
                await send_error(send, GatewayError(ErrorType.INTERNAL_ERROR), request_id, rid)

    async def _authenticate(self, scope: Scope) -> Principal:
        token = bearer_credential(header(scope, b"authorization"))
        if token is None:
            raise GatewayError(ErrorType.INVALID_API_KEY, "Send your key as 'Authorization: Bearer kr_live_...'.")
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

    def _client_ip(self, scope: Scope) -> IPAddress | None:
        """The client address: the TCP peer, or what the trusted proxies in front of it say (see ``client_ip``)."""
        client = scope.get("client")
        peer = parse_ip(client[0]) if client else None
        if peer is None or not self._trusted or not any(peer in net for net in self._trusted):
            return peer
        if self._forwarded:
            value = joined_header(scope["headers"], b"forwarded")
            hops = forwarded_for_hops(value) if value is not None else []
        else:
            value = joined_header(scope["headers"], b"x-forwarded-for")
            hops = x_forwarded_for_hops(value) if value is not None else []
        return client_address(peer, hops, self._trusted)

    async def _key_info(self, principal: Principal) -> dict[str, Any]:
        return await key_info(
            principal,
            routes=self._routes,
            limits=self._limits,
            keys=self._keys,
            pending=self._pending,
            now=self._clock.now_utc(),
        )

    # --- chat and embeddings -----------------------------------------------------------------------

    async def _llm(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        principal: Principal,
        client_ip: IPAddress | None,
        operation: Operation,
        started: float,
        outcome: Outcome,
    ) -> None:
        raw = await read_body(receive, self._settings.max_body_bytes)
        request = decode_request(operation, raw)
        channels = self._routes.resolve(request.model)
        if not channels:
            raise model_not_found(request.model)
        channels = allowed_channels(principal, request.model, channels, self._routes)
        now = self._clock.now_utc()
        per_choice = (
            request.max_output_tokens if request.max_output_tokens is not None else self._settings.default_max_tokens
        )
        max_out = per_choice * request.choices
        multiplier = principal.policy.price_multiplier_ppm
        max_cost = max(cost_micros(c, request.prompt_token_bound, max_out, multiplier) for c in channels)
        admission = await self._limits.admit(
            admission_request(
                principal,
                request_id=request_id,
                now=now,
                cost_micros=max_cost,
                max_tokens=request.prompt_token_bound + max_out,
                pending=self._pending,
            )
        )
        reservation, window = admission.reservation, admission.window
        try:
            if request.stream:
                await self._stream(receive, send, request, channels, window, outcome, started)
            else:
                await self._unary(send, request, channels, window, outcome, started)
        except GatewayError as err:
            outcome.status, outcome.error_type = err.status, err.error_type.name
            outcome.overhead_s = time.perf_counter() - started - outcome.upstream_s
            raise
        except asyncio.CancelledError:
            outcome.status, outcome.error_type = 499, "CLIENT_DISCONNECTED"
            raise
        finally:
            # Settled against the admission time: the charge belongs to the periods the reservation was held in.
            await self._settle(principal, request, reservation, outcome, request_id, client_ip, started, now)

    def _target(self, channel: Channel, operation: Operation, stream: bool) -> tuple[Origin, bytes]:
        """Origin and prebuilt request head for a channel, built once and reused for every request."""
        slot = (channel.qualified_name, operation, stream)
        target = self._targets.get(slot)
        if target is None:
            origin = self._pool.origin(channel.base_url, ca_file=channel.tls_ca_file, verify=channel.tls_verify)
            path = "/embeddings" if operation is Operation.EMBEDDINGS else "/chat/completions"
            target = (origin, request_head(origin, path, list(upstream_headers(channel, stream).items())))
            self._targets[slot] = target
        return target

    async def _call(self, channel: Channel, request: InboundRequest) -> UpstreamResponse:
        origin, head = self._target(channel, request.operation, request.stream)
        return await self._pool.request(
            origin,
            head,
            upstream_body(request, channel.upstream_model),
            connect_timeout=channel.connect_timeout_s,
            read_timeout=channel.timeout_s,
        )

    async def _open(self, request: InboundRequest, channels: tuple[Channel, ...], outcome: Outcome) -> UpstreamResponse:
        """Try each channel in order until one answers 2xx; retryable failures move on."""
        failure: UpstreamFailure | None = None
        for channel in channels:
            outcome.channel = channel
            t0 = time.perf_counter()
            try:
                response = await self._call(channel, request)
            except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
                outcome.upstream_s += time.perf_counter() - t0
                failure = classify_exception(exc, channel)
                continue
            if 200 <= response.status < 300:
                outcome.upstream_s += time.perf_counter() - t0
                return response
            try:
                body = await response.read()
            except (UpstreamConnectionError, UpstreamTimeoutError):
                body = b""
            finally:
                response.release()
            outcome.upstream_s += time.perf_counter() - t0
            # Scrubbed whole, before anything is cut from it: a secret cut in two could not be recognised.
            message, code = upstream_error(self._scrubber.data(body))
            failure = classify_response(channel, response, message, code)
            if not failure.retryable:
                break
        assert failure is not None
        raise failure.error

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
        request: InboundRequest,
        channels: tuple[Channel, ...],
        window: WindowStatus | None,
        outcome: Outcome,
        started: float,
    ) -> None:
        response = await self._open(request, channels, outcome)
        t0 = time.perf_counter()
        try:
            payload = await response.read()
        except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
            raise classify_exception(exc, outcome.channel).error from exc
        finally:
            response.release()
        outcome.upstream_s += time.perf_counter() - t0
        payload = self._scrubber.known(payload)  # an answer may echo the gateway's provider secret
        usage, output_bytes = response_usage(payload)
        if usage is None:
            usage = Usage(estimate_tokens(len(request.raw)), estimate_tokens(output_bytes), estimated=True)
        outcome.usage, outcome.status = usage, response.status
        outcome.overhead_s = time.perf_counter() - started - outcome.upstream_s
        headers = self._headers(window, outcome.overhead_s * 1000, b"application/json")
        headers.append((b"content-length", str(len(payload)).encode()))
        outcome.started = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        request: InboundRequest,
        channels: tuple[Channel, ...],
        window: WindowStatus | None,
        outcome: Outcome,
        started: float,
    ) -> None:
        response = await self._open(request, channels, outcome)
        content_type = response.header(b"content-type")
        if content_type is not None and not content_type.lower().startswith(b"text/event-stream"):
            await self._not_a_stream(request, response, content_type, outcome)
        relay = StreamRelay(
            hide_usage_chunk=not request.client_wants_usage,
            scrub=self._scrubber.data,
            scrub_known=self._scrubber.known,
        )
        outcome.overhead_s = time.perf_counter() - started - outcome.upstream_s
        outcome.status = response.status
        headers = self._headers(window, outcome.overhead_s * 1000, b"text/event-stream")
        headers.append((b"cache-control", b"no-cache"))
        watcher = DisconnectWatch(receive)
        failure: GatewayError | None = None
        try:
            outcome.started = True
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            async for chunk in response.chunks():
                if outcome.ttft_ms is None:
                    outcome.ttft_ms = round((time.perf_counter() - started) * 1000)
                out = relay.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            rest = relay.end(clean=True)
            if relay.error is not None:
                # The upstream's own error event was relayed (scrubbed); the client has its explanation.
                failure = GatewayError(ErrorType.UPSTREAM_ERROR, "The upstream sent an error event mid-stream.")
            elif not relay.complete():
                failure = GatewayError(ErrorType.UPSTREAM_ERROR, "The upstream stream ended before it was complete.")
                rest += b"data: " + orjson.dumps(failure.to_body()) + b"\n\n"
            await send({"type": "http.response.body", "body": rest})
        except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
            # Mid-stream upstream failure: the status line is already sent, so end the stream with an
            # OpenAI-shaped error event; the partial usage is still billed.
            log_transport_failure(exc, outcome.channel)
            kind = ErrorType.UPSTREAM_TIMEOUT if isinstance(exc, UpstreamTimeoutError) else ErrorType.UPSTREAM_ERROR
            failure = GatewayError(kind, "The upstream stream ended unexpectedly.")
            body = relay.end(clean=False) + b"data: " + orjson.dumps(failure.to_body()) + b"\n\n"
            await send({"type": "http.response.body", "body": body})
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
            if failure is not None:
                outcome.status, outcome.error_type = failure.status, failure.error_type.name
            outcome.usage = relay.usage or Usage(
                estimate_tokens(len(request.raw)), relay.output_tokens_estimate(), estimated=True
            )

    async def _not_a_stream(
        self, request: InboundRequest, response: UpstreamResponse, content_type: bytes, outcome: Outcome
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
        usage, output_bytes = response_usage(payload)
        outcome.usage = usage or Usage(estimate_tokens(len(request.raw)), estimate_tokens(output_bytes), estimated=True)
        kind = content_type.decode("latin-1").split(";")[0].strip()[:100]
        raise GatewayError(
            ErrorType.UPSTREAM_ERROR,
            f"The upstream answered this stream request with {kind!r} instead of an event stream.",
        )

    # --- settlement --------------------------------------------------------------------------------

    async def _settle(
        self,
        principal: Principal,
        request: InboundRequest,
        reservation: Reservation,
        outcome: Outcome,
        request_id: str,
        client_ip: IPAddress | None,
        started: float,
        admitted_at: datetime,
    ) -> None:
        outcome.settled = True
        channel = outcome.channel
        usage = outcome.usage or Usage(0, 0)
        cost = (
            cost_micros(channel, usage.prompt_tokens, usage.completion_tokens, principal.policy.price_multiplier_ppm)
            if channel
            else 0
        )
        await self._limits.settle(
            reservation, cost_micros=cost, tokens=usage.prompt_tokens + usage.completion_tokens, now=time.time()
        )
        elapsed = time.perf_counter() - started
        key = principal.key
        ip = str(client_ip) if client_ip else None
        self._writer.enqueue(
            UsageRecord(
                request_id=request_id,
                created_at=admitted_at,
                key_hash=key.hash,
                key_name=key.name,
                account_id=principal.account.id,
                key_period=spend_period(principal.policy.limit_reset, admitted_at),
                group_id=principal.group.id if principal.group else None,
                group_period=spend_period(principal.group.quota_reset, admitted_at) if principal.group else None,
                model=request.model,
                provider=channel.provider if channel else None,
                streamed=request.stream,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost_micros=cost,
                usage_estimated=usage.estimated,
                status=outcome.status,
                error_type=outcome.error_type,
                latency_ms=round(elapsed * 1000),
                ttft_ms=outcome.ttft_ms,
                client_ip=ip,
            )
        )
        self._writer.touch(key.hash, admitted_at, ip)
        model = request.model
        m = self._metrics
        m.count_request(key.name, model, outcome.status, outcome.error_type or "")
        m.count_usage(key.name, model, usage.prompt_tokens, usage.completion_tokens, cost)
        if outcome.overhead_s is not None:  # the value of this request's x-keyrelay-overhead-ms header
            m.overhead.observe(outcome.overhead_s)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "request %s key=%s (%s) model=%s provider=%s status=%s error=%s tokens=%d+%d cost_usd=%.6f ms=%d",
                request_id,
                key.name,
                key.display,
                model,
                channel.provider if channel else "-",
                outcome.status,
                outcome.error_type or "-",
                usage.prompt_tokens,
                usage.completion_tokens,
                cost / 1_000_000,
                round(elapsed * 1000),
            )


def log_request(
    request_id: str, principal: Principal | None, method: str, path: str, status: int, error: str, started: float
) -> None:
    """The one log line of a request refused before it reached an upstream."""
    if log.isEnabledFor(logging.INFO):
        who = f"{principal.key.name} ({principal.key.display})" if principal else "-"
        ms = round((time.perf_counter() - started) * 1000)
        log.info("request %s key=%s %s %s status=%d error=%s ms=%d", request_id, who, method, path, status, error, ms)
