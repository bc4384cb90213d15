"""The operator against Redis that restarts, speaks TLS, or is a 3-node cluster."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agentqueue_devtools.redisserver import RedisServer

from .operator_fixtures import wait_for, wait_ready
from .test_operator_groups import group
from .test_operator_queue import ACCESS, apply, client_for, queue, secret_values

pytestmark = pytest.mark.k8s


def admin_secret(kubectl: Any, namespace: str, name: str, data: dict[str, bytes]) -> None:
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
    import json
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "volatile").start()  # no persistence
    yield server
    server.stop()


def test_redis_restart_without_persistence_is_repaired(operator: Any, kubectl: Any,
                                                       namespace: str,
                                                       volatile_redis: RedisServer) -> None:
    admin_secret(kubectl, namespace, "volatile", volatile_redis.secret_data())
    apply(kubectl, namespace, queue("vq", partitions=2, access=ACCESS,
                                    redis={"secretRef": {"name": "volatile"}}))
    wait_ready(kubectl, "agentqueues", "vq", namespace)
    apply(kubectl, namespace, group("vg", queueRef={"name": "vq"}))
    wait_ready(kubectl, "consumergroups", "vg", namespace)
    creds = secret_values(kubectl, namespace, "vq.worker")
    assert "REDIS_CLUSTER" not in creds  # a standalone server

    volatile_redis.restart()
    t0 = time.monotonic()
    r = volatile_redis.client(decode_responses=True)
    assert r.exists(f"aq:{{{namespace}/vq/0}}:q") == 0  # really gone

    def restored() -> bool:
        try:
            return bool(
                all(r.exists(f"aq:{{{namespace}/vq/{p}}}:q") for p in (0, 1))
                and all(r.xinfo_groups(f"aq:{{{namespace}/vq/{p}}}:q") for p in (0, 1))
                and r.acl_getuser(f"aq.{namespace}.vq.worker")
                and r.function_list(library="agentqueue"))
        except redis.ResponseError:
            return False
    wait_for(restored, timeout=15, what="keys, groups, users and functions restored")
    elapsed = time.monotonic() - t0
    print(f"restored {elapsed:.2f}s after the restart (drift interval 2s)")
    assert elapsed < 2 * 2 + 3  # two drift intervals, plus slack for a loaded CI machine
    assert client_for(creds).ping()  # the old Secret still works
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "DriftRepaired" in events


def test_tls_redis(operator: Any, kubectl: Any, namespace: str, tmp_path: Path) -> None:
    with RedisServer(tmp_path / "tls", tls=True) as server:
        admin_secret(kubectl, namespace, "tls", server.secret_data())
        apply(kubectl, namespace, queue("tq", access=ACCESS,
                                        redis={"secretRef": {"name": "tls"}}))
        wait_ready(kubectl, "agentqueues", "tq", namespace)
        creds = secret_values(kubectl, namespace, "tq.intake")
        assert creds["REDIS_URL"].startswith("rediss://")
        assert "BEGIN CERTIFICATE" in creds["REDIS_CA_CERT"]
        ca = tmp_path / "ca.pem"
        ca.write_text(creds["REDIS_CA_CERT"])
        client = redis.Redis.from_url(creds["REDIS_URL"], username=creds["REDIS_USERNAME"],
                                      password=creds["REDIS_PASSWORD"], ssl_ca_certs=str(ca))
        assert client.ping()
        plain = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
        with pytest.raises(redis.ConnectionError):
            plain.ping()  # plain TCP is refused


@pytest.mark.cluster
def test_redis_cluster(operator: Any, kubectl: Any, namespace: str, redis_cluster: Any) -> None:
    admin_secret(kubectl, namespace, "cluster", redis_cluster.secret_data())
    apply(kubectl, namespace, queue("cq", partitions=4, access=ACCESS,
                                    redis={"secretRef": {"name": "cluster"}}))
    wait_ready(kubectl, "agentqueues", "cq", namespace, timeout=60)
    creds = secret_values(kubectl, namespace, "cq.intake")
    assert creds["REDIS_CLUSTER"] == "1"  # the SDK connects with a cluster client
    nodes = [redis.Redis(host="127.0.0.1", port=n.port, username=redis_cluster.admin_username,
                         password=redis_cluster.admin_password, decode_responses=True)
             for n in redis_cluster.nodes]
    for node in nodes:  # users and functions on every primary
        assert node.acl_getuser(f"aq.{namespace}.cq.intake")
        assert node.function_list(library="agentqueue")
    rc = redis.RedisCluster.from_url(creds["REDIS_URL"], username=creds["REDIS_USERNAME"],
                                     password=creds["REDIS_PASSWORD"])
    for p in range(4):  # the producer can write each partition, wherever its slot lives
        key = f"aq:{{{namespace}/cq/{p}}}:q"
        assert rc.execute_command("FCALL", "aq_enqueue", 1, key, 0, "d", "x")
    apply(kubectl, namespace, group("cg1", queueRef={"name": "cq"}))
    wait_ready(kubectl, "consumergroups", "cg1", namespace, timeout=60)
