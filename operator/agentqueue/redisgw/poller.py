"""Lag polling: every consumer group on a Redis server, one pipelined round trip per tick.

Per partition a read-only script gathers XINFO GROUPS, XLEN, ZCOUNT of the due
retries and, per asked group with something pending, ``XPENDING key group - + 1``
(oldest pending id and its idle time). It asks XINFO STREAM only where some group's
reported lag is in doubt (non-zero, and something was removed from the stream; see
planning/lag.py): an idle or never-trimmed fleet never pays for it.

Why a script and not plain pipelined commands: redis-py spends ~10 µs per reply in
Python, so four commands per group cost ~400 ms for 10,000 groups on a 2-core VM;
one script call per 50 partitions, three pipelines of 1,000 partitions in flight,
polls 10,000 lagging groups in ~140-160 ms (1,000 in ~15-25 ms). In a Cluster the
keys of one call must share a slot, so there each call covers one partition, and the
cluster pipeline splits the calls by node.

A second round trip happens only when some group's lag needs a count (see
planning/lag.py); calibrations kept between ticks make that rare.

At rest nothing changes, and the poll costs almost nothing on our side: each partition's
reply carries a digest, the next call sends it back, and the script answers 0 for a
partition whose reply would be the same (the state parsed last time is reused, and a
group whose partitions all came back so keeps last tick's figures object, which the
hub's quiet check then matches by identity). The script reads the server's clock, so
the arguments stay the same from tick to tick and each call's packed bytes are kept
(standalone and Sentinel: `_run_packed`; a Cluster uses redis-py's pipeline). 10,000
idle groups: ~250 ms of operator CPU per tick before, ~100 ms after (2-core VM, busy).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from operator import is_
from typing import Any, TypeVar

import redis.asyncio as aredis
from redis import exceptions as rex
from redis.crc import key_slot

from agentqueue_client.keys import PartitionKeys, partition_keys
from agentqueue_client.text import as_text

from ..planning.lag import (
    Calibration,
    GroupLagInfo,
    LagAssessment,
    LagSource,
    assess_lag,
    lag_from_count,
    quick_lag,
    waiting,
)
from .errors import RedisError, classify, translate_errors

__all__ = [
    "COUNT_CAP",
    "GroupFigures",
    "GroupState",
    "GroupTarget",
    "LagPoller",
    "PartitionState",
    "BatchScript",
    "count_range",
    "observe_partitions",
    "poll_groups",
]

PARTITIONS_PER_CALL = 50
"""Standalone: partitions per script call (each call blocks Redis ~1 ms at most)."""
PARTITIONS_PER_PIPELINE = 1000
CONCURRENT_PIPELINES = 3
COUNT_CAP = 10_000
"""Most entries one count may walk (XRANGE in Lua copies payloads: ~2 µs per 1 KB)."""
COUNTS_PER_TICK = 200
"""Most lag counts per tick; the rest report an upper bound until a later tick."""
CALIBRATION_TTL_S = 600.0

T = TypeVar("T")

# ARGV: now_ms ('': the server's TIME), facts ('1': always XINFO STREAM), then per
# partition: n (-1: all groups), group names, the digest of its last reply ('': none).
# KEYS: stream, retry zset, per partition.
# Reply per partition: 0 when its reply's digest equals the one given (unchanged: the
# caller keeps what it parsed last time), else {exists, xlen, due, groups, facts,
# digest}; a group is 0 when missing, else {name, consumers, pending, last-delivered,
# entries-read|-1, lag|-1, oldest pending id|'', oldest idle ms|-1}; facts {} or
# {entries-added, first id, last-generated id, max-deleted id}. The digest covers every
# field (a busy group's idle time changes it every tick); an idle fleet's replies are
# a few bytes each, and parsing them is no work.

_OBSERVE = r"""#!lua flags=no-writes
local now, always = ARGV[1], ARGV[2] == '1'
if now == '' then  -- the server's clock: the same arguments every tick (pre-packed)
  local t = redis.call('TIME')
  now = t[1] * 1000 + math.floor(t[2] / 1000)
end
local out, a = {}, 3
local function fields(flat)
  local f = {}
  for j = 1, #flat, 2 do f[flat[j]] = flat[j + 1] end
  return f
end
for i = 1, #KEYS, 2 do
  local stream, retry = KEYS[i], KEYS[i + 1]
  local n = tonumber(ARGV[a]); a = a + 1
  local want, names = {}, {}
  for j = 1, math.max(n, 0) do want[ARGV[a]] = j; names[j] = ARGV[a]; a = a + 1 end
  local prev = ARGV[a]; a = a + 1
  local reply
  -- pcall: one foreign key of the wrong type must not fail the other partitions.
  local due = redis.pcall('ZCOUNT', retry, '-inf', now)
  if type(due) ~= 'number' then due = 0 end
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if type(groups) ~= 'table' or groups.err then
    reply = {0, 0, due, {}, {}}
  else
    local len = redis.call('XLEN', stream)
    local gs, unsure = {}, always
    for _, g in ipairs(groups) do
      local f
      if g[1] == 'name' and g[5] == 'pending' and g[9] == 'entries-read' and g[11] == 'lag' then
        -- Redis 7's fixed layout: read by position (building a table per group was
        -- most of this script's time).
        f = {name = g[2], consumers = g[4], pending = g[6], ['last-delivered-id'] = g[8],
             ['entries-read'] = g[10], lag = g[12]}
      else
        f = fields(g)
      end
      local idx = want[f['name']]
      if n < 0 then idx = #gs + 1 end
      if idx then
        local oldest, idle = '', -1
        if f['pending'] > 0 then
          local p = redis.call('XPENDING', stream, f['name'], '-', '+', 1)
          if #p > 0 then oldest, idle = p[1][1], p[1][3] end
        end
        local lag, read = f['lag'] or -1, f['entries-read'] or -1
        -- lag + entries-read = entries-added; equal to XLEN: nothing was ever
        -- removed, so the reported lag is exact (planning/lag.py, rule 5).
        if lag ~= 0 and len > 0 and not (lag > 0 and read >= 0 and lag + read == len) then
          unsure = true
        end
        gs[idx] = {f['name'], f['consumers'], f['pending'], f['last-delivered-id'],
                   read, lag, oldest, idle}
      end
    end
    for j = 1, math.max(n, 0) do if gs[j] == nil then gs[j] = 0 end end
    local facts = {}
    if unsure then
      local s = fields(redis.call('XINFO', 'STREAM', stream))
      local first = s['first-entry']
      facts = {s['entries-added'], first and first[1] or '', s['last-generated-id'],
               s['max-deleted-entry-id']}
    end
    reply = {1, len, due, gs, facts}
  end
  local flat = {reply[1], reply[2], reply[3]}
  for _, g in ipairs(reply[4]) do
    if g == 0 then flat[#flat + 1] = '-' else
      for _, v in ipairs(g) do flat[#flat + 1] = v end
    end
    flat[#flat + 1] = '|'
  end
  for _, v in ipairs(reply[5]) do flat[#flat + 1] = v end
  local digest = string.sub(redis.sha1hex(table.concat(flat, ',')), 1, 16)
  if digest == prev then
    out[#out + 1] = 0
  else
    reply[6] = digest
    out[#out + 1] = reply
  end
end
return out
"""

# KEYS[1] stream; ARGV: start, end (XRANGE syntax, '(' for exclusive), cap.
# Reply {count, complete}: complete 0 means the cap was reached (count is a floor).
_COUNT = r"""#!lua flags=no-writes
local start, stop, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = 0
while n < cap do
  local want = math.min(1000, cap - n)
  local batch = redis.call('XRANGE', KEYS[1], start, stop, 'COUNT', want)
  n = n + #batch
  if #batch < want then return {n, 1} end
  start = '(' .. batch[#batch][1]
end
local more = redis.call('XRANGE', KEYS[1], start, stop, 'COUNT', 1)
if #more == 0 then return {n, 1} end
return {n, 0}
"""


def _opt_int(value: Any) -> int | None:
    n = int(value)
    return None if n < 0 else n


class BatchScript:
    """A Lua script run by EVALSHA in pipelines; reloads itself after NOSCRIPT
    (restart, failover, SCRIPT FLUSH).

    `redis.commands.core.Script` would send SCRIPT EXISTS before every pipeline: an
    extra round trip per tick. SCRIPT LOAD goes to every primary of a cluster."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._loaded: set[int] = set()
        self.sha: str | None = None
        self._packed: dict[tuple[str, tuple[str, ...]], tuple[tuple[Any, ...], bytes]] = {}
        """(sha, keys) -> the last arguments sent with those keys and the packed call."""

    async def load(self, client: Any, force: bool = False) -> str:
        if force or self.sha is None or id(client) not in self._loaded:
            self.sha = as_text(await client.script_load(self.source), errors="strict")
            self._loaded.add(id(client))
        return self.sha

    async def run_batched(self, client: Any, calls: Sequence[tuple[Sequence[str],
                                                                    Sequence[Any]]]) -> list[Any]:
        """Run the script once per (keys, args) call in one pipeline; retry once after
        NOSCRIPT. Error replies come back as exception objects, in order."""
        if not calls:
            return []
        sha = await self.load(client)
        if not isinstance(client, aredis.RedisCluster):
            for attempt in (0, 1):
                replies = await self._run_packed(client, sha, calls)
                if attempt == 0 and any(isinstance(r, rex.NoScriptError) for r in replies):
                    sha = await self.load(client, force=True)
                    continue
                return replies
        for attempt in (0, 1):
            pipe = client.pipeline(transaction=False)
            for keys, args in calls:
                # execute_command: the cluster pipeline blocks its evalsha() method only
                # because of NOSCRIPT, which run_batched handles (SCRIPT LOAD reaches
                # every primary).
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, rex.NoScriptError) for r in results):
                sha = await self.load(client, force=True)
                continue
            return results
        return results  # pragma: no cover - loop always returns


    async def _run_packed(self, client: Any, sha: str,
                          calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """The pipeline by hand, on one connection of the client's pool, with each call's
        packed bytes kept: a poll of 10,000 groups sends the same 200 calls every tick,
        and packing their 40,000 arguments was most of the operator's work per tick."""
        pool = client.connection_pool
        conn = await pool.get_connection()
        try:
            packed = []
            for keys, args in calls:
                key = (sha, tuple(keys))
                arg_tuple = tuple(args)
                kept = self._packed.get(key)
                if kept is None or kept[0] != arg_tuple:
                    if len(self._packed) >= PACKED_KEPT:
                        self._packed.clear()  # the fleet changed a lot: start afresh
                    kept = self._packed[key] = (arg_tuple, b"".join(
                        conn.pack_command("EVALSHA", sha, len(keys), *keys, *args)))
                packed.append(kept[1])
            await conn.send_packed_command(packed)
            results: list[Any] = []
            for _ in calls:
                try:
                    results.append(await conn.read_response())
                except rex.ResponseError as exc:
                    results.append(exc)
            return results
        except BaseException:
            # Replies may still be on the socket: never hand it to the next caller.
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)


PACKED_KEPT = 5_000
"""Packed calls kept per script: one per distinct key set (a call covers up to 50
partitions, ~4 KB packed), so ~20 MB at most."""

OBSERVE = BatchScript(_OBSERVE)
COUNT = BatchScript(_COUNT)


@dataclass(frozen=True)
class GroupTarget:
    namespace: str
    queue: str
    group: str
    partitions: int
    queue_type: str = "Stream"
    """Stream (polled here) or List (redisgw/list_work.py)."""
    priority_levels: int = 1
    visibility_ms: int = 30_000
    """List: a consumer whose heartbeat is older than this is not counted as live."""
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Hashed once: the poller looks every target up several times per tick.
        object.__setattr__(self, "_hash", hash((
            self.namespace, self.queue, self.group, self.partitions, self.queue_type,
            self.priority_levels, self.visibility_ms)))

    def __hash__(self) -> int:
        return self._hash

    def partition_keys(self) -> list[PartitionKeys]:
        return partition_keys(self.namespace, self.queue, self.partitions)


@dataclass(slots=True)
class GroupState:
    """One group on one partition, as observed (`lag` filled in by `LagPoller.assess`)."""

    name: str
    consumers: int
    pending: int
    last_delivered_id: str
    entries_read: int | None
    reported_lag: int | None
    oldest_pending_id: str | None
    oldest_idle_ms: int | None
    lag: int = 0
    lag_source: LagSource = LagSource.REPORTED


@dataclass(slots=True)
class PartitionState:
    keys: PartitionKeys
    exists: bool
    length: int
    due_retries: int
    groups: dict[str, GroupState]
    entries_added: int | None = None
    first_entry_id: str | None = None
    last_entry_id: str | None = None
    max_deleted_id: str | None = None
    steady: bool = False
    """Reused unchanged from the last poll and, once assessed, every group's lag as
    reported (then the figures of its groups are the same objects as last time)."""
    quick: bool = False
    """Its last assessment took every group's lag from the report (`quick_lag`): a
    steady state needs no new one."""

    def lag_info(self, g: GroupState) -> GroupLagInfo:
        return GroupLagInfo(g.reported_lag, g.entries_read, g.last_delivered_id, self.length,
                            self.entries_added, self.first_entry_id, self.last_entry_id,
                            self.max_deleted_id)


@dataclass
class GroupFigures:
    """A group's figures summed over its partitions (consumers and age: the maximum,
    since one consumer usually reads every partition)."""

    lag: int = 0
    pending: int = 0
    due_retries: int = 0
    waiting: int = 0
    oldest_pending_age_s: float = 0.0
    consumers: int = 0
    missing_partitions: list[int] = field(default_factory=list)
    exact: bool = True
    """False when some partition's lag is an upper bound (a count was capped/deferred)."""


def _group_state(raw: Any) -> GroupState | None:
    if not isinstance(raw, list):
        return None
    name, consumers, pending, last, read, lag, oldest, idle = raw
    return GroupState(as_text(name, errors="strict"), int(consumers), int(pending),
                      as_text(last, errors="strict"), _opt_int(read), _opt_int(lag),
                      as_text(oldest, errors="strict") or None, _opt_int(idle))


def _partition_state(keys: PartitionKeys, raw: Any) -> PartitionState:
    exists, length, due, groups, facts = raw
    states = [s for s in (_group_state(g) for g in groups) if s is not None]
    extra: dict[str, Any] = {}
    if facts:
        added, first, last, deleted = facts
        extra = {"entries_added": int(added),
                 "first_entry_id": as_text(first, errors="strict") or None,
                 "last_entry_id": as_text(last, errors="strict"),
                 "max_deleted_id": as_text(deleted, errors="strict")}
    return PartitionState(keys, bool(int(exists)), int(length), int(due),
                          {s.name: s for s in states}, **extra)


def _call_groups(client: Any, wanted: Sequence[tuple[PartitionKeys, list[str] | None]]
                 ) -> list[list[tuple[PartitionKeys, list[str] | None]]]:
    """Partitions per script call: one slot per call in a Cluster."""
    if isinstance(client, aredis.RedisCluster):
        by_slot: dict[int, list[tuple[PartitionKeys, list[str] | None]]] = {}
        for item in wanted:
            by_slot.setdefault(key_slot(item[0].queue_key.encode()), []).append(item)
        return [chunk for items in by_slot.values()
                for chunk in _chunks(items, PARTITIONS_PER_CALL)]
    return list(_chunks(list(wanted), PARTITIONS_PER_CALL))


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


Wanted = Sequence[tuple[PartitionKeys, list[str] | None]]


@dataclass
class CallPlan:
    """The script calls for one fixed list of wanted partitions, kept between polls: a
    chunk's call is rebuilt only after one of its partitions answered with a new state
    (an idle fleet sends the same calls with the same digests tick after tick)."""

    chunks: list[list[tuple[PartitionKeys, list[str] | None]]]
    calls: list[tuple[list[str], list[Any]] | None]
    before: list[list[PartitionState | None]]
    """Per chunk, per partition: the state the digest in its call describes."""

    @classmethod
    def of(cls, client: Any, wanted: Wanted) -> CallPlan:
        chunks = _call_groups(client, wanted)
        return cls(chunks, [None] * len(chunks), [[] for _ in chunks])


async def observe_partitions(client: Any, wanted: Wanted, *, now_ms: int | None = None,
                             stream_facts: bool = False,
                             plan: CallPlan | None = None) -> list[PartitionState]:
    """Raw state of each partition (groups by name; None asks for every group), in the
    order of `wanted` (with `plan`: the plan's order, which is `wanted`'s).

    Lags are not assessed yet (see `LagPoller`). With `stream_facts` XINFO STREAM is
    read for every partition (retention needs the first id)."""
    # Without `now_ms` the script reads the server's clock, so an unchanged fleet sends
    # the same calls every tick and their packed bytes are reused (BatchScript).
    now: int | str = "" if now_ms is None else now_ms
    if plan is None or now_ms is not None or stream_facts:
        plan = CallPlan.of(client, wanted)
    for c, chunk in enumerate(plan.chunks):
        if plan.calls[c] is not None:
            continue
        keys: list[str] = []
        args: list[Any] = [now, "1" if stream_facts else "0"]
        before: list[PartitionState | None] = []
        for pk, groups in chunk:
            queue_key = pk.queue_key
            keys += [queue_key, pk.retry]
            args += [-1] if groups is None else [len(groups), *groups]
            last = _LAST_STATES.get(queue_key)
            args.append(last[0] if last is not None else "")
            before.append(last[1] if last is not None else None)
        plan.calls[c], plan.before[c] = (keys, args), before
    calls = [call for call in plan.calls if call is not None]
    batches = list(_chunks(calls, max(1, PARTITIONS_PER_PIPELINE // PARTITIONS_PER_CALL)))
    with translate_errors("poll consumer groups"):
        await OBSERVE.load(client)
        replies = await _gather_limited([OBSERVE.run_batched(client, b) for b in batches])
    results = [result for reply in replies for result in reply]
    out: list[PartitionState] = []
    for c, (chunk, result) in enumerate(zip(plan.chunks, results, strict=True)):
        if isinstance(result, Exception):
            plan.calls[c] = None
            raise classify(result) from None
        before = plan.before[c]
        for (pk, _), raw, sent in zip(chunk, result, before, strict=True):
            out.append(_state_of(pk, raw, sent))
            if raw != 0:
                plan.calls[c] = None  # a new digest: the next call carries it
    return out


_LAST_STATES: dict[str, tuple[str, PartitionState]] = {}
"""Per partition (queue key): the digest of its last reply and the state parsed from it."""


def _state_of(keys: PartitionKeys, raw: Any, before: PartitionState | None) -> PartitionState:
    """`_partition_state`, or the state the digest we sent described when the script
    answered "unchanged" (0). The reused state is re-assessed like a new one (assess
    sets every group's lag); `steady` tells the figures cache."""
    if raw == 0:
        if before is None:  # we sent no digest: the script cannot have matched it
            raise RedisError(f"poll of {keys.queue_key}: 'unchanged' without a digest")
        before.steady = True
        return before
    digest = as_text(raw[5], errors="strict")
    state = _partition_state(keys, raw[:5])
    if len(_LAST_STATES) > 200_000:  # partitions come and go; keep the cache bounded
        _LAST_STATES.clear()
    _LAST_STATES[keys.queue_key] = (digest, state)
    return state


async def _gather_limited(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run pipelines on a few connections at once, so Redis executes one batch while
    Python parses another (~1.5x faster on two cores than one after the other)."""
    sem = asyncio.Semaphore(CONCURRENT_PIPELINES)

    async def one(coro: Coroutine[Any, Any, T]) -> T:
        async with sem:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def count_range(client: Any, requests: Sequence[tuple[str, str, str]],
                      cap: int = COUNT_CAP) -> list[int | None]:
    """Entries of stream `key` in [start, end] (XRANGE syntax) for each
    (key, start, end); None where more than `cap` entries would have to be walked."""
    calls = [([key], [start, end, cap]) for key, start, end in requests]
    out: list[int | None] = []
    with translate_errors("count stream entries"):
        for batch in _chunks(calls, PARTITIONS_PER_PIPELINE):
            for result in await COUNT.run_batched(client, batch):
                if isinstance(result, Exception):
                    raise result
                n, complete = result
                out.append(int(n) if int(complete) else None)
    return out


class LagPoller:
    """Polls groups and keeps lag calibrations between ticks (planning/lag.py)."""

    def __init__(self, counts_per_tick: int = COUNTS_PER_TICK) -> None:
        self.counts_per_tick = counts_per_tick
        self._calibrations: dict[tuple[str, str], tuple[Calibration, float]] = {}
        self._figures: dict[GroupTarget, tuple[tuple[PartitionState, ...], GroupFigures]] = {}
        """Per target: the states its last figures were built from, and those figures."""
        self._layouts: dict[tuple[int, int, int], _Layout] = {}

    async def assess(self, client: Any, parts: list[PartitionState]) -> list[PartitionState]:
        """Fill in each group's effective lag (in place), counting where the report is
        in doubt. Returns `parts`."""
        now = time.monotonic()
        results: dict[tuple[int, str], LagAssessment] = {}
        to_count: list[tuple[int, str]] = []
        for i, part in enumerate(parts):
            if part.steady and part.quick:
                continue  # reused unchanged, and every lag was exact from the report
            part.quick = True
            for g in part.groups.values():
                quick = quick_lag(g.reported_lag, g.entries_read, part.length)
                if quick is not None:
                    if g.lag != quick:
                        g.lag = quick  # lag_source stays REPORTED
                        part.steady = False
                    continue
                part.quick = False
                cal = self._calibrations.get((part.keys.queue_key, g.name))
                a = assess_lag(part.lag_info(g), cal[0] if cal else None)
                results[(i, g.name)] = a
                if a.needs_count:
                    to_count.append((i, g.name))
        counted = to_count[:self.counts_per_tick]
        counts = await count_range(client, [
            (parts[i].keys.queue_key, f"({parts[i].groups[name].last_delivered_id}", "+")
            for i, name in counted])
        found = dict(zip(counted, counts, strict=True))
        for i, name in to_count:
            info = parts[i].lag_info(parts[i].groups[name])
            results[(i, name)] = lag_from_count(info, found.get((i, name)))
        self._remember(parts, results, now)
        for (i, name), a in results.items():
            g = parts[i].groups[name]
            if (g.lag, g.lag_source) != (a.lag or 0, a.source):
                g.lag, g.lag_source = a.lag or 0, a.source
                parts[i].steady = False  # figures from this partition are built anew
        return parts

    def _remember(self, parts: list[PartitionState],
                  results: dict[tuple[int, str], LagAssessment], now: float) -> None:
        for (i, name), a in results.items():
            key = (parts[i].keys.queue_key, name)
            if a.calibration is not None:
                self._calibrations[key] = (a.calibration, now)
            elif a.source in _INVALIDATING:
                self._calibrations.pop(key, None)
        stale = [k for k, (_, at) in self._calibrations.items() if now - at > CALIBRATION_TTL_S]
        for k in stale:
            del self._calibrations[k]

    async def poll(self, client: Any, targets: Sequence[GroupTarget]) -> list[GroupFigures]:
        """Figures for each target, in order: two round trips at most per batch. A
        target whose partitions all came back unchanged, with every lag as reported,
        gets last tick's figures object again (an idle fleet builds nothing)."""
        layout = self._layout(client, targets)
        parts = await observe_partitions(client, layout.wanted, plan=layout.calls)
        parts = await self.assess(client, parts)
        kept = self._figures
        if len(kept) > 200_000:  # targets come and go; keep the cache bounded
            kept.clear()
        out: list[GroupFigures] = []
        for j, (t, index) in enumerate(zip(targets, layout.index, strict=True)):
            last = layout.kept[j]
            if len(index) == 1:  # the usual case, without building a tuple
                state = parts[index[0]]
                if last is not None and state.steady and last[0][0] is state:
                    out.append(last[1])
                    continue
                states: tuple[PartitionState, ...] = (state,)
            else:
                states = tuple(parts[i] for i in index)
                if (last is not None and all(s.steady and s is o
                                             for s, o in zip(states, last[0], strict=True))):
                    out.append(last[1])
                    continue
            if last is None:  # a new layout: last figures by target, if any
                last = kept.get(t)
                if (last is not None and len(last[0]) == len(states)
                        and all(s.steady and s is o
                                for s, o in zip(states, last[0], strict=True))):
                    layout.kept[j] = last
                    out.append(last[1])
                    continue
            figures = _figures(t, states)
            kept[t] = layout.kept[j] = (states, figures)
            out.append(figures)
        return out

    def _layout(self, client: Any, targets: Sequence[GroupTarget]) -> _Layout:
        """The partitions to ask for these targets, and where each target's are: kept
        while the hub asks the same client for the same target objects in the same order
        (every tick of a settled fleet). The client is part of it: a Cluster's calls are
        split by slot, a standalone server's are not."""
        key = (len(targets), id(targets[0]), id(targets[-1])) if targets else (0, 0, 0)
        layout = self._layouts.get(key)
        if (layout is not None and layout.client is client
                and all(map(is_, targets, layout.targets))):
            return layout
        positions: dict[str, int] = {}
        wanted: list[tuple[PartitionKeys, list[str]]] = []
        index: list[tuple[int, ...]] = []
        for t in targets:
            mine: list[int] = []
            for queue_key, pk in _target_keys(t):
                i = positions.get(queue_key)
                if i is None:
                    i = positions[queue_key] = len(wanted)
                    wanted.append((pk, [t.group]))
                elif t.group not in wanted[i][1]:
                    wanted[i][1].append(t.group)
                mine.append(i)
            index.append(tuple(mine))
        layout = _Layout(client, list(targets), wanted, index, [None] * len(targets),
                         CallPlan.of(client, wanted))
        if len(self._layouts) >= LAYOUTS_KEPT:
            self._layouts.pop(next(iter(self._layouts)))
        self._layouts[key] = layout
        return layout


LAYOUTS_KEPT = 8
"""Target lists whose layout is kept (ticks of different intervals ask different lists)."""


@dataclass
class _Layout:
    client: Any
    targets: list[GroupTarget]
    wanted: list[tuple[PartitionKeys, list[str]]]
    index: list[tuple[int, ...]]
    """Per target: its partitions' positions in `wanted`."""
    kept: list[tuple[tuple[PartitionState, ...], GroupFigures] | None]
    """Per target: the states its last figures were built from, and those figures."""
    calls: CallPlan


@functools.lru_cache(maxsize=65_536)
def _target_keys(target: GroupTarget) -> tuple[tuple[str, PartitionKeys], ...]:
    """A target's partitions (queue key, keys), built once (the hub asks every tick)."""
    return tuple((pk.queue_key, pk) for pk in target.partition_keys())


def _figures(target: GroupTarget, parts: Sequence[PartitionState]) -> GroupFigures:
    fig = GroupFigures()
    for part in parts:
        g = part.groups.get(target.group)
        fig.due_retries += part.due_retries
        if g is None:
            fig.missing_partitions.append(part.keys.partition)
            continue
        fig.lag += g.lag
        fig.pending += g.pending
        fig.consumers = max(fig.consumers, g.consumers)
        if g.oldest_idle_ms is not None:
            fig.oldest_pending_age_s = max(fig.oldest_pending_age_s, g.oldest_idle_ms / 1000)
        fig.exact = fig.exact and g.lag_source is not LagSource.ESTIMATE
    fig.waiting = waiting(fig.lag, fig.pending, fig.due_retries)
    return fig


# After these a kept calibration no longer describes the group's reported lag.
_INVALIDATING = frozenset({LagSource.EMPTY, LagSource.BEFORE_FIRST, LagSource.COUNTED,
                           LagSource.ESTIMATE})

_DEFAULT = LagPoller()


async def poll_groups(client: Any, targets: list[GroupTarget]) -> list[GroupFigures]:
    """`PollHub`'s poll function: one shared `LagPoller` (its calibrations persist)."""
    return await _DEFAULT.poll(client, targets)
