"""Structured logging: one line per request, request-id context, and redaction of key material."""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# Anything shaped like a keyrelay key, or a bearer token, is masked before a line is written.
_SECRET = re.compile(r"(kr_(?:live|mgmt)_)[A-Za-z0-9_-]{8,}|(Bearer\s+)[^\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask key material in free text."""
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "[REDACTED]", text)


class RedactingFormatter(logging.Formatter):
    """Readable one-line format for development, with secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        """Format, then redact."""
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line for production, with secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise the record and any ``extra`` fields."""
        data: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            data["request_id"] = rid
        for name, value in record.__dict__.items():
            if name.startswith("kr_"):
                data[name[3:]] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(data, default=str).decode())


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger once at start-up."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "aiosqlite", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
