"""Bad input against the session operator (docs/drills.md, "Bad input"):

- semantic errors the apiserver cannot see (tests/manifest_corpus.py SEMANTIC), each
  reported on the object's Ready condition with its reason and message;
- malformed and hostile stream entries: dead-lettered with a reason by the SDK consumer
  (with the credentials the operator issued), while consumer and operator keep running;
- names at their limits (63-character namespace, queue and access names with dots and
  dashes): keys, ACL rules and Secrets still work, and still fence other queues off.

Schema errors the apiserver rejects (manifest_corpus.INVALID) run in tests/test_crds.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from agentqueue_client import ClientConfig, Consumer, Producer
from agentqueue_client.codec import MAX_PAYLOAD_BYTES

from .manifest_corpus import INVALID, SEMANTIC, SemanticCase
from .operator_fixtures import condition, free_port, get_obj, wait_for, wait_ready, wait_reason
from .test_drills_common import say
from .test_operator_queue import admin, apply, secret_values

PLURALS = {"AgentQueue": "agentqueues", "ConsumerGroup": "consumergroups",
           "RetentionPolicy": "retentionpolicies"}


def test_corpus_size_and_coverage() -> None:
    kinds = {c.manifest["kind"] for c in INVALID}
    assert kinds == set(PLURALS)
    assert {c.manifests[-1]["kind"] for c in SEMANTIC} == {"AgentQueue", "ConsumerGroup"}
    assert len(INVALID) + len(SEMANTIC) >= 40
    ids = [c.id for c in INVALID] + [c.id for c in SEMANTIC]
    assert len(ids) == len(set(ids))
    for case in INVALID:
        assert case.expect, case.id  # every case names the exact error it must produce
    for sem in SEMANTIC:
        assert sem.reason and sem.message, sem.id


# --- semantic errors in status ------------------------------------------------------------------

def _fill(value: Any, subst: dict[str, str]) -> Any:
    if isinstance(value, str):
        for k, v in subst.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, subst) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, subst) for v in value]
    return value


@pytest.mark.k8s
@pytest.mark.parametrize("case", SEMANTIC, ids=[c.id for c in SEMANTIC])
def test_semantic_error_in_status(case: SemanticCase, operator: Any, kubectl: Any,
                                  namespace: str, operator_redis: Any) -> None:
    r = admin(operator_redis)
    setup_keys = []
    for cmd in case.redis_setup:
        cmd = [part.format(ns=namespace) for part in cmd]
        r.execute_command(*cmd)
        setup_keys.append(cmd[1])
    subst = {"url": operator_redis.url, "user": operator_redis.admin_username,
             "password": operator_redis.admin_password,
             "bad_password": "wrong-" + secrets.token_hex(8),
             "closed_url": f"redis://127.0.0.1:{free_port()}"}
    try:
        for manifest in case.manifests:
            apply(kubectl, namespace, _fill(manifest, subst))
        target = case.manifests[-1]
        plural, name = PLURALS[target["kind"]], target["metadata"]["name"]
        t0 = time.monotonic()
        obj = wait_reason(kubectl, plural, name, namespace, case.reason, timeout=60)
        cond = condition(obj) or {}
        assert cond["status"] == "False"
        for expected in case.message:
            assert expected.format(ns=namespace) in cond["message"], cond["message"]
        assert subst["bad_password"] not in json.dumps(obj)
        say(f"{case.id}: Ready=False {case.reason} after {time.monotonic() - t0:.1f}s: "
            f"{cond['message'][:120]}")
        # kopf posts Events from a background queue: give it a moment.
        wait_for(lambda: case.reason in kubectl("get", "events", "-n", namespace, "-o",
                                                "json").stdout,
                 timeout=20, what=f"Event {case.reason}")
    finally:
        if setup_keys:
            r.delete(*setup_keys)


# --- hostile stream entries ---------------------------------------------------------------------

HUGE = b"x" * (MAX_PAYLOAD_BYTES + 1)
HOSTILE: list[tuple[str, dict[Any, Any], str]] = [
    ("no payload", {"k": "no-payload"}, "missing payload field 'd'"),
    ("payload not UTF-8", {"d": b"\xff\xfe{\"n\": 1}"}, "payload is not valid UTF-8"),
    ("field name not UTF-8", {b"\xff\xfe": b"1", "d": b'{"n": 1}'},
     "field name is not UTF-8"),
    ("huge payload", {"d": HUGE}, "payload larger than"),
    ("attempt not a number", {"d": b'{"n": 1}', "a": b"lots"}, "field 'a'"),
    ("negative attempt", {"d": b'{"n": 1}', "a": b"-1"}, "field 'a'"),
    ("headers not an object", {"d": b'{"n": 1}', "h": b"[1,2]"}, "field 'h'"),
    ("headers with a number", {"d": b'{"n": 1}', "h": b'{"a": 1}'}, "field 'h'"),
    ("empty idempotency key", {"d": b'{"n": 1}', "k": b""}, "field 'k' is empty"),
    ("forged dead-letter metadata", {"d": b'{"n": 1}', "x.id": b"0-1", "x.error": b"forged",
                                     "x.deliveries": b"99", "x.group": b"other"},
     "reserved dead-letter field"),
    ("unknown field", {"d": b'{"n": 1}', "bogus": b"1"}, "unknown field"),
    ("NaN payload", {"d": b"NaN"}, "not valid JSON"),
    ("deeply nested payload", {"d": b"[" * 100_000 + b"]" * 100_000}, "nested too deeply"),
    ("schema violation", {"d": b'{"m": 1}'}, "schema violation"),
]


@pytest.mark.k8s
async def test_hostile_entries_go_to_the_dead_letter_queue(operator: Any, kubectl: Any,
                                                           namespace: str,
                                                           operator_redis: Any) -> None:
    pid = operator.proc.pid
    access = {"producers": [{"name": "intake"}], "consumers": [{"name": "worker"}]}
    apply(kubectl, namespace, {"apiVersion": "agentqueue.io/v1alpha1", "kind": "AgentQueue",
                               "metadata": {"name": "dirty"},
                               "spec": {"access": access, "schema": {
                                   "type": "object", "required": ["n"]}}})
    wait_ready(kubectl, "agentqueues", "dirty", namespace)
    apply(kubectl, namespace, {"apiVersion": "agentqueue.io/v1alpha1",
                               "kind": "ConsumerGroup", "metadata": {"name": "g"},
                               "spec": {"queueRef": {"name": "dirty"},
                                        "startFrom": "Beginning"}})
    wait_ready(kubectl, "consumergroups", "g", namespace)
    r = redis.Redis.from_url(operator_redis.url, username=operator_redis.admin_username,
                             password=operator_redis.admin_password)  # bytes in and out
    key = f"aq:{{{namespace}/dirty/0}}:q"
    dlq = f"aq:{{{namespace}/dirty/0}}:dlq"
    pcfg = ClientConfig.from_env(secret_values(kubectl, namespace, "dirty.intake"))
    ccfg = ClientConfig.from_env(secret_values(kubectl, namespace, "dirty.worker"))

    expected: dict[str, tuple[str, str]] = {}
    good: list[str] = []
    async with Producer(pcfg) as producer:
        for i, (what, fields, reason) in enumerate(HOSTILE):
            good.append(await producer.send({"n": i}))
            entry_id = r.xadd(key, fields).decode()
            expected[entry_id] = (what, reason)
        good.append(await producer.send({"n": len(HOSTILE)}))

    t0 = time.monotonic()
    seen: list[str] = []
    async with Consumer(ccfg, group="g", consumer_name="hostile-reader", block_ms=200) as c:
        while len(seen) < len(good):
            msg = await asyncio.wait_for(c.next_message(), 30)
            assert msg is not None
            seen.append(msg.id)
            await msg.ack()
        await c.flush_acks()
        elapsed = time.monotonic() - t0
        assert not c.stopping
    assert seen == good  # every good message, in order, none of the bad ones

    letters = {fields[b"x.id"].decode(): fields for _, fields in r.xrange(dlq)}
    assert set(letters) == set(expected)
    for entry_id, (what, reason) in expected.items():
        fields = letters[entry_id]
        error = fields[b"x.error"].decode()
        assert reason in error, f"{what}: {error}"
        assert fields[b"x.group"] == b"g" and fields[b"x.consumer"] == b"hostile-reader", what
        assert fields[b"x.deliveries"] == b"1", what  # forged x.* replaced, not kept
    assert r.xpending(key, "g")["pending"] == 0
    say(f"hostile entries: {len(expected)} dead-lettered with their reasons, {len(good)} good "
        f"messages delivered in order, in {elapsed:.1f}s; consumer and operator kept running")

    # The operator is unharmed and reports the dead letters.
    wait_for(lambda: ((get_obj(kubectl, "agentqueues", "dirty", namespace) or {})
                      .get("status") or {}).get("deadLetterLength") == len(expected),
             timeout=30, what="status.deadLetterLength")
    assert (condition(get_obj(kubectl, "agentqueues", "dirty", namespace)) or {})[
        "status"] == "True"
    assert operator.proc.pid == pid and operator.proc.poll() is None


# --- names at their limits ----------------------------------------------------------------------

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _long_name(seed: str, length: int = 63) -> str:
    """A DNS-1123 subdomain of exactly `length` characters with dots and dashes."""
    name = (seed * length)[:length - 1] + "z"
    name = re.sub(r"[.-]+z$", "z", name)
    name = name + "z" * (length - len(name))
    assert len(name) == length and DNS_SUBDOMAIN.match(name), name
    return name


@pytest.fixture
def long_namespace(kubectl: Any) -> Iterator[str]:
    name = ("ns-" + uuid.uuid4().hex[:8] + "-" + "x-" * 40)[:62] + "z"
    assert len(name) == 63
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.k8s
async def test_names_at_their_limits(operator: Any, kubectl: Any, long_namespace: str,
                                     operator_redis: Any) -> None:
    ns = long_namespace
    qname = _long_name("q0.a-b.c-d.")
    gname = _long_name("g.1-2.")
    producer_name, consumer_name = "p" + "-x" * 31, "c" + "-y" * 31
    assert len(producer_name) == len(consumer_name) == 63
    apply(kubectl, ns, {"apiVersion": "agentqueue.io/v1alpha1", "kind": "AgentQueue",
                        "metadata": {"name": qname},
                        "spec": {"partitions": 2, "access": {
                            "producers": [{"name": producer_name}],
                            "consumers": [{"name": consumer_name}]}}})
    wait_ready(kubectl, "agentqueues", qname, ns)
    apply(kubectl, ns, {"apiVersion": "agentqueue.io/v1alpha1", "kind": "ConsumerGroup",
                        "metadata": {"name": gname},
                        "spec": {"queueRef": {"name": qname}, "startFrom": "Beginning"}})
    wait_ready(kubectl, "consumergroups", gname, ns)

    pcreds = secret_values(kubectl, ns, f"{qname}.{producer_name}")
    ccreds = secret_values(kubectl, ns, f"{qname}.{consumer_name}")
    assert pcreds["REDIS_USERNAME"] == f"aq.{ns}.{qname}.{producer_name}"
    assert pcreds["AQ_KEY_PATTERN"] == f"aq:{{{ns}/{qname}/*"
    r = admin(operator_redis)
    for p in range(2):
        assert r.type(f"aq:{{{ns}/{qname}/{p}}}:q") == "stream"
        assert [g["name"] for g in r.xinfo_groups(f"aq:{{{ns}/{qname}/{p}}}:q")] == [gname]

    async with Producer(ClientConfig.from_env(pcreds)) as producer:
        ids = [await producer.send({"n": i}, key=f"k{i}") for i in range(6)]
    got = []
    async with Consumer(ClientConfig.from_env(ccreds), group=gname, consumer_name="c",
                        block_ms=200) as c:
        while len(got) < len(ids):
            msg = await asyncio.wait_for(c.next_message(), 20)
            assert msg is not None
            got.append(msg.payload["n"])
            # once() writes a done-marker under the queue's idem:* keys: allowed too.
            assert await msg.once("seen") is True
            assert await msg.once("seen") is False
            await msg.ack()
    assert sorted(got) == list(range(6))

    # The long names do not widen the ACL: neighbours' keys (a prefix of the queue or
    # namespace name, or one character more) are refused.
    prod = redis.Redis.from_url(pcreds["REDIS_URL"], username=pcreds["REDIS_USERNAME"],
                                password=pcreds["REDIS_PASSWORD"], decode_responses=True)
    neighbours = [f"aq:{{{ns}/{qname[:-1]}/0}}:q", f"aq:{{{ns}/{qname}z/0}}:q",
                  f"aq:{{{ns[:-1]}/{qname}/0}}:q", f"aq:{{{ns}z/{qname}/0}}:q",
                  f"aq:{{{ns}/{qname.split('.')[0]}/0}}:q"]
    for key in neighbours:
        with pytest.raises(redis.exceptions.NoPermissionError):
            prod.xadd(key, {"d": "1"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            prod.execute_command("FCALL", "aq_enqueue", 1, key, 0, "d", "1")
    say(f"63-character names: namespace {ns!r}, queue {qname!r}; ACL user of "
        f"{len(pcreds['REDIS_USERNAME'])} characters, Secret name of "
        f"{len(qname) + 1 + len(producer_name)}; produce, consume and once() ok; "
        f"{len(neighbours)} neighbour keys refused")
