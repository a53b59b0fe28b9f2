"""A lean Redis client for the request path: one pipelined connection, hiredis to pack and parse.

The admission and settlement scripts run once each per request. Through redis-py each call cost about
60 µs of the gateway's CPU (measured: argument encoding in Python, connection-pool checkout and release, retry
and timeout wrappers, observability hooks), most of the cost of the scaled-out shape. This client sends a
command as the bytes ``hiredis.pack_command`` makes (C), writes it at once on one connection shared by every
caller, and matches replies to callers in order (Redis answers the commands of one connection in the order
sent: https://redis.io/docs/latest/develop/reference/protocol-spec/, "Pipelining"), parsed by
``hiredis.Reader`` (C). Commands issued in the same event-loop tick leave in one segment and come back in
one read: the automatic pipelining of the issue, with each script still one atomic call.

Only what the hot path needs: ``execute`` of any command (EVALSHA, SCRIPT LOAD), the URL's password,
user name and database (``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS). Everything else
(pub/sub, the portal's reads, marks) stays on redis-py. The exceptions are redis-py's own, so callers handle
both clients alike: ``ConnectionError`` when the connection cannot be made or is lost (every pending call fails
with it; the next call reconnects), ``TimeoutError`` when a reply takes longer than ``timeout_s`` (the connection
is closed: the replies after it could no longer be matched), ``NoScriptError`` and ``ResponseError`` for error
replies.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def _reply_error(error: hiredis.ReplyError) -> ResponseError:
    message = str(error)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class PatientFuture(asyncio.Future[Any]):
    """A reply that the cancellation of the task awaiting it does not cancel (``LeanRedis.submit``).

    asyncio's ``Task.cancel`` first asks the future its task awaits to cancel; when the future declines, the task's
    cancellation takes effect at its next step, which comes when the future is done. So the cancelled caller gets
    its ``CancelledError`` once the reply (or the connection's failure) is in, and can still read what Redis did.
    Cheaper than ``asyncio.shield`` (no second future, no task): it is on every settlement's path.
    """

    def cancel(self, msg: Any | None = None) -> bool:
        """Decline: the reply is awaited even by a cancelled caller."""
        return False


class _Connection(asyncio.Protocol):
    """One connection: commands written in order, replies handed to their callers in the same order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()  # (caller, monotonic time sent)
        self.lost = False
        self._outbox: list[bytes] = []  # commands of this event-loop tick, written together at its end

    def send(self, command: bytes) -> None:
        """Queue a packed command; the commands of one tick leave in one write (automatic pipelining)."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(command)

    def _flush(self) -> None:
        commands, self._outbox = self._outbox, []
        if self.transport is not None and not self.lost:
            self.transport.write(commands[0] if len(commands) == 1 else b"".join(commands))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        """Parse every whole reply and resolve its caller."""
        self.reader.feed(data)
        pending = self.pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not pending:  # a reply nobody asked for ("-ERR max number of clients reached"): out of step
                self.fail(RedisConnectionError(f"unexpected reply from Redis: {reply!r}"[:200]))
                return
            future, _ = pending.popleft()
            if future.done():  # its caller was cancelled: the reply is dropped, the order kept
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_reply_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every call still waiting: its reply will never come."""
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def fail(self, error: Exception) -> None:
        """Close the connection and fail every pending call with ``error``."""
        self.lost = True
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class LeanRedis:
    """A pipelined Redis connection for hot-path commands (see the module doc)."""

    def __init__(
        self,
        host: str,
        port: int = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        """A client for one Redis server; nothing is connected before the first ``execute``."""
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._user = username
        self._password = password
        self._db = db
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    @classmethod
    def from_url(cls, url: str, *, connect_timeout_s: float = 1.0, timeout_s: float = 2.0) -> LeanRedis:
        """A client for ``redis://[[user]:password@]host[:port][/db]`` (``rediss://``: TLS, verified).

        Raises:
            ValueError: Another scheme, no host, or a database that is not a number.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError("the Redis URL must be redis://host[:port][/db] or rediss://...")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the Redis URL's database must be a number, not {path!r}")
        return cls(
            parts.hostname,
            parts.port or 6379,
            db=int(path) if path else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ssl_context=ssl.create_default_context() if parts.scheme == "rediss" else None,
            connect_timeout_s=connect_timeout_s,
            timeout_s=timeout_s,
        )

    @classmethod
    def like(cls, client: Redis) -> LeanRedis | None:
        """A client for the server a redis-py client talks to, with its credentials and timeouts.

        None when that client does not use TCP (a Unix socket): the caller keeps using redis-py then.
        """
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        if "path" in kwargs or "host" not in kwargs:
            return None
        context = None
        if issubclass(pool.connection_class, SSLConnection):
            context = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
            if kwargs.get("ssl_certfile"):  # mutual TLS
                context.load_cert_chain(kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"))
            if kwargs.get("ssl_check_hostname") is False:
                context.check_hostname = False
            if kwargs.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        return cls(
            kwargs["host"],
            int(kwargs.get("port") or 6379),
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            ssl_context=context,
            connect_timeout_s=kwargs.get("socket_connect_timeout") or 1.0,
            timeout_s=kwargs.get("socket_timeout") or 2.0,
        )

    async def execute(self, *args: str | bytes | int | float) -> Any:
        """Send one command and return its reply (integers, bytes, lists of them, as hiredis parses RESP2).

        Raises:
            redis.exceptions.ConnectionError: The connection cannot be made or was lost.
            redis.exceptions.TimeoutError: No reply within ``timeout_s`` (the connection is closed).
            redis.exceptions.NoScriptError: An EVALSHA of a script Redis does not hold.
            redis.exceptions.ResponseError: Any other error reply.
        """
        return await self.execute_packed(hiredis.pack_command(args))  # type: ignore[arg-type]  # stub: a 1-tuple

    async def execute_packed(self, command: bytes) -> Any:
        """``execute`` of one command already in RESP's form (an array of bulk strings, as ``pack_command`` makes).

        For callers that build a command from cached pieces; raises as ``execute``.
        """
        connection = self._connection
        if connection is None or connection.lost:
            connection = await self._connect()
            if connection.lost:  # closed by the server as soon as it was made (Redis at its client limit, say)
                raise RedisConnectionError(f"the connection to Redis at {self._host}:{self._port} was closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        connection.pending.append((future, time.monotonic()))
        connection.send(command)
        return await future

    def submit(self, command: bytes) -> PatientFuture | None:
        """Send a packed command now and return its reply's future, which its awaiter's cancellation does not cancel.

        None when there is no open connection (the caller uses ``execute_packed``, which opens one). The future
        fails as ``execute`` raises.
        """
        connection = self._connection
        if connection is None or connection.lost:
            return None
        future = PatientFuture(loop=asyncio.get_running_loop())
        connection.pending.append((future, time.monotonic()))
        connection.send(command)
        return future

    async def _connect(self) -> _Connection:
        # One connection attempt at a time, shared by every caller that needs it; forgotten once it ends, even
        # when every caller waiting for it was cancelled.
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.ensure_future(self._open())
            task.add_done_callback(self._connected)
        return await asyncio.shield(task)

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody awaited is not "never retrieved"

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl),
                timeout=self._connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis at {self._host}:{self._port}: {exc}") from exc
        try:
            # AUTH and SELECT before anything else: callers only get the connection once both are answered.
            handshake: list[asyncio.Future[Any]] = []
            if self._password is not None:
                auth = ("AUTH", self._user, self._password) if self._user else ("AUTH", self._password)
                handshake.append(self._handshake(connection, auth))
            if self._db:
                handshake.append(self._handshake(connection, ("SELECT", self._db)))
            if handshake:
                await asyncio.wait_for(asyncio.gather(*handshake), timeout=self._timeout_s)
        except BaseException:
            connection.fail(RedisConnectionError("the Redis handshake failed"))
            raise
        self._connection = connection
        self._arm_watchdog()
        return connection

    @staticmethod
    def _handshake(connection: _Connection, args: tuple[str | int, ...]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        connection.pending.append((future, time.monotonic()))
        connection.send(hiredis.pack_command(args))  # type: ignore[arg-type]  # stub: a 1-tuple
        return future

    def _arm_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self._timeout_s / 4, self._check_timeouts)

    def _check_timeouts(self) -> None:
        """Close a connection whose oldest call has waited longer than the timeout (one timer, not one per call)."""
        self._watchdog = None
        connection = self._connection
        if connection is None or connection.lost:
            return
        if connection.pending and time.monotonic() - connection.pending[0][1] > self._timeout_s:
            connection.fail(RedisTimeoutError(f"no reply from Redis within {self._timeout_s} s"))
            return
        self._arm_watchdog()

    async def aclose(self) -> None:
        """Close the connection; calls still waiting fail with ConnectionError."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._connection is not None:
            self._connection.fail(RedisConnectionError("the client was closed"))
            self._connection = None
