"""`keyrelay demo` as a new user runs it: start, read the printed key, make the printed request."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_prints_a_working_key(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyrelay", "demo", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Metrics:"):
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}/v1/chat/completions" in text, text
        api_key = next(line.strip() for line in lines if line.strip().startswith("kr_live_"))
        admin_key = next(line.strip() for line in lines if line.strip().startswith("kr_mgmt_"))
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(
            f"{base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {api_key}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        keys = httpx.get(f"{base}/api/v1/keys", headers={"Authorization": f"Bearer {admin_key}"})
        assert keys.status_code == 200
        assert [k["name"] for k in keys.json()["data"]] == ["demo"]
        assert (tmp_path / "keyrelay.db").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
