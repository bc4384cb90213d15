"""Objects that claim the same thing: who keeps it, and what the others report. Pure.

Two ConsumerGroups with one Redis group name on a queue, or two scaling one workload,
would overwrite each other's settings, destroy each other's group or flap the
workload. The first claimant (oldest creationTimestamp, then name) keeps it; every
other one reports a conflict and does nothing, until it is changed or the first goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Claim", "claims_of", "first_claimant", "group_name_rival", "scale_target_rival"]


@dataclass(frozen=True, order=True)
class Claim:
    created: str
    """metadata.creationTimestamp (RFC 3339 in UTC: orders as text)."""
    name: str


def first_claimant(claims: Iterable[Claim]) -> Claim | None:
    return min(claims, default=None)


def _claim(obj: Mapping[str, Any]) -> Claim | None:
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp") or not isinstance(meta.get("name"), str):
        return None  # leaving: it claims nothing any more
    return Claim(str(meta.get("creationTimestamp") or ""), meta["name"])


def claims_of(groups: Iterable[Mapping[str, Any]], *, queue: str,
              group_name: str | None = None,
              target: tuple[str, str] | None = None) -> list[Claim]:
    """ConsumerGroups (raw objects of one namespace) on `queue` that claim the Redis
    group `group_name` (spec.groupName, default metadata.name), or that scale `target`
    (kind, name)."""
    out = []
    for obj in groups:
        spec = obj.get("spec") or {}
        claim = _claim(obj)
        if claim is None:
            continue
        if group_name is not None:
            if (spec.get("queueRef") or {}).get("name") != queue:
                continue
            if (spec.get("groupName") or claim.name) != group_name:
                continue
        if target is not None:
            ref = spec.get("scaleTargetRef") or {}
            if (ref.get("kind", "Deployment"), ref.get("name")) != target:
                continue
        out.append(claim)
    return out


def _rival(me: Claim, claims: Iterable[Claim]) -> Claim | None:
    first = first_claimant([*claims, me])  # never None: `me` is one of them
    return None if first == me else first


def group_name_rival(me: Claim, claims: Iterable[Claim]) -> Claim | None:
    """The ConsumerGroup that keeps the Redis group `me` also names, or None: `me`
    keeps it."""
    return _rival(me, claims)


def scale_target_rival(me: Claim, claims: Iterable[Claim]) -> Claim | None:
    """The ConsumerGroup that scales the workload `me` also names, or None."""
    return _rival(me, claims)
