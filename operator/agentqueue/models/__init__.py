"""Pydantic models of the custom resources: the single source of truth for the CRDs."""

from .common import Condition, ConditionStatus, parse_duration
from .group import ConsumerGroupSpec, ConsumerGroupStatus, ScaleTargetRef, ScalingSpec
from .queue import AgentQueueSpec, AgentQueueStatus, DeletionPolicy, QueueType, Role
from .retention import RetentionPolicySpec, RetentionPolicyStatus

__all__ = [
    "AgentQueueSpec", "AgentQueueStatus", "Condition", "ConditionStatus", "ConsumerGroupSpec",
    "ConsumerGroupStatus", "DeletionPolicy", "QueueType", "RetentionPolicySpec",
    "RetentionPolicyStatus", "Role", "ScaleTargetRef", "ScalingSpec", "parse_duration",
]
