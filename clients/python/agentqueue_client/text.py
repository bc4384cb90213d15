"""The one bytes → str conversion of Redis replies (client and operator)."""

from __future__ import annotations

from typing import Any


def as_text(value: Any, errors: str = "replace") -> str:
    """``value`` as a str: bytes decoded as UTF-8 (bytes that are not UTF-8 are replaced
    by U+FFFD, or raise ``UnicodeDecodeError`` with ``errors="strict"``), anything else
    through ``str()``."""
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)
