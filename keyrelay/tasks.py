"""Supervised background tasks: every task is named, logged if it dies, and awaited on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("keyrelay.tasks")
T = TypeVar("T")
_CANCEL_RETRY_S = 1.0  # how long close() waits for cancelled tasks before cancelling the rest again
_CANCEL_TRIES = 5


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
            me = asyncio.current_task()
            assert me is not None
            while True:
                await asyncio.sleep(seconds)
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("periodic job %s failed; retrying in %.1fs", name, seconds, exc_info=True)
                if me.cancelling():
                    # The job swallowed this task's cancellation: Python 3.11's asyncio.wait_for does when its inner
                    # future finishes as the cancel arrives (redis-py awaits through it). Stop all the same.
                    raise asyncio.CancelledError

        return self.spawn(loop(), name=name)

    async def close(self) -> None:
        """Cancel every task and wait for them to finish.

        A task that swallows its cancellation (see ``every``) is cancelled again, every ``_CANCEL_RETRY_S`` seconds,
        up to ``_CANCEL_TRIES`` times; one still running after that is left behind and logged, so that a shutdown
        always ends.
        """
        pending = set(self._tasks)
        for _ in range(_CANCEL_TRIES):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=_CANCEL_RETRY_S)
        for task in pending:
            log.error("background task %s did not stop when cancelled; left behind", task.get_name())


async def finish_then_cancel(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end even if the caller is cancelled meanwhile; the caller's cancellation is raised after.

    For a database transaction in a background task that shutdown cancels: a statement cancelled while it runs
    in the database driver's thread (aiosqlite) goes on there regardless, and the batch's bookkeeping (what was
    written, what stays queued) must match what the transaction did.

    Raises:
        asyncio.CancelledError: The caller was cancelled (after ``coro`` finished or failed), or ``coro`` was.
        Exception: Whatever ``coro`` raised, if the caller was not cancelled meanwhile.
    """
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise  # the inner task itself was cancelled
            cancelled = True  # the caller was: finish first
            continue
        except BaseException as exc:
            if cancelled:  # the work failed after the caller was cancelled: the cancellation still stands
                raise asyncio.CancelledError from exc
            raise
        if cancelled:
            raise asyncio.CancelledError
        return result


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
