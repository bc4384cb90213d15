"""Property-based tests (hypothesis) for the plan functions and the message codec, where
the example-based and property tests next to them (test_acl_plan, test_scaling,
test_retention_plan, test_codec) leave gaps:

- queue_plan.plan_queue: convergence (applying the plan to what was observed leaves
  nothing to do), foreign metadata untouched, KeyConflict exactly for wrong key types;
  and the same convergence against a real redis-server (observe → plan → apply →
  observe → empty plan), which also checks that the pure model used here is faithful.
- scaling.decide: monotone in waiting work, deterministic, paused/unreadable ticks leave
  the history alone, no scale-to-zero inside the cooldown, history JSON round trip.
- retention.plan_trim against a model stream with groups and pending entries: protection
  never trims at or past the floor, `protected` is exactly the number of unacked entries
  the unprotected policy would drop, `dropped_undelivered` is exact.
- codec: binary payloads and every envelope field round-trip; any x.* or unknown field is
  refused; the producer-side key and header checks agree with the consumer side.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import math
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agentqueue.models import AgentQueueSpec
from agentqueue.planning import queue_plan
from agentqueue.planning.lag import format_id
from agentqueue.planning.queue_plan import (
    OWNED_META_FIELDS,
    Action,
    CreateStream,
    KeyConflict,
    LoadLibrary,
    ObservedPartition,
    ObservedQueue,
    WriteMeta,
)
from agentqueue.planning.retention import (
    GroupPosition,
    PartitionObservation,
    RetentionSettings,
    floor_of,
    plan_trim,
)
from agentqueue.planning.scaling import ScaleHistory, ScaleObservation, ScalingParams, decide
from agentqueue_client import keys
from agentqueue_client.codec import (
    DLQ_PREFIX,
    ENVELOPE_FIELDS,
    MAX_KEY_BYTES,
    Envelope,
    check_headers,
    check_idempotency_key,
    decode_element,
    decode_fields,
    encode_element,
    encode_fields,
)
from agentqueue_client.errors import DecodeError

pytest_plugins = ["tests.redis_fixtures"]

NS, NAME = "team", "q"
WANTED_LIB = "lib-v"

# ---- queue plan ---------------------------------------------------------------------------------

durations = st.sampled_from(["100ms", "1s", "30s", "5m", "1h", "1h30m", "24h"])


@st.composite
def queue_specs(draw: st.DrawFn) -> AgentQueueSpec:
    qtype = draw(st.sampled_from(["Stream", "List", "PubSub"]))
    wire: dict[str, Any] = {
        "type": qtype,
        "partitions": 1 if qtype == "PubSub" else draw(st.integers(1, 6)),
        "delivery": {"maxDeliveries": draw(st.integers(1, 1000)),
                     "retry": {"initialDelay": draw(durations), "maxDelay": draw(durations),
                               "multiplier": draw(st.sampled_from([1, 1.5, 2, 3.25, 10])),
                               "jitter": draw(st.booleans())}},
        "deadLetter": {"enabled": draw(st.booleans())},
        "idempotency": {"enabled": draw(st.booleans()), "ttl": draw(durations)},
    }
    if qtype == "List":
        wire["priorityLevels"] = draw(st.integers(1, 10))
    if draw(st.booleans()):
        wire["schema"] = draw(st.sampled_from([
            {"type": "object"}, {"type": "object", "required": ["n"]},
            {"properties": {"b": {"type": "string"}, "a": {"minimum": 0}}}]))
    return AgentQueueSpec.from_wire(wire)


_KEY_TYPE = {"Stream": "stream", "List": "list"}
junk = st.text(alphabet="abcxyz019{}:\"", max_size=8)


@st.composite
def observations(draw: st.DrawFn, spec: AgentQueueSpec, generation: int | None,
                 conflicts: bool = False) -> ObservedQueue:
    """What a reconcile may find: partitions missing or present, keys of the right type
    (or, with `conflicts`, any type), metadata partly right, partly stale or foreign."""
    wanted = queue_plan.desired_meta(spec, generation)
    parts = []
    for part in keys.partition_keys(NS, NAME, spec.partitions + draw(st.integers(0, 2))):
        if not draw(st.booleans()):
            continue
        meta: dict[str, str] = {}
        for k, v in wanted.items():
            choice = draw(st.integers(0, 2))
            if choice == 1:
                meta[k] = v
            elif choice == 2:
                meta[k] = draw(junk)
        for k in draw(st.lists(st.sampled_from(sorted(OWNED_META_FIELDS)), max_size=3)):
            meta.setdefault(k, draw(junk))  # stale fields we own (e.g. a dropped schema)
        for k in draw(st.lists(st.sampled_from(["paused:g", "visibilityMs:g",
                                                "maxDeliveries:g", "note"]), max_size=3)):
            meta[k] = draw(junk)  # fields others own
        types = (["none", "stream", "list", "string", "hash", "zset"] if conflicts else None)
        qt = _KEY_TYPE.get(str(spec.type), "none")
        parts.append(ObservedPartition(
            index=part.partition, queue_key=part.queue_key,
            queue_key_type=draw(st.sampled_from(types or ["none", qt] if qt != "none"
                                                else ["none"])),
            dead_letter_type=draw(st.sampled_from(types or ["none", "stream"])),
            retry_type=draw(st.sampled_from(types or ["none", "zset"])),
            meta=meta))
    nodes = draw(st.lists(st.sampled_from([None, "old", WANTED_LIB]), min_size=1, max_size=3))
    return ObservedQueue(NS, NAME, str(spec.type), tuple(parts),
                         library_versions={f"n{i}": v for i, v in enumerate(nodes)},
                         library_wanted=WANTED_LIB)


def simulate(observed: ObservedQueue, actions: Sequence[Action], partitions: int
             ) -> ObservedQueue:
    """What Redis looks like after `actions` (the model of redisgw.provision.apply)."""
    by_index = {p.index: p for p in observed.partitions}
    layout = keys.partition_keys(NS, NAME, max(partitions, *by_index.keys(), 0) + 1)
    index_of = {**{p.queue_key: p.partition for p in layout},
                **{p.meta: p.partition for p in layout}}
    libs = dict(observed.library_versions)

    def part(i: int) -> ObservedPartition:
        return by_index.get(i) or ObservedPartition(i, layout[i].queue_key)

    for action in actions:
        if isinstance(action, LoadLibrary):
            libs = {node: observed.library_wanted for node in (libs or {"node": None})}
        elif isinstance(action, CreateStream):
            i = index_of[action.key]
            by_index[i] = dataclasses.replace(part(i), queue_key_type="stream")
        elif isinstance(action, WriteMeta):
            i = index_of[action.key]
            meta = {**part(i).meta, **action.fields}
            for k in action.remove:
                meta.pop(k, None)
            by_index[i] = dataclasses.replace(part(i), meta=meta)
        else:  # pragma: no cover - plan_queue plans no user actions
            raise AssertionError(action)
    return dataclasses.replace(observed, partitions=tuple(by_index[i] for i in sorted(by_index)),
                               library_versions=libs)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), spec=queue_specs(), generation=st.none() | st.integers(1, 50))
def test_plan_converges_in_one_step(data: st.DataObject, spec: AgentQueueSpec,
                                    generation: int | None) -> None:
    observed = data.draw(observations(spec, generation))
    plan = queue_plan.plan_queue(spec, NS, NAME, observed, generation=generation)
    after = simulate(observed, plan, spec.partitions)
    assert queue_plan.plan_queue(spec, NS, NAME, after, generation=generation) == []
    # Applying it again changes nothing (every action is idempotent).
    assert simulate(after, plan, spec.partitions) == after
    # An empty plan means Redis matched already; every action says what it repairs.
    assert (plan == []) == (after == observed)
    assert all(a.describe() for a in plan)
    # Fields others own (pause flags, group settings) are never touched; without a
    # generation the recorded one stays.
    before = {p.index: p.meta for p in observed.partitions}
    for p in after.partitions:
        for k, v in before.get(p.index, {}).items():
            if k not in OWNED_META_FIELDS or (k == "generation" and generation is None):
                assert p.meta.get(k) == v, k
    # Partitions beyond the spec (never shrunk) are left alone.
    for p in after.partitions:
        if p.index >= spec.partitions:
            assert p == next(o for o in observed.partitions if o.index == p.index)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), spec=queue_specs())
def test_key_conflict_exactly_for_wrong_types(data: st.DataObject, spec: AgentQueueSpec) -> None:
    observed = data.draw(observations(spec, None, conflicts=True))
    qt = _KEY_TYPE.get(str(spec.type))
    wrong = spec.type != "PubSub" and any(
        p.queue_key_type not in ("none", qt) or p.dead_letter_type not in ("none", "stream")
        or p.retry_type not in ("none", "zset")
        for p in observed.partitions if p.index < spec.partitions)
    if wrong:
        with pytest.raises(KeyConflict):
            queue_plan.plan_queue(spec, NS, NAME, observed)
    else:
        queue_plan.plan_queue(spec, NS, NAME, observed)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data(), spec=queue_specs(), generation=st.none() | st.integers(1, 50))
def test_plan_converges_against_real_redis(redis_server: Any, data: st.DataObject,
                                           spec: AgentQueueSpec,
                                           generation: int | None) -> None:
    """observe → plan → apply → observe → empty plan, on a real redis-server, starting
    from drift the model generates (stale, junk and foreign metadata, missing streams);
    the model's prediction of the metadata matches what Redis holds."""
    from agentqueue.redisgw import connection, provision
    from agentqueue.redisgw.connection import RedisTarget

    ns = f"prop-{uuid.uuid4().hex[:10]}"
    drift = data.draw(observations(spec, generation))

    async def run() -> None:
        client = await connection.connect(RedisTarget.from_secret_data(
            redis_server.secret_data()))
        try:
            for p in drift.partitions:
                real = keys.PartitionKeys(ns, NAME, p.index)
                if p.meta:
                    await client.hset(real.meta, mapping=dict(p.meta))
                if p.queue_key_type == "stream":
                    await client.xadd(real.queue_key, {"d": "x"})
                elif p.queue_key_type == "list":
                    await client.lpush(real.queue_key, "x")
                if p.dead_letter_type == "stream":
                    await client.xadd(real.dead_letter, {"d": "x"})
                if p.retry_type == "zset":
                    await client.zadd(real.retry, {"m": 1})
            observed = await provision.observe_queue(client, ns, NAME, spec)
            plan = queue_plan.plan_queue(spec, ns, NAME, observed, generation=generation)
            await provision.apply(client, plan)
            again = await provision.observe_queue(client, ns, NAME, spec)
            assert queue_plan.plan_queue(spec, ns, NAME, again, generation=generation) == []
            for before, after in zip(observed.partitions, again.partitions, strict=True):
                expected = {**before.meta}
                for a in plan:
                    if isinstance(a, WriteMeta) and a.key == keys.PartitionKeys(
                            ns, NAME, before.index).meta:
                        expected.update(a.fields)
                        for k in a.remove:
                            expected.pop(k, None)
                assert dict(after.meta) == expected
                if spec.type == "Stream":
                    assert after.queue_key_type == "stream"
        finally:
            async for key in client.scan_iter(match=keys.queue_scan_pattern(ns, NAME)):
                await client.delete(key)
            await connection.close_client(client)

    asyncio.run(run())


# ---- scaling.decide -----------------------------------------------------------------------------

@st.composite
def scaling_params(draw: st.DrawFn) -> ScalingParams:
    lo = draw(st.integers(0, 5))
    return ScalingParams(
        min_replicas=lo, max_replicas=draw(st.integers(max(lo, 1), 40)),
        lag_per_replica=draw(st.integers(1, 100)), activation_lag=draw(st.integers(1, 30)),
        cooldown_s=draw(st.sampled_from([0.0, 1.0, 5.0, 30.0])),
        up_window_s=draw(st.sampled_from([0.0, 2.0, 10.0])),
        up_step_percent=draw(st.integers(1, 1000)),
        down_window_s=draw(st.sampled_from([0.0, 3.0, 60.0])),
        down_step_percent=draw(st.integers(1, 1000)),
        fallback_replicas=draw(st.none() | st.integers(0, 50)))


@st.composite
def histories(draw: st.DrawFn, now: float) -> ScaleHistory:
    samples = draw(st.lists(st.tuples(st.floats(now - 120, now), st.integers(0, 60)),
                            max_size=20))
    return ScaleHistory(sorted(samples))


@settings(max_examples=400, deadline=None)
@given(data=st.data(), p=scaling_params(), current=st.none() | st.integers(0, 60),
       w1=st.integers(0, 5000), w2=st.integers(0, 5000),
       last_active=st.none() | st.floats(800, 1000))
def test_decide_is_monotone_in_waiting_work(data: st.DataObject, p: ScalingParams,
                                            current: int | None, w1: int, w2: int,
                                            last_active: float | None) -> None:
    now = 1000.0
    lo, hi = sorted((w1, w2))
    h = data.draw(histories(now))
    d_lo = decide(p, ScaleObservation(current, lo, last_active), copy.deepcopy(h), now)
    d_hi = decide(p, ScaleObservation(current, hi, last_active), copy.deepcopy(h), now)
    assert d_lo.desired <= d_hi.desired
    assert d_lo.recommendation <= d_hi.recommendation


@settings(max_examples=300, deadline=None)
@given(data=st.data(), p=scaling_params(), current=st.none() | st.integers(0, 60),
       waiting=st.none() | st.integers(0, 5000), paused=st.booleans(),
       last_active=st.none() | st.floats(800, 1000))
def test_decide_is_deterministic_and_records_only_real_ticks(
        data: st.DataObject, p: ScalingParams, current: int | None, waiting: int | None,
        paused: bool, last_active: float | None) -> None:
    now = 1000.0
    h = data.draw(histories(now))
    h1, h2 = copy.deepcopy(h), copy.deepcopy(h)
    o = ScaleObservation(current, waiting, last_active)
    a, b = decide(p, o, h1, now, paused), decide(p, o, h2, now, paused)
    assert a == b and h1 == h2
    if paused or waiting is None:
        assert h1 == h  # a circuit breaker or an unreadable Redis is not a recommendation
    if paused:
        assert a.desired == 0
    if waiting is None and not paused:
        assert a.fallback and p.min_replicas <= a.desired <= p.max_replicas
    # Round trip through status (JSON) keeps every window answer.
    back = ScaleHistory.from_json(json.loads(json.dumps(h1.to_json())))
    for cutoff in (now - 100, now - 10, now - 1):
        assert back.lowest_since(cutoff, -1) == h1.lowest_since(cutoff, -1)
        assert back.highest_since(cutoff, -1) == h1.highest_since(cutoff, -1)


@settings(max_examples=300, deadline=None)
@given(p=scaling_params(), current=st.integers(1, 60), idle=st.floats(0, 100))
def test_never_to_zero_inside_the_cooldown(p: ScalingParams, current: int, idle: float) -> None:
    now = 1000.0
    d = decide(p, ScaleObservation(current, 0, now - idle), ScaleHistory(), now)
    if idle < p.cooldown_s:
        assert d.desired >= 1
    if p.min_replicas == 0 and idle >= p.cooldown_s and p.down_window_s == 0:
        # No work for the whole cooldown: heading for zero, step-limited.
        assert d.desired < current or current == 0


# ---- retention.plan_trim against a model stream --------------------------------------------------

@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[GroupPosition], int]:
    """Entry ids (ms, seq), groups (last-delivered, oldest pending) over them, now (ms)."""
    base = 1_000_000
    ids: list[tuple[int, int]] = []
    ms = base
    for _ in range(draw(st.integers(0, 40))):
        gap = draw(st.integers(0, 3))
        ms += gap
        seq = ids[-1][1] + 1 if ids and gap == 0 else 0
        ids.append((ms, seq))
    groups = []
    for g in range(draw(st.integers(0, 3))):
        last = draw(st.integers(-1, len(ids) - 1))
        last_id = ids[last] if last >= 0 else (0, 0)
        pending = None
        if last >= 0 and draw(st.booleans()):
            pending = ids[draw(st.integers(0, last))]
        groups.append(GroupPosition(f"g{g}", format_id(last_id),
                                    format_id(pending) if pending else None))
    now = ms + draw(st.integers(0, 10))
    return ids, groups, now


def _trim(ids: list[tuple[int, int]], minid: str | None, keep: int | None
          ) -> list[tuple[int, int]]:
    """Exact XTRIM MINID then MAXLEN (keep the newest `keep`)."""
    out = ids
    if minid is not None:
        ms, _, seq = minid.partition("-")
        cut = (int(ms), int(seq or 0))
        out = [i for i in out if i >= cut]
    if keep is not None and len(out) > keep:
        out = out[len(out) - keep:]
    return out


@settings(max_examples=500, deadline=None)
@given(case=streams(), max_length=st.none() | st.integers(1, 40),
       max_age=st.none() | st.integers(0, 150), protect=st.booleans(),
       unknown=st.booleans())
def test_trim_plan_against_a_model_stream(case: tuple[list[tuple[int, int]],
                                                      list[GroupPosition], int],
                                          max_length: int | None, max_age: int | None,
                                          protect: bool, unknown: bool) -> None:
    ids, groups, now = case
    assume(max_length is not None or max_age is not None)
    settings_ = RetentionSettings(max_length=max_length, exact=True, max_age_ms=max_age,
                                  protect_undelivered=protect)
    floor, _holders = floor_of(groups)
    unacked = sum(1 for i in ids if floor is not None and i >= floor)
    cut = (max(0, now - max_age), 0) if max_age is not None else None
    older = sum(1 for i in ids if floor is not None and cut is not None and floor <= i < cut)
    obs = PartitionObservation(len(ids), format_id(ids[0]) if ids else None, groups,
                               None if unknown else unacked, None if unknown else older)
    plan = plan_trim(settings_, obs, now)
    keep = None if plan.maxlen is None else max(plan.maxlen, plan.guard_unacked or 0)
    left = _trim(ids, plan.minid, keep)
    trimmed = ids[:len(ids) - len(left)]
    assert left == ids[len(trimmed):]  # a prefix goes, nothing else

    # What the policy asks for, without protection.
    unprotected = _trim(ids, format_id(cut) if cut else None, max_length)
    wanted_gone = ids[:len(ids) - len(unprotected)]
    if floor is None or not protect:
        assert left == unprotected
        if floor is not None and not unknown:
            assert plan.dropped_undelivered(len(trimmed)) == sum(
                1 for i in trimmed if i >= floor)
        return
    # Protected: nothing at or after the floor is trimmed ...
    assert all(i < floor for i in trimmed)
    assert plan.dropped_undelivered(len(trimmed)) == 0
    if unknown:
        return
    # ... everything before the floor the policy wanted gone is gone ...
    assert [i for i in wanted_gone if i < floor] == trimmed
    # ... and `protected` counts exactly the unacked entries the policy would drop.
    assert plan.protected == sum(1 for i in wanted_gone if i >= floor)
    assert bool(plan.blocked_by) == (plan.protected > 0)


def test_protected_plan_never_reports_unknown_drops() -> None:
    groups = [GroupPosition("g", "5-0")]
    plan = plan_trim(RetentionSettings(max_age_ms=1, exact=True),
                     PartitionObservation(10, "1-0", groups, None, None), 100)
    assert plan.floor == "5-1" and plan.minid == "5-1"
    assert plan.dropped_undelivered(4) == 0


# ---- codec ------------------------------------------------------------------------------------------

idem_keys = st.text(alphabet=st.characters(min_codepoint=0x20, blacklist_categories=("Cs",),
                                           blacklist_characters="\x7f"),
                    min_size=1, max_size=60)
header_maps = st.dictionaries(st.text(max_size=12), st.text(max_size=30), max_size=5)
errors = st.none() | st.text(max_size=60)


@given(body=st.binary(max_size=300), key=st.none() | idem_keys, headers=header_maps,
       attempt=st.integers(0, 1_000_000), error=errors)
def test_binary_stream_envelopes_round_trip(body: bytes, key: str | None,
                                            headers: dict[str, str], attempt: int,
                                            error: str | None) -> None:
    env = Envelope(body, key, headers, attempt, error)
    fields = encode_fields(env)
    for stored in (fields, {k.encode(): v for k, v in fields.items()}):
        back = decode_fields(stored)
        assert back.body == body and back.idempotency_key == key
        assert dict(back.headers) == headers and back.attempt == attempt
        if error is not None:
            assert back.error == error.encode("utf-8", "replace").decode("utf-8", "replace")


@given(body=st.binary(max_size=200), key=st.none() | idem_keys, headers=header_maps,
       attempt=st.integers(0, 1_000_000), error=errors, priority=st.integers(0, 999),
       msg_id=st.text(min_size=1, max_size=128))
def test_elements_round_trip_with_every_field(body: bytes, key: str | None,
                                              headers: dict[str, str], attempt: int,
                                              error: str | None, priority: int,
                                              msg_id: str) -> None:
    assume(all(not 0xD800 <= ord(c) <= 0xDFFF for c in msg_id + (error or "")))
    raw = encode_element(Envelope(body, key, headers, attempt, error), msg_id, priority)
    got_id, got_priority, env = decode_element(raw)
    assert (got_id, got_priority, env.body, env.idempotency_key, dict(env.headers),
            env.attempt, env.error) == (msg_id, priority, body, key, headers, attempt, error)


field_names = st.text(min_size=1, max_size=12)


@given(body=st.binary(max_size=50), extra=field_names, value=st.binary(max_size=20),
       as_bytes=st.booleans())
def test_any_foreign_field_is_refused(body: bytes, extra: str, value: bytes,
                                      as_bytes: bool) -> None:
    assume(extra not in ENVELOPE_FIELDS)
    fields: dict[Any, Any] = {"d": body, extra: value}
    if as_bytes:
        fields = {k.encode("utf-8", "surrogatepass"): v for k, v in fields.items()}
    with pytest.raises(DecodeError) as info:
        decode_fields(fields)
    reason = info.value.reason
    if extra.startswith(DLQ_PREFIX):
        assert "reserved dead-letter field" in reason
    else:
        assert "unknown field" in reason or "not UTF-8" in reason


@given(body=st.text(max_size=30), suffix=field_names)
def test_forged_dead_letter_fields_in_elements_are_refused(body: str, suffix: str) -> None:
    raw = json.dumps({"i": "m-1", "d": body, DLQ_PREFIX + suffix: "forged"}).encode()
    with pytest.raises(DecodeError) as info:
        decode_element(raw)
    assert "reserved dead-letter field" in info.value.reason


@given(key=st.text(max_size=200))
def test_producer_key_check_matches_the_consumer_side(key: str) -> None:
    """A key the producer accepts is one every consumer decodes back unchanged; a key it
    refuses is empty, too long, or carries control characters or lone surrogates."""
    try:
        check_idempotency_key(key)
    except ValueError:
        encoded = key.encode("utf-8", "surrogatepass")
        assert (not key or len(encoded) > MAX_KEY_BYTES
                or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key)
                or any(0xD800 <= ord(c) <= 0xDFFF for c in key))
        return
    env = decode_fields({b"d": b"1", b"k": key.encode("utf-8")})
    assert env.idempotency_key == key
    _, _, env2 = decode_element(encode_element(Envelope(b"1", key), "m"))
    assert env2.idempotency_key == key


@given(headers=st.dictionaries(st.text(max_size=40), st.text(max_size=200), max_size=70))
def test_producer_header_check_matches_the_consumer_side(headers: dict[str, str]) -> None:
    try:
        checked = check_headers(headers)
    except ValueError:
        assert len(headers) > 64 or len(json.dumps(headers, ensure_ascii=False,
                                                   separators=(",", ":")).encode()) > 65536
        return
    assert decode_fields(encode_fields(Envelope(b"1", headers=checked))).headers == headers


def test_strategies_cover_the_plan_kinds() -> None:
    """Guard: the generators above reach every action kind and a conflict."""
    spec = AgentQueueSpec.from_wire({"partitions": 2})
    empty = ObservedQueue(NS, NAME, "Stream", (), {"n": None}, WANTED_LIB)
    kinds = {type(a) for a in queue_plan.plan_queue(spec, NS, NAME, empty)}
    assert kinds == {LoadLibrary, CreateStream, WriteMeta}
    assert math.isfinite(0.0)
