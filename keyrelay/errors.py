"""The closed set of client-facing error types and the exception that carries them.

Each ErrorType holds its HTTP status and wire type string in one table; handlers raise
``GatewayError`` and only the protocol edge turns it into a response body.
"""

from __future__ import annotations

from enum import Enum


class ErrorType(Enum):
    """Every error a client can see: HTTP status, ``error.code`` string and default message.

    ``code`` is OpenAI's own error code where one means the same thing (``invalid_api_key``,
    ``insufficient_quota``, ``rate_limit_exceeded``, ``model_not_found``, ``account_deactivated``;
    https://platform.openai.com/docs/guides/error-codes), so that OpenAI-compatible clients and user
    code that match on it keep working; otherwise it is a lowercase name of the same style. The
    enum member's name is keyrelay's own taxonomy, sent as ``error.type``.
    """

    INVALID_REQUEST = (400, "invalid_request", "The request is malformed.")
    INVALID_API_KEY = (401, "invalid_api_key", "The API key is missing, malformed, unknown or revoked.")
    API_KEY_DISABLED = (401, "invalid_api_key", "This API key has been disabled.")
    API_KEY_EXPIRED = (401, "invalid_api_key", "This API key has expired.")
    INSUFFICIENT_BALANCE = (402, "insufficient_quota", "The account balance is exhausted.")
    USER_INACTIVE = (403, "account_deactivated", "The account that owns this key is inactive.")
    ACCESS_DENIED = (403, "access_denied", "This key is not allowed to make this request.")
    FORBIDDEN = (403, "forbidden", "This key may not perform this operation.")
    NOT_FOUND = (404, "not_found", "Not found.")
    MODEL_NOT_FOUND = (404, "model_not_found", "The model does not exist.")
    METHOD_NOT_ALLOWED = (405, "method_not_allowed", "Method not allowed.")
    CONFLICT = (409, "conflict", "The request conflicts with the current state.")
    REQUEST_TIMEOUT = (408, "request_timeout", "The request headers did not arrive in time.")
    PAYLOAD_TOO_LARGE = (413, "request_too_large", "The request body is too large.")
    HEADERS_TOO_LARGE = (431, "request_header_fields_too_large", "The request headers are too large.")
    API_KEY_QUOTA_EXHAUSTED = (429, "insufficient_quota", "The key's spend limit for the current window is used up.")
    RATE_LIMIT_EXCEEDED = (429, "rate_limit_exceeded", "A request rate window of this key is full.")
    UPSTREAM_RATE_LIMITED = (429, "rate_limit_exceeded", "The upstream provider is rate limiting requests.")
    INTERNAL_ERROR = (500, "internal_error", "Internal error.")
    UPSTREAM_ERROR = (502, "upstream_error", "The upstream provider failed.")
    SERVICE_UNAVAILABLE = (503, "service_unavailable", "The service is temporarily unavailable.")
    LIMITS_UNAVAILABLE = (503, "service_unavailable", "The limits backend is unavailable.")
    UPSTREAM_TIMEOUT = (504, "upstream_timeout", "The upstream provider timed out.")

    @property
    def status(self) -> int:
        """HTTP status code for this error type."""
        return self.value[0]

    @property
    def code(self) -> str:
        """The ``error.code`` string (OpenAI's code where one fits)."""
        return self.value[1]

    @property
    def default_message(self) -> str:
        """A human sentence used when the raiser gives no detail."""
        return self.value[2]


class GatewayError(Exception):
    """An error with a closed type, a client-safe message and optional structured context.

    Args:
        error_type: The client-facing type; fixes the HTTP status.
        message: Client-safe text. Never include secrets or upstream credentials.
        field: The request field at fault, for validation errors.
        limit_source: Which limit tripped (``key``, ``account`` or ``group``) for quota errors.
        retry_after: Seconds after which a retry may succeed (sets ``Retry-After``).
        status: Overrides the status for the few types that span several (502/503 upstream).
        code: Overrides ``error.code``, e.g. with an upstream's own code (``context_length_exceeded``).
        allow: The methods a path accepts, for METHOD_NOT_ALLOWED (sent as ``Allow``, RFC 9110 §15.5.6).
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
        code: str | None = None,
        allow: str | None = None,
    ) -> None:
        self.error_type = error_type
        self.message = message or error_type.default_message
        self.field = field
        self.limit_source = limit_source
        self.retry_after = retry_after
        self.status = status or error_type.status
        self.code = code or error_type.code
        self.allow = allow
        super().__init__(self.message)

    def to_body(self, request_id: str | None = None) -> dict[str, object]:
        """The JSON error body shared by the LLM endpoints and the management API."""
        err: dict[str, object] = {
            "message": self.message,
            "type": self.error_type.name,
            "code": self.code,
        }
        if self.field is not None:
            err["param"] = self.field
        if self.limit_source is not None:
            err["metadata"] = {"limit_source": self.limit_source}
        if request_id is not None:
            err["request_id"] = request_id
        return {"error": err}
