"""A key's plaintext never reaches the database: scan the raw SQLite files, or every PostgreSQL row as text."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from keyrelay.config import Settings
from keyrelay.keys.format import KeyType
from keyrelay.keys.spec import KeyCreate
from keyrelay.services.inputs import AccountCreate
from keyrelay.testing.server import RunningServer, running_server
from tests.conftest import TEST_ACTOR

PREFIX_LEN = len("kr_live_")


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def needles(plaintext: str) -> list[bytes]:
    """Every form in which (part of) a secret could leak into storage."""
    secret = plaintext[PREFIX_LEN:]
    raw = base64.urlsafe_b64decode(secret + "=")
    out = [plaintext.encode(), secret.encode(), raw, raw.hex().encode(), base64.b64encode(raw)]
    # Any 8 consecutive characters of the secret (the display form keeps only the last 4).
    out += [secret[i : i + 8].encode() for i in range(len(secret) - 7)]
    return out


def assert_absent(blob: bytes, plaintexts: list[str], where: str) -> None:
    for plaintext in plaintexts:
        for needle in needles(plaintext):
            assert needle not in blob, f"part of key {plaintext[:12]}… found in {where}"


async def _issue_keys(srv: RunningServer) -> tuple[list[str], list[tuple[str, str]]]:
    """Create management and API keys in every way there is; returns (all plaintexts, (hash, live plaintext))."""
    rt = srv.runtime
    admin = await rt.account_service.create_account(AccountCreate(email="admin@example.com"), actor=TEST_ACTOR)
    mgmt = await rt.key_service.create(
        account=admin, spec=KeyCreate(name="mgmt"), key_type=KeyType.MANAGEMENT, is_admin=True, actor=TEST_ACTOR
    )
    rotated_mgmt = await rt.key_service.rotate(record=mgmt.record, grace_seconds=300, actor=TEST_ACTOR)
    plaintexts = [mgmt.plaintext, rotated_mgmt.plaintext]
    live: list[tuple[str, str]] = [(mgmt.record.hash, rotated_mgmt.plaintext)]
    headers = {"Authorization": f"Bearer {rotated_mgmt.plaintext}"}
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as client:
        body = {"name": "full", "limit": 5, "limit_reset": "daily", "ip_allowlist": ["10.0.0.0/8"], "region": "eu"}
        r = await client.post("/api/v1/keys", json=body, headers=headers)
        assert r.status_code == 201, r.text
        api_key, key_hash = r.json()["key"], r.json()["data"]["hash"]
        r = await client.post(f"/api/v1/keys/{key_hash}/rotate", json={"grace_seconds": 600}, headers=headers)
        assert r.status_code == 200, r.text
        rotated = r.json()["key"]
        r = await client.post(f"/api/v1/keys/{key_hash}/rotate", json={"grace_seconds": 0}, headers=headers)
        assert r.status_code == 200, r.text
        final = r.json()["key"]
        plaintexts += [api_key, rotated, final]
        live.append((key_hash, final))

        r = await client.post("/api/v1/keys", json={"name": "gone"}, headers=headers)
        assert r.status_code == 201, r.text
        plaintexts.append(r.json()["key"])
        r = await client.delete(f"/api/v1/keys/{r.json()['data']['hash']}", headers=headers)
        assert r.status_code == 200, r.text
        for i in range(3):
            r = await client.post("/api/v1/keys", json={"name": f"k{i}"}, headers=headers)
            plaintexts.append(r.json()["key"])
            live.append((r.json()["data"]["hash"], r.json()["key"]))
    return plaintexts, live


async def _check_stored_hashes(srv: RunningServer, plaintexts: list[str], live: list[tuple[str, str]]) -> None:
    async with srv.runtime.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT hash, secret_hash, display, deleted_at FROM keys"))).all()
    by_hash = {row.hash: row for row in rows}
    assert len(rows) == 6  # management key, "full", "gone" (soft-deleted), k0..k2
    for key_hash, plaintext in live:
        row = by_hash[key_hash]
        assert row.secret_hash == sha256(plaintext)
        assert row.display == f"{plaintext[:PREFIX_LEN]}...{plaintext[-4:]}"
        assert row.deleted_at is None
    # A hash that is stored belongs to some key we issued: nothing else was hashed.
    issued = {sha256(p) for p in plaintexts}
    assert {row.secret_hash for row in rows} <= issued
    assert {row.hash for row in rows} <= issued


def _sqlite_files(database_url: str) -> list[Path]:
    path = Path(str(make_url(database_url).database))
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


async def _postgres_dump(database_url: str) -> bytes:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        names = {t["table_name"] for t in tables}
        assert {"keys", "accounts", "groups", "usage_records", "alembic_version"} <= names
        parts: list[str] = []
        for t in tables:
            ident = f'"{t["table_schema"]}"."{t["table_name"]}"'
            rows = await conn.fetch(f"SELECT t::text AS row FROM {ident} AS t")
            parts.extend(row["row"] for row in rows)
    finally:
        await conn.close()
    return "\n".join(parts).encode()


async def test_plaintext_never_stored(settings: Settings, database_url: str) -> None:
    async with running_server(settings) as srv:
        plaintexts, live = await _issue_keys(srv)
        assert len(set(plaintexts)) == len(plaintexts) == 9
        await _check_stored_hashes(srv, plaintexts, live)
        if database_url.startswith("sqlite"):
            files = _sqlite_files(database_url)
            blob = b"".join(p.read_bytes() for p in files)
            assert_absent(blob, plaintexts, f"SQLite files {[p.name for p in files]} (server running)")
            assert sha256(live[-1][1]).encode() in blob  # the scan does see the stored rows
        else:
            dump = await _postgres_dump(database_url)
            assert_absent(dump, plaintexts, "PostgreSQL rows")
            for key_hash, plaintext in live:
                assert sha256(plaintext).encode() in dump and key_hash.encode() in dump
    if database_url.startswith("sqlite"):
        # After shutdown (WAL checkpointed into the main file) too.
        files = _sqlite_files(database_url)
        blob = b"".join(p.read_bytes() for p in files)
        assert_absent(blob, plaintexts, f"SQLite files {[p.name for p in files]} (after shutdown)")
        assert sha256(live[-1][1]).encode() in blob
