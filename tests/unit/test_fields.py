"""Input primitives every edge shares: timestamps within every store's range, storable text, strict numbers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from keyrelay.fields import EARLIEST, LATEST, check_text, json_number, parse_timestamp
from keyrelay.keys.spec import KeyCreate
from keyrelay.services.inputs import AccountCreate, GroupCreate

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Every offset Python can represent (strictly less than a day), to the second.
OFFSETS = st.integers(-(86_400 - 1), 86_400 - 1).map(lambda s: timezone(timedelta(seconds=s)))
ANY_TIME = st.datetimes(timezones=OFFSETS | st.none())  # the whole calendar, naive or any offset


@PROPERTY
@given(ANY_TIME)
def test_a_timestamp_is_stored_as_utc_within_range_or_refused(value: datetime) -> None:
    """Whatever the instant and offset: UTC within EARLIEST..LATEST, or ValueError; never OverflowError."""
    for form in (value, value.isoformat()):
        try:
            parsed = parse_timestamp(form)
        except ValueError as exc:
            assert "ISO 8601" in str(exc) or "between" in str(exc)
            try:
                instant = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            except OverflowError:
                continue  # not representable in UTC at all: rightly refused
            assert not EARLIEST <= instant <= LATEST
            continue
        assert parsed.tzinfo is UTC and EARLIEST <= parsed <= LATEST
        assert parsed == (value if value.tzinfo is not None else value.replace(tzinfo=UTC))
        # Any offset can show it again without overflowing (what the API and every client do).
        parsed.astimezone(timezone(timedelta(hours=23, minutes=59)))
        parsed.astimezone(timezone(-timedelta(hours=23, minutes=59)))


@pytest.mark.parametrize(
    "text",
    ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31T00:00:00Z", "0001-01-01T00:00:00Z"],
)
def test_timestamps_at_the_edges_of_the_calendar_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="between"):
        parse_timestamp(text)


@pytest.mark.parametrize("value", ["0.5", "1700000000", 1700000000, 0.5, True, None, "tomorrow", "", "2030-01-01\x00"])
def test_a_timestamp_is_iso_8601_text_only(value: object) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(value)


@PROPERTY
@given(st.text(alphabet=st.characters(codec=None)))
def test_text_is_storable_or_refused(value: str) -> None:
    storable = "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if storable:
        assert check_text(value) == value
    else:
        with pytest.raises(ValueError):
            check_text(value)


@pytest.mark.parametrize("value", ["5", "1.5", True, False, None, [1], {"a": 1}])
def test_amounts_are_json_numbers_only(value: object) -> None:
    with pytest.raises(ValueError, match="number"):
        json_number(value)


@PROPERTY
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_amounts_keep_their_shortest_decimal_form(value: float) -> None:
    assert json_number(value) == Decimal(repr(value))


def test_models_are_strict_about_json_types() -> None:
    for bad in (
        {"name": "k", "disabled": "yes"},
        {"name": "k", "limit": "5"},
        {"name": 5},
        {"name": "k", "rate_limits": {"max_concurrent": False}},
        {"name": "k", "expires_in_days": 1.0},
    ):
        with pytest.raises(ValidationError):
            KeyCreate.model_validate(bad)
        with pytest.raises(ValidationError):
            KeyCreate.model_validate_json(json.dumps(bad))
    with pytest.raises(ValidationError):
        AccountCreate.model_validate({"email": "a@example.com", "balance": "1"})
    with pytest.raises(ValidationError):
        GroupCreate.model_validate({"name": "g", "price_multiplier": "1.5"})
    spec = KeyCreate.model_validate({"name": "k", "limit": 0.1, "expires_at": "2030-01-01T02:00:00+02:00"})
    assert spec.limit == Decimal("0.1") and spec.expires_at == datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("email", ["not-an-email", "two@@example.com", "sp ace@example.com", "@example.com", "a@"])
def test_an_invalid_email_says_what_an_email_looks_like(email: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AccountCreate(email=email)
    message = caught.value.errors()[0]["msg"]
    assert "name@example.com" in message and "@" in message
    assert "pattern" not in message and "^" not in message and "\\s" not in message  # no raw regex
