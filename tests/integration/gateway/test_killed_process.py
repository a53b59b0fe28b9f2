"""SIGKILL under load loses no usage record and counts none twice, in both shapes.

A gateway serving a stream of plain and streamed requests is killed with SIGKILL; a new one started on the same
database (and Redis) writes what the dead one left: the embedded shape replays its local usage journal, the
scaled-out shape (PostgreSQL + Redis) drains the Redis usage stream the settlements wrote the records to. Every
request whose response the client received whole has exactly one record, and the records' cost is exactly what
the key, its group and its account were charged, in the store and, with Redis, in the Redis spend counters.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import open_runtime
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.store.schema import spend_periods, usage_records
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.poll import poll_until
from keyrelay.testing.server import running_server
from tests.conftest import TEST_ACTOR, fresh_postgres, make_api_key
from tests.integration.gateway.conftest import provider_for
from tests.serving import wait_until_serving
from tests.unit.limits.conftest import REDIS_URL, drop_prefix, redis_client_or_skip

CLIENTS = 12
KILL_AFTER = 150  # whole responses before the kill
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _setup(database_url: str) -> str:
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        group = await runtime.account_service.create_group(GroupCreate(name="team", quota=100), actor=TEST_ACTOR)
        account = await runtime.account_service.create_account(
            AccountCreate(email="killed@example.com", group=group.name, balance=100), actor=TEST_ACTOR
        )
        spec = KeyCreate.model_validate({"name": "killed", "limit": 50, "limit_reset": "daily"})
        return (await runtime.key_service.create(account=account, spec=spec, actor=TEST_ACTOR)).plaintext
    finally:
        await runtime.close()


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "keyrelay", "serve", "--port", str(port)], env=env, stdout=out, stderr=out
        )


async def _load(base_url: str, key: str, done: list[str], enough: asyncio.Event) -> None:
    """Send requests until the server dies; ``done`` gets the request id of every response received whole."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        for n in range(100_000):
            try:
                if n % 2:
                    async with client.stream(
                        "POST", "/v1/chat/completions", json={**BODY, "stream": True}, headers=headers
                    ) as r:
                        body = await r.aread()  # the whole chunked body: its terminating chunk included
                        whole = r.status_code == 200 and body.rstrip().endswith(b"data: [DONE]")
                else:
                    r = await client.post("/v1/chat/completions", json=BODY, headers=headers)
                    whole = r.status_code == 200 and r.json()["usage"]["total_tokens"] > 0
            except (httpx.TransportError, ValueError):
                return  # the server was killed
            assert whole, r.status_code
            done.append(r.headers["x-request-id"])
            if len(done) >= KILL_AFTER:
                enough.set()


@pytest.fixture(params=["embedded", pytest.param("redis", marks=[pytest.mark.redis, pytest.mark.postgres])])
async def shape(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """The deployment's environment: an SQLite file alone, or PostgreSQL + Redis (a fresh database and prefix)."""
    if request.param == "embedded":
        yield {"KEYRELAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'killed.db'}"}
        return
    client = await redis_client_or_skip()
    prefix = f"kr-test-{secrets.token_hex(6)}"
    try:
        async with fresh_postgres() as url:
            yield {"KEYRELAY_DATABASE_URL": url, "KEYRELAY_REDIS_URL": REDIS_URL, "KEYRELAY_REDIS_PREFIX": prefix}
    finally:
        await drop_prefix(client, prefix)
        await client.aclose()


async def _redis_spent(prefix: str) -> dict[str, int]:
    """The settled spend of every Redis spend counter under ``prefix``: counter name → micro-dollars."""
    client = await redis_client_or_skip()
    try:
        out: dict[str, int] = {}
        async for name in client.scan_iter(match=f"{prefix}:spend:*", count=500):
            if not name.endswith(b":resv"):
                out[name.decode().removeprefix(f"{prefix}:spend:")] = int(await client.hget(name, "spent") or 0)
        return out
    finally:
        await client.aclose()


async def _stream_length(prefix: str) -> int:
    client = await redis_client_or_skip()
    try:
        return int(await client.xlen(f"{prefix}:usage"))
    finally:
        await client.aclose()


@pytest.mark.parametrize("flush_interval", ["3600", "0.02"], ids=["nothing-flushed", "flushing-while-killed"])
async def test_sigkill_under_load_loses_and_doubles_no_usage_record(
    tmp_path: Path, mock: MockUpstream, flush_interval: str, shape: dict[str, str]
) -> None:
    database_url = shape["KEYRELAY_DATABASE_URL"]
    prefix = shape.get("KEYRELAY_REDIS_PREFIX")
    key = await _setup(database_url)
    config = tmp_path / "keyrelay.yaml"
    config.write_text(
        f"providers:\n  - name: mock\n    base_url: {mock.base_url}\n    models:\n      - id: gpt-4o-mini\n"
        "        input_per_mtok: 0.15\n        output_per_mtok: 0.60\n"
    )
    env = {
        **os.environ,
        **shape,
        "KEYRELAY_USAGE_JOURNAL_DIR": str(tmp_path / "journal"),
        "KEYRELAY_CONFIG": str(config),
        "KEYRELAY_LOG_LEVEL": "warning",
        "KEYRELAY_USAGE_FLUSH_INTERVAL_S": flush_interval,
    }
    log = tmp_path / "serve.log"
    port = _free_port()
    proc = _serve(env, port, log)
    done: list[str] = []
    try:
        await wait_until_serving(f"http://127.0.0.1:{port}/healthz", exited=lambda: proc.poll() is not None)
        enough = asyncio.Event()
        clients = [asyncio.ensure_future(_load(f"http://127.0.0.1:{port}", key, done, enough)) for _ in range(CLIENTS)]
        await asyncio.wait_for(enough.wait(), timeout=60)
        proc.send_signal(signal.SIGKILL)  # with requests in flight
        proc.wait(timeout=20)
        await asyncio.gather(*clients)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(done) >= KILL_AFTER

    # A new process on the same database replays the journal at start-up (and drains the Redis usage stream once
    # the dead process's drain lock has expired), then stops cleanly.
    port = _free_port()
    proc = _serve(env, port, log)
    try:
        await wait_until_serving(f"http://127.0.0.1:{port}/healthz", exited=lambda: proc.poll() is not None)
        if prefix is not None:
            await poll_until(lambda: _stream_length(prefix), lambda n: n == 0, what="the usage stream drained")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        async with runtime.engine.connect() as conn:
            ids = (await conn.execute(select(usage_records.c.request_id))).scalars().all()
            total = (await conn.execute(select(func.sum(usage_records.c.cost_micros)))).scalar_one()
            periods = dict(
                (
                    await conn.execute(
                        select(spend_periods.c.scope, func.sum(spend_periods.c.usage_micros)).group_by(
                            spend_periods.c.scope
                        )
                    )
                ).all()
            )
        key_row = (await runtime.keys.list_all(account_id=None, key_type="regular", limit=1))[0]
        account = await runtime.accounts.get_by_email(email="killed@example.com")
        group = await runtime.groups.get_by_name(name="team")
    finally:
        await runtime.close()
    assert len(ids) == len(set(ids))  # none twice
    missing = set(done) - set(ids)
    assert not missing, f"{len(missing)} of {len(done)} whole responses have no usage record"
    assert account is not None and group is not None
    assert total > 0
    assert key_row.usage_micros == account.spent_micros == group.usage_micros == total
    assert periods == {"key": total}  # the key's daily period; the group's quota never resets
    assert not list((tmp_path / "journal").glob("*/*")), "the replayed journal was not removed"
    if prefix is None:
        assert "replayed the usage journal" in log.read_text() or flush_interval != "3600"
    else:
        assert "replayed the usage journal" not in log.read_text()  # the stream had every record
        # Every record's charge is in Redis' counters too: the key's day, the account's and the group's lifetime.
        spent = await _redis_spent(prefix)
        day = next(name for name in spent if name.startswith("key:") and ":daily:" in name)
        assert spent[day] == total
        assert spent[f"account:{account.id}:life"] == spent[f"group:{group.id}:life"] == total


def _with_linger(provider: ProviderConfig) -> ProviderConfig:
    """The provider with the mock's ``linger`` model too (its body ends in a read after its last event)."""
    linger = ModelConfig(id="gpt-4o-mini-linger", input_per_mtok="0.15", output_per_mtok="0.60")
    return provider.model_copy(update={"models": (*provider.models, linger)})


async def _kept(client: Redis | None, prefix: str, journal: Path) -> tuple[int, int]:
    """(records kept, micro-dollars charged to the key): in the journal's files, or in Redis' stream and counters."""
    if client is None:
        return sum(len(p.read_bytes().splitlines()) for p in journal.glob("*.jsonl")), 0
    spent = 0
    async for name in client.scan_iter(match=f"{prefix}:spend:key:*", count=100):
        if not name.endswith(b":resv"):
            spent += int(await client.hget(name, "spent") or 0)
    return int(await client.xlen(f"{prefix}:usage")), spent


@pytest.mark.parametrize(
    ("stream", "model"),
    [(False, "gpt-4o-mini"), (True, "gpt-4o-mini"), (True, "gpt-4o-mini-linger")],
    ids=["plain", "stream", "stream-ending-in-a-read-of-its-own"],
)
@pytest.mark.parametrize("limits", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_the_record_is_durable_before_the_last_bytes_are_sent(
    tmp_path: Path, mock: MockUpstream, stream: bool, model: str, limits: str
) -> None:
    """The ordering the test above relies on, checked exactly: at the last body message the record is kept.

    In the embedded shape it is in the local journal's file; with Redis, in the usage stream, and its charge in
    the key's spend counter. A stream whose upstream ends its body in a read after ``data: [DONE]`` (``linger``)
    has its record before ``[DONE]`` is sent: a client may stop reading there.
    """
    client = await redis_client_or_skip() if limits == "redis" else None
    prefix = f"kr-test-{secrets.token_hex(6)}"
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'order.db'}",
        usage_flush_interval_s=3600,
        log_level="warning",
        providers=(_with_linger(provider_for(mock)),),
        redis_url=REDIS_URL if client is not None else None,
        redis_prefix=prefix,
    )
    seen: list[tuple[bool, int, int]] = []  # (more_body, records kept, micro-dollars charged) at each body message
    done_at: list[int] = []  # records kept when the body message with data: [DONE] was sent
    try:
        async with running_server(settings) as server:
            key = await make_api_key(server, "order@example.com", limit=1, limit_reset="daily")
            writer = server.app.writer
            assert writer is not None
            journal = writer._journal
            assert journal is not None

            async def kept() -> tuple[int, int]:
                return await _kept(client, prefix, journal.path)

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.body":
                    seen.append((message.get("more_body", False), *(await kept())))
                    if b"data: [DONE]" in message["body"]:
                        done_at.append(seen[-1][1])

            body = orjson.dumps({**BODY, "model": model, "stream": stream})
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await asyncio.Event().wait()  # no disconnect
                raise AssertionError

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/v1/chat/completions",
                "query_string": b"",
                "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")],
                "client": ("127.0.0.1", 5000),
            }
            await server.app(scope, receive, send)
    finally:
        if client is not None:
            await drop_prefix(client, prefix)
            await client.aclose()
    more, records, charged = seen[-1]
    assert (more, records) == (False, 1)  # the last bytes went out with the record already kept
    assert done_at == ([1] if stream else [])  # and so did data: [DONE], wherever it was
    if model == "gpt-4o-mini":
        assert all(queued == 0 for _, queued, _ in seen[:-1])
    if limits == "redis":
        assert charged > 0 and charged == seen[-1][2]  # and charged, in the same step
        assert all(c == 0 for _, n, c in seen if n == 0)
