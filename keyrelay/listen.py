"""The listening socket of ``serve`` and ``demo``: bound by keyrelay before start-up, with a one-line error.

uvicorn binds only after the application's start-up (migrations included) and answers a busy port
with a log line and exit code 3. Binding here first fails fast, before anything else runs, and lets
the CLI say in one line what is wrong and what to change.
"""

from __future__ import annotations

import errno
import socket

# What to change, by the reason the address cannot be listened on (errno values as in POSIX).
_HINTS = {
    errno.EADDRINUSE: "set --port or KEYRELAY_PORT to a free port",
    errno.EACCES: "ports below 1024 need privileges: set --port or KEYRELAY_PORT to a higher port",
    errno.EADDRNOTAVAIL: "set --host or KEYRELAY_HOST to an address of this machine",
}


class ListenError(Exception):
    """The gateway cannot listen on the configured host and port; the message says why and what to change."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        reason = (cause.strerror or str(cause)).lower()
        if isinstance(cause, socket.gaierror):
            hint = "set --host or KEYRELAY_HOST to an address or a name this machine can resolve"
        else:
            hint = _HINTS.get(cause.errno or 0, "set --host/--port or KEYRELAY_HOST/KEYRELAY_PORT")
        super().__init__(f"cannot listen on {_display(host)}:{port}: {reason} ({hint})")
        self.errno = cause.errno


def _display(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` the way uvicorn does, and return the socket for uvicorn to serve on.

    A host containing ``:`` is IPv6, anything else IPv4 (uvicorn's rule); ``SO_REUSEADDR`` is set so
    that a restart does not wait for old connections in TIME_WAIT. Listening here as well as binding
    catches a port held by a socket that also set ``SO_REUSEADDR`` (Linux lets such a second bind
    succeed and refuses only ``listen``).

    Args:
        host: Interface address or name, e.g. ``127.0.0.1``, ``0.0.0.0`` or ``::1``.
        port: TCP port, 0 for any free port.

    Returns:
        A listening, inheritable TCP socket (worker processes serve on it too).

    Raises:
        ListenError: The address is in use, not permitted, not local, or the host does not resolve.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's default backlog; create_server listens again with its own
    except OSError as exc:
        sock.close()
        raise ListenError(host, port, exc) from None
    sock.set_inheritable(True)
    return sock


def check_listen(host: str, port: int) -> None:
    """Check that ``host:port`` can be listened on now, without keeping it (for uvicorn's own worker supervisor).

    Raises:
        ListenError: As for :func:`bind_listener`.
    """
    bind_listener(host, port).close()
