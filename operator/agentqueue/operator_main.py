"""Start the kopf operator with explicit settings."""

from __future__ import annotations

import logging

import kopf

from . import logs
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
    from . import handlers  # noqa: F401  (registers the handlers)

    logging.getLogger("agentqueue").info(
        "starting operator",
        extra={"namespaces": list(config.namespaces) or "all", "peering": peering or "standalone"},
    )
    await kopf.operator(
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        standalone=peering is None,
        peering_name=peering,
        liveness_endpoint=liveness or None,
        memo=kopf.Memo(config=config),
    )
