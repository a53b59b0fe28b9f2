"""The management API's OpenAPI document: the error answers each operation declares, and nothing else.

FastAPI declares a 422 with its own validation body on every operation that takes input; keyrelay
answers such input with 400 and the shared error body, so that entry is replaced by the statuses the
API really returns (each with ``ErrorBody``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from keyrelay.admin.schemas import ErrorBody

_WHY = {
    400: "The input is invalid; `param` names the field.",
    401: "The management key is missing, unknown, revoked, disabled or expired.",
    403: "The key may not do this (not an admin key), or its account is inactive.",
    404: "No such resource (or not visible to this key).",
    409: "The request conflicts with the current state.",
    413: "The request body is larger than KEYRELAY_MAX_BODY_BYTES.",
    503: "The store is unreachable; retry shortly.",
}
# Every operation: the key is checked (401), its account may be inactive (403), the store may be down
# (503), and any request with a body over the limit is refused before routing (413).
COMMON_ERRORS = (401, 403, 413, 503)
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entry declaring these error statuses with the shared error body."""
    return {status: {"model": ErrorBody, "description": _WHY[status]} for status in statuses}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` build (once) the document without FastAPI's 422 answers."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for operations in doc.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            components = doc.setdefault("components", {})
            for name in _FASTAPI_VALIDATION:
                components.get("schemas", {}).pop(name, None)
            # Every operation needs a management key (require_manager); /openapi.json itself is not listed.
            components["securitySchemes"] = {
                "managementKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A management key: 'Authorization: Bearer kr_mgmt_...'.",
                }
            }
            doc["security"] = [{"managementKey": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
