"""The portal application: the Portal (rendering, sessions, CSRF checks, actors) and create_portal_app().

Server-rendered with Jinja2 (autoescaped), one form per action, one small script file. Every POST is checked
for CSRF (``security.py``) before it changes anything (a signed-in page's POST without a live session is sent
to ``/login`` first); a form with bad input is shown again with a 4xx status and the message next to the field
at fault. Signed-out visitors of a signed-in page are sent to ``/login``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from keyrelay.config import Settings
from keyrelay.errors import GatewayError
from keyrelay.gateway.client_ip import ClientAddress
from keyrelay.limits.backend import LimitsBackend
from keyrelay.portal.security import (
    CSRF_COOKIE,
    SECURE_CSRF_COOKIE,
    SECURITY_HEADERS,
    csrf_token,
    new_csrf_seed,
    same_origin,
    session_cookie_name,
    token_matches,
)
from keyrelay.runtime import Runtime, public_url
from keyrelay.services.audit import Actor
from keyrelay.services.signin import SignedIn, SigninService
from keyrelay.store.schema import INT32_MAX

__all__ = ["PORTAL_PATHS", "PORTAL_PREFIXES", "create_portal_app"]

log = logging.getLogger("keyrelay.portal")

# The paths the portal answers (the gateway, the management API and the probes keep the others).
PORTAL_PATHS = frozenset(
    {
        "/",
        "/login",
        "/logout",
        "/signup",
        "/forgot-password",
        "/account",
        "/keys",
        "/usage",
        "/usage.csv",
        "/logs",
        "/audit",
    }
)
PORTAL_PREFIXES = ("/verify/", "/reset/", "/account/", "/keys/", "/admin/", "/static/")

_MAX_FIELD_CHARS = 1000  # a form field longer than this is not something a person typed


def _money(micros: int | None) -> str:
    """Micro-dollars as dollars for display: ``$12.34``, or as many decimals as it takes (``$19.99874``)."""
    if micros is None:
        return "unlimited"
    sign = "-" if micros < 0 else ""
    usd = Decimal(abs(micros)) / Decimal(1_000_000)
    if micros % 10_000 == 0:
        return f"{sign}${usd:,.2f}"
    text = f"{usd:,.6f}".rstrip("0")
    return f"{sign}${text}" if len(text.split(".")[1]) >= 2 else f"{sign}${text}0"


class Portal:
    """Renders pages and answers forms; built once per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        base = public_url(settings)
        self.secure = base.startswith("https://")
        self.public_netloc = urlsplit(settings.public_url).netloc if settings.public_url else None
        self.cookie = session_cookie_name(self.secure)
        self.csrf_cookie = SECURE_CSRF_COOKIE if self.secure else CSRF_COOKIE
        self.client_ip = ClientAddress(settings.trusted_proxy_networks, settings.trusted_proxy_header)
        self.env = Environment(
            loader=PackageLoader("keyrelay.portal", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["money"] = _money
        self._runtime: Runtime | None = None
        self.limits: LimitsBackend | None = None  # the gateway's, for the keys' current window counts

    def attach(self, runtime: Runtime) -> None:
        """Serve from ``runtime`` (called once at start-up, before the first request)."""
        self._runtime = runtime

    @property
    def runtime(self) -> Runtime:
        """The runtime of the running process (stores and services)."""
        assert self._runtime is not None, "the portal is used before start-up"
        return self._runtime

    @property
    def signin(self) -> SigninService:
        """The sign-in service of the running process."""
        return self.runtime.signin

    # --- rendering -------------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        *,
        status: int = 200,
        seed: str,
        signed_in: SignedIn | None = None,
        new_seed: bool = False,
        **context: Any,
    ) -> HTMLResponse:
        """The page ``template`` with the CSRF token of ``seed``; sets the ``kr_csrf`` cookie when it is new."""
        html = self.env.get_template(template).render(
            csrf_token=csrf_token(seed),
            me=signed_in.account if signed_in else None,
            signup_open=self.signin.signup_mode == "open",
            **context,
        )
        response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        if new_seed:
            response.set_cookie(
                self.csrf_cookie, seed, httponly=True, samesite="lax", secure=self.secure, path="/", max_age=None
            )
        return response

    def csrf_seed(self, request: Request) -> str | None:
        """The ``kr_csrf`` cookie's value (``__Host-kr_csrf`` over https), if the browser sent one."""
        return request.cookies.get(self.csrf_cookie)

    def form_seed(self, request: Request) -> tuple[str, bool]:
        """The ``kr_csrf`` value of a visitor who is not signed in, and whether it is new."""
        seed = self.csrf_seed(request)
        if seed and 20 <= len(seed) <= 100:
            return seed, False
        return new_csrf_seed(), True

    async def current(self, request: Request) -> tuple[SignedIn | None, str | None]:
        """The live session of the request, and its id."""
        session_id = request.cookies.get(self.cookie)
        if not session_id:
            return None, None
        signed_in = await self.signin.session(session_id)
        return (signed_in, session_id) if signed_in is not None else (None, None)

    def ip(self, request: Request) -> str | None:
        """The client's address as text (behind trusted proxies, the forwarded one), None when unknown."""
        ip = self.client_ip(request.scope)
        return str(ip) if ip else None

    def actor(self, request: Request, signed_in: SignedIn) -> Actor:
        """The signed-in account as the audit log names it, with the client's address."""
        ip = self.client_ip(request.scope)
        account = signed_in.account
        return Actor.account(email=account.email, account_id=account.id, ip=str(ip) if ip else None)

    def redirect(self, to: str) -> RedirectResponse:
        """303 See Other: the browser follows with a GET."""
        return RedirectResponse(to, status_code=303, headers=SECURITY_HEADERS)

    def set_session(self, response: Response, session_id: str) -> None:
        """Put the session id in the cookie (for the absolute lifetime)."""
        response.set_cookie(
            self.cookie,
            session_id,
            httponly=True,
            samesite="lax",
            secure=self.secure,
            path="/",
            max_age=self.settings.session_absolute_s,
        )

    def clear_session(self, response: Response) -> None:
        """Remove the session cookie."""
        response.delete_cookie(self.cookie, path="/", secure=self.secure, httponly=True, samesite="lax")

    async def checked_form(self, request: Request, seed: str | None) -> FormData | None:
        """The form of a POST when it passes both CSRF checks (see ``security.py``), else None."""
        if not same_origin(request, self.public_netloc):
            return None
        try:
            form = await request.form(max_files=0, max_fields=50)
        except (StarletteHTTPException, ValueError, KeyError):
            return None
        sent = form.get("csrf_token")
        return form if token_matches(seed, sent if isinstance(sent, str) else None) else None

    def not_found(
        self,
        request: Request,
        signed_in: SignedIn,
        session_id: str,
        *,
        title: str = "Page not found",
        message: str | None = None,
    ) -> HTMLResponse:
        """The 404 page for a signed-in visitor (also what a member sees of an admin page)."""
        return self.render(
            request,
            "message.html",
            status=404,
            seed=session_id,
            signed_in=signed_in,
            title=title,
            message=message or f"There is no page at {request.url.path} for this request.",
        )

    def forbidden(self, request: Request) -> HTMLResponse:
        """The answer to a POST that failed the CSRF checks: 403, nothing changed."""
        seed, new = self.form_seed(request)
        return self.render(
            request,
            "message.html",
            status=403,
            seed=seed,
            new_seed=new,
            title="Request refused",
            message="This form was sent from another site, or it expired. Go back, reload the page and try again.",
        )


def field_of(form: FormData, name: str) -> str:
    """A text field of a form ('' when missing, a file, or implausibly long)."""
    value = form.get(name)
    if not isinstance(value, str) or len(value) > _MAX_FIELD_CHARS:
        return ""
    return value


def status_of(err: GatewayError) -> int:
    return err.status if 400 <= err.status < 500 else 400


def portal_of(request: Request) -> Portal:
    """The ``Portal`` of the app serving this request."""
    portal: Portal = request.app.state.portal
    return portal


Visit = tuple[Portal, SignedIn, str]
"""A signed-in request: the portal, the session and the session's id (the CSRF seed of its forms)."""
Post = tuple[Portal, SignedIn, str, FormData]
"""A signed-in POST whose form passed the CSRF checks: a ``Visit`` and the form."""


async def visit_of(request: Request) -> Visit | Response:
    """The signed-in visit of ``request``, or the redirect to ``/login`` to send instead.

    An htmx request (a list filtered in place, header ``HX-Request``) is told to load ``/login`` as a whole
    page with ``HX-Redirect``: a 303 would be followed inside the request, and the sign-in page would be
    swapped into the list.
    """
    portal = portal_of(request)
    signed_in, session_id = await portal.current(request)
    if signed_in is None or session_id is None:
        if request.headers.get("hx-request") == "true":
            return Response(status_code=200, headers={**SECURITY_HEADERS, "HX-Redirect": "/login"})
        return portal.redirect("/login")
    return portal, signed_in, session_id


async def _with_form(request: Request, got: Visit | Response) -> Post | Response:
    """``got`` with the POST's CSRF-checked form, or the answer to send instead (``got`` itself, or 403)."""
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    form = await portal.checked_form(request, session_id)
    if form is None:
        return portal.forbidden(request)
    return portal, signed_in, session_id, form


async def post_of(request: Request) -> Post | Response:
    """A signed-in POST with its CSRF-checked form, or the answer to send instead (``/login``, or 403)."""
    return await _with_form(request, await visit_of(request))


async def admin_visit_of(request: Request) -> Visit | Response:
    """The signed-in admin's visit, or the answer for anyone else (``/login``, or 404 as for no page)."""
    got = await visit_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    if not signed_in.account.is_admin:
        return portal.not_found(request, signed_in, session_id)
    return got


async def admin_post_of(request: Request) -> Post | Response:
    """An admin's POST with its CSRF-checked form, or the answer to send instead."""
    return await _with_form(request, await admin_visit_of(request))


def row_id(text: str) -> int | None:
    """``text`` as a row id: 1 to ``INT32_MAX`` in ASCII digits (PostgreSQL's ``integer``), else None."""
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        return None
    value = int(text)
    return value if 1 <= value <= INT32_MAX else None


def row_id_of(request: Request, name: str) -> int | None:
    """The path parameter ``name`` as a row id (see ``row_id``)."""
    return row_id(str(request.path_params[name]))


Handler = Callable[[Request], Awaitable[Response]]


def page_route(router: APIRouter) -> Callable[[str, list[str]], Callable[[Handler], Handler]]:
    """A decorator factory for HTML pages of ``router`` (kept out of any OpenAPI document)."""

    def page(path: str, methods: list[str]) -> Callable[[Handler], Handler]:
        return router.api_route(path, methods=methods, response_class=HTMLResponse, include_in_schema=False)

    return page


async def _gateway_error(request: Request, exc: Exception) -> Response:
    """A GatewayError that escaped a page (a body over the size limit, the store unreachable): its status."""
    assert isinstance(exc, GatewayError)
    portal = portal_of(request)
    seed, new = portal.form_seed(request)
    status = exc.status if exc.status < 500 else 503
    response = portal.render(
        request, "message.html", status=status, seed=seed, new_seed=new, title="Request refused", message=exc.message
    )
    return response


async def _store_error(request: Request, exc: Exception) -> Response:
    """The database failed: 503 with a page saying so (never a stack trace)."""
    # The first path segment only: verify and reset links carry their token in the path.
    log.warning("portal: store error on /%s: %s", request.url.path.split("/")[1][:40], type(exc).__name__)
    portal = portal_of(request)
    seed, new = portal.form_seed(request)
    return portal.render(
        request,
        "message.html",
        status=503,
        seed=seed,
        new_seed=new,
        title="Try again shortly",
        message="The database could not be reached. Nothing was changed.",
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    portal = portal_of(request)
    seed, new = portal.form_seed(request)
    titles = {404: "Page not found", 405: "Method not allowed"}
    response = portal.render(
        request,
        "message.html",
        status=exc.status_code,
        seed=seed,
        new_seed=new,
        title=titles.get(exc.status_code, "Request refused"),
        message={
            404: f"There is no page at {request.url.path}.",
            405: f"{request.url.path} does not accept {request.method}.",
        }.get(exc.status_code, "The request could not be read. Go back and try again."),
    )
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def create_portal_app(settings: Settings) -> FastAPI:
    """The portal as an ASGI app; ``app.state.portal.runtime`` is set at start-up."""
    # They import this module's helpers.
    from keyrelay.portal import (
        account_pages,
        admin_groups,
        admin_pages,
        audit_pages,
        key_pages,
        management_keys,
        signin_pages,
        usage_pages,
    )

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.portal = Portal(settings)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.include_router(signin_pages.router)
    app.include_router(account_pages.router)
    app.include_router(management_keys.router)
    app.include_router(key_pages.router)
    app.include_router(admin_pages.router)
    app.include_router(admin_groups.router)
    app.include_router(audit_pages.router)
    app.include_router(usage_pages.router)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(SQLAlchemyError, _store_error)
    return app
