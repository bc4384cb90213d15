"""Pure planning: ACL rules per role and the queue plan (no Redis needed)."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest

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
from agentqueue_client import keys

from . import test_hostile_acl_allowlist as allowlist

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



# --- the allow-list, without a server ---------------------------------------------------
# tests/test_hostile_acl_allowlist.py states every command each role may run and on which
# kinds of key, and checks it against a real server's ACL DRYRUN. The same table judges
# the rules here, in milliseconds: every command the rules grant (at the root or in a
# selector) is in the table, spelled as the server's COMMAND list spells it, and every
# (command, kind of key) the table allows is granted by a rule set whose key patterns
# match that key. Read/write permissions per command are left to the server test.
# Redis always allows these; +command grants the COMMAND subcommands the table lists.
IMPLICIT = {"auth", "hello", "quit", "reset"}


def _rule_sets(rules: list[str]) -> list[list[str]]:
    """The root rules and each selector's, as token lists."""
    root = [r for r in rules if not r.startswith("(")]
    return [root, *(r[1:-1].split() for r in rules if r.startswith("("))]


def _granted(rule_set: list[str]) -> set[str]:
    return {r[1:] for r in rule_set if r.startswith("+")}


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("role", ROLES)
def test_rules_grant_exactly_the_allow_listed_commands(role: Role, qtype: QueueType) -> None:
    rules = acl.acl_rules(role, allowlist.NS, allowlist.Q, qtype, 2)
    table = allowlist.ALLOWED[(qtype, role)]
    want = {c for c, _ in table} - IMPLICIT
    want = {c for c in want if not c.startswith("command|")} | {"command"}
    granted = set().union(*(_granted(s) for s in _rule_sets(rules)))
    functions = {c.split("|", 1)[1] for c in granted if c.startswith("fcall|")}
    # Every role may read the library version (FCALL_RO, not in the server table).
    assert "fcall_ro|aq_version" in granted
    granted -= {"fcall_ro|aq_version", *(f"fcall|{f}" for f in functions)}
    assert sorted(granted - want) == [], "granted but not in the allow-list"
    assert sorted(want - granted) == [], "in the allow-list but not granted"
    assert functions == allowlist.FUNCTIONS_ALLOWED.get((qtype, role), set())
    # Each rule set starts from nothing: no command is granted by a category.
    for rule_set in _rule_sets(rules):
        assert [r for r in rule_set if r.startswith("-") or "@" in r] == ["-@all"]


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("role", ROLES)
def test_rules_cover_every_allow_listed_key(role: Role, qtype: QueueType) -> None:
    rules = acl.acl_rules(role, allowlist.NS, allowlist.Q, qtype, 2)
    patterns = [(_granted(s), [r.split("~", 1)[1] for r in s if r.startswith(("~", "%"))])
                for s in _rule_sets(rules)]
    missing = [(command, kind) for command, kind in sorted(allowlist.ALLOWED[(qtype, role)])
               if kind in allowlist.KINDS and not any(
                   command in cmds and any(fnmatchcase(allowlist.KINDS[kind], p) for p in pats)
                   for cmds, pats in patterns)]
    assert missing == []
    # ... and never another queue's or namespace's keys, whatever the command.
    for _, pats in patterns:
        for other in ("other", "otherns"):
            assert not any(fnmatchcase(allowlist.KINDS[other], p) for p in pats), pats


def test_partitions_error_names_the_value() -> None:
    with pytest.raises(ValueError, match="partitions must be at least 1, got 0"):
        acl.acl_rules("consumer", "n", "q", "List", 0)


# --- SETUSER arguments ------------------------------------------------------------------

HASH = "0123456789abcdef" * 4


@pytest.mark.parametrize("bad", [
    pytest.param("", id="empty"), pytest.param("0" * 63, id="63-digits"),
    pytest.param("0" * 65, id="65-digits"), pytest.param("g" * 64, id="64-non-hex"),
    pytest.param(HASH[:-1] + "x", id="one-non-hex"), pytest.param("X" * 64, id="X"),
])
def test_setuser_args_refuse_what_is_not_a_sha256_without_showing_it(bad: str) -> None:
    with pytest.raises(ValueError, match="password hashes must be 64 hex digits") as err:
        acl.acl_setuser_args("u", ["reset"], [HASH, bad])
    if bad:
        assert bad not in str(err.value)


def test_setuser_args_take_uppercase_hex_as_redis_wants_it() -> None:
    """Redis refuses `#` with uppercase hex digits: they are lowercased."""
    assert acl.acl_setuser_args("u", [], [HASH.upper()]) == ["u", f"#{HASH}"]


@pytest.mark.parametrize("rule", [">s3cret-pw", "<s3cret-pw", "nopass", "NOPASS"])
def test_setuser_args_refuse_plaintext_and_nopass_without_echoing(rule: str) -> None:
    with pytest.raises(ValueError, match="plaintext passwords or nopass") as err:
        acl.acl_setuser_args("u", ["reset", rule], [HASH])
    assert "s3cret" not in str(err.value)


@pytest.mark.parametrize("name", ["", "a b", "a\tb", "a\nb"])
def test_setuser_args_refuse_user_names_with_spaces_and_name_them(name: str) -> None:
    with pytest.raises(ValueError, match="must be non-empty and contain no spaces") as err:
        acl.acl_setuser_args(name, ["reset"], [])
    assert repr(name) in str(err.value)


# --- reading rules and GETUSER replies ------------------------------------------------
# Each rule list with the ACL GETUSER reply redis-server 7.0.15 gave for it (RESP2, raw
# bytes: the form a connection without response callbacks returns). parse_rules must
# read the list as normalize_getuser reads the reply.
GETUSER_REPLIES = [
    pytest.param(
        ["reset", "on", "off", "nopass", "allkeys", "allchannels", "allcommands"],
        [b"flags", [b"off", b"nopass", b"sanitize-payload"], b"passwords", [],
         b"commands", b"+@all", b"keys", b"~*", b"channels", b"&*", b"selectors", []],
        id="last-on/off-wins-and-all-keywords"),
    pytest.param(
        ["reset", "ON", "ALLKEYS", "ALLCHANNELS", "NOCOMMANDS", "+XADD"],
        [b"flags", [b"on", b"sanitize-payload"], b"passwords", [], b"commands",
         b"-@all +xadd", b"keys", b"~*", b"channels", b"&*", b"selectors", []],
        id="keywords-any-case"),
    pytest.param(
        ["reset", "on", "resetpass", "#" + HASH, "skip-sanitize-payload",
         "sanitize-payload", "resetkeys", "resetchannels", "clearselectors", "nocommands",
         "+get", "%RW~a", "%r~b", "%W~c~d", "~e)", "&ch", "(~s &sch -@all +publish +get)"],
        [b"flags", [b"on", b"sanitize-payload"], b"passwords", [HASH.encode()],
         b"commands", b"-@all +get", b"keys", b"~a %R~b %W~c~d ~e)", b"channels", b"&ch",
         b"selectors", [[b"commands", b"-@all +get +publish", b"keys", b"~s",
                         b"channels", b"&sch"]]],
        id="passwords-patterns-channels-selectors"),
]


@pytest.mark.parametrize("rules,reply", GETUSER_REPLIES)
def test_rule_list_reads_as_the_server_shows_it(rules: list[str], reply: list[object]) -> None:
    assert acl.parse_rules(rules) == acl.normalize_getuser(reply)


def test_getuser_reply_in_every_shape_normalizes_alike() -> None:
    """RESP2 flat pairs, a RESP3 map, and redis-py's parsed dict (which splits the
    categories out of the commands) are one user."""
    flat = GETUSER_REPLIES[2].values[1]
    want = acl.UserRules(
        enabled=True, nopass=False, passwords=frozenset({HASH}),
        commands=frozenset({"-@all", "+get"}), keys=frozenset({"~a", "%R~b", "%W~c~d", "~e)"}),
        channels=frozenset({"&ch"}),
        selectors=frozenset({(frozenset({"-@all", "+get", "+publish"}), frozenset({"~s"}),
                              frozenset({"&sch"}))}))
    assert acl.normalize_getuser(flat) == want
    resp3 = acl.getuser_dict(flat)
    assert resp3["keys"] == "~a %R~b %W~c~d ~e)" and resp3["passwords"] == [HASH]
    resp3["selectors"] = [{"commands": "-@all +get +publish", "keys": "~s", "channels": "&sch"}]
    assert acl.normalize_getuser(resp3) == want
    redis_py = {**resp3, "commands": ["+get"], "categories": ["-@all"], "enabled": True,
                "keys": ["~a", "%R~b", "%W~c~d", "~e)"], "channels": ["&ch"]}
    assert acl.normalize_getuser(redis_py) == want
    # Command names compare in the server's (lowercase) spelling.
    assert acl.normalize_getuser({**resp3, "commands": "-@all +GET"}).commands == want.commands


def test_truncated_or_unknown_getuser_replies_are_errors() -> None:
    flat = GETUSER_REPLIES[0].values[1]
    with pytest.raises(ValueError):  # an odd flat list: a field without its value
        acl.getuser_dict(flat[:-1])
    with pytest.raises(TypeError, match="unexpected ACL GETUSER reply: int"):
        acl.getuser_dict(7)


def test_parse_rules_names_an_unknown_token_but_never_a_plaintext_password() -> None:
    with pytest.raises(ValueError, match="unsupported ACL rule 'bogus'"):
        acl.parse_rules(["reset", "bogus"])
    for secret in (">s3cret-pw", "<s3cret-pw"):
        with pytest.raises(ValueError, match="plaintext password") as err:
            acl.parse_rules(["reset", secret])
        assert "s3cret" not in str(err.value)


def test_parse_rules_reads_only_whole_parenthesized_tokens_as_selectors() -> None:
    """Only a token that both opens and closes with parentheses is a selector: a key
    pattern may end in one, and an unclosed selector is refused (as Redis refuses it:
    "Unmatched parenthesis in acl selector")."""
    assert acl.parse_rules(["~e)", "(~s +get)"]).keys == {"~e)"}
    with pytest.raises(ValueError, match=r"unsupported ACL rule '\(~s \+get'"):
        acl.parse_rules(["(~s +get"])


def test_rules_match_a_reference_reply_without_passwords() -> None:
    reference = {**REPLY, b"flags": [b"off", b"sanitize-payload"], b"passwords": []}
    assert acl.rules_match(REPLY, reference)


def test_a_user_switched_to_nopass_is_drift() -> None:
    nopass = {**REPLY, b"flags": [b"on", b"nopass", b"sanitize-payload"]}
    reference = {**REPLY, b"flags": [b"off", b"sanitize-payload"], b"passwords": []}
    assert not acl.rules_match(nopass, RULES)
    assert not acl.rules_match(nopass, reference)
    assert not acl.rules_match(nopass, reference, ["a" * 64])


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
