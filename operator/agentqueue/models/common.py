"""Building blocks shared by the three custom resources.

The pydantic models are the single source of truth: `agentqueue crds` renders the
CRD schemas from them, and the operator parses specs with them.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonDict

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

Duration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, max_length=32),
]
"""A Go-style duration such as ``500ms``, ``30s``, ``5m``, ``24h`` or ``1h30m``."""

# Kubernetes object names (DNS-1123 subdomain) and labels (DNS-1123 label).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ObjectName = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=253)]
LabelName = Annotated[str, Field(pattern=LABEL_PATTERN, min_length=1, max_length=63)]


def parse_duration(value: str) -> float:
    """Seconds in a duration string (validated by the schema before it gets here)."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"invalid duration {value!r}: use e.g. 500ms, 30s, 5m, 24h")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))


def min_duration_rule(minimum: str, what: str) -> JsonDict:
    """CEL: a Duration field is at least `minimum` (the apiserver parses Go durations,
    the same syntax as DURATION_PATTERN)."""
    return cel(f"duration(self) >= duration('{minimum}')", f"{what} must be at least {minimum}")


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry."""
    out: JsonDict = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


class KubeModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", use_enum_values=True
    )

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Self:
        """Parse as the apiserver does: JSON types are strict ("yes" is not a boolean)."""
        return cls.model_validate_json(json.dumps(raw), strict=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def to_patch(self) -> dict[str, Any]:
        """The fields given when it was built, by their wire names (a field given as
        None stays: in a status patch it deletes the field)."""
        return self.model_dump(by_alias=True, exclude_unset=True, mode="json")


class LocalObjectReference(KubeModel):
    """A reference to an object in the same namespace."""

    name: ObjectName = Field(description="Name of the object in the same namespace.")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeModel):
    """A Kubernetes-style condition."""

    type: str = Field(description="Type of the condition, e.g. Ready.", max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable details.", max_length=32768)
    last_transition_time: str | None = Field(
        default=None,
        description="When the status last changed.",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was set for."
    )


class CommonStatus(KubeModel):
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation last reconciled."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state, by Kubernetes API conventions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
