"""The one writer of our objects' status.

Every part of the operator that reports (the handlers' reconciles, the queue, group and
retention keepers, the SLO) hands its status to `StatusWriter.write`: the fields it
sets, and its conditions as it computed them from `seen` (the status it started from).
The writer, one object at a time:

- takes the freshest status it knows: what it last wrote itself (for a few seconds,
  until the watch shows it), else the watched body (keepers/objects.py); no GET;
- replaces only the conditions the caller changed relative to `seen` (a caller working
  from an older body cannot undo a condition another part set meanwhile:
  conditions.merge_changed), so conditions are merged once, here;
- validates the result with the kind's pydantic status model (the model the CRD schema
  is generated from): a field the CRD does not declare would be pruned by the API
  server, so it is a bug, raised here;
- merge-patches only the top-level fields that differ; nothing differs: no API call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .conditions import merge_changed
from .kube import KubeGateway, KubeNotFound
from .models import AgentQueueStatus, ConsumerGroupStatus, RetentionPolicyStatus

if TYPE_CHECKING:
    from .keepers.objects import Objects

MODELS: dict[str, type[BaseModel]] = {
    "AgentQueue": AgentQueueStatus,
    "ConsumerGroup": ConsumerGroupStatus,
    "RetentionPolicy": RetentionPolicyStatus,
}
PLURALS = {"AgentQueue": "agentqueues", "ConsumerGroup": "consumergroups",
           "RetentionPolicy": "retentionpolicies"}
OWN_WRITE_TTL_S = 10.0
"""How long the writer trusts its own last write over the watched body (the watch
normally shows a write within milliseconds)."""


class StatusFieldUnknown(ValueError):
    """A status field the kind's model (and so its CRD) does not declare."""


def validated(kind: str, status: dict[str, Any]) -> dict[str, Any]:
    """`status` checked against the kind's status model; returns it unchanged (the wire
    form the caller built), so what is written is exactly what was validated."""
    model = MODELS[kind]
    known = {f.alias or name for name, f in model.model_fields.items()}
    unknown = sorted(set(status) - known)
    if unknown:
        raise StatusFieldUnknown(f"{kind} status has no field(s) {', '.join(unknown)}")
    model.model_validate({k: v for k, v in status.items() if v is not None})
    return status


def merge_patch(current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `current` into `new`: changed fields,
    None for removed ones, objects diffed field by field (a merge patch merges nested
    objects, so a key dropped from one must be sent as None), lists whole."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = current.get(key)
        if before == value:
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            patch[key] = merge_patch(before, value)
        else:
            patch[key] = value
    patch.update({k: None for k in current if k not in new})
    return patch


class StatusWriter:
    def __init__(self, kube: KubeGateway, objects: Objects,
                 on_patch: Callable[[str], None] | None = None) -> None:
        self.kube = kube
        self.objects = objects
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._own: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}
        self.patches = 0
        """Status patches sent."""
        self._on_patch = on_patch
        """Told the kind of each patch sent (agentqueue_status_patches_total)."""

    def current(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The freshest status known: our own recent write, else the watched body's;
        None when the object is not known (deleted)."""
        key = (kind, namespace, name)
        own = self._own.get(key)
        body = self.objects.get(kind, namespace, name)
        if own is not None and time.monotonic() - own[0] < OWN_WRITE_TTL_S:
            if body is None or (body.get("status") or {}) == own[1]:
                self._own.pop(key, None)  # the watch caught up
            return dict(own[1])
        self._own.pop(key, None)
        if body is None:
            return None
        return dict(body.get("status") or {})

    async def write(self, kind: str, namespace: str, name: str, status: dict[str, Any],
                    seen: dict[str, Any] | None, *, fallback: dict[str, Any] | None = None
                    ) -> bool:
        """Write `status` (fields to set; None deletes one; `conditions`: the caller's
        whole list, computed from `seen`'s). `fallback`: the status to start from when
        the object is not in the watched store yet (its creation event is being
        handled). Returns whether a patch was sent."""
        key = (kind, namespace, name)
        async with self._locks[key]:
            current = self.current(kind, namespace, name)
            if current is None:
                if fallback is None:
                    return False  # deleted
                current = dict(fallback)
            new = dict(current)
            for field, value in status.items():
                if field == "conditions":
                    continue
                if value is None:
                    new.pop(field, None)
                else:
                    new[field] = value
            if "conditions" in status:
                new["conditions"] = merge_changed(current.get("conditions"),
                                                  status.get("conditions"),
                                                  (seen or {}).get("conditions"))
            patch = merge_patch(current, new)
            if not patch:
                return False  # nothing to write (and what is there was checked when written)
            validated(kind, new)
            try:
                await self.kube.patch_status(PLURALS[kind], namespace, name, patch)
            except KubeNotFound:
                return False  # deleted meanwhile
            self.patches += 1
            if self._on_patch is not None:
                self._on_patch(kind)
            self._own[key] = (time.monotonic(), new)
            if self.patches % 1000 == 0:
                self._expire()
            return True

    def _expire(self) -> None:
        """Drop own writes the watch has long shown (they would otherwise stay until
        the object's next write)."""
        cutoff = time.monotonic() - OWN_WRITE_TTL_S
        for key in [k for k, (at, _) in self._own.items() if at < cutoff]:
            del self._own[key]

    def forget(self, kind: str, namespace: str, name: str) -> None:
        key = (kind, namespace, name)
        self._own.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            with contextlib.suppress(KeyError):
                del self._locks[key]
