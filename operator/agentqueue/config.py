"""The operator's own settings, from flags and environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


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
