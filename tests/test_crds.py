"""The CRDs are generated from the models, and the real apiserver enforces them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agentqueue import crdgen
from agentqueue.models import AgentQueueSpec, ConsumerGroupSpec, RetentionPolicySpec

from .manifest_corpus import INVALID, VALID

ROOT = Path(__file__).resolve().parents[1]


def test_crds_in_sync_with_models() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agentqueue.cli", "crds", "--check", "--out", str(ROOT / "crds")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr


def test_check_detects_drift(tmp_path: Path) -> None:
    crdgen.write(tmp_path)
    victim = next(tmp_path.glob("*agentqueues.yaml"))
    victim.write_text(victim.read_text().replace("maxDeliveries", "maxDelivery"))
    assert crdgen.check(tmp_path)


def test_schema_is_structural() -> None:
    """No $ref, anyOf or additionalProperties: true can reach Kubernetes."""
    text = json.dumps([crdgen.crd(k) for k in crdgen.KINDS])
    for forbidden in ('"$ref"', '"anyOf"', '"additionalProperties": true', '"title"'):
        assert forbidden not in text


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_models_reject_what_the_apiserver_rejects(case) -> None:  # type: ignore[no-untyped-def]
    """The pydantic models hold the same rules for what is checkable without oldSelf."""
    if case.before is not None or case.id == "aq-name-too-long":
        pytest.skip("transition rules and metadata rules live only in the apiserver")
    model = {"AgentQueue": AgentQueueSpec, "ConsumerGroup": ConsumerGroupSpec,
             "RetentionPolicy": RetentionPolicySpec}[case.manifest["kind"]]
    if case.id in ("aq-pubsub-partitions", "aq-access-duplicate", "rp-empty",
                   "aq-access-duplicate-in-list", "aq-missing-spec"):
        pytest.skip("cross-field rule enforced by CEL; the operator reports it in status too")
    with pytest.raises(ValueError):
        model.from_wire(case.manifest["spec"])


def test_corpus_is_big_enough() -> None:
    assert len(INVALID) >= 15


@pytest.mark.k8s
def test_valid_samples_accepted(crds_installed, namespace, kubectl) -> None:  # type: ignore[no-untyped-def]
    docs = yaml.safe_dump_all(VALID)
    out = kubectl("apply", "-n", namespace, "-f", "-", input=docs, check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(kubectl("get", "aq", "-n", namespace, "minimal", "-o", "json").stdout)
    # Defaults come from the schema, so the stored object is complete.
    assert got["spec"]["delivery"]["maxDeliveries"] == 5
    assert got["spec"]["delivery"]["retry"]["initialDelay"] == "1s"
    cgobj = json.loads(kubectl("get", "cg", "-n", namespace, "workers", "-o", "json").stdout)
    assert cgobj["spec"]["scaling"]["scaleDown"]["stabilizationWindow"] == "60s"
    assert cgobj["spec"]["scaleTargetRef"]["kind"] == "Deployment"


@pytest.mark.k8s
def test_quickstart_example_accepted(crds_installed, namespace, kubectl) -> None:  # type: ignore[no-untyped-def]
    out = kubectl("apply", "--dry-run=server", "-n", namespace, "-f",
                  str(ROOT / "examples" / "quickstart.yaml"), check=False)
    assert out.returncode == 0, out.stderr


@pytest.mark.k8s
@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_invalid_manifest_rejected(case, crds_installed, namespace, kubectl) -> None:  # type: ignore[no-untyped-def]
    if case.before is not None:
        kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(case.before))
        for _ in range(10):  # a running operator may update the object meanwhile
            out = kubectl("replace", "-n", namespace, "-f", "-",
                          input=yaml.safe_dump(_with_version(kubectl, namespace, case)),
                          check=False)
            if "the object has been modified" not in out.stderr:
                break
    else:
        out = kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                      input=yaml.safe_dump(case.manifest), check=False)
    assert out.returncode != 0, f"{case.id} was accepted"
    for expected in case.expect:
        assert expected in out.stderr, f"{case.id}: {expected!r} not in {out.stderr!r}"


def _with_version(kubectl, namespace, case):  # type: ignore[no-untyped-def]
    # Plural names: the singular `agentqueue` is also the category of all three kinds.
    kind = {"AgentQueue": "agentqueues", "ConsumerGroup": "consumergroups",
            "RetentionPolicy": "retentionpolicies"}[case.manifest["kind"]]
    name = case.manifest["metadata"]["name"]
    live = json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)
    manifest = json.loads(json.dumps(case.manifest))
    manifest["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
    return manifest
