"""A usage record's JSON form (the journal line, the Redis stream entry) is orjson's own dump of it, and reads back."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from keyrelay.limits.periods import spend_period
from keyrelay.usage.records import NewerRecord, SentRecords, UsageRecord, record_from_json, record_to_json

NOW = datetime(2026, 12, 6, 23, 59, 59, 999_999, tzinfo=UTC)


def _record(**fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "request_id": "req_0123456789abcdef01234567",
        "created_at": NOW,
        "key_hash": "a" * 64,
        "key_name": "bench",
        "account_id": 1,
        "key_period": spend_period("monthly", NOW),
        "group_id": 7,
        "group_period": spend_period("weekly", NOW),
        "model": "gpt-4o-mini",
        "provider": "mock",
        "streamed": True,
        "prompt_tokens": 5,
        "completion_tokens": 9,
        "cost_micros": 7,
        "usage_estimated": False,
        "status": 200,
        "error_type": None,
        "latency_ms": 3,
        "ttft_ms": 2,
        "client_ip": "127.0.0.1",
        "protocol": "openai",
        "upstream_kind": "openai-compatible",
    }
    values.update(fields)
    return UsageRecord(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "record",
    [
        _record(),
        _record(key_period=None, group_id=None, group_period=None),
        _record(model=None, provider=None, status=502, error_type="UPSTREAM_ERROR", attempts='[{"provider":"a"}]'),
        _record(key_period=spend_period("daily", NOW), group_period=spend_period("daily", NOW), client_ip=None),
    ],
)
def test_the_json_form_is_the_records_own_json(record: UsageRecord) -> None:
    line = record_to_json(record, newline=True)
    own = orjson.loads(orjson.dumps(record))
    del own["key_id"]  # this process's alone (see the next test)
    assert line == orjson.dumps(own, option=orjson.OPT_APPEND_NEWLINE)
    assert record_from_json(line.rstrip(b"\n")) == record


def test_a_record_s_key_number_is_not_in_its_json_form() -> None:
    # The key's number comes from this process's key cache; a record decoded from its JSON form has none (the writer
    # looks it up by hash), and the JSON form stays the one every release reads. An object that names it is read
    # with it, not taken for a newer keyrelay's record.
    record = _record(key_id=42)
    line = record_to_json(record)
    assert b"key_id" not in line
    assert line == record_to_json(_record())
    assert record_from_json(line) == _record(key_id=None)
    assert record_from_json(orjson.dumps(record)) == record


def test_a_record_this_process_sent_comes_back_with_its_key_number() -> None:
    # The drain reads this process's own stream entries back as the objects it sent: their numbers are kept.
    sent = SentRecords()
    record = _record(key_id=42)
    line = record_to_json(record)
    sent.add(line, record)
    assert sent.read(line).key_id == 42
    assert sent.read(line).key_id is None  # forgotten once read: decoded from the line


def test_a_record_in_another_field_order_or_without_its_defaults_reads_back_by_name() -> None:
    """Only ``record_to_json``'s own field order is read by position; any other object of the fields by name."""
    record = _record()
    fields = orjson.loads(record_to_json(record))
    shuffled = dict(reversed(list(fields.items())))
    assert record_from_json(orjson.dumps(shuffled)) == record
    for default in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "protocol", "attempts"):
        del fields[default]  # a line of a version before these fields: their defaults
    assert record_from_json(orjson.dumps(fields)) == _record(protocol="openai", upstream_kind="openai-compatible")


@pytest.mark.parametrize(
    "change",
    [
        {"request_id": None, "created_at": None},  # not a timestamp
        {"key_period": {"reset": ["monthly"], "start": "2026-12-01T00:00:00+00:00"}},  # an unhashable reset
        {"key_period": {"start": "2026-12-01T00:00:00+00:00"}},  # a period without its reset
    ],
)
def test_what_is_not_a_record_is_a_value_error(change: dict[str, object]) -> None:
    fields = orjson.loads(record_to_json(_record()))
    fields.update(change)
    with pytest.raises(ValueError, match="not a record"):
        record_from_json(orjson.dumps(fields))


def test_a_missing_field_is_a_value_error_in_the_fields_own_order() -> None:
    fields = orjson.loads(record_to_json(_record()))
    del fields["status"]
    with pytest.raises(ValueError, match="not a record"):
        record_from_json(orjson.dumps(fields))


@pytest.mark.parametrize(
    "change",
    [
        {"tenant": "t1"},  # a field a newer keyrelay added, beside every field this one needs
        {"v": 2},  # a newer format, announced
        {"v": 2, "status": "ok"},  # a newer format may change what a field holds
    ],
)
def test_a_newer_keyrelays_record_is_told_apart_from_a_broken_one(change: dict[str, object]) -> None:
    fields = orjson.loads(record_to_json(_record()))
    fields.update(change)
    with pytest.raises(NewerRecord):
        record_from_json(orjson.dumps(fields))


def test_format_1_named_reads_as_before() -> None:
    fields = orjson.loads(record_to_json(_record()))
    assert record_from_json(orjson.dumps({**fields, "v": 1})) == _record()


@pytest.mark.parametrize(
    "data",
    [
        b'{"not": "a record"}',  # unknown fields, none of a record's: another program's
        b'{"tenant": "t1", "request_id": "req_1"}',  # unknown fields without the fields a record needs
        b'{"v": 0}',
        b'{"v": "2"}',
        b'{"v": true}',
    ],
)
def test_what_is_neither_a_record_nor_a_newer_one_is_a_plain_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a record") as caught:
        record_from_json(data)
    assert not isinstance(caught.value, NewerRecord)


def test_a_bad_version_beside_a_whole_record_is_no_record() -> None:
    fields = orjson.loads(record_to_json(_record()))
    for version in (0, -1, "1", None, 1.5):
        with pytest.raises(ValueError, match="not a record") as caught:
            record_from_json(orjson.dumps({**fields, "v": version}))
        assert not isinstance(caught.value, NewerRecord)
