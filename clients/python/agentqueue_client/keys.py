"""The Redis key scheme. Pure: no I/O.

Every key carries the namespace and the queue name, so tenants are separated by
ACL key patterns. All keys of one partition share a Redis Cluster hash tag
``{<namespace>/<queue>/<partition>}``, so one function call can touch them
atomically; partitions spread over slots.

Kubernetes names cannot contain ``/``, ``*``, ``?``, ``[`` or ``\\``, so ``/`` is a
safe separator and names never carry glob syntax into an ACL pattern. The
pattern for queue ``billing`` (``aq:{ns/billing/*``) cannot match ``billing2``
(the ``/`` after the name is literal) nor another namespace.

Layout of partition ``p`` of queue ``q`` in namespace ``ns``::

    aq:{ns/q/p}:q            stream (Stream) or list (List; priority level L: ...:q:L)
    aq:{ns/q/p}:dlq          dead-letter stream (entries keep their metadata)
    aq:{ns/q/p}:retry        sorted set of messages waiting for a retry, score = due ms
    aq:{ns/q/p}:meta         hash: settings, schema, pause flag, library version
    aq:{ns/q/p}:stats        hash of counters kept by consumers: ``retries`` (nacks that
                             scheduled a retry; aq_nack or the List SDK), ``deliveries``
                             (List queues only, counted by the SDK)
    aq:{ns/q/p}:idem:<key>   idempotency keys, with a TTL
    aq:{ns/q/p}:proc:<c>     List queues: consumer c's processing list (LMOVE target)
    aq:{ns/q/0}:ch           PubSub channel
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

PREFIX = "aq"


def _tag(namespace: str, queue: str, partition: int) -> str:
    return f"{PREFIX}:{{{namespace}/{queue}/{partition}}}"


@dataclass(frozen=True)
class PartitionKeys:
    namespace: str
    queue: str
    partition: int

    # Built once per object (the operator's poll asks for these every tick).
    @cached_property
    def tag(self) -> str:
        return _tag(self.namespace, self.queue, self.partition)

    @cached_property
    def queue_key(self) -> str:
        return f"{self.tag}:q"

    def priority_key(self, level: int) -> str:
        """List priority level (0 is the most urgent). Level 0 is the plain queue key."""
        return self.queue_key if level == 0 else f"{self.queue_key}:{level}"

    @property
    def dead_letter(self) -> str:
        return f"{self.tag}:dlq"

    @cached_property
    def retry(self) -> str:
        return f"{self.tag}:retry"

    @property
    def meta(self) -> str:
        return f"{self.tag}:meta"

    @property
    def stats(self) -> str:
        """Counters hash (fields ``retries``, ``deliveries``), for the retry-rate SLO."""
        return f"{self.tag}:stats"

    def idempotency(self, key: str) -> str:
        return f"{self.tag}:idem:{key}"

    @property
    def idempotency_prefix(self) -> str:
        return f"{self.tag}:idem:"

    def processing(self, consumer: str) -> str:
        return f"{self.tag}:proc:{consumer}"

    @property
    def processing_pattern(self) -> str:
        return f"{self.tag}:proc:*"

    @property
    def channel(self) -> str:
        return f"{self.tag}:ch"

    def all_static(self, priority_levels: int = 1) -> list[str]:
        """Keys with fixed names (not idempotency or processing keys)."""
        prio = [self.priority_key(level) for level in range(1, priority_levels)]
        return [self.queue_key, *prio, self.dead_letter, self.retry, self.meta, self.stats]


def partition_keys(namespace: str, queue: str, partitions: int) -> list[PartitionKeys]:
    return [PartitionKeys(namespace, queue, p) for p in range(partitions)]


def queue_key_pattern(namespace: str, queue: str) -> str:
    """ACL glob matching every key of every partition of one queue, and nothing else."""
    return f"{PREFIX}:{{{namespace}/{queue}/*"


def queue_scan_pattern(namespace: str, queue: str) -> str:
    """SCAN MATCH pattern for all keys of a queue (same as the ACL pattern)."""
    return queue_key_pattern(namespace, queue)


def channel_name(namespace: str, queue: str) -> str:
    return PartitionKeys(namespace, queue, 0).channel


def acl_username(namespace: str, queue: str, entry: str) -> str:
    """Redis ACL user names may hold any character but spaces; keep them readable."""
    return f"aq.{namespace}.{queue}.{entry}"


def secret_name(queue: str, entry: str) -> str:
    """Secret holding one access entry's credentials.

    ``.`` cannot occur in an entry name (a DNS label), so ``<queue>.<entry>`` never
    collides, unlike ``<queue>-<entry>`` (``a-b``+``c`` vs ``a``+``b-c``).
    """
    return f"{queue}.{entry}"
