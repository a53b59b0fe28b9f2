"""Several gateway processes sharing Redis hold one rate limit and see each other's revocations."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from keyrelay.config import Settings
from keyrelay.keys.format import KeyType
from keyrelay.keys.hashing import key_hash
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import open_runtime
from keyrelay.services.inputs import AccountCreate
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.poll import poll_until
from tests.conftest import TEST_ACTOR
from tests.serving import wait_until_serving
from tests.unit.limits.conftest import REDIS_URL

pytestmark = pytest.mark.redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, mock: MockUpstream) -> Path:
    path = tmp_path / "keyrelay.yaml"
    path.write_text(
        "providers:\n"
        "  - name: mock\n"
        "    kind: openai\n"
        f"    base_url: {mock.base_url}\n"
        "    models:\n"
        "      - id: gpt-4o-mini\n"
        "        input_per_mtok: 0.15\n"
        "        output_per_mtok: 0.60\n"
    )
    return path


@contextmanager
def _gateways(
    env: dict[str, str], ports: list[int], extra: list[str] | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "keyrelay", "serve", "--port", str(port), *(extra or [])],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for port in ports
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


def _shared_env(tmp_path: Path, mock: MockUpstream, database_url: str, redis_prefix: str) -> dict[str, str]:
    """Processes on one database and one Redis; the store poll far longer than a test, so that only Redis can
    explain a change one process sees from another."""
    return {
        "KEYRELAY_DATABASE_URL": database_url,
        "KEYRELAY_REDIS_URL": REDIS_URL,
        "KEYRELAY_REDIS_PREFIX": redis_prefix,
        "KEYRELAY_CONFIG": str(_config(tmp_path, mock)),
        "KEYRELAY_LOG_LEVEL": "warning",
        "KEYRELAY_CACHE_POLL_INTERVAL_S": "3600",
    }


async def _ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    await wait_until_serving(f"http://127.0.0.1:{port}/readyz", exited=lambda: proc.poll() is not None)


async def _setup(database_url: str) -> tuple[str, str, str]:
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        account = await runtime.account_service.create_account(
            AccountCreate(email="multi@example.com"), actor=TEST_ACTOR
        )
        limited = await runtime.key_service.create(
            account=account,
            spec=KeyCreate.model_validate({"name": "rpm50", "rate_limits": {"rpm": 50}}),
            actor=TEST_ACTOR,
        )
        victim = await runtime.key_service.create(account=account, spec=KeyCreate(name="victim"), actor=TEST_ACTOR)
        admin = await runtime.key_service.create(
            account=account, spec=KeyCreate(name="admin"), key_type=KeyType.MANAGEMENT, is_admin=True, actor=TEST_ACTOR
        )
        return limited.plaintext, victim.plaintext, admin.plaintext
    finally:
        await runtime.close()


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def test_two_processes_share_one_rate_limit_and_revocations(
    tmp_path: Path, mock: MockUpstream, redis_prefix: str
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    limited, victim, admin = await _setup(database_url)
    ports = [_free_port(), _free_port()]
    env = _shared_env(tmp_path, mock, database_url, redis_prefix)
    with _gateways(env, ports) as procs:
        for port, proc in zip(ports, procs, strict=True):
            await _ready(port, proc)
        async with httpx.AsyncClient(timeout=20) as client:
            headers = {"Authorization": f"Bearer {limited}"}
            sends = [
                client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, headers=headers)
                for port in ports
                for _ in range(100)
            ]
            statuses = [r.status_code for r in await asyncio.gather(*sends)]
            assert statuses.count(200) == 50 and statuses.count(429) == 150

            # Warm both caches with the victim key, revoke it through process A, use it on process B.
            auth = {"Authorization": f"Bearer {victim}"}
            for port in ports:
                r = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, headers=auth)
                assert r.status_code == 200
            mgmt = {"Authorization": f"Bearer {admin}"}
            keys = (await client.get(f"http://127.0.0.1:{ports[0]}/api/v1/keys", headers=mgmt)).json()["data"]
            victim_hash = next(k["hash"] for k in keys if k["name"] == "victim")
            deleted = await client.delete(f"http://127.0.0.1:{ports[0]}/api/v1/keys/{victim_hash}", headers=mgmt)
            assert deleted.status_code == 200
            await poll_until(
                lambda: client.post(f"http://127.0.0.1:{ports[1]}/v1/chat/completions", json=CHAT, headers=auth),
                lambda r: r.status_code == 401,
                what="process B refusing a key revoked on process A",
            )


async def test_workers_need_redis_and_work_with_it(tmp_path: Path, mock: MockUpstream, redis_prefix: str) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'workers.db'}"
    limited, _, _ = await _setup(database_url)
    base_env = {
        **os.environ,
        "KEYRELAY_DATABASE_URL": database_url,
        "KEYRELAY_CONFIG": str(_config(tmp_path, mock)),
        "KEYRELAY_LOG_LEVEL": "warning",
    }
    refused = subprocess.run(
        [sys.executable, "-m", "keyrelay", "serve", "--workers", "2", "--port", str(_free_port())],
        env=base_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "KEYRELAY_REDIS_URL" in refused.stderr and "Traceback" not in refused.stderr

    port = _free_port()
    env = {"KEYRELAY_REDIS_URL": REDIS_URL, "KEYRELAY_REDIS_PREFIX": redis_prefix}
    with _gateways({**base_env, **env}, [port], ["--workers", "2"]) as (proc,):
        await _ready(port, proc)
        async with httpx.AsyncClient(timeout=20) as client:
            headers = {"Authorization": f"Bearer {limited}"}
            sends = [
                client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, headers=headers)
                for _ in range(80)
            ]
            responses = await asyncio.gather(*sends)
            statuses = [r.status_code for r in responses]
            assert statuses.count(200) == 50 and statuses.count(429) == 30
            # Request ids start with their process's own prefix. The kernel decides which worker accepts a
            # connection: send bursts on new connections until both workers have served some (a deadline).
            workers = {r.headers["x-request-id"][:16] for r in responses}
            closing = {**headers, "connection": "close"}
            for _ in range(50):
                if len(workers) == 2:
                    break
                burst = [
                    client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, headers=closing)
                    for _ in range(10)
                ]
                more = await asyncio.gather(*burst)
                assert all(r.status_code == 429 for r in more)  # the rpm window is full
                workers |= {r.headers["x-request-id"][:16] for r in more}
                responses += more
            assert len(workers) == 2
            # Whichever worker answers the scrape, /metrics counts every worker's requests.
            for _ in range(6):
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                counted = {
                    line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("keyrelay_requests_total{")
                }
                labels = 'group="-",model="gpt-4o-mini",provider="mock"'
                assert counted[f'keyrelay_requests_total{{error_type="",{labels},status="200"}}'] == 50
                assert sum(counted.values()) == len(responses)
                assert "keyrelay_channel_state{" in text and "keyrelay_upstream_attempts_total{" in text


TRIALS = 200


@pytest.mark.postgres
async def test_a_change_through_one_process_holds_on_the_next_request_of_another(
    tmp_path: Path, mock: MockUpstream, redis_prefix: str, postgres_url: str
) -> None:
    """Revoke or disable a key through A, then at once use it on B (which has it cached): never served.

    The store poll is off and the pub/sub fan-out races the request: only the state marks (written before the
    management call answers, compared by B's admission or check) can refuse every one of these.
    """
    _, _, admin = await _setup(postgres_url)
    ports = [_free_port(), _free_port()]
    env = _shared_env(tmp_path, mock, postgres_url, redis_prefix)
    a, b = (f"http://127.0.0.1:{port}" for port in ports)
    mgmt = {"Authorization": f"Bearer {admin}"}
    with _gateways(env, ports) as procs:
        for port, proc in zip(ports, procs, strict=True):
            await _ready(port, proc)
        async with httpx.AsyncClient(timeout=20) as client:
            served: list[str] = []
            for trial in range(TRIALS):
                created = await client.post(f"{a}/api/v1/keys", json={"name": f"t{trial}"}, headers=mgmt)
                assert created.status_code == 201, created.text
                auth = {"Authorization": f"Bearer {created.json()['key']}"}
                warm = await client.post(f"{b}/v1/chat/completions", json=CHAT, headers=auth)
                assert warm.status_code == 200  # B has the key cached now
                url = f"{a}/api/v1/keys/{created.json()['data']['hash']}"
                if trial % 5 == 4:
                    changed = await client.patch(url, json={"disabled": True}, headers=mgmt)
                else:
                    changed = await client.delete(url, headers=mgmt)
                assert changed.status_code == 200
                if trial % 4 == 3:  # no admission on these: they compare the marks themselves
                    after = await client.get(f"{b}/v1/{'models' if trial % 8 == 3 else 'key'}", headers=auth)
                else:
                    after = await client.post(f"{b}/v1/chat/completions", json=CHAT, headers=auth)
                if after.status_code == 200:
                    served.append(f"trial {trial}: {after.request.url.path}")
                else:
                    assert after.status_code in (401, 403), after.text
            assert served == []
            # The chat requests B served were the warm-ups only: nothing after a change reached the upstream.
            assert len(mock.requests) == TRIALS

            # The CLI records marks too (it shares Redis through KEYRELAY_REDIS_URL): a management key revoked
            # there is refused by B's management API at once, as is an API key revoked there.
            second = {"Authorization": f"Bearer {await _management_key(postgres_url)}"}
            created = await client.post(f"{a}/api/v1/keys", json={"name": "cli"}, headers=mgmt)
            auth = {"Authorization": f"Bearer {created.json()['key']}"}
            assert (await client.get(f"{b}/api/v1/keys", headers=second)).status_code == 200
            assert (await client.get(f"{b}/v1/key", headers=auth)).status_code == 200
            cli_env = {**os.environ, **env}
            for command in (
                ["admin", "revoke-management-key", key_hash(second["Authorization"].removeprefix("Bearer "))],
                ["keys", "revoke", created.json()["data"]["hash"]],
            ):
                done = subprocess.run(
                    [sys.executable, "-m", "keyrelay", *command], env=cli_env, capture_output=True, timeout=60
                )
                assert done.returncode == 0, done.stderr
            assert (await client.get(f"{b}/api/v1/keys", headers=second)).status_code == 401
            assert (await client.get(f"{b}/v1/key", headers=auth)).status_code == 401


async def _management_key(database_url: str) -> str:
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        account = await runtime.accounts.get_by_email(email="multi@example.com")
        assert account is not None
        issued = await runtime.key_service.create(
            account=account, spec=KeyCreate(name="second"), key_type=KeyType.MANAGEMENT, actor=TEST_ACTOR
        )
        return issued.plaintext
    finally:
        await runtime.close()
