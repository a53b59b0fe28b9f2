"""create_app(settings) → the ASGI application: routing by path prefix and the lifespan. No logic."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import TYPE_CHECKING, Any

from keyrelay import tracing
from keyrelay.admin.app import create_admin_app
from keyrelay.asgi import Receive, Scope, Send, header, limit_body, new_request_id, send_error, send_json
from keyrelay.clock import Clock
from keyrelay.config import ConfigError, Settings, load_settings
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.admit import Pending
from keyrelay.gateway.pipeline import Gateway
from keyrelay.gateway.upstream_client import UpstreamPool
from keyrelay.limits.factory import build_limits, redis_client
from keyrelay.logs import request_id_var, setup_logging
from keyrelay.metrics import Metrics
from keyrelay.portal.app import PORTAL_PATHS, PORTAL_PREFIXES, create_portal_app
from keyrelay.reload import reloaded_settings
from keyrelay.routing.table import RouteTable
from keyrelay.runtime import Runtime, known_models, known_regions, open_runtime
from keyrelay.usage.journal import UsageJournal, journal_base, orphans
from keyrelay.usage.numbering import NUMBERING_INTERVAL_S, Numbering
from keyrelay.usage.retention import SWEEP_INTERVAL_S, Retention
from keyrelay.usage.writer import UsageWriter

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from redis.asyncio import Redis

    from keyrelay.usage.stream import UsageStream

log = logging.getLogger("keyrelay.app")
_ADMIN_PREFIXES = ("/api/", "/openapi.json")
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
# Container objects allocated (net) between collections of the youngest generation: more than the usage writer's
# queue holds between two flushes plus the flush's own rows (a flush of max_batch = 5,000 distinct keys' records
# peaks between 20,000 and 25,000: tests/integration/store/test_usage_young_generation.py). At 10,000, 100,000
# keys in rotation had the young generation collected 7-9 times in 5 s (38-77 ms, each a walk over objects that
# the next flush frees anyway; docs/benchmarks.md "2026-12-07, later"), one key's traffic never.
_GC_YOUNG_THRESHOLD = 50_000


class KeyrelayApp:
    """The ASGI entry point: management API, health probes and (later) the LLM endpoints."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        owns_process: bool = False,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """The app for ``settings``; ``tracer_provider`` traces requests whatever the settings say (tests).

        ``owns_process`` (``keyrelay serve`` and its workers): SIGHUP reloads keyrelay.yaml, and start-up sets the
        process-wide garbage-collector policy. Apps embedded elsewhere (tests, another server) leave both alone.
        """
        self.settings = settings
        self._clock = clock
        self.tracer_provider = tracer_provider
        self._owns_process = owns_process
        self.admin = create_admin_app()
        self.portal = create_portal_app(settings)
        self.runtime: Runtime | None = None
        self.gateway: Gateway | None = None
        self.writer: UsageWriter | None = None
        self.usage_stream: UsageStream | None = None
        self.redis: Redis | None = None
        self.metrics = Metrics(per_key=settings.metrics_per_key)

    async def startup(self) -> None:
        """Open the store (migrating it), build services, start background work."""
        # First: a bad CA file or proxy stops start-up before anything is opened. TLS contexts are built here, once.
        self.pool = UpstreamPool.from_settings(self.settings)
        runtime = await open_runtime(self.settings, clock=self._clock, migrate=self.settings.migrate_on_start)
        self.admin.state.runtime = runtime
        self.portal.state.portal.attach(runtime)
        runtime.tasks.every(3600.0, runtime.signin.prune, name="portal-prune")
        runtime.tasks.every(self.settings.notify_interval_s, runtime.notifier.check_once, name="notifications")
        runtime.tasks.every(self.settings.cache_poll_interval_s, runtime.cache_sync.poll_once, name="cache-sync")
        writer = await self._usage_writer(runtime)
        runtime.tasks.every(self.settings.usage_flush_interval_s, writer.flush, name="usage-flush")
        runtime.tasks.every(1.0, writer.sync, name="usage-journal-sync")
        numbering = Numbering(runtime.engine)  # records an earlier release's process wrote (a rolling upgrade)
        runtime.tasks.spawn(numbering.sweep(), name="usage-numbering-start")
        runtime.tasks.every(NUMBERING_INTERVAL_S, numbering.sweep, name="usage-numbering")
        if self.settings.usage_retention_days is not None:
            retention = Retention(runtime.engine, runtime.clock, days=self.settings.usage_retention_days)
            runtime.tasks.spawn(retention.sweep(), name="usage-retention-start")  # batched: never a long stall
            runtime.tasks.every(SWEEP_INTERVAL_S, retention.sweep, name="usage-retention")
        if self.tracer_provider is None:
            self.tracer_provider = tracing.tracer_provider(self.settings)
        self.redis = redis_client(self.settings)
        self.limits = build_limits(self.settings, self.redis)
        runtime.tasks.every(1.0, self.limits.maintain, name="limits-maintenance")
        if self.redis is not None:  # state marks: a change made through any process holds on every next request
            runtime.cache.marker = self.limits.mark
            runtime.cache.checker = self.limits.check_current
        self.portal.state.portal.limits = self.limits
        if self.redis is not None:
            from keyrelay.cache.fanout import RedisFanout  # only with Redis: see limits/factory.py
            from keyrelay.limits.redis import RedisLimits
            from keyrelay.usage.stream import UsageStream

            assert isinstance(self.limits, RedisLimits)
            # The records settled into Redis by any process, and left there by one that died, reach the store.
            self.usage_stream = UsageStream(self.redis, writer, key=self.limits.usage_stream)
            runtime.tasks.spawn(self.usage_stream.drain(), name="usage-stream-start")  # a backlog must not delay start
            runtime.tasks.every(self.settings.usage_flush_interval_s, self.usage_stream.drain, name="usage-stream")

            fanout = RedisFanout(self.redis, runtime.cache, prefix=self.settings.redis_prefix)
            runtime.cache.on_invalidate = fanout.publish
            runtime.tasks.spawn(fanout.run(), name="cache-fanout")
        self.gateway = Gateway(
            settings=self.settings,
            cache=runtime.cache,
            routes=RouteTable.from_settings(self.settings),
            limits=self.limits,
            pending=Pending(writer.pending),
            keys=runtime.keys,
            writer=writer,
            pool=self.pool,
            metrics=self.metrics,
            clock=runtime.clock,
            tracer=tracing.tracer_of(self.tracer_provider),
        )
        self.admin.state.gateway = self.gateway
        if self.redis is not None:
            from keyrelay.routing.shared_health import SharedHealth  # only with Redis: see limits/factory.py

            shared = SharedHealth(self.redis, self.gateway.health, prefix=self.settings.redis_prefix)
            runtime.tasks.spawn(shared.run(), name="channel-health")
        self.writer = writer
        self.runtime = runtime
        if self._owns_process:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
            _tune_gc()

    async def _usage_writer(self, runtime: Runtime) -> UsageWriter:
        """The usage writer with this process's journal, after replaying the journals of processes that died.

        Raises:
            ConfigError: The journal directory cannot be created or written (``KEYRELAY_USAGE_JOURNAL_DIR``).
            sqlalchemy.exc.SQLAlchemyError: A replay failed (the journal is kept for the next start).
        """
        base = journal_base(self.settings.database_url, self.settings.usage_journal_dir)
        try:
            journal = UsageJournal(base)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the usage journal under {base.parent} ({exc.strerror}); "
                "set KEYRELAY_USAGE_JOURNAL_DIR to a writable directory"
            ) from None
        writer = UsageWriter(runtime.engine, journal=journal)
        for orphan in orphans(base):
            try:
                written = await writer.replay(orphan.records)
            except BaseException:
                orphan.release()
                journal.close(empty=True)
                raise
            try:
                orphan.remove()
            except OSError as exc:
                log.error("usage journal %s replayed, not cleaned up (%s): replayed again later", orphan.path, exc)
            if not orphan.records:
                continue  # a dead process's journal with nothing in it (with Redis, the usual case)
            log.warning(
                "replayed the usage journal of a process that stopped without flushing it: %d record(s), "
                "%d written now, %d already in the store",
                len(orphan.records),
                written,
                len(orphan.records) - written,
            )
        return writer

    async def flush_usage(self) -> int:
        """Write every usage record waiting in this process (and, with Redis, in the usage stream) to the store now.

        With Redis it waits for a drain already running here, and for another process's for up to 4 s; a failure
        of the store or of Redis leaves records unwritten (logged), for the next flush or drain.

        Returns:
            The number of records written.
        """
        written = await self.writer.flush() if self.writer is not None else 0
        if self.usage_stream is not None:
            written += await self.usage_stream.drain(wait=True)
        return written

    async def unwritten_usage(self) -> int:
        """Usage records not in the store yet: queued in this process, and in the usage stream with Redis."""
        queued = self.writer.queued if self.writer is not None else 0
        return queued + (await self.usage_stream.pending() if self.usage_stream is not None else 0)

    def reload(self) -> bool:
        """Reload keyrelay.yaml's providers and routing settings (``keyrelay/reload.py``); False: refused, logged."""
        gateway, runtime = self.gateway, self.runtime
        if gateway is None or runtime is None:
            return False
        try:
            settings = reloaded_settings(self.settings)
            self.pool.check(settings)
        except ConfigError as exc:
            log.error("reload of the configuration refused, the running one stays: %s", exc)
            return False
        self.settings = settings
        gateway.reload(settings)
        runtime.key_service.set_catalog(
            known_models(settings), known_regions(settings), frozenset(p.name for p in settings.providers) or None
        )
        self.portal.state.portal.settings = settings
        channels = sum(len(p.models) for p in settings.providers)
        log.info("configuration reloaded: %d provider(s), %d channel(s)", len(settings.providers), channels)
        return True

    async def shutdown(self) -> None:
        """Flush and close everything."""
        if self.runtime is None:
            return
        if self._owns_process:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self.runtime.tasks.close()
        if self.writer is not None:
            await self.writer.close()
        if self.usage_stream is not None:
            # The stream's records into the store (a bounded share of a backlog), unless another process drains.
            await self.usage_stream.drain(max_batches=2)  # 10,000 records at most
        self.pool.close()
        await self.limits.close()  # closes the shared Redis client too
        await self.runtime.close()
        if self.tracer_provider is not None:
            await asyncio.to_thread(self.tracer_provider.shutdown)  # exports the spans still batched
        self.runtime = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry: lifespan events and HTTP requests."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request_id = new_request_id()
        token = request_id_var.set(request_id)
        try:
            if self.gateway is not None and scope["path"].startswith(("/v1/", "/v1beta/")):
                # The hot path adds x-request-id to its own headers: no per-message send wrapper.
                await self.gateway(scope, receive, send, request_id)
            else:
                await self._http(scope, receive, _with_request_id(send, request_id), request_id)
        finally:
            request_id_var.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        path: str = scope["path"]
        max_body = self.settings.max_body_bytes
        length = header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            err = GatewayError(ErrorType.PAYLOAD_TOO_LARGE, f"The request body exceeds {max_body} bytes.")
            await send_error(send, err, request_id)
            return
        if path.startswith(_ADMIN_PREFIXES):
            await self.admin(scope, limit_body(receive, max_body), send)
        elif path in PORTAL_PATHS or path.startswith(PORTAL_PREFIXES):
            await self.portal(scope, limit_body(receive, max_body), send)
        elif path in _PROBES and scope["method"] not in ("GET", "HEAD"):
            err = GatewayError(ErrorType.METHOD_NOT_ALLOWED, f"Use GET for {path}.", allow="GET, HEAD")
            await send_error(send, err, request_id)
        elif path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
        elif path == "/metrics":
            body = self.metrics.render()
            ctype = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            await send({"type": "http.response.start", "status": 200, "headers": [ctype]})
            await send({"type": "http.response.body", "body": body})
        elif path == "/readyz":
            await self._ready(send)
        else:
            await send_error(send, GatewayError(ErrorType.NOT_FOUND, f"No route for {path}."), request_id)

    async def _ready(self, send: Send) -> None:
        from sqlalchemy import text

        runtime = self.runtime
        try:
            if runtime is None:
                raise RuntimeError("not started")
            async with runtime.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            await send_json(send, 503, {"status": "unavailable", "store": "unreachable"})
            return
        if self.redis is not None:
            try:
                await self.redis.ping()
            except Exception:
                if self.settings.limits_fail_open:  # still serving, on local limits: keep taking traffic
                    await send_json(send, 200, {"status": "degraded", "store": "ok", "redis": "unreachable"})
                else:
                    await send_json(send, 503, {"status": "unavailable", "store": "ok", "redis": "unreachable"})
                return
        await send_json(send, 200, {"status": "ready", "store": "ok", "redis": "ok" if self.redis else "unused"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("start-up failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _with_request_id(send: Send, request_id: str) -> Send:
    rid = request_id.encode()

    async def wrapped(message: dict[str, Any] | Any) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
        await send(message)

    return wrapped


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    owns_process: bool = False,
    tracer_provider: TracerProvider | None = None,
) -> KeyrelayApp:
    """Build the ASGI application for these settings (``owns_process``: ``keyrelay serve``, see ``KeyrelayApp``)."""
    return KeyrelayApp(settings, clock=clock, owns_process=owns_process, tracer_provider=tracer_provider)


def _tune_gc() -> None:
    """The garbage-collector policy of a serving process (process-wide, so only for an app that owns its process)."""
    # Everything built so far lives as long as the process: move it out of the collector's
    # reach, so full collections stay short (they were ~80 ms pauses under load).
    gc.collect()
    gc.freeze()
    # The requests in flight hold more than the default 700 young container objects at once, so under load the
    # young generation was collected every few requests (35 times a second at 220 requests a second, 0.45 ms
    # each) and found almost nothing: reference counting frees what a request allocates when it ends.
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def create_app_from_env() -> KeyrelayApp:
    """Factory for worker processes (``serve --workers N``): settings from the environment the CLI exported."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app's handler is in place: never the default (exit)
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    return KeyrelayApp(settings, owns_process=True)
