"""ConsumerGroup reconciler: the group on every partition, its settings in the queue's
metadata hash, and the scale target checked. The scaling loop lives in handlers.groups.

On a List queue there is no Redis consumer group: only the settings are written (the
SDK's consumers read them by group name), see planning/list_groups.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agentqueue_client import keys

from .. import reasons
from ..conditions import now_iso
from ..kube import KubeNotFound
from ..models import AgentQueueSpec, ConsumerGroupSpec, parse_duration
from ..planning import conflicts, list_groups
from ..redisgw import groups as redis_groups
from ..redisgw.connection import RedisTarget
from ..redisgw.meta import write_group_meta
from ..runtime import Runtime
from .errors import SpecProblem, Waiting
from .queues import parse_spec as parse_queue_spec

SETTLE_TIMEOUT_S = 30.0
"""At startup the conflict checks wait for the ConsumerGroups that existed then to arrive
from the watch; one deleted in between never does: this long at most."""


@dataclass
class GroupContext:
    """Everything the scaling loop needs, resolved once per reconcile."""

    namespace: str
    name: str
    group: str
    spec: ConsumerGroupSpec
    queue_spec: AgentQueueSpec
    target: RedisTarget
    partitions: list[keys.PartitionKeys]

    @property
    def is_list(self) -> bool:
        """A List queue: no Redis consumer group, only the settings in the metadata hash."""
        return self.queue_spec.type == "List"

    @property
    def max_deliveries(self) -> int:
        return self.spec.max_deliveries or self.queue_spec.delivery.max_deliveries


def parse_spec(raw: dict[str, Any]) -> ConsumerGroupSpec:
    try:
        return ConsumerGroupSpec.from_wire(raw)
    except ValidationError as exc:
        msg = "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                        for e in exc.errors()[:5])
        raise SpecProblem(reasons.INVALID_SPEC, msg, retry_after=None) from None


def _me(body: dict[str, Any]) -> conflicts.Claim:
    meta = body["metadata"]
    return conflicts.Claim(str(meta.get("creationTimestamp") or ""), meta["name"])


def group_name_claims(rt: Runtime, body: dict[str, Any],
                      spec: ConsumerGroupSpec) -> list[conflicts.Claim]:
    """Other ConsumerGroups (not being deleted) naming the same Redis group on the queue,
    from the watch's index (keepers/objects.py). One the watch brings later (kopf works
    on objects concurrently) makes the store report the change, and the group that lost
    its claim is reconciled again (handlers/watch.py): a claim is never fought over."""
    meta = body["metadata"]
    return [c for c in rt.objects.group_name_claims(meta["namespace"], spec.queue_ref.name,
                                                    spec.group_name or meta["name"])
            if c.name != meta["name"]]


async def resolve(rt: Runtime, body: dict[str, Any], *,
                  check_fields: bool = True, check_rivals: bool = True) -> GroupContext:
    """The group's context. `check_fields` False: a List group with a Stream-only field
    resolves anyway (its deletion still removes settings an earlier spec wrote).
    `check_rivals` False: the group keeper's resolve (a group that lost its name to an
    older one is not Ready, so the keeper does not act on it anyway)."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    spec = parse_spec(body.get("spec") or {})
    rival = None
    if check_rivals:
        await rt.objects.settled("ConsumerGroup", SETTLE_TIMEOUT_S)
        rival = conflicts.group_name_rival(_me(body), group_name_claims(rt, body, spec))
    if rival is not None:
        group = spec.group_name or name
        raise SpecProblem(reasons.GROUP_NAME_CONFLICT,
                          f"Redis group {group!r} on queue {spec.queue_ref.name!r} belongs to "
                          f"ConsumerGroup {rival.name!r} (created first); this one neither "
                          "changes nor deletes it. Give it another spec.groupName",
                          retry_after=30.0)
    # Read before the queue: a change after it wakes the retry (report.run_reconcile).
    seen = rt.queue_seen(ns, spec.queue_ref.name)
    queue = rt.objects.get("AgentQueue", ns, spec.queue_ref.name)
    if not _is_ready(queue):  # the watch may lag behind: ask the API before waiting
        queue = await rt.kube.get_object("agentqueues", ns, spec.queue_ref.name)
    if queue is None:
        raise SpecProblem(reasons.QUEUE_NOT_FOUND,
                          f"AgentQueue {spec.queue_ref.name!r} does not exist in {ns}",
                          retry_after=10.0, depends_on=seen)
    # The queue's parsed spec, shared with the queue's own reconciles (one per generation).
    queue_spec = rt.parsed_spec("AgentQueue", queue, lambda raw: parse_queue_spec(
        raw, rt.config.max_schema_bytes))
    check_queue_type(spec, spec.queue_ref.name, queue_spec.type, check_fields)
    ready = next((c for c in (queue.get("status") or {}).get("conditions") or []
                  if c.get("type") == reasons.READY), None)
    if not ready or ready.get("status") != "True":
        raise Waiting(reasons.QUEUE_NOT_READY,
                      f"waiting for AgentQueue {spec.queue_ref.name!r} to be Ready", delay=3.0,
                      depends_on=seen)
    secret_ref = queue_spec.redis.secret_ref.name if queue_spec.redis else None
    target = await rt.target_for(ns, secret_ref)
    return GroupContext(ns, name, spec.group_name or name, spec, queue_spec, target,
                        keys.partition_keys(ns, spec.queue_ref.name, queue_spec.partitions))


def _is_ready(queue: dict[str, Any] | None) -> bool:
    return queue is not None and any(
        c.get("type") == reasons.READY and c.get("status") == "True"
        for c in (queue.get("status") or {}).get("conditions") or [])


def check_queue_type(spec: ConsumerGroupSpec, queue: str, queue_type: str,
                     check_fields: bool = True) -> None:
    """A group needs a Stream or List queue; on a List, no Stream-only field may be set
    (planning/list_groups.py). The type lives on the queue, so the CRD cannot check it."""
    if queue_type == "PubSub":
        raise SpecProblem(reasons.QUEUE_TYPE_UNSUPPORTED,
                          f"AgentQueue {queue!r} is a PubSub queue; consumer groups need "
                          "type Stream or List", retry_after=None)
    if queue_type == "List" and check_fields:
        problems = list_groups.stream_only_fields(spec)
        if problems:
            raise SpecProblem(reasons.STREAM_ONLY_FIELD,
                              f"AgentQueue {queue!r} is a List queue: " + "; ".join(problems),
                              retry_after=None)


def group_meta_fields(ctx: GroupContext, previous_pause: str | None) -> tuple[dict[str, str],
                                                                                list[str]]:
    """Fields to set and to delete in every partition's metadata hash. Pure."""
    g = ctx.group
    fields = {
        f"visibilityMs:{g}": str(int(parse_duration(ctx.spec.visibility_timeout) * 1000)),
        f"maxDeliveries:{g}": str(ctx.max_deliveries),
    }
    remove: list[str] = []
    if ctx.spec.paused:
        fields[f"paused:{g}"] = previous_pause or json.dumps(
            {"reason": ctx.spec.pause_reason or "paused in the ConsumerGroup spec",
             "at": now_iso()})
    else:
        remove.append(f"paused:{g}")
    return fields, remove


async def reconcile_group(rt: Runtime, body: dict[str, Any]) -> GroupContext:
    ctx = await resolve(rt, body)
    client = await rt.redis.get(ctx.target)
    if not ctx.is_list:
        await redis_groups.ensure_group(client, ctx.partitions, ctx.group,
                                        ctx.spec.start_from)
    status = body.get("status") or {}
    previous = None
    if ctx.spec.paused and status.get("pausedAt"):
        previous = json.dumps({"reason": status.get("pausedReason"), "at": status["pausedAt"]})
    fields, remove = group_meta_fields(ctx, previous)
    await write_group_meta(client, ctx.partitions, fields, remove)
    ref = ctx.spec.scale_target_ref
    if ref is not None:
        try:
            await rt.kube.get_scale(ref.api_version, ref.kind, ctx.namespace, ref.name)
        except KubeNotFound as exc:
            raise SpecProblem(reasons.SCALE_TARGET_NOT_FOUND,
                              f"scaleTargetRef {ref.kind}/{ref.name}: {exc}",
                              retry_after=10.0) from None
    return ctx


async def delete_group(rt: Runtime, body: dict[str, Any]) -> None:
    """Destroy the group on every partition; the queue's data stays."""
    try:
        ctx = await resolve(rt, body, check_fields=False)
    except (SpecProblem, Waiting):
        return  # the queue is gone or never worked: nothing of ours left in Redis
    if group_name_claims(rt, body, ctx.spec):
        # Another ConsumerGroup names this Redis group: it takes over, with its pending
        # entries and position intact.
        rt.groups.forget_report(ctx.namespace, ctx.name)
        return
    client = await rt.redis.get(ctx.target)
    if not ctx.is_list:
        await redis_groups.delete_group(client, ctx.partitions, ctx.group)
    await write_group_meta(
        client, ctx.partitions, {},
        [f"visibilityMs:{ctx.group}", f"maxDeliveries:{ctx.group}", f"paused:{ctx.group}"])
    rt.groups.forget_report(ctx.namespace, ctx.name)
