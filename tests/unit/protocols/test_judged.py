"""Judged fields: a body is refused exactly when its top-level object repeats a judged name, however it is written."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyrelay.errors import GatewayError
from keyrelay.protocols.json_fields import escapes_of, spelled_plainly
from keyrelay.protocols.judged import JudgedFields

NAMES = ("model", "stream", "max_tokens", "n")
JUDGED = JudgedFields(NAMES)


def written(name: str, escape_at: int | None, upper: bool) -> str:
    """``name`` as a JSON string, one of its characters escaped as ``\\u00XX`` (hex in either case) if asked."""
    chars = [(f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}") if i == escape_at else c for i, c in enumerate(name)]
    return '"' + "".join(chars) + '"'


VALUES = st.sampled_from(
    [
        "1",
        '"gpt-4o"',
        '"\\u4f60\\u597d"',  # escapes of characters no judged name holds
        '{"model": 1, "model": 2}',  # nested repeats are not top-level ones
        '[{"n": 1}, {"n": 2}, "\\u006e"]',
        '"say \\"model\\": twice, \\"model\\": again"',
    ]
)
KEYS = st.tuples(
    st.sampled_from([*NAMES, "messages", "temperature", "mode"]), st.none() | st.integers(0, 9), st.booleans()
)


@settings(max_examples=600, deadline=None)
@given(pairs=st.lists(st.tuples(KEYS, VALUES), max_size=6), spaced=st.booleans())
def test_refused_exactly_when_a_top_level_judged_name_repeats(
    pairs: list[tuple[tuple[str, int | None, bool], str]], spaced: bool
) -> None:
    colon = " : " if spaced else ":"
    raw = ("{" + ", ".join(written(n, at, up) + colon + v for (n, at, up), v in pairs) + "}").encode()
    names = [n for (n, _, _), _ in pairs]
    repeated = [n for n in NAMES if names.count(n) > 1]
    if repeated:
        with pytest.raises(GatewayError) as caught:
            JUDGED.refuse_duplicates(raw)
        assert caught.value.field in repeated
    else:
        JUDGED.refuse_duplicates(raw)


def test_the_escapes_searched_for_are_those_of_the_names_characters() -> None:
    pattern = escapes_of(["model"])
    for name_char in "model":
        assert pattern.search(f"\\u{ord(name_char):04x}".encode())
        assert pattern.search(f"\\u{ord(name_char):04X}".encode())
    assert pattern.search(b"\\u4f60\\u0041\\u000a\\u0078") is None  # CJK, "A", LF, "x": none spells a name's letter


def test_a_body_the_stdlib_cannot_parse_is_judged_by_its_names() -> None:
    deep = b'{"model": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b', "mod\\u0065l": "b"}'
    with pytest.raises(GatewayError) as caught:
        JUDGED.refuse_duplicates(deep)
    assert caught.value.field in ("model", "body")


def test_spelled_plainly_only_without_escapes_that_could_spell_a_name() -> None:
    image = escapes_of(["image_url"])
    filler = b'"text": "' + b"x" * 4096 + b'"'
    assert spelled_plainly(b"{" + filler + b', "image_url": 1}', image)
    assert not spelled_plainly(b"{" + filler + b', "image_\\u0075rl": 1}', image)  # a name's letter, late
    assert spelled_plainly(b"{" + filler + b', "t": "\\u4f60"}', image)  # another character, late: still plain
    assert not spelled_plainly(b'{"t": "\\u4f60", ' + filler + b"}", image)  # escapes from the start: counted parsed
