"""The lean Redis client against the real Redis: pipelined replies in order, errors, loss, timeouts, URLs."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import hiredis
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from keyrelay.limits.resp import LeanRedis
from tests.unit.limits.conftest import REDIS_URL, redis_client_or_skip

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = await redis_client_or_skip()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def lean(redis: Redis) -> AsyncIterator[LeanRedis]:
    client = LeanRedis.like(redis)
    assert client is not None
    try:
        yield client
    finally:
        await client.aclose()


async def test_concurrent_commands_get_their_own_replies(lean: LeanRedis, redis: Redis) -> None:
    key = f"kr-test-lean-{secrets.token_hex(4)}"
    try:
        replies = await asyncio.gather(*(lean.execute("INCRBY", key, n) for n in range(1, 201)))
        # Sent in one tick, answered in order: each INCRBY saw exactly the ones sent before it.
        assert replies == [n * (n + 1) // 2 for n in range(1, 201)]
        assert await lean.execute("EVAL", "return {1, -2, 'x'}", 0) == [1, -2, b"x"]
    finally:
        await redis.delete(key)


async def test_error_replies_are_redis_py_exceptions_and_keep_the_connection(lean: LeanRedis) -> None:
    with pytest.raises(NoScriptError):
        await lean.execute("EVALSHA", "0" * 40, 0)
    with pytest.raises(ResponseError, match="unknown command"):
        await lean.execute("NOSUCHCOMMAND")
    assert await lean.execute("PING") == b"PONG"


async def test_a_lost_connection_fails_the_waiting_call_and_the_next_one_reconnects(
    lean: LeanRedis, redis: Redis
) -> None:
    ident = await lean.execute("CLIENT", "ID")
    waiting = asyncio.ensure_future(lean.execute("BLPOP", f"kr-test-lean-{secrets.token_hex(4)}", 10))
    await asyncio.sleep(0.05)
    await redis.execute_command("CLIENT", "KILL", "ID", ident)
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(waiting, timeout=10)
    assert await lean.execute("PING") == b"PONG"
    assert await lean.execute("CLIENT", "ID") != ident


async def test_a_late_reply_times_out_and_closes_the_connection(redis: Redis) -> None:
    lean = LeanRedis.from_url(REDIS_URL, timeout_s=0.3)
    try:
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(lean.execute("BLPOP", f"kr-test-lean-{secrets.token_hex(4)}", 5), timeout=10)
        assert await lean.execute("PING") == b"PONG"  # a new connection: the old one's replies are unmatched
    finally:
        await lean.aclose()


async def test_a_cancelled_call_does_not_shift_the_replies(lean: LeanRedis) -> None:
    slow = asyncio.ensure_future(lean.execute("EVAL", "local t = redis.call('TIME') return 'slow'", 0))
    slow.cancel()
    assert await lean.execute("ECHO", "after") == b"after"


async def test_the_url_database_is_selected(redis: Redis) -> None:
    key = f"kr-test-lean-{secrets.token_hex(4)}"
    base = REDIS_URL.rsplit("/", 1)[0]
    lean = LeanRedis.from_url(f"{base}/5")
    other = Redis.from_url(f"{base}/5")
    try:
        await lean.execute("SET", key, "five")
        assert await other.get(key) == b"five" and await redis.get(key) is None
    finally:
        await other.delete(key)
        await other.aclose()
        await lean.aclose()


async def test_a_wrong_password_fails_the_call() -> None:
    base = REDIS_URL.split("://", 1)[1]
    lean = LeanRedis.from_url(f"redis://nobody:wrong@{base}")
    try:
        with pytest.raises(ResponseError):
            await lean.execute("PING")
    finally:
        await lean.aclose()


async def test_unreachable_redis_is_a_connection_error() -> None:
    lean = LeanRedis.from_url("redis://127.0.0.1:1/0", connect_timeout_s=0.5)
    with pytest.raises(RedisConnectionError):
        await lean.execute("PING")
    await lean.aclose()


def test_urls() -> None:
    with pytest.raises(ValueError, match="redis://"):
        LeanRedis.from_url("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="database"):
        LeanRedis.from_url("redis://127.0.0.1:6379/zero")
    assert LeanRedis.like(Redis(unix_socket_path="/tmp/redis.sock")) is None  # redis-py keeps the Unix sockets


# --- against a scripted server: the ordering and failure cases a healthy Redis does not produce -----------------


@contextlib.asynccontextmanager
async def scripted(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(closing, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_server_that_closes_at_once_fails_the_call_without_hanging() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with scripted(close_at_once) as port:
        lean = LeanRedis("127.0.0.1", port)
        try:
            for _ in range(3):
                with pytest.raises(RedisConnectionError):
                    await asyncio.wait_for(lean.execute("PING"), timeout=10)
        finally:
            await lean.aclose()


async def test_commands_wait_for_auth_and_select() -> None:
    """A caller arriving while AUTH is unanswered must not run before SELECT (it would use database 0)."""
    seen: list[bytes] = []
    auth_answered = asyncio.Event()

    async def slow_auth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                seen.append(command[0])
                if command[0] == b"AUTH":
                    await auth_answered.wait()
                writer.write(b"+OK\r\n")

    async with scripted(slow_auth) as port:
        lean = LeanRedis("127.0.0.1", port, db=3, password="pw")
        try:
            first = asyncio.ensure_future(lean.execute("GET", "a"))
            while b"AUTH" not in seen:
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(lean.execute("GET", "b"))  # during the handshake
            await asyncio.sleep(0.05)
            auth_answered.set()
            assert await asyncio.wait_for(asyncio.gather(first, second), timeout=10) == [b"OK", b"OK"]
        finally:
            await lean.aclose()
    assert seen == [b"AUTH", b"SELECT", b"GET", b"GET"]


async def test_a_reply_nobody_asked_for_closes_the_connection() -> None:
    async def greets_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"-ERR max number of clients reached\r\n")
        await reader.read(65536)

    async with scripted(greets_first) as port:
        lean = LeanRedis("127.0.0.1", port)
        try:
            with pytest.raises(RedisConnectionError):
                await asyncio.wait_for(lean.execute("PING"), timeout=10)
        finally:
            await lean.aclose()


async def test_a_submitted_commands_caller_is_cancelled_only_once_its_reply_is_in(
    lean: LeanRedis, redis: Redis
) -> None:
    """``submit``: the caller's cancellation waits for the reply, which the caller can still read (settlements)."""
    key = f"kr-test-lean-{secrets.token_hex(4)}"
    try:
        assert lean.submit(hiredis.pack_command(("PING",))) is None  # no connection yet: the caller opens one
        await lean.execute("PING")
        future = lean.submit(hiredis.pack_command(("INCRBY", key, 7)))
        assert future is not None
        seen: list[object] = []

        async def caller() -> None:
            try:
                await future
            except asyncio.CancelledError:
                seen.append(future.result())  # done before the cancellation took effect
                raise

        task = asyncio.ensure_future(caller())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == [7] and await redis.get(key) == b"7"
        assert await lean.execute("INCRBY", key, 1) == 8  # the replies after it are still matched in order
    finally:
        await redis.delete(key)
