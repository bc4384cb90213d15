"""The operator's own settings, from flags and environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .planning.address_policy import AddressPolicy


@dataclass(frozen=True)
class DefaultRedis:
    """The connection used by queues that do not name their own (spec.redis)."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None

    def secret_data(self) -> dict[str, bytes]:
        data = {"url": self.url.encode()}
        if self.username:
            data["username"] = self.username.encode()
        if self.password:
            data["password"] = self.password.encode()
        if self.ca_file:
            with open(self.ca_file, "rb") as fh:
                data["ca.crt"] = fh.read()
        return data


@dataclass(frozen=True)
class OperatorConfig:
    default_redis: DefaultRedis | None = None
    namespaces: tuple[str, ...] = ()
    drift_interval: float = 30.0
    run_id_check_interval: float = 2.0
    status_min_interval: float = 5.0
    metrics_port: int | None = 9090
    metrics_host: str = "0.0.0.0"
    # Bounds on what one tenant's objects may cost the shared operator and Redis
    # (docs/security.md; chart values operator.*).
    min_poll_interval: float = 0.2
    """Floor of every ConsumerGroup's pollInterval (the CRD's own floor is 200ms)."""
    max_schema_bytes: int = 32 * 1024
    """Largest spec.schema, as compact JSON (it is copied to every partition)."""
    peering_lifetime: int = 15
    """Seconds a replica's kopf peering record stays valid: how long a crashed active
    replica (no clean stop) holds the standby back. kopf's own default is 60."""
    deletion_timeout: float = 120.0
    """How long a deleted queue waits for an unreachable Redis before it is released."""
    address_policy: AddressPolicy = field(default_factory=AddressPolicy)
    """Which Redis addresses tenants' Secrets may name (planning/address_policy)."""


def default_redis_from_env() -> DefaultRedis | None:
    url = os.environ.get("AGENTQUEUE_REDIS_URL") or os.environ.get("REDIS_URL")
    if not url:
        return None
    return DefaultRedis(
        url=url,
        username=os.environ.get("AGENTQUEUE_REDIS_USERNAME") or os.environ.get("REDIS_USERNAME"),
        password=os.environ.get("AGENTQUEUE_REDIS_PASSWORD") or os.environ.get("REDIS_PASSWORD"),
        ca_file=os.environ.get("AGENTQUEUE_REDIS_CA_FILE"),
    )
