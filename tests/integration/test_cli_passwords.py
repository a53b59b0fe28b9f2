"""``keyrelay admin create-account --password-stdin`` and ``admin set-password``, run as subprocesses."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from keyrelay.config import Settings
from keyrelay.errors import GatewayError
from keyrelay.runtime import open_runtime

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("KEYRELAY_")}


async def run(database_url: str, *args: str, stdin: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "keyrelay",
        "--database-url",
        database_url,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=CLEAN_ENV,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def sign_in(database_url: str, email: str, password: str) -> tuple[bool, bool]:
    """(whether the password opens a session, whether the account is an admin) through the service."""
    rt = await open_runtime(Settings(database_url=database_url))
    try:
        try:
            _, login = await rt.signin.sign_in(email=email, password=password, ip="127.0.0.1", user_agent=None)
        except GatewayError:
            return False, False
        assert login.email_verified_at is not None  # an operator's account counts as verified
        return True, login.is_admin
    finally:
        await rt.close()


async def test_create_account_with_a_password_from_stdin_signs_in(database_url: str, tmp_path: Path) -> None:
    code, out, err = await run(
        database_url, "admin", "create-account", "ops@example.com", "--password-stdin", "--admin",
        stdin="a long enough secret\n", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert "portal password set, admin" in out
    assert "a long enough secret" not in out + err
    assert await sign_in(database_url, "ops@example.com", "a long enough secret") == (True, True)


async def test_set_password_replaces_the_password(database_url: str, tmp_path: Path) -> None:
    code, _, err = await run(database_url, "admin", "create-account", "m@example.com", stdin="", cwd=tmp_path)
    assert code == 0, err
    assert await sign_in(database_url, "m@example.com", "anything at all") == (False, False)  # no password yet
    code, out, err = await run(
        database_url,
        "admin",
        "set-password",
        "m@example.com",
        "--password-stdin",
        stdin="new secret 123\r\n",
        cwd=tmp_path,
    )
    assert code == 0, err
    assert "password set for m@example.com" in out
    assert await sign_in(database_url, "m@example.com", "new secret 123") == (True, False)


@pytest.mark.parametrize(
    ("stdin", "message"),
    [("", "standard input held no password"), ("short\n", "at least 10 characters")],
)
async def test_a_missing_or_short_password_is_refused_before_anything_changes(
    database_url: str, tmp_path: Path, stdin: str, message: str
) -> None:
    code, _, err = await run(
        database_url, "admin", "create-account", "x@example.com", "--password-stdin", stdin=stdin, cwd=tmp_path
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --password-stdin: ") and message in lines[0], err
    rt = await open_runtime(Settings(database_url=database_url))
    try:
        assert await rt.accounts.get_by_email(email="x@example.com") is None
    finally:
        await rt.close()


async def test_set_password_for_an_unknown_email_fails_with_one_line(database_url: str, tmp_path: Path) -> None:
    code, _, err = await run(
        database_url,
        "admin",
        "set-password",
        "nobody@example.com",
        "--password-stdin",
        stdin="whatever 12345",
        cwd=tmp_path,
    )
    assert code == 1
    assert err.strip().startswith("error: no account with email 'nobody@example.com'")
    assert "Traceback" not in err
