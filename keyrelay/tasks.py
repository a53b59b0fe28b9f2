"""Supervised background tasks: every task is named, logged if it dies, and awaited on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("keyrelay.tasks")


class TaskGroup:
    """Owns the process's long-running background tasks."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start a task that is kept referenced, and logged if it fails."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def every(self, seconds: float, job: Callable[[], Awaitable[object]], *, name: str) -> asyncio.Task[Any]:
        """Run ``job`` every ``seconds``; a failing run is logged and the loop goes on."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("periodic job %s failed; retrying in %.1fs", name, seconds, exc_info=True)

        return self.spawn(loop(), name=name)

    async def close(self) -> None:
        """Cancel every task and wait for them to finish."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class DisconnectWatch:
    """Cancels the calling task when the client disconnects (ASGI ``http.disconnect``).

    Used while relaying a stream so that an abandoned client also cancels the upstream call. The
    watching task starts only after ``delay`` seconds: most streams are over by then, and a task
    per request would be a large share of a short stream's cost. ``stop()`` must be called when
    the caller finishes.
    """

    def __init__(self, receive: Callable[[], Awaitable[Any]], delay: float = 0.2) -> None:
        self._receive = receive
        self._owner = asyncio.current_task()
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(delay, self._start)
        self._stopped = False
        self.fired = False  # the owner was cancelled because the client disconnected

    def _start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="disconnect-watch")

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message.get("type") == "http.disconnect":
                if self._owner is not None and not self._stopped:
                    self.fired = True
                    self._owner.cancel()
                return

    def stop(self) -> None:
        """Stop watching; from now on a disconnect cancels nothing."""
        self._stopped = True
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
