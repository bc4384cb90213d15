"""The ACL matrix as complete allow-lists (issue 17, item 4), on a real redis-server.

For every role and queue type the tables below state every command a user may run and,
for keyed commands, every kind of key it may run it on. The test asks the server
(``ACL DRYRUN``) about *every* command and subcommand in its own ``COMMAND INFO``, on
every kind of key of the queue and on another queue's and namespace's keys, and
requires the allowed set to equal the table: whatever is not listed is refused, and a
privilege added to `planning/acl.py` (``+xtrim``, read-write on the metadata hash ...)
fails here until it is written down. Functions are checked the same way, per function
and key set.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentqueue.models.queue import QueueType, Role
from agentqueue.planning.acl import acl_rules
from agentqueue.redisgw import functions, users
from agentqueue.redisgw.connection import RedisClient
from agentqueue_client import keys as K

NS, Q = "tenant-a", "jobs"
P = K.PartitionKeys(NS, Q, 0)
KINDS = {
    "q": P.queue_key, "prio": P.queue_key + ":1", "retry": P.retry, "dlq": P.dead_letter,
    "meta": P.meta, "stats": P.stats, "idem": P.idempotency("x"),
    "proc": P.queue_key.replace(":q", ":proc:c1"),
    "other": K.PartitionKeys(NS, "jobs2", 0).queue_key,
    "otherns": K.PartitionKeys("tenant-b", Q, 0).queue_key,
}
CHANNELS = {"chan": K.channel_name(NS, Q), "otherchan": K.channel_name(NS, "jobs2")}

# Keyless commands every role has: connection housekeeping and topology discovery.
# AUTH, HELLO, QUIT and RESET are always allowed by Redis itself.
HOUSEKEEPING = {"auth", "hello", "quit", "reset", "ping", "time", "readonly", "readwrite",
                "client|getname", "client|id", "client|setname", "cluster|myid",
                "cluster|nodes", "cluster|shards", "cluster|slots", "command|count",
                "command|docs", "command|getkeys", "command|getkeysandflags",
                "command|help", "command|info", "command|list"}
TXN = {"multi", "exec", "discard", "unwatch"}
STREAM_READ = ["xinfo|consumers", "xinfo|groups", "xinfo|stream", "xlen", "xpending",
               "xrange", "xrevrange"]
ALL_MINE = "dlq idem meta prio proc q retry stats"


def _table(keyless: set[str], keyed: dict[str, str]) -> set[tuple[str, str]]:
    out = {(c, "-") for c in HOUSEKEEPING | keyless}
    for cmds, kinds in keyed.items():
        for c in cmds.split():
            out |= {(c, k) for k in kinds.split()}
    return out


# command(s) → the kinds of key (or channel) they may be used on
ALLOWED: dict[tuple[QueueType, Role], set[tuple[str, str]]] = {
    (QueueType.STREAM, Role.PRODUCER): _table(set(), {
        "get set": "idem",
        "hget hgetall hmget type": "idem meta q",
        "xadd": "idem q",
    }),
    (QueueType.STREAM, Role.CONSUMER): _table(TXN, {
        "exists get set watch": "idem",
        "hincrby": "stats",
        "type": "dlq meta q retry stats",
        "hget hgetall hmget xlen xpending xrange xrevrange zcard zrange xreadgroup "
        "xinfo|consumers xinfo|groups xinfo|stream": "dlq meta q retry",
        "xack xadd xautoclaim xclaim zadd zrem": "dlq q retry",
    }),
    (QueueType.STREAM, Role.OBSERVER): _table(set(), {
        " ".join(["hget", "hgetall", "zcard", *STREAM_READ]): ALL_MINE,
    }),
    (QueueType.LIST, Role.PRODUCER): _table(TXN, {
        "get set watch": "idem",
        "hget hgetall hmget": "idem meta",
        "lpush rpush": "idem prio q",
    }),
    (QueueType.LIST, Role.CONSUMER): _table(TXN, {
        "exists get set": "idem",
        "watch": "dlq idem meta prio proc q retry",
        "hincrby": "stats",
        "hget hgetall hmget lindex llen lpos lrange xlen xrange zcard zrange":
            "dlq meta prio proc q retry",
        "blmove blmpop blpop brpop lmove lmpop lpop lpush lrem rpop rpush xadd zadd zrem":
            "dlq prio proc q retry",
    }),
    (QueueType.LIST, Role.OBSERVER): _table(set(), {
        " ".join(["hget", "hgetall", "llen", "lrange", "zcard", "zrange", *STREAM_READ]):
            ALL_MINE,
    }),
    (QueueType.PUBSUB, Role.PRODUCER): _table(set(), {
        "get set": "idem", "hget hgetall hmget": "meta", "publish spublish": "chan",
    }),
    (QueueType.PUBSUB, Role.CONSUMER): _table(set(), {
        "hget hgetall hmget": "meta", "subscribe ssubscribe": "chan",
        # Unsubscribing is never checked against channels (harmless).
        "unsubscribe sunsubscribe": "chan otherchan",
    }),
    (QueueType.PUBSUB, Role.OBSERVER): _table(set(), {
        "hget hgetall hmget": "meta",
        # NUMSUB takes channel names, not patterns: counts only, never messages.
        "pubsub|numsub pubsub|shardnumsub": "chan otherchan",
    }),
}

# Functions: name → the key kinds it is called with (a partition's keys).
FUNCTION_KEYS = {"aq_enqueue": ["q", "idem"], "aq_nack": ["q", "retry", "stats"],
                 "aq_promote": ["q", "retry"], "aq_deadletter": ["q", "dlq"]}
FUNCTIONS_ALLOWED = {
    (QueueType.STREAM, Role.PRODUCER): {"aq_enqueue"},
    (QueueType.STREAM, Role.CONSUMER): {"aq_nack", "aq_promote", "aq_deadletter"},
}


def _argv(name: str, arity: int, specs: list[dict[str, Any]], filler: str) -> list[str]:
    """Arguments that satisfy the command's arity and put `filler` at every key
    position its key specs name (numkeys set to 1, keywords such as STREAMS added)."""
    argv = name.split("|")
    argv += [filler] * max(0, abs(arity) - len(argv))
    for spec in specs:
        begin, find = spec["begin_search"], spec["find_keys"]
        if begin["type"] == "keyword":
            argv += [begin["spec"]["keyword"], filler, filler]
        elif find["type"] == "keynum":
            i = begin["spec"]["index"]
            numkeys, first = i + find["spec"]["keynumidx"], i + find["spec"]["firstkey"]
            argv += [filler] * (max(numkeys, first) + 1 - len(argv))
            argv[numkeys], argv[first] = "1", filler
    return argv


async def _all_commands(client: RedisClient) -> list[tuple[str, int, list[Any], list[str]]]:
    """(name, arity, key specs, ACL categories) of every command and subcommand."""
    info = await client.execute_command("COMMAND", "INFO")
    out = []
    for name, doc in info.items():
        for sub in doc.get("subcommands") or []:
            out.append((sub[0], sub[1], sub[8] if len(sub) > 8 else [], sub[6]))
        if not doc.get("subcommands"):
            out.append((name, doc["arity"], doc.get("key_specifications") or [],
                        doc["acl_categories"]))
    return out


async def _allowed(client: RedisClient, user: str) -> set[tuple[str, str]]:
    plan: list[tuple[str, str]] = []
    pipe = client.pipeline(transaction=False)
    commands = await _all_commands(client)
    assert len(commands) > 300  # the server's real list, subcommands included
    for name, arity, specs, cats in commands:
        if name in ("fcall", "fcall_ro"):
            continue  # below, per function
        if "@pubsub" in cats:
            fillers = CHANNELS
        elif specs:
            fillers = KINDS
        else:
            fillers = {"-": "0"}
        for kind, filler in fillers.items():
            plan.append((name, kind))
            pipe.execute_command("ACL", "DRYRUN", user, *_argv(name, arity, specs, filler))
    found = set()
    for what, reply in zip(plan, await pipe.execute(raise_on_error=False), strict=True):
        if reply == "OK":
            found.add(what)
        else:  # refused for permissions, never for a malformed probe
            assert isinstance(reply, str) and "no permissions" in reply, (what, reply)
    return found


async def _functions_allowed(client: RedisClient, user: str) -> set[str]:
    found = set()
    for fn, kinds in FUNCTION_KEYS.items():
        argv = ["fcall", fn, str(len(kinds)), *(KINDS[k] for k in kinds)]
        if await client.execute_command("ACL", "DRYRUN", user, *argv) == "OK":
            found.add(fn)
        # ... and never with another queue's or namespace's stream in place of its own
        for other in ("other", "otherns"):
            foreign = [KINDS[other], *(KINDS[k] for k in kinds[1:])]
            reply = await client.execute_command("ACL", "DRYRUN", user, "fcall", fn,
                                                 str(len(kinds)), *foreign)
            assert reply != "OK", (fn, other)
    return found


@pytest.mark.parametrize("qtype", list(QueueType))
@pytest.mark.parametrize("role", list(Role))
async def test_role_may_use_exactly_its_allow_list(redis_client: RedisClient, role: Role,
                                                   qtype: QueueType) -> None:
    await functions.ensure_library(redis_client)
    user = K.acl_username(NS, Q, "matrix")
    await users.ensure_user(redis_client, user, acl_rules(role, NS, Q, qtype, 2),
                            [users.sha256_hex("pw")])
    got = await _allowed(redis_client, user)
    want = ALLOWED[(qtype, role)]
    assert sorted(got - want) == [], "allowed but not in the allow-list"
    assert sorted(want - got) == [], "in the allow-list but refused"
    assert await _functions_allowed(redis_client, user) == FUNCTIONS_ALLOWED.get(
        (qtype, role), set())
    # Nothing of another queue or namespace, whatever the command.
    assert not {k for _, k in got} & {"other", "otherns", "otherchan"} - {
        k for c, k in want if k == "otherchan"}


@pytest.mark.parametrize("tamper, why", [
    (["resetkeys", "%R~aq:{tenant-a/jobs/*}:q", "~aq:{tenant-a/jobs/*}:idem:*",
      "%R~aq:{tenant-a/jobs/*}:meta"], "read-write stream made read-only"),
    (["resetkeys", "~aq:{tenant-a/jobs/*}:q", "~aq:{tenant-a/jobs/*}:idem:*",
      "~aq:{tenant-a/jobs/*}:meta"], "read-only metadata hash made read-write"),
    (["+xtrim"], "a command added"),
    (["-type"], "a command removed"),
    (["(~aq:{tenant-a/jobs/*}:q +xdel)"], "a selector added"),
    (["clearselectors"], "the selectors removed"),
    (["&*"], "a channel added"),
])
async def test_drift_compares_the_whole_rule_set(redis_client: RedisClient,
                                                 tamper: list[str], why: str) -> None:
    """Every difference from the planned rules, however small, is drift and repaired."""
    user = K.acl_username(NS, Q, "drift")
    rules = acl_rules(Role.PRODUCER, NS, Q, QueueType.STREAM, 1)
    hashes = [users.sha256_hex("pw")]
    assert await users.ensure_user(redis_client, user, rules, hashes) is True
    assert await users.ensure_user(redis_client, user, rules, hashes) is False
    await redis_client.execute_command("ACL", "SETUSER", user, *tamper)
    assert await users.ensure_user(redis_client, user, rules, hashes) is True, why
    assert await users.ensure_user(redis_client, user, rules, hashes) is False
