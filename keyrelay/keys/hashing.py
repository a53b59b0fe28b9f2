"""The lookup hash of a key: SHA-256 of the plaintext, hex-encoded. Only this is ever stored."""

from __future__ import annotations

import hashlib


def key_hash(plaintext: str) -> str:
    """SHA-256 hex digest of a key's plaintext."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()
