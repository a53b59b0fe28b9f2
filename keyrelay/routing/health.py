"""Channel health: a circuit breaker per channel, rests per credential, and recent error rate and latency.

Fed by every attempt's outcome (a ``FailureClass``, or success) and read by the attempt loop
(``routing/failover.py``) to skip channels that are open and credentials that rest. Times are the
injected clock's monotonic seconds. The rules (docs/routing.md, "Health and circuit breaking"):

* A channel's breaker opens after ``failures`` failures that indicate the provider's trouble
  (``FailureClass.provider_trouble``) within ``window_s`` seconds: never after one.
* Open, the channel is skipped for a cooldown: ``cooldown_s`` the first time, doubled at each reopening
  without a success in between, at most ``max_cooldown_s``.
* After the cooldown the breaker is half-open: one request (the probe) may use the channel; its success
  closes the breaker, its failure opens it again with the next cooldown. A probe that never reports
  back frees its claim after ``max_cooldown_s``.
* A credential rests after a 429 for the upstream's ``Retry-After`` (``RATE_LIMIT_REST_S`` without one), for
  that model only (providers set rate limits per model); after a refusal of the credential (``CREDENTIAL``),
  for the breaker's growing cooldown and for every model of its provider.
* Any success closes the channel's breaker and ends its credential's refusal streak.

State transitions are reported to ``on_change`` (Redis sharing, ``routing/shared_health.py``), and
states heard from other processes are applied with :meth:`Health.apply`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from keyrelay.clock import Clock
from keyrelay.config import Settings
from keyrelay.providers.failure import FailureClass
from keyrelay.routing.table import Channel, Credential

RATE_LIMIT_REST_S = 5.0  # a 429 without Retry-After rests its credential this long
MAX_REST_S = 3600.0  # no Retry-After rests a credential longer than an hour
STATS_WINDOW_S = 60.0  # the window of the error rate and latency that /api/v1/providers reports
_STATS_MAX = 2000  # attempts remembered per channel for those figures


class ChannelState(StrEnum):
    """A circuit breaker's state."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


STATE_VALUES = {ChannelState.CLOSED: 0, ChannelState.HALF_OPEN: 1, ChannelState.OPEN: 2}  # keyrelay_channel_state


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """The breaker's numbers: see the module docstring."""

    failures: int = 5
    window_s: float = 60.0
    cooldown_s: float = 30.0
    max_cooldown_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings) -> BreakerPolicy:
        """The policy of ``KEYRELAY_BREAKER_*``."""
        return cls(
            settings.breaker_failures,
            settings.breaker_window_s,
            settings.breaker_cooldown_s,
            settings.breaker_max_cooldown_s,
        )

    def cooldown(self, opens: int) -> float:
        """The cooldown of the ``opens``-th opening in a row (1-based): doubled each time, capped."""
        return min(self.cooldown_s * 2.0 ** min(opens - 1, 30), self.max_cooldown_s)


class Breaker:
    """One channel's circuit breaker and recent attempts."""

    __slots__ = ("policy", "failures", "state", "opened_at", "open_until", "opens", "probe_until", "recent")

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.failures: deque[float] = deque()
        self.state = ChannelState.CLOSED
        self.opened_at = 0.0
        self.open_until = 0.0
        self.opens = 0  # openings in a row, without a success in between
        self.probe_until = 0.0  # a half-open probe is out until then
        self.recent: deque[tuple[float, bool, float]] = deque(maxlen=_STATS_MAX)  # (time, ok, latency s)

    def current(self, now: float) -> ChannelState:
        """The state at ``now``: an open breaker whose cooldown is over is half-open."""
        if self.state is ChannelState.OPEN and now >= self.open_until:
            self.state = ChannelState.HALF_OPEN
        return self.state

    def usable(self, now: float) -> bool:
        """Whether a request may use the channel now, without claiming the probe."""
        state = self.current(now)
        return state is ChannelState.CLOSED or (state is ChannelState.HALF_OPEN and now >= self.probe_until)

    def claim(self, now: float) -> None:
        """Take the half-open probe (a no-op when closed)."""
        if self.current(now) is ChannelState.HALF_OPEN:
            self.probe_until = now + self.policy.max_cooldown_s

    def success(self, now: float, latency_s: float) -> bool:
        """Record a success; True when it changed the state (closed the breaker)."""
        self.recent.append((now, True, latency_s))
        return self.state is not ChannelState.CLOSED and self.close()

    def close(self) -> bool:
        """Close the breaker; True when it was not closed."""
        changed = self.state is not ChannelState.CLOSED
        self.state = ChannelState.CLOSED
        self.opens = 0
        self.probe_until = 0.0
        if changed:
            self.failures.clear()
        return changed

    def failure(self, now: float, latency_s: float, counts: bool) -> bool:
        """Record a failure (``counts``: of the breaker's classes); True when it opened the breaker.

        A failure that does not count, met by the half-open probe, frees the probe's claim: the provider
        answered, so the next request may probe at once.
        """
        self.recent.append((now, False, latency_s))
        state = self.current(now)
        if not counts:
            if state is ChannelState.HALF_OPEN:
                self.probe_until = 0.0
            return False
        if state is ChannelState.OPEN:
            return False  # a forced attempt on an open channel (all were open): it stays open as it is
        if state is ChannelState.HALF_OPEN:
            self.open(now, self.opens + 1)
            return True
        failures = self.failures
        failures.append(now)
        horizon = now - self.policy.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        if len(failures) >= self.policy.failures:
            self.open(now, self.opens + 1)
            return True
        return False

    def open(self, now: float, opens: int, cooldown: float | None = None) -> None:
        """Open the breaker for the ``opens``-th time in a row (for ``cooldown`` seconds; default: the policy's)."""
        self.state = ChannelState.OPEN
        self.opens = opens
        self.opened_at = now
        self.open_until = now + (cooldown if cooldown is not None else self.policy.cooldown(opens))
        self.probe_until = 0.0
        self.failures.clear()

    def figures(self, now: float) -> tuple[int, float | None, float | None]:
        """(attempts, error rate, median latency in seconds) over the last ``STATS_WINDOW_S`` seconds."""
        horizon = now - STATS_WINDOW_S
        window = [entry for entry in self.recent if entry[0] > horizon]
        if not window:
            return 0, None, None
        errors = sum(1 for _, ok, _ in window if not ok)
        latencies = sorted(latency for _, _, latency in window)
        return len(window), errors / len(window), latencies[len(latencies) // 2]


@dataclass(slots=True)
class Rest:
    """A credential's rest: until when, since when, and refusals in a row."""

    until: float = 0.0
    since: float = 0.0
    refusals: int = 0


Change = Callable[[str, str, float], None]  # (kind "channel"/"credential", name, seconds left; 0: closed)


class Health:
    """Every channel's breaker and every credential's rest, in this process."""

    def __init__(self, clock: Clock, policy: BreakerPolicy | None = None) -> None:
        self._clock = clock
        self.policy = policy or BreakerPolicy()
        self._breakers: dict[str, Breaker] = {}
        self._rests: dict[str, Rest] = {}
        self._turn: dict[str, int] = {}  # provider → next credential to use (round robin)
        self.on_change: Change | None = None

    def set_policy(self, policy: BreakerPolicy) -> None:
        """Use ``policy`` from now on, in every breaker (a configuration reload); states are kept."""
        self.policy = policy
        for breaker in self._breakers.values():
            breaker.policy = policy

    def now(self) -> float:
        """The clock's monotonic seconds."""
        return self._clock.monotonic()

    def breaker(self, channel: Channel) -> Breaker:
        """The channel's breaker (made on first use)."""
        name = channel.qualified_name
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = Breaker(self.policy)
        return breaker

    def _resting(self, channel: Channel, credential: Credential, now: float) -> Rest | None:
        """The credential's rest that is still running for this channel (a refusal's or a rate limit's), if any."""
        rests = self._rests
        for name in (_refusal_name(channel, credential), _limit_name(channel, credential)):
            rest = rests.get(name)
            if rest is not None and now < rest.until:
                return rest
        return None

    def credential(self, channel: Channel, now: float) -> Credential | None:
        """The next credential of the channel's pool that does not rest (round robin); None: all rest."""
        pool = channel.credentials
        if len(pool) == 1:
            return pool[0] if not self._rests or self._resting(channel, pool[0], now) is None else None
        start = self._turn.get(channel.provider, 0)
        self._turn[channel.provider] = start + 1
        for step in range(len(pool)):
            credential = pool[(start + step) % len(pool)]
            if not self._rests or self._resting(channel, credential, now) is None:
                return credential
        return None

    def soonest_credential(self, channel: Channel) -> Credential:
        """The credential whose rest ends first (when every one rests)."""
        now = self.now()

        def until(credential: Credential) -> float:
            rest = self._resting(channel, credential, now)
            return rest.until if rest is not None else 0.0

        return min(channel.credentials, key=until)

    def unavailable_since(self, channel: Channel, now: float) -> float:
        """Since when the channel has been unusable (breaker open, or every credential resting); inf: usable.

        When every channel is unusable, the one unusable for the longest is tried.
        """
        breaker = self._breakers.get(channel.qualified_name)
        since = breaker.opened_at if breaker is not None and not breaker.usable(now) else float("inf")
        rests = [self._resting(channel, c, now) for c in channel.credentials]
        if all(r is not None for r in rests):
            since = min(since, max(r.since for r in rests if r is not None))
        return since

    def success(self, channel: Channel, credential: Credential, latency_s: float) -> None:
        """Record an attempt that the channel served."""
        now = self.now()
        if self.breaker(channel).success(now, latency_s):
            self._changed("channel", channel.qualified_name, 0.0)
        if self._rests:
            rest = self._rests.get(_refusal_name(channel, credential))
            if rest is not None and rest.refusals:
                rest.refusals = 0

    def release(self, channel: Channel) -> None:
        """Forget an attempt that never reached the channel (the request cannot be written for its wire).

        Nothing is counted; a half-open probe's claim is freed for the next request.
        """
        breaker = self.breaker(channel)
        if breaker.current(self.now()) is ChannelState.HALF_OPEN:
            breaker.probe_until = 0.0

    def failure(
        self,
        channel: Channel,
        credential: Credential,
        failure: FailureClass,
        latency_s: float,
        retry_after_s: float | None = None,
    ) -> None:
        """Record a failed attempt: the breaker counts it, the credential may rest (module docstring)."""
        now = self.now()
        breaker = self.breaker(channel)
        if breaker.failure(now, latency_s, failure.provider_trouble):
            self._changed("channel", channel.qualified_name, breaker.open_until - now)
        if failure is FailureClass.RATE_LIMIT:
            seconds = min(retry_after_s if retry_after_s is not None else RATE_LIMIT_REST_S, MAX_REST_S)
            self._rest(_limit_name(channel, credential), now, seconds, refused=False)
        elif failure is FailureClass.CREDENTIAL:
            name = _refusal_name(channel, credential)
            refusals = self._rests[name].refusals if name in self._rests else 0
            self._rest(name, now, self.policy.cooldown(refusals + 1), refused=True)

    def _rest(self, name: str, now: float, seconds: float, *, refused: bool) -> None:
        rest = self._rests.get(name)
        if rest is None:
            rest = self._rests[name] = Rest()
        if now >= rest.until:
            rest.since = now
        rest.until = max(rest.until, now + seconds)
        if refused:
            rest.refusals += 1
        self._changed("credential", name, rest.until - now)

    def _changed(self, kind: str, name: str, seconds: float) -> None:
        if self.on_change is not None:
            self.on_change(kind, name, seconds)

    def apply(self, kind: str, name: str, seconds: float) -> None:
        """A state heard from another process: open a breaker / rest a credential for ``seconds``; 0 closes."""
        now = self.now()
        if kind == "channel":
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = self._breakers[name] = Breaker(self.policy)
            if seconds <= 0:
                breaker.close()
            else:
                breaker.open(now, max(breaker.opens, 1), cooldown=seconds)
        elif kind == "credential" and seconds > 0:
            rest = self._rests.get(name)
            if rest is None:
                rest = self._rests[name] = Rest()
            if now >= rest.until:
                rest.since = now
            rest.until = max(rest.until, now + seconds)

    def snapshot(self, channel: Channel) -> dict[str, object]:
        """The channel's state for ``/api/v1/providers``: state, seconds until its cooldown ends, figures, rests."""
        now = self.now()
        breaker = self._breakers.get(channel.qualified_name)
        state = breaker.current(now) if breaker is not None else ChannelState.CLOSED
        attempts, error_rate, latency = breaker.figures(now) if breaker is not None else (0, None, None)
        credentials = []
        for credential in channel.credentials:
            rest = self._resting(channel, credential, now)
            credentials.append(
                {
                    "name": credential.label,
                    "state": "ready" if rest is None else "resting",
                    "rest_s": 0 if rest is None else round(rest.until - now, 3),
                }
            )
        return {
            "state": state.value,
            "cooldown_s": round(breaker.open_until - now, 3) if state is ChannelState.OPEN and breaker else 0,
            "attempts_60s": attempts,
            "error_rate_60s": None if error_rate is None else round(error_rate, 4),
            "latency_ms_p50": None if latency is None else round(latency * 1000, 1),
            "credentials": credentials,
        }

    def state(self, channel: Channel) -> ChannelState:
        """The channel's breaker state now."""
        breaker = self._breakers.get(channel.qualified_name)
        return breaker.current(self.now()) if breaker is not None else ChannelState.CLOSED


def _refusal_name(channel: Channel, credential: Credential) -> str:
    """``provider#index``: a refused credential is refused for every model of its provider."""
    return f"{channel.provider}#{credential.index}"


def _limit_name(channel: Channel, credential: Credential) -> str:
    """``provider/model#index``: providers rate-limit a credential per model (OpenAI's and Anthropic's limits)."""
    return f"{channel.qualified_name}#{credential.index}"
