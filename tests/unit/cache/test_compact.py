"""The key cache's compact bookkeeping: an index of one string or a set per ident, counted sharing."""

from __future__ import annotations

from keyrelay.cache.compact import SecretIndex, Shared


def test_one_member_is_kept_as_the_string_more_as_a_set() -> None:
    index: SecretIndex[int] = SecretIndex()
    index.add(1, "a")
    index.add(1, "a")
    assert index._members == {1: "a"}
    index.add(1, "b")
    assert index.get(1) == {"a", "b"} and index.count() == 2
    index.discard(1, "a")
    assert index._members == {1: "b"}  # back to the string
    index.discard(1, "z")  # not a member: nothing changes
    assert index.get(1) == {"b"}
    index.discard(1, "b")
    assert len(index) == 0 and index.get(1) == set()


def test_pop_takes_every_member_and_the_ident() -> None:
    index: SecretIndex[str] = SecretIndex()
    for member in ("a", "b", "c"):
        index.add("k", member)
    index.add("other", "d")
    assert index.pop("k") == {"a", "b", "c"}
    assert index.pop("k") == set()
    assert len(index) == 1 and index.count() == 1


def pair(n: int) -> tuple[str, int]:
    return ("a", n)  # a new tuple on each call: equal values, distinct objects


def test_equal_values_are_one_object_until_the_last_holder_lets_go() -> None:
    shared: Shared[tuple[str, int]] = Shared()
    first, second = pair(1000), pair(1000)
    assert first is not second
    assert shared.take(first) is first
    assert shared.take(second) is first  # the object already held
    shared.release(second)
    assert len(shared) == 1 and shared.take(pair(1000)) is first
    shared.release(first)
    shared.release(first)
    assert len(shared) == 0
    shared.release(first)  # not held: nothing to do
    assert shared.take(second) is second  # held anew: the first object is not kept
