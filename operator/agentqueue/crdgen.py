"""Render the CustomResourceDefinitions from the pydantic models.

The models are the one source of truth; ``crds/`` is generated and committed, and
``agentqueue crds --check`` (run by a test) fails when the two drift apart.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from . import GROUP, VERSION
from .models.common import cel
from .models.group import CONSUMERGROUP_SPEC_RULES, ConsumerGroupSpec, ConsumerGroupStatus
from .models.queue import AGENTQUEUE_SPEC_RULES, AgentQueueSpec, AgentQueueStatus
from .models.retention import (
    RETENTIONPOLICY_SPEC_RULES,
    RetentionPolicySpec,
    RetentionPolicyStatus,
)

READY_COLUMN = {
    "name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
}
REASON_COLUMN = {
    "name": "Reason", "type": "string", "priority": 1,
    "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
NAME_RULE = cel(
    "size(self.metadata.name) <= 63",
    "metadata.name must be at most 63 characters: it is part of Redis keys, ACL users "
    "and Secret names",
)


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short: str
    spec: type[BaseModel]
    status: type[BaseModel]
    spec_rules: list[Any]
    columns: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""


KINDS = [
    Kind(
        "AgentQueue", "agentqueues", "aq", AgentQueueSpec, AgentQueueStatus, AGENTQUEUE_SPEC_RULES,
        [
            {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
            {"name": "Partitions", "type": "integer", "jsonPath": ".spec.partitions"},
            {"name": "Length", "type": "integer", "jsonPath": ".status.length"},
            {"name": "DLQ", "type": "integer", "jsonPath": ".status.deadLetterLength"},
            {"name": "Retries", "type": "integer", "jsonPath": ".status.scheduledRetries",
             "priority": 1},
            READY_COLUMN, REASON_COLUMN, AGE_COLUMN,
        ],
        "A work queue in Redis (stream, list or pub/sub channel), its dead-letter and retry "
        "keys, and least-privilege users whose credentials live in Secrets.",
    ),
    Kind(
        "ConsumerGroup", "consumergroups", "cg", ConsumerGroupSpec, ConsumerGroupStatus,
        CONSUMERGROUP_SPEC_RULES,
        [
            {"name": "Queue", "type": "string", "jsonPath": ".spec.queueRef.name"},
            {"name": "Lag", "type": "integer", "jsonPath": ".status.lag"},
            {"name": "Pending", "type": "integer", "jsonPath": ".status.pending"},
            {"name": "Consumers", "type": "integer", "jsonPath": ".status.consumers"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.currentReplicas"},
            {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas",
             "priority": 1},
            {"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused", "priority": 1},
            READY_COLUMN, REASON_COLUMN, AGE_COLUMN,
        ],
        "A group of agents consuming an AgentQueue, and the workload scaled by its waiting work.",
    ),
    Kind(
        "RetentionPolicy", "retentionpolicies", "rp", RetentionPolicySpec, RetentionPolicyStatus,
        RETENTIONPOLICY_SPEC_RULES,
        [
            {"name": "MaxLength", "type": "integer", "jsonPath": ".spec.maxLength"},
            {"name": "MaxAge", "type": "string", "jsonPath": ".spec.maxAge"},
            {"name": "Trimmed", "type": "integer", "jsonPath": ".status.trimmedTotal"},
            READY_COLUMN, REASON_COLUMN, AGE_COLUMN,
        ],
        "How much of the matching AgentQueues Redis keeps: length, age, dead-letter retention "
        "and idempotency-key expiry.",
    ),
]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs, unwrap Optional (anyOf with null), drop what Kubernetes rejects."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        node = {**target, **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {options}")
        inner = options[0]
        if "$ref" in inner:
            inner = {**copy.deepcopy(defs[inner["$ref"].split("/")[-1]])}
        node = {**inner, **node}
        if node.get("default", 0) is None:
            node.pop("default")
    node.pop("title", None)
    if node.get("additionalProperties") is True or (
        node.get("type") == "object" and "properties" not in node
        and "additionalProperties" not in node
    ):
        node.pop("additionalProperties", None)
        node["x-kubernetes-preserve-unknown-fields"] = True
    for key in ("properties",):
        if key in node:
            node[key] = {k: _structural(v, defs) for k, v in node[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _structural(node[key], defs)
    return node


def _factory_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """pydantic leaves default_factory out of the schema; Kubernetes needs it to default
    nested objects, so write the factory's value (only what differs from nested defaults)."""
    props = schema.get("properties", {})
    for name, info in model.model_fields.items():
        prop = props.get(info.alias or name)
        if prop is None:
            continue
        if info.default_factory is not None:
            value = info.default_factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel):
                prop["default"] = value.model_dump(
                    by_alias=True, exclude_none=True, exclude_defaults=True, mode="json")
            else:
                prop["default"] = value
        sub = info.annotation
        for arg in getattr(sub, "__args__", ()) or (sub,):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                target = prop.get("items", prop) if prop.get("type") == "array" else prop
                _factory_defaults(arg, target)


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _structural(raw, defs)
    _factory_defaults(model, schema)
    return schema


def crd(kind: Kind) -> dict[str, Any]:
    spec = model_schema(kind.spec)
    spec["description"] = f"Desired state of the {kind.kind}."
    if kind.spec_rules:
        spec["x-kubernetes-validations"] = kind.spec_rules
    status = model_schema(kind.status)
    status["description"] = f"Observed state of the {kind.kind}, written by the operator."
    root: dict[str, Any] = {
        "type": "object",
        "description": kind.description,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [NAME_RULE],
    }
    # spec is required (even if empty): CEL rules are then evaluated on defaulted values.
    root["required"] = ["spec"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "agentqueue",
                       "app.kubernetes.io/part-of": "agentqueue"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": [kind.short],
                "categories": ["agentqueue"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": kind.columns,
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


HEADER = "# Generated by `agentqueue crds` from operator/agentqueue/models. Do not edit.\n"


def render_all() -> dict[str, str]:
    """File name -> YAML text for every CRD."""
    return {
        f"{GROUP}_{k.plural}.yaml": HEADER + yaml.safe_dump(crd(k), sort_keys=False, width=100)
        for k in KINDS
    }


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    return written


def check(out_dir: Path) -> list[str]:
    """Differences between out_dir and the models, as unified diffs; empty when in sync."""
    problems = []
    expected = render_all()
    for name, text in expected.items():
        path = out_dir / name
        current = path.read_text() if path.exists() else ""
        if current != text:
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(),
                                        f"{path} (committed)", f"{path} (from models)",
                                        lineterm="", n=1)
            problems.append("\n".join(list(diff)[:40]))
    stray = {p.name for p in out_dir.glob(f"{GROUP}_*.yaml")} - set(expected)
    problems += [f"{out_dir / s}: not generated by the models (remove it)" for s in sorted(stray)]
    return problems
