"""Argo CD integration: the Lua health checks run in a real Lua 5.1 interpreter (Argo CD's
gopher-lua implements Lua 5.1) against realistic objects, those objects are accepted as they
are by the real apiserver and our CRDs, and nothing the operator writes makes a GitOps diff.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from agentqueue import reasons

from .test_chart import IsolatedCluster, fresh_namespace, isolated_cluster

ROOT = Path(__file__).resolve().parents[1]
ARGOCD = ROOT / "docs" / "argocd"
CUSTOMIZATIONS = ARGOCD / "resource_customizations" / "agentqueue.io"
KINDS = ("AgentQueue", "ConsumerGroup", "RetentionPolicy")
PLURALS = {"AgentQueue": "agentqueues", "ConsumerGroup": "consumergroups",
           "RetentionPolicy": "retentionpolicies"}
# What Argo CD's Lua VM offers a health script (base, string, table, math).
SANDBOX_GLOBALS = ("ipairs", "pairs", "next", "type", "tostring", "tonumber", "string", "table",
                   "math", "error", "pcall", "select", "unpack")


def health_script(kind: str) -> str:
    return (CUSTOMIZATIONS / kind / "health.lua").read_text()


def cases() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for kind in KINDS:
        spec = yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())
        out.extend((kind, case) for case in spec["tests"])
    return out


CASES = cases()


def load_object(kind: str, case: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load((CUSTOMIZATIONS / kind / case["inputPath"]).read_text())


def run_health(script: str, obj: dict[str, Any]) -> dict[str, str]:
    """Run a health script as Argo CD does: `obj` a global, the result a table."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    env = lua.table()
    source = lua.globals()
    for name in SANDBOX_GLOBALS:
        env[name] = source[name]
    # JSON-decoded data, as Argo CD hands it over: objects and arrays become tables.
    env["obj"] = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    chunk = lua.execute("return function(src, env) local f = assert(loadstring(src)); "
                        "setfenv(f, env); return f() end")
    result = chunk(script, env)
    assert result is not None, "the script returned nothing"
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize(("kind", "case"), CASES,
                         ids=[f"{k}-{Path(c['inputPath']).stem}" for k, c in CASES])
def test_health(kind: str, case: dict[str, Any]) -> None:
    assert run_health(health_script(kind), load_object(kind, case)) == case["healthStatus"]


def test_every_kind_covers_healthy_progressing_and_degraded() -> None:
    for kind in KINDS:
        seen = {c["healthStatus"]["status"] for k, c in CASES if k == kind}
        assert {"Healthy", "Progressing", "Degraded"} <= seen, (kind, seen)
    assert any(c["healthStatus"]["status"] == "Suspended" for _, c in CASES)


def test_testdata_objects_are_the_kind_they_claim() -> None:
    for kind, case in CASES:
        obj = load_object(kind, case)
        assert obj["apiVersion"] == "agentqueue.io/v1alpha1" and obj["kind"] == kind


def test_script_handles_missing_pieces() -> None:
    """Argo CD calls the script on any live object, however bare; it must never error."""
    bare: list[dict[str, Any]] = [{}, {"metadata": {}}, {"status": {}},
                                  {"status": {"conditions": []}},
                                  {"status": {"conditions": [{"type": "Ready"}]}}]
    for kind in KINDS:
        for obj in bare:
            result = run_health(health_script(kind), obj)
            assert result["status"] in ("Progressing", "Degraded", "Healthy"), (kind, obj)


def test_reasons_and_condition_types_exist_in_the_operator() -> None:
    """The Lua names only condition types and reasons the operator really uses."""
    known = {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}
    for kind in KINDS:
        script = health_script(kind)
        waiting = re.search(r"local waiting = \{([^}]*)\}", script)
        assert waiting, kind
        names = re.findall(r"(\w+) = true", waiting.group(1))
        assert names and set(names) <= known, (kind, set(names) - known)
        types = set(re.findall(r'condition\(status\.conditions, "(\w+)"\)', script))
        assert "Ready" in types and types <= known, (kind, types - known)


def test_argocd_cm_snippet_carries_the_same_scripts() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    for kind in KINDS:
        key = f"resource.customizations.health.agentqueue.io_{kind}"
        assert cm["data"][key] == health_script(kind), f"{key} differs from health.lua"
        ignore = yaml.safe_load(cm["data"][f"resource.customizations.ignoreResourceUpdates."
                                           f"agentqueue.io_{kind}"])
        assert ignore == {"jsonPointers": ["/status"]}
    for kind, case in CASES:  # and the snippet's copy behaves identically
        script = cm["data"][f"resource.customizations.health.agentqueue.io_{kind}"]
        assert run_health(script, load_object(kind, case)) == case["healthStatus"]


def test_example_application_keeps_replicas_out_of_the_diff() -> None:
    apps = list(yaml.safe_load_all((ARGOCD / "application.yaml").read_text()))
    queues = next(a for a in apps if a["metadata"]["name"] == "contact-center-queues")
    assert {"group": "apps", "kind": "Deployment", "jsonPointers": ["/spec/replicas"]} in \
        queues["spec"]["ignoreDifferences"]
    assert "RespectIgnoreDifferences=true" in queues["spec"]["syncPolicy"]["syncOptions"]
    operator = next(a for a in apps if a["metadata"]["name"] == "agentqueue-operator")
    assert operator["spec"]["source"]["path"] == "charts/agentqueue-operator"
    assert (ROOT / operator["spec"]["source"]["path"] / "Chart.yaml").exists()


# --- against the real apiserver -------------------------------------------------------------
# On a control plane of this module's own: the suite's session-wide operator would
# otherwise reconcile these objects and rewrite their status.

@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory,
             binaries: Any) -> Iterator[IsolatedCluster]:
    yield from isolated_cluster(tmp_path_factory, binaries)


@pytest.fixture(scope="module")
def kubectl(isolated: IsolatedCluster) -> Any:
    return isolated.kubectl


@pytest.fixture(scope="module")
def crds_installed(isolated: IsolatedCluster) -> None:
    return None  # isolated_cluster() installed them


@pytest.fixture
def namespace(kubectl: Any) -> Iterator[str]:
    yield from fresh_namespace(kubectl)


def _strip_server_fields(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    manifest = copy.deepcopy(obj)
    manifest.pop("status", None)
    meta = manifest["metadata"]
    for field in ("uid", "resourceVersion", "creationTimestamp", "generation",
                  "deletionTimestamp", "deletionGracePeriodSeconds"):
        meta.pop(field, None)
    meta["namespace"] = namespace
    return manifest


def _subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _subset(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            _subset(e, a) for e, a in zip(expected, actual, strict=True))
    return bool(expected == actual)


@pytest.mark.k8s
def test_testdata_is_accepted_by_our_crds_and_judged_the_same_live(
        crds_installed: None, kubectl: Any, namespace: str) -> None:
    """Every testdata object, spec and status, is valid for the real CRDs (nothing pruned),
    and the health of the live object read back from the apiserver is the same."""
    created: list[tuple[str, str]] = []
    try:
        for kind, case in CASES:
            obj = load_object(kind, case)
            plural = PLURALS[kind]
            name = f"{obj['metadata']['name']}-{Path(case['inputPath']).stem}"[:63]
            manifest = _strip_server_fields(obj, namespace)
            manifest["metadata"]["name"] = name
            kubectl("create", "--validate=strict", "-f", "-", input=json.dumps(manifest))
            created.append((plural, name))
            live = json.loads(kubectl("get", plural, name, "-n", namespace, "-o",
                                      "json").stdout)
            status = obj.get("status")
            if status is not None:
                # Keep the case's generation gap relative to the live generation.
                gap = obj["metadata"]["generation"] - status["observedGeneration"]
                status = copy.deepcopy(status)
                status["observedGeneration"] = live["metadata"]["generation"] - gap
                for cond in status["conditions"]:
                    cond["observedGeneration"] = status["observedGeneration"]
                kubectl("patch", plural, name, "-n", namespace, "--subresource=status",
                        "--type=merge", "-p", json.dumps({"status": status}))
            if "deletionTimestamp" in obj["metadata"]:
                kubectl("delete", plural, name, "-n", namespace, "--wait=false")
            live = json.loads(kubectl("get", plural, name, "-n", namespace, "-o",
                                      "json").stdout)
            if status is not None:
                assert _subset(status, live["status"]), \
                    f"{case['inputPath']}: the apiserver changed or pruned the status"
            result = run_health(health_script(kind), live)
            assert result["status"] == case["healthStatus"]["status"], (case, result)
            if obj["metadata"].get("generation") == live["metadata"]["generation"]:
                assert result == case["healthStatus"]
    finally:
        for plural, name in created:
            kubectl("patch", plural, name, "-n", namespace, "--type=merge", "-p",
                    '{"metadata":{"finalizers":null}}', check=False)


def _quickstart(namespace: str, *, keep_replicas: bool) -> str:
    docs = list(yaml.safe_load_all((ROOT / "examples" / "quickstart.yaml").read_text()))
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "Deployment" and not keep_replicas:
            doc["spec"].pop("replicas", None)
    return yaml.safe_dump_all(docs)


def _operator_writes(kubectl: Any, namespace: str) -> None:
    """Everything the operator writes to the user's objects: kopf's finalizer and
    annotations, status (through /status), and the consumer Deployment's /scale."""
    for plural, name in (("agentqueues", "billing"), ("consumergroups", "billing-agents"),
                         ("retentionpolicies", "default")):
        kubectl("patch", plural, name, "-n", namespace, "--type=merge", "-p", json.dumps({
            "metadata": {
                "finalizers": ["agentqueue.io/finalizer"],
                "annotations": {
                    "agentqueue.io/last-handled-configuration": json.dumps({"spec": {}}),
                    "agentqueue.io/reconcile": json.dumps({"started": "2026-03-02T09:14:07Z"}),
                }}}))
        gen = json.loads(kubectl("get", plural, name, "-n", namespace, "-o", "json").stdout)[
            "metadata"]["generation"]
        kubectl("patch", plural, name, "-n", namespace, "--subresource=status",
                "--type=merge", "-p", json.dumps({"status": {
                    "observedGeneration": gen,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Active",
                                    "message": "ok", "observedGeneration": gen,
                                    "lastTransitionTime": "2026-03-02T09:14:09Z"}]}}))
    kubectl("patch", "deployment", "billing-agent", "-n", namespace, "--subresource=scale",
            "--type=merge", "-p", '{"spec":{"replicas":3}}')


def _diff(kubectl: Any, manifest: str, *extra: str) -> subprocess.CompletedProcess[str]:
    out = kubectl("diff", *extra, "-f", "-", input=manifest, check=False)
    assert out.returncode in (0, 1), out.stderr  # 1 means "differences found"
    return out  # type: ignore[no-any-return]


@pytest.mark.k8s
@pytest.mark.parametrize("apply_mode", ["client-side", "server-side"])
def test_operator_writes_cause_no_gitops_diff(crds_installed: None, kubectl: Any,
                                              namespace: str, apply_mode: str) -> None:
    """What Argo CD computes, with kubectl diff: after the operator's writes, the Git
    manifests still match, except a Deployment `replicas` kept in Git (hence the
    documented ignoreDifferences); CRD defaults never show up either."""
    server_side = ["--server-side", "--field-manager=argocd-controller"] \
        if apply_mode == "server-side" else []
    manifest = _quickstart(namespace, keep_replicas=False)
    kubectl("apply", *server_side, "-f", "-", input=manifest)
    try:
        live = json.loads(kubectl("get", "agentqueue.agentqueue.io/billing", "-n", namespace,
                                  "-o", "json").stdout)
        assert live["spec"]["deletionPolicy"] == "Retain"  # a schema default, not in Git
        _operator_writes(kubectl, namespace)
        out = _diff(kubectl, manifest, *server_side)
        assert out.returncode == 0, f"operator writes show up as a diff:\n{out.stdout}"

        with_replicas = _quickstart(namespace, keep_replicas=True)
        out = _diff(kubectl, with_replicas, *server_side)
        assert out.returncode == 1
        changed = [line for line in out.stdout.splitlines()
                   if line[:1] in "+-" and not line.startswith(("+++", "---"))
                   and "generation:" not in line]
        assert changed and all("replicas:" in line for line in changed), out.stdout
    finally:
        for plural, name in (("agentqueues", "billing"), ("consumergroups", "billing-agents"),
                             ("retentionpolicies", "default")):
            kubectl("patch", plural, name, "-n", namespace, "--type=merge", "-p",
                    '{"metadata":{"finalizers":null}}', check=False)


def test_operator_labels_do_not_collide_with_argocd_tracking() -> None:
    """Argo CD's label tracking (the default before 3.0) claims every object labelled
    `app.kubernetes.io/instance: <Application name>`. The operator's credentials Secrets
    are not in Git: if they carried the queue's name in that label, an Application named
    like a queue would show them OutOfSync and prune them, and the operator would
    recreate them, forever."""
    from agentqueue.kube import standard_labels

    labels = standard_labels("billing", "credentials")
    assert labels.get("app.kubernetes.io/instance") != "billing", labels
