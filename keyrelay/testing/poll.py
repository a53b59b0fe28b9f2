"""Waiting in tests for something another task or process does: a poll bounded by a deadline.

The short pause between probes is the polling interval, never a guess at how long the thing takes; the
deadline only turns a hang into a failure, and nothing measures how long the wait took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def poll_until(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], object] | None = None,
    *,
    what: str,
    timeout: float = 10.0,
    interval: float = 0.02,
) -> T:
    """Call ``probe`` until its result satisfies ``done`` (by default: is truthy), and return that result.

    Args:
        probe: Looks once (an HTTP call, a query); may return anything, e.g. a response or None.
        done: Whether a result is the awaited one; None means ``bool(result)``.
        what: What is awaited, for the failure message.
        timeout: The deadline in seconds: generous, because it is reached only when something is broken.
        interval: Seconds between probes.

    Raises:
        AssertionError: When the deadline passes first; the message names ``what`` and shows the last result.
    """
    accept: Callable[[T], object] = done if done is not None else bool
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await probe()
        if accept(result):
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s (last probe gave {result!r})")
        await asyncio.sleep(interval)


async def wait_until(
    condition: Callable[[], object], *, what: str, timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Wait until ``condition()`` is truthy: :func:`poll_until` for a plain (not awaitable) check.

    Raises:
        AssertionError: When the deadline passes first.
    """

    async def probe() -> object:
        return condition()

    await poll_until(probe, what=what, timeout=timeout, interval=interval)
