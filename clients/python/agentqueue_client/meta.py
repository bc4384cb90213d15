"""The queue's metadata hash, as the SDK reads it (written by the operator).

Parsing is pure and forgiving: a missing or malformed field falls back to the CRD's
default, so an SDK never crashes on an operator of a different version. ``MetaCache``
re-reads the hash of partition 0 at most every ``ttl`` seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .backoff import RetryPolicy
from .codec import PayloadSchema
from .text import as_text

DEFAULT_VISIBILITY_MS = 30_000
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000


def _int(raw: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(raw[name])
    except (KeyError, ValueError):
        return default
    return value if lo <= value <= hi else default


def _float(raw: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(raw[name])
    except (KeyError, ValueError):
        return default
    return value if 1.0 <= value <= 100.0 else default


def _flag(raw: Mapping[str, str], name: str, default: bool) -> bool:
    value = raw.get(name)
    return default if value not in ("0", "1") else value == "1"


@dataclass(frozen=True)
class QueueMeta:
    """Settings of one queue, from its metadata hash."""

    type: str = "Stream"
    partitions: int = 1
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dead_letter: bool = True
    idempotency: bool = True
    idempotency_ttl_ms: int = DEFAULT_IDEMPOTENCY_TTL_MS
    priority_levels: int = 1
    schema_text: str | None = None
    generation: int | None = None
    raw: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def exists(self) -> bool:
        """False when the hash was empty (queue not provisioned yet, or defaults)."""
        return bool(self.raw)

    def visibility_ms(self, group: str) -> int:
        """``visibilityMs:<group>``; 30 s when the operator has not written it."""
        return _int(self.raw, f"visibilityMs:{group}", DEFAULT_VISIBILITY_MS, 1, 2**40)

    def max_deliveries_for(self, group: str | None) -> int:
        """``maxDeliveries:<group>`` when set, else the queue's ``maxDeliveries``."""
        if group is None:
            return self.max_deliveries
        return _int(self.raw, f"maxDeliveries:{group}", self.max_deliveries, 1, 1_000_000)

    def paused(self, group: str | None) -> dict[str, Any] | None:
        """The pause record of ``group`` (``{"reason": ..., "at": ...}``) or None."""
        if group is None:
            return None
        value = self.raw.get(f"paused:{group}")
        if value is None:
            return None
        try:
            record = json.loads(value)
        except ValueError:
            record = None
        return record if isinstance(record, dict) else {"reason": value, "at": None}


def parse_meta(raw: Mapping[Any, Any], *, default_type: str = "Stream",
               default_partitions: int = 1) -> QueueMeta:
    """Turn an HGETALL reply (bytes or str) into :class:`QueueMeta`."""
    m = {as_text(k): as_text(v) for k, v in raw.items()}
    qtype = m.get("type", default_type)
    if qtype not in ("Stream", "List", "PubSub"):
        qtype = default_type
    retry = RetryPolicy(
        initial_ms=_int(m, "retryInitialMs", 1000, 0, 2**40),
        max_ms=_int(m, "retryMaxMs", 300_000, 0, 2**40),
        multiplier=_float(m, "retryMultiplier", 2.0),
        jitter=_flag(m, "retryJitter", True),
    )
    generation = _int(m, "generation", -1, 0, 2**62)
    return QueueMeta(
        type=qtype,
        partitions=_int(m, "partitions", default_partitions, 1, 4096),
        max_deliveries=_int(m, "maxDeliveries", DEFAULT_MAX_DELIVERIES, 1, 1_000_000),
        retry=retry,
        dead_letter=_flag(m, "deadLetter", True),
        idempotency=_flag(m, "idempotency", True),
        idempotency_ttl_ms=_int(m, "idempotencyTtlMs", DEFAULT_IDEMPOTENCY_TTL_MS, 1, 2**45),
        priority_levels=_int(m, "priorityLevels", 1, 1, 1000),
        schema_text=m.get("schema") or None,
        generation=None if generation < 0 else generation,
        raw=m,
    )


class MetaCache:
    """Reads partition 0's metadata hash, at most every ``ttl`` seconds.

    The compiled JSON Schema is cached by its text, so a refresh costs one HGETALL.
    """

    def __init__(self, client: Any, meta_key: str, *, ttl: float = 5.0,
                 default_type: str = "Stream", default_partitions: int = 1) -> None:
        self._client = client
        self._key = meta_key
        self.ttl = ttl
        self._default_type = default_type
        self._default_partitions = default_partitions
        self._meta: QueueMeta | None = None
        self._read_at = 0.0
        self._schema: PayloadSchema | None = None

    @property
    def current(self) -> QueueMeta:
        """The last value read (defaults before the first read)."""
        return self._meta or QueueMeta(type=self._default_type,
                                       partitions=self._default_partitions)

    def stale(self) -> bool:
        return self._meta is None or time.monotonic() - self._read_at >= self.ttl

    async def get(self, *, force: bool = False) -> QueueMeta:
        """The metadata, re-read when older than ``ttl`` (or ``force``)."""
        if force or self.stale():
            raw = await self._client.hgetall(self._key)
            self._meta = parse_meta(raw, default_type=self._default_type,
                                    default_partitions=self._default_partitions)
            self._read_at = time.monotonic()
        return self.current

    def schema(self) -> PayloadSchema | None:
        """The compiled schema of the current metadata (None: no schema)."""
        text = self.current.schema_text
        if text is None:
            return None
        if self._schema is None or self._schema.text != text:
            self._schema = PayloadSchema(text)
        return self._schema
