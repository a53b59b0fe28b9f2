"""SIGKILL under load loses no usage record and counts none twice (the embedded shape: the local usage journal).

A gateway serving a stream of plain and streamed requests is killed with SIGKILL; a new one started on the same
database replays the dead process's journal. Every request whose response the client received whole has exactly
one record, and the records' cost is exactly what the key, its group and its account were charged.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from keyrelay.config import Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import open_runtime
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.store.schema import spend_periods, usage_records
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import running_server
from tests.conftest import TEST_ACTOR, make_api_key
from tests.integration.gateway.conftest import provider_for
from tests.serving import wait_until_serving

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


@pytest.mark.parametrize("flush_interval", ["3600", "0.02"], ids=["nothing-flushed", "flushing-while-killed"])
async def test_sigkill_under_load_loses_and_doubles_no_usage_record(
    tmp_path: Path, mock: MockUpstream, flush_interval: str
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'killed.db'}"
    key = await _setup(database_url)
    config = tmp_path / "keyrelay.yaml"
    config.write_text(
        f"providers:\n  - name: mock\n    base_url: {mock.base_url}\n    models:\n      - id: gpt-4o-mini\n"
        "        input_per_mtok: 0.15\n        output_per_mtok: 0.60\n"
    )
    env = {
        **os.environ,
        "KEYRELAY_DATABASE_URL": database_url,
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

    # A new process on the same database replays the journal at start-up, then stops cleanly.
    port = _free_port()
    proc = _serve(env, port, log)
    try:
        await wait_until_serving(f"http://127.0.0.1:{port}/healthz", exited=lambda: proc.poll() is not None)
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
    assert not list((tmp_path / "keyrelay-usage-journal").glob("*/*")), "the replayed journal was not removed"
    assert "replayed the usage journal" in log.read_text() or flush_interval != "3600"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_record_is_journaled_before_the_last_bytes_are_sent(
    tmp_path: Path, mock: MockUpstream, stream: bool
) -> None:
    """The ordering the test above relies on, checked exactly: at the last body message the record is queued."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'order.db'}",
        usage_flush_interval_s=3600,
        log_level="warning",
        providers=(provider_for(mock),),
    )
    async with running_server(settings) as server:
        key = await make_api_key(server, "order@example.com")
        writer = server.app.writer
        assert writer is not None
        journal = writer._journal
        assert journal is not None
        seen: list[tuple[bool, int]] = []  # (more_body, records in the journal's files) at each body message

        def journaled() -> int:
            return sum(len(p.read_bytes().splitlines()) for p in journal.path.glob("*.jsonl"))

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                seen.append((message.get("more_body", False), journaled()))

        body = orjson.dumps({**BODY, "stream": stream})
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
    assert seen[-1] == (False, 1)  # the last bytes went out with the record already written to the journal
    assert all(queued == 0 for more, queued in seen[:-1])
