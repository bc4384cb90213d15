"""The AgentQueue custom resource: a queue in Redis and who may use it."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

from .common import (
    CommonStatus,
    Duration,
    KubeModel,
    LabelName,
    LocalObjectReference,
    cel,
)


class QueueType(StrEnum):
    STREAM = "Stream"
    LIST = "List"
    PUBSUB = "PubSub"


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class Role(StrEnum):
    PRODUCER = "producer"
    CONSUMER = "consumer"
    OBSERVER = "observer"


class RedisConnectionRef(KubeModel):
    """Where the queue lives; default: the operator's own connection."""

    secret_ref: LocalObjectReference = Field(
        description="Secret with keys url (redis:// or rediss://), and optionally "
        "username, password and ca.crt (for TLS)."
    )


class RetryPolicy(KubeModel):
    """Exponential backoff between deliveries of a failed message."""

    initial_delay: Duration = Field(default="1s", description="Delay before the first retry.")
    max_delay: Duration = Field(default="5m", description="Upper bound of the delay.")
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0, description="Growth per attempt.")
    jitter: bool = Field(default=True, description="Randomise delays (full jitter).")


class DeliveryPolicy(KubeModel):
    max_deliveries: int = Field(
        default=5, ge=1, le=1000,
        description="Deliveries before a message goes to the dead-letter queue.",
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Backoff between retries.")


class DeadLetterPolicy(KubeModel):
    enabled: bool = Field(default=True, description="Keep messages that exhausted their deliveries.")


class IdempotencyPolicy(KubeModel):
    enabled: bool = Field(default=True, description="Drop a message whose idempotency key was seen.")
    ttl: Duration = Field(default="24h", description="How long an idempotency key is remembered.")


class AccessEntry(KubeModel):
    """One Redis ACL user, with its credentials in a Secret."""

    name: LabelName = Field(description="Name of the user; the Secret is <queue>-<name>.")


class AccessSpec(KubeModel):
    producers: list[AccessEntry] = Field(default_factory=list, max_length=32,
                                      json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
                                         description="May enqueue only.")
    consumers: list[AccessEntry] = Field(default_factory=list, max_length=32,
                                      json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
                                         description="May read, acknowledge, retry and dead-letter.")
    observers: list[AccessEntry] = Field(default_factory=list, max_length=32,
                                      json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
                                         description="Read-only: XINFO, XRANGE, XLEN and the like.")

    def entries(self) -> list[tuple[Role, AccessEntry]]:
        return (
            [(Role.PRODUCER, e) for e in self.producers]
            + [(Role.CONSUMER, e) for e in self.consumers]
            + [(Role.OBSERVER, e) for e in self.observers]
        )


class CredentialsPolicy(KubeModel):
    rotate_every: Duration | None = Field(
        default=None,
        description="Rotate passwords this often; also on annotation "
        "agentqueue.io/rotate-credentials.",
    )
    grace_period: Duration = Field(
        default="5m", description="How long the previous password keeps working after a rotation."
    )


class SLOSpec(KubeModel):
    max_depth: int | None = Field(default=None, ge=0, description="Waiting messages, at most.")
    max_waiting_age: Duration | None = Field(default=None,
                                             description="Age of the oldest waiting message.")
    max_retry_rate: float | None = Field(default=None, ge=0.0, le=1.0,
                                         description="Retries per delivery, at most.")


MAX_USER_PARTITIONS = 1024
"""partitions x access entries, at most: what one queue may cost in ACL users times the
partitions each user's traffic spreads over (CRD rule)."""
MAX_SCHEMA_PROPERTIES = 256
"""Top-level keys of spec.schema (CRD); its size in bytes is bounded by the operator
(operator.maxSchemaBytes), as CEL cannot measure a free-form object."""

_UNIQUE_NAMES = (
    "(!has(self.producers) || self.producers.all(a, "
    "(!has(self.consumers) || !self.consumers.exists(b, b.name == a.name)) && "
    "(!has(self.observers) || !self.observers.exists(b, b.name == a.name)))) && "
    "(!has(self.consumers) || !has(self.observers) || "
    "self.consumers.all(a, !self.observers.exists(b, b.name == a.name)))"
)


class AgentQueueSpec(KubeModel):
    """Desired state of a queue."""

    type: QueueType = Field(
        default=QueueType.STREAM,
        description="Stream (consumer groups, replay), List (simple FIFO, priorities) "
        "or PubSub (broadcast, no storage). Immutable.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "type is immutable")]},
    )
    partitions: int = Field(
        default=1, ge=1, le=256,
        description="Shards, each its own key; may grow, never shrink.",
        json_schema_extra={"x-kubernetes-validations": [
            cel("self >= oldSelf", "partitions may grow, never shrink")]},
    )
    redis: RedisConnectionRef | None = Field(default=None, description="Redis to use.")
    delivery: DeliveryPolicy = Field(default_factory=DeliveryPolicy, description="Retries.")
    dead_letter: DeadLetterPolicy = Field(default_factory=DeadLetterPolicy,
                                          description="Dead-letter queue.")
    idempotency: IdempotencyPolicy = Field(default_factory=IdempotencyPolicy,
                                           description="Duplicate suppression.")
    priority_levels: int = Field(default=1, ge=1, le=10,
                                 description="List only: more than 1 gives a priority queue.")
    schema_: dict[str, Any] | None = Field(
        default=None, alias="schema",
        description="JSON Schema (draft 2020-12) every message payload must satisfy.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True,
                           "maxProperties": MAX_SCHEMA_PROPERTIES},
    )
    retention_policy_ref: LocalObjectReference | None = Field(
        default=None, description="RetentionPolicy to apply (wins over selectors).")
    access: AccessSpec = Field(
        default_factory=AccessSpec,
        description="Users, by role; each becomes a Redis ACL user and a Secret.",
        json_schema_extra={"x-kubernetes-validations": [
            cel(_UNIQUE_NAMES, "access names must be unique across producers, consumers "
                "and observers")]},
    )
    credentials: CredentialsPolicy = Field(default_factory=CredentialsPolicy,
                                           description="Password rotation.")
    slo: SLOSpec | None = Field(default=None, description="Objectives; a breach is a condition.")
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.RETAIN,
        description="Retain keeps the data in Redis when the queue is deleted; Delete removes it.",
    )

    @model_validator(mode="after")
    def _priority_needs_list(self) -> AgentQueueSpec:
        if self.priority_levels > 1 and self.type != QueueType.LIST:
            raise ValueError("spec.priorityLevels > 1 needs type List")
        users = len(self.access.entries())
        if self.partitions * users > MAX_USER_PARTITIONS:
            raise ValueError(f"partitions x access entries must be at most "
                             f"{MAX_USER_PARTITIONS} (here {self.partitions} x {users})")
        if self.schema_ is not None and len(self.schema_) > MAX_SCHEMA_PROPERTIES:
            raise ValueError(f"spec.schema has more than {MAX_SCHEMA_PROPERTIES} top-level keys")
        return self


_ACCESS_COUNT = " + ".join(
    f"(has(self.access.{r}) ? size(self.access.{r}) : 0)"
    for r in ("producers", "consumers", "observers"))

AGENTQUEUE_SPEC_RULES = [
    cel(f"!has(self.access) || self.partitions * ({_ACCESS_COUNT}) <= {MAX_USER_PARTITIONS}",
        f"partitions x access entries must be at most {MAX_USER_PARTITIONS}", ".access"),
    cel("self.priorityLevels <= 1 || self.type == 'List'",
        "priorityLevels > 1 needs type List", ".priorityLevels"),
    cel("self.type != 'PubSub' || self.partitions == 1",
        "PubSub queues have exactly one partition", ".partitions"),
]


class PartitionStatus(KubeModel):
    index: int = Field(description="Partition number.")
    key: str = Field(description="The Redis key of the queue.")
    length: int = Field(default=0, description="Entries in the queue.")
    dead_letter_length: int = Field(default=0, description="Entries in the dead-letter queue.")
    scheduled_retries: int = Field(default=0, description="Messages waiting to be retried.")
    memory_bytes: int = Field(default=0, description="MEMORY USAGE of this partition's keys.")


class UserStatus(KubeModel):
    name: str = Field(description="Access entry name.")
    role: Role = Field(description="producer, consumer or observer.")
    username: str = Field(description="The Redis ACL user.")
    secret_name: str = Field(description="Secret with the credentials.")


class CredentialsStatus(KubeModel):
    last_rotation: str | None = Field(default=None, json_schema_extra={"format": "date-time"},
                                      description="When passwords were last rotated.")
    rotation_token: str | None = Field(default=None,
                                       description="Last handled value of the rotate annotation.")
    previous_expires: str | None = Field(default=None, json_schema_extra={"format": "date-time"},
                                         description="When the previous passwords stop working.")


class AgentQueueStatus(CommonStatus):
    type: QueueType | None = Field(default=None, description="Queue type as provisioned.")
    partitions: list[PartitionStatus] = Field(default_factory=list, description="Per partition.")
    length: int = Field(default=0, description="Entries in the queue, all partitions.")
    dead_letter_length: int = Field(default=0, description="Entries in the dead-letter queues.")
    scheduled_retries: int = Field(default=0, description="Messages waiting for a retry.")
    memory_bytes: int = Field(default=0, description="Redis memory used by the queue's keys.")
    key_pattern: str | None = Field(default=None, description="ACL key pattern of the queue.")
    channel: str | None = Field(default=None, description="PubSub channel name.")
    users: list[UserStatus] = Field(default_factory=list, description="ACL users and Secrets.")
    credentials: CredentialsStatus = Field(default_factory=CredentialsStatus,
                                           description="Rotation state.")
    retention_policy: str | None = Field(default=None, description="Effective RetentionPolicy.")
    last_repair: str | None = Field(default=None, json_schema_extra={"format": "date-time"},
                                    description="When drift was last repaired.")
    last_repair_detail: str | None = Field(default=None, description="What was repaired.")
