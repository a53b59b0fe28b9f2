"""Redis limits backend: counters shared by every gateway process, one Lua script call per admission.

Selected by ``KEYRELAY_REDIS_URL``. Counters and reservations live in Redis, so many processes and
machines see one exact state, and a gateway restart keeps them. If Redis cannot be reached the
request fails with 503 ``LIMITS_UNAVAILABLE`` (fail closed), unless ``KEYRELAY_LIMITS_FAIL_OPEN=1``,
in which case this process falls back to its own in-memory limits until Redis answers again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.limits.backend import (
    RESERVATION_TTL_S,
    Admission,
    AdmissionRequest,
    RequestWindow,
    Reservation,
    SpendLevel,
    StaleState,
    WindowStatus,
    WindowUsage,
    precheck,
    spend_refusal,
    window_refusal,
)
from keyrelay.limits.memory import MemoryLimits
from keyrelay.limits.resp import LeanRedis
from keyrelay.tasks import finish_then_cancel

log = logging.getLogger("keyrelay.limits")
_FALLBACK_PREFIX = "local:"
# The Lua scripts, by versioned name (lua/<name>.lua): bump the name on any change of behaviour.
ADMIT, SETTLE, WINDOW_USAGE, MARK = "admit_v5", "settle_v4", "window_usage_v2", "mark_v1"
Arg = str | int | float | bytes  # a script argument
# The usage stream's key, after the prefix: records settled with ``settle_v4.lua``, drained by ``usage/stream.py``.
USAGE_STREAM = "usage"
# How long a state mark is kept after its row's last change. A cached row older than a change is also
# evicted by every process's store poll (``cache/sync.py``) within seconds, so a mark only has to outlive
# that poll's worst delay (a store outage); a week is generous.
MARK_TTL_S = 7 * 86_400
# Keys whose commands' cached parts (_Layout) are kept; beyond, the one made longest ago is dropped (remade if used).
LAYOUT_CACHE_SIZE = 4096
# A settlement replayed within this long of a failed attempt charges only the levels still holding its reservation
# (settle_v4.lua's "held only"): that attempt may have run in Redis although it failed here (a reply lost to a
# timeout or a cut connection). A reservation is held for RESERVATION_TTL_S (3 h) from its admission; later, a
# replay charges any counter still there, as a first settlement does.
REPLAY_HELD_ONLY_S = 3600.0


def _script(name: str) -> str:
    return resources.files("keyrelay.limits").joinpath(f"lua/{name}").read_text(encoding="utf-8")


def _bulk(*args: Arg) -> bytes:
    """``args`` as RESP bulk strings without the array's header: a piece of a command packed by hand."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # stub: a 1-tuple
    return packed[packed.index(b"\n") + 1 :]


@dataclass(slots=True)
class _Layout:
    """What one key's admission and settlement commands hold that is the same for each of its requests.

    ``admit_v5.lua`` takes the per-key arguments before and after the request's own, so an admission is sent as
    ``admit_head + <the request's values> + admit_tail`` (RESP: the array's header, then one bulk string per
    argument), packing only a few values per request instead of every key name and limit (about 15 µs of the
    gateway's CPU per request with every limit set). Made for one ``signature`` (the levels' counters and caps,
    the windows, tpm, in-flight cap and state marks of the key's cached policy) and used while a request matches it.
    The lists give the same commands to redis-py (no lean client: a Unix socket) and to deferred settlements.
    """

    signature: tuple[object, ...]
    keys: list[str]  # the admission's keys
    head_args: list[Arg]  # the admission's arguments before the request's own
    tail_args: list[Arg]  # and after them
    admit_head: bytes
    admit_tail: bytes
    settle_keys: list[str]  # the settlement's keys, without the usage stream
    settle_head: bytes  # a settlement with its record: the header, EVALSHA, its SHA1 and every key (the stream's too)


def _sha1(source: str) -> str:
    """The SHA1 Redis names a script by (``EVALSHA``: of the script's bytes, in hex)."""
    return hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def _unreachable() -> GatewayError:
    return GatewayError(ErrorType.LIMITS_UNAVAILABLE, "The limits backend (Redis) is unreachable; try again shortly.")


def _refusal(request: AdmissionRequest, reply: list[int]) -> Exception:
    """The exception for a non-zero reply of ``admit_v5.lua`` (its reply codes)."""
    code = reply[0]
    if code == 1:
        level = request.spend[reply[1] - 1]
        return spend_refusal(level, reply[2], request.cost_micros, level.resets_in_s)
    if code == 2:
        window = request.windows[reply[1] - 1]
        return window_refusal(window.name, window.limit, reply[3] / 1000)
    if code == 3:
        return window_refusal("tpm", reply[2], reply[3] / 1000)
    if code == 4:
        return window_refusal("max_concurrent", reply[2], reply[3] / 1000, in_flight=reply[4])
    if code == 5:
        return StaleState(request.marks[reply[1] - 1][0])
    raise AssertionError(f"admit_v5.lua replied {reply!r}")


# The most connections a process's redis-py pool holds (redis-py's default). Beyond it a command waits for one to be
# free, for up to POOL_WAIT_S seconds: redis-py's default pool raises "Too many connections" at once instead, which a
# burst of more than 100 concurrent commands (a Unix-socket URL sends every admission through redis-py) turned into
# "Redis unreachable" for the requests over it.
POOL_CONNECTIONS = 100
POOL_WAIT_S = 2.0


def client_from_url(url: str) -> Redis:
    """A redis-py client of ``url`` on a blocking pool of ``POOL_CONNECTIONS`` (its own: closed with the client).

    Timeouts in seconds: connecting 1, a reply 2, a free connection ``POOL_WAIT_S``; a connection idle for 30 s is
    checked before use. redis-py: https://redis.readthedocs.io/en/stable/connections.html#connectionpool-async.

    Raises:
        ValueError: ``url`` is not a Redis URL (redis-py's message).
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_CONNECTIONS,
        timeout=POOL_WAIT_S,
        socket_connect_timeout=1.0,
        socket_timeout=2.0,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)


class RedisLimits:
    """Limits backend on Redis (atomic Lua scripts, versioned by name)."""

    takes_records = True  # settle_v4.lua appends the usage record to the usage stream

    def __init__(self, client: Redis, *, prefix: str = "keyrelay", fail_open: bool = False, lean: bool = True) -> None:
        """A backend on ``client``'s Redis: its scripts through a lean pipelined client (``resp.py``), if TCP.

        ``lean=False``: every command through redis-py, as with a Unix-socket URL.
        """
        self._redis = client
        self._lean = LeanRedis.like(client) if lean else None
        self._prefix = prefix
        self.usage_stream = f"{prefix}:{USAGE_STREAM}"  # the key of the stream the settlements append records to
        self._fail_open = fail_open
        self._fallback = MemoryLimits()
        self._sources = {name: _script(f"{name}.lua") for name in (ADMIT, SETTLE, WINDOW_USAGE, MARK)}
        self._shas: dict[str, str] = {}  # script name → SHA1, once loaded
        # Each key's commands' cached parts (_Layout), for the keys made most recently: bounded, so memory does not grow
        # with the number of keys in use (about 2 KB each with every limit set).
        self._layouts: dict[str, _Layout] = {}
        self._sha = {name: _sha1(source) for name, source in self._sources.items()}  # what each is named by
        self._loading = asyncio.Lock()
        # After a failure, skip Redis for a second instead of making every request wait for a timeout.
        self._down_until = 0.0
        # Settlements Redis did not get (and costs admitted locally while failing open), replayed later.
        # Each with the monotonic time of its last failed attempt, which Redis may have run (its reply lost to a
        # timeout or a cut connection); None when it was never sent (Redis known down, a cost admitted locally).
        self._deferred: deque[tuple[list[str], list[Arg], float | None]] = deque(maxlen=1_000_000)
        # State marks Redis did not get, replayed first (a mark only grows, so a late one is still right).
        self._deferred_marks: deque[tuple[list[str], list[Arg]]] = deque(maxlen=100_000)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "keyrelay", fail_open: bool = False) -> RedisLimits:
        """A backend with its own connection pool."""
        return cls(client_from_url(url), prefix=prefix, fail_open=fail_open)

    # --- key names ---------------------------------------------------------------------------------------
    def _spend_keys(self, level: SpendLevel) -> list[str]:
        base = f"{self._prefix}:spend:{level.name}"
        return [base, base + ":resv"]

    def _window_key(self, key_hash: str, name: str) -> str:
        return f"{self._prefix}:window:{key_hash}:{name}"

    def _flight_key(self, key_hash: str) -> str:
        return f"{self._prefix}:flight:{key_hash}"

    def _mark_key(self, mark: str) -> str:
        return f"{self._prefix}:mark:{mark}"

    async def _run(self, name: str, keys: list[str], args: list[Arg]) -> list[int]:
        sha = self._shas.get(name)
        if sha is not None:
            try:
                return await self._evalsha(sha, keys, args)
            except NoScriptError:
                pass  # Redis restarted and lost its script cache: load it again below.
        return await self._evalsha(await self._load(name, sha), keys, args)

    async def _load(self, name: str, stale: str | None) -> str:
        """The script's SHA1 after a SCRIPT LOAD, one load at a time.

        A burst of first calls must not open a pooled connection each (redis-py's pool refuses beyond 100).
        """
        async with self._loading:
            sha = self._shas.get(name)
            if sha is None or sha == stale:
                if self._lean is not None:
                    sha = (await self._lean.execute("SCRIPT", "LOAD", self._sources[name])).decode()
                else:
                    sha = await self._redis.script_load(self._sources[name])
                if sha != _sha1(self._sources[name]):  # the packed commands (_Layout) name scripts by this
                    raise ResponseError(f"Redis named the script {name} {sha}, not its SHA1")
                self._shas[name] = sha
            return sha

    async def _run_packed(self, name: str, command: bytes) -> list[int]:
        """Run a command packed by hand (``_Layout``), which names script ``name`` by its SHA1, on the lean client."""
        assert self._lean is not None
        if name not in self._shas:
            await self._load(name, None)
        try:
            reply: list[int] = await self._lean.execute_packed(command)
        except NoScriptError:  # Redis restarted and lost its script cache: load it again
            await self._load(name, self._shas.get(name))
            reply = await self._lean.execute_packed(command)
        return reply

    async def _evalsha(self, sha: str, keys: list[str], args: list[Arg]) -> list[int]:
        if self._lean is not None:
            lean: list[int] = await self._lean.execute("EVALSHA", sha, len(keys), *keys, *args)
            return lean
        reply: list[int] = await self._redis.evalsha(sha, len(keys), *keys, *args)
        return reply

    # --- LimitsBackend -------------------------------------------------------------------------------------
    async def admit(self, request: AdmissionRequest) -> Admission:
        """One EVALSHA: check and reserve everything, atomically."""
        try:
            precheck(request)
        except GatewayError:
            if request.marks:  # refused by the cached policy: final only if that policy is current
                await self.check_current(request.marks)
            raise
        if time.monotonic() < self._down_until:
            return await self._unavailable(request, None)
        layout = self._layout(request)
        per_request: list[Arg] = [repr(request.now), request.cost_micros, request.max_tokens, request.request_id]
        for level in request.spend:
            per_request += [level.base_micros, -1 if level.resets_in_s is None else int(level.resets_in_s) + 86_400]
        try:
            if self._lean is not None:
                command = layout.admit_head + _bulk(*per_request) + layout.admit_tail
                reply = [int(x) for x in await self._run_packed(ADMIT, command)]
            else:
                args = [*layout.head_args, *per_request, *layout.tail_args]
                reply = [int(x) for x in await self._run(ADMIT, layout.keys, args)]
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + 1.0
            return await self._unavailable(request, exc)
        if reply[0]:
            raise _refusal(request, reply)
        status = WindowStatus(limit=reply[2], remaining=reply[3], reset_s=reply[4] / 1000) if reply[2] >= 0 else None
        reservation = Reservation(
            ident=request.request_id,
            key_hash=request.key_hash,
            spend=request.spend,
            cost_micros=request.cost_micros,
            tpm_bucket=reply[1] if reply[1] >= 0 else None,
            max_tokens=request.max_tokens if reply[1] >= 0 else 0,
            concurrent=bool(request.max_concurrent),
            backend_data=layout,
        )
        return Admission(reservation=reservation, window=status)

    def _layout(self, request: AdmissionRequest) -> _Layout:
        """The cached parts of this key's commands (``_Layout``), made again when the key's limits changed."""
        spend = request.spend
        signature = (
            tuple([(level.scope, level.ident, level.counter, level.cap_micros) for level in spend]),
            request.windows,
            request.tpm,
            request.max_concurrent,
            request.marks,
        )
        layout = self._layouts.get(request.key_hash)
        if layout is not None and layout.signature == signature:
            return layout
        keys: list[str] = []
        for level in spend:
            keys += self._spend_keys(level)
        settle_keys = list(keys)
        for window in request.windows:
            keys.append(self._window_key(request.key_hash, window.name))
        if request.tpm:
            keys.append(self._window_key(request.key_hash, "tpm"))
            settle_keys.append(keys[-1])
        if request.max_concurrent:
            keys.append(self._flight_key(request.key_hash))
            settle_keys.append(keys[-1])
        keys += [self._mark_key(mark) for mark, _ in request.marks]
        head_args: list[Arg] = [
            len(spend),
            len(request.windows),
            request.tpm or 0,
            request.max_concurrent or 0,
            RESERVATION_TTL_S,
            len(request.marks),
        ]
        tail_args: list[Arg] = [level.cap_micros for level in spend]
        for window in request.windows:
            tail_args += [window.seconds, window.limit]
        tail_args += [version for _, version in request.marks]
        admit_count = 3 + len(keys) + len(head_args) + 4 + 2 * len(spend) + len(tail_args)
        stream_keys = [*settle_keys, self.usage_stream]
        settle_count = 3 + len(stream_keys) + 10  # the settle_v4.lua arguments with a record
        layout = _Layout(
            signature=signature,
            keys=keys,
            head_args=head_args,
            tail_args=tail_args,
            admit_head=b"*%d\r\n" % admit_count + _bulk("EVALSHA", self._sha[ADMIT], len(keys), *keys, *head_args),
            admit_tail=_bulk(*tail_args),
            settle_keys=settle_keys,
            settle_head=b"*%d\r\n" % settle_count + _bulk("EVALSHA", self._sha[SETTLE], len(stream_keys), *stream_keys),
        )
        # A key made again replaces its own entry (moved to the end); a new key, when full, the one made longest ago.
        if self._layouts.pop(request.key_hash, None) is None and len(self._layouts) >= LAYOUT_CACHE_SIZE:
            del self._layouts[next(iter(self._layouts))]
        self._layouts[request.key_hash] = layout
        return layout

    @property
    def fail_open(self) -> bool:
        """Whether requests are admitted on local limits while Redis is unreachable."""
        return self._fail_open

    async def _unavailable(self, request: AdmissionRequest, exc: BaseException | None) -> Admission:
        if exc is not None:
            log.warning("limits backend (Redis) unreachable: %s", exc)
        if not self._fail_open:
            raise _unreachable() from exc
        admission = await self._fallback.admit(request)
        local = admission.reservation
        tagged = Reservation(
            ident=_FALLBACK_PREFIX + local.ident,
            key_hash=local.key_hash,
            spend=local.spend,
            cost_micros=local.cost_micros,
            tpm_bucket=local.tpm_bucket,
            max_tokens=local.max_tokens,
            concurrent=local.concurrent,
        )
        return Admission(reservation=tagged, window=admission.window)

    async def settle(
        self, reservation: Reservation, *, cost_micros: int, tokens: int, now: float, record: bytes | None = None
    ) -> bool:
        """One EVALSHA of ``settle_v4.lua``: the charge and, if given, ``record`` appended to the usage stream.

        If Redis is away (or was found away within the last second), the settlement is kept without its record
        and replayed by ``maintain``, and False tells the caller to queue the record itself (its local journal).
        A reservation admitted on the local fallback is settled there, and its cost replayed to Redis later.
        A caller cancelled meanwhile gets its ``CancelledError`` only once Redis answered (the settlement is done in
        Redis, or deferred like a failed one): whether the record went with it is then unknown to the caller.

        Returns:
            True if the record is in the usage stream.

        Raises:
            asyncio.CancelledError: The caller was cancelled (after the outcome above).
        """
        layout = reservation.backend_data
        if reservation.ident.startswith(_FALLBACK_PREFIX):
            await self._fallback.settle(reservation, cost_micros=cost_micros, tokens=tokens, now=now)
            if cost_micros and reservation.spend:
                # Spend admitted locally must still reach the shared counters once Redis is back.
                keys = [key for level in reservation.spend for key in self._spend_keys(level)]
                self._deferred.append((keys, [len(reservation.spend), "-", cost_micros, 0, -1, 0, 0, 0], None))
            return False
        # Admitted by Redis: the keys its admission named.
        keys = layout.settle_keys if isinstance(layout, _Layout) else self._settle_keys(reservation)
        args: list[Arg] = [
            len(reservation.spend),
            reservation.ident,
            cost_micros,
            reservation.cost_micros,
            -1 if reservation.tpm_bucket is None else reservation.tpm_bucket,
            reservation.max_tokens,
            tokens,
            1 if reservation.concurrent else 0,
        ]
        if time.monotonic() < self._down_until:
            self._deferred.append((keys, args, None))  # never sent: replayed as a first settlement
            return False
        try:
            if record is None:
                await finish_then_cancel(self._run(SETTLE, keys, [*args, 0]))
                return False
            if self._lean is not None and isinstance(layout, _Layout):
                await self._settle_packed(layout.settle_head + _bulk(*args, 0, record))
            else:
                await finish_then_cancel(self._run(SETTLE, [*keys, self.usage_stream], [*args, 0, record]))
        except (RedisError, OSError) as exc:
            # Deferred without the record: the caller journals it locally; whichever copy reaches the store
            # first is written, the other skipped (the request id is unique there).
            log.warning("could not settle reservation %s now, will retry: %s", reservation.ident, exc)
            self._deferred.append((keys, args, time.monotonic()))
            return False
        except asyncio.CancelledError as exc:
            if isinstance(exc.__cause__, (RedisError, OSError)):  # it failed while its caller was cancelled
                self._deferred.append((keys, args, time.monotonic()))
            raise
        return True

    def _settle_keys(self, reservation: Reservation) -> list[str]:
        """The keys of a reservation's settlement (``settle_v4.lua``), without the usage stream."""
        keys = [key for level in reservation.spend for key in self._spend_keys(level)]
        if reservation.tpm_bucket is not None:
            keys.append(self._window_key(reservation.key_hash, "tpm"))
        if reservation.concurrent:
            keys.append(self._flight_key(reservation.key_hash))
        return keys

    async def _settle_packed(self, command: bytes) -> None:
        """Run a packed ``settle_v4.lua`` call to its end, even if the caller is cancelled meanwhile.

        The cancellation is raised once Redis answered, with the failure, if any, as its cause (as
        ``finish_then_cancel``): on an open connection through a ``PatientFuture`` (no task), else (connecting,
        loading the script) through a task.

        Raises:
            RedisError, OSError: Redis did not settle.
            asyncio.CancelledError: The caller was cancelled; ``__cause__`` is the failure if Redis did not settle.
        """
        assert self._lean is not None
        future = self._lean.submit(command) if SETTLE in self._shas else None
        if future is not None:
            try:
                await future
                return
            except NoScriptError:
                pass  # Redis lost its scripts (a restart): loaded again below
            except asyncio.CancelledError:
                # Done by now: a PatientFuture holds the cancellation back until it is (and ``submit`` sent the
                # call before this task could be cancelled at this await).
                failure = future.exception() if future.done() else None
                if failure is not None:  # NoScriptError included: nothing was settled
                    raise asyncio.CancelledError from failure
                raise
        await finish_then_cancel(self._run_packed(SETTLE, command))

    async def maintain(self) -> None:
        """Replay the marks and settlements Redis missed, oldest first, until one fails again."""
        while self._deferred_marks:
            keys, args = self._deferred_marks[0]
            try:
                await self._run(MARK, keys, args)
            except (RedisError, OSError):
                return  # still unreachable: try again at the next maintenance
            self._deferred_marks.popleft()
        while self._deferred:
            keys, args, failed_at = self._deferred[0]
            # Within an hour of an attempt Redis may have run, only a level still holding the reservation is
            # charged (settle_v4.lua's "held only"), so that attempt is not charged twice.
            held_only = failed_at is not None and time.monotonic() - failed_at < REPLAY_HELD_ONLY_S
            try:
                await self._run(SETTLE, keys, [*args, 1 if held_only else 0])
            except ResponseError:
                # Redis answered but refused this one: retrying cannot help, and must not block the rest.
                log.exception("dropping a settlement Redis refuses: keys=%s", keys)
            except (RedisError, OSError):
                if args[1] != "-":  # this attempt too may have run: its replays are "held only" for another hour
                    self._deferred[0] = (keys, args, time.monotonic())
                return  # still unreachable: try again at the next maintenance
            self._deferred.popleft()

    @property
    def deferred(self) -> int:
        """Settlements waiting for Redis."""
        return len(self._deferred)

    async def window_usage(
        self, key_hash: str, windows: tuple[RequestWindow, ...], *, tpm: bool, now: float
    ) -> WindowUsage:
        """One EVALSHA of a read-only script: the key's window counts at ``now`` (epoch seconds).

        While Redis is unreachable this answers from the local fallback when failing open (the limits this
        process enforces meanwhile), and raises LIMITS_UNAVAILABLE when failing closed. A failed read does
        not mark Redis as down: only admissions decide that.
        """
        keys = [self._window_key(key_hash, spec.name) for spec in windows]
        if tpm:
            keys.append(self._window_key(key_hash, "tpm"))
        keys.append(self._flight_key(key_hash))
        args: list[Arg] = [repr(now), len(windows), 1 if tpm else 0, *(spec.seconds for spec in windows)]
        if time.monotonic() < self._down_until:
            return await self._local_usage(key_hash, windows, tpm, now, None)
        try:
            reply = [int(x) for x in await self._run(WINDOW_USAGE, keys, args)]
        except (RedisError, OSError) as exc:
            return await self._local_usage(key_hash, windows, tpm, now, exc)
        n = len(windows)
        counts = dict(zip((spec.name for spec in windows), reply[:n], strict=True))
        return WindowUsage(counts=counts, tokens_per_minute=reply[n] if tpm else None, in_flight=reply[n + 1])

    async def _local_usage(
        self, key_hash: str, windows: tuple[RequestWindow, ...], tpm: bool, now: float, exc: BaseException | None
    ) -> WindowUsage:
        if not self._fail_open:
            raise _unreachable() from exc
        return await self._fallback.window_usage(key_hash, windows, tpm=tpm, now=now)

    async def spent(self, level: SpendLevel) -> int:
        """Settled spend of a counter (its seed value if Redis has not seen it yet)."""
        try:
            value = await self._redis.hget(self._spend_keys(level)[0], "spent")
        except (RedisError, OSError):
            return await self._fallback.spent(level)
        return level.base_micros if value is None else int(value)

    async def mark(self, marks: tuple[tuple[str, int], ...]) -> None:
        """One EVALSHA of ``mark_v1.lua``: each mark becomes at least its version (kept ``MARK_TTL_S``).

        If Redis cannot be reached the change still stands in the store: the mark is kept and written by
        ``maintain`` (every second) once Redis answers; meanwhile the other processes learn of the change from
        the pub/sub fan-out or their store poll (and while Redis is down, a gateway failing closed admits nothing).
        """
        if not marks:
            return
        keys = [self._mark_key(mark) for mark, _ in marks]
        args: list[Arg] = [MARK_TTL_S, *(version for _, version in marks)]
        try:
            await self._run(MARK, keys, args)
        except (RedisError, OSError) as exc:
            log.warning("could not record a key state change in Redis now, will retry every second: %s", exc)
            self._deferred_marks.append((keys, args))

    async def check_current(self, marks: tuple[tuple[str, int], ...]) -> None:
        """One MGET of the marks: raise StaleState when one is newer than its cached version.

        Raises:
            StaleState: The principal must be reloaded.
            GatewayError: LIMITS_UNAVAILABLE when Redis is unreachable and failing closed (failing open, the
                cached principal is used, as admissions use the local limits).
        """
        if not marks or time.monotonic() < self._down_until:
            if marks and not self._fail_open:
                raise _unreachable()
            return
        try:
            newest = await self._redis.mget([self._mark_key(mark) for mark, _ in marks])
        except (RedisError, OSError) as exc:
            if not self._fail_open:
                raise _unreachable() from exc
            return
        for (mark, version), value in zip(marks, newest, strict=True):
            if value is not None and int(value) > version:
                raise StaleState(mark, int(value))

    async def ping(self) -> bool:
        """Whether Redis answers."""
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        """Close the connection pool and the lean connection."""
        if self._lean is not None:
            await self._lean.aclose()
        await self._redis.aclose()
