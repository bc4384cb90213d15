"""What Redis must get for one AgentQueue: observed state in, typed actions out. Pure.

`redisgw.provision` observes (one pipelined round trip per node) and applies; this
module only decides. An empty plan means Redis already matches the spec; a
non-empty plan on an already-provisioned queue is drift being repaired (the
actions' `describe()` texts go into status and Events).

Stream queues get their stream before the first message, so consumer groups can
be created and `XLEN` reads 0 rather than "no such key". It is made with
`XGROUP CREATE <key> aq.provision $ MKSTREAM` then `XGROUP DESTROY`: that leaves
length 0, no group, and `entries-added` 0 (an XADD + XDEL would leave a
last-generated id and entries-added 1, which lag arithmetic would count).
List queues need no key (Redis deletes empty lists); PubSub queues store nothing
but the metadata hash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agentqueue_client import keys

from ..models import AgentQueueSpec, parse_duration
from ..models.queue import QueueType

__all__ = [
    "Action",
    "CreateStream",
    "DeleteUser",
    "EnsureUser",
    "KeyConflict",
    "LoadLibrary",
    "ObservedPartition",
    "ObservedQueue",
    "ObservedUser",
    "WriteMeta",
    "desired_meta",
    "plan_queue",
    "plan_users",
]

#: Meta fields this plan owns. Others (`paused:<group>`, written by the ConsumerGroup
#: reconciler) are never touched.
OWNED_META_FIELDS = frozenset({
    "type", "partitions", "maxDeliveries", "retryInitialMs", "retryMaxMs",
    "retryMultiplier", "retryJitter", "deadLetter", "idempotency", "idempotencyTtlMs",
    "priorityLevels", "schema", "generation",
})

# Redis TYPE of the queue key per queue type ("none": absent).
_QUEUE_KEY_TYPE = {QueueType.STREAM: "stream", QueueType.LIST: "list"}


class KeyConflict(ValueError):
    """A key of the queue holds another data type (e.g. a retained Stream queue's data
    under a queue re-created as List). Only a human can decide what to do with it."""


# --- observed state --------------------------------------------------------------

@dataclass(frozen=True)
class ObservedPartition:
    index: int
    queue_key: str
    queue_key_type: str = "none"  # Redis TYPE: stream, list, none, ...
    dead_letter_type: str = "none"
    retry_type: str = "none"
    length: int = 0  # List: all priority levels
    dead_letter_length: int = 0
    scheduled_retries: int = 0
    memory_bytes: int = 0
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ObservedUser:
    username: str
    exists: bool
    rules_match: bool


@dataclass(frozen=True)
class ObservedQueue:
    namespace: str
    name: str
    queue_type: str
    partitions: tuple[ObservedPartition, ...]
    #: node → loaded library version (None: missing), and the version we ship.
    library_versions: Mapping[str, str | None] = field(default_factory=dict)
    library_wanted: str | None = None
    users: Mapping[str, ObservedUser] = field(default_factory=dict)

    @property
    def library_current(self) -> bool:
        return bool(self.library_versions) and all(
            v == self.library_wanted for v in self.library_versions.values())


# --- actions ---------------------------------------------------------------------

@dataclass(frozen=True)
class CreateStream:
    key: str

    def describe(self) -> str:
        return f"create stream {self.key}"


@dataclass(frozen=True)
class WriteMeta:
    key: str
    fields: Mapping[str, str]
    remove: tuple[str, ...] = ()

    def describe(self) -> str:
        changed = sorted([*self.fields, *self.remove])
        return f"write metadata {self.key} ({', '.join(changed)})"


@dataclass(frozen=True)
class LoadLibrary:
    def describe(self) -> str:
        return "load the agentqueue Functions library"


@dataclass(frozen=True)
class EnsureUser:
    username: str
    rules: tuple[str, ...]
    password_hashes: tuple[str, ...] = field(repr=False, default=())

    def describe(self) -> str:
        return f"ACL user {self.username}"


@dataclass(frozen=True)
class DeleteUser:
    username: str

    def describe(self) -> str:
        return f"delete ACL user {self.username}"


Action = CreateStream | WriteMeta | LoadLibrary | EnsureUser | DeleteUser


# --- planning --------------------------------------------------------------------

def _ms(duration: str) -> str:
    return str(round(parse_duration(duration) * 1000))


def _flag(value: bool) -> str:
    return "1" if value else "0"


def desired_meta(spec: AgentQueueSpec, generation: int | None = None) -> dict[str, str]:
    """The metadata hash every partition carries (docs/design.md)."""
    retry = spec.delivery.retry
    meta = {
        "type": str(QueueType(spec.type)),
        "partitions": str(spec.partitions),
        "maxDeliveries": str(spec.delivery.max_deliveries),
        "retryInitialMs": _ms(retry.initial_delay),
        "retryMaxMs": _ms(retry.max_delay),
        "retryMultiplier": repr(float(retry.multiplier)),
        "retryJitter": _flag(retry.jitter),
        "deadLetter": _flag(spec.dead_letter.enabled),
        "idempotency": _flag(spec.idempotency.enabled),
        "idempotencyTtlMs": _ms(spec.idempotency.ttl),
        "priorityLevels": str(spec.priority_levels),
    }
    if spec.schema_ is not None:
        meta["schema"] = json.dumps(spec.schema_, sort_keys=True, separators=(",", ":"))
    if generation is not None:
        meta["generation"] = str(generation)
    return meta


def _check_type(key: str, actual: str, expected: str) -> None:
    if actual not in ("none", expected):
        raise KeyConflict(f"key {key} holds a {actual}, expected {expected}; "
                          "delete or rename it to proceed")


def plan_queue(spec: AgentQueueSpec, namespace: str, name: str, observed: ObservedQueue,
               *, generation: int | None = None) -> list[Action]:
    """Actions that bring the queue's keys, metadata and the library in line with
    `spec`. Raises KeyConflict when a key holds data of another type."""
    qtype = QueueType(spec.type)
    actions: list[Action] = []
    if qtype is not QueueType.PUBSUB and not observed.library_current:
        actions.append(LoadLibrary())
    wanted_meta = desired_meta(spec, generation)
    seen = {p.index: p for p in observed.partitions}
    for part in keys.partition_keys(namespace, name, spec.partitions):
        obs = seen.get(part.partition) or ObservedPartition(part.partition, part.queue_key)
        if qtype is not QueueType.PUBSUB:
            _check_type(part.queue_key, obs.queue_key_type, _QUEUE_KEY_TYPE[qtype])
            _check_type(part.dead_letter, obs.dead_letter_type, "stream")
            _check_type(part.retry, obs.retry_type, "zset")
        if qtype is QueueType.STREAM and obs.queue_key_type == "none":
            actions.append(CreateStream(part.queue_key))
        changed = {k: v for k, v in wanted_meta.items() if obs.meta.get(k) != v}
        remove = tuple(sorted(k for k in obs.meta if k in OWNED_META_FIELDS
                              and k not in wanted_meta
                              and not (k == "generation" and generation is None)))
        if changed or remove:
            actions.append(WriteMeta(part.meta, changed, remove))
    return actions


def plan_users(wanted: Mapping[str, tuple[Sequence[str], Sequence[str]]],
               observed: Mapping[str, ObservedUser], owned: Sequence[str] = ()
               ) -> list[Action]:
    """EnsureUser for every wanted user (username → (rules, password hashes)) that is
    missing or drifted; DeleteUser for `owned` users no longer wanted."""
    actions: list[Action] = []
    for username, (rules, hashes) in sorted(wanted.items()):
        obs = observed.get(username)
        if obs is None or not obs.exists or not obs.rules_match:
            actions.append(EnsureUser(username, tuple(rules), tuple(hashes)))
    for username in sorted(set(owned) - set(wanted)):
        actions.append(DeleteUser(username))
    return actions
