"""HeadWithBody: a response's head goes out with its first body bytes, or alone at the end of the tick."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from keyrelay.connections import HeadWithBody


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []  # one entry per write(2) the real transport would make
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.sends.append(b"".join(bytes(data) for data in list_of_data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 5000) if name == "peername" else default


async def test_head_and_first_body_of_one_tick_are_one_send() -> None:
    real = FakeTransport()
    transport = HeadWithBody(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert real.sends == []
    transport.write(b"body")
    assert real.sends == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"more")
    await asyncio.sleep(0)
    assert real.sends == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"more"]


async def test_a_head_without_body_in_its_tick_goes_out_at_the_end_of_the_tick() -> None:
    real = FakeTransport()
    transport = HeadWithBody(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert real.sends == []
    await asyncio.sleep(0)
    assert real.sends == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    transport.write(b"later")
    assert real.sends == [b"HTTP/1.1 204 No Content\r\n\r\n", b"later"]


async def test_close_writes_the_held_head_first() -> None:
    real = FakeTransport()
    transport = HeadWithBody(real, asyncio.get_running_loop())
    transport.write(b"head")
    transport.close()
    assert real.sends == [b"head"]
    assert real.closed and transport.is_closing()
    await asyncio.sleep(0)
    assert real.sends == [b"head"]


async def test_a_head_held_when_the_connection_went_away_is_dropped() -> None:
    real = FakeTransport()
    transport = HeadWithBody(real, asyncio.get_running_loop())
    transport.write(b"head")
    real.closed = True  # the client disconnected
    await asyncio.sleep(0)
    assert real.sends == []
    assert transport.get_extra_info("peername") == ("127.0.0.1", 5000)
