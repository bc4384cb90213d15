"""A Redis configured to lose data is reported on its queues; credentials Secrets
deleted by hand come back; a drift check mostly makes no Kubernetes call."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agentqueue_devtools.redisserver import RedisServer

from .operator_fixtures import condition, get_obj, wait_for, wait_ready, wait_reason
from .test_drills_redis import admin_secret
from .test_operator_queue import apply, client_for, queue, secret_values


def test_eviction_policy_is_reported_until_fixed(operator: Any, kubectl: Any,
                                                 namespace: str, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", extra_args=[
        "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]).start()
    try:
        admin_secret(kubectl, namespace, "evicting", server)
        apply(kubectl, namespace, queue("ev", redis={"secretRef": {"name": "evicting"}}))
        wait_ready(kubectl, "agentqueues", "ev", namespace)
        obj = wait_reason(kubectl, "agentqueues", "ev", namespace, "EvictionPolicy",
                          type_="RedisConfigRisk")
        cond = condition(obj, "RedisConfigRisk") or {}
        assert cond["status"] == "True"
        assert "allkeys-lru" in cond["message"] and "noeviction" in cond["message"]
        assert condition(obj, "Ready")["status"] == "True"  # a warning, not a failure
        events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
        assert "EvictionPolicy" in events
        assert server.admin_password not in cond["message"] + events

        server.client().config_set("maxmemory-policy", "noeviction")
        obj = wait_reason(kubectl, "agentqueues", "ev", namespace, "NoKnownRisk",
                          type_="RedisConfigRisk")
        assert (condition(obj, "RedisConfigRisk") or {})["status"] == "False"
    finally:
        server.stop()


def test_aof_with_default_user_off_is_reported(operator: Any, kubectl: Any, namespace: str,
                                               tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", aof=True, default_user="off").start()
    try:
        admin_secret(kubectl, namespace, "aofoff", server)
        apply(kubectl, namespace, queue("aq", redis={"secretRef": {"name": "aofoff"}}))
        obj = wait_reason(kubectl, "agentqueues", "aq", namespace, "AOFWithDefaultUserOff",
                          type_="RedisConfigRisk")
        assert "14541" in (condition(obj, "RedisConfigRisk") or {})["message"]
    finally:
        server.stop()


def test_deleted_credentials_secret_is_restored(operator: Any, kubectl: Any,
                                                namespace: str) -> None:
    """Between Secret re-reads (10 drift intervals: 20 s here) the keeper restores ACL
    users from the hashes it saw; a Secret deleted by hand comes back at the next re-read
    (bound: 20 s + one drift interval + 2 s margin) with a new password, since the
    operator keeps only hashes (tests/test_credentials_rotation.py checks the old one is
    then refused)."""
    apply(kubectl, namespace, queue("creds", access={"consumers": [{"name": "w"}]}))
    wait_ready(kubectl, "agentqueues", "creds", namespace)
    before = secret_values(kubectl, namespace, "creds.w")
    t0 = time.monotonic()
    kubectl("delete", "secret", "creds.w", "-n", namespace)
    wait_for(lambda: get_obj(kubectl, "secret", "creds.w", namespace), timeout=24,
             what="Secret creds.w re-created")
    after = secret_values(kubectl, namespace, "creds.w")
    # The password is new (the old one was only in the deleted Secret) and works.
    assert after["REDIS_PASSWORD"] != before["REDIS_PASSWORD"]
    assert client_for(after).ping()
    assert after["REDIS_USERNAME"] == before["REDIS_USERNAME"]
    print(f"Secret restored {time.monotonic() - t0:.1f}s after its deletion")
