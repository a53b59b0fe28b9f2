"""Each key's latest use waiting for the next usage flush (``usage/writer.py``'s ``LastUses``)."""

from __future__ import annotations

from datetime import UTC, datetime

from keyrelay.usage.writer import LastUses

T1 = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
T2 = datetime(2026, 12, 7, 5, 1, tzinfo=UTC)
T3 = datetime(2026, 12, 7, 5, 2, tzinfo=UTC)


def test_the_latest_use_of_a_key_wins_with_its_own_ip() -> None:
    uses = LastUses()
    assert not uses
    uses.note("a", T1, "192.0.2.1")
    uses.note("a", T2, None)  # a client whose IP is unknown: the IP goes with its use
    uses.note("b", T1, "192.0.2.2")
    assert uses
    assert uses.at == {"a": T2, "b": T1}
    assert uses.ip == {"a": None, "b": "192.0.2.2"}


def test_a_failed_flush_keeps_older_uses_only_for_keys_not_used_since() -> None:
    unwritten = LastUses()  # what a flush that failed was writing
    unwritten.note("a", T1, "192.0.2.1")
    unwritten.note("b", T2, "192.0.2.2")
    since = LastUses()  # noted while it ran: newer
    since.note("a", T3, "198.51.100.7")
    since.note("c", T3, None)
    since.keep_older(unwritten)
    assert since.at == {"a": T3, "c": T3, "b": T2}
    assert since.ip == {"a": "198.51.100.7", "c": None, "b": "192.0.2.2"}
    assert unwritten.at == {"a": T1, "b": T2}  # left as it was


def test_a_key_s_number_goes_with_its_use_and_survives_a_failed_flush() -> None:
    uses = LastUses()
    uses.note("a", T1, "192.0.2.1", 7)
    uses.note("a", T2, None)  # a use without the number (not known there): the one noted stays
    uses.note("b", T1, None)
    assert uses.ids == {"a": 7}
    since = LastUses()
    since.note("c", T3, None, 9)
    since.keep_older(uses)
    assert since.ids == {"c": 9, "a": 7}
