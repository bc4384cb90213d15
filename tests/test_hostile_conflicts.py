"""Who keeps a contested Redis group or workload (planning/conflicts). Pure."""

from __future__ import annotations

from typing import Any

from agentqueue.planning.conflicts import (
    Claim,
    claims_of,
    first_claimant,
    group_name_rival,
    scale_target_rival,
)

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"


def cg(name: str, created: str = T0, *, queue: str = "q", group: str | None = None,
       target: str | None = None, kind: str | None = None, deleting: bool = False
       ) -> dict[str, Any]:
    spec: dict[str, Any] = {"queueRef": {"name": queue}}
    if group:
        spec["groupName"] = group
    if target:
        spec["scaleTargetRef"] = {"name": target, **({"kind": kind} if kind else {})}
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = T1
    return {"metadata": meta, "spec": spec}


def test_the_oldest_claimant_keeps_it_then_the_name_decides() -> None:
    a, b = Claim(T0, "b-group"), Claim(T1, "a-group")
    assert first_claimant([b, a]) == a  # older wins over a smaller name
    c, d = Claim(T0, "a"), Claim(T0, "b")
    assert first_claimant([d, c]) == c  # same second: the name decides
    assert first_claimant([]) is None


def test_group_name_claims_use_the_effective_name_on_the_same_queue() -> None:
    objs = [cg("workers"), cg("other", group="workers"), cg("x", queue="q2", group="workers"),
            cg("gone", group="workers", deleting=True), cg("free", group="free")]
    assert claims_of(objs, queue="q", group_name="workers") == [Claim(T0, "workers"),
                                                                 Claim(T0, "other")]


def test_the_later_group_gets_the_rival_the_first_none() -> None:
    first, later = Claim(T0, "zz-first"), Claim(T1, "aa-later")
    assert group_name_rival(later, [first]) == first
    assert group_name_rival(first, [later]) is None
    assert group_name_rival(first, []) is None


def test_scale_target_claims_match_kind_and_name() -> None:
    objs = [cg("a", target="web"), cg("b", target="web", kind="Deployment"),
            cg("c", target="web", kind="StatefulSet"), cg("d", target="api"),
            cg("e", T1, target="web", deleting=True)]
    got = claims_of(objs, queue="", target=("Deployment", "web"))
    assert got == [Claim(T0, "a"), Claim(T0, "b")]
    assert scale_target_rival(Claim(T0, "b"), [Claim(T0, "a")]) == Claim(T0, "a")
    assert scale_target_rival(Claim(T0, "a"), [Claim(T0, "b")]) is None
