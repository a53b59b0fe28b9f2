"""Structured logging: one line per request, request-id context, and redaction of key material."""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# Anything shaped like a keyrelay key, a bearer token or a provider key is masked before a line is written
# (and in upstream text relayed to clients): OpenAI and Anthropic ``sk-``, Groq ``gsk_``, xAI ``xai-``,
# Google ``AIza`` keys, as their consoles issue them.
_SECRET = re.compile(
    r"(kr_(?:live|mgmt)_)[A-Za-z0-9_-]{8,}"
    r"|((?:Bearer|Basic)\s+)[^\s\"',}]+"
    r"|\b((?:sk|rk|pk|gsk|xai)[-_])[A-Za-z0-9_*.\-]{8,}"
    r"|\b(AIza)[0-9A-Za-z_\-]{20,}",
    re.IGNORECASE,
)


def _mask(match: re.Match[str]) -> str:
    return next(g for g in match.groups() if g is not None) + "[REDACTED]"


def redact(text: str) -> str:
    """Mask key material in free text (keyrelay keys, bearer tokens, provider-shaped keys)."""
    return _SECRET.sub(_mask, text)


class SecretScrubber:
    """Removes known provider secrets, and anything shaped like a key, from text an upstream sent.

    An upstream may echo the credential keyrelay sent it (``Incorrect API key provided: Bearer sk-...``);
    that text must reach neither the client nor the logs. Besides the exact secrets, a run that starts
    with the first 12 characters of one (a partly masked echo) is removed.
    """

    def __init__(self, secrets: list[str]) -> None:
        known = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)
        parts = [re.escape(s) for s in known] + [re.escape(s[:12]) + r"[^\s\"',}]*" for s in known if len(s) > 12]
        self._known = re.compile("|".join(parts)) if parts else None
        self._known_bytes = re.compile("|".join(parts).encode()) if parts else None
        self._probes = tuple(s[:12].encode() for s in known)

    def known(self, data: bytes) -> bytes:
        """``data`` without the known provider secrets; the same object when none occurs.

        For answers relayed as they are (model output, stream events): text merely shaped like a key
        stays, since a model may well write ``sk-...`` in an answer. The common case costs one substring
        search per secret.
        """
        if self._known_bytes is None or not any(probe in data for probe in self._probes):
            return data
        return self._known_bytes.sub(b"[REDACTED]", data)

    def text(self, text: str) -> str:
        """``text`` without secrets."""
        if self._known is not None:
            text = self._known.sub("[REDACTED]", text)
        return redact(text)

    def data(self, data: bytes) -> bytes:
        """UTF-8 ``data`` without secrets (the same bytes when there is none)."""
        text = data.decode("utf-8", "replace")
        clean = self.text(text)
        return data if clean == text else clean.encode()


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
