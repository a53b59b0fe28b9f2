"""A server run as a separate process (``keyrelay serve``, ``keyrelay demo``): waiting for it, or for its failure."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from keyrelay.testing.poll import poll_until


async def wait_until_serving(url: str, *, exited: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``GET url`` until it answers 200; fail at once if the process has exited, or at the deadline.

    ``exited`` tells whether the server process is gone (``lambda: proc.poll() is not None`` for a ``Popen``,
    ``lambda: proc.returncode is not None`` for an asyncio process).
    """
    async with httpx.AsyncClient(timeout=5) as client:

        async def answering() -> bool:
            assert not exited(), f"the server process exited before {url} answered"
            try:
                return (await client.get(url)).status_code == 200
            except httpx.TransportError:
                return False

        await poll_until(answering, what=f"{url} answering 200", timeout=timeout, interval=0.05)


async def serve_until_exit(tmp_path: Path, config: Path, **env: str) -> tuple[int, str]:
    """Run ``keyrelay serve --config config`` on a fresh SQLite file in ``tmp_path`` until it exits by itself.

    For start-ups that must fail. The process sees none of the developer's ``KEYRELAY_*`` or ``*_proxy``
    variables, only ``env`` on top of the rest. Returns (exit code, stderr); fails after 60 s.
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYRELAY_") and not k.lower().endswith("_proxy")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "keyrelay",
        "--database-url",
        f"sqlite+aiosqlite:///{tmp_path / 'keyrelay.db'}",
        "serve",
        "--config",
        str(config),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**clean, **env},
        cwd=tmp_path,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()
