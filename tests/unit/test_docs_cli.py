"""The README's CLI synopsis lists exactly the commands and options the ``keyrelay`` command has.

The README once said the CLI could not set ``per_5h``, ``per_1d``, ``per_7d``, ``tpm`` and
``max_concurrent`` while ``keys create`` had those flags. The synopsis is checked against click's
own command tree, both ways, so that flags added to the CLI are documented and no documented flag is
missing from it.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from keyrelay.cli import cli

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
IMPLICIT = {"--help", "-h", "--version"}


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found |= _commands(command, f"{path} ")
        else:
            found[path] = command
    return found


def _real() -> dict[str, set[str]]:
    commands = {
        path: {opt for param in command.params for opt in param.opts if opt.startswith("--")}
        for path, command in _commands(cli).items()
    }
    commands["keyrelay"] = {opt for param in cli.params for opt in param.opts if opt.startswith("--")}
    return {path: opts - IMPLICIT for path, opts in commands.items()}


def _synopsis() -> dict[str, set[str]]:
    section = README[README.index("\n## CLI") :]
    block = section[section.index("```\n") + 4 :]
    block = block[: block.index("```")]
    paths = sorted(_real(), key=len, reverse=True)
    documented: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        for part in line.split(" | "):
            text = part.strip()
            start = next((p for p in paths if text == p or text.startswith(p + " ")), None)
            if start is not None and (part.startswith("  ") or start == "keyrelay" or " | " in line):
                current = start
                documented.setdefault(current, set())
            if current is not None:
                documented[current] |= set(re.findall(r"--[a-z0-9-]+", text))
    return documented


def test_every_command_and_option_is_in_the_readme_synopsis() -> None:
    real, documented = _real(), _synopsis()
    assert set(real) == set(documented), f"commands: real {sorted(real)}, documented {sorted(documented)}"
    for path, options in real.items():
        assert options == documented[path], (
            f"keyrelay {path}: options missing from the README {sorted(options - documented[path])}, "
            f"documented but absent {sorted(documented[path] - options)}"
        )
