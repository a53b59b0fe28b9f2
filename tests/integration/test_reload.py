"""Reloading keyrelay.yaml: SIGHUP and ``keyrelay reload`` under load, a bad file refused, the old table kept.

``keyrelay serve`` runs as a real process (one worker, and two workers on Redis); a load of plain and streamed
requests runs through every reload, and not one of them may fail.
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
import pytest
import yaml

from keyrelay.config import Settings, load_settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.runtime import open_runtime
from keyrelay.services.inputs import AccountCreate
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.poll import wait_until
from keyrelay.testing.server import running_server
from tests.conftest import TEST_ACTOR, make_api_key
from tests.integration.gateway.helpers import chat
from tests.serving import wait_until_serving
from tests.unit.limits.conftest import REDIS_URL


def _config(path: Path, mock: MockUpstream, provider: str, upstream: str, **extra: Any) -> None:
    models = [{"id": "m", "upstream_id": upstream}, {"id": "m-paced", "upstream_id": f"{upstream}-paced"}]
    entry = {"name": provider, "base_url": mock.base_url, "models": models}
    path.write_text(yaml.safe_dump({"providers": [entry], **extra}))


async def _api_key(database_url: str) -> str:
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        account = await runtime.account_service.create_account(AccountCreate(email="r@example.com"), actor=TEST_ACTOR)
        issued = await runtime.key_service.create(account=account, spec=KeyCreate(name="k"), actor=TEST_ACTOR)
        return issued.plaintext
    finally:
        await runtime.close()


class _Load:
    """Clients sending plain and streamed requests in a loop until stopped; every answer is kept."""

    def __init__(self, base: str, key: str, clients: int = 6) -> None:
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._run(base, key, i % 2 == 1)) for i in range(clients)]

    async def _run(self, base: str, key: str, stream: bool) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            while not self._stop.is_set():
                model = "m-paced" if stream else "m"
                r = await chat(client, key, model=model, stream=stream)
                self.statuses.append(r.status_code)
                if r.status_code != 200 or (stream and not r.text.rstrip().endswith("data: [DONE]")):
                    self.failures.append(f"{r.status_code} {r.text[:300]}")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _serve(tmp_path: Path, config: Path, database_url: str, **env: str) -> tuple[asyncio.subprocess.Process, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYRELAY_")}
    clean.update(KEYRELAY_DATABASE_URL=database_url, KEYRELAY_LOG_LEVEL="info", **env)
    # The log goes to a file: a pipe nobody reads while the load runs would fill up and stall the server.
    with (tmp_path / "serve.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "keyrelay", "serve", "--config", str(config), "--port", str(port),
            env=clean, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    await wait_until_serving(f"{base}/healthz", exited=lambda: proc.returncode is not None)
    return proc, base


async def _stop(proc: asyncio.subprocess.Process, tmp_path: Path) -> str:
    """Stop the server (SIGTERM) and return its log."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout=30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return (tmp_path / "serve.log").read_text(errors="replace")


async def _reload_cli(config: Path, pid_file: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyrelay", "reload", "--config", str(config), "--pid-file", str(pid_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


def _upstream_models(mock: MockUpstream) -> set[str]:
    return {q.body["model"].removesuffix("-paced") for q in mock.requests if isinstance(q.body, dict)}


async def test_reload_under_load_swaps_the_table_refuses_a_bad_file_and_fails_no_request(
    tmp_path: Path, mock: MockUpstream
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"
    key = await _api_key(database_url)
    config, pid_file = tmp_path / "keyrelay.yaml", tmp_path / "keyrelay.pid"
    _config(config, mock, "old", "old-model")
    proc, base = await _serve(tmp_path, config, database_url, KEYRELAY_PID_FILE=str(pid_file))
    try:
        load = _Load(base, key)
        await wait_until(lambda: len(load.statuses) >= 20, what="load running")
        # keyrelay reload: the new table serves every request after it.
        _config(config, mock, "new", "new-model")
        code, out = await _reload_cli(config, pid_file)
        assert code == 0, out
        mock.state.clear_requests()
        await wait_until(lambda: "new-model" in _upstream_models(mock), what="the new table in use")
        mock.state.clear_requests()
        await wait_until(lambda: len(mock.requests) >= 20, what="requests after the reload")
        assert _upstream_models(mock) == {"new-model"}
        # A bad file: the CLI refuses it before signalling; a SIGHUP anyway is refused by the server, logged.
        config.write_text("providers: [ {name: broken, base_url: ftp://nope} ]\n")
        code, out = await _reload_cli(config, pid_file)
        assert code == 2 and "base_url must start with http://" in out, out
        os.kill(int(pid_file.read_text()), signal.SIGHUP)
        started = len(load.statuses)
        await wait_until(lambda: len(load.statuses) >= started + 40, what="requests after the refused reload")
        assert _upstream_models(mock) == {"new-model"}
        # SIGHUP itself, with a valid file again: back to a third table.
        _config(config, mock, "third", "third-model")
        os.kill(int(pid_file.read_text()), signal.SIGHUP)
        await wait_until(lambda: "third-model" in _upstream_models(mock), what="the third table in use")
        await load.stop()
        assert load.failures == [] and set(load.statuses) == {200}, load.failures[:3]
    finally:
        log = await _stop(proc, tmp_path)
    assert "configuration reloaded: 1 provider(s), 2 channel(s)" in log
    assert (
        "reload of the configuration refused, the running one stays" in log and "ftp://" not in log.split("refused")[0]
    )
    assert not pid_file.exists()  # removed at exit


@pytest.mark.redis
async def test_sighup_reloads_every_worker(tmp_path: Path, mock: MockUpstream, redis_prefix: str) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"
    key = await _api_key(database_url)
    config, pid_file = tmp_path / "keyrelay.yaml", tmp_path / "keyrelay.pid"
    _config(config, mock, "old", "old-model")
    env = {
        "KEYRELAY_PID_FILE": str(pid_file),
        "KEYRELAY_WORKERS": "2",
        "KEYRELAY_REDIS_URL": REDIS_URL,
        "KEYRELAY_REDIS_PREFIX": redis_prefix,
    }
    proc, base = await _serve(tmp_path, config, database_url, **env)
    try:
        load = _Load(base, key, clients=4)
        await wait_until(lambda: len(load.statuses) >= 20, what="load running")
        _config(config, mock, "new", "new-model")
        code, out = await _reload_cli(config, pid_file)
        assert code == 0, out
        log_file = tmp_path / "serve.log"
        await wait_until(
            lambda: log_file.read_text(errors="replace").count("configuration reloaded") == 2, what="both reloaded"
        )
        # The load went on through the reload without a failure.
        await load.stop()  # nothing in flight from here: every later request is routed after both reloads
        assert load.failures == [] and set(load.statuses) == {200}, load.failures[:3]
        # Both workers reloaded: a run of requests (spread over the workers' connections) never meets the old one.
        mock.state.clear_requests()
        after = _Load(base, key, clients=4)
        await wait_until(lambda: len(mock.requests) >= 60, what="requests after the reload")
        await after.stop()
        assert _upstream_models(mock) == {"new-model"}
        assert after.failures == [] and set(after.statuses) == {200}, after.failures[:3]
    finally:
        log = await _stop(proc, tmp_path)
    assert log.count("configuration reloaded") == 2, log[-3000:]


# --- in process ---------------------------------------------------------------------------------------------------


async def test_a_reload_in_process_swaps_the_table_keeps_health_and_updates_what_keys_may_name(
    tmp_path: Path, mock: MockUpstream
) -> None:
    config = tmp_path / "keyrelay.yaml"
    _config(config, mock, "old", "old-model")
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}"
    settings = load_settings(config, database_url=database_url, log_level="warning")
    async with running_server(settings) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        gateway = server.app.gateway
        assert gateway is not None
        key = await make_api_key(server, "a@example.com")
        mock.options.fail_status = 503
        assert (await chat(client, key, model="m")).status_code == 503
        mock.options.fail_status = None
        # The new file keeps "old" (its breaker counts carry over) and adds "new" with model "fresh".
        fresh = {"name": "new", "base_url": mock.base_url, "models": [{"id": "fresh"}]}
        old = {"name": "old", "base_url": mock.base_url, "models": [{"id": "m", "upstream_id": "old-model"}]}
        config.write_text(yaml.safe_dump({"providers": [old, fresh], "max_attempts": 2}))
        assert server.app.reload()
        assert (await chat(client, key, model="fresh")).status_code == 200
        assert (await chat(client, key, model="m-paced")).status_code == 404  # gone from the file
        report = {c["provider"]: c for c in gateway.channel_report()}
        assert report["old"]["attempts_60s"] == 1 and report["old"]["error_rate_60s"] == 1.0
        assert server.app.settings.max_attempts == 2
        # A key may now name the new model: the key service checks names against the reloaded table.
        assert await make_api_key(server, "a@example.com", allowed_models=["fresh"])
        # A bad file is refused, and the table stays as it was.
        config.write_text("providers: not-a-list\n")
        assert not server.app.reload()
        assert (await chat(client, key, model="fresh")).status_code == 200
        assert [c["provider"] for c in gateway.channel_report()] == ["old", "new"]
