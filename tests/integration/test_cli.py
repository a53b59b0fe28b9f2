"""The real ``keyrelay`` command, run as a subprocess against the per-test database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from keyrelay.config import Settings
from keyrelay.keys.format import KeyType
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import open_runtime
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import TEST_ACTOR

KEY_SHAPE = re.compile(r"^kr_live_[A-Za-z0-9_-]{43}$")
MGMT_SHAPE = re.compile(r"^kr_mgmt_[A-Za-z0-9_-]{43}$")
# The subprocess must see only the flags we pass, not the developer's KEYRELAY_* environment.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("KEYRELAY_")}


@dataclass
class Result:
    code: int
    out: str
    err: str

    def one_line_error(self) -> str:
        """The single ``error: …`` line of a failed command, asserting there is no traceback."""
        assert "Traceback" not in self.err, self.err
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), self.err
        return lines[0]


async def cli(database_url: str, *args: str, cwd: Path) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "keyrelay",
        "--database-url",
        database_url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=CLEAN_ENV,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def ok(result: Result) -> str:
    assert result.code == 0, result
    assert "Traceback" not in result.err
    return result.out.strip()


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def test_admin_bootstrap(database_url: str, settings: Settings, tmp_path: Path) -> None:
    assert "up to date" in ok(await cli(database_url, "migrate", cwd=tmp_path))
    assert (
        ok(
            await cli(
                database_url,
                "admin",
                "create-group",
                "team",
                "--price-multiplier",
                "1.5",
                "--allowed-models",
                "gpt-4o, gpt-4o-mini",
                cwd=tmp_path,
            )
        )
        == "created group team"
    )
    out = ok(
        await cli(
            database_url,
            "admin",
            "create-account",
            "alice@example.com",
            "--group",
            "team",
            "--balance",
            "10",
            cwd=tmp_path,
        )
    )
    assert re.fullmatch(r"created account \d+ alice@example\.com \(balance \$10\.000000\)", out), out

    dup, mgmt = await asyncio.gather(
        cli(database_url, "admin", "create-account", "ALICE@example.com", cwd=tmp_path),
        cli(database_url, "admin", "create-management-key", "--account", "alice@example.com", "--admin", cwd=tmp_path),
    )
    assert dup.code == 1 and dup.out == ""
    assert "already" in dup.one_line_error() or "exists" in dup.one_line_error()
    key = ok(mgmt)
    assert MGMT_SHAPE.match(key), mgmt.out  # stdout is exactly the key
    assert "not shown again" in mgmt.err

    # The printed key works against a gateway on the same database, with admin rights.
    async with running_server(settings) as srv:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as client:
            headers = {"Authorization": f"Bearer {key}"}
            r = await client.get("/api/v1/accounts", headers=headers)
            assert r.status_code == 200, r.text
            (alice,) = r.json()["data"]
            assert (alice["email"], alice["group"], alice["balance"]) == ("alice@example.com", "team", 10)
            r = await client.get("/api/v1/groups", headers=headers)
            (team,) = r.json()["data"]
            assert team["price_multiplier"] == 1.5 and team["allowed_models"] == ["gpt-4o", "gpt-4o-mini"]
            r = await client.post("/api/v1/keys", json={"name": "from-api"}, headers=headers)
            assert r.status_code == 201, r.text
        record = await srv.runtime.keys.get(key_hash=sha256(key))
        assert record is not None and record.key_type == "management" and record.is_admin


async def _admin_key(srv: RunningServer) -> str:
    account = await srv.runtime.accounts.get_by_email(email="dev@example.com")
    assert account is not None
    issued = await srv.runtime.key_service.create(
        account=account, spec=KeyCreate(name="admin"), key_type=KeyType.MANAGEMENT, is_admin=True, actor=TEST_ACTOR
    )
    return issued.plaintext


async def test_key_lifecycle(database_url: str, settings: Settings, tmp_path: Path) -> None:
    assert ok(await cli(database_url, "admin", "create-account", "dev@example.com", cwd=tmp_path)).startswith(
        "created account"
    )
    create_args = ["keys", "create", "--account", "dev@example.com", "--name", "ci"]
    made, bad_cidr, bad_limit = await asyncio.gather(
        cli(
            database_url,
            *create_args,
            "--limit",
            "5",
            "--limit-reset",
            "daily",
            "--expires-in-days",
            "7",
            "--allowed-models",
            "gpt-4o",
            "--allowed-providers",
            "openai",
            "--ip-allowlist",
            "10.0.0.1,2001:db8::/32",
            "--ip-denylist",
            "10.0.0.9",
            "--rpm",
            "30",
            cwd=tmp_path,
        ),
        cli(database_url, *create_args, "--ip-allowlist", "10.0.0.1,10.0.0.300", cwd=tmp_path),
        cli(database_url, *create_args, "--limit", "-1", cwd=tmp_path),
    )
    key = ok(made)
    assert KEY_SHAPE.match(key), made.out
    key_hash = sha256(key)
    assert f"hash {key_hash}" in made.err
    assert bad_cidr.code == 2 and bad_cidr.out == ""
    line = bad_cidr.one_line_error()
    assert "ip_allowlist" in line and "10.0.0.300" in line
    assert bad_limit.code == 2 and "limit" in bad_limit.one_line_error()

    listing = ok(await cli(database_url, "keys", "list", cwd=tmp_path)).splitlines()
    assert len(listing) == 1  # the refused creates made nothing
    assert listing[0].split()[:4] == [key_hash, f"kr_live_...{key[-4:]}", "ci", "active"]
    assert "limit=$5/daily" in listing[0]

    async with running_server(settings) as srv:
        admin = await _admin_key(srv)
        cache = srv.runtime.cache
        # The gateway learns of the CLI's writes from its store poll. It runs every 0.2 s by itself; each check
        # below runs one explicitly first, so it sees the state right after a poll on every run.
        poll = srv.runtime.cache_sync.poll_once
        async with httpx.AsyncClient(
            base_url=srv.base_url, timeout=10, headers={"Authorization": f"Bearer {admin}"}
        ) as client:

            async def view() -> httpx.Response:
                return await client.get(f"/api/v1/keys/{key_hash}")

            data = (await view()).json()["data"]
            assert (data["name"], data["limit"], data["limit_reset"]) == ("ci", 5, "daily")
            assert data["rate_limits"]["rpm"] == 30
            assert data["allowed_models"] == ["gpt-4o"] and data["allowed_providers"] == ["openai"]
            assert data["ip_allowlist"] == ["10.0.0.1/32", "2001:db8::/32"] and data["ip_denylist"] == ["10.0.0.9/32"]
            assert data["expires_at"] is not None

            principal = await cache.get(key_hash)  # the gateway now has the key cached
            assert principal is not None and not principal.key.disabled

            assert ok(await cli(database_url, "keys", "disable", key_hash, cwd=tmp_path)) == f"disabled {key_hash}"
            assert (await view()).json()["data"]["disabled"] is True

            async def cached_disabled() -> bool:
                p = await cache.get(key_hash)
                return p is not None and p.key.disabled

            await poll()
            assert await cached_disabled()

            assert ok(await cli(database_url, "keys", "enable", key_hash, cwd=tmp_path)) == f"enabled {key_hash}"
            assert (await view()).json()["data"]["disabled"] is False

            rotated = await cli(database_url, "keys", "rotate", key_hash, "--grace-seconds", "60", cwd=tmp_path)
            new_key = ok(rotated)
            assert KEY_SHAPE.match(new_key) and new_key != key
            data = (await view()).json()["data"]
            assert data["hash"] == key_hash and data["name"] == "ci" and data["limit"] == 5
            assert data["label"] == f"kr_live_...{new_key[-4:]}" and data["rotation_grace_until"] is not None

            async def both_work() -> bool:
                old, new = await cache.get(key_hash), await cache.get(sha256(new_key))
                return old is not None and old.via_previous_secret and new is not None

            await poll()
            assert await both_work()

            assert ok(await cli(database_url, "keys", "revoke", key_hash, cwd=tmp_path)) == f"revoked {key_hash}"
            assert (await view()).status_code == 404

            async def gone() -> bool:
                return await cache.get(sha256(new_key)) is None and await cache.get(key_hash) is None

            await poll()
            assert await gone()

    after, again = await asyncio.gather(
        cli(database_url, "keys", "list", cwd=tmp_path),
        cli(database_url, "keys", "rotate", key_hash, cwd=tmp_path),
    )
    assert ok(after) == "no keys"
    assert again.code == 1 and "no API key" in again.one_line_error()


async def test_unusable_database_is_a_friendly_error(tmp_path: Path) -> None:
    missing_dir, refused, unsupported, garbage = await asyncio.gather(
        cli(f"sqlite+aiosqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", "migrate", cwd=tmp_path),
        cli("postgresql://kr:s3cret-pw@127.0.0.1:1/keyrelay", "keys", "list", cwd=tmp_path),
        cli("mysql://kr@127.0.0.1/keyrelay", "migrate", cwd=tmp_path),
        cli("not a url", "migrate", cwd=tmp_path),
    )
    assert missing_dir.code == 1 and "cannot reach the database" in missing_dir.one_line_error()
    assert refused.code == 1 and "cannot reach the database" in refused.one_line_error()
    assert "s3cret-pw" not in refused.err
    assert unsupported.code == 2 and "mysql" in unsupported.one_line_error()
    assert garbage.code == 2 and "database URL" in garbage.one_line_error()
    assert not (tmp_path / "no").exists()


async def test_keys_create_sets_every_limit_flag(database_url: str, tmp_path: Path) -> None:
    ok(await cli(database_url, "admin", "create-account", "flags@example.com", cwd=tmp_path))
    plaintext = ok(
        await cli(
            database_url,
            "keys", "create", "--account", "flags@example.com", "--name", "flagged",
            "--limit", "2.5", "--limit-reset", "weekly", "--rpm", "5", "--per-5h", "50", "--per-1d", "100",
            "--per-7d", "500", "--tpm", "1000", "--max-concurrent", "2", "--region", "eu",
            cwd=tmp_path,
        )
    )  # fmt: skip
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        record = await runtime.keys.get(key_hash=sha256(plaintext))
    finally:
        await runtime.close()
    assert record is not None
    assert (record.rpm, record.per_5h, record.per_1d, record.per_7d) == (5, 50, 100, 500)
    assert (record.tpm, record.max_concurrent, record.region) == (1000, 2, "eu")
    assert (record.limit_micros, record.limit_reset) == (2_500_000, "weekly")
    bad = await cli(database_url, "keys", "create", "--account", "flags@example.com", "--name", "x", "--tpm", "-1",
                    cwd=tmp_path)  # fmt: skip
    assert bad.code == 2 and "rate_limits.tpm" in bad.one_line_error()


async def test_cli_prints_every_warning_of_the_services(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "keyrelay.yaml"
    config.write_text(
        "providers:\n"
        "  - name: openai\n"
        "    base_url: http://127.0.0.1:9\n"
        "    region: us\n"
        "    models:\n"
        "      - id: gpt-4o\n",
        encoding="utf-8",
    )
    ok(await cli(database_url, "--config", str(config), "admin", "create-account", "w@example.com", cwd=tmp_path))
    create = ["--config", str(config), "keys", "create", "--account", "w@example.com"]
    made = await cli(database_url, *create, "--name", "w", "--region", "eu", "--allowed-models", "gpt-9", cwd=tmp_path)
    assert KEY_SHAPE.match(ok(made)), made.out  # stdout stays exactly the key
    warnings = [line for line in made.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, made.err
    assert any("region" in w and "'eu'" in w for w in warnings), made.err
    assert any("allowed_models" in w and "'gpt-9'" in w for w in warnings), made.err
    clean = await cli(
        database_url, *create, "--name", "c", "--region", "us", "--allowed-models", "gpt-4o", cwd=tmp_path
    )
    assert KEY_SHAPE.match(ok(clean)) and "warning" not in clean.err, clean.err


async def test_create_account_says_what_an_email_looks_like(database_url: str, tmp_path: Path) -> None:
    bad = await cli(database_url, "admin", "create-account", "not-an-email", cwd=tmp_path)
    assert bad.code == 2 and bad.out == ""
    line = bad.one_line_error()
    assert "email" in line and "name@example.com" in line, line
    assert "pattern" not in line and "^" not in line and "\\s" not in line, line  # no raw regex
