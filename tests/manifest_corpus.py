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

# Appended (drills): more schema errors across the three kinds, each with the exact text.
INVALID += [
    Case("aq-max-deliveries-huge", aq({"delivery": {"maxDeliveries": 1001}}),
         ["spec.delivery.maxDeliveries", "less than or equal to 1000"]),
    Case("aq-priority-levels-huge", aq({"type": "List", "priorityLevels": 11}),
         ["spec.priorityLevels", "less than or equal to 10"]),
    Case("aq-jitter-type", aq({"delivery": {"retry": {"jitter": "yes"}}}),
         ["spec.delivery.retry.jitter", "must be of type boolean"]),
    Case("aq-access-entry-no-name", aq({"access": {"producers": [{}]}}),
         ["spec.access.producers[0].name", "Required value"]),
    Case("aq-access-too-many",
         aq({"access": {"producers": [{"name": f"p{i}"} for i in range(33)]}}),
         ["spec.access.producers", "must have at most 32 items"]),
    Case("aq-access-name-too-long", aq({"access": {"consumers": [{"name": "c" * 64}]}}),
         ["spec.access.consumers[0].name", "may not be more than 63 bytes"]),
    Case("aq-redis-secret-ref-no-name", aq({"redis": {"secretRef": {}}}),
         ["spec.redis.secretRef.name", "Required value"]),
    Case("aq-schema-not-object", aq({"schema": "string"}),
         ["spec.schema", "must be of type object"]),
    Case("aq-slo-depth-negative", aq({"slo": {"maxDepth": -1}}),
         ["spec.slo.maxDepth", "greater than or equal to 0"]),
    Case("aq-rotate-every-bad", aq({"credentials": {"rotateEvery": "weekly"}}),
         ["spec.credentials.rotateEvery", "should match"]),
    Case("aq-retention-ref-bad-name", aq({"retentionPolicyRef": {"name": "Bad_Name"}}),
         ["spec.retentionPolicyRef.name", "should match"]),
    Case("cg-max-replicas-zero", cg({**Q, "scaling": {"maxReplicas": 0}}),
         ["spec.scaling.maxReplicas", "greater than or equal to 1"]),
    Case("cg-bad-poll-interval", cg({**Q, "scaling": {"pollInterval": "fast"}}),
         ["spec.scaling.pollInterval", "should match"]),
    Case("cg-max-deliveries-zero", cg({**Q, "maxDeliveries": 0}),
         ["spec.maxDeliveries", "greater than or equal to 1"]),
    Case("cg-group-name-bad", cg({**Q, "groupName": "-bad name"}),
         ["spec.groupName", "should match"]),
    Case("cg-fallback-negative", cg({**Q, "scaling": {"fallbackReplicas": -1}}),
         ["spec.scaling.fallbackReplicas", "greater than or equal to 0"]),
    Case("cg-queue-ref-bad-name", cg({"queueRef": {"name": "UPPER"}}),
         ["spec.queueRef.name", "should match"]),
    Case("rp-dlq-max-length-zero", rp({"deadLetter": {"maxLength": 0}}),
         ["spec.deadLetter.maxLength", "greater than or equal to 1"]),
    Case("rp-bad-idem-ttl", rp({"idempotencyKeyTTL": "1 day"}),
         ["spec.idempotencyKeyTTL", "should match"]),
    Case("rp-protect-type", rp({"maxLength": 5, "protectUndelivered": "no"}),
         ["spec.protectUndelivered", "must be of type boolean"]),
    Case("rp-label-value-type", rp({"maxLength": 5, "selector": {"matchLabels": {"tier": 1}}}),
         ["spec.selector.matchLabels.tier", "must be of type string"]),
]


@dataclass
class SemanticCase:
    """Accepted by the apiserver, refused by the operator: the object's Ready condition
    goes False with `reason` and a message containing every `message` substring.

    `manifests` are applied in order (the object checked is the last one). Placeholders
    in Secret `stringData` values: {url} (the operator's default Redis), {user},
    {password}, {bad_password}, {closed_url} (nothing listens there). `redis_setup`:
    admin commands run on the operator's default Redis first; {ns} in them is the test
    namespace. {ns} in `message` too.
    """

    id: str
    manifests: list[dict[str, Any]]
    reason: str
    message: list[str]
    redis_setup: list[list[str]] = field(default_factory=list)


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": data}


def deployment(name: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "a", "image": "agent"}]}}}}


SEMANTIC: list[SemanticCase] = [
    SemanticCase("aq-admin-secret-missing",
                 [aq({"redis": {"secretRef": {"name": "absent"}}})],
                 "RedisSecretMissing", ["Secret 'absent'", "does not exist"]),
    SemanticCase("aq-admin-secret-without-url",
                 [secret("nourl", username="u", password="p"),
                  aq({"redis": {"secretRef": {"name": "nourl"}}})],
                 "RedisSecretInvalid", ["Secret 'nourl' has no key 'url'"]),
    SemanticCase("aq-admin-secret-bad-scheme",
                 [secret("http", url="http://127.0.0.1:6379"),
                  aq({"redis": {"secretRef": {"name": "http"}}})],
                 "RedisSecretInvalid", ["Secret 'http'", "url must start with redis://"]),
    SemanticCase("aq-admin-secret-wrong-password",
                 [secret("wrongpw", url="{url}", username="{user}", password="{bad_password}"),
                  aq({"redis": {"secretRef": {"name": "wrongpw"}}})],
                 "RedisAuthFailed", ["invalid username-password pair"]),
    SemanticCase("aq-redis-unreachable",
                 [secret("closed", url="{closed_url}"),
                  aq({"redis": {"secretRef": {"name": "closed"}}})],
                 "RedisUnavailable", ["connect to redis://127.0.0.1"]),
    SemanticCase("aq-schema-bad-type", [aq({"schema": {"type": "objekt"}})],
                 "InvalidSchema", ["spec.schema is not a valid JSON Schema at type"]),
    SemanticCase("aq-schema-bad-keyword-value",
                 [aq({"schema": {"properties": {"n": {"minimum": "zero"}}}})],
                 "InvalidSchema", ["at properties/n/minimum", "'zero' is not of type 'number'"]),
    SemanticCase("aq-schema-required-not-array", [aq({"schema": {"required": "n"}})],
                 "InvalidSchema", ["at required", "'n' is not of type 'array'"]),
    SemanticCase("aq-key-holds-a-string", [aq({}, name="kc")],
                 "KeyConflict", ["key aq:{{{ns}/kc/0}}:q holds a string, expected stream"],
                 redis_setup=[["SET", "aq:{{{ns}/kc/0}}:q", "squatter"]]),
    SemanticCase("aq-list-over-retained-stream", [aq({"type": "List"}, name="kc")],
                 "KeyConflict", ["key aq:{{{ns}/kc/0}}:q holds a stream, expected list"],
                 redis_setup=[["XADD", "aq:{{{ns}/kc/0}}:q", "*", "d", "retained"]]),
    SemanticCase("aq-dead-letter-key-holds-a-hash", [aq({}, name="kc")],
                 "KeyConflict", ["key aq:{{{ns}/kc/0}}:dlq holds a hash, expected stream"],
                 redis_setup=[["HSET", "aq:{{{ns}/kc/0}}:dlq", "f", "v"]]),
    SemanticCase("cg-queue-not-found", [cg({"queueRef": {"name": "nope"}})],
                 "QueueNotFound", ["AgentQueue 'nope' does not exist"]),
    SemanticCase("cg-list-queue-stream-only-field",
                 [aq({"type": "List"}, name="lq"),
                  cg({"queueRef": {"name": "lq"}, "startFrom": "Beginning"})],
                 "StreamOnlyField", ["'lq' is a List queue",
                                     "spec.startFrom (Beginning) applies to Stream queues "
                                     "only"]),
    SemanticCase("cg-pubsub-queue", [aq({"type": "PubSub"}, name="pq"),
                                     cg({"queueRef": {"name": "pq"}})],
                 "QueueTypeUnsupported", ["'pq' is a PubSub queue",
                                          "consumer groups need type Stream or List"]),
    SemanticCase("cg-scale-target-missing",
                 [aq({}, name="sq"), cg({"queueRef": {"name": "sq"},
                                         "scaleTargetRef": {"name": "absent"}})],
                 "ScaleTargetNotFound", ["scaleTargetRef Deployment/absent"]),
    SemanticCase("cg-scale-target-unknown-kind",
                 [aq({}, name="sq"), deployment("agent"),
                  cg({"queueRef": {"name": "sq"},
                      "scaleTargetRef": {"kind": "Frobnicator", "name": "agent"}})],
                 "ScaleTargetNotFound", ["no API serves Frobnicator in apps/v1"]),
    SemanticCase("cg-scale-target-without-scale",
                 [aq({}, name="sq"),
                  cg({"queueRef": {"name": "sq"},
                      "scaleTargetRef": {"apiVersion": "v1", "kind": "ConfigMap",
                                         "name": "cm"}})],
                 "ScaleTargetNotFound", ["ConfigMap in v1 has no /scale subresource"]),
]

VALID: list[dict[str, Any]] = [
    aq({}, name="minimal"),
    aq({"type": "List", "priorityLevels": 3, "access": {"consumers": [{"name": "worker"}]}},
       name="escalation"),
    aq({"type": "PubSub", "access": {"producers": [{"name": "eval"}]}}, name="feedback"),
    cg({"queueRef": {"name": "minimal"}, "scaleTargetRef": {"name": "agent"}}, name="workers"),
    rp({"maxLength": 1000, "selector": {"matchLabels": {"tier": "standard"}}}, name="standard"),
]

# Appended (issue 14, hostile tenants): bounds on what one object may cost, and
# malformed references, refused by the apiserver with the exact text.
INVALID += [
    Case("cg-poll-interval-zero", cg({**Q, "scaling": {"pollInterval": "0s"}}),
         ["spec.scaling.pollInterval", "scaling.pollInterval must be at least 200ms"]),
    Case("cg-poll-interval-below-minimum", cg({**Q, "scaling": {"pollInterval": "199ms"}}),
         ["spec.scaling.pollInterval", "scaling.pollInterval must be at least 200ms"]),
    Case("cg-target-api-version-malformed",
         cg({**Q, "scaleTargetRef": {"apiVersion": "apps/v1/extra", "name": "w"}}),
         ["spec.scaleTargetRef.apiVersion", "should match"]),
    Case("cg-target-kind-malformed",
         cg({**Q, "scaleTargetRef": {"kind": "deployment", "name": "w"}}),
         ["spec.scaleTargetRef.kind", "should match"]),
    Case("aq-partitions-times-access",
         aq({"partitions": 33, "access": {"consumers": [{"name": f"c{i}"} for i in range(32)]}}),
         ["spec.access", "partitions x access entries must be at most 1024"]),
    Case("aq-schema-too-many-keys", aq({"schema": {f"k{i}": {} for i in range(257)}}),
         ["spec.schema", "must have at most 256 items"]),
    Case("rp-interval-below-minimum", rp({"maxLength": 5, "interval": "500ms"}),
         ["spec.interval", "interval must be at least 1s"]),
]

SEMANTIC += [
    SemanticCase("aq-redis-url-bad-port",
                 [secret("badport", url="redis://127.0.0.1:99999"),
                  aq({"redis": {"secretRef": {"name": "badport"}}})],
                 "RedisSecretInvalid", ["Secret 'badport': url has an invalid port "
                                        "(expected a number from 1 to 65535)"]),
    SemanticCase("aq-redis-link-local",
                 [secret("metadata", url="redis://169.254.169.254:6379"),
                  aq({"redis": {"secretRef": {"name": "metadata"}}})],
                 "RedisAddressRefused", ["169.254.169.254 is in 169.254.0.0/16"]),
    SemanticCase("aq-secret-conflict",
                 [secret("sc.worker", REDIS_PASSWORD="mine"),
                  aq({"access": {"consumers": [{"name": "worker"}]}}, name="sc")],
                 "SecretConflict", ["Secret 'sc.worker' exists and was not created by the "
                                    "operator for this queue; it is left untouched"]),
]
