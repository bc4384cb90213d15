"""RetentionPolicy reconciler: find the queues a policy governs, trim them, report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agentqueue_client import keys

from .. import events, reasons
from ..conditions import get_condition, now_iso, set_condition
from ..models import (
    AgentQueueSpec,
    AgentQueueStatus,
    RetentionPolicySpec,
    RetentionPolicyStatus,
    parse_duration,
)
from ..planning.retention import RetentionSettings, effective_policy
from ..redisgw.errors import RedisError
from ..redisgw.retention import RetentionResult, adjust_idempotency_ttl, apply_retention
from ..runtime import Runtime
from .errors import SpecProblem

MIN_INTERVAL_S = 1.0


@dataclass
class PolicyOutcome:
    status: dict[str, Any]


def interval_of(body: dict[str, Any]) -> float:
    raw = (body.get("spec") or {}).get("interval") or "30s"
    try:
        return max(MIN_INTERVAL_S, parse_duration(raw))
    except ValueError:
        return 30.0


def parse_spec(raw: dict[str, Any]) -> RetentionPolicySpec:
    try:
        return RetentionPolicySpec.from_wire(raw)
    except ValidationError as exc:
        msg = "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                        for e in exc.errors()[:5])
        raise SpecProblem(reasons.INVALID_SPEC, msg, retry_after=None) from None


def blocked_condition(result: RetentionResult, policy: str) -> tuple[bool, str, str]:
    """(blocked, reason, message) for the queue's RetentionBlockedByLag condition. Pure."""
    blocked = sorted(set(result.blocked_by))
    if result.protected and blocked:
        return (True, reasons.PROTECTED,
                f"RetentionPolicy {policy!r} keeps {result.protected} entries over its limit "
                f"because consumer group(s) {', '.join(blocked)} have not acknowledged them")
    return False, reasons.NOT_BLOCKED, f"RetentionPolicy {policy!r} trims as specified"


async def _report_on_queue(rt: Runtime, queue: dict[str, Any], policy: str,
                           result: RetentionResult | None) -> None:
    meta = queue["metadata"]
    ns, name = meta["namespace"], meta["name"]
    status = rt.status.current("AgentQueue", ns, name)
    if status is None:
        return
    conditions = status.get("conditions")
    patch = AgentQueueStatus(retention_policy=policy).to_patch()
    if result is not None:
        blocked, reason, message = blocked_condition(result, policy)
        before = get_condition(conditions, reasons.RETENTION_BLOCKED_BY_LAG)
        patch["conditions"] = set_condition(conditions, reasons.RETENTION_BLOCKED_BY_LAG,
                                            blocked, reason, message, meta.get("generation"))
        if blocked and (before is None or before.get("status") != "True"):
            events.warn(queue, reasons.RETENTION_BLOCKED_BY_LAG, message)
    await rt.status.write("AgentQueue", ns, name, patch, {"conditions": conditions})


async def apply_policy(rt: Runtime, body: dict[str, Any]) -> PolicyOutcome:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    spec = parse_spec(body.get("spec") or {})
    settings = RetentionSettings.from_spec(spec)
    previous = body.get("status") or {}
    # From the watch (keepers/objects.py), not a LIST per run: a namespace with 10,000
    # queues would otherwise cost a 10,000-item read every interval per policy.
    queues = [q for q in rt.objects.of_kind("AgentQueue")
              if q["metadata"]["namespace"] == ns and not q["metadata"].get("deletionTimestamp")]
    policies = [p for p in rt.objects.of_kind("RetentionPolicy")
                if p["metadata"]["namespace"] == ns]
    if not any(p["metadata"]["name"] == name for p in policies):
        policies.append(body)  # its own watch event may not have been stored yet
    refs = [(p["metadata"]["name"], p["metadata"].get("creationTimestamp", ""),
             (p.get("spec") or {}).get("selector")) for p in policies]
    matched: list[str] = []
    conflicts: list[str] = []
    trimmed = protected = dropped = 0
    failures: list[RedisError] = []
    for queue in sorted(queues, key=lambda q: q["metadata"]["name"]):
        qname = queue["metadata"]["name"]
        try:
            qspec = AgentQueueSpec.from_wire(queue.get("spec") or {})
        except ValidationError:
            continue  # the queue reports its own spec problem
        explicit = qspec.retention_policy_ref.name if qspec.retention_policy_ref else None
        winner, others = effective_policy(queue["metadata"].get("labels") or {}, explicit, refs)
        if winner != name and name not in others:
            continue
        if winner != name:
            conflicts.append(f"{qname}: governed by {winner}")
            continue
        if others:
            conflicts.append(f"{qname}: also selected by {', '.join(others)}")
        matched.append(qname)
        if qspec.type != "Stream":
            continue  # Lists and channels have no stream to trim
        secret_ref = qspec.redis.secret_ref.name if qspec.redis else None
        target = await rt.target_for(ns, secret_ref)
        try:
            client = await rt.redis.get(target)
            parts = keys.partition_keys(ns, qname, qspec.partitions)
            result = await apply_retention(client, parts, settings)
            if settings.idempotency_ttl_ms:
                await adjust_idempotency_ttl(client, ns, qname, settings.idempotency_ttl_ms)
        except RedisError as exc:
            failures.append(exc)
            continue
        trimmed += result.trimmed + result.dead_letter_trimmed
        protected += result.protected
        dropped += result.dropped_undelivered
        rt.metrics.add_trimmed(ns, qname, result.trimmed + result.dead_letter_trimmed,
                               result.dropped_undelivered)
        await _report_on_queue(rt, queue, name, result)
    if failures:
        raise failures[0]
    if trimmed:
        events.info(body, reasons.TRIMMED, f"trimmed {trimmed} entries from "
                    f"{len(matched)} queue(s)")
    status = RetentionPolicyStatus(
        matched_queues=matched,
        last_run=now_iso(),
        trimmed_total=int(previous.get("trimmedTotal") or 0) + trimmed,
        protected_total=protected,
        dropped_undelivered_total=int(previous.get("droppedUndeliveredTotal") or 0) + dropped,
        conflicts=conflicts,
    ).to_patch()
    if conflicts and conflicts != previous.get("conflicts"):
        events.warn(body, reasons.POLICY_CONFLICT, "; ".join(conflicts))

    return PolicyOutcome(status)


async def apply_and_report(rt: Runtime, plain: dict[str, Any], raise_errors: bool) -> None:
    """Apply the policy once and write its status (handlers and the retention keeper)."""
    from .report import ready_status, run_reconcile, write_status

    meta = plain["metadata"]
    async with rt.locked("RetentionPolicy", meta["namespace"], meta["name"]):
        outcome = await run_reconcile(rt, "RetentionPolicy", "retentionpolicies", plain,
                                      lambda: apply_policy(rt, plain),
                                      raise_errors=raise_errors)
        if outcome is None:
            return
        msg = (f"applies to {len(outcome.status['matchedQueues'])} queue(s)"
               + (f"; {len(outcome.status['conflicts'])} conflict(s)"
                  if outcome.status["conflicts"] else ""))
        status = ready_status(plain, True, reasons.ACTIVE, msg, outcome.status)
        conflicts = outcome.status["conflicts"]
        status["conditions"] = set_condition(
            status["conditions"], reasons.POLICY_CONFLICT, bool(conflicts),
            reasons.POLICY_CONFLICT if conflicts else reasons.NO_CONFLICT, "; ".join(conflicts),
            meta.get("generation"))
        await write_status(rt, "retentionpolicies", plain, status)
