"""Invalid manifests and the error the apiserver must give for each (field named).

Each case: (id, manifest, expected substrings). Cases with `before` are updates: the
`before` object is created first, then `manifest` is applied over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

API = "agentqueue.io/v1alpha1"


def aq(spec: dict[str, Any], name: str = "q1") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "AgentQueue", "metadata": {"name": name}, "spec": spec}


def cg(spec: dict[str, Any], name: str = "g1") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ConsumerGroup", "metadata": {"name": name}, "spec": spec}


def rp(spec: dict[str, Any], name: str = "p1") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "RetentionPolicy", "metadata": {"name": name},
            "spec": spec}


@dataclass
class Case:
    id: str
    manifest: dict[str, Any]
    expect: list[str]
    before: dict[str, Any] | None = None
    tags: list[str] = field(default_factory=list)


Q = {"queueRef": {"name": "q1"}}

INVALID: list[Case] = [
    Case("aq-type-enum", aq({"type": "Kafka"}), ["spec.type", "Unsupported value"]),
    Case("aq-partitions-string", aq({"partitions": "two"}), ["spec.partitions", "integer"]),
    Case("aq-partitions-zero", aq({"partitions": 0}), ["spec.partitions", "greater than or equal to 1"]),
    Case("aq-partitions-huge", aq({"partitions": 100000}), ["spec.partitions", "less than or equal to 256"]),
    Case("aq-bad-duration", aq({"delivery": {"retry": {"initialDelay": "soon"}}}),
         ["spec.delivery.retry.initialDelay", "should match"]),
    Case("aq-bad-duration-unit", aq({"idempotency": {"ttl": "1d"}}), ["spec.idempotency.ttl"]),
    Case("aq-max-deliveries-zero", aq({"delivery": {"maxDeliveries": 0}}),
         ["spec.delivery.maxDeliveries"]),
    Case("aq-multiplier-low", aq({"delivery": {"retry": {"multiplier": 0.5}}}),
         ["spec.delivery.retry.multiplier"]),
    Case("aq-priority-on-stream", aq({"type": "Stream", "priorityLevels": 3}),
         ["spec.priorityLevels", "needs type List"]),
    Case("aq-pubsub-partitions", aq({"type": "PubSub", "partitions": 2}),
         ["spec.partitions", "PubSub queues have exactly one partition"]),
    Case("aq-deletion-policy", aq({"deletionPolicy": "Purge"}),
         ["spec.deletionPolicy", "Unsupported value"]),
    Case("aq-access-name-upper", aq({"access": {"producers": [{"name": "Intake"}]}}),
         ["spec.access.producers[0].name"]),
    Case("aq-access-duplicate", aq({"access": {"producers": [{"name": "a"}],
                                               "consumers": [{"name": "a"}]}}),
         ["spec.access", "unique"]),
    Case("aq-access-duplicate-in-list",
         aq({"access": {"consumers": [{"name": "a"}, {"name": "a"}]}}),
         ["spec.access.consumers[1]", "Duplicate value"]),
    Case("aq-missing-spec", {"apiVersion": API, "kind": "AgentQueue", "metadata": {"name": "q"}},
         ["spec", "Required value"]),
    Case("aq-name-too-long", aq({}, name="q" * 64), ["metadata.name", "at most 63"]),
    Case("aq-type-immutable", aq({"type": "List"}), ["spec.type", "immutable"],
         before=aq({"type": "Stream"})),
    Case("aq-partitions-shrink", aq({"partitions": 1}), ["spec.partitions", "never shrink"],
         before=aq({"partitions": 3})),
    Case("aq-retry-rate", aq({"slo": {"maxRetryRate": 2}}), ["spec.slo.maxRetryRate"]),
    Case("cg-missing-queue-ref", cg({}), ["spec.queueRef", "Required value"]),
    Case("cg-min-gt-max", cg({**Q, "scaling": {"minReplicas": 5, "maxReplicas": 2}}),
         ["spec.scaling.minReplicas", "<= scaling.maxReplicas"]),
    Case("cg-negative-min", cg({**Q, "scaling": {"minReplicas": -1}}),
         ["spec.scaling.minReplicas"]),
    Case("cg-lag-per-replica-zero", cg({**Q, "scaling": {"lagPerReplica": 0}}),
         ["spec.scaling.lagPerReplica"]),
    Case("cg-bad-start-from", cg({**Q, "startFrom": "yesterday"}), ["spec.startFrom"]),
    Case("cg-bad-visibility", cg({**Q, "visibilityTimeout": "30"}), ["spec.visibilityTimeout"]),
    Case("cg-step-percent", cg({**Q, "scaling": {"scaleUp": {"maxStepPercent": 0}}}),
         ["spec.scaling.scaleUp.maxStepPercent"]),
    Case("cg-paused-type", cg({**Q, "paused": "yes"}), ["spec.paused", "boolean"]),
    Case("cg-group-name-immutable", cg({**Q, "groupName": "b"}), ["groupName is immutable"],
         before=cg({**Q, "groupName": "a"})),
    Case("cg-queue-ref-immutable", cg({"queueRef": {"name": "q2"}}), ["queueRef is immutable"],
         before=cg(Q)),
    Case("cg-target-no-name", cg({**Q, "scaleTargetRef": {"kind": "Deployment"}}),
         ["spec.scaleTargetRef.name", "Required value"]),
    Case("rp-empty", rp({}), ["set at least one of maxLength"]),
    Case("rp-max-length-zero", rp({"maxLength": 0}), ["spec.maxLength"]),
    Case("rp-bad-age", rp({"maxAge": "1 week"}), ["spec.maxAge"]),
    Case("rp-bad-operator", rp({"maxLength": 5, "selector": {"matchExpressions": [
        {"key": "tier", "operator": "Like"}]}}),
         ["spec.selector.matchExpressions[0].operator", "Unsupported value"]),
    Case("rp-exact-type", rp({"maxLength": 5, "exact": "no"}), ["spec.exact", "boolean"]),
]

VALID: list[dict[str, Any]] = [
    aq({}, name="minimal"),
    aq({"type": "List", "priorityLevels": 3, "access": {"consumers": [{"name": "worker"}]}},
       name="escalation"),
    aq({"type": "PubSub", "access": {"producers": [{"name": "eval"}]}}, name="feedback"),
    cg({"queueRef": {"name": "minimal"}, "scaleTargetRef": {"name": "agent"}}, name="workers"),
    rp({"maxLength": 1000, "selector": {"matchLabels": {"tier": "standard"}}}, name="standard"),
]
