"""ACL users re-asserted after a failover: a real replica promoted (issue 17).

Redis does not replicate ACL users. A 3-primary cluster gets a fourth node as the replica
of node 0; the operator provisions a queue (users on every *primary*, so not on the
replica); then ``CLUSTER FAILOVER`` promotes the replica. docs/security.md: the operator
re-asserts users on every primary after a failover and on every drift check, so the new
primary must hold the users within one drift interval (2 s in tests) + ``MARGIN_S``, and a
client with the queue's credentials must authenticate there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agentqueue_devtools.redisserver import RedisCluster, RedisServer

from .operator_fixtures import wait_for, wait_ready
from .redis_fixtures import need_redis_server
from .test_operator_queue import apply, queue, secret_values
from .test_operator_redis_topologies import admin_secret

pytestmark = [pytest.mark.k8s, pytest.mark.cluster]

DRIFT_S = 2.0
MARGIN_S = 2.0


@pytest.fixture
def cluster_with_replica(tmp_path: Path) -> Iterator[tuple[RedisCluster, RedisServer]]:
    need_redis_server()
    cluster = RedisCluster(tmp_path / "cluster").start()
    replica = RedisServer(tmp_path / "replica", cluster=True,
                          admin_password=cluster.admin_password).start()
    try:
        primary = cluster.nodes[0].client()
        node = replica.client()
        # The default user is off: the replica authenticates to its primary as the admin.
        node.config_set("masteruser", cluster.admin_username)
        node.config_set("masterauth", cluster.admin_password)
        node.execute_command("CLUSTER", "MEET", cluster.nodes[0].host, cluster.nodes[0].port)
        primary_id = primary.execute_command("CLUSTER", "MYID")
        primary_id = primary_id.decode() if isinstance(primary_id, bytes) else primary_id

        def replicate() -> bool:
            try:
                node.execute_command("CLUSTER", "REPLICATE", primary_id)
            except redis.ResponseError:
                return False  # the node has not learned of the primary yet
            return True
        wait_for(replicate, timeout=10, interval=0.1, what="CLUSTER REPLICATE accepted")
        # A full sync waits for repl-diskless-sync-delay (5 s) on the primary.
        wait_for(lambda: node.info("replication").get("master_link_status") == "up",
                 timeout=20, interval=0.1, what="replica in sync")
        yield cluster, replica
    finally:
        replica.stop()
        cluster.stop()


def test_users_reasserted_on_a_promoted_replica(operator: Any, kubectl: Any, namespace: str,
                                                cluster_with_replica: Any) -> None:
    cluster, replica = cluster_with_replica
    admin_secret(kubectl, namespace, "ha", cluster.secret_data())
    apply(kubectl, namespace, queue("fq", access={"consumers": [{"name": "w"}]},
                                    redis={"secretRef": {"name": "ha"}}))
    wait_ready(kubectl, "agentqueues", "fq", namespace, timeout=60)
    creds = secret_values(kubectl, namespace, "fq.w")
    user = creds["REDIS_USERNAME"]
    node = replica.client()
    assert node.info("replication")["role"] == "slave"
    time.sleep(2 * DRIFT_S)  # the operator has seen the cluster (its run_id watch began)

    t0 = time.monotonic()
    node.execute_command("CLUSTER", "FAILOVER")
    wait_for(lambda: node.info("replication")["role"] == "master", timeout=10, interval=0.05,
             what="replica promoted")
    promoted = time.monotonic()
    wait_for(lambda: node.acl_getuser(user), timeout=DRIFT_S + MARGIN_S, interval=0.05,
             what="queue user on the promoted primary")
    print(f"user re-asserted {time.monotonic() - promoted:.2f}s after the promotion "
          f"({promoted - t0:.2f}s to promote)")
    as_user = redis.Redis(host=replica.host, port=replica.port, username=user,
                          password=creds["REDIS_PASSWORD"])
    try:
        assert as_user.ping()
    finally:
        as_user.close()
