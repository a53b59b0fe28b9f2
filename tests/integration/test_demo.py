"""`keyrelay demo` as a new user runs it: start, read the printed key, make the printed request."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_demo_prints_a_working_key(tmp_path: Path) -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "keyrelay",
        "demo",
        "--port",
        str(port),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        # A deadline for start-up (a hang fails the test instead of blocking it); no duration is measured.
        async with asyncio.timeout(60):
            while not lines or not lines[-1].startswith("Metrics:"):
                line = (await proc.stdout.readline()).decode()
                if not line:
                    break
                lines.append(line)
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}/v1/chat/completions" in text, text
        api_key = next(line.strip() for line in lines if line.strip().startswith("kr_live_"))
        admin_key = next(line.strip() for line in lines if line.strip().startswith("kr_mgmt_"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            r = await client.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {api_key}"},
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"]
            keys = await client.get("/api/v1/keys", headers={"Authorization": f"Bearer {admin_key}"})
            assert keys.status_code == 200
            assert [k["name"] for k in keys.json()["data"]] == ["demo"]
            # The printed portal password signs the demo account in.
            assert f"http://127.0.0.1:{port}/login" in text
            password = next(line.split()[1] for line in lines if line.strip().startswith("Password:"))
            form = await client.get("/login")
            token = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', form.text)
            assert token, form.text
            signed_in = await client.post(
                "/login",
                data={"csrf_token": token.group(1), "email": "demo@keyrelay.local", "password": password},
            )
            assert signed_in.status_code == 303 and signed_in.headers["location"] == "/keys", signed_in.text
            account = await client.get("/account")
            assert account.status_code == 200 and "demo@keyrelay.local" in account.text
        assert (tmp_path / "keyrelay.db").exists()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.communicate(), timeout=15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
