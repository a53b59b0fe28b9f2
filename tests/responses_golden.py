"""The shape of OpenAI Responses API streams and objects, to compare them with the golden files (tests/data/responses).

A shape keeps the keys and drops the values: :func:`json_shape` turns an object into ``{key: shape of its value}``,
an array into the list of its elements' shapes, and any other value (string, number, boolean, null) into ``None``;
so ``{"a": 1, "b": [{"c": "x"}]}`` and ``{"a": 2, "b": [{"c": "y"}]}`` have the same shape, ``{"a": 1}`` and
``{"a": {}}`` do not. Two things are not compared:

* repetition: consecutive elements of one shape count once, in arrays and in the list of events (a stream with 9
  text deltas has the shape of one with 3, a response with two function calls that of one with one);
* user data: the value of a key in ``opaque`` (by default :data:`OPAQUE_KEYS`, a tool's JSON schema, a format's
  schema and the metadata, whose keys are the caller's) is the marker :data:`ANY`.

:func:`event_shape` reads an SSE stream (``event:`` / ``data:`` lines, ``\\n``, ``\\r\\n`` or ``\\r`` line ends) into
``[(event type, shape of its data), ...]``; :func:`golden` reads a golden file of ``tests/data/responses``.
Compare with ``==``: pytest shows the first differing event and key.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, Final

import orjson

GOLDEN_DIR: Final = Path(__file__).resolve().parent / "data" / "responses"
ANY: Final = "<any>"
"""The shape of an opaque value (see ``opaque``)."""
OPAQUE_KEYS: Final = frozenset({"parameters", "schema", "metadata"})
"""Keys whose values are the caller's data: a function tool's JSON schema, a format's schema, the metadata."""

Shape = dict[str, "Shape"] | list["Shape"] | str | None


def _collapse(shapes: list[Any]) -> list[Any]:
    """Drop each element equal to the one before it."""
    kept: list[Any] = []
    for shape in shapes:
        if not kept or kept[-1] != shape:
            kept.append(shape)
    return kept


def json_shape(value: Any, *, opaque: Collection[str] = OPAQUE_KEYS) -> Shape:
    """The shape of a JSON value: its keys, recursively, without its values (see the module docstring).

    Args:
        value: A parsed JSON value.
        opaque: Keys whose values are not compared (their shape is :data:`ANY`).

    Returns:
        ``{key: shape}`` for an object, the collapsed list of element shapes for an array, ``None`` otherwise.
    """
    if isinstance(value, dict):
        return {key: ANY if key in opaque else json_shape(item, opaque=opaque) for key, item in value.items()}
    if isinstance(value, list):
        return _collapse([json_shape(item, opaque=opaque) for item in value])
    return None


def sse_events(sse: bytes) -> list[tuple[str, Any]]:
    """The events of an SSE stream: ``(event name, parsed data)``, the name ``""`` when the event has none.

    A ``data: [DONE]`` event is kept as ``(name, "[DONE]")``. Comments and other fields are ignored.
    """
    text = sse.decode().replace("\r\n", "\n").replace("\r", "\n")
    events: list[tuple[str, Any]] = []
    for block in text.split("\n\n"):
        name, data = "", []
        for line in block.split("\n"):
            field, _, rest = line.partition(":")
            rest = rest.removeprefix(" ")
            if field == "event":
                name = rest
            elif field == "data":
                data.append(rest)
        if data:
            joined = "\n".join(data)
            events.append((name, joined if joined == "[DONE]" else orjson.loads(joined)))
    return events


def event_shape(sse: bytes, *, opaque: Collection[str] = OPAQUE_KEYS) -> list[tuple[str, Shape]]:
    """The shape of a Responses API stream: ``[(type, shape of the event's data), ...]``, repetitions collapsed.

    The type is the ``event:`` name (the data's ``type`` when the event has no name); the values are ignored, the
    keys are not (every nested object, item, part and ``response`` included).

    Args:
        sse: The raw stream bytes.
        opaque: Keys whose values are not compared (see :func:`json_shape`).

    Returns:
        One ``(type, shape)`` per event, consecutive equal ones merged.
    """
    shapes: list[tuple[str, Shape]] = []
    for name, data in sse_events(sse):
        kind = name or (data.get("type", "") if isinstance(data, dict) else "")
        shapes.append((kind, json_shape(data, opaque=opaque)))
    return _collapse(shapes)


def event_types(sse: bytes) -> list[str]:
    """The event types of a stream, in order, repetitions kept."""
    return [name or (data.get("type", "") if isinstance(data, dict) else "") for name, data in sse_events(sse)]


def golden(name: str) -> bytes:
    """The bytes of ``tests/data/responses/<name>`` (e.g. ``"text.sse"``, ``"text.response.json"``)."""
    return (GOLDEN_DIR / name).read_bytes()
