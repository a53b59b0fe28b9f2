"""The usage journal: lines round-trip, orphans are only dead processes' journals, replays charge exactly once."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

from keyrelay.config import Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.limits.periods import spend_period
from keyrelay.runtime import open_runtime
from keyrelay.services.inputs import AccountCreate
from keyrelay.store.engine import create_engine
from keyrelay.store.schema import usage_records
from keyrelay.usage.journal import UsageJournal, journal_base, orphans
from keyrelay.usage.records import UsageRecord, record_from_json, record_to_json
from keyrelay.usage.writer import UsageWriter
from tests.conftest import TEST_ACTOR
from tests.records import usage_record

AT = datetime(2026, 12, 6, 23, 59, 59, 123456, tzinfo=UTC)


def journal_line(record: UsageRecord) -> bytes:
    """The record's line in a journal: its JSON form (``record_to_json``), LF-ended."""
    return record_to_json(record, newline=True)


def _record(n: int, *, key_hash: str = "k" * 64, account_id: int = 1, cost: int = 100) -> UsageRecord:
    return usage_record(
        f"req_journal{n:04d}",
        AT,
        key_hash=key_hash,
        account_id=account_id,
        key_period=spend_period("daily", AT),
        streamed=bool(n % 2),
        cost_micros=cost,
        client_ip="198.51.100.7",
        attempts='[{"provider":"a"}]',
    )


def test_a_record_round_trips_through_its_line(tmp_path: Path) -> None:
    journal = UsageJournal(tmp_path / "base")
    record = _record(1)
    journal.append(record)
    journal.close(empty=False)
    (segment,) = journal.path.glob("*.jsonl")
    assert record_from_json(segment.read_bytes().rstrip(b"\n")) == record


def test_only_dead_processes_journals_are_orphans(tmp_path: Path) -> None:
    base = tmp_path / "base"
    alive = UsageJournal(base)
    alive.append(_record(1))
    assert list(orphans(base)) == []  # its owner holds the lock
    # A process that died: its directory's lock is free. Its last line was torn by the kill.
    dead = base / "12345-deadbeef"
    dead.mkdir()
    (dead / "lock").touch()
    lines = b"".join(journal_line(_record(n)) for n in (2, 3)) + b'{"request_id": "req_tor'
    (dead / "000000000001.v1.jsonl").write_bytes(lines)
    (orphan,) = orphans(base)
    assert orphan.path == dead and [r.request_id for r in orphan.records] == ["req_journal0002", "req_journal0003"]
    orphan.remove()
    assert not dead.exists() and list(orphans(base)) == []
    alive.close(empty=True)
    assert not base.exists() or not any(base.iterdir())


def test_a_newer_keyrelays_records_in_an_orphan_are_kept_for_it(tmp_path: Path) -> None:
    """A rollback after a crash: the dead process was a newer keyrelay. What this version reads is replayed and
    deleted; its newer records and its segments of another format stay in the directory for a newer keyrelay."""
    base = tmp_path / "base"
    dead = base / "12345-deadbeef"
    dead.mkdir(parents=True)
    (dead / "lock").touch()
    newer = orjson.dumps({**orjson.loads(journal_line(_record(3))), "tenant": "t1"})
    announced = orjson.dumps({**orjson.loads(journal_line(_record(4))), "v": 2})
    first = journal_line(_record(1)) + newer + b"\n" + journal_line(_record(2)) + announced + b"\n"
    (dead / "000000000001.v1.jsonl").write_bytes(first)
    (dead / "000000000002.v1.jsonl").write_bytes(journal_line(_record(5)) + b'{"request_id": "req_tor')
    (dead / "000000000003.v2.jsonl").write_bytes(b"a format this version does not know\n")
    (dead / "state.bin").write_bytes(b"\x00")  # any file not this version's is a newer keyrelay's
    (dead / "000000000002.v1.jsonl.partial").write_bytes(b"a rewrite cut short")  # this version's leftover
    (orphan,) = orphans(base)
    assert [r.request_id for r in orphan.records] == ["req_journal0001", "req_journal0002", "req_journal0005"]
    orphan.remove()
    assert sorted(p.name for p in dead.iterdir()) == [
        "000000000001.v1.jsonl",
        "000000000002.v1.jsonl.partial",
        "000000000003.v2.jsonl",
        "lock",
        "state.bin",
    ]
    assert (dead / "000000000001.v1.jsonl").read_bytes() == newer + b"\n" + announced + b"\n"
    assert (dead / "000000000001.v1.jsonl").stat().st_mode & 0o777 == 0o600
    assert (dead / "000000000003.v2.jsonl").read_bytes() == b"a format this version does not know\n"
    (again,) = orphans(base)  # the next start: nothing to replay, the newer records still kept
    assert again.records == [] and list(again.newer.values()) == [[newer, announced]]
    again.remove()
    assert (dead / "000000000001.v1.jsonl").read_bytes() == newer + b"\n" + announced + b"\n"


def test_an_orphan_with_only_a_newer_keyrelays_file_is_kept(tmp_path: Path) -> None:
    base = tmp_path / "base"
    dead = base / "12345-deadbeef"
    dead.mkdir(parents=True)
    (dead / "lock").touch()
    (dead / "000000000001.v1.jsonl").write_bytes(journal_line(_record(1)))
    (dead / "000000000002.v2.bin").write_bytes(b"\x01\x02")
    (orphan,) = orphans(base)
    assert [r.request_id for r in orphan.records] == ["req_journal0001"] and orphan.newer == {}
    orphan.remove()
    assert sorted(p.name for p in dead.iterdir()) == ["000000000002.v2.bin", "lock"]


def test_a_process_holding_the_lock_elsewhere_is_alive(tmp_path: Path) -> None:
    """The lock is a real flock: another process holding it keeps its journal from being taken."""
    base = tmp_path / "base"
    other = base / "999-cafe"
    other.mkdir(parents=True)
    (other / "000000000001.v1.jsonl").write_bytes(journal_line(_record(1)))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
            str(other / "lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        assert list(orphans(base)) == []
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    (orphan,) = orphans(base)
    orphan.release()
    fd = os.open(other / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: free again
    finally:
        os.close(fd)


def test_sealed_segments_are_deleted_once_written(tmp_path: Path) -> None:
    journal = UsageJournal(tmp_path / "base")
    assert journal.append(_record(1)) == 1
    journal.seal()
    assert journal.append(_record(2)) == 2
    journal.seal()
    journal.seal()  # nothing new: no empty segment
    assert journal.segment == 3
    journal.release_before(2)
    assert sorted(p.name for p in journal.path.glob("*.jsonl")) == ["000000000002.v1.jsonl", "000000000003.v1.jsonl"]
    journal.release_before(99)  # never the open segment
    assert sorted(p.name for p in journal.path.glob("*.jsonl")) == ["000000000003.v1.jsonl"]
    journal.close(empty=True)


def test_the_journal_is_per_database(tmp_path: Path) -> None:
    a = journal_base(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", None)
    b = journal_base(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", None)
    assert a.parent == b.parent == tmp_path / "keyrelay-usage-journal" and a != b
    pg = journal_base("postgresql+asyncpg://u:secret@db/one", tmp_path / "j")
    assert pg.parent == tmp_path / "j"
    assert pg == journal_base("postgresql+asyncpg://u:other@db/one", tmp_path / "j")  # the password is not part
    assert pg != journal_base("postgresql+asyncpg://u:secret@db/two", tmp_path / "j")


async def test_a_replay_charges_each_record_exactly_once(database_url: str) -> None:
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        account = await runtime.account_service.create_account(AccountCreate(email="j@example.com"), actor=TEST_ACTOR)
        issued = await runtime.key_service.create(account=account, spec=KeyCreate(name="j"), actor=TEST_ACTOR)
        records = [_record(n, key_hash=issued.record.hash, account_id=account.id) for n in range(7)]
        writer = UsageWriter(runtime.engine, max_batch=3)
        writer.enqueue(records[0])
        writer.enqueue(records[1])
        await writer.flush()  # two of them reached the store before the "crash"
        assert await writer.replay(records) == 5
        assert await writer.replay(records) == 0  # a second replay (a crash during the first) changes nothing
        # A live writer whose batch meets a replayed record writes the rest of it and charges only that.
        writer.enqueue(records[6])
        writer.enqueue(_record(99, key_hash=issued.record.hash, account_id=account.id))
        assert await writer.flush() == 2
        async with runtime.engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(usage_records))).scalar_one()
        key = await runtime.keys.get(key_hash=issued.record.hash)
        owner = await runtime.accounts.get(account_id=account.id)
    finally:
        await runtime.close()
    assert count == 8
    assert key is not None and key.usage_micros == 800
    assert owner is not None and owner.spent_micros == 800


async def test_one_cancelled_request_does_not_cancel_the_others_of_its_tick(tmp_path: Path) -> None:
    journal = UsageJournal(tmp_path / "base")
    writer = UsageWriter(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"), journal=journal)

    async def request(n: int) -> str:
        writer.enqueue(_record(n))
        await writer.journaled()
        return f"sent {n}"

    first, second = asyncio.ensure_future(request(1)), asyncio.ensure_future(request(2))
    await asyncio.sleep(0)  # both have queued their record and wait for the tick's write
    first.cancel()
    assert await second == "sent 2"
    assert first.cancelled()
    journal.close(empty=False)
    (segment,) = journal.path.glob("*.jsonl")
    assert len(segment.read_bytes().splitlines()) == 2


def test_a_segment_that_cannot_be_opened_keeps_the_current_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = UsageJournal(tmp_path / "base")
    journal.append(_record(1))
    real_open = os.open

    def no_descriptors(path: object, *args: object) -> int:
        if str(path).endswith(".jsonl"):
            raise OSError(24, "Too many open files")
        return real_open(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_descriptors)
    journal.seal()
    monkeypatch.undo()
    assert journal.segment == 1  # still the first: its records are not taken for written
    assert journal.append(_record(2)) == 1
    journal.release_before(5)
    journal.close(empty=False)
    (segment,) = journal.path.glob("*.jsonl")
    assert [record_from_json(line).request_id for line in segment.read_bytes().splitlines()] == [
        "req_journal0001",
        "req_journal0002",
    ]


def test_a_directory_still_being_made_is_never_an_orphan(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / ".123-abcd").mkdir(parents=True)  # made, not yet locked and renamed by its process
    assert list(orphans(base)) == []
