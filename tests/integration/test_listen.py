"""`keyrelay serve` and `keyrelay demo` on an address they cannot listen on, run as a user runs them.

The port is held open by the test, so it is busy for certain. Each command must answer with its own
one-line error and exit code 3 (README, CLI) before it starts anything: no uvicorn log line, no
traceback, and no database created.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("KEYRELAY_") and k != "PORT"}
EXIT_CANNOT_START = 3


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port with a listening socket on it for the duration of the test."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyrelay", "--database-url", f"sqlite+aiosqlite:///{cwd / 'kr.db'}", *args],
        cwd=cwd,
        env={**CLEAN_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_cannot_listen(result: subprocess.CompletedProcess[str], port: int, cwd: Path) -> None:
    assert result.returncode == EXIT_CANNOT_START, result
    assert result.stdout == ""
    assert result.stderr == (
        f"error: cannot listen on 127.0.0.1:{port}: address already in use"
        " (set --port or KEYRELAY_PORT to a free port)\n"
    ), result.stderr
    assert not (cwd / "kr.db").exists()  # refused before migrations or anything else ran


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["serve"], {}),
        (["demo"], {}),
        (["serve", "--workers", "2"], {"KEYRELAY_REDIS_URL": "redis://127.0.0.1:6379/0"}),
    ],
    ids=["serve", "demo", "serve-workers"],
)
def test_busy_port_flag(command: list[str], env: dict[str, str], busy_port: int, tmp_path: Path) -> None:
    assert_cannot_listen(run([*command, "--port", str(busy_port)], tmp_path, env), busy_port, tmp_path)


@pytest.mark.parametrize("command", [["serve"], ["demo"]], ids=["serve", "demo"])
def test_busy_port_from_keyrelay_port(command: list[str], busy_port: int, tmp_path: Path) -> None:
    # KEYRELAY_PORT is honoured by demo as by serve (demo used to listen on 8080 whatever it said).
    assert_cannot_listen(run(command, tmp_path, {"KEYRELAY_PORT": str(busy_port)}), busy_port, tmp_path)


def test_flag_wins_over_keyrelay_port(busy_port: int, tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        other_port = int(other.getsockname()[1])
        result = run(["demo", "--port", str(busy_port)], tmp_path, {"KEYRELAY_PORT": str(other_port)})
    assert_cannot_listen(result, busy_port, tmp_path)


def test_make_demo_honours_port(busy_port: int, tmp_path: Path) -> None:
    # `PORT=... make demo`, as the README's quickstart says, with this interpreter's environment as the
    # venv (-o: the installed stamp counts as up to date, so make installs nothing).
    venv = Path(sys.prefix)
    result = subprocess.run(
        ["make", "-C", str(REPO), "-o", f"{venv}/.installed-dev", f"VENV={venv}", "demo"],
        cwd=tmp_path,
        env={**CLEAN_ENV, "PORT": str(busy_port), "KEYRELAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'kr.db'}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0, result
    assert f"keyrelay demo --port {busy_port}" in result.stdout, result.stdout
    assert "error: cannot listen on 127.0.0.1:" + str(busy_port) + ": address already in use" in result.stderr
    assert "Traceback" not in result.stderr and "uvicorn" not in result.stderr
    assert not (tmp_path / "kr.db").exists()


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_failed_start_up_is_exit_3_without_traceback(command: str, tmp_path: Path) -> None:
    # The database refuses connections: the application's start-up fails after the port was bound.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keyrelay",
            "--database-url",
            "postgresql://kr:pw@127.0.0.1:1/kr",
            command,
            "--port",
            "0",
        ],
        cwd=tmp_path,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == EXIT_CANNOT_START, result
    assert "Traceback" not in result.stderr, result.stderr
    assert "start-up failed" in result.stderr
