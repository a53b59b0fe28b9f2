"""Redis limits backend: counters shared by every gateway process, one Lua script call per admission.

Selected by ``KEYRELAY_REDIS_URL``. Counters and reservations live in Redis, so many processes and
machines see one exact state, and a gateway restart keeps them. If Redis cannot be reached the
request fails with 503 ``LIMITS_UNAVAILABLE`` (fail closed), unless ``KEYRELAY_LIMITS_FAIL_OPEN=1``,
in which case this process falls back to its own in-memory limits until Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from importlib import resources

from redis.asyncio import Redis
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

log = logging.getLogger("keyrelay.limits")
_FALLBACK_PREFIX = "local:"
# The Lua scripts, by versioned name (lua/<name>.lua): bump the name on any change of behaviour.
ADMIT, SETTLE, WINDOW_USAGE, MARK = "admit_v3", "settle_v2", "window_usage_v1", "mark_v1"
Arg = str | int | float | bytes  # a script argument
# The usage stream's key, after the prefix: records settled with ``settle_v2.lua``, drained by ``usage/stream.py``.
USAGE_STREAM = "usage"
# How long a state mark is kept after its row's last change. A cached row older than a change is also
# evicted by every process's store poll (``cache/sync.py``) within seconds, so a mark only has to outlive
# that poll's worst delay (a store outage); a week is generous.
MARK_TTL_S = 7 * 86_400


def _script(name: str) -> str:
    return resources.files("keyrelay.limits").joinpath(f"lua/{name}").read_text(encoding="utf-8")


def _unreachable() -> GatewayError:
    return GatewayError(ErrorType.LIMITS_UNAVAILABLE, "The limits backend (Redis) is unreachable; try again shortly.")


def _refusal(request: AdmissionRequest, reply: list[int]) -> Exception:
    """The exception for a non-zero reply of ``admit_v3.lua`` (its reply codes)."""
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
    raise AssertionError(f"admit_v3.lua replied {reply!r}")


class RedisLimits:
    """Limits backend on Redis (atomic Lua scripts, versioned by name)."""

    takes_records = True  # settle_v2.lua appends the usage record to the usage stream

    def __init__(self, client: Redis, *, prefix: str = "keyrelay", fail_open: bool = False) -> None:
        """A backend on ``client``'s Redis: its scripts through a lean pipelined client (``resp.py``), if TCP."""
        self._redis = client
        self._lean = LeanRedis.like(client)
        self._prefix = prefix
        self.usage_stream = f"{prefix}:{USAGE_STREAM}"  # the key of the stream the settlements append records to
        self._fail_open = fail_open
        self._fallback = MemoryLimits()
        self._sources = {name: _script(f"{name}.lua") for name in (ADMIT, SETTLE, WINDOW_USAGE, MARK)}
        self._shas: dict[str, str] = {}  # script name → SHA1, once loaded
        self._loading = asyncio.Lock()
        # After a failure, skip Redis for a second instead of making every request wait for a timeout.
        self._down_until = 0.0
        # Settlements Redis did not get (and costs admitted locally while failing open), replayed later.
        self._deferred: deque[tuple[list[str], list[Arg]]] = deque(maxlen=1_000_000)
        # State marks Redis did not get, replayed first (a mark only grows, so a late one is still right).
        self._deferred_marks: deque[tuple[list[str], list[Arg]]] = deque(maxlen=100_000)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "keyrelay", fail_open: bool = False) -> RedisLimits:
        """A backend with its own connection pool."""
        client = Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=30)
        return cls(client, prefix=prefix, fail_open=fail_open)

    # --- key names ---------------------------------------------------------------------------------------
    def _spend_keys(self, level: SpendLevel) -> list[str]:
        base = f"{self._prefix}:spend:{level.name}"
        return [base, base + ":resv"]

    def _window_key(self, key_hash: str, name: str) -> str:
        return f"{self._prefix}:win:{key_hash}:{name}"

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
                self._shas[name] = sha
            return sha

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
        keys: list[str] = []
        args: list[Arg] = [
            repr(request.now),
            request.cost_micros,
            len(request.spend),
            len(request.windows),
            request.tpm or 0,
            request.max_tokens,
            request.max_concurrent or 0,
            request.request_id,
            RESERVATION_TTL_S,
            len(request.marks),
        ]
        for level in request.spend:
            keys += self._spend_keys(level)
            args += [level.cap_micros, level.base_micros, -1 if level.ttl_s is None else level.ttl_s]
        for window in request.windows:
            keys.append(self._window_key(request.key_hash, window.name))
            args += [window.seconds, window.limit]
        if request.tpm:
            keys.append(self._window_key(request.key_hash, "tpm"))
        if request.max_concurrent:
            keys.append(self._flight_key(request.key_hash))
        for mark, version in request.marks:
            keys.append(self._mark_key(mark))
            args.append(version)
        if time.monotonic() < self._down_until:
            return await self._unavailable(request, None)
        try:
            reply = [int(x) for x in await self._run(ADMIT, keys, args)]
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
        )
        return Admission(reservation=reservation, window=status)

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
        """One EVALSHA of ``settle_v2.lua``: the charge and, if given, ``record`` appended to the usage stream.

        If Redis is away (or was found away within the last second), the settlement is kept without its record
        and replayed by ``maintain``, and False tells the caller to queue the record itself (its local journal).
        A reservation admitted on the local fallback is settled there, and its cost replayed to Redis later.

        Returns:
            True if the record is in the usage stream.
        """
        keys: list[str] = []
        for level in reservation.spend:
            keys += self._spend_keys(level)
        if reservation.ident.startswith(_FALLBACK_PREFIX):
            await self._fallback.settle(reservation, cost_micros=cost_micros, tokens=tokens, now=now)
            if cost_micros and reservation.spend:
                # Spend admitted locally must still reach the shared counters once Redis is back.
                self._deferred.append((keys, [len(reservation.spend), "-", cost_micros, -1, 0, 0, 0]))
            return False
        if reservation.tpm_bucket is not None:
            keys.append(self._window_key(reservation.key_hash, "tpm"))
        if reservation.concurrent:
            keys.append(self._flight_key(reservation.key_hash))
        args: list[Arg] = [
            len(reservation.spend),
            reservation.ident,
            cost_micros,
            -1 if reservation.tpm_bucket is None else reservation.tpm_bucket,
            reservation.max_tokens,
            tokens,
            1 if reservation.concurrent else 0,
        ]
        if time.monotonic() < self._down_until:
            self._deferred.append((keys, args))
            return False
        try:
            if record is None:
                await self._run(SETTLE, keys, args)
                return False
            await self._run(SETTLE, [*keys, self.usage_stream], [*args, record])
        except (RedisError, OSError) as exc:
            # Deferred without the record: the caller journals it locally; whichever copy reaches the store
            # first is written, the other skipped (the request id is unique there).
            log.warning("could not settle reservation %s now, will retry: %s", reservation.ident, exc)
            self._deferred.append((keys, args))
            return False
        return True

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
            keys, args = self._deferred[0]
            try:
                await self._run(SETTLE, keys, args)
            except ResponseError:
                # Redis answered but refused this one: retrying cannot help, and must not block the rest.
                log.exception("dropping a settlement Redis refuses: keys=%s", keys)
            except (RedisError, OSError):
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
