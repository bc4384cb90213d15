"""ACL rules per role: least privilege, as ACL SETUSER tokens. Pure.

Every rule set is a full definition starting with `reset`, so applying it is
idempotent and leaves nothing of an older definition behind (one ACL SETUSER is
atomic: the user is never half-defined).

Why the rules look the way they do (Redis 7):

- A function runs with the caller's ACL: every `redis.call` inside is checked
  against the user. A role that calls `aq_enqueue` therefore needs XADD, GET and SET
  itself, and FCALL needs read *and* write permission on every key it is given.
- `+fcall|<name>` (first-argument rule) limits FCALL to the role's functions.
- The producer's GET/SET live in a selector bound to the idempotency keys only, so a
  producer cannot SET over the stream or the metadata hash.
- Command rules cannot restrict arguments: a producer's XADD could carry MAXLEN.
  Within its own queue a role is trusted not to be malicious; the boundary that
  ACLs do enforce is between queues and namespaces (key and channel patterns) and
  between roles (what kind of command).
- The stats hash (``aq:{..}:stats``, counters for the retry-rate SLO) is written by
  consumers only, through two selectors and nothing else: ``(~stats -@all +hincrby)``
  for the increment (the List SDK's, and the one inside ``aq_nack``), and one that lets
  FCALL ``aq_nack`` be passed the stream, the retry set and the stats hash together
  (FCALL needs RW on all of them in one selector). The root rules do not cover the
  stats key, so no other command (XADD, ZADD, LPUSH ...) can create or touch it.
  Observers read it with their read-only pattern over the whole queue.
- Cluster clients discover the topology (CLUSTER SLOTS/SHARDS, COMMAND) on connect.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentqueue_client import keys

from ..models.queue import QueueType, Role

__all__ = [
    "UserRules",
    "acl_rules",
    "acl_setuser_args",
    "getuser_dict",
    "normalize_getuser",
    "parse_rules",
    "rules_match",
]

# Connection housekeeping every role needs: health checks, client names, cluster
# topology discovery, the server's clock (ages are measured against it, as stream ids
# are). None of them touches data.
_BASE = ["+ping", "+time", "+client|setname", "+client|getname", "+client|id", "+cluster|slots",
         "+cluster|shards", "+cluster|nodes", "+cluster|myid", "+command", "+readonly",
         "+readwrite", "+fcall_ro|aq_version"]
_META_READ = ["+hget", "+hgetall", "+hmget"]
# Keyless transaction commands (WATCH is keyed and granted per key pattern).
_TXN = ["+multi", "+exec", "+discard", "+unwatch"]
_STREAM_READ = ["+xlen", "+xrange", "+xrevrange", "+xpending", "+xinfo|stream",
                "+xinfo|groups", "+xinfo|consumers"]


def _pattern(namespace: str, queue: str, suffix: str) -> str:
    """Key glob for one kind of key across all partitions of a queue, e.g.
    ``aq:{ns/q/*}:retry``. The queue prefix ``aq:{ns/q/`` bounds every match."""
    return f"{keys.queue_key_pattern(namespace, queue)}}}:{suffix}"


def acl_rules(role: Role | str, namespace: str, queue: str, queue_type: QueueType | str,
              partitions: int) -> list[str]:
    """ACL SETUSER tokens (without passwords) for one access entry.

    `partitions` does not change the rules (patterns cover every partition, so a
    queue can grow without touching its users) but is part of the signature so
    callers state what they provision."""
    role, queue_type = Role(role), QueueType(queue_type)
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    q = _pattern(namespace, queue, "q")
    prio = _pattern(namespace, queue, "q:*")
    idem = _pattern(namespace, queue, "idem:*")
    meta = _pattern(namespace, queue, "meta")
    dlq = _pattern(namespace, queue, "dlq")
    retry = _pattern(namespace, queue, "retry")
    proc = _pattern(namespace, queue, "proc:*")
    stats = _pattern(namespace, queue, "stats")
    everything = keys.queue_key_pattern(namespace, queue)
    channel = keys.channel_name(namespace, queue)

    # Every branch below sets the key rules and commands; channels and selectors are
    # optional.
    key_rules: list[str]
    commands: list[str]
    channel_rules: list[str] = []
    selectors: list[str] = []

    if queue_type is QueueType.PUBSUB:
        key_rules = [f"%R~{meta}"]
        commands = list(_META_READ)
        if role is Role.PRODUCER:
            channel_rules = [f"&{channel}"]
            commands += ["+publish", "+spublish"]
            # The SDK suppresses duplicate publishes with idempotency keys.
            selectors = [f"(~{idem} -@all +get +set)"]
        elif role is Role.CONSUMER:
            channel_rules = [f"&{channel}"]
            commands += ["+subscribe", "+unsubscribe", "+ssubscribe", "+sunsubscribe"]
        else:
            # NUMSUB takes channel names, not patterns: reveals counts, no messages.
            commands += ["+pubsub|numsub", "+pubsub|shardnumsub"]
    elif role is Role.OBSERVER:
        key_rules = [f"%R~{everything}"]
        commands = ["+zcard", "+hgetall", "+hget"] + _STREAM_READ
        if queue_type is QueueType.LIST:
            # ZRANGE: the consumers' heartbeat set (who is present), for live status.
            commands += ["+llen", "+lrange", "+zrange"]
    elif queue_type is QueueType.STREAM:
        if role is Role.PRODUCER:
            # FCALL needs RW on both keys it is passed (stream and idempotency key).
            key_rules = [f"~{q}", f"~{idem}", f"%R~{meta}"]
            # TYPE: aq_enqueue checks its keys' types before it writes.
            commands = ["+xadd", "+type", "+fcall|aq_enqueue"] + _META_READ
            selectors = [f"(~{idem} -@all +get +set)"]
        else:
            key_rules = [f"~{q}", f"~{retry}", f"~{dlq}", f"%R~{meta}"]
            commands = (["+xreadgroup", "+xack", "+xclaim", "+xautoclaim", "+xadd",
                         "+zadd", "+zrange", "+zrem", "+zcard", "+type",
                         "+fcall|aq_nack", "+fcall|aq_deadletter", "+fcall|aq_promote"]
                        + _STREAM_READ + _META_READ + _TXN)
            # The SDK's once(): a done-marker under idem:* set in a transaction.
            selectors = [f"(~{idem} -@all +get +set +exists +watch)",
                         f"(~{q} ~{retry} ~{stats} -@all +fcall|aq_nack)",
                         f"(~{stats} -@all +hincrby +type)"]
    else:  # List
        if role is Role.PRODUCER:
            key_rules = [f"%W~{q}", f"%W~{prio}", f"~{idem}", f"%R~{meta}"]
            commands = ["+lpush", "+rpush"] + _META_READ + _TXN
            selectors = [f"(~{idem} -@all +get +set +watch)"]
        else:
            # LMOVE into a per-consumer processing list; retries and dead letters
            # use the same retry zset and DLQ stream as Stream queues.
            key_rules = [f"~{q}", f"~{prio}", f"~{proc}", f"~{retry}", f"~{dlq}",
                         f"%R~{meta}"]
            commands = (["+lmove", "+blmove", "+lmpop", "+blmpop", "+lpop", "+rpop",
                         "+blpop", "+brpop", "+lrem", "+lrange", "+llen", "+lindex",
                         "+lpush", "+rpush", "+xadd", "+xlen", "+xrange",
                         "+zadd", "+zrange", "+zrem", "+zcard", "+lpos", "+watch"]
                        + _META_READ + _TXN)
            # HINCRBY of the stats hash: retries (in the nack's MULTI) and deliveries.
            selectors = [f"(~{idem} -@all +get +set +exists +watch)",
                         f"(~{stats} -@all +hincrby)"]

    return (["reset", "on", "resetkeys", "resetchannels", *key_rules, *channel_rules,
             "-@all", *_BASE, *commands, *selectors])


_SHA256_HEX = re.compile("[0-9a-f]{64}")


def acl_setuser_args(username: str, rules: Sequence[str],
                     passwords_sha256: Iterable[str]) -> list[str]:
    """Arguments after ``ACL SETUSER``: the user, the rules, then `#<sha256>` per
    password. Hashes only: plaintext never goes over the wire, and a hash can be
    compared with ACL GETUSER to detect drift."""
    if not username or any(c.isspace() for c in username):
        raise ValueError(f"ACL user name {username!r} must be non-empty and contain no spaces")
    hashes = []
    for h in passwords_sha256:
        # Redis takes lowercase hex only. The message never shows the hash.
        if not _SHA256_HEX.fullmatch(h.lower()):
            raise ValueError("password hashes must be 64 hex digits (sha256)")
        hashes.append(f"#{h.lower()}")
    for rule in rules:
        # `>pw` adds and `<pw` removes a plaintext password; Redis reads NOPASS too.
        if rule.startswith((">", "<")) or rule.lower() == "nopass":
            raise ValueError("rules must not carry plaintext passwords or nopass")
    return [username, *rules, *hashes]


@dataclass(frozen=True)
class UserRules:
    """An ACL user in comparable form (sets: Redis reorders rules in its output)."""

    enabled: bool
    nopass: bool
    passwords: frozenset[str]
    commands: frozenset[str]
    keys: frozenset[str]
    channels: frozenset[str]
    selectors: frozenset[tuple[frozenset[str], frozenset[str], frozenset[str]]]


def _key_token(token: str) -> str:
    """Canonical key pattern: Redis shows `%RW~p` (and `%WR~p`) as `~p`."""
    if token.startswith("%"):
        perms, _, pattern = token[1:].partition("~")
        perms = perms.upper()
        if set(perms) == {"R", "W"}:
            return f"~{pattern}"
        return f"%{perms}~{pattern}"
    return token


def _split(value: Any) -> list[str]:
    """Tokens of a GETUSER field (already decoded: a string or a list of them)."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [t for v in value for t in _split(v)]


def _command_set(tokens: Iterable[str]) -> frozenset[str]:
    return frozenset(t.lower() for t in tokens)


def parse_rules(rules: Sequence[str]) -> UserRules:
    """What a list of SETUSER tokens (applied to a fresh user) should read back as."""
    enabled = nopass = False
    passwords: set[str] = set()
    commands: list[str] = []
    key_rules: list[str] = []
    channels: list[str] = []
    selectors = set()
    for rule in rules:
        low = rule.lower()
        if low in ("reset", "resetkeys", "resetchannels", "resetpass", "sanitize-payload",
                   "skip-sanitize-payload", "clearselectors"):
            continue
        if low == "on":
            enabled = True
        elif low == "off":
            enabled = False
        elif low == "nopass":
            nopass = True
        elif rule.startswith("#"):
            passwords.add(rule[1:].lower())
        elif rule.startswith((">", "<")):
            # Not echoed: the token is a plaintext password.
            raise ValueError("plaintext password rules are not supported, use #<sha256>")
        elif rule.startswith(("~", "%")) or low == "allkeys":
            key_rules.append("~*" if low == "allkeys" else _key_token(rule))
        elif rule.startswith("&") or low == "allchannels":
            channels.append("&*" if low == "allchannels" else rule)
        elif rule.startswith("(") and rule.endswith(")"):
            inner = parse_rules(rule[1:-1].split())
            selectors.add((inner.commands, inner.keys, inner.channels))
        elif rule.startswith(("+", "-")) or low in ("allcommands", "nocommands"):
            commands.append({"allcommands": "+@all", "nocommands": "-@all"}.get(low, rule))
        else:
            raise ValueError(f"unsupported ACL rule {rule!r}")
    return UserRules(enabled, nopass, frozenset(passwords), _command_set(commands),
                     frozenset(key_rules), frozenset(channels), frozenset(selectors))


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, Mapping):
        return {_decode(k): _decode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decode(v) for v in value]
    return value


def _as_dict(value: Any) -> dict[str, Any]:
    value = _decode(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):  # RESP2 without a response callback: flat pairs
        return dict(zip(value[::2], value[1::2], strict=True))
    raise TypeError(f"unexpected ACL GETUSER reply: {type(value).__name__}")


def getuser_dict(reply: Any) -> dict[str, Any]:
    """An ACL GETUSER reply (RESP2 flat list, RESP3 map, bytes or str) as a str dict."""
    return _as_dict(reply)


def normalize_getuser(reply: Any) -> UserRules:
    """ACL GETUSER output (raw RESP2/RESP3 or redis-py's parsed dict) → `UserRules`."""
    data = _as_dict(reply)
    flags = {f.lower() for f in _split(data.get("flags"))}
    commands = _split(data.get("commands"))
    if "categories" in data:  # redis-py's parser splits categories out
        commands += _split(data["categories"])
    selectors = set()
    for sel in data.get("selectors") or []:
        s = _as_dict(sel)
        selectors.add((_command_set(_split(s.get("commands"))),
                       frozenset(_key_token(k) for k in _split(s.get("keys"))),
                       frozenset(_split(s.get("channels")))))
    return UserRules(
        enabled="on" in flags,
        nopass="nopass" in flags,
        passwords=frozenset(p.lower() for p in _split(data.get("passwords"))),
        commands=_command_set(commands),
        keys=frozenset(_key_token(k) for k in _split(data.get("keys"))),
        channels=frozenset(_split(data.get("channels"))),
        selectors=frozenset(selectors),
    )


def rules_match(observed_getuser: Any, expected: Sequence[str] | Mapping[Any, Any],
                passwords_sha256: Iterable[str] | None = None) -> bool:
    """Whether the user read back with ACL GETUSER is what we want.

    `expected` is either the rule list, or (more robust) the ACL GETUSER reply of a
    scratch user defined with the same rules on the same server: Redis 7.0 rewrites
    command rules into categories and exceptions (``+@stream -xdel ...``), so only a
    reply from the same server is comparable token for token. A reference user is
    created disabled, so `expected` as a reply means "these rules, enabled".
    With `passwords_sha256` the set of password hashes must match too."""
    if observed_getuser is None:
        return False
    got = normalize_getuser(observed_getuser)
    if isinstance(expected, Mapping):
        ref = normalize_getuser(expected)
        want = UserRules(True, False, frozenset(), ref.commands, ref.keys, ref.channels,
                         ref.selectors)
    else:
        want = parse_rules(expected)
        want = UserRules(want.enabled, want.nopass, frozenset(), want.commands, want.keys,
                         want.channels, want.selectors)
    if passwords_sha256 is not None:
        want = UserRules(want.enabled, want.nopass,
                         frozenset(h.lower() for h in passwords_sha256), want.commands,
                         want.keys, want.channels, want.selectors)
    else:
        got = UserRules(got.enabled, got.nopass, frozenset(), got.commands, got.keys,
                        got.channels, got.selectors)
    return got == want
