"""The portal's session cookie, CSRF protection and security headers.

- **Session cookie** ``kr_session`` (``__Host-kr_session`` when the public URL is https, with ``Secure``):
  ``HttpOnly``, ``SameSite=Lax``, ``Path=/``, holding a 256-bit random id whose SHA-256 the store keeps.
- **CSRF** (OWASP CSRF Prevention Cheat Sheet). Every state-changing request must pass two checks:
  1. Fetch Metadata and origin: a request whose ``Sec-Fetch-Site`` is ``cross-site``, or whose ``Origin``
     is another origin than the request's own, is refused.
  2. A synchronizer token in the form's ``csrf_token`` field: HMAC-SHA256 of a fixed label keyed with the
     session id (signed in) or with the random ``kr_csrf`` cookie (the sign-in, sign-up and reset forms),
     so it is never stored and another site can neither read nor forge it.
  Session ids are secret already, so the token needs no server secret of its own; that is why no CSRF
  library (they keep a signed double-submit cookie beside a session) is used.
- **Headers** on every page: a strict Content-Security-Policy (no inline script or style), no framing,
  no MIME sniffing, no referrer to other sites (reset links carry their token in the path), no caching.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

__all__ = [
    "CSRF_COOKIE",
    "SECURE_CSRF_COOKIE",
    "SECURITY_HEADERS",
    "csrf_token",
    "new_csrf_seed",
    "same_origin",
    "session_cookie_name",
    "token_matches",
]

CSRF_COOKIE = "kr_csrf"
SECURE_CSRF_COOKIE = "__Host-kr_csrf"  # over https: no sibling subdomain can plant it
_LABEL = b"keyrelay portal csrf v1"

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # same-origin: another site never sees a path (reset links carry a token); "no-referrer" would make
    # browsers send "Origin: null" with our own forms, which the CSRF check must refuse.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def session_cookie_name(secure: bool) -> str:
    """``__Host-kr_session`` over https (the browser then insists on Secure, Path=/ and no Domain)."""
    return "__Host-kr_session" if secure else "kr_session"


def new_csrf_seed() -> str:
    """A random value for the ``kr_csrf`` cookie of a visitor who is not signed in."""
    return secrets.token_urlsafe(32)


def csrf_token(seed: str) -> str:
    """The form token for a session id or ``kr_csrf`` cookie value (hex HMAC-SHA256)."""
    return hmac.new(seed.encode("utf-8"), _LABEL, hashlib.sha256).hexdigest()


def token_matches(seed: str | None, sent: str | None) -> bool:
    """Whether ``sent`` is the token of ``seed`` (constant-time)."""
    if not seed or not sent:
        return False
    return hmac.compare_digest(csrf_token(seed), sent)


def same_origin(request: Request, public_netloc: str | None) -> bool:
    """Fetch Metadata and ``Origin`` allow this request: not cross-site, and from this very origin if said.

    The origin may be the request's ``Host`` or the configured public URL's (a proxy may rewrite ``Host``).
    """
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # a client that sends no Origin (not a browser, or an old one): the token decides
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https"):
        return False  # "null" (sandboxed frames, some redirects) and anything else: never our own pages
    netloc = parts.netloc.lower()
    return netloc == request.headers.get("host", "").lower() or netloc == (public_netloc or "").lower()
