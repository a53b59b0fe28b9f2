"""The README documents exactly the settings keyrelay has, with their real defaults, and no others.

Both ways: every field of ``Settings`` has a row in the README's configuration table (and every
field of ``ProviderConfig``/``ModelConfig`` appears in the README's keyrelay.yaml example), and every
``KEYRELAY_*`` variable named anywhere in README.md or docs/*.md is a setting (or one of the few
variables named as *not* being one). Adding a setting without documenting it fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from keyrelay.config import ModelConfig, ProviderConfig, Settings

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
DOCS = {path.name: path.read_text(encoding="utf-8") for path in [REPO / "README.md", *(REPO / "docs").glob("*.md")]}

# KEYRELAY_* names the docs mention that are deliberately not settings, and why they are mentioned.
NOT_SETTINGS = {
    "KEYRELAY_TEST_POSTGRES_DSN": "read by the test suite (tests/conftest.py), not by keyrelay",
    "KEYRELAY_TEST_REDIS_URL": "read by the test suite, not by keyrelay",
    "KEYRELAY_LOG": "the benchmark harness's own variable, named in the README as not a keyrelay setting",
}
# Provider fields that must not appear in keyrelay.yaml (the README says why).
NOT_IN_FILE = {"api_key", "api_keys"}


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    level = heading.split(" ")[0]
    following = re.search(rf"^{level} ", text[start + len(heading) :], flags=re.MULTILINE)
    return text[start : start + len(heading) + following.start()] if following else text[start:]


def _config_table() -> dict[str, str]:
    """Setting name → documented default, from the rows of the README's configuration table."""
    rows: dict[str, str] = {}
    for line in _section(README, "## Configuration").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3:
            continue
        if env := re.fullmatch(r"`KEYRELAY_([A-Z0-9_]+)`", cells[0]):
            rows[env.group(1).lower()] = cells[1]
        elif file_only := re.search(r"\(`([a-z_]+)` in `keyrelay\.yaml`\)", cells[0]):
            rows[file_only.group(1)] = cells[1]
    return rows


def _documented_default(cell: str) -> Any:
    words = {"unset": None, "empty": "", "none": ()}
    if cell in words:
        return words[cell]
    return cell.strip("`")


def _actual_default(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None or value == "" or value == ():
        return value
    return str(value)


def test_every_setting_is_in_the_configuration_table_and_nothing_else() -> None:
    documented = set(_config_table())
    fields = set(Settings.model_fields)
    assert not fields - documented, f"settings with no row in the README's configuration table: {fields - documented}"
    assert not documented - fields, f"README rows for settings that do not exist: {documented - fields}"


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_documented_default_is_the_real_one(name: str) -> None:
    table = _config_table()
    if name not in table:
        pytest.fail(f"{name} has no row in the README's configuration table")
    assert _documented_default(table[name]) == _actual_default(Settings.model_fields[name].default)


def test_every_keyrelay_variable_in_the_docs_exists() -> None:
    settings = {f"KEYRELAY_{name.upper()}" for name in Settings.model_fields}
    for doc, text in DOCS.items():
        named = set(re.findall(r"KEYRELAY_[A-Z0-9_]*[A-Z0-9]", text))
        unknown = named - settings - set(NOT_SETTINGS)
        assert not unknown, f"{doc} names variables keyrelay does not read: {sorted(unknown)}"


def _yaml_example() -> list[dict[str, Any]]:
    block = re.search(r"```yaml\n(.*?)```", _section(README, "### Providers"), flags=re.DOTALL)
    assert block, "the README's Providers section has no keyrelay.yaml example"
    providers: list[dict[str, Any]] = yaml.safe_load(block.group(1))["providers"]
    return providers


def _keys(entries: list[dict[str, Any]]) -> set[str]:
    return {key for entry in entries for key in entry}


def _commented_out_keys() -> set[str]:
    """Keys the example shows as comments (``# tls_ca_file: ...``): a value that must name a real file."""
    block = re.search(r"```yaml\n(.*?)```", _section(README, "### Providers"), flags=re.DOTALL)
    assert block
    return set(re.findall(r"^\s*# ([a-z_]+): ", block.group(1), flags=re.MULTILINE))


@pytest.mark.parametrize(
    ("model", "entries"),
    [
        (ProviderConfig, _yaml_example()),
        (ModelConfig, [m for p in _yaml_example() for m in p.get("models", ())]),
    ],
    ids=["provider", "model"],
)
def test_yaml_example_shows_every_field_and_nothing_else(model: type[BaseModel], entries: list[dict[str, Any]]) -> None:
    fields = set(model.model_fields) - NOT_IN_FILE
    shown = _keys(entries)
    assert not fields - shown - _commented_out_keys(), (
        f"{model.__name__} fields missing from the README's keyrelay.yaml example: {fields - shown}"
        " (add them there, with a comment saying what they do and their default)"
    )
    assert not shown - fields, f"README's keyrelay.yaml example has keys {model.__name__} rejects: {shown - fields}"
    for entry in entries:  # the example itself is a valid configuration
        model.model_validate({k: v for k, v in entry.items() if k != "models"})
