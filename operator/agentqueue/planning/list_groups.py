"""ConsumerGroups on List queues: which spec fields apply, where in-flight work lives,
and the group's figures. Pure.

A List queue has no Redis consumer group: every consumer LMOVEs from the same priority
lists into its own processing list (client/_lists.py). What a ConsumerGroup means there:

- ``groupName`` names the settings the SDK's consumers read (``AQ_GROUP``):
  ``visibilityMs:<group>``, ``maxDeliveries:<group>`` and ``paused:<group>`` in the
  queue's metadata hash. Nothing is created in Redis for it.
- ``visibilityTimeout``: a consumer whose heartbeat is older than this is dead; the
  other consumers move its processing list back to the queue.
- ``maxDeliveries``: enforced by the consumers when they read a message (the attempt
  field ``a``), not by an operator sweep.
- ``paused``, ``pauseReason``, ``scaleTargetRef``, ``scaling``: as for a Stream.
- ``startFrom`` (XGROUP CREATE's position) and ``deadConsumerTimeout`` (XGROUP
  DELCONSUMER) have no List meaning: a value other than the default is refused
  (`stream_only_fields`), never silently ignored. The type lives on the AgentQueue, so
  the CRD cannot check it.

Waiting work is the same sum as for a Stream: ``lag`` (elements in every priority list)
+ ``pending`` (elements in the consumers' processing lists: in flight) + retries due now.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agentqueue_client.keys import PartitionKeys

from ..models.common import parse_duration
from ..models.group import ConsumerGroupSpec
from .lag import waiting

HEARTBEATS = "#consumers"
"""The consumers' heartbeat sorted set's suffix after ``proc:`` (never a consumer name:
those cannot start with ``#``)."""
MAX_PROCESSING_KEYS = 1000
"""Most processing lists read per partition per poll (a bound on one script call)."""

_DEFAULTS = ConsumerGroupSpec.model_fields


def _default(name: str) -> str:
    value = _DEFAULTS[name].default
    assert isinstance(value, str)
    return value


def stream_only_fields(spec: ConsumerGroupSpec) -> list[str]:
    """One message per field set to a value that means nothing on a List queue (the
    defaults are accepted: the CRD fills them in whether the user wrote them or not)."""
    problems: list[str] = []
    if spec.start_from != _default("start_from"):
        problems.append(
            f"spec.startFrom ({spec.start_from}) applies to Stream queues only: a List "
            "queue's consumers always take its oldest waiting message; remove the field")
    dead = _default("dead_consumer_timeout")
    if parse_duration(spec.dead_consumer_timeout) != parse_duration(dead):
        problems.append(
            f"spec.deadConsumerTimeout ({spec.dead_consumer_timeout}) applies to Stream "
            "queues only: List consumers that stop heartbeating are forgotten after "
            "spec.visibilityTimeout, once another consumer took their messages back; "
            "remove the field")
    return problems


def processing_partition(key: str, namespace: str, queue: str) -> int | None:
    """The partition of a processing list key ``aq:{ns/q/p}:proc:<consumer>`` of this
    queue; None for any other key (the heartbeat set, another queue, a malformed one)."""
    head = f"aq:{{{namespace}/{queue}/"
    if not key.startswith(head):
        return None
    partition, sep, rest = key[len(head):].partition("}:proc:")
    if not sep or not rest or rest.startswith("#") or not partition.isdigit():
        return None
    if partition != str(int(partition)):
        return None  # "01" is not partition 1's tag
    return int(partition)


def processing_keys(part: PartitionKeys, scanned: Iterable[str],
                    heartbeat_names: Iterable[str]) -> list[str]:
    """The processing lists to read for one partition: those a SCAN found, and those of
    the consumers in the heartbeat set (found before the next SCAN), at most
    MAX_PROCESSING_KEYS, sorted (a stable script call)."""
    found = {k for k in scanned
             if processing_partition(k, part.namespace, part.queue) == part.partition}
    found |= {part.processing(n) for n in heartbeat_names if n and not n.startswith("#")}
    return sorted(found)[:MAX_PROCESSING_KEYS]


@dataclass(frozen=True)
class ListPartitionWork:
    """One partition of a List queue, as read in one script call (server clock)."""

    queued: int
    """Elements in every priority level."""
    in_flight: int
    """Elements in the processing lists read."""
    due_retries: int
    live_consumers: int
    """Consumers whose heartbeat is younger than the visibility timeout."""
    now_ms: int
    oldest_ms: int | None = None
    """Enqueue time of the oldest element waiting or in flight (the SDK's message id);
    None when no element carries one."""


@dataclass(frozen=True)
class ListGroupWork:
    lag: int
    pending: int
    due_retries: int
    waiting: int
    oldest_age_s: float
    consumers: int


def group_work(parts: Sequence[ListPartitionWork]) -> ListGroupWork:
    """A List group's figures over its partitions: counts summed, the oldest age and the
    live consumers the maximum (one consumer usually reads every partition), as for a
    Stream group."""
    lag = sum(max(0, p.queued) for p in parts)
    pending = sum(max(0, p.in_flight) for p in parts)
    due = sum(max(0, p.due_retries) for p in parts)
    age = max((max(0, p.now_ms - p.oldest_ms) / 1000 for p in parts
               if p.oldest_ms is not None), default=0.0)
    consumers = max((p.live_consumers for p in parts), default=0)
    return ListGroupWork(lag, pending, due, waiting(lag, pending, due), age, max(0, consumers))
