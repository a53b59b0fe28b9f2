"""The order in which one request tries its channels, and the attempt plan that walks it.

The order (docs/routing.md, "Channels"): higher ``priority`` first; within one priority a weighted random
permutation, drawn once per request, in which the first channel is picked with probability
``weight / sum of weights`` and each next one likewise among those left (successive sampling without
replacement). It is drawn with Efraimidis and Spirakis' keys, ``u ** (1 / weight)`` for a uniform ``u``,
sorted in decreasing order (Information Processing Letters 97(5), 2006), which gives that same
distribution in one pass.

The plan then applies health lazily: a channel whose breaker is open, or whose every credential rests, is
skipped; after a rate limit or a refused credential the same channel is tried again with the next
credential of its pool before the next channel; no (channel, credential) pair twice; at most
``max_attempts`` attempts. When no channel at all is usable, the one unusable for the longest is
tried all the same, so that requests are never failed without trying.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from keyrelay.protocols.base import ProviderPreferences
from keyrelay.providers.failure import FailureClass
from keyrelay.routing.health import ChannelState, Health
from keyrelay.routing.table import Channel, Credential


def draw_order(channels: Sequence[Channel], rng: random.Random) -> list[Channel]:
    """The channels in the order to try them: by priority (higher first), weighted-random within one."""
    if len(channels) == 1:
        return [channels[0]]
    draw = rng.random
    keyed = [(-c.priority, -(draw() ** (1.0 / c.weight)), i) for i, c in enumerate(channels)]
    keyed.sort()
    return [channels[i] for _, _, i in keyed]


def preferred(ordered: list[Channel], wishes: ProviderPreferences) -> list[Channel]:
    """``ordered`` filtered by the request's ``only``, then reordered by its ``order``.

    With ``allow_fallbacks`` the other channels follow in their drawn order; without, only ``order``'s remain.
    """
    if wishes.only is not None:
        allowed = set(wishes.only)
        ordered = [c for c in ordered if c.provider in allowed]
    if not wishes.order:
        return ordered
    rank = {name: i for i, name in enumerate(wishes.order)}
    first = sorted((c for c in ordered if c.provider in rank), key=lambda c: rank[c.provider])
    if not wishes.allow_fallbacks:
        return first
    return first + [c for c in ordered if c.provider not in rank]


class AttemptPlan:
    """One request's walk over its channels (see the module docstring); ``next`` gives each attempt."""

    __slots__ = ("_order", "_health", "_max", "_position", "_tried", "attempts", "_last")

    def __init__(self, order: list[Channel], health: Health, max_attempts: int) -> None:
        self._order = order
        self._health = health
        self._max = max_attempts
        self._position = 0
        self._tried: list[tuple[str, int]] = []  # a few at most: a list beats a set here
        self._last: Channel | None = None
        self.attempts = 0

    def next(self, last_failure: FailureClass | None = None) -> tuple[Channel, Credential] | None:
        """The next (channel, credential) to try, or None when the plan is over.

        ``last_failure``: how the previous attempt failed; after ``RATE_LIMIT`` or ``CREDENTIAL`` the same
        channel is tried with another credential of its pool first, if one is ready and untried.
        """
        if self.attempts >= self._max:
            return None
        health = self._health
        now = health.now()
        last = self._last
        if last is not None and last_failure in (FailureClass.RATE_LIMIT, FailureClass.CREDENTIAL):
            credential = self._untried_credential(last, now)
            if credential is not None:
                return self._take(last, credential)
        order = self._order
        while self._position < len(order):
            channel = order[self._position]
            self._position += 1
            breaker = health.breaker(channel)
            closed = breaker.state is ChannelState.CLOSED  # the usual case: no state to work out
            if not closed and not breaker.usable(now):
                continue
            credential = self._untried_credential(channel, now)
            if credential is None:
                continue
            if not closed:
                breaker.claim(now)
            return self._take(channel, credential)
        if self.attempts == 0 and order:
            # Every channel is unusable: try the one unusable for the longest rather than fail untried.
            channel = min(order, key=lambda c: health.unavailable_since(c, now))
            return self._take(channel, health.credential(channel, now) or health.soonest_credential(channel))
        return None

    def _untried_credential(self, channel: Channel, now: float) -> Credential | None:
        health = self._health
        tried = self._tried
        if not tried and len(channel.credentials) == 1:  # the usual first attempt: one check, no loop
            return health.credential(channel, now)
        for _ in range(len(channel.credentials)):
            credential = health.credential(channel, now)
            if credential is None:
                return None
            if (channel.qualified_name, credential.index) not in tried:
                return credential
        return None

    def _take(self, channel: Channel, credential: Credential) -> tuple[Channel, Credential]:
        self.attempts += 1
        self._last = channel
        self._tried.append((channel.qualified_name, credential.index))
        return channel, credential
