"""The RetentionPolicy custom resource: how much of a queue Redis keeps."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator

from .common import CommonStatus, Duration, KubeModel, cel, min_duration_rule, parse_duration

MIN_RETENTION_INTERVAL = "1s"
"""The smallest spec.interval: each run trims every matched queue's partitions."""


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(KubeModel):
    key: str = Field(min_length=1, max_length=317, description="Label key.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] = Field(default_factory=list, description="Values for In and NotIn.")


class LabelSelector(KubeModel):
    match_labels: dict[str, str] = Field(default_factory=dict, description="Exact label matches.")
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list,
                                                             description="Set-based matches.")


class DeadLetterRetention(KubeModel):
    max_length: int | None = Field(default=None, ge=1, description="Entries per partition.")
    max_age: Duration | None = Field(default=None, description="Oldest entry kept.")


class RetentionPolicySpec(KubeModel):
    selector: LabelSelector | None = Field(
        default=None, description="AgentQueues it applies to (also those naming it).")
    max_length: int | None = Field(default=None, ge=1, description="Entries per partition.")
    exact: bool = Field(default=False, description="Exact trimming instead of approximate (~).")
    max_age: Duration | None = Field(default=None, description="Entries older than this go.")
    protect_undelivered: bool = Field(
        default=True, description="Never trim entries some group has not delivered and acked.")
    dead_letter: DeadLetterRetention = Field(default_factory=DeadLetterRetention,
                                             description="Dead-letter queue retention.")
    idempotency_key_ttl: Duration | None = Field(default=None, alias="idempotencyKeyTTL",
                                                 description="Expiry of idempotency keys.")
    interval: Duration = Field(
        default="30s", description=f"How often to apply; at least {MIN_RETENTION_INTERVAL}.",
        json_schema_extra={"x-kubernetes-validations": [
            min_duration_rule(MIN_RETENTION_INTERVAL, "interval")]})

    @field_validator("interval")
    @classmethod
    def _min_interval(cls, value: str) -> str:
        if parse_duration(value) < parse_duration(MIN_RETENTION_INTERVAL):
            raise ValueError(f"interval must be at least {MIN_RETENTION_INTERVAL}")
        return value


RETENTIONPOLICY_SPEC_RULES = [
    cel("has(self.maxLength) || has(self.maxAge) || has(self.deadLetter.maxLength) || "
        "has(self.deadLetter.maxAge) || has(self.idempotencyKeyTTL)",
        "set at least one of maxLength, maxAge, deadLetter.maxLength, deadLetter.maxAge "
        "or idempotencyKeyTTL"),
]


class RetentionPolicyStatus(CommonStatus):
    matched_queues: list[str] = Field(default_factory=list, description="Queues it applies to.")
    last_run: str | None = Field(default=None, json_schema_extra={"format": "date-time"},
                                 description="When it last ran.")
    trimmed_total: int = Field(default=0, description="Entries trimmed so far.")
    protected_total: int = Field(default=0,
                                 description="Entries kept because a group had not acked them.")
    dropped_undelivered_total: int = Field(
        default=0, description="Undelivered entries trimmed (protectUndelivered: false).")
    conflicts: list[str] = Field(default_factory=list,
                                 description="Queues also selected by another policy.")
