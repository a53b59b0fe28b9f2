"""Judged fields: the top-level request fields keyrelay decides by, which must each appear once.

RFC 8259 §4 leaves duplicate names in a JSON object undefined; orjson keeps the last, some upstream parsers
the first, so the model keyrelay authorises and prices could differ from the one served. Each wire names
its judged fields (model, stream, the output limit, ...) and refuses a body holding one twice.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.protocols.json_fields import escapes_of


class JudgedFields:
    """The judged top-level field names of one wire, and the check that each appears at most once."""

    __slots__ = ("_escape", "_key", "_names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._key = re.compile(rb'"(' + b"|".join(re.escape(name.encode()) for name in names) + rb')"\s*:')
        self._escape = escapes_of(names)

    def _top_level_duplicates(self, raw: bytes) -> list[str]:
        """Judged names that the top-level object of ``raw`` holds more than once.

        The stdlib parser keeps every name of an object when each object becomes its list of pairs (``list``, a C
        call, as the hook): the top-level list holds the body's names as written, repeats included.
        """
        names = self._names
        try:
            items = json.loads(raw, object_pairs_hook=list)
        except (ValueError, RecursionError):
            # orjson accepted the body; the stdlib parser may still give up on deep nesting. Judge it as orjson
            # read it: refuse, since whether the names repeat at the top level cannot be told.
            return [name for name in names if raw.count(b'"' + name.encode() + b'"') > 1][:1] or ["body"]
        if not isinstance(items, list) or not all(isinstance(pair, tuple) for pair in items):
            return []  # not an object: callers refuse it for that
        counts = Counter(name for name, _ in items)
        return [name for name in names if counts[name] > 1]

    def refuse_duplicates(self, raw: bytes) -> None:
        r"""Refuse a body whose judged fields appear twice at the top level.

        One C-level scan finds candidates; only then is the body parsed again to see whether they are
        top-level duplicates. A body with an escape that could spell a judged name (``"mod\u0065l"`` is the name
        ``model`` too; ``escapes_of``) is always checked by parsing.

        Raises:
            GatewayError: INVALID_REQUEST naming the repeated field.
        """
        if self._escape.search(raw) is None:
            seen = self._key.findall(raw)
            if len(seen) == len(set(seen)):
                return
        duplicates = self._top_level_duplicates(raw)
        if duplicates:
            name = duplicates[0]
            raise GatewayError(
                ErrorType.INVALID_REQUEST, f"The request body holds the field {name!r} more than once.", field=name
            )
