"""SIGTERM is a clean stop: every usage record still in memory is written before the process exits."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy import func, select

from keyrelay.config import Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import open_runtime
from keyrelay.services.inputs import AccountCreate
from keyrelay.store.schema import usage_records
from keyrelay.testing.mock_upstream import MockUpstream
from tests.conftest import TEST_ACTOR
from tests.serving import wait_until_serving


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_flushes_every_usage_record(tmp_path: Path, mock: MockUpstream) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'stop.db'}"
    runtime = await open_runtime(Settings(database_url=database_url))
    account = await runtime.account_service.create_account(AccountCreate(email="stop@example.com"), actor=TEST_ACTOR)
    key = (
        await runtime.key_service.create(account=account, spec=KeyCreate(name="stopper"), actor=TEST_ACTOR)
    ).plaintext
    await runtime.close()
    config = tmp_path / "keyrelay.yaml"
    config.write_text(
        f"providers:\n  - name: mock\n    base_url: {mock.base_url}\n    models:\n      - id: gpt-4o-mini\n"
        "        input_per_mtok: 0.15\n        output_per_mtok: 0.60\n"
    )
    port = _free_port()
    env = {
        **os.environ,
        "KEYRELAY_DATABASE_URL": database_url,
        "KEYRELAY_CONFIG": str(config),
        "KEYRELAY_LOG_LEVEL": "warning",
        # Longer than the test: only the shutdown flush can write the records.
        "KEYRELAY_USAGE_FLUSH_INTERVAL_S": "3600",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyrelay", "serve", "--port", str(port)], env=env, stderr=subprocess.PIPE
    )
    try:
        await wait_until_serving(f"http://127.0.0.1:{port}/healthz", exited=lambda: proc.poll() is not None)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            headers = {"Authorization": f"Bearer {key}"}
            sends = [client.post("/v1/chat/completions", json=body, headers=headers) for _ in range(40)]
            assert all(r.status_code == 200 for r in await asyncio.gather(*sends))
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown, so the exit status is -SIGTERM.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        async with runtime.engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(usage_records))).scalar_one()
        record = await runtime.keys.get(
            key_hash=(await runtime.keys.list_all(account_id=None, key_type="regular", limit=1))[0].hash
        )
    finally:
        await runtime.close()
    assert count == 40
    assert record is not None and record.usage_micros > 0 and record.last_used_at is not None
