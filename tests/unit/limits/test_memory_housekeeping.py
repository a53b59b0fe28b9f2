"""The in-memory limits forget a key's state once it is idle, a batch of entries per housekeeping call."""

from __future__ import annotations

import pytest

from keyrelay.limits import memory
from keyrelay.limits.backend import AdmissionRequest, RequestWindow, SpendLevel
from keyrelay.limits.memory import MemoryLimits

T0 = 1_800_000_000.0
RPM = RequestWindow("rpm", 60, 10)
PER_DAY = RequestWindow("per_1d", 86_400, 10)


def req(
    key: str,
    now: float,
    *,
    windows: tuple[RequestWindow, ...] = (RPM,),
    tpm: int | None = None,
    max_concurrent: int | None = None,
    spend: tuple[SpendLevel, ...] = (),
) -> AdmissionRequest:
    return AdmissionRequest(
        key_hash=key,
        request_id="r",
        now=now,
        cost_micros=5 if spend else 0,
        spend=spend,
        windows=windows,
        tpm=tpm,
        max_tokens=10,
        max_concurrent=max_concurrent,
    )


async def walk(limits: MemoryLimits) -> None:
    """Housekeeping calls enough for a whole walk over every entry, however far the last walk got."""
    for _ in range(2 + (len(limits._keys) + len(limits._spend)) // memory.SWEEP_BATCH):
        await limits.maintain()


async def test_a_key_is_forgotten_once_its_windows_are_over() -> None:
    limits = MemoryLimits()
    for _ in range(3):
        await limits.admit(req("minute", T0))
    await limits.admit(req("day", T0, windows=(PER_DAY,)))
    await limits.admit(req("later", T0 + 59))  # housekeeping judges age on the admissions' clock
    await walk(limits)
    assert set(limits._keys) == {"minute", "day", "later"}  # the minute's bucket is still in its window
    await limits.admit(req("later", T0 + 60))
    await walk(limits)
    assert set(limits._keys) == {"day", "later"}
    # Nothing a decision depends on went with it: the key starts again as a key never seen.
    admission = await limits.admit(req("minute", T0 + 60))
    assert admission.window is not None and admission.window.remaining == RPM.limit - 1


async def test_a_tpm_window_keeps_its_key_for_its_minute() -> None:
    limits = MemoryLimits()
    admission = await limits.admit(req("k", T0, windows=(), tpm=1_000))
    await limits.settle(admission.reservation, cost_micros=0, tokens=20, now=T0)
    await limits.admit(req("clock", T0 + 59))
    await walk(limits)
    assert "k" in limits._keys
    await limits.admit(req("clock", T0 + 60))
    await walk(limits)
    assert "k" not in limits._keys


async def test_a_window_settled_to_nothing_leaves_nothing_to_keep() -> None:
    limits = MemoryLimits()
    admission = await limits.admit(req("k", T0, windows=(), tpm=1_000))
    await limits.settle(admission.reservation, cost_micros=0, tokens=0, now=T0)  # a request that used no token
    await limits.admit(req("clock", T0 + 1))
    await walk(limits)
    assert "k" not in limits._keys


async def test_a_key_with_a_request_in_flight_is_kept() -> None:
    limits = MemoryLimits()
    admission = await limits.admit(req("k", T0, windows=(), max_concurrent=1))
    await limits.admit(req("clock", T0 + 86_400))
    await walk(limits)
    assert "k" in limits._keys
    await limits.settle(admission.reservation, cost_micros=0, tokens=0, now=T0 + 86_400)
    await walk(limits)
    assert "k" not in limits._keys


async def test_a_key_without_windows_or_concurrency_cap_keeps_no_state() -> None:
    level = SpendLevel("key", "k", "life", cap_micros=1_000, base_micros=0, resets_in_s=None)
    limits = MemoryLimits()
    admission = await limits.admit(req("k", T0, windows=(), spend=(level,)))
    assert "k" not in limits._keys
    await limits.settle(admission.reservation, cost_micros=7, tokens=0, now=T0)
    assert await limits.spent(level) == 7


async def test_a_spend_counter_goes_a_day_after_its_period() -> None:
    level = SpendLevel("key", "k", "daily:2027-01-15", cap_micros=1_000, base_micros=100, resets_in_s=3_600)
    limits = MemoryLimits()
    admission = await limits.admit(req("k", T0, windows=(), spend=(level,)))
    await limits.settle(admission.reservation, cost_micros=7, tokens=0, now=T0)
    await limits.admit(req("clock", T0 + 3_600 + 86_400))
    await walk(limits)
    assert await limits.spent(level) == 107  # kept: a request admitted in the period may still settle
    await limits.admit(req("clock", T0 + 3_600 + 86_401))
    await walk(limits)
    assert await limits.spent(level) == 100  # forgotten: the level's base again


async def test_housekeeping_looks_at_one_batch_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "SWEEP_BATCH", 2)
    limits = MemoryLimits()
    for n in range(5):
        await limits.admit(req(f"idle{n}", T0))
    await limits.admit(req("clock", T0 + 120))
    await limits.maintain()
    assert len(limits._keys) == 4  # two of the five idle keys: the first batch
    await walk(limits)
    assert list(limits._keys) == ["clock"]


async def test_a_table_that_lost_most_of_its_entries_is_rebuilt() -> None:
    limits = MemoryLimits()
    for n in range(40):
        await limits.admit(req(f"idle{n}", T0))
    await limits.admit(req("clock", T0 + 120))
    table = limits._keys
    await walk(limits)
    assert list(limits._keys) == ["clock"]
    assert limits._keys is not table  # a dict keeps the table it grew to: a new one holds the one entry left
