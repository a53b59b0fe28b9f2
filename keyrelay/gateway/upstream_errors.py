"""Upstream transport failures: their kinds, the exceptions that carry them, and OS errors sorted into kinds.

The kind (``TransportFailure``) is what a client is told, in words (``forward.classify_exception``); the
exception's message, with the OS or TLS library's own text, is what the log gets.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from enum import StrEnum


class TransportFailure(StrEnum):
    """What kind of transport failure happened (no secrets, no addresses): told to the client in words."""

    TLS_CERTIFICATE = "tls_certificate"  # certificate not trusted, expired, or not for this host name
    TLS_HANDSHAKE = "tls_handshake"  # any other TLS failure (protocol version, cipher, not TLS at all)
    CONNECTION_REFUSED = "connection_refused"
    NAME_RESOLUTION = "name_resolution"
    UNREACHABLE = "unreachable"  # no route to the network or host
    CONNECT_FAILED = "connect_failed"  # another failure while connecting
    CONNECTION_CLOSED = "connection_closed"  # closed or reset before the answer was complete
    INVALID_RESPONSE = "invalid_response"  # not a valid HTTP/1.1 answer
    PROXY_REFUSED = "proxy_refused"  # the HTTP proxy answered CONNECT with a non-2xx status
    CONNECT_TIMEOUT = "connect_timeout"
    READ_TIMEOUT = "read_timeout"


class UpstreamConnectionError(ConnectionError):
    """The upstream could not be reached or dropped the connection.

    Attributes:
        reason: The kind of failure.
    """

    def __init__(self, message: str, reason: TransportFailure = TransportFailure.CONNECTION_CLOSED) -> None:
        super().__init__(message)
        self.reason = reason


class UpstreamTimeoutError(TimeoutError):
    """The upstream did not connect, or did not send the next bytes, in time.

    Attributes:
        reason: ``CONNECT_TIMEOUT`` or ``READ_TIMEOUT``.
    """

    def __init__(self, message: str, reason: TransportFailure = TransportFailure.READ_TIMEOUT) -> None:
        super().__init__(message)
        self.reason = reason


_ERRNO_IN_TEXT = re.compile(r"\[Errno (-?\d+)\]")


def connect_reason(exc: OSError) -> TransportFailure:
    """Classify a failure to connect (``OSError`` from ``create_connection``, ``start_tls`` or the resolver)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TransportFailure.TLS_CERTIFICATE
    if isinstance(exc, ssl.SSLError):
        return TransportFailure.TLS_HANDSHAKE
    if isinstance(exc, socket.gaierror):
        return TransportFailure.NAME_RESOLUTION
    code = exc.errno
    if code is None:
        # Several addresses all failed: asyncio raises "Multiple exceptions: [Errno 111] ..., [Errno 111] ...".
        codes = {int(c) for c in _ERRNO_IN_TEXT.findall(str(exc))}
        code = codes.pop() if len(codes) == 1 else None
    if code == errno.ECONNREFUSED:
        return TransportFailure.CONNECTION_REFUSED
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
        return TransportFailure.UNREACHABLE
    if code in (errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE):
        return TransportFailure.CONNECTION_CLOSED
    return TransportFailure.CONNECT_FAILED


def describe(exc: BaseException) -> str:
    """The OS or TLS library's own words for a failure (no addresses of ours beyond what it says)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{exc.reason}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__
