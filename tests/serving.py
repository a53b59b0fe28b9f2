"""Waiting for a server run as a separate process (``keyrelay serve``, ``keyrelay demo``) to answer."""

from __future__ import annotations

from collections.abc import Callable

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
