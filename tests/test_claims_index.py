"""The store's claim indexes (keepers/objects.py): the creation-order conflict rules
answered without a LIST, and which groups' standing moves when another one arrives,
changes or leaves (those are reconciled again: handlers/watch.py)."""

from __future__ import annotations

from typing import Any

from agentqueue.handlers import watch
from agentqueue.keepers.objects import Objects
from agentqueue.planning.conflicts import Claim


def group(name: str, created: str, *, queue: str = "q", group_name: str | None = None,
          target: str | None = None, kind: str | None = None,
          deleting: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"queueRef": {"name": queue}}
    if group_name:
        spec["groupName"] = group_name
    if target:
        spec["scaleTargetRef"] = {"name": target, **({"kind": kind} if kind else {})}
    meta: dict[str, Any] = {"namespace": "ns", "name": name,
                            "creationTimestamp": f"2026-01-01T00:00:{created}Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return {"kind": "ConsumerGroup", "metadata": meta, "spec": spec}


def test_an_older_rival_arriving_late_moves_the_younger_one_out() -> None:
    objects = Objects()
    assert objects.put("ConsumerGroup", group("young", "05", group_name="g")) == []
    # kopf handled the older one a moment later: the younger lost the name.
    assert objects.put("ConsumerGroup", group("old", "01", group_name="g")) == ["young"]
    assert sorted(objects.group_name_claims("ns", "q", "g")) == [
        Claim("2026-01-01T00:00:01Z", "old"), Claim("2026-01-01T00:00:05Z", "young")]
    # Another younger one changes nothing for the others.
    assert objects.put("ConsumerGroup", group("later", "09", group_name="g")) == []
    # The keeper leaves (deleting, then gone): the next oldest takes over, once.
    assert objects.put("ConsumerGroup", group("old", "01", group_name="g",
                                              deleting=True)) == ["young"]
    assert objects.drop("ConsumerGroup", "ns", "old") == []
    assert [c.name for c in objects.group_name_claims("ns", "q", "g")] == ["young", "later"]
    assert objects.drop("ConsumerGroup", "ns", "young") == ["later"]


def test_the_claimed_name_is_the_group_name_else_the_object_name_per_queue() -> None:
    objects = Objects()
    objects.put("ConsumerGroup", group("a", "01"))
    objects.put("ConsumerGroup", group("b", "02", group_name="a"))
    objects.put("ConsumerGroup", group("c", "03", group_name="a", queue="other"))
    assert [c.name for c in objects.group_name_claims("ns", "q", "a")] == ["a", "b"]
    assert [c.name for c in objects.group_name_claims("ns", "other", "a")] == ["c"]
    assert objects.group_name_claims("ns2", "q", "a") == []
    # Renaming moves the claim: b's old key loses it, a keeps its own.
    assert objects.put("ConsumerGroup", group("b", "02", group_name="x")) == []
    assert [c.name for c in objects.group_name_claims("ns", "q", "a")] == ["a"]
    # a (first) renames away: b is not on that key any more, nobody is promoted.
    assert objects.put("ConsumerGroup", group("b", "02", group_name="a")) == []
    assert objects.put("ConsumerGroup", group("a", "01", group_name="y")) == ["b"]


def test_scale_target_claims_default_to_deployments() -> None:
    objects = Objects()
    assert objects.put("ConsumerGroup", group("b", "05", target="agents")) == []
    assert objects.put("ConsumerGroup", group("s", "01", target="agents",
                                              kind="StatefulSet")) == []
    assert objects.put("ConsumerGroup", group("a", "01", queue="q2", target="agents")) == ["b"]
    assert [c.name for c in objects.target_claims("ns", "Deployment", "agents")] == ["b", "a"]
    assert [c.name for c in objects.target_claims("ns", "StatefulSet", "agents")] == ["s"]
    assert objects.put("ConsumerGroup", group("a", "01", queue="q2")) == ["b"]
    assert objects.target_claims("ns", "Deployment", "other") == []


def test_ties_in_creation_time_go_to_the_name() -> None:
    objects = Objects()
    objects.put("ConsumerGroup", group("b", "01", group_name="g"))
    assert objects.put("ConsumerGroup", group("a", "01", group_name="g")) == ["b"]


class _Groups:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def reconsider(self, namespace: str, names: list[str]) -> None:
        self.calls.append((namespace, names))


class _Forget:
    def forget(self, *args: Any) -> None:
        pass


class _Rt:
    def __init__(self) -> None:
        self.objects = Objects()
        self.groups = _Groups()
        self.status = _Forget()

    def forget_spec(self, *args: Any) -> None:
        pass


class _Memo:
    def __init__(self) -> None:
        self.runtime = _Rt()


async def test_the_watch_asks_the_keeper_to_reconsider_the_groups_that_moved() -> None:
    memo = _Memo()
    rt = memo.runtime
    fn = watch.remember.__wrapped__ if hasattr(watch.remember, "__wrapped__") else watch.remember
    await fn(type="ADDED", event={"object": group("young", "05")}, memo=memo)
    await fn(type="ADDED", event={"object": group("old", "01", group_name="young")},
             memo=memo)
    await fn(type="DELETED", event={"object": group("old", "01", group_name="young")},
             memo=memo)
    assert rt.groups.calls == [("ns", ["young"]), ("ns", ["young"])]


async def test_conflict_checks_wait_at_startup_for_the_groups_that_existed() -> None:
    import asyncio

    objects = Objects()
    await objects.settled("ConsumerGroup", 5.0)  # nothing announced: no wait
    objects.begin_settling("ConsumerGroup")
    waiter = asyncio.ensure_future(objects.settled("ConsumerGroup", 5.0))
    await asyncio.sleep(0)  # waiting before the LIST has answered
    objects.put("ConsumerGroup", group("a", "01"))  # arrived before the LIST answered
    objects.expect("ConsumerGroup", {("ns", "a"), ("ns", "b"), ("ns", "c")})
    await asyncio.sleep(0.01)
    assert not waiter.done()
    objects.put("ConsumerGroup", group("b", "02"))
    await asyncio.sleep(0.01)
    assert not waiter.done()  # c is still on its way
    objects.drop("ConsumerGroup", "ns", "c")  # deleted meanwhile: counts as arrived
    await asyncio.wait_for(waiter, 1.0)
    # One that never arrives holds the checks only until the timeout.
    objects.begin_settling("ConsumerGroup")
    objects.expect("ConsumerGroup", {("ns", "gone")})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(objects.settled("ConsumerGroup", 0.1), 2.0)
    assert 0.1 <= loop.time() - started < 1.0
    await objects.settled("ConsumerGroup", 5.0)  # and then never again
    objects.begin_settling("ConsumerGroup")
    objects.expect("ConsumerGroup", None)  # the LIST failed: no wait
    await objects.settled("ConsumerGroup", 5.0)


async def test_startup_keys_of_a_kind_never_stored_yet() -> None:
    import asyncio

    objects = Objects()
    objects.begin_settling("ConsumerGroup")
    objects.expect("ConsumerGroup", {("ns", "a")})  # nothing of the kind stored yet
    waiter = asyncio.ensure_future(objects.settled("ConsumerGroup", 5.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert objects.drop("ConsumerGroup", "ns", "a") == []
    await asyncio.wait_for(waiter, 1.0)


def test_objects_of_other_kinds_move_no_claims() -> None:
    objects = Objects()
    assert list(objects.of_kind("AgentQueue")) == []
    assert objects.drop("AgentQueue", "ns", "never-stored") == []
    queue = {"kind": "AgentQueue", "metadata": {"namespace": "ns", "name": "q"}, "spec": {}}
    assert objects.put("AgentQueue", queue) == []
    assert list(objects.of_kind("AgentQueue")) == [queue]
    assert list(objects.of_kind("ConsumerGroup")) == []
    assert objects.drop("AgentQueue", "ns", "q") == []


def test_groups_without_a_queue_or_a_target_claim_nothing() -> None:
    objects = Objects()
    lost = group("young", "05", group_name="g")
    del lost["spec"]["queueRef"]
    assert objects.put("ConsumerGroup", lost) == []
    older = group("old", "01", group_name="g")
    del older["spec"]["queueRef"]
    assert objects.put("ConsumerGroup", older) == []  # no queue: no Redis group to claim
    odd = group("odd", "00", group_name="g")
    odd["spec"]["queueRef"]["name"] = 7  # not a name: indexed nowhere
    assert objects.put("ConsumerGroup", odd) == []
    assert objects.groups_of("ns", 7) == []  # type: ignore[arg-type]
    # Two groups without a scaleTargetRef, on other queues: no target claim between them.
    assert objects.put("ConsumerGroup", group("b", "05", queue="q1")) == []
    assert objects.put("ConsumerGroup", group("a", "01", queue="q2")) == []


def test_a_group_without_a_creation_time_sorts_first() -> None:
    objects = Objects()
    objects.put("ConsumerGroup", group("a", "01", group_name="g"))
    nameless = group("z", "02", group_name="g")
    del nameless["metadata"]["creationTimestamp"]
    assert objects.put("ConsumerGroup", nameless) == ["a"]


def test_the_queue_index_keeps_the_other_groups_of_a_queue() -> None:
    objects = Objects()
    objects.put("ConsumerGroup", group("a", "01", queue="q1"))
    objects.put("ConsumerGroup", group("b", "02", queue="q1"))
    objects.put("ConsumerGroup", group("b", "02", queue="q2"))
    assert objects.groups_of("ns", "q1") == ["a"] and objects.groups_of("ns", "q2") == ["b"]
