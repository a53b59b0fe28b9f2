"""The management API application: routers, OpenAPI document and the JSON error mapping.

Every answer is the shared JSON error body on failure: unknown paths (404 naming the path), known paths
with another method (405 with ``Allow``), invalid input (400 naming the field), store failures (503).
No error closes the client's keep-alive connection.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from keyrelay import __version__
from keyrelay.admin import accounts, audit, keys, providers, usage
from keyrelay.admin.openapi import install_openapi
from keyrelay.asgi import Receive, Scope, Send, send_error
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.logs import request_id_var

log = logging.getLogger("keyrelay.admin")


def error_response(err: GatewayError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The JSON error answer for a GatewayError, with Retry-After when known."""
    out = dict(headers or {})
    if err.retry_after is not None:
        out["retry-after"] = str(max(1, math.ceil(err.retry_after)))
    return JSONResponse(err.to_body(request_id_var.get()), status_code=err.status, headers=out or None)


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _validation_error(exc: RequestValidationError, content_type: str | None = None) -> GatewayError:
    first = exc.errors()[0]
    raw_loc = tuple(first.get("loc", ()))
    loc = [str(part) for part in raw_loc if part not in ("body", "query", "path")]
    field = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return GatewayError(ErrorType.INVALID_REQUEST, "The request body is not valid JSON.", field="body")
    if first.get("type") == "missing" and not loc:
        return GatewayError(ErrorType.INVALID_REQUEST, "A JSON request body is required.", field="body")
    if raw_loc == ("body",):
        # The body as a whole is wrong: not sent as JSON, or JSON that is not an object.
        if not _is_json(content_type):
            message = "Send the request body as JSON with 'Content-Type: application/json'."
        else:
            message = "The request body must be a JSON object."
        return GatewayError(ErrorType.INVALID_REQUEST, message, field="body")
    if first.get("type") == "extra_forbidden":
        return GatewayError(ErrorType.INVALID_REQUEST, f"{field}: unknown field", field=field)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return GatewayError(ErrorType.INVALID_REQUEST, f"{field}: {message}" if field else message, field=field)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route serves at the request's path, sorted (for the ``Allow`` header).

    Asks each route whether it would take the request with each method: FastAPI makes one route per
    method (so the 405 Starlette raises names only the first route's methods) and nests included routers.
    """
    allowed = []
    for method in _METHODS:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return allowed


def _routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    path = request.url.path
    if exc.status_code == 404:
        return error_response(GatewayError(ErrorType.NOT_FOUND, f"No route for {path}."))
    if exc.status_code == 405:
        allow = allowed_methods(request.app.router.routes, request.scope)
        message = f"{request.method} is not allowed on {path}; use {', '.join(allow)}."
        return error_response(GatewayError(ErrorType.METHOD_NOT_ALLOWED, message), headers={"allow": ", ".join(allow)})
    if exc.status_code == 400:
        # FastAPI's answer to a body its JSON parser gave up on (invalid UTF-8, nesting too deep).
        return error_response(
            GatewayError(ErrorType.INVALID_REQUEST, "The request body is not valid JSON.", field="body")
        )
    err = GatewayError(ErrorType.INVALID_REQUEST, str(exc.detail), status=exc.status_code)
    return error_response(err, headers=exc.headers)


class _AnswerEveryError:
    """ASGI middleware: an unexpected exception becomes a 500 JSON answer and goes no further.

    Starlette's outermost ServerErrorMiddleware answers and then re-raises, which makes uvicorn drop the
    keep-alive connection; this sits inside it, so an unexpected error is logged once and the connection
    stays usable.
    """

    def __init__(self, app: object) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: dict[str, object] | object) -> None:
            nonlocal started
            if isinstance(message, dict) and message.get("type") == "http.response.start":
                started = True
            await send(message)  # type: ignore[arg-type]

        try:
            await self.app(scope, receive, tracking_send)  # type: ignore[operator]
        except Exception as exc:
            log.error("unhandled error in management API", exc_info=exc)
            if started or scope["type"] != "http":
                raise
            await send_error(send, GatewayError(ErrorType.INTERNAL_ERROR), request_id_var.get())


def create_admin_app() -> FastAPI:
    """The FastAPI app serving /api/v1 and /openapi.json; ``state.runtime`` is set at start-up."""
    app = FastAPI(
        title="keyrelay management API",
        version=__version__,
        description="Create, scope, rotate and revoke keyrelay API keys; manage accounts and groups.",
        docs_url="/api/docs",
        redoc_url=None,
        # No 307 to the slash-less path (an empty body, and an absolute http:// Location behind TLS): a path
        # with a trailing slash is an unknown path, answered with the JSON 404 that names it.
        redirect_slashes=False,
    )
    app.include_router(keys.router)
    app.include_router(accounts.router)
    app.include_router(usage.router)
    app.include_router(audit.router)
    app.include_router(providers.router)
    install_openapi(app)
    app.add_middleware(_AnswerEveryError)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(exc, request.headers.get("content-type")))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, GatewayError):
            # FastAPI wraps errors raised while reading the body (e.g. the size limit on a chunked
            # upload) in a generic 400; answer with the original error instead.
            return error_response(exc.__cause__)
        return _routing_error(request, exc)

    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(OSError)
    async def _store_down(_: Request, exc: Exception) -> JSONResponse:
        # A store failure (unreachable, timed out, refused the statement) is the service being
        # unavailable, never a client error and never a crash. The message names no value.
        cause = getattr(exc, "orig", None) or exc
        log.warning("store error on the management API: %s: %s", type(cause).__name__, str(cause).split("\n")[0][:200])
        return error_response(
            GatewayError(ErrorType.SERVICE_UNAVAILABLE, "The store is unreachable; try again shortly.")
        )

    return app
