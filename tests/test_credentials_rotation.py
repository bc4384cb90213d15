"""Credentials rotation (issue 17): ``rotateEvery`` and ``rotation_due()``, both ends of
the grace period, a credentials Secret deleted by hand, and no secret in logs, Events or
status while passwords rotate and clients fail to authenticate.

Figures (docs/security.md): rotation on annotation or ``rotateEvery``; the old password
works for ``gracePeriod`` and is refused after it; the operator notices both at its next
drift check (``--drift-interval``, 2 s in these tests). The margin for every bound below
is ``MARGIN_S`` on top of the figure plus one drift interval.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
import redis

from agentqueue.models import AgentQueueSpec
from agentqueue.services.queues import ROTATE_ANNOTATION, rotation_due

from .operator_fixtures import get_obj, wait_for, wait_ready
from .test_operator_queue import apply, client_for, queue, secret_values

DRIFT_S = 2.0  # --drift-interval of the test operator (tests/operator_fixtures.py)
MARGIN_S = 2.0  # scheduling, a kubectl round trip and Redis on a loaded 2-core machine

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def spec(**credentials: Any) -> AgentQueueSpec:
    return AgentQueueSpec.model_validate({"credentials": credentials})


# ---- rotation_due: pure -------------------------------------------------------------

def test_rotate_every_is_due_exactly_when_elapsed() -> None:
    s = spec(rotateEvery="1h")
    creds = {"lastRotation": iso(T0)}
    assert rotation_due(s, {}, creds, T0 + 3599) is None
    assert rotation_due(s, {}, creds, T0 + 3600) == "rotateEvery 1h elapsed"
    assert rotation_due(s, {}, creds, T0 + 86_400) == "rotateEvery 1h elapsed"


def test_rotate_every_needs_a_last_rotation_and_a_setting() -> None:
    assert rotation_due(spec(rotateEvery="1h"), {}, {}, T0) is None  # first reconcile
    assert rotation_due(spec(), {}, {"lastRotation": iso(T0)}, T0 + 10**7) is None


def test_annotation_rotates_once_per_new_token() -> None:
    s = spec()
    assert rotation_due(s, {ROTATE_ANNOTATION: "r1"}, {}, T0) == f"annotation {ROTATE_ANNOTATION}=r1"
    done = {"rotationToken": "r1", "lastRotation": iso(T0)}
    assert rotation_due(s, {ROTATE_ANNOTATION: "r1"}, done, T0 + 5) is None
    assert rotation_due(s, {ROTATE_ANNOTATION: "r2"}, done, T0 + 5) is not None
    assert rotation_due(s, {ROTATE_ANNOTATION: ""}, done, T0 + 5) is None
    # The annotation wins over a not-yet-due schedule, and a due schedule needs no token.
    assert rotation_due(spec(rotateEvery="1h"), {ROTATE_ANNOTATION: "r1"}, done,
                        T0 + 3600) == "rotateEvery 1h elapsed"


# ---- against the real operator --------------------------------------------------------

def works(creds: dict[str, str]) -> bool:
    """Whether a fresh connection authenticates with these credentials."""
    client = client_for(creds)
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return False
    finally:
        client.close()


def status_creds(kubectl: Any, namespace: str, name: str) -> dict[str, Any]:
    return ((get_obj(kubectl, "agentqueues", name, namespace) or {}).get("status") or {}
            ).get("credentials") or {}


def parse_iso(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def assert_no_leak(operator: Any, kubectl: Any, namespace: str, secrets: list[str]) -> None:
    log = operator.log_text()
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    objects = kubectl("get", "agentqueues,consumergroups", "-n", namespace, "-o",
                      "json").stdout
    for secret in secrets:
        assert secret and len(secret) >= 8
        for where, text in (("log", log), ("Events", events), ("status", objects)):
            assert secret not in text, f"a secret leaked into the operator's {where}"


@pytest.mark.k8s
def test_rotate_every_rotates_on_schedule(operator: Any, kubectl: Any, namespace: str,
                                          operator_redis: Any) -> None:
    """rotateEvery 6s: no rotation before 6 s, one by 6 s + a drift interval + margin."""
    every = 6.0
    apply(kubectl, namespace, queue("sched", access={"producers": [{"name": "p"}]},
                                    credentials={"rotateEvery": "6s", "gracePeriod": "1h"}))
    wait_ready(kubectl, "agentqueues", "sched", namespace)
    first = status_creds(kubectl, namespace, "sched")["lastRotation"]
    old = secret_values(kubectl, namespace, "sched.p")
    new = wait_for(lambda: (v := secret_values(kubectl, namespace, "sched.p"))[
        "REDIS_PASSWORD"] != old["REDIS_PASSWORD"] and v,
        timeout=every + DRIFT_S + MARGIN_S + 2, interval=0.1, what="scheduled rotation")
    rotated_at = time.time()
    after = status_creds(kubectl, namespace, "sched")
    waited = parse_iso(after["lastRotation"]) - parse_iso(first)
    print(f"rotateEvery {every:g}s: rotated {waited:.0f}s after the last rotation")
    # lastRotation has 1 s resolution: 6 s after the last one, never earlier.
    assert every - 1 <= waited <= every + DRIFT_S + MARGIN_S
    assert rotated_at - parse_iso(first) <= every + DRIFT_S + MARGIN_S + 1
    assert works(new) and works(old)  # 1h grace: both work
    assert_no_leak(operator, kubectl, namespace, [old["REDIS_PASSWORD"],
                                                  new["REDIS_PASSWORD"]])


@pytest.mark.k8s
def test_grace_period_both_ends(operator: Any, kubectl: Any, namespace: str,
                                operator_redis: Any) -> None:
    """The old password works until previousExpires (checked every 0.1 s up to 0.5 s
    before it) and is refused by previousExpires + a drift interval + margin; the new one
    works from the moment the Secret holds it."""
    grace = 5.0
    apply(kubectl, namespace, queue("grace", access={"consumers": [{"name": "w"}]},
                                    credentials={"gracePeriod": "5s"}))
    wait_ready(kubectl, "agentqueues", "grace", namespace)
    old = secret_values(kubectl, namespace, "grace.w")
    kubectl("annotate", "agentqueues", "grace", "-n", namespace,
            f"{ROTATE_ANNOTATION}=r1", "--overwrite")
    new = wait_for(lambda: (v := secret_values(kubectl, namespace, "grace.w"))[
        "REDIS_PASSWORD"] != old["REDIS_PASSWORD"] and v, interval=0.1,
        what="rotated Secret")
    assert works(new)
    expires = parse_iso(wait_for(
        lambda: status_creds(kubectl, namespace, "grace").get("previousExpires"),
        what="status.credentials.previousExpires"))
    assert 0 < expires - time.time() <= grace + 1
    while time.time() < expires - 0.5:  # the whole grace period, not a sample of it
        assert works(old), f"old password refused {expires - time.time():.1f}s early"
        time.sleep(0.1)
    wait_for(lambda: not works(old), timeout=expires + DRIFT_S + MARGIN_S - time.time(),
             interval=0.1, what="old password refused after the grace period")
    print(f"old password refused {time.time() - expires:.1f}s after previousExpires")
    assert works(new)
    assert_no_leak(operator, kubectl, namespace, [old["REDIS_PASSWORD"],
                                                  new["REDIS_PASSWORD"]])


@pytest.mark.k8s
def test_deleted_secret_gets_a_new_password_and_revokes_the_old(
        operator: Any, kubectl: Any, namespace: str) -> None:
    """The operator keeps only password hashes, so a credentials Secret deleted by hand
    cannot come back with the same password: it is re-created with a new one at the next
    Secret re-read (10 drift intervals) and the old password is refused from then on:
    deleting the Secret revokes its password (docs/security.md)."""
    recheck_s = 10 * DRIFT_S
    apply(kubectl, namespace, queue("lost", access={"consumers": [{"name": "w"}]}))
    wait_ready(kubectl, "agentqueues", "lost", namespace)
    before = secret_values(kubectl, namespace, "lost.w")
    t0 = time.monotonic()
    kubectl("delete", "secret", "lost.w", "-n", namespace)
    wait_for(lambda: get_obj(kubectl, "secret", "lost.w", namespace),
             timeout=recheck_s + DRIFT_S + MARGIN_S, interval=0.2, what="Secret re-created")
    print(f"Secret re-created {time.monotonic() - t0:.1f}s after its deletion "
          f"(bound {recheck_s + DRIFT_S + MARGIN_S:g}s)")
    after = secret_values(kubectl, namespace, "lost.w")
    assert after["REDIS_USERNAME"] == before["REDIS_USERNAME"]
    assert after["REDIS_PASSWORD"] != before["REDIS_PASSWORD"]
    assert works(after)
    assert not works(before)
    assert_no_leak(operator, kubectl, namespace, [before["REDIS_PASSWORD"],
                                                  after["REDIS_PASSWORD"]])


@pytest.mark.k8s
def test_no_secret_leaks_on_auth_failures(operator: Any, kubectl: Any, namespace: str,
                                          operator_redis: Any) -> None:
    """An admin Secret with a wrong password: the queue reports the failure without the
    password (or the URL's password) in status, Events or the log; clients failing to
    authenticate with a stale password leave no trace of it either."""
    wrong = "wr0ng-" + "s3cret" * 4
    url = f"redis://admin:{wrong}url@127.0.0.1:{operator_redis.port}"
    kubectl("create", "secret", "generic", "badauth", "-n", namespace,
            f"--from-literal=url={url}", "--from-literal=username=admin",
            f"--from-literal=password={wrong}")
    apply(kubectl, namespace, queue("authfail", redis={"secretRef": {"name": "badauth"}}))
    obj = wait_for(lambda: (o := get_obj(kubectl, "agentqueues", "authfail", namespace))
                   and any(c.get("status") == "False" for c in
                           (o.get("status") or {}).get("conditions") or []) and o,
                   what="authentication failure reported")
    print(json.dumps([c.get("reason") for c in obj["status"]["conditions"]]))
    apply(kubectl, namespace, queue("okq", access={"producers": [{"name": "p"}]}))
    wait_ready(kubectl, "agentqueues", "okq", namespace)
    creds = secret_values(kubectl, namespace, "okq.p")
    stale = dict(creds, REDIS_PASSWORD="stale-" + "x" * 20)
    assert not works(stale)
    time.sleep(DRIFT_S)  # a drift check runs while the bad queue keeps failing
    assert_no_leak(operator, kubectl, namespace,
                   [wrong, f"{wrong}url", stale["REDIS_PASSWORD"], creds["REDIS_PASSWORD"],
                    operator.env["AGENTQUEUE_REDIS_PASSWORD"]])
