"""docs/architecture.md's module map names exactly the files the package and bench/ have.

Every path in the map exists (it once listed a ``providers/`` folder that did not), and every module
of ``keyrelay/`` (and every script in ``bench/``) has a line.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
ENTRY = re.compile(r"^( {0,4})([\w.-]+(?:/[\w.-]+)*(?:\.py|\.lua|\.yaml|/))(?: |$)")


def _map_paths() -> set[str]:
    """Paths named by the module map's code block, rebuilt from its indentation."""
    section = ARCHITECTURE[ARCHITECTURE.index("## Module map") :]
    block = section[section.index("```\n") + 4 :]
    block = block[: block.index("```")]
    paths: set[str] = set()
    parents: dict[int, str] = {}
    for line in block.splitlines():
        match = ENTRY.match(line)
        if not match:
            continue  # a wrapped description
        depth = len(match.group(1)) // 2
        path = parents.get(depth - 1, "") + match.group(2) if depth else match.group(2)
        if path.endswith("/"):
            parents[depth] = path
        paths.add(path.rstrip("/"))
    return paths


def _modules() -> set[str]:
    package = {
        str(p.relative_to(REPO))
        for p in (REPO / "keyrelay").rglob("*")
        if p.suffix in (".py", ".lua")
        and "migrations" not in p.parts  # the map names the migrations folder and its versions in one line
        and not (p.name == "__init__.py" and p.parent.name != "keyrelay")
    }
    bench = {
        str(p.relative_to(REPO))
        for p in (REPO / "bench").glob("*")
        if p.suffix in (".py", ".yaml") and p.name != "__init__.py"
    }
    return package | bench


def test_every_path_in_the_module_map_exists() -> None:
    missing = sorted(p for p in _map_paths() if not (REPO / p).exists())
    assert not missing, f"docs/architecture.md's module map names paths that do not exist: {missing}"


def test_every_module_is_in_the_module_map() -> None:
    unmapped = sorted(_modules() - _map_paths())
    assert not unmapped, f"modules missing from docs/architecture.md's module map: {unmapped}"
