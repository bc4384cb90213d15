"""Logging: kopf's JSON format carries the object's namespace/name on every per-object line."""

from __future__ import annotations

import logging

import kopf


def configure(level: str = "INFO", fmt: str = "json") -> None:
    kopf.configure(
        debug=level.upper() == "DEBUG",
        verbose=level.upper() in ("DEBUG", "INFO"),
        quiet=level.upper() in ("WARNING", "ERROR"),
        log_format=kopf.LogFormat.JSON if fmt == "json" else kopf.LogFormat.FULL,
        log_refkey="object",
    )
    # Client libraries are chatty at DEBUG and could echo request bodies: keep them quiet.
    for noisy in ("kubernetes", "urllib3", "asyncio", "redis"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A log line never carries a whole object: kopf's DEBUG lines print bodies, and a
    # tenant's object may be a megabyte (spec.schema). Cap every message.
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _Cap) for f in handler.filters):
            handler.addFilter(_Cap())


MAX_LOG_MESSAGE = 2000
"""Characters of a log message kept; the rest is cut, and the line says how much."""


class _Cap(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > MAX_LOG_MESSAGE:
            record.msg = (f"{message[:MAX_LOG_MESSAGE]}... "
                          f"({len(message) - MAX_LOG_MESSAGE} characters cut)")
            record.args = ()
        return True
