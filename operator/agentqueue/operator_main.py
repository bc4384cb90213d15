"""Start the kopf operator with explicit settings."""

from __future__ import annotations

import logging
import random

import kopf

from . import gctune, logs, tracing
from .config import OperatorConfig


async def run_operator(
    config: OperatorConfig,
    *,
    peering: str | None = None,
    liveness: str | None = None,
    log_level: str = "INFO",
    log_format: str = "json",
) -> None:
    logs.configure(log_level, log_format)
    # Before kopf starts: its aiohttp sessions are instrumented when they are created.
    tracing.setup()
    gctune.tune()
    from . import handlers  # noqa: F401  (registers the handlers)

    logging.getLogger("agentqueue").info(
        "starting operator",
        extra={"namespaces": list(config.namespaces) or "all", "peering": peering or "standalone"},
    )
    # kopf keeps one replica active only when replicas have distinct priorities;
    # with equal ones both pause. A random priority per process makes them distinct.
    priority = random.SystemRandom().randint(1, 2**31 - 1) if peering else None
    try:
        await kopf.operator(
            priority=priority,
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            standalone=peering is None,
            peering_name=peering,
            liveness_endpoint=liveness or None,
            memo=kopf.Memo(config=config),
        )
    finally:
        tracing.shutdown()  # export the spans still buffered
