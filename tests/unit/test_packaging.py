"""Installing keyrelay prints no deprecation warning from the build backend.

`pip install -e .` once printed setuptools' "`project.license` as a TOML table is deprecated" box
twice. The build runs here with this environment's setuptools (no download: --no-build-isolation)
and --dry-run, which still prepares the editable metadata, where the backend reads pyproject.toml.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def test_editable_install_prints_no_warning() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--dry-run", "-e", str(REPO)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    output = (result.stdout + result.stderr).lower()
    assert "deprecat" not in output, result.stderr
    assert "backendwarning" not in output, result.stderr
    assert "would install keyrelay" in output


def test_build_backend_accepts_the_spdx_licence() -> None:
    # The string form of project.license (an SPDX expression) needs setuptools 77 (PEP 639); an isolated
    # build (a user's `pip install -e .`) installs what build-system.requires allows.
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "Apache-2.0"
    (setuptools,) = [Requirement(r) for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    assert not setuptools.specifier.contains("76.99")
