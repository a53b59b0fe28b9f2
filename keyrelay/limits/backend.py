"""The limits backend interface: one atomic admission per request, one settlement after it.

A request is admitted only if every level has room: the account balance, the group quota, the key's
spend limit, every request window, the tokens-per-minute window and the in-flight cap. Admission
reserves the request's maximum cost (and maximum tokens) at every level in the same atomic step;
a refused request changes nothing. Settlement replaces the reservation by the actual amounts.

Two implementations share this contract and one test suite: ``memory`` (one process) and ``redis``
(many processes; one Lua script call per admission).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from keyrelay.errors import ErrorType, GatewayError

SpendScope = Literal["account", "group", "key"]
# The value objects below are created for every request: plain slotted dataclasses (a frozen one
# pays object.__setattr__ per field in __init__). Treat them as immutable all the same.
# A reservation whose request never settles (its process died) is released after this long; it must
# outlast the longest request, so it is generous.
RESERVATION_TTL_S = 3 * 3600


@dataclass(slots=True)
class SpendLevel:
    """One spend counter with a cap: the account balance, the group quota or the key limit.

    ``counter`` names the period ("life" for a cap that never resets, else e.g. "daily:2026-11-23"),
    so a new period starts from zero by itself. ``base_micros`` is what the store already shows as
    spent in this period (plus what this process has not flushed yet); it seeds a counter the
    backend has never seen.
    """

    scope: SpendScope
    ident: str
    counter: str
    cap_micros: int
    base_micros: int
    resets_in_s: float | None  # seconds until the period ends; None for a lifetime counter

    @property
    def ttl_s(self) -> int | None:
        """How long the counter must be kept: its period plus a day of slack."""
        return None if self.resets_in_s is None else int(self.resets_in_s) + 86_400

    @property
    def name(self) -> str:
        """The counter's unique name."""
        return f"{self.scope}:{self.ident}:{self.counter}"


@dataclass(slots=True)
class RequestWindow:
    """A sliding request window: at most ``limit`` requests in any ``seconds``."""

    name: str
    seconds: int
    limit: int


@dataclass(slots=True)
class AdmissionRequest:
    """Everything one admission checks and reserves."""

    key_hash: str
    request_id: str
    now: float  # epoch seconds
    cost_micros: int
    spend: tuple[SpendLevel, ...]
    windows: tuple[RequestWindow, ...]
    tpm: int | None
    max_tokens: int
    max_concurrent: int | None
    # The state marks the principal was loaded with (``Principal.marks``): with a shared backend, admission
    # refuses to decide on a principal older than a change recorded by ``mark`` (raising StaleState).
    marks: tuple[tuple[str, int], ...] = ()


class StaleState(Exception):
    """The principal behind an admission or a check is older than a change another process recorded.

    Not an error for the client: the caller reloads the principal from the store and decides again. ``mark``
    names the newer mark; ``version`` is its value when the backend read it (``check_current``), else None.
    """

    def __init__(self, mark: str, version: int | None = None) -> None:
        super().__init__(mark)
        self.mark = mark
        self.version = version


@dataclass(slots=True)
class WindowStatus:
    """The tightest request window after admission, for the ``x-ratelimit-*`` headers."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(slots=True)
class Reservation:
    """What an admission holds until it is settled."""

    ident: str
    key_hash: str
    spend: tuple[SpendLevel, ...]
    cost_micros: int
    tpm_bucket: int | None
    max_tokens: int
    concurrent: bool
    # What the backend that made it keeps for its settlement (RedisLimits: the command's cached parts); None: nothing.
    backend_data: object = None


@dataclass(slots=True)
class Admission:
    """An admitted request: its reservation and the tightest window."""

    reservation: Reservation
    window: WindowStatus | None


@dataclass(slots=True)
class WindowUsage:
    """What one key's windows hold at one moment, for display (the portal's key panel); a snapshot, not a lock.

    Every figure is counted exactly as an admission at the same moment would count it: a request
    leaves a window when its bucket does (see ``windows.py``).
    """

    counts: dict[str, int]  # request window name ("rpm", "per_5h", …) → requests counted in it
    tokens_per_minute: int | None  # tokens in the 60 s tpm window (reserved maximum until settled); None: not asked
    in_flight: int  # requests holding a slot of the in-flight cap (admitted, not settled, not expired)


class LimitsBackend(Protocol):
    """Where limit counters live."""

    # Whether ``settle`` can keep a usage record in the same atomic step as the charge (Redis' usage stream).
    takes_records: bool

    async def admit(self, request: AdmissionRequest) -> Admission:
        """Check every limit and reserve atomically; raise GatewayError (nothing held) when one is full."""
        ...

    async def settle(
        self, reservation: Reservation, *, cost_micros: int, tokens: int, now: float, record: bytes | None = None
    ) -> bool:
        """Replace the reservation by the actual cost and tokens (0 releases it).

        ``record``: the request's usage record (``usage/records.py``'s JSON), for a backend that can keep it in the
        same atomic step (Redis: the usage stream, drained into the store by ``usage/stream.py``).

        Returns:
            True if the backend took ``record`` (it reaches the store without the caller); False if the caller
            must queue it itself (no record, a backend without a stream, or a settlement that was deferred).
        """
        ...

    async def window_usage(
        self, key_hash: str, windows: tuple[RequestWindow, ...], *, tpm: bool, now: float
    ) -> WindowUsage:
        """What the key's request windows, tpm window and in-flight cap hold at ``now`` (epoch seconds).

        A pure read: it changes no counter, so the next admission's outcome is the same with or without
        it. A key never seen gives zeros.

        Args:
            key_hash: The key's lookup hash, as in ``AdmissionRequest.key_hash``.
            windows: The request windows to count, by ``name`` and ``seconds`` (their limits play no part).
            tpm: Whether to count the tokens-per-minute window too.
            now: The moment to count at, in epoch seconds (the clock admissions use).

        Returns:
            The count of each window by name, the tokens in the tpm window (None unless ``tpm``) and the
            number of requests in flight.

        Raises:
            GatewayError: LIMITS_UNAVAILABLE when the shared counters cannot be read (Redis, failing closed).
        """
        ...

    async def spent(self, level: SpendLevel) -> int:
        """Settled spend of a counter (seeded from ``base_micros`` if unseen)."""
        ...

    async def mark(self, marks: tuple[tuple[str, int], ...]) -> None:
        """Record that rows changed: each ``(mark, version)`` says the row is now at least at ``version``.

        Called by ``services`` after the store write and before the management call answers, so that every
        process's next admission (or ``check_current``) sees the change. Marks are named ``k:<key hash>``,
        ``a:<account id>``, ``g:<group id>`` (``cache/keycache.py``). A mark only ever grows. No-op in one process.
        """
        ...

    async def check_current(self, marks: tuple[tuple[str, int], ...]) -> None:
        """For requests without an admission (``/v1/models``, ``/v1/key``, token counts, the management API).

        Raises:
            StaleState: A mark is newer than the version the principal was loaded with.
            GatewayError: LIMITS_UNAVAILABLE when the shared state cannot be read and the backend fails closed.
        """
        ...

    async def maintain(self) -> None:
        """Periodic housekeeping (run every second): expire old state, replay missed settlements."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


# --- refusals, shared by both backends so their errors are identical -------------------------------------


def spend_refusal(level: SpendLevel, left: int, cost: int, retry_after: float | None) -> GatewayError:
    """The error for a spend level without room for ``cost``."""
    detail = f"${left / 1e6:.6f} left, this request may cost up to ${cost / 1e6:.6f}"
    if level.scope == "account":
        return GatewayError(
            ErrorType.INSUFFICIENT_BALANCE, f"The account balance is exhausted: {detail}.", limit_source="account"
        )
    what = "group's quota" if level.scope == "group" else "key's spend limit"
    return GatewayError(
        ErrorType.API_KEY_QUOTA_EXHAUSTED,
        f"The {what} is used up for this period: {detail} (lower max_tokens to fit).",
        limit_source=level.scope,
        retry_after=retry_after,
    )


def precheck(request: AdmissionRequest) -> None:
    """Refuse a request that could never fit, whatever the counters say (so no retry would help)."""
    if request.tpm and request.max_tokens > request.tpm:
        raise GatewayError(
            ErrorType.RATE_LIMIT_EXCEEDED,
            f"This request alone may use up to {request.max_tokens} tokens (prompt bound plus max_tokens), more "
            f"than this key's tpm={request.tpm}; set a lower max_tokens.",
            retry_after=60,
        )


def window_refusal(name: str, limit: int, retry_after: float, *, in_flight: int | None = None) -> GatewayError:
    """The error for a full request window, tokens-per-minute window or in-flight cap.

    ``in_flight`` is the number of the key's requests in flight when the cap refused this one.
    """
    if name == "max_concurrent":
        count = limit if in_flight is None else in_flight
        noun = "request" if count == 1 else "requests"
        message = f"This key already has {count} {noun} in flight; its max_concurrent limit is {limit}."
    elif name == "tpm":
        message = f"Token rate limit tpm={limit} reached for this key."
    else:
        message = f"Rate limit {name}={limit} reached for this key."
    return GatewayError(ErrorType.RATE_LIMIT_EXCEEDED, message, retry_after=max(1.0, retry_after))
