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
