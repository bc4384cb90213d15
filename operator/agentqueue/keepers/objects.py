"""The latest body of every object of our three kinds, as the watch delivered it.

The keepers read bodies from here instead of holding kopf daemons (which kept a live
body and a task per object). Stored trimmed (no managedFields and none of kopf's own
annotations: its diff-base is a second copy of the spec) and as compact JSON: a body
as Python dicts and strings took ~15 KB, as JSON ~2 KB, and reading one back costs a
few microseconds (orjson). `get` returns a fresh copy the caller may change."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..planning.conflicts import Claim

KOPF_ANNOTATION_PREFIX = "agentqueue.io/"
KEPT_ANNOTATIONS = frozenset({"agentqueue.io/rotate-credentials"})


try:
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    _loads = orjson.loads
except ImportError:  # pragma: no cover - the operator installs the client's `fast` extra
    import json

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    _loads = json.loads  # type: ignore[assignment]


def trimmed(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain, trimmed copy of a watched body (kopf's bodies are live views)."""
    return _loads(_dumps(_trim(body)))  # type: ignore[no-any-return]


def _trim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body without what nothing here reads (shallow: for serializing at once)."""
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations:
        kept = {k: v for k, v in annotations.items()
                if not k.startswith(KOPF_ANNOTATION_PREFIX) or k in KEPT_ANNOTATIONS}
        if kept:
            meta["annotations"] = kept
        else:
            meta.pop("annotations", None)
    out: dict[str, Any] = {k: v for k, v in body.items() if k != "metadata"}
    out["metadata"] = meta
    return out


ClaimKey = tuple[str, str, str]
"""(namespace, queue, Redis group name) a ConsumerGroup claims, or (namespace, kind, name)
of the workload it scales."""


@dataclass(frozen=True)
class _GroupFacts:
    """What the indexes need of a ConsumerGroup (kept, so an update or delete unindexes
    without parsing the stored body again)."""
    queue: str | None
    claim: Claim | None
    """None while it is being deleted: it claims nothing any more."""
    name_key: ClaimKey | None
    target_key: ClaimKey | None


def _group_facts(body: Mapping[str, Any]) -> _GroupFacts:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    spec = body.get("spec") or {}
    queue = (spec.get("queueRef") or {}).get("name")
    queue = queue if isinstance(queue, str) else None
    claim = (None if meta.get("deletionTimestamp")
             else Claim(str(meta.get("creationTimestamp") or ""), name))
    group_name = spec.get("groupName") or name
    name_key = (ns, queue, group_name) if queue is not None and isinstance(group_name, str) \
        else None
    ref = spec.get("scaleTargetRef") or {}
    target_key = None
    if isinstance(ref, dict) and isinstance(ref.get("name"), str):
        target_key = (ns, str(ref.get("kind", "Deployment")), ref["name"])
    return _GroupFacts(queue, claim, name_key, target_key)


class Objects:
    """kind -> (namespace, name) -> trimmed body, and the ConsumerGroups' indexes: by
    queue, by claimed Redis group name and by scale target. The claim indexes answer
    the creation-order conflict rules (planning/conflicts.py) without a LIST."""

    def __init__(self) -> None:
        self._bodies: dict[str, dict[tuple[str, str], bytes]] = {}
        self._groups: dict[tuple[str, str], set[str]] = {}
        """(namespace, queue) -> names of the ConsumerGroups naming it."""
        self._facts: dict[tuple[str, str], _GroupFacts] = {}
        self._name_claims: dict[ClaimKey, dict[str, Claim]] = {}
        self._target_claims: dict[ClaimKey, dict[str, Claim]] = {}
        self._settling: dict[str, tuple[asyncio.Event, set[tuple[str, str]] | None]] = {}
        """kind -> (set once the watch has delivered everything that existed at startup,
        the keys not delivered yet: None until the startup LIST is read)."""

    def begin_settling(self, kind: str) -> None:
        """From now until `expect`, `settled(kind)` waits: the startup LIST is on its way."""
        self._settling[kind] = (asyncio.Event(), None)

    def expect(self, kind: str, keys: set[tuple[str, str]] | None) -> None:
        """The keys that existed at startup (None: unknown, stop waiting). kopf handles
        objects concurrently, so at startup a group's handler can run before an older
        rival's watch event: the conflict checks wait until these have all arrived."""
        event, _ = self._settling.get(kind) or (asyncio.Event(), None)
        pending = (None if keys is None
                   else {k for k in keys if k not in self._bodies.get(kind, {})})
        self._settling[kind] = (event, pending)
        if not pending:
            event.set()

    async def settled(self, kind: str, timeout: float) -> None:
        """Return once the objects of the startup LIST have arrived (or `timeout`: one
        deleted between that LIST and the watch never arrives)."""
        slot = self._settling.get(kind)
        if slot is None or slot[0].is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(slot[0].wait(), timeout)
        slot[0].set()

    def _arrived(self, kind: str, key: tuple[str, str]) -> None:
        slot = self._settling.get(kind)
        if slot is not None and slot[1] is not None and not slot[0].is_set():
            slot[1].discard(key)
            if not slot[1]:
                slot[0].set()

    def put(self, kind: str, body: Mapping[str, Any]) -> list[str]:
        """Store `body`. For a ConsumerGroup, returns the other groups of its namespace
        whose standing changed with it: they kept a Redis group name or a scale target
        and lost it to this one, or the reverse (they must check their claims again)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        moved: list[str] = []
        if kind == "ConsumerGroup":
            moved = self._reindex(key, _group_facts(body))
        self._bodies.setdefault(kind, {})[key] = _dumps(_trim(body))
        self._arrived(kind, key)
        return moved

    def drop(self, kind: str, namespace: str, name: str) -> list[str]:
        """Forget an object; for a ConsumerGroup, the groups whose standing changed."""
        moved: list[str] = []
        if kind == "ConsumerGroup":
            moved = self._reindex((namespace, name), None)
        self._bodies.get(kind, {}).pop((namespace, name), None)
        self._arrived(kind, (namespace, name))
        return moved

    def _reindex(self, key: tuple[str, str], facts: _GroupFacts | None) -> list[str]:
        ns, name = key
        old = self._facts.pop(key, None)
        if facts is not None:
            self._facts[key] = facts
        if old is not None and old.queue is not None:
            names = self._groups.get((ns, old.queue))
            if names is not None:
                names.discard(name)
                if not names:
                    del self._groups[(ns, old.queue)]
        if facts is not None and facts.queue is not None:
            self._groups.setdefault((ns, facts.queue), set()).add(name)
        moved: set[str] = set()
        for index, pick in ((self._name_claims, lambda f: f.name_key),
                            (self._target_claims, lambda f: f.target_key)):
            old_key: ClaimKey | None = pick(old) if old is not None and old.claim else None
            new_key: ClaimKey | None = (pick(facts) if facts is not None and facts.claim
                                        else None)
            for claim_key in {k for k in (old_key, new_key) if k is not None}:
                claims = index.setdefault(claim_key, {})
                before = min(claims.values(), default=None)
                claims.pop(name, None)
                if claim_key == new_key:
                    assert facts is not None and facts.claim is not None
                    claims[name] = facts.claim
                after = min(claims.values(), default=None)
                if not claims:
                    del index[claim_key]
                if before != after:
                    moved.update(c.name for c in (before, after) if c is not None)
        moved.discard(name)
        return sorted(moved)

    def groups_of(self, namespace: str, queue: str) -> list[str]:
        """The ConsumerGroups whose queueRef names this queue."""
        return sorted(self._groups.get((namespace, queue), ()))

    def group_name_claims(self, namespace: str, queue: str, group_name: str) -> list[Claim]:
        """The ConsumerGroups (not being deleted) that claim Redis group `group_name`
        on `queue`, as the watch has delivered them."""
        return list(self._name_claims.get((namespace, queue, group_name), {}).values())

    def target_claims(self, namespace: str, kind: str, name: str) -> list[Claim]:
        """The ConsumerGroups (not being deleted) whose scaleTargetRef is kind/name."""
        return list(self._target_claims.get((namespace, kind, name), {}).values())

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        raw = self._bodies.get(kind, {}).get((namespace, name))
        return _loads(raw) if raw is not None else None  # type: ignore[no-any-return]

    def of_kind(self, kind: str) -> Iterator[dict[str, Any]]:
        for raw in list(self._bodies.get(kind, {}).values()):
            yield _loads(raw)

    def count(self, kind: str) -> int:
        return len(self._bodies.get(kind, {}))
