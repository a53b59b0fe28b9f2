"""Background tasks stop on shutdown, even those whose job swallows a cancellation (Python 3.11's wait_for can)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from keyrelay import tasks
from keyrelay.tasks import TaskGroup


async def test_a_periodic_job_that_swallows_the_cancel_still_stops() -> None:
    group = TaskGroup()
    running = asyncio.Event()
    runs = 0

    async def job() -> None:
        nonlocal runs
        runs += 1
        running.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return  # swallowed, as asyncio.wait_for does when its future completes as the cancel arrives

    task = group.every(0, job, name="swallower")
    await running.wait()
    await asyncio.wait_for(group.close(), timeout=30)
    assert task.cancelled() and runs == 1  # stopped after the swallowed cancel, not run again


async def test_a_task_that_swallows_cancels_is_cancelled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "_CANCEL_RETRY_S", 0.01)
    group = TaskGroup()
    cancels = 0

    async def stubborn() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 3:
                    raise

    task = group.spawn(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    await asyncio.wait_for(group.close(), timeout=30)
    assert task.cancelled() and cancels == 3


async def test_a_task_that_never_stops_is_left_behind_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tasks, "_CANCEL_RETRY_S", 0.01)
    group = TaskGroup()
    release = asyncio.Event()

    async def immortal() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = group.spawn(immortal(), name="immortal")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="keyrelay.tasks"):
        await asyncio.wait_for(group.close(), timeout=30)
    assert "background task immortal did not stop when cancelled" in caplog.text
    release.set()
    task.cancel()
    await asyncio.wait([task], timeout=30)


async def test_finish_then_cancel_finishes_the_work_then_raises_the_callers_cancel() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    finished = []

    async def work() -> str:
        started.set()
        await release.wait()
        finished.append(True)
        return "done"

    caller = asyncio.create_task(tasks.finish_then_cancel(work()))
    await started.wait()
    for _ in range(3):  # cancelled again and again, as TaskGroup.close does
        caller.cancel()
        await asyncio.sleep(0)
    assert not caller.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished == [True]


async def test_finish_then_cancel_returns_and_raises_as_the_work_does() -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise ValueError("no")

    assert await tasks.finish_then_cancel(answer()) == 42
    with pytest.raises(ValueError, match="no"):
        await tasks.finish_then_cancel(fail())


async def test_finish_then_cancel_keeps_the_cancel_when_the_work_fails_after_it() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def fails_late() -> None:
        started.set()
        await release.wait()
        raise ValueError("store down")

    caller = asyncio.create_task(tasks.finish_then_cancel(fails_late()))
    await started.wait()
    caller.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
