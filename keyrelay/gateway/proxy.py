"""Which HTTP proxy, if any, carries the traffic to an upstream: decided once per origin at start-up.

Proxies follow the conventions of curl and Python's ``urllib`` (read in ``keyrelay/config.py``):
``HTTPS_PROXY`` for ``https://`` upstreams (a ``CONNECT`` tunnel, RFC 9110 §9.3.6, so TLS runs end to end
between keyrelay and the upstream), ``HTTP_PROXY`` for ``http://`` upstreams (requests in absolute form,
RFC 9112 §3.2.2), and ``NO_PROXY`` for the hosts reached directly. Loopback hosts are always reached directly,
as Go's ``net/http`` does: a forward proxy cannot reach this machine's loopback interface.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


class ProxyConfigError(ValueError):
    """A proxy setting cannot be used; the message names the variable and never holds the credentials."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP forward proxy.

    Attributes:
        host: Host name or IP address of the proxy.
        port: TCP port (80 when the URL names none, as in Python's requests and httpx; curl assumes 1080).
        authorization: The ``Proxy-Authorization`` value (Basic, RFC 7617) from the URL's user info; never printed.
    """

    host: str
    port: int
    authorization: bytes | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, variable: str) -> Proxy:
        """Parse ``[http://][user:password@]host[:port][/]``.

        Args:
            url: The proxy URL, as found in ``variable``.
            variable: The setting it came from (for the error message).

        Raises:
            ProxyConfigError: Not an ``http://`` proxy URL. The message leaves out the user info.
        """
        text = url.strip()
        if "://" not in text:
            text = "http://" + text  # curl and urllib accept a bare host:port
        parts = urlsplit(text)
        shown = f"{parts.scheme}://{parts.hostname or ''}"
        if parts.scheme != "http":
            raise ProxyConfigError(
                f"{variable} is {shown}: keyrelay reaches upstreams only through http:// proxies "
                "(an https:// upstream is tunnelled with CONNECT, so TLS still runs end to end)"
            )
        try:
            port = parts.port or 80
        except ValueError:
            raise ProxyConfigError(f"{variable} is {shown} with an invalid port") from None
        if not parts.hostname:
            raise ProxyConfigError(f"{variable} names no proxy host")
        authorization = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = b"Basic " + base64.b64encode(credentials.encode())
        return cls(parts.hostname, port, authorization)

    @property
    def address(self) -> str:
        """``host:port``, for messages (without credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class _Bypass:
    """One ``NO_PROXY`` entry: a domain (with its subdomains) or an IP network, optionally one port."""

    domain: str | None
    network: _Network | None
    port: int | None

    def matches(self, host: str, port: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return ip is not None and ip in self.network
        assert self.domain is not None
        return host == self.domain or host.endswith("." + self.domain)


def _parse_bypass(entry: str) -> _Bypass | None:
    entry = entry.strip().lower()
    if not entry:
        return None
    port: int | None = None
    if entry.startswith("["):  # [v6]:port or [v6]
        address, _, rest = entry[1:].partition("]")
        entry = address
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif entry.count(":") == 1:  # host:port (a bare IPv6 address has more colons)
        entry, _, port_text = entry.partition(":")
        port = int(port_text) if port_text.isdigit() else None
    try:
        return _Bypass(None, ipaddress.ip_network(entry, strict=False), port)
    except ValueError:
        pass
    domain = entry.lstrip("*").lstrip(".")  # ".example.com" and "*.example.com" mean example.com and below
    return _Bypass(domain, None, port) if domain else None


@dataclass(frozen=True, slots=True)
class ProxyRules:
    """Which proxy, if any, carries the traffic to an upstream origin.

    Attributes:
        https_proxy: The proxy URL for ``https://`` upstreams (``HTTPS_PROXY``), or None.
        http_proxy: The proxy URL for ``http://`` upstreams (``HTTP_PROXY``), or None.
        no_proxy: ``NO_PROXY``: comma-separated host names (a name also covers its subdomains; a leading
            ``.`` or ``*.`` is ignored), IP addresses or CIDR networks (matched against IP-literal hosts only),
            each optionally with ``:port``; ``*`` alone bypasses the proxy for every host.
    """

    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: str | None = None

    def proxy_for(self, host: str, port: int, tls: bool) -> Proxy | None:
        """The proxy for ``host:port`` (an https upstream when ``tls``), or None to connect directly.

        Raises:
            ProxyConfigError: A proxy applies to this origin but its URL is unusable.
        """
        url = self.https_proxy if tls else self.http_proxy
        if not url or self.bypassed(host, port):
            return None
        return Proxy.parse(url, "HTTPS_PROXY" if tls else "HTTP_PROXY")

    def bypassed(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is reached directly: a loopback host, or a ``NO_PROXY`` match."""
        host = host.lower().rstrip(".").strip("[]")
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if host == "localhost" or host.endswith(".localhost") or (ip is not None and ip.is_loopback):
            return True
        entries = [e for e in (self.no_proxy or "").replace(" ", ",").split(",") if e.strip()]
        if any(e.strip() == "*" for e in entries):
            return True
        return any(rule.matches(host, port, ip) for e in entries if (rule := _parse_bypass(e)) is not None)
