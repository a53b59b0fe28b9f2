"""The error bodies quoted in README.md and docs/*.md, and the README's error table, match keyrelay's error table.

Quoted outputs are read by users as the contract (`type`, `code`); when ``ErrorType`` changes, the
quotes must change with it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keyrelay.errors import ErrorType

REPO = Path(__file__).resolve().parents[2]
DOCS = {path.name: path.read_text(encoding="utf-8") for path in [REPO / "README.md", *(REPO / "docs").glob("*.md")]}
# Statuses a raiser may set instead of the type's own (GatewayError(status=...)): the upstream's 503 is passed on.
OTHER_STATUSES = {ErrorType.UPSTREAM_ERROR: {503}}


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_quoted_error_bodies_carry_the_real_code(doc: str) -> None:
    quoted = re.findall(r'"type":\s*"([A-Z_]+)",\s*"code":\s*("?[^,}"]*"?)', DOCS[doc])
    for name, code in quoted:
        assert name in ErrorType.__members__, f"{doc} quotes an error type keyrelay does not have: {name}"
        assert code == f'"{ErrorType[name].code}"', (
            f"{doc}: {name} is sent with code {ErrorType[name].code!r}, not {code}"
        )


def _error_table() -> list[tuple[int, str, str]]:
    readme = DOCS["README.md"]
    section = readme[readme.index("\n## Errors") :]
    section = section[: section.index("\n## ", 1)]
    rows = re.findall(r"^\| (\d{3}) \| `([A-Z_]+)` \| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    return [(int(status), name, code) for status, name, code in rows]


def test_readme_error_table_is_keyrelays() -> None:
    table = _error_table()
    for status, name, code in table:
        error = ErrorType[name]
        assert code == error.code, f"README's error table gives {name} the code {code}, keyrelay sends {error.code}"
        assert status == error.status or status in OTHER_STATUSES.get(error, set()), (name, status)
    assert {name for _, name, _ in table} == set(ErrorType.__members__), "every error type has a row, and only they"
