"""AgentQueue end to end: the real operator against a real apiserver and redis-server."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import redis

from .operator_fixtures import condition, get_obj, wait_for, wait_ready, wait_reason

pytestmark = pytest.mark.k8s


def apply(kubectl: Any, namespace: str, manifest: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def queue(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentqueue.io/v1alpha1", "kind": "AgentQueue",
            "metadata": {"name": name}, "spec": spec}


def secret_values(kubectl: Any, namespace: str, name: str) -> dict[str, str]:
    obj = get_obj(kubectl, "secret", name, namespace)
    assert obj is not None, f"Secret {name} missing"
    return {k: base64.b64decode(v).decode() for k, v in obj["data"].items()}


def client_for(creds: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(creds["REDIS_URL"], username=creds["REDIS_USERNAME"],
                                password=creds["REDIS_PASSWORD"], decode_responses=True)


def admin(server: Any) -> redis.Redis:
    return redis.Redis.from_url(server.url, username=server.admin_username,
                                password=server.admin_password, decode_responses=True)


ACCESS = {"producers": [{"name": "intake"}], "consumers": [{"name": "worker"}],
          "observers": [{"name": "dash"}]}


def test_create_update_and_status(operator: Any, kubectl: Any, namespace: str,
                                  operator_redis: Any) -> None:
    t0 = time.monotonic()
    apply(kubectl, namespace, queue("billing", partitions=2, access=ACCESS))
    obj = wait_ready(kubectl, "agentqueues", "billing", namespace)
    ready_s = time.monotonic() - t0
    print(f"AgentQueue Ready after {ready_s:.2f}s")
    st = obj["status"]
    assert st["type"] == "Stream"
    assert [p["index"] for p in st["partitions"]] == [0, 1]
    assert st["length"] == 0
    assert {u["role"] for u in st["users"]} == {"producer", "consumer", "observer"}
    r = admin(operator_redis)
    for p in (0, 1):
        assert r.type(f"aq:{{{namespace}/billing/{p}}}:q") == "stream"
        assert r.hget(f"aq:{{{namespace}/billing/{p}}}:meta", "maxDeliveries") == "5"
    creds = secret_values(kubectl, namespace, "billing.intake")
    assert creds["AQ_QUEUE"] == "billing" and creds["AQ_ROLE"] == "producer"
    assert "REDIS_PASSWORD" in creds and creds["REDIS_PASSWORD"] not in creds["REDIS_URL"]
    prod = client_for(creds)
    assert prod.ping()
    secret = get_obj(kubectl, "secret", "billing.intake", namespace)
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "AgentQueue"

    # Update: a new consumer, more partitions, new retry settings.
    spec = {"partitions": 3, "access": {**ACCESS, "consumers": [{"name": "worker"},
                                                                 {"name": "second"}]},
            "delivery": {"maxDeliveries": 7, "retry": {"initialDelay": "2s"}}}
    apply(kubectl, namespace, queue("billing", **spec))
    obj = wait_ready(kubectl, "agentqueues", "billing", namespace)
    assert len(obj["status"]["partitions"]) == 3
    assert r.type(f"aq:{{{namespace}/billing/2}}:q") == "stream"
    assert r.hget(f"aq:{{{namespace}/billing/0}}:meta", "maxDeliveries") == "7"
    assert r.hget(f"aq:{{{namespace}/billing/0}}:meta", "retryInitialMs") == "2000"
    assert client_for(secret_values(kubectl, namespace, "billing.second")).ping()

    # Remove the observer: its user and Secret go.
    apply(kubectl, namespace, queue("billing", **{**spec, "access": {
        "producers": ACCESS["producers"], "consumers": spec["access"]["consumers"]}}))
    wait_for(lambda: get_obj(kubectl, "secret", "billing.dash", namespace) is None,
             what="observer Secret removed")
    assert r.acl_getuser(f"aq.{namespace}.billing.dash") is None


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_delete_policies(policy: str, operator: Any, kubectl: Any, namespace: str,
                         operator_redis: Any) -> None:
    apply(kubectl, namespace, queue("gone", deletionPolicy=policy, access=ACCESS))
    wait_ready(kubectl, "agentqueues", "gone", namespace)
    r = admin(operator_redis)
    key = f"aq:{{{namespace}/gone/0}}:q"
    r.xadd(key, {"d": "x"})
    kubectl("delete", "agentqueues", "gone", "-n", namespace, "--wait=true", "--timeout=30s")
    assert r.acl_getuser(f"aq.{namespace}.gone.intake") is None
    if policy == "Retain":
        assert r.xlen(key) == 1
    else:
        assert r.exists(key) == 0
        assert not list(r.scan_iter(match=f"aq:{{{namespace}/gone/*"))


def test_drift_is_repaired(operator: Any, kubectl: Any, namespace: str,
                           operator_redis: Any) -> None:
    apply(kubectl, namespace, queue("drift", access=ACCESS))
    wait_ready(kubectl, "agentqueues", "drift", namespace)
    r = admin(operator_redis)
    key = f"aq:{{{namespace}/drift/0}}:q"
    user = f"aq.{namespace}.drift.worker"
    r.delete(key, f"aq:{{{namespace}/drift/0}}:meta")
    r.acl_deluser(user)
    t0 = time.monotonic()
    # One drift interval (--drift-interval 2s in tests) + 2 s margin.
    wait_for(lambda: r.exists(key) and r.acl_getuser(user), timeout=4, interval=0.1,
             what="repair")
    print(f"drift repaired after {time.monotonic() - t0:.2f}s")
    creds = secret_values(kubectl, namespace, "drift.worker")
    assert client_for(creds).ping()  # the old Secret still works
    obj = wait_for(lambda: (get_obj(kubectl, "agentqueues", "drift", namespace) or {})
                   .get("status", {}).get("lastRepair") and
                   get_obj(kubectl, "agentqueues", "drift", namespace), what="lastRepair")
    assert "ACL user" in obj["status"]["lastRepairDetail"] or key in obj["status"][
        "lastRepairDetail"]
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "DriftRepaired" in events


def test_drift_checks_compare_acl_digests_not_each_user(
        operator: Any, kubectl: Any, namespace: str, operator_redis: Any) -> None:
    """At rest the queue keepers compare users by one ACL LIST per round (their lines'
    digests), not one ACL GETUSER per user per round. Over 5 drift rounds (2 s each),
    with U of our users on the server, the only GETUSERs left are those of credentials-
    Secret re-reads (2 per user each; one every 5-10 rounds, so at most 2 per user in
    the window): at most 4U, where one per user per round would be at least 5U. MONITOR
    does not show ACL commands, so the server's command counters are read."""
    entries = [{"name": f"w{i}"} for i in range(4)]
    apply(kubectl, namespace, queue("quiet", access={"consumers": entries}))
    wait_ready(kubectl, "agentqueues", "quiet", namespace)
    time.sleep(4)  # two drift rounds: the digests are recorded
    r = admin(operator_redis)

    def counts() -> tuple[int, int]:
        stats = r.info("commandstats")
        return (int((stats.get("cmdstat_acl|getuser") or {}).get("calls", 0)),
                int((stats.get("cmdstat_acl|list") or {}).get("calls", 0)))

    ours = len([u for u in r.acl_users() if u.startswith("aq.")])
    getuser0, list0 = counts()
    window_s = 5 * 2.0
    time.sleep(window_s)
    getuser1, list1 = counts()
    print(f"in {window_s:g}s with {ours} users: {getuser1 - getuser0} GETUSER, "
          f"{list1 - list0} ACL LIST")
    assert list1 - list0 >= 4  # a round every 2 s reads the rules once
    assert getuser1 - getuser0 <= 4 * ours < 5 * ours


def test_missing_admin_secret_and_bad_schema(operator: Any, kubectl: Any,
                                             namespace: str) -> None:
    apply(kubectl, namespace, queue("nosecret", redis={"secretRef": {"name": "absent"}}))
    obj = wait_reason(kubectl, "agentqueues", "nosecret", namespace, "RedisSecretMissing")
    assert "absent" in (condition(obj) or {})["message"]
    apply(kubectl, namespace, queue("badschema", schema={"type": "objekt"}))
    obj = wait_reason(kubectl, "agentqueues", "badschema", namespace, "InvalidSchema")
    assert "spec.schema" in (condition(obj) or {})["message"]
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "InvalidSchema" in events and "RedisSecretMissing" in events


def test_redis_unreachable_is_reported(operator: Any, kubectl: Any, namespace: str) -> None:
    from .operator_fixtures import free_port
    url = f"redis://127.0.0.1:{free_port()}"
    kubectl("create", "secret", "generic", "deadredis", "-n", namespace,
            f"--from-literal=url={url}")
    apply(kubectl, namespace, queue("dead", redis={"secretRef": {"name": "deadredis"}}))
    obj = wait_reason(kubectl, "agentqueues", "dead", namespace, "RedisUnavailable")
    assert (condition(obj) or {})["status"] == "False"
    # The operator keeps serving other queues meanwhile.
    apply(kubectl, namespace, queue("alive"))
    wait_ready(kubectl, "agentqueues", "alive", namespace)


def test_rotation_keeps_old_password_for_grace(operator: Any, kubectl: Any, namespace: str,
                                               operator_redis: Any) -> None:
    apply(kubectl, namespace, queue("rot", access=ACCESS,
                                    credentials={"gracePeriod": "3s"}))
    wait_ready(kubectl, "agentqueues", "rot", namespace)
    old = secret_values(kubectl, namespace, "rot.intake")
    old_client = client_for(old)
    assert old_client.ping()
    kubectl("annotate", "agentqueues", "rot", "-n", namespace,
            "agentqueue.io/rotate-credentials=r1", "--overwrite")
    new = wait_for(lambda: (v := secret_values(kubectl, namespace, "rot.intake"))[
        "REDIS_PASSWORD"] != old["REDIS_PASSWORD"] and v, what="rotated Secret")
    failures = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # old and new both work during the grace period
        try:
            old_client.ping()
            client_for(old).ping()
        except redis.AuthenticationError:
            failures += 1
        time.sleep(0.05)
    assert failures == 0
    assert client_for(new).ping()

    def old_rejected() -> bool:
        try:
            client_for(old).ping()
        except redis.AuthenticationError:
            return True
        return False
    # gracePeriod 3 s (counted from before this wait) + a drift interval + 2 s margin.
    wait_for(old_rejected, timeout=7, interval=0.1, what="old password removed after grace")
    assert client_for(new).ping()


def test_no_secret_in_logs_events_status(operator: Any, kubectl: Any, namespace: str) -> None:
    apply(kubectl, namespace, queue("leak", access=ACCESS))
    obj = wait_ready(kubectl, "agentqueues", "leak", namespace)
    passwords = [secret_values(kubectl, namespace, f"leak.{n}")["REDIS_PASSWORD"]
                 for n in ("intake", "worker", "dash")]
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    log = operator.log_text()
    for pw in passwords + [operator.env["AGENTQUEUE_REDIS_PASSWORD"]]:
        assert pw not in log
        assert pw not in events
        assert pw not in json.dumps(obj)


def test_cli_status_is_live_and_falls_back_to_status_with_its_age(
        operator: Any, kubectl: Any, kubeconfig: Any, namespace: str) -> None:
    """`agentqueue status` right after 13 sends shows 13 waiting (read from Redis with
    the observer's credentials), not the length last written to status; with Redis out
    of reach it shows the status figures, says how old they are and why, in one line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    apply(kubectl, namespace, queue("fresh", partitions=2, access=ACCESS))
    apply(kubectl, namespace, {
        "apiVersion": "agentqueue.io/v1alpha1", "kind": "ConsumerGroup",
        "metadata": {"name": "fresh-workers"}, "spec": {"queueRef": {"name": "fresh"}}})
    wait_ready(kubectl, "agentqueues", "fresh", namespace)
    wait_ready(kubectl, "consumergroups", "fresh-workers", namespace)
    producer = client_for(secret_values(kubectl, namespace, "fresh.intake"))
    from agentqueue_client import keys
    for i in range(13):
        producer.xadd(keys.PartitionKeys(namespace, "fresh", i % 2).queue_key, {"d": "{}"})
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "PYTHONPATH": os.pathsep.join([str(root / "operator"), str(root / "clients" / "python"), str(root / "devtools"),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("AGENTQUEUE_REDIS_ADDRESS", None)

    def status(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agentqueue.cli", "status", "fresh", "-n",
                               namespace, *extra], env=env, capture_output=True, text=True,
                              timeout=60)

    out = status()
    assert out.returncode == 0 and out.stderr == "", out.stderr
    header, qrow, grow = (line.split() for line in out.stdout.splitlines())
    assert header[:8] == ["NAMESPACE", "QUEUE", "GROUP", "TYPE", "PARTS", "LENGTH", "WAITING",
                          "OLDEST-WAITING"]
    assert qrow[2:5] == ["Stream", "2", "13"] and qrow[-1] == "live", out.stdout
    assert grow[2:4] == ["fresh-workers", "13"] and grow[-1] == "live", out.stdout
    t0 = time.monotonic()
    stale = status("--redis-address", "127.0.0.1:1")
    assert time.monotonic() - t0 < 20  # the documented connect timeout (5 s) + margin
    assert stale.returncode == 0, stale.stderr
    rows = stale.stdout.splitlines()[1:]
    assert all(row.split()[-1] == "old" and " live" not in row for row in rows), stale.stdout
    lines = stale.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{namespace}/fresh: figures from its "
                                                   "status (Redis: "), stale.stderr
    assert "Traceback" not in stale.stderr
