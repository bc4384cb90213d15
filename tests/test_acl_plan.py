"""Pure planning: ACL rules per role and the queue plan (no Redis needed)."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest

from agentqueue import keys
from agentqueue.models import AgentQueueSpec
from agentqueue.models.queue import QueueType, Role
from agentqueue.planning import acl, queue_plan
from agentqueue.planning.queue_plan import (
    CreateStream,
    DeleteUser,
    EnsureUser,
    KeyConflict,
    LoadLibrary,
    ObservedPartition,
    ObservedQueue,
    ObservedUser,
    WriteMeta,
)

ROLES = list(Role)
TYPES = list(QueueType)
READ_COMMANDS = {"+xrange", "+xrevrange", "+xread", "+xreadgroup", "+xlen", "+lrange",
                 "+lpop", "+rpop", "+lmove", "+blmove", "+llen", "+subscribe", "+zrange"}
WRITE_COMMANDS = {"+xadd", "+xack", "+xclaim", "+xautoclaim", "+xdel", "+xtrim", "+lpush",
                  "+rpush", "+lpop", "+rpop", "+lmove", "+zadd", "+zrem", "+set", "+hset",
                  "+del", "+unlink", "+publish", "+xreadgroup"}
NEVER = {"+@all", "+flushall", "+flushdb", "+config", "+keys", "+scan", "+acl", "+eval",
         "+function", "+debug", "+shutdown", "+info", "+select", "+fcall", "+del",
         "allkeys", "allchannels", "allcommands", "~*", "&*", "nopass"}


def _commands(rules: list[str]) -> set[str]:
    return {r for r in rules if r.startswith(("+", "-"))}


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("role", ROLES)
def test_rules_are_full_least_privilege_definitions(role: Role, qtype: QueueType) -> None:
    rules = acl.acl_rules(role, "team", "billing", qtype, 4)
    assert rules[:4] == ["reset", "on", "resetkeys", "resetchannels"]
    assert rules.index("-@all") < min(i for i, r in enumerate(rules) if r.startswith("+"))
    assert not NEVER & set(rules)
    prefix = keys.queue_key_pattern("team", "billing")
    for r in rules:
        if r.startswith(("~", "%")):
            assert r.split("~", 1)[1].startswith(prefix), r
        if r.startswith("&"):
            assert r == "&" + keys.channel_name("team", "billing")
        if r.startswith("("):
            assert r.endswith(")") and f"~{prefix}" in r
    assert any(r.startswith("&") for r in rules) == (
        qtype is QueueType.PUBSUB and role is not Role.OBSERVER)
    cmds = _commands(rules)
    if role is Role.PRODUCER:
        assert not cmds & READ_COMMANDS
    if role is Role.OBSERVER:
        assert not cmds & WRITE_COMMANDS
        assert all(r.startswith("%R~") for r in rules if "~" in r)


def test_role_specific_functions() -> None:
    producer = _commands(acl.acl_rules("producer", "n", "q", "Stream", 1))
    consumer = _commands(acl.acl_rules("consumer", "n", "q", "Stream", 1))
    assert "+fcall|aq_enqueue" in producer and not {c for c in producer if "aq_nack" in c}
    assert {"+fcall|aq_nack", "+fcall|aq_deadletter", "+fcall|aq_promote"} <= consumer
    assert "+fcall|aq_enqueue" not in consumer
    # functions run with the caller's ACL: the commands inside must be granted too
    assert {"+xadd"} <= producer and {"+xack", "+xrange", "+zadd", "+zrange", "+zrem",
                                      "+xadd"} <= consumer
    rules = acl.acl_rules("producer", "n", "q", "Stream", 1)
    assert "(~aq:{n/q/*}:idem:* -@all +get +set)" in rules
    assert "+set" not in producer  # only inside the idempotency-key selector


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("role", ROLES)
def test_only_consumers_increment_the_stats_hash(role: Role, qtype: QueueType) -> None:
    """The retry-rate counters: consumers of Stream and List queues may HINCRBY their
    queue's stats hash (in selectors bound to it), and no role may do anything else
    to it except an observer reading it."""
    rules = acl.acl_rules(role, "n", "q", qtype, 1)
    stats = "aq:{n/q/*}:stats"
    key = keys.PartitionKeys("n", "q", 0).stats
    assert fnmatchcase(key, stats)
    # No root key rule lets the role's other commands (XADD, ZADD, LPUSH ...) write it.
    writable = [r.split("~", 1)[1] for r in rules
                if r.startswith(("~", "%")) and not r.startswith("%R~")]
    assert not any(fnmatchcase(key, k) for k in writable), rules
    counting = [r for r in rules if r.startswith("(") and stats in r]
    if role is Role.CONSUMER and qtype is not QueueType.PUBSUB:
        # Stream: aq_nack checks the hash's type (TYPE) before it writes anything.
        extra = " +type" if qtype is QueueType.STREAM else ""
        assert f"(~{stats} -@all +hincrby{extra})" in counting
        if qtype is QueueType.STREAM:  # FCALL aq_nack with the stats key as its third
            assert (f"(~aq:{{n/q/*}}:q ~aq:{{n/q/*}}:retry ~{stats} -@all +fcall|aq_nack)"
                    in counting)
        for sel in counting:
            assert _commands(sel.strip("()").split()) <= {"-@all", "+hincrby", "+type",
                                                           "+fcall|aq_nack"}
    else:
        assert counting == []


def test_rules_do_not_depend_on_partitions_but_validate_them() -> None:
    assert acl.acl_rules("consumer", "n", "q", "List", 1) == acl.acl_rules(
        "consumer", "n", "q", "List", 64)
    with pytest.raises(ValueError):
        acl.acl_rules("consumer", "n", "q", "List", 0)
    with pytest.raises(ValueError):
        acl.acl_rules("admin", "n", "q", "List", 1)


def test_setuser_args_hash_only() -> None:
    h = "A" * 64
    args = acl.acl_setuser_args("aq.n.q.e", ["reset", "on"], [h, "b" * 64])
    assert args == ["aq.n.q.e", "reset", "on", "#" + "a" * 64, "#" + "b" * 64]
    with pytest.raises(ValueError):
        acl.acl_setuser_args("aq.n.q.e", ["reset"], ["not-a-hash"])
    with pytest.raises(ValueError):
        acl.acl_setuser_args("has space", ["reset"], [])
    with pytest.raises(ValueError):
        acl.acl_setuser_args("u", ["reset", ">plaintext"], [])
    with pytest.raises(ValueError):
        acl.acl_setuser_args("u", ["reset", "nopass"], [])


# An ACL GETUSER reply as Redis 7.0 returns it (bytes, categories folded in).
REPLY = {
    b"flags": [b"on", b"sanitize-payload"],
    b"passwords": [b"a" * 64],
    b"commands": b"-@all +ping +xadd +fcall|aq_enqueue",
    b"keys": b"~aq:{n/q/*}:q %R~aq:{n/q/*}:meta",
    b"channels": b"",
    b"selectors": [{b"commands": b"-@all +set +get", b"keys": b"~aq:{n/q/*}:idem:*",
                    b"channels": b""}],
}
RULES = ["reset", "on", "resetkeys", "resetchannels", "%RW~aq:{n/q/*}:q",
         "%R~aq:{n/q/*}:meta", "-@all", "+xadd", "+ping", "+fcall|aq_enqueue",
         "(~aq:{n/q/*}:idem:* -@all +get +set)"]


def test_rules_match_against_rule_list() -> None:
    assert acl.rules_match(REPLY, RULES)
    assert acl.rules_match(REPLY, RULES, ["a" * 64])
    assert not acl.rules_match(REPLY, RULES, ["b" * 64])
    assert not acl.rules_match(REPLY, RULES, ["a" * 64, "b" * 64])
    assert not acl.rules_match(None, RULES)
    assert not acl.rules_match(REPLY, [*RULES, "+flushall"])
    assert not acl.rules_match(REPLY, [r for r in RULES if not r.startswith("(")])
    assert not acl.rules_match({**REPLY, b"flags": [b"off"]}, RULES)
    assert not acl.rules_match({**REPLY, b"keys": b"~*"}, RULES)


def test_rules_match_against_reference_reply() -> None:
    reference = {**REPLY, b"flags": [b"off", b"sanitize-payload"], b"passwords": []}
    assert acl.rules_match(REPLY, reference, ["a" * 64])
    flat: list[object] = []  # RESP2 without a response callback: flat pairs
    for k, v in REPLY.items():
        flat += [k, v]
    assert acl.rules_match(flat, reference, ["a" * 64])
    drifted = {**REPLY, b"commands": b"-@all +ping +xadd +fcall|aq_enqueue +keys"}
    assert not acl.rules_match(drifted, reference)


def test_parse_rules_rejects_unknown_tokens() -> None:
    with pytest.raises(ValueError):
        acl.parse_rules(["reset", "bogus"])


# --- the queue plan ------------------------------------------------------------------

def spec(**raw: object) -> AgentQueueSpec:
    return AgentQueueSpec.model_validate(raw)


def observed(s: AgentQueueSpec, parts: list[ObservedPartition] | None = None,
             library: str | None = None, name: str = "q") -> ObservedQueue:
    return ObservedQueue("n", name, str(s.type), tuple(parts or ()),
                         library_versions={"node": library}, library_wanted="3")


def test_desired_meta() -> None:
    s = spec(delivery={"maxDeliveries": 7, "retry": {"initialDelay": "500ms",
                                                      "maxDelay": "2m", "multiplier": 3,
                                                      "jitter": False}},
             deadLetter={"enabled": False}, idempotency={"ttl": "1h"},
             schema={"b": 1, "a": [1, 2]})
    meta = queue_plan.desired_meta(s, generation=9)
    assert meta == {
        "type": "Stream", "partitions": "1", "maxDeliveries": "7", "retryInitialMs": "500",
        "retryMaxMs": "120000", "retryMultiplier": "3.0", "retryJitter": "0",
        "deadLetter": "0", "idempotency": "1", "idempotencyTtlMs": "3600000",
        "priorityLevels": "1", "schema": '{"a":[1,2],"b":1}', "generation": "9"}
    assert "generation" not in queue_plan.desired_meta(s)


def test_fresh_stream_queue_plan() -> None:
    s = spec(partitions=2)
    actions = queue_plan.plan_queue(s, "n", "q", observed(s))
    p0, p1 = keys.partition_keys("n", "q", 2)
    assert actions[0] == LoadLibrary()
    assert [a for a in actions if isinstance(a, CreateStream)] == [
        CreateStream(p0.queue_key), CreateStream(p1.queue_key)]
    metas = [a for a in actions if isinstance(a, WriteMeta)]
    assert [m.key for m in metas] == [p0.meta, p1.meta]
    assert metas[0].fields == queue_plan.desired_meta(s) and metas[0].remove == ()
    assert all(a.describe() for a in actions)


def test_converged_queue_plans_nothing_and_keeps_foreign_fields() -> None:
    s = spec(partitions=1)
    p = keys.PartitionKeys("n", "q", 0)
    meta = {**queue_plan.desired_meta(s, 3), "paused:g": "{}"}
    part = ObservedPartition(0, p.queue_key, "stream", meta=meta)
    assert queue_plan.plan_queue(s, "n", "q", observed(s, [part], "3"), generation=3) == []
    # without a generation the recorded one stays
    assert queue_plan.plan_queue(s, "n", "q", observed(s, [part], "3")) == []
    # an old library version is replaced
    assert queue_plan.plan_queue(s, "n", "q", observed(s, [part], "2"),
                                 generation=3) == [LoadLibrary()]
    # a field we own that the spec dropped is removed
    with_schema = ObservedPartition(0, p.queue_key, "stream", meta={**meta, "schema": "{}"})
    [action] = queue_plan.plan_queue(s, "n", "q", observed(s, [with_schema], "3"),
                                     generation=3)
    assert action == WriteMeta(p.meta, {}, ("schema",))


def test_list_and_pubsub_plans() -> None:
    lst = spec(type="List", priorityLevels=2)
    assert not any(isinstance(a, CreateStream)
                   for a in queue_plan.plan_queue(lst, "n", "q", observed(lst)))
    ps = spec(type="PubSub")
    actions = queue_plan.plan_queue(ps, "n", "q", observed(ps))
    assert [type(a) for a in actions] == [WriteMeta]


@pytest.mark.parametrize("field,value", [("queue_key_type", "list"),
                                         ("dead_letter_type", "string"),
                                         ("retry_type", "hash")])
def test_conflicting_key_types(field: str, value: str) -> None:
    s = spec()
    part = ObservedPartition(0, "k", **{field: value})  # type: ignore[arg-type]
    with pytest.raises(KeyConflict):
        queue_plan.plan_queue(s, "n", "q", observed(s, [part]))


def test_plan_users() -> None:
    wanted = {"a": (["reset"], ["h1"]), "b": (["reset"], ["h2"]), "c": (["reset"], [])}
    seen = {"a": ObservedUser("a", True, True), "b": ObservedUser("b", True, False)}
    actions = queue_plan.plan_users(wanted, seen, owned=["a", "b", "old"])
    assert actions == [EnsureUser("b", ("reset",), ("h2",)), EnsureUser("c", ("reset",), ()),
                       DeleteUser("old")]
    assert "h2" not in repr(actions[0])
