"""The closed set of client-facing error types and the exception that carries them.

Each ErrorType holds its HTTP status and wire type string in one table; handlers raise
``GatewayError`` and only the protocol edge turns it into a response body.
"""

from __future__ import annotations

from enum import Enum


class ErrorType(Enum):
    """Every error a client can see, with its HTTP status and default message."""

    INVALID_REQUEST = (400, "The request is malformed.")
    INVALID_API_KEY = (401, "The API key is missing, malformed, unknown or revoked.")
    API_KEY_DISABLED = (401, "This API key has been disabled.")
    API_KEY_EXPIRED = (401, "This API key has expired.")
    INSUFFICIENT_BALANCE = (402, "The account balance is exhausted.")
    USER_INACTIVE = (403, "The account that owns this key is inactive.")
    ACCESS_DENIED = (403, "This key is not allowed to make this request.")
    FORBIDDEN = (403, "This key may not perform this operation.")
    NOT_FOUND = (404, "Not found.")
    MODEL_NOT_FOUND = (404, "The model does not exist.")
    METHOD_NOT_ALLOWED = (405, "Method not allowed.")
    CONFLICT = (409, "The request conflicts with the current state.")
    PAYLOAD_TOO_LARGE = (413, "The request body is too large.")
    API_KEY_QUOTA_EXHAUSTED = (429, "The key's spend limit for the current window is used up.")
    RATE_LIMIT_EXCEEDED = (429, "A request rate window of this key is full.")
    UPSTREAM_RATE_LIMITED = (429, "The upstream provider is rate limiting requests.")
    INTERNAL_ERROR = (500, "Internal error.")
    UPSTREAM_ERROR = (502, "The upstream provider failed.")
    SERVICE_UNAVAILABLE = (503, "The service is temporarily unavailable.")
    LIMITS_UNAVAILABLE = (503, "The limits backend is unavailable.")
    UPSTREAM_TIMEOUT = (504, "The upstream provider timed out.")

    @property
    def status(self) -> int:
        """HTTP status code for this error type."""
        return self.value[0]

    @property
    def default_message(self) -> str:
        """A human sentence used when the raiser gives no detail."""
        return self.value[1]


class GatewayError(Exception):
    """An error with a closed type, a client-safe message and optional structured context.

    Args:
        error_type: The client-facing type; fixes the HTTP status.
        message: Client-safe text. Never include secrets or upstream credentials.
        field: The request field at fault, for validation errors.
        limit_source: Which limit tripped (``key``, ``account`` or ``group``) for quota errors.
        retry_after: Seconds after which a retry may succeed (sets ``Retry-After``).
        status: Overrides the status for the few types that span several (502/503 upstream).
    """

    def __init__(
        self,
        error_type: ErrorType,
        message: str | None = None,
        *,
        field: str | None = None,
        limit_source: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        self.error_type = error_type
        self.message = message or error_type.default_message
        self.field = field
        self.limit_source = limit_source
        self.retry_after = retry_after
        self.status = status or error_type.status
        super().__init__(self.message)

    def to_body(self, request_id: str | None = None) -> dict[str, object]:
        """The JSON error body shared by the LLM endpoints and the management API."""
        err: dict[str, object] = {
            "message": self.message,
            "type": self.error_type.name,
            "code": self.status,
        }
        if self.field is not None:
            err["param"] = self.field
        if self.limit_source is not None:
            err["metadata"] = {"limit_source": self.limit_source}
        if request_id is not None:
            err["request_id"] = request_id
        return {"error": err}
