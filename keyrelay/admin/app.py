"""The management API application: routers, OpenAPI document and the JSON error mapping."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyrelay import __version__
from keyrelay.admin import accounts, keys, usage
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.logs import request_id_var

log = logging.getLogger("keyrelay.admin")


def error_response(err: GatewayError) -> JSONResponse:
    """The JSON error answer for a GatewayError, with Retry-After when known."""
    headers = {"retry-after": str(max(1, math.ceil(err.retry_after)))} if err.retry_after is not None else None
    return JSONResponse(err.to_body(request_id_var.get()), status_code=err.status, headers=headers)


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


def create_admin_app() -> FastAPI:
    """The FastAPI app serving /api/v1 and /openapi.json; ``state.runtime`` is set at start-up."""
    app = FastAPI(
        title="keyrelay management API",
        version=__version__,
        description="Create, scope, rotate and revoke keyrelay API keys; manage accounts and groups.",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.include_router(keys.router)
    app.include_router(accounts.router)
    app.include_router(usage.router)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(exc, request.headers.get("content-type")))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, GatewayError):
            # FastAPI wraps errors raised while reading the body (e.g. the size limit on a chunked
            # upload) in a generic 400; answer with the original error instead.
            return error_response(exc.__cause__)
        kind = {404: ErrorType.NOT_FOUND, 405: ErrorType.METHOD_NOT_ALLOWED}.get(exc.status_code)
        err = GatewayError(kind or ErrorType.INVALID_REQUEST, str(exc.detail), status=exc.status_code)
        return error_response(err)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in management API", exc_info=exc)
        return error_response(GatewayError(ErrorType.INTERNAL_ERROR))

    return app
