"""Records sent to the Redis usage stream by this process are read back by their exact bytes, without a decode."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from keyrelay.usage.records import SentRecords, record_to_json
from tests.records import usage_record

AT = datetime(2026, 12, 6, 18, 0, tzinfo=UTC)


def test_a_sent_line_reads_back_as_its_own_record_once() -> None:
    sent = SentRecords()
    record = usage_record("req_s1", AT, key_hash="k", account_id=1)
    line = record_to_json(record)
    sent.add(line, record)
    assert sent.read(bytes(line)) is record  # the same bytes, another object (as read from Redis)
    assert len(sent) == 0
    again = sent.read(line)  # forgotten: decoded now
    assert again == record and again is not record


def test_only_the_exact_bytes_match() -> None:
    sent = SentRecords()
    record = usage_record("req_s2", AT, key_hash="k", account_id=1)
    sent.add(record_to_json(record), record)
    other = replace(record, cost_micros=11)
    assert sent.read(record_to_json(other)) == other  # same request id, other bytes: decoded, not the sent one
    assert len(sent) == 1
    with pytest.raises(ValueError):
        sent.read(b"not a record")


def test_it_holds_at_most_its_size_dropping_the_oldest() -> None:
    sent = SentRecords(size=3)
    records = [usage_record(f"req_b{n}", AT, key_hash="k", account_id=1) for n in range(5)]
    for record in records:
        sent.add(record_to_json(record), record)
    assert len(sent) == 3
    assert sent.read(record_to_json(records[0])) is not records[0]  # dropped: decoded
    assert sent.read(record_to_json(records[4])) is records[4]
