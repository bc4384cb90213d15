"""Apply a RetentionPolicy to one queue: trim its streams, its dead-letter streams, and
re-time its idempotency keys. Decisions come from planning/retention.py.

Round trips per run (each one pipeline for all partitions):

1. observe: the poller's script with every group and the stream facts, then the
   poller's lag assessment (exact lags; it counts only where Redis 7.0's lag is off);
2. count (only when needed): entries between the floor group's oldest pending and
   last-delivered ids, and entries in [floor, age cut) for the protection report;
3. apply: one script per partition runs XTRIM MINID, then XTRIM MAXLEN with the
   floor guard, atomically; plain XTRIMs for the dead-letter streams.

Trimmed counts are XTRIM's return values.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis

from agentqueue_client.keys import PartitionKeys, queue_key_pattern
from agentqueue_client.text import as_text

from ..planning.lag import LagSource, format_id, parse_id
from ..planning.retention import (
    GroupPosition,
    PartitionObservation,
    RetentionSettings,
    TrimPlan,
    age_cut,
    floor_of,
    plan_dead_letter,
    plan_trim,
)
from . import connection
from .errors import classify, translate_errors
from .poller import BatchScript, LagPoller, PartitionState, count_range, observe_partitions

__all__ = [
    "IdempotencyResult",
    "PartitionRetention",
    "RetentionResult",
    "adjust_idempotency_ttl",
    "apply_retention",
    "observe_for_retention",
]

IDEMPOTENCY_KEYS_PER_RUN = 10_000
SCAN_COUNT = 1000

# KEYS[1] stream. ARGV: minid ('' none), maxlen (-1 none), guard (-1 none: plain
# MAXLEN), observed length, '~' or '=', limit (0 none). Returns {minid trimmed, maxlen
# trimmed}. The guard keeps at least `guard` + entries appended since the observation,
# so a protected MAXLEN cannot pass the floor however much was added meanwhile.
_APPLY = r"""
local key, mode, limit = KEYS[1], ARGV[5], tonumber(ARGV[6])
local function trim(strategy, threshold)
  if mode == '~' and limit > 0 then
    return redis.call('XTRIM', key, strategy, mode, threshold, 'LIMIT', limit)
  end
  return redis.call('XTRIM', key, strategy, mode, threshold)
end
local by_id, by_len = 0, 0
if ARGV[1] ~= '' then by_id = trim('MINID', ARGV[1]) end
local keep, guard = tonumber(ARGV[2]), tonumber(ARGV[3])
if keep >= 0 then
  if guard >= 0 then
    local grown = redis.call('XLEN', key) + by_id - tonumber(ARGV[4])
    keep = math.max(keep, guard + math.max(0, grown))
  end
  by_len = trim('MAXLEN', keep)
end
return {by_id, by_len}
"""
APPLY = BatchScript(_APPLY)


@dataclass
class PartitionRetention:
    partition: int
    trimmed: int = 0
    protected: int = 0
    protected_exact: bool = True
    dropped_undelivered: int | None = 0
    """None: unknown (a count was capped)."""
    dead_letter_trimmed: int = 0
    blocked_by: list[str] = field(default_factory=list)
    skipped: str | None = None


@dataclass
class RetentionResult:
    partitions: list[PartitionRetention] = field(default_factory=list)

    @property
    def trimmed(self) -> int:
        return sum(p.trimmed for p in self.partitions)

    @property
    def protected(self) -> int:
        return sum(p.protected for p in self.partitions)

    @property
    def dropped_undelivered(self) -> int:
        return sum(p.dropped_undelivered or 0 for p in self.partitions)

    @property
    def dead_letter_trimmed(self) -> int:
        return sum(p.dead_letter_trimmed for p in self.partitions)

    @property
    def blocked_by(self) -> list[str]:
        return sorted({g for p in self.partitions for g in p.blocked_by})

    @property
    def exact(self) -> bool:
        return all(p.protected_exact and p.dropped_undelivered is not None
                   for p in self.partitions)


def _positions(part: PartitionState) -> list[GroupPosition]:
    return [GroupPosition(g.name, g.last_delivered_id, g.oldest_pending_id)
            for g in part.groups.values()]


def _floor_group(part: PartitionState) -> tuple[str | None, str | None]:
    """(floor id, the name of one group holding it)."""
    floor, holders = floor_of(_positions(part))
    if floor is None:
        return None, None
    return format_id(floor), holders[0]


async def observe_for_retention(client: Any, partitions: Sequence[PartitionKeys],
                                settings: RetentionSettings, now_ms: int,
                                poller: LagPoller | None = None
                                ) -> list[PartitionObservation]:
    """What `plan_trim` needs, per partition (two round trips; counts only if needed)."""
    parts = await observe_partitions(client, [(pk, None) for pk in partitions],
                                     now_ms=now_ms, stream_facts=True)
    parts = await (poller or LagPoller()).assess(client, parts)
    counts: list[tuple[str, str, str]] = []
    wanted: list[tuple[int, str]] = []  # (partition index, "window" | "age")
    cut = age_cut(now_ms, settings.max_age_ms) if settings.max_age_ms is not None else None
    for i, part in enumerate(parts):
        floor, holder = _floor_group(part)
        if floor is None or holder is None or part.length == 0:
            continue
        g = part.groups[holder]
        if g.oldest_pending_id is not None and parse_id(floor) <= parse_id(g.last_delivered_id):
            counts.append((part.keys.queue_key, floor, g.last_delivered_id))
            wanted.append((i, "window"))
        if cut is not None and parse_id(floor) < cut:
            counts.append((part.keys.queue_key, floor, f"({format_id(cut)}"))
            wanted.append((i, "age"))
    found = dict(zip(wanted, await count_range(client, counts), strict=True)) if counts else {}
    out = []
    for i, part in enumerate(parts):
        floor, holder = _floor_group(part)
        unacked: int | None = None
        if holder is not None:
            g = part.groups[holder]
            window = found.get((i, "window"), 0)
            exact_lag = g.lag_source is not LagSource.ESTIMATE
            unacked = g.lag + window if window is not None and exact_lag else None
        out.append(PartitionObservation(
            length=part.length, first_id=part.first_entry_id, groups=_positions(part),
            unacked=unacked, unacked_older_than_age=found.get((i, "age"))))
    return out


def _apply_args(plan: TrimPlan, observed_length: int) -> list[Any]:
    return [plan.minid or "", -1 if plan.maxlen is None else plan.maxlen,
            -1 if plan.guard_unacked is None else plan.guard_unacked, observed_length,
            "~" if plan.approximate else "=", plan.limit or 0]


async def apply_retention(client: Any, partitions: Sequence[PartitionKeys],
                          settings: RetentionSettings, *, now_ms: int | None = None,
                          poller: LagPoller | None = None) -> RetentionResult:
    """Trim every partition's stream and dead-letter stream as `settings` say."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    result = RetentionResult([PartitionRetention(pk.partition) for pk in partitions])
    plans: list[TrimPlan] = []
    observed: list[PartitionObservation] = []
    if settings.trims_queue:
        observed = await observe_for_retention(client, partitions, settings, now, poller)
        plans = [plan_trim(settings, obs, now) for obs in observed]
    dlq_plan = plan_dead_letter(settings, now)
    with translate_errors("apply retention"):
        calls = [([pk.queue_key], _apply_args(plan, obs.length))
                 for pk, plan, obs in zip(partitions[:len(plans)], plans, observed, strict=True)
                 if plan.trims]
        replies = iter(await APPLY.run_batched(client, calls))
        dlq_replies = iter(await _trim_dead_letters(client, partitions, dlq_plan))
    for report, plan in zip(result.partitions, plans, strict=False):
        if plan.trims:
            reply = next(replies)
            if isinstance(reply, Exception):
                raise classify(reply) from None
            report.trimmed = int(reply[0]) + int(reply[1])
        report.protected, report.protected_exact = plan.protected, plan.protected_exact
        report.dropped_undelivered = plan.dropped_undelivered(report.trimmed)
        report.blocked_by, report.skipped = list(plan.blocked_by), plan.skipped
    if dlq_plan.trims:
        for report in result.partitions:
            report.dead_letter_trimmed = sum(int(next(dlq_replies))
                                             for _ in dlq_plan.xtrim_args())
    return result


async def _trim_dead_letters(client: Any, partitions: Sequence[PartitionKeys],
                             plan: TrimPlan) -> list[Any]:
    if not plan.trims:
        return []
    pipe = client.pipeline(transaction=False)
    for pk in partitions:
        for args in plan.xtrim_args():
            pipe.execute_command("XTRIM", pk.dead_letter, *args)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    for r in results:
        if isinstance(r, Exception):
            raise classify(r) from None
    return results


# ---- idempotency keys ----------------------------------------------------------------------

@dataclass
class IdempotencyResult:
    updated: int = 0
    expired: int = 0
    cursors: dict[str, int] = field(default_factory=dict)
    """Where to resume next run, per node; empty when the scan completed."""

    @property
    def complete(self) -> bool:
        return not self.cursors


async def adjust_idempotency_ttl(client: Any, namespace: str, queue: str, ttl_ms: int, *,
                                 now_ms: int | None = None,
                                 cursors: dict[str, int] | None = None,
                                 max_keys: int = IDEMPOTENCY_KEYS_PER_RUN
                                 ) -> IdempotencyResult:
    """Make every idempotency key of the queue expire `ttl_ms` after its message was
    enqueued (its value is the entry id, whose time part is the enqueue time); keys
    already past that are deleted. SCANs at most about `max_keys` keys per run and
    returns the cursors to continue from."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    pattern = queue_key_pattern(namespace, queue) + "}:idem:*"
    result = IdempotencyResult()
    budget = max_keys
    with translate_errors(f"adjust idempotency keys of {namespace}/{queue}"):
        for node in await connection.primaries(client):
            name = connection.node_name(node)
            cursor = (cursors or {}).get(name, 0)
            if cursors and name not in cursors:
                continue  # this node finished in an earlier run
            while budget > 0:
                cursor, found = await node.scan(cursor, match=pattern, count=SCAN_COUNT)
                budget -= len(found)
                await _retime(node, [as_text(k, errors="strict") for k in found], ttl_ms, now,
                              result)
                if int(cursor) == 0:
                    break
            if int(cursor) != 0:
                result.cursors[name] = int(cursor)
    return result


async def _retime(node: aredis.Redis, keys: list[str], ttl_ms: int, now_ms: int,
                  result: IdempotencyResult) -> None:
    if not keys:
        return
    pipe = node.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    values = await pipe.execute(raise_on_error=False)
    pipe = node.pipeline(transaction=False)
    for key, value in zip(keys, values, strict=True):
        if value is None or isinstance(value, Exception):
            continue  # expired since the SCAN, or not a string key: not ours to touch
        expires = _expiry(value, ttl_ms)
        if expires is None:  # not an entry id: only ever shorten its TTL
            pipe.pexpire(key, ttl_ms, lt=True)
            result.updated += 1
        elif expires <= now_ms:
            pipe.delete(key)
            result.expired += 1
        else:
            pipe.pexpireat(key, expires)
            result.updated += 1
    for r in await pipe.execute(raise_on_error=False):
        if isinstance(r, Exception):
            raise classify(r) from None


def _expiry(value: Any, ttl_ms: int) -> int | None:
    try:
        return parse_id(as_text(value, errors="strict"))[0] + ttl_ms
    except ValueError:
        return None
