"""AgentQueue reconciler: make Redis match the spec, and report what was observed."""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from pydantic import ValidationError

from agentqueue_client import keys

from .. import reasons
from ..conditions import iso, parse_time
from ..kube import standard_labels
from ..metrics import GroupReport
from ..models import AgentQueueSpec, AgentQueueStatus, Role, parse_duration
from ..models.queue import CredentialsStatus, PartitionStatus, UserStatus
from ..planning import acl, queue_plan, slo
from ..planning.server_risks import Risk
from ..redisgw import backlog, provision, users
from ..redisgw.connection import RedisTarget, is_cluster
from ..runtime import Runtime
from .errors import SpecProblem

log = logging.getLogger("agentqueue.queues")
ROTATE_ANNOTATION = "agentqueue.io/rotate-credentials"
STALE_FIGURES_MIN_S = 10.0
"""A group's figures older than this (or three poll intervals) no longer count."""


@dataclass
class PreObserved:
    """What the queue keeper read of one queue in its batched round trips (one per
    kind of read for every queue on the server), so a drift check that finds nothing
    to repair costs this queue no Redis call of its own."""

    observed: provision.ObservedQueue
    counters: slo.RetryCounters | None
    waiting_age: float | None
    jammed: list[str]
    user_ok: Callable[[str], bool]
    """Whether a user's ACL rules are as last verified (their ACL LIST digest)."""
    secret_reads: list[int] = field(default_factory=lambda: [1 << 30])
    """The keeper's budget of Secret re-reads left this round (shared by its queues)."""


@dataclass
class QueueOutcome:
    status: dict[str, Any]
    repaired: list[str] = field(default_factory=list)
    rotated: bool = False
    target: RedisTarget | None = None
    slo_sample: slo.QueueSample | None = None
    risks: list[Risk] = field(default_factory=list)
    """How the Redis server is configured to lose data (planning/server_risks)."""
    problem: tuple[str, str] | None = None
    """(reason, message) that makes the queue Ready=False although it is provisioned."""
    verified_users: list[str] = field(default_factory=list)
    """Users compared with ACL GETUSER and found as wanted (the keeper records their
    ACL LIST digests)."""


DEFAULT_MAX_SCHEMA_BYTES = 32 * 1024


def schema_size(schema: Any) -> int:
    """Bytes of `schema` as compact JSON: what is copied into every partition's hash."""
    return len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())


def parse_spec(raw: dict[str, Any], max_schema_bytes: int = DEFAULT_MAX_SCHEMA_BYTES
               ) -> AgentQueueSpec:
    """The spec, validated; a schema over `max_schema_bytes` (the operator setting
    --max-schema-bytes) is refused before anything else is looked at."""
    raw_schema = raw.get("schema") if isinstance(raw, dict) else None
    if raw_schema is not None:
        size = schema_size(raw_schema)
        if size > max_schema_bytes:
            raise SpecProblem(reasons.SPEC_TOO_LARGE,
                              f"spec.schema is {size} bytes as JSON; this operator accepts "
                              f"at most {max_schema_bytes} (operator.maxSchemaBytes)",
                              retry_after=None)
    try:
        spec = AgentQueueSpec.from_wire(raw)
    except ValidationError as exc:
        raise SpecProblem(reasons.INVALID_SPEC, _pydantic_message(exc), retry_after=None) from None
    if spec.schema_ is not None:
        try:
            jsonschema.validators.validator_for(spec.schema_).check_schema(spec.schema_)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise SpecProblem(reasons.INVALID_SCHEMA,
                              f"spec.schema is not a valid JSON Schema at {where}: {exc.message}",
                              retry_after=None) from None
    return spec


def _pydantic_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"spec.{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def rotation_due(spec: AgentQueueSpec, annotations: dict[str, str], creds: dict[str, Any],
                 now: float) -> str | None:
    """Why credentials must rotate now, or None. Pure."""
    token = annotations.get(ROTATE_ANNOTATION)
    if token and token != creds.get("rotationToken"):
        return f"annotation {ROTATE_ANNOTATION}={token}"
    last = parse_time(creds.get("lastRotation"))
    every = spec.credentials.rotate_every
    if every and last is not None and now - last >= parse_duration(every):
        return f"rotateEvery {every} elapsed"
    return None


def secret_data(target: RedisTarget, namespace: str, name: str, spec: AgentQueueSpec,
                role: Role, username: str, password: str, *,
                cluster: bool = False) -> dict[str, str]:
    parts = keys.partition_keys(namespace, name, spec.partitions)
    data = {
        "REDIS_URL": target.url_without_credentials(),
        "REDIS_USERNAME": username,
        "REDIS_PASSWORD": password,
        "AQ_NAMESPACE": namespace,
        "AQ_QUEUE": name,
        "AQ_QUEUE_TYPE": str(spec.type),
        "AQ_PARTITIONS": str(spec.partitions),
        "AQ_QUEUE_KEYS": ",".join(p.queue_key for p in parts),
        "AQ_DEAD_LETTER_KEYS": ",".join(p.dead_letter for p in parts),
        "AQ_KEY_PATTERN": keys.queue_key_pattern(namespace, name),
        "AQ_ROLE": str(role),
    }
    if spec.type == "PubSub":
        data["AQ_CHANNEL"] = keys.channel_name(namespace, name)
    if target.ca_pem:
        data["REDIS_CA_CERT"] = target.ca_pem
    if cluster:  # clients must connect with a cluster client (cross-slot reads differ)
        data["REDIS_CLUSTER"] = "1"
    if target.sentinels:  # clients ask the sentinels for the primary (and follow failovers)
        data["REDIS_SENTINELS"] = target.sentinel_list()
        data["REDIS_SENTINEL_MASTER"] = target.sentinel_master or ""
    return data


SECRET_RECHECK_DRIFTS = 10
"""A drift check re-reads the credentials Secrets every this many drift intervals; in
between it restores the ACL users from the password hashes it last saw (a Redis restart
needs no Kubernetes call), and a Secret deleted or edited by hand is rewritten at the
next re-read (5 min with the default 30 s interval)."""


def secret_recheck_after(rt: Runtime, secret: str) -> float:
    """Seconds between re-reads of a credentials Secret by the drift check: at most ten
    drift intervals, spread down to five by the Secret's name so that queues created
    together are not all re-read in the same round."""
    spread = 1 - (zlib.crc32(secret.encode()) % 1000) / 2000
    return SECRET_RECHECK_DRIFTS * rt.config.drift_interval * spread


def time_due(rt: Runtime, body: dict[str, Any], spec: AgentQueueSpec, now: float) -> bool:
    """Whether a drift check must reconcile the queue whatever it observed: credentials
    to rotate, a grace period running or over, a credentials Secret to re-read."""
    meta = body["metadata"]
    creds = (body.get("status") or {}).get("credentials") or {}
    if rotation_due(spec, meta.get("annotations") or {}, creds, now):
        return True
    if creds.get("previousExpires"):
        return True
    for _, entry in spec.access.entries():
        sname = keys.secret_name(meta["name"], entry.name)
        seen = rt.secrets_seen.get((meta["namespace"], sname))
        if seen is None or now - seen[0] >= secret_recheck_after(rt, sname):
            return True
    return False


async def reconcile_queue(rt: Runtime, body: dict[str, Any], now: float, *,
                          drift: bool = False, pre: PreObserved | None = None) -> QueueOutcome:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    spec = rt.parsed_spec("AgentQueue", body, lambda raw: parse_spec(
        raw, rt.config.max_schema_bytes))
    status = body.get("status") or {}
    secret_ref = spec.redis.secret_ref.name if spec.redis else None
    target = await rt.target_for(ns, secret_ref)
    client = await rt.redis.get(target)

    # --- observe
    risks = await rt.server_risks(target, client)
    observed = (pre.observed if pre is not None
                else await provision.observe_queue(client, ns, name, spec))
    creds = dict(status.get("credentials") or {})
    rotate_reason = rotation_due(spec, meta.get("annotations") or {}, creds, now)
    previous_expires = parse_time(creds.get("previousExpires"))
    in_grace = previous_expires is not None and now < previous_expires

    # --- plan and apply the queue's keys, metadata and the Functions library
    try:
        actions = queue_plan.plan_queue(spec, ns, name, observed,
                                        generation=meta.get("generation"))
    except queue_plan.KeyConflict as exc:
        raise SpecProblem("KeyConflict", str(exc), retry_after=30.0) from None
    repaired = [a.describe() for a in actions]
    await provision.apply(client, actions)

    # --- users: one per access entry, passwords only in Secrets
    user_status: list[UserStatus] = []
    verified: list[str] = []
    for role, entry in spec.access.entries():
        username = keys.acl_username(ns, name, entry.name)
        sname = keys.secret_name(name, entry.name)
        rules = acl.acl_rules(role, ns, name, spec.type, spec.partitions)
        seen = rt.secrets_seen.get((ns, sname))
        fresh = seen is not None and now - seen[0] < secret_recheck_after(rt, sname)
        if (drift and seen is not None and not fresh and pre is not None
                and not rotate_reason and not in_grace):
            fresh = pre.secret_reads[0] <= 0  # over this round's budget: the next one
            pre.secret_reads[0] -= 1
        if drift and seen is not None and fresh and not rotate_reason and not in_grace:
            if pre is not None and previous_expires is None and pre.user_ok(username):
                pass  # its ACL LIST line is as verified: no GETUSER
            elif await users.ensure_user(client, username, rules, [seen[1]]):
                repaired.append(f"ACL user {username}")
                rt.user_index.added(target.key, username)
            else:
                verified.append(username)
            user_status.append(UserStatus(name=entry.name, role=role, username=username,
                                          secret_name=sname))
            continue
        found = await rt.kube.read_secret_owned(ns, sname)
        if found is not None and not found.owned_by(body):
            # Never adopt: not overwritten, re-labelled or owned, its password never used.
            raise SpecProblem(reasons.SECRET_CONFLICT,
                              f"Secret {sname!r} exists and was not created by the operator "
                              f"for this queue; it is left untouched. Delete or rename it, "
                              f"or rename access entry {entry.name!r}", retry_after=30.0)
        existing = found.data if found is not None else None
        password = (existing or {}).get("REDIS_PASSWORD", b"").decode() or None
        if password is not None and not rotate_reason:
            known = await users.password_hashes(client, username)
            if known and users.sha256_hex(password) not in known:
                # Our Secret, edited by hand: a password the operator did not generate.
                password = None
        hashes: list[str] = []
        if password is None or rotate_reason:
            old = password
            password = users.new_password()
            hashes = [users.sha256_hex(password)]
            if old:  # the old password keeps working during the grace period
                hashes.append(users.sha256_hex(old))
        else:
            hashes = [users.sha256_hex(password)]
            if in_grace:
                hashes += [h for h in await users.password_hashes(client, username)
                           if h not in hashes]
        changed = await users.ensure_user(client, username, rules, hashes)
        rt.user_index.added(target.key, username)
        if changed and existing is not None and not rotate_reason:
            repaired.append(f"ACL user {username}")
        if not changed:
            verified.append(username)
        # The Secret is written after Redis accepted the password, never before.
        await rt.kube.apply_secret(
            ns, sname, secret_data(target, ns, name, spec, role, username, password,
                                   cluster=is_cluster(client)),
            owner=body, labels=standard_labels(name, "credentials"), current=existing)
        rt.secrets_seen[(ns, sname)] = (now, hashes[0])
        user_status.append(UserStatus(name=entry.name, role=role, username=username,
                                      secret_name=sname))

    if not drift:  # entries leave the spec only with a spec change
        wanted = {u.name for u in user_status}
        for entry_name in await _provisioned_entries(rt, target, client, ns, name):
            if entry_name not in wanted:
                await _remove_entry(rt, client, body, entry_name)
                rt.user_index.removed(target.key, keys.acl_username(ns, name, entry_name))

    if rotate_reason:
        creds["lastRotation"] = iso(now)
        creds["previousExpires"] = iso(now + parse_duration(spec.credentials.grace_period))
        token = (meta.get("annotations") or {}).get(ROTATE_ANNOTATION)
        if token:
            creds["rotationToken"] = token
    elif previous_expires is not None and not in_grace:
        creds.pop("previousExpires", None)
    if "lastRotation" not in creds:
        creds["lastRotation"] = iso(now)

    # --- status from what is there now
    after = await provision.observe_queue(client, ns, name, spec) if actions else observed
    parts_status = [PartitionStatus(index=p.index, key=p.queue_key, length=p.length,
                                    dead_letter_length=p.dead_letter_length,
                                    scheduled_retries=p.scheduled_retries,
                                    memory_bytes=p.memory_bytes) for p in after.partitions]
    model = AgentQueueStatus(
        type=spec.type,
        partitions=parts_status,
        length=sum(p.length for p in parts_status),
        dead_letter_length=sum(p.dead_letter_length for p in parts_status),
        scheduled_retries=sum(p.scheduled_retries for p in parts_status),
        memory_bytes=sum(p.memory_bytes for p in parts_status),
        key_pattern=keys.queue_key_pattern(ns, name),
        users=user_status,
        credentials=CredentialsStatus.model_validate(creds),
    )
    if spec.type == "PubSub":
        model.channel = keys.channel_name(ns, name)  # set: in the patch
    new_status = model.to_patch()
    # The SLO's waiting age, read with this observation and only when it is asked for;
    # the retry counters every time (agentqueue_queue_retries_total, maxRetryRate).
    parts = keys.partition_keys(ns, name, spec.partitions)
    if pre is not None and not actions:  # read by the keeper with everything else
        waiting_age, counters, jammed = pre.waiting_age, pre.counters, pre.jammed
    else:
        waiting_age = None
        if spec.slo is not None and spec.slo.max_waiting_age is not None:
            waiting_age = await backlog.oldest_waiting_age(client, parts, str(spec.type),
                                                           spec.priority_levels)
        counters = await backlog.retry_counters(client, parts, str(spec.type))
        jammed = (await provision.exhausted_streams(client, after)
                  if spec.type == "Stream" else [])
    sample = slo.QueueSample(length=new_status["length"], oldest_waiting_age_s=waiting_age,
                             counters=counters, dead_letter_length=model.dead_letter_length)
    problem = None
    if jammed:
        problem = (reasons.QUEUE_EXHAUSTED,
                   f"stream(s) {', '.join(jammed)} can take no more entries: an entry with "
                   f"the largest possible ID ({provision.STREAM_MAX_ID}) was added; "
                   "sends fail until an administrator moves the entries to a new stream")
    return QueueOutcome(new_status, repaired, bool(rotate_reason), target, sample, risks,
                        problem, verified)


async def _provisioned_entries(rt: Runtime, target: RedisTarget, client: Any,
                               namespace: str, queue: str) -> list[str]:
    """Access entries that have a Redis user of this queue, from the user names the
    operator generates (``aq.<namespace>.<queue>.<entry>``): an entry name is a DNS
    label (no dot), so another queue's users (``<queue>.x`` is a valid queue name) never
    match. From the runtime's index of users (one ACL USERS per server per few seconds,
    kept current with our own changes)."""
    prefix = keys.acl_username(namespace, queue, "")
    return sorted(e for e in await rt.user_index.entries(target.key, client, prefix) if e)


async def _remove_entry(rt: Runtime, client: Any, body: dict[str, Any], entry: str) -> None:
    """An access entry left the spec: its Secret goes if it is ours, then its user.

    In that order: the Redis user is how a later reconcile finds the entry (the operator
    may not list Secrets), so a crash between the two steps leaves the user, and the next
    reconcile removes both; the other order stranded the Secret."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    sname = keys.secret_name(name, entry)
    found = await rt.kube.read_secret_owned(ns, sname)
    if found is not None and found.owned_by(body):
        await rt.kube.delete_secret(ns, sname)
    rt.secrets_seen.pop((ns, sname), None)
    await users.delete_user(client, keys.acl_username(ns, name, entry))


def slo_load(reports: Mapping[tuple[str, str], GroupReport], namespace: str, name: str,
             spec: AgentQueueSpec, sample: slo.QueueSample | None, groups: list[str],
             now: float, retry: slo.RetryWindow | None = None) -> slo.QueueLoad:
    """The queue's load for its SLO, from what was observed: `sample` (the queue's own
    observation), `retry` (retries and deliveries between the keeper's last two
    observations) and the group keeper's `reports` for each of the queue's
    ConsumerGroups `groups` (stale ones count as missing). No Redis access."""
    samples: dict[str, slo.GroupSample | None] = {}
    for group in groups:
        report = reports.get((namespace, group))
        fig = report.figures if report is not None else None
        fresh = (report is not None and fig is not None and report.queue == name
                 and report.observed_at is not None
                 and now - report.observed_at <= max(STALE_FIGURES_MIN_S,
                                                      3 * report.poll_interval_s))
        samples[group] = slo.GroupSample(
            fig.lag, fig.pending, fig.due_retries,
            float(fig.oldest_pending_age_s)) if fresh and fig is not None else None
    return slo.queue_load(str(spec.type), sample, samples, retry)


async def delete_queue(rt: Runtime, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    try:
        spec = AgentQueueSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return  # never provisioned: nothing in Redis to remove
    secret_ref = spec.redis.secret_ref.name if spec.redis else None
    try:
        target = await rt.target_for(ns, secret_ref)
    except SpecProblem:
        return  # no way to reach Redis was ever configured; nothing to clean
    client = await rt.redis.get(target)
    # What to delete comes from the spec and the names the operator generates, never
    # from status (whoever can write status could name another queue's user).
    entries = {entry.name for _, entry in spec.access.entries()}
    entries |= set(await _provisioned_entries(rt, target, client, ns, name))
    for entry_name in sorted(entries):
        await users.delete_user(client, keys.acl_username(ns, name, entry_name))
        rt.user_index.removed(target.key, keys.acl_username(ns, name, entry_name))
        rt.secrets_seen.pop((ns, keys.secret_name(name, entry_name)), None)
    rt.forget_spec("AgentQueue", ns, name)
    if spec.deletion_policy == "Delete":
        await provision.delete_queue_data(client, ns, name, spec.partitions)
