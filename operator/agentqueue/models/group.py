"""The ConsumerGroup custom resource: agents reading a queue, and their Deployment."""

from __future__ import annotations

from pydantic import Field, model_validator

from .common import (
    CommonStatus,
    Duration,
    KubeModel,
    LocalObjectReference,
    ObjectName,
    cel,
    min_duration_rule,
    parse_duration,
)

START_FROM_PATTERN = r"^(NewMessages|Beginning|[0-9]+(-[0-9]+)?)$"
GROUP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# `v1`, `apps/v1`, `argoproj.io/v1alpha1`: an optional DNS-subdomain group, a version.
API_VERSION_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?v[0-9]+((alpha|beta)[0-9]+)?$"
KIND_PATTERN = r"^[A-Z][A-Za-z0-9]*$"
MIN_POLL_INTERVAL = "200ms"
"""The smallest spec.scaling.pollInterval (CRD rule). A 0s interval made one group cost
the operator 60% of a core and Redis 15,000 commands/s; administrators may raise the
floor further (chart value operator.minPollInterval)."""


class ScaleTargetRef(KubeModel):
    """Any resource with a /scale subresource."""

    api_version: str = Field(default="apps/v1", description="API version of the target.",
                             pattern=API_VERSION_PATTERN, max_length=253)
    kind: str = Field(default="Deployment", description="Kind of the target.",
                      min_length=1, max_length=63, pattern=KIND_PATTERN)
    name: ObjectName = Field(description="Name of the target in the same namespace.")


class ScalingRules(KubeModel):
    """How fast replicas may change, like the HorizontalPodAutoscaler's behavior."""

    stabilization_window: Duration = Field(
        default="0s", description="Use the most conservative recommendation of this window.")
    max_step_percent: int = Field(default=100, ge=1, le=1000,
                                  description="Largest change per step, in % of current replicas.")


def _default_scale_down() -> ScalingRules:
    return ScalingRules(stabilization_window="60s", max_step_percent=50)


class ScalingSpec(KubeModel):
    min_replicas: int = Field(default=0, ge=0, le=10000, description="Fewest replicas.")
    max_replicas: int = Field(default=10, ge=1, le=10000, description="Most replicas.")
    lag_per_replica: int = Field(default=50, ge=1,
                                 description="Target waiting work (lag + pending + due retries) "
                                 "per replica.")
    activation_lag: int = Field(default=1, ge=1,
                                description="Scale from zero when waiting work reaches this.")
    poll_interval: Duration = Field(
        default="1s", description=f"How often lag is read; at least {MIN_POLL_INTERVAL}.",
        json_schema_extra={"x-kubernetes-validations": [
            min_duration_rule(MIN_POLL_INTERVAL, "scaling.pollInterval")]})
    scale_up: ScalingRules = Field(default_factory=ScalingRules, description="Scale-up limits.")
    scale_down: ScalingRules = Field(default_factory=_default_scale_down,
                                     description="Scale-down limits.")
    cooldown: Duration = Field(default="30s",
                               description="Time with no work before scaling to zero.")
    fallback_replicas: int | None = Field(
        default=None, ge=0,
        description="Replicas while Redis cannot be read; omit to keep the current count.")

    @model_validator(mode="after")
    def _bounds(self) -> ScalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("scaling.minReplicas must be <= scaling.maxReplicas")
        if parse_duration(self.poll_interval) < parse_duration(MIN_POLL_INTERVAL):
            raise ValueError(f"scaling.pollInterval must be at least {MIN_POLL_INTERVAL}")
        return self


class ConsumerGroupSpec(KubeModel):
    queue_ref: LocalObjectReference = Field(description="The AgentQueue to consume.")
    group_name: str | None = Field(
        default=None, pattern=GROUP_NAME_PATTERN, max_length=200,
        description="Redis consumer group name (List queues: the name the SDK's consumers "
        "use, AQ_GROUP; no Redis group); default metadata.name. Immutable.")
    start_from: str = Field(
        default="NewMessages", pattern=START_FROM_PATTERN,
        description="NewMessages ($), Beginning (0) or an entry id; used at creation only. "
        "Stream queues only (a List queue refuses any other value than the default).")
    visibility_timeout: Duration = Field(
        default="30s", description="A delivered message not acked this long is reclaimed "
        "(List: the messages of a consumer silent this long are moved back to the queue).")
    max_deliveries: int | None = Field(default=None, ge=1, le=1000,
                                       description="Override of the queue's maxDeliveries "
                                       "(List: enforced by the consumers as they read).")
    dead_consumer_timeout: Duration = Field(
        default="1h", description="Idle consumers with nothing pending are removed after "
        "this. Stream queues only (a List queue refuses any other value than the default).")
    scale_target_ref: ScaleTargetRef | None = Field(
        default=None, description="Workload to scale by waiting work.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Scaling behaviour.")
    paused: bool = Field(default=False,
                         description="Circuit breaker: scale to zero and tell consumers to stop.")
    pause_reason: str | None = Field(default=None, max_length=1024,
                                     description="Why the group is paused (shown in status).")


CONSUMERGROUP_SPEC_RULES = [
    cel("self.scaling.minReplicas <= self.scaling.maxReplicas",
        "scaling.minReplicas must be <= scaling.maxReplicas", ".scaling.minReplicas"),
    cel("has(self.groupName) == has(oldSelf.groupName) && "
        "(!has(self.groupName) || self.groupName == oldSelf.groupName)",
        "groupName is immutable", ".groupName"),
    cel("self.queueRef.name == oldSelf.queueRef.name", "queueRef is immutable", ".queueRef"),
]


class ConsumerGroupStatus(CommonStatus):
    group_name: str | None = Field(default=None, description="Redis consumer group name.")
    lag: int = Field(default=0, description="Entries not yet delivered to the group (List: "
                     "messages in the priority lists).")
    pending: int = Field(default=0, description="Delivered, not yet acknowledged (List: in "
                         "the consumers' processing lists).")
    due_retries: int = Field(default=0, description="Retries due now.")
    waiting: int = Field(default=0, description="lag + pending + due retries.")
    oldest_pending_age_seconds: float = Field(
        default=0.0, description="Age of the oldest pending (List: since it was enqueued, "
        "of the oldest message waiting or in flight).")
    consumers: int = Field(default=0, description="Stream: consumers the group knows (one "
                           "that left counts until removed after deadConsumerTimeout; "
                           "`agentqueue status` shows which are present). List: consumers "
                           "with a heartbeat within visibilityTimeout.")
    current_replicas: int | None = Field(default=None, description="Replicas of the target.")
    desired_replicas: int | None = Field(default=None, description="Replicas wanted.")
    last_scale_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"},
                                        description="When the target was last scaled.")
    last_active_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"},
                                         description="Last time work was waiting (cooldown).")
    reclaimed: int = Field(default=0, description="Entries past the visibility timeout at the "
                           "last sweep, handed back for another consumer to claim.")
    dead_lettered: int = Field(default=0, description="Entries of this group moved to the "
                               "dead-letter queue, by its consumers or the operator's sweep.")
    dead_letter_cursor: dict[str, str] = Field(
        default_factory=dict, description="Per partition, the last dead-letter entry counted "
        "in deadLettered (so a restart neither misses nor recounts one).")
    paused_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"},
                                  description="When the group was paused.")
    paused_reason: str | None = Field(default=None, description="Why it is paused.")
