"""Hostile tenants against the real operator, apiserver and redis-server (issue 14).

One operator runs for this module with bounds a test can reach quickly (a 4 s deletion
timeout, a 4 KiB schema limit) and an address policy that excludes a loopback address
(127.0.0.2): the session's operator is stopped meanwhile, so only one handles objects.
No test sends traffic anywhere but loopback: refused addresses are refused before any
connection is opened."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agentqueue_client import keys

from .operator_fixtures import (
    OperatorProcess,
    condition,
    get_obj,
    wait_for,
    wait_ready,
    wait_reason,
)

pytestmark = pytest.mark.k8s

DELETION_TIMEOUT_S = 4.0
MAX_SCHEMA_BYTES = 4096
DENIED_LOOPBACK = "127.0.0.2"
MAX_ID = "18446744073709551615-18446744073709551615"


@pytest.fixture(scope="module")
def hostile_operator(operator: OperatorProcess, kubeconfig: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    operator.stop()
    op = OperatorProcess(kubeconfig, operator.env,
                         tmp_path_factory.mktemp("hostile") / "operator.log",
                         extra_args=["--deletion-timeout", f"{DELETION_TIMEOUT_S:.0f}s",
                                     "--max-schema-bytes", str(MAX_SCHEMA_BYTES),
                                     "--deny-redis-address", f"{DENIED_LOOPBACK}/32"])
    op.start()
    try:
        yield op
    finally:
        op.stop()
        operator.start()


def apply(kubectl: Any, namespace: str, manifest: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def queue(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentqueue.io/v1alpha1", "kind": "AgentQueue",
            "metadata": {"name": name}, "spec": spec}


def group(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentqueue.io/v1alpha1", "kind": "ConsumerGroup",
            "metadata": {"name": name}, "spec": spec}


def secret(name: str, data: dict[str, str], **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, **meta},
            "stringData": data}


def deployment(name: str, replicas: int = 0, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, **meta},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "a", "image": "agent"}]}}}}


def admin(server: Any) -> redis.Redis:
    return redis.Redis.from_url(server.url, username=server.admin_username,
                                password=server.admin_password, decode_responses=True)


def secret_data(kubectl: Any, namespace: str, name: str) -> dict[str, str]:
    obj = get_obj(kubectl, "secret", name, namespace)
    assert obj is not None, f"Secret {name} missing"
    return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}


def events(kubectl: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    out = kubectl("get", "events", "-n", namespace, "-o", "json")
    return [e for e in json.loads(out.stdout)["items"]
            if e.get("involvedObject", {}).get("name") == name]


def event_with(kubectl: Any, namespace: str, name: str, reason: str) -> dict[str, Any]:
    def _find() -> dict[str, Any] | None:
        return next((e for e in events(kubectl, namespace, name) if e["reason"] == reason),
                    None)
    return wait_for(_find, 20.0, what=f"Event {reason} for {name}")  # type: ignore[no-any-return]


def can_auth(server: Any, username: str, password: str) -> bool:
    try:
        redis.Redis(host=server.host, port=server.port, username=username,
                    password=password).ping()
    except redis.AuthenticationError:
        return False
    return True


def gone(kubectl: Any, kind: str, name: str, namespace: str) -> bool:
    return get_obj(kubectl, kind, name, namespace) is None


# --- never adopt ----------------------------------------------------------------------

def test_a_foreign_secret_is_never_adopted(hostile_operator: OperatorProcess, kubectl: Any,
                                           namespace: str, operator_redis: Any) -> None:
    apply(kubectl, namespace, secret("jobs.worker", {"REDIS_PASSWORD": "tenant-chosen",
                                                     "keep": "me"},
                                     labels={"team": "a"}))
    before = get_obj(kubectl, "secret", "jobs.worker", namespace)
    apply(kubectl, namespace, queue("jobs", access={"consumers": [{"name": "worker"}]}))
    obj = wait_reason(kubectl, "agentqueues", "jobs", namespace, "SecretConflict")
    assert condition(obj)["status"] == "False"  # type: ignore[index]
    assert "'jobs.worker' exists and was not created by the operator" in (
        condition(obj)["message"])  # type: ignore[index]
    event_with(kubectl, namespace, "jobs", "SecretConflict")
    after = get_obj(kubectl, "secret", "jobs.worker", namespace)
    assert after is not None and before is not None
    assert after["data"] == before["data"]
    assert after["metadata"].get("labels") == {"team": "a"}
    assert not after["metadata"].get("ownerReferences")
    user = keys.acl_username(namespace, "jobs", "worker")
    assert not can_auth(operator_redis, user, "tenant-chosen")
    # Once the tenant removes it, the operator creates its own, with its own password.
    kubectl("delete", "secret", "jobs.worker", "-n", namespace)
    wait_ready(kubectl, "agentqueues", "jobs", namespace, timeout=60)
    mine = secret_data(kubectl, namespace, "jobs.worker")
    assert mine["REDIS_PASSWORD"] != "tenant-chosen" and len(mine["REDIS_PASSWORD"]) >= 43
    assert can_auth(operator_redis, user, mine["REDIS_PASSWORD"])


def test_a_hand_edited_password_is_replaced(hostile_operator: OperatorProcess, kubectl: Any,
                                            namespace: str, operator_redis: Any) -> None:
    apply(kubectl, namespace, queue("jobs", access={"producers": [{"name": "intake"}]}))
    wait_ready(kubectl, "agentqueues", "jobs", namespace)
    chosen = base64.b64encode(b"tenant-chosen").decode()
    kubectl("patch", "secret", "jobs.intake", "-n", namespace, "--type", "merge", "-p",
            json.dumps({"data": {"REDIS_PASSWORD": chosen}}))
    # a spec change makes the operator read the Secret again
    apply(kubectl, namespace, queue("jobs", access={"producers": [{"name": "intake"}],
                                                    "observers": [{"name": "dash"}]}))
    user = keys.acl_username(namespace, "jobs", "intake")
    wait_for(lambda: secret_data(kubectl, namespace, "jobs.intake")["REDIS_PASSWORD"]
             != "tenant-chosen", 30.0, what="the edited password replaced")
    assert not can_auth(operator_redis, user, "tenant-chosen")
    assert can_auth(operator_redis, user,
                    secret_data(kubectl, namespace, "jobs.intake")["REDIS_PASSWORD"])


# --- status is output only ------------------------------------------------------------

def test_status_users_never_direct_a_deletion(hostile_operator: OperatorProcess,
                                              kubectl: Any, namespace: str,
                                              operator_redis: Any) -> None:
    r = admin(operator_redis)
    victim = "aq.other-tenant.billing.worker"
    r.execute_command("ACL", "SETUSER", victim, "on", ">victim-pw", "~aq:{other-tenant/*",
                      "+ping")
    try:
        apply(kubectl, namespace, queue("jobs", access={"consumers": [{"name": "a"},
                                                                      {"name": "b"}]}))
        obj = wait_ready(kubectl, "agentqueues", "jobs", namespace)
        forged = [*obj["status"]["users"],
                  {"name": "x", "role": "consumer", "username": victim,
                   "secretName": "victim"}]
        kubectl("patch", "agentqueues", "jobs", "-n", namespace, "--subresource=status",
                "--type", "merge", "-p", json.dumps({"status": {"users": forged}}))
        # entry b leaves the spec: its user goes, the forged one stays
        apply(kubectl, namespace, queue("jobs", access={"consumers": [{"name": "a"}]}))
        b_user = keys.acl_username(namespace, "jobs", "b")
        wait_for(lambda: r.execute_command("ACL", "GETUSER", b_user) is None, 30.0,
                 what="user b removed")
        assert r.execute_command("ACL", "GETUSER", victim) is not None
        assert gone(kubectl, "secret", "jobs.b", namespace)
        kubectl("patch", "agentqueues", "jobs", "-n", namespace, "--subresource=status",
                "--type", "merge", "-p", json.dumps({"status": {"users": forged}}))
        kubectl("delete", "agentqueues", "jobs", "-n", namespace, "--wait=true",
                "--timeout=30s")
        assert r.execute_command("ACL", "GETUSER", victim) is not None
        assert r.execute_command("ACL", "GETUSER", keys.acl_username(namespace, "jobs",
                                                                    "a")) is None
    finally:
        r.execute_command("ACL", "DELUSER", victim)


# --- addresses are policed -------------------------------------------------------------

def test_a_denied_loopback_address_is_refused_before_connecting(
        hostile_operator: OperatorProcess, kubectl: Any, namespace: str,
        operator_redis: Any) -> None:
    url = f"redis://{DENIED_LOOPBACK}:{operator_redis.port}"
    apply(kubectl, namespace, secret("conn", {"url": url}))
    apply(kubectl, namespace, queue("jobs", redis={"secretRef": {"name": "conn"}}))
    obj = wait_reason(kubectl, "agentqueues", "jobs", namespace, "RedisAddressRefused")
    assert condition(obj)["message"] == (  # type: ignore[index]
        "Secret 'conn': Redis address refused by the operator's address policy: "
        f"{DENIED_LOOPBACK} is in {DENIED_LOOPBACK}/32")
    event_with(kubectl, namespace, "jobs", "RedisAddressRefused")
    kubectl("delete", "agentqueues", "jobs", "-n", namespace, "--wait=true", "--timeout=20s")


def test_the_clusters_api_server_is_refused_by_default(
        hostile_operator: OperatorProcess, kubectl: Any, namespace: str,
        kubeconfig: Path) -> None:
    server = next(line.split("server:", 1)[1].strip()
                  for line in kubeconfig.read_text().splitlines() if "server:" in line)
    hostport = server.split("://", 1)[1].rstrip("/")
    apply(kubectl, namespace, secret("conn", {"url": f"redis://{hostport}"}))
    apply(kubectl, namespace, queue("jobs", redis={"secretRef": {"name": "conn"}}))
    obj = wait_reason(kubectl, "agentqueues", "jobs", namespace, "RedisAddressRefused")
    assert condition(obj)["message"].endswith(  # type: ignore[index]
        f"{hostport} is the cluster's API server")


# --- deletion always finishes ----------------------------------------------------------

def test_a_never_provisioned_queue_is_released_at_once(hostile_operator: OperatorProcess,
                                                       kubectl: Any, namespace: str) -> None:
    from agentqueue_devtools.redisserver import free_port

    apply(kubectl, namespace, secret("conn", {"url": f"redis://127.0.0.1:{free_port()}"}))
    apply(kubectl, namespace, queue("jobs", redis={"secretRef": {"name": "conn"}}))
    wait_reason(kubectl, "agentqueues", "jobs", namespace, "RedisUnavailable", timeout=60)
    started = time.monotonic()
    kubectl("delete", "agentqueues", "jobs", "-n", namespace, "--wait=false")
    wait_for(lambda: gone(kubectl, "agentqueues", "jobs", namespace), 30.0,
             what="the queue released")
    took = time.monotonic() - started
    print(f"never-provisioned queue released after {took:.1f}s")
    assert took < DELETION_TIMEOUT_S  # at once: not after the timeout


def test_an_unreachable_redis_releases_the_queue_after_the_timeout(
        hostile_operator: OperatorProcess, kubectl: Any, namespace: str,
        redis_server_factory: Any) -> None:
    server = redis_server_factory()
    apply(kubectl, namespace, secret("conn", {"url": server.url, "username":
                                              server.admin_username,
                                              "password": server.admin_password}))
    apply(kubectl, namespace, queue("jobs", redis={"secretRef": {"name": "conn"}},
                                    access={"consumers": [{"name": "worker"}]}))
    wait_ready(kubectl, "agentqueues", "jobs", namespace, timeout=60)
    server.stop()
    started = time.monotonic()
    kubectl("delete", "agentqueues", "jobs", "-n", namespace, "--wait=false")
    wait_for(lambda: gone(kubectl, "agentqueues", "jobs", namespace), 60.0,
             what="the queue released")
    took = time.monotonic() - started
    print(f"queue on an unreachable Redis released after {took:.1f}s")
    # the timeout counts from metadata.deletionTimestamp (whole seconds: up to 1 s early);
    # margin above: one retry step (<= 10 s) and the connect timeouts
    assert DELETION_TIMEOUT_S - 1.0 <= took <= DELETION_TIMEOUT_S + 20.0
    ev = event_with(kubectl, namespace, "jobs", "DeletionAbandoned")
    assert f"left behind: ACL users {keys.acl_username(namespace, 'jobs', 'worker')}; " \
        f"keys aq:{{{namespace}/jobs/* (retained)" in ev["message"]


# --- bounds ------------------------------------------------------------------------------

def _schema(size: int) -> dict[str, Any]:
    from agentqueue.services.queues import schema_size

    return {"description": "x" * (size - schema_size({"description": ""}))}


def test_an_oversized_schema_is_refused_without_a_loop(hostile_operator: OperatorProcess,
                                                       kubectl: Any, namespace: str,
                                                       operator_redis: Any) -> None:
    r = admin(operator_redis)
    # At the bound: accepted and copied to the partitions.
    apply(kubectl, namespace, queue("near", partitions=2, schema=_schema(MAX_SCHEMA_BYTES)))
    wait_ready(kubectl, "agentqueues", "near", namespace)
    assert len(r.hget(f"aq:{{{namespace}/near/1}}:meta", "schema") or "") == MAX_SCHEMA_BYTES
    # The reported case: ~600 KB (past the 256 KiB annotation limit kopf used to hit).
    log_before = len(hostile_operator.log_text())
    # `create`: kubectl apply would copy the object into its own annotation (refused)
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(
        queue("huge", partitions=4, schema=_schema(600_000))))
    obj = wait_reason(kubectl, "agentqueues", "huge", namespace, "SpecTooLarge")
    assert condition(obj)["message"] == (  # type: ignore[index]
        f"spec.schema is 600000 bytes as JSON; this operator accepts at most "
        f"{MAX_SCHEMA_BYTES} (operator.maxSchemaBytes)")
    assert r.exists(f"aq:{{{namespace}/huge/0}}:meta") == 0  # nothing written
    time.sleep(8)  # several drift intervals (2 s)
    grown = len(hostile_operator.log_text()) - log_before
    print(f"operator log grew {grown} bytes in ~10 s with a 600 KB schema")
    assert grown < 200_000  # bounded: never the object (600 KB) in a log line
    annotations = (get_obj(kubectl, "agentqueues", "huge", namespace) or {})["metadata"].get(
        "annotations") or {}
    assert sum(len(v) for v in annotations.values()) < 10_000
    started = time.monotonic()
    kubectl("delete", "agentqueues", "huge", "-n", namespace, "--wait=true", "--timeout=30s")
    print(f"oversized queue deleted in {time.monotonic() - started:.1f}s")


def test_a_schema_only_change_is_applied(hostile_operator: OperatorProcess, kubectl: Any,
                                         namespace: str, operator_redis: Any) -> None:
    """spec.schema is not in kopf's diff-base: the change still reaches Redis."""
    r = admin(operator_redis)
    apply(kubectl, namespace, queue("jobs", schema={"type": "object"}))
    wait_ready(kubectl, "agentqueues", "jobs", namespace)
    apply(kubectl, namespace, queue("jobs", schema={"type": "array"}))
    wait_for(lambda: json.loads(r.hget(f"aq:{{{namespace}/jobs/0}}:meta", "schema") or "{}")
             == {"type": "array"}, 10.0, what="the new schema in Redis")


def test_crd_refuses_a_zero_poll_interval(hostile_operator: OperatorProcess, kubectl: Any,
                                          namespace: str) -> None:
    out = kubectl("apply", "-n", namespace, "-f", "-", check=False, input=json.dumps(
        group("fast", queueRef={"name": "q"}, scaling={"pollInterval": "0s"})))
    assert out.returncode != 0
    assert "scaling.pollInterval must be at least 200ms" in out.stderr
    out = kubectl("apply", "-n", namespace, "-f", "-", check=False, input=json.dumps(
        queue("wide", partitions=33, access={"consumers": [{"name": f"c{i}"}
                                                           for i in range(32)]})))
    assert out.returncode != 0
    assert "partitions x access entries must be at most 1024" in out.stderr
    out = kubectl("apply", "-n", namespace, "-f", "-", check=False, input=json.dumps(
        group("bad", queueRef={"name": "q"}, scaleTargetRef={
            "apiVersion": "apps/v1/x", "kind": "Deployment", "name": "w"})))
    assert out.returncode != 0 and "apiVersion" in out.stderr


# --- a jammed stream --------------------------------------------------------------------

def test_a_jammed_stream_makes_the_queue_not_ready(hostile_operator: OperatorProcess,
                                                  kubectl: Any, namespace: str,
                                                  operator_redis: Any) -> None:
    apply(kubectl, namespace, queue("jobs"))
    wait_ready(kubectl, "agentqueues", "jobs", namespace)
    r = admin(operator_redis)
    key = f"aq:{{{namespace}/jobs/0}}:q"
    r.xadd(key, {"d": "jam"}, id=MAX_ID)  # what a producer's raw XADD could do
    obj = wait_reason(kubectl, "agentqueues", "jobs", namespace, "QueueExhausted")
    assert condition(obj)["status"] == "False"  # type: ignore[index]
    assert f"stream(s) {key} can take no more entries" in condition(obj)["message"]  # type: ignore[index]
    event_with(kubectl, namespace, "jobs", "QueueExhausted")


# --- conflicts ---------------------------------------------------------------------------

def test_two_groups_with_one_group_name(hostile_operator: OperatorProcess, kubectl: Any,
                                        namespace: str, operator_redis: Any) -> None:
    r = admin(operator_redis)
    apply(kubectl, namespace, queue("jobs"))
    wait_ready(kubectl, "agentqueues", "jobs", namespace)
    apply(kubectl, namespace, group("first", queueRef={"name": "jobs"}, groupName="shared",
                                    startFrom="Beginning", visibilityTimeout="1h"))
    wait_ready(kubectl, "consumergroups", "first", namespace)
    key = f"aq:{{{namespace}/jobs/0}}:q"
    for i in range(3):
        r.xadd(key, {"d": str(i)})
    r.xreadgroup("shared", "c1", {key: ">"}, count=2)  # two pending
    time.sleep(1.1)  # creationTimestamp has a one-second resolution
    apply(kubectl, namespace, group("second", queueRef={"name": "jobs"}, groupName="shared",
                                    visibilityTimeout="1s"))
    obj = wait_reason(kubectl, "consumergroups", "second", namespace, "GroupNameConflict")
    assert "belongs to ConsumerGroup 'first' (created first)" in (
        condition(obj)["message"])  # type: ignore[index]
    event_with(kubectl, namespace, "second", "GroupNameConflict")
    meta = f"aq:{{{namespace}/jobs/0}}:meta"
    assert r.hget(meta, "visibilityMs:shared") == "3600000"  # first's, not overwritten
    kubectl("delete", "consumergroup", "second", "-n", namespace, "--wait=true",
            "--timeout=30s")
    assert r.xpending(key, "shared")["pending"] == 2  # nothing destroyed
    # The first one leaves while another names the group: handed over, pending intact.
    apply(kubectl, namespace, group("third", queueRef={"name": "jobs"}, groupName="shared"))
    wait_reason(kubectl, "consumergroups", "third", namespace, "GroupNameConflict")
    kubectl("delete", "consumergroup", "first", "-n", namespace, "--wait=true",
            "--timeout=30s")
    # Handed over on the first one's watch event (the keeper reconsiders the next
    # claimant), not at the loser's 30 s retry: ~1 s, 10 s allowed on a busy CI machine.
    wait_ready(kubectl, "consumergroups", "third", namespace, timeout=10)
    assert r.xpending(key, "shared")["pending"] == 2


def test_two_groups_scaling_one_deployment_do_not_flap(hostile_operator: OperatorProcess,
                                                       kubectl: Any, namespace: str,
                                                       operator_redis: Any) -> None:
    r = admin(operator_redis)
    apply(kubectl, namespace, queue("busy"))
    apply(kubectl, namespace, queue("idle"))
    wait_ready(kubectl, "agentqueues", "busy", namespace)
    wait_ready(kubectl, "agentqueues", "idle", namespace)
    apply(kubectl, namespace, deployment("agents"))
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "agents"}
    fast = {"pollInterval": "200ms", "cooldown": "0s", "lagPerReplica": 1, "maxReplicas": 3,
            "scaleDown": {"stabilizationWindow": "0s", "maxStepPercent": 100}}
    apply(kubectl, namespace, group("busy-agents", queueRef={"name": "busy"},
                                    startFrom="Beginning", scaleTargetRef=target,
                                    scaling=fast))
    for i in range(3):
        r.xadd(f"aq:{{{namespace}/busy/0}}:q", {"d": str(i)})
    wait_for(lambda: (get_obj(kubectl, "deployment", "agents", namespace) or {})["spec"][
        "replicas"] == 3, 30.0, what="scaled to 3 by the first group")
    time.sleep(1.1)
    apply(kubectl, namespace, group("idle-agents", queueRef={"name": "idle"},
                                    scaleTargetRef=target, scaling=fast))
    obj = wait_reason(kubectl, "consumergroups", "idle-agents", namespace, "ScalerConflict",
                      type_="ScalingConflict")
    assert condition(obj, "ScalingConflict")["status"] == "True"  # type: ignore[index]
    event_with(kubectl, namespace, "idle-agents", "ScalerConflict")
    seen = set()
    for _ in range(20):  # 4 s of 200 ms polls: the idle group would scale to 0
        seen.add((get_obj(kubectl, "deployment", "agents", namespace) or {})["spec"][
            "replicas"])
        time.sleep(0.2)
    assert seen == {3}


def test_a_workload_owned_by_another_controller_is_not_scaled(
        hostile_operator: OperatorProcess, kubectl: Any, namespace: str) -> None:
    apply(kubectl, namespace, queue("jobs"))
    wait_ready(kubectl, "agentqueues", "jobs", namespace)
    kubectl("create", "configmap", "owner", "-n", namespace)
    owner = get_obj(kubectl, "configmap", "owner", namespace)
    assert owner is not None
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
           "uid": owner["metadata"]["uid"], "controller": True}
    apply(kubectl, namespace, deployment("owned", replicas=2, ownerReferences=[ref]))
    apply(kubectl, namespace, group("g", queueRef={"name": "jobs"}, scaling={
        "pollInterval": "200ms", "minReplicas": 0, "cooldown": "0s"},
        scaleTargetRef={"apiVersion": "apps/v1", "kind": "Deployment", "name": "owned"}))
    obj = wait_reason(kubectl, "consumergroups", "g", namespace, "WorkloadControlled",
                      type_="ScalingConflict")
    assert condition(obj, "ScalingConflict")["message"] == (  # type: ignore[index]
        "Deployment/owned is controlled by ConfigMap/owner; agentqueue does not scale it")
    time.sleep(1.0)
    assert (get_obj(kubectl, "deployment", "owned", namespace) or {})["spec"]["replicas"] == 2


def test_a_queue_at_the_bounds_is_served_and_deletable(hostile_operator: OperatorProcess,
                                                       kubectl: Any, namespace: str,
                                                       operator_redis: Any) -> None:
    """256 partitions x 4 access entries (the 1024 bound) with a schema at the operator's
    limit: Ready, no loop, bounded logs, deleted (with its data) without waiting."""
    r = admin(operator_redis)
    log_before = len(hostile_operator.log_text())
    started = time.monotonic()
    apply(kubectl, namespace, queue("wide", partitions=256, deletionPolicy="Delete",
                                    schema=_schema(MAX_SCHEMA_BYTES),
                                    access={"consumers": [{"name": f"c{i}"} for i in range(4)]}))
    wait_ready(kubectl, "agentqueues", "wide", namespace, timeout=90)
    ready_s = time.monotonic() - started
    time.sleep(6)  # three drift checks
    grown = len(hostile_operator.log_text()) - log_before
    print(f"256 x 4 queue Ready after {ready_s:.1f}s; log grew {grown} bytes")
    assert ready_s < 60.0
    assert grown < 200_000
    assert r.exists(f"aq:{{{namespace}/wide/255}}:meta") == 1
    started = time.monotonic()
    kubectl("delete", "agentqueues", "wide", "-n", namespace, "--wait=true", "--timeout=60s")
    print(f"deleted in {time.monotonic() - started:.1f}s")
    assert r.exists(f"aq:{{{namespace}/wide/255}}:meta") == 0
