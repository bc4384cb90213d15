"""Operator start-up and shutdown: settings set explicitly, gateways kept in memo."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from .. import tracing
from ..config import OperatorConfig, default_redis_from_env
from ..kube import KubeGateway, login
from ..runtime import Runtime

GROUP_PREFIX = "agentqueue.io"


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger,
                  **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP_PREFIX}/finalizer"
    # Progress and diff-base live in annotations: the status schema is structural and
    # would prune kopf's own status fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP_PREFIX)
    # spec.schema stays out of the diff-base annotation: a large schema (bounded by the
    # operator, not by the CRD, as CEL cannot measure it) would push the annotation past
    # Kubernetes' 256 KiB limit and kopf would retry writing it forever. Schema-only
    # changes reach the reconciler through handlers/queues.schema_changed.
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP_PREFIX, key="last-handled-configuration", ignored_fields=["spec.schema"])
    # Stalled watches are a known kopf pitfall: make the server close them regularly.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "agentqueue-operator"
    settings.posting.event_name_prefix = "agentqueue-"
    settings.execution.max_workers = 32
    settings.peering.name = settings.peering.name or "agentqueue"

    config: OperatorConfig = getattr(memo, "config", None) or OperatorConfig(
        default_redis=default_redis_from_env())
    # kopf refreshes the record 5-10 s before it expires (at least every second); a standby
    # resumes once the active replica's record has expired.
    settings.peering.lifetime = config.peering_lifetime
    # Done already by `agentqueue run` (a no-op then); this covers `kopf run`.
    tracing.setup()
    info = await asyncio.to_thread(login)
    memo.runtime = Runtime.create(config, KubeGateway(info, relogin=login))
    await memo.runtime.start()
    logger.info("agentqueue operator started",
                extra={"default_redis": bool(config.default_redis),
                       "drift_interval_s": config.drift_interval})


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.close()
