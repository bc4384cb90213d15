"""The Helm chart: lint and render with default and non-default values, the values schema,
the CRD copies, the monitoring objects against the operator's real metric names, then the
rendered manifests validated by the real apiserver (server-side dry-run, strict field
validation, Pod Security "restricted") and a real helm install / upgrade / uninstall.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kopf._cogs.structs import references as kopf_references

import agentqueue
from agentqueue.metrics import Metrics
from agentqueue_devtools import ControlPlane, Kubectl

from .required import missing

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "agentqueue-operator"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUE_SETS = [None, *CI_VALUES]
VALUE_IDS = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]


# --- helpers ---------------------------------------------------------------------------------

@dataclass
class IsolatedCluster:
    """A control plane of a module's own, with our CRDs and kopf's peering CRDs, so that
    no other operator (the suite's session-wide one) reconciles what a test creates."""

    control_plane: ControlPlane
    kubectl: Kubectl

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig


def isolated_cluster(tmp_path_factory: pytest.TempPathFactory,
                     binaries: Any) -> Iterator[IsolatedCluster]:
    """Generator for a module-scoped fixture (about 5 s to start)."""
    with ControlPlane(tmp_path_factory.mktemp("isolated-cluster"), binaries) as cp:
        kubectl = Kubectl(binaries.kubectl, cp.kubeconfig)
        kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        kubectl("apply", "--server-side", "-f", str(CHART / "crds" / "kopf.dev_peerings.yaml"))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        yield IsolatedCluster(cp, kubectl)


def fresh_namespace(kubectl: Kubectl) -> Iterator[str]:
    """Generator for a function-scoped `namespace` fixture on an isolated cluster."""
    name = f"aq-test-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def helm(binaries: Any, *args: str, kubeconfig: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [str(binaries.helm), *args]
    if kubeconfig is not None:
        cmd.append(f"--kubeconfig={kubeconfig}")
    env = dict(os.environ, HELM_CACHE_HOME="/tmp/aq-helm/cache",
               HELM_CONFIG_HOME="/tmp/aq-helm/config", HELM_DATA_HOME="/tmp/aq-helm/data")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def render(binaries: Any, values: Path | None = None, *sets: str, release: str = "aq",
           namespace: str = "agentqueue-system") -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    if values is not None:
        args += ["-f", str(values)]
    for s in sets:
        args += ["--set-json" if s.startswith("json:") else "--set", s.removeprefix("json:")]
    text = helm(binaries, *args).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or
                                                       d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod["containers"][0]  # type: ignore[no-any-return]


def exposed_metric_names() -> set[str]:
    """Every series name the operator's /metrics can serve (from its real registry)."""
    from prometheus_client import generate_latest

    names: set[str] = set()
    for line in generate_latest(Metrics().registry).decode().splitlines():
        match = re.match(r"# TYPE (\S+) (\S+)", line)
        if not match:
            continue
        name, kind = match.groups()
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def metric_names_in(text: str) -> set[str]:
    return set(re.findall(r"\bagentqueue_[a-z_]+\b", text))


# --- lint, schema, values ---------------------------------------------------------------------

@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_helm_lint_strict(binaries: Any, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values is not None:
        args += ["-f", str(values)]
    out = helm(binaries, *args)
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


@pytest.mark.parametrize(("sets", "error"), [
    (["replicaCount=two"], "replicaCount"),
    (["bogus=1"], "bogus"),
    (["image.pullPolicy=Sometimes"], "pullPolicy"),
    (["operator.logFormat=xml"], "logFormat"),
    (["operator.driftInterval=soon"], "driftInterval"),
    (["redis.url=http://redis:6379"], "url"),
    (["json:watch.namespaces=[\"Team_A\"]"], "namespaces"),
    (["json:rbac.extraScaleTargets=[{\"apiGroup\":\"argoproj.io\"}]"], "resources"),
    (["replicaCount=2", "peering.enabled=false"], "needs peering.enabled=true"),
    (["peering.lifetime=2"], "lifetime"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_values_are_rejected(binaries: Any, sets: list[str], error: str) -> None:
    args = ["template", "aq", str(CHART)]
    for s in sets:
        args += ["--set-json" if s.startswith("json:") else "--set", s.removeprefix("json:")]
    out = helm(binaries, *args, check=False)
    assert out.returncode != 0 and error in out.stderr, out.stderr


def test_every_value_is_commented() -> None:
    """Each leaf value in values.yaml has a comment right above it (or sits inside a
    block value whose key has one)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    covered_indent: int | None = None
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):(.*)$", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        if covered_indent is not None and indent > covered_indent:
            continue  # part of a documented block value
        covered_indent = None
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        documented = prev.strip().startswith("#") and \
            len(prev) - len(prev.lstrip()) == indent
        is_section = rest == "" and i + 1 < len(lines) and \
            lines[i + 1].startswith(" " * (indent + 2)) and \
            not lines[i + 1].strip().startswith("-")
        if documented and rest == "":
            covered_indent = indent
        elif not documented and not is_section:
            undocumented.append(key)
    assert not undocumented, f"values without a comment: {undocumented}"


def test_chart_versions_follow_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == agentqueue.__version__
    assert chart["apiVersion"] == "v2" and chart["type"] == "application"


# --- CRDs ----------------------------------------------------------------------------------------

def test_chart_crds_equal_the_generated_crds() -> None:
    repo = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert repo, "crds/ is empty"
    for name, content in repo.items():
        assert chart.get(name) == content, f"charts/.../crds/{name} is out of date: " \
            "run scripts/chart-crds.sh"
    assert set(chart) - set(repo) == {"kopf.dev_peerings.yaml"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "chart-crds.sh"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_chart_crds_script_detects_drift(tmp_path: Path) -> None:
    # Run the script on a copy of the repository layout with one CRD changed.
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "chart-crds.sh").write_text(
        (ROOT / "scripts" / "chart-crds.sh").read_text())
    (tmp_path / "crds").mkdir()
    dst = tmp_path / "charts" / "agentqueue-operator" / "crds"
    dst.mkdir(parents=True)
    for p in (ROOT / "crds").glob("*.yaml"):
        (tmp_path / "crds" / p.name).write_bytes(p.read_bytes())
        (dst / p.name).write_bytes(p.read_bytes())
    victim = dst / "agentqueue.io_agentqueues.yaml"
    victim.write_text(victim.read_text() + "# edited by hand\n")
    (dst / "agentqueue.io_stale.yaml").write_text("# removed from crds/\n")
    script = ["bash", str(tmp_path / "scripts" / "chart-crds.sh")]
    check = subprocess.run([*script, "--check"], capture_output=True, text=True)
    assert check.returncode == 1 and victim.name in check.stderr and "stale" in check.stderr
    subprocess.run(script, check=True, capture_output=True)
    assert subprocess.run([*script, "--check"], capture_output=True).returncode == 0
    assert not (dst / "agentqueue.io_stale.yaml").exists()


def test_peering_crds_are_what_kopf_uses() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text()))
    by_plural = {d["spec"]["names"]["plural"]: d for d in docs}
    for selector, scope in ((kopf_references.CLUSTER_PEERINGS_K, "Cluster"),
                            (kopf_references.NAMESPACED_PEERINGS_K, "Namespaced")):
        crd = by_plural[selector.any_name]
        assert crd["spec"]["group"] == selector.group and crd["spec"]["scope"] == scope
        version = crd["spec"]["versions"][0]
        assert version["name"] == selector.version and version["storage"]
        # kopf patches status on the object itself: a status subresource would drop it.
        assert "subresources" not in version
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True


# --- rendering ----------------------------------------------------------------------------------

@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_render_is_hardened(binaries: Any, values: Path | None) -> None:
    docs = render(binaries, values)
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = container(docs)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert f"--liveness=http://0.0.0.0:{ports['health']}/healthz" in c["args"]
    assert f"--metrics-port={ports['metrics']}" in c["args"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    sa = pod["serviceAccountName"]
    assert pod["automountServiceAccountToken"] is True
    assert one(docs, "ServiceAccount", sa)["automountServiceAccountToken"] is False
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "agentqueue"
    # The metrics Service selects the operator pods on the metrics port.
    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"][
        "labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    # No secret material in the manifests except in the chart's own Secret.
    text = yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    assert "not-a-real-password" not in text


def test_render_default(binaries: Any) -> None:
    docs = render(binaries)
    assert kinds(docs) == sorted([
        "ClusterKopfPeering", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRole",
        "ClusterRoleBinding", "ClusterRoleBinding", "Deployment", "Pod",
        "PodDisruptionBudget", "Service", "ServiceAccount"])
    deploy = one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    c = container(docs)
    assert c["image"] == f"ghcr.io/agentqueue/agentqueue-operator:{agentqueue.__version__}"
    peering = one(docs, "ClusterKopfPeering")["metadata"]["name"]
    assert f"--peering={peering}" in c["args"]
    assert "--peering-lifetime=15s" in c["args"]  # the operator's default, kopf's is 60 s
    assert not any(a.startswith("--namespace") for a in c["args"])
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "AGENTQUEUE_REDIS_URL" not in env  # no default Redis configured
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    affinity = deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    test_pod = one(docs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["containers"][0]["image"] == c["image"]


def test_render_namespaced(binaries: Any) -> None:
    docs = render(binaries, CHART / "ci" / "namespaced-values.yaml")
    roles = [d for d in docs if d["kind"] == "Role"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "aq-operator",
                                  "namespace": "agentqueue-system"}]
    # The only cluster-wide grants: kopf's discovery (and the aggregated user roles).
    cluster_roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    assert set(cluster_roles) == {"aq-agentqueue-operator-kopf", "aq-agentqueue-operator-edit",
                                  "aq-agentqueue-operator-view"}
    kopf_rules = cluster_roles["aq-agentqueue-operator-kopf"]["rules"]
    assert {r["resources"][0] for r in kopf_rules} == {"customresourcedefinitions",
                                                        "namespaces"}
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert "ClusterKopfPeering" not in kinds(docs)
    c = container(docs)
    assert "--namespace=team-a" in c["args"] and "--namespace=team-b" in c["args"]
    secret = one(docs, "Secret")
    assert secret["stringData"] == {"url": "redis://redis.redis.svc:6379/0",
                                    "username": "agentqueue-admin",
                                    "password": "not-a-real-password"}
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e
           and "secretKeyRef" in e["valueFrom"]}
    assert env["AGENTQUEUE_REDIS_URL"] == {"name": secret["metadata"]["name"], "key": "url"}
    assert env["AGENTQUEUE_REDIS_PASSWORD"]["key"] == "password"


def test_render_ha_monitoring(binaries: Any) -> None:
    docs = render(binaries, CHART / "ci" / "ha-monitoring-values.yaml")
    c = container(docs)
    assert c["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    assert "--peering=agentqueue-ha" in c["args"]
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "agentqueue-ha"
    operator_role = one(docs, "ClusterRole", "aq-agentqueue-operator")
    assert {"apiGroups": ["argoproj.io"], "resources": ["rollouts/scale"],
            "verbs": ["get", "patch", "update"]} in operator_role["rules"]
    env = {e["name"]: e for e in c["env"]}
    assert env["AGENTQUEUE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "agentqueue-redis-admin", "key": "url"}
    assert env["AGENTQUEUE_REDIS_CA_FILE"]["value"] == "/etc/agentqueue/redis/ca.crt"
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"][
        "volumes"]}
    assert volumes["redis-ca"]["secret"] == {"secretName": "agentqueue-redis-admin",
                                             "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    # ServiceMonitor -> Service -> pods, on the named metrics port.
    svc, sm = one(docs, "Service"), one(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    # NetworkPolicy: the metrics port from monitoring (and the helm test), and egress.
    np = one(docs, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = {p["port"] for rule in np["spec"]["egress"] for p in rule["ports"]}
    assert {53, 443, 6443, 6379, 26379} <= egress_ports
    assert len(np["spec"]["ingress"][0]["from"]) == 2
    # The policy, the Service and the PDB select the operator pods, not the test Pod, which
    # the policy's ingress admits instead.
    test_labels = one(docs, "Pod")["metadata"]["labels"]
    for selector in (np["spec"]["podSelector"]["matchLabels"], svc["spec"]["selector"],
                     one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]):
        assert not selector.items() <= test_labels.items()
    assert np["spec"]["ingress"][0]["from"][1]["podSelector"]["matchLabels"].items() <= \
        test_labels.items()


def test_alerts_and_dashboard_use_real_metric_names(binaries: Any) -> None:
    docs = render(binaries, CHART / "ci" / "ha-monitoring-values.yaml")
    exposed = exposed_metric_names()
    rule = one(docs, "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    used = set().union(*(metric_names_in(e) for e in exprs))
    assert used and used <= exposed, f"unknown metrics in alerts: {used - exposed}"
    for r in (r for g in rule["spec"]["groups"] for r in g["rules"]):
        assert r["labels"]["team"] == "platform" and r["annotations"]["summary"]
    # The operator job label the "down" alert watches is the metrics Service's name.
    assert f'job="{one(docs, "Service")["metadata"]["name"]}"' in exprs[0]
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["agentqueue.json"])
    targets = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set().union(*(metric_names_in(e) for e in targets))
    assert len(used) >= 10 and used <= exposed, f"unknown metrics: {used - exposed}"
    assert "agentqueue_queue_retries_total" in used  # retries per minute have a panel
    assert dashboard["uid"] == "agentqueue-overview"


def test_render_standalone(binaries: Any) -> None:
    docs = render(binaries, CHART / "ci" / "standalone-values.yaml")
    deploy = one(docs, "Deployment", "aq")
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(a.startswith("--peering") for a in container(docs)["args"])
    assert not {"ClusterKopfPeering", "KopfPeering", "Pod", "PodDisruptionBudget"} & set(
        kinds(docs))
    rules = [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]]
    assert not any("kopf.dev" in r["apiGroups"] for r in rules)
    assert not any("agentqueues/finalizers" in r["resources"] for r in rules)
    assert one(docs, "Secret")["stringData"]["ca.crt"].startswith("-----BEGIN CERTIFICATE")


def test_notes_render(binaries: Any) -> None:
    out = helm(binaries, "install", "aq", str(CHART), "--dry-run=client", "-n", "ops").stdout
    assert "WARNING: no default Redis" in out and "cluster-wide" in out
    assert "kubectl apply --server-side" in out
    out = helm(binaries, "install", "aq", str(CHART), "--dry-run=client", "-n", "ops",
               "-f", str(CHART / "ci" / "namespaced-values.yaml")).stdout
    assert "namespaced (team-a, team-b)" in out and "WARNING" not in out


# --- the helm test Pod's check, run for real -------------------------------------------------------

class _Metrics(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def metrics_server() -> Iterator[tuple[HTTPServer, type[_Metrics]]]:
    handler = type("Handler", (_Metrics,), {})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()


def test_helm_test_pod_checks_the_operator_metrics(binaries: Any, metrics_server: Any) -> None:
    """The test Pod's script, run against the operator's real metrics exposition."""
    from prometheus_client import generate_latest

    server, handler = metrics_server
    pod = one(render(binaries), "Pod")
    spec = pod["spec"]["containers"][0]
    assert spec["command"] == ["python", "-c"]
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    env = dict(os.environ, METRICS_URL=url)
    handler.body = generate_latest(Metrics().registry)
    ok = subprocess.run([sys.executable, "-c", spec["args"][0]], env=env, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "ok:" in ok.stdout, ok.stdout + ok.stderr
    handler.body = b"# some other exporter\nup 1\n"
    bad = subprocess.run([sys.executable, "-c", spec["args"][0]], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0


# --- against the real apiserver -------------------------------------------------------------------

# prometheus-operator's CRDs are not ours to ship; these stand-ins carry the structural
# schema of the fields the chart uses (from the monitoring.coreos.com/v1 API reference),
# so that strict field validation catches a misspelt or misplaced field.
_RELABEL = {"type": "object", "properties": {
    "sourceLabels": {"type": "array", "items": {"type": "string"}},
    "separator": {"type": "string"}, "targetLabel": {"type": "string"},
    "regex": {"type": "string"}, "modulus": {"type": "integer"},
    "replacement": {"type": "string"}, "action": {"type": "string"}}}
_LABEL_SELECTOR = {"type": "object", "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array", "items": {"type": "object",
                                                    "x-kubernetes-preserve-unknown-fields": True}}}}
MONITORING_CRDS = [
    ("servicemonitors", "ServiceMonitor", {
        "selector": _LABEL_SELECTOR,
        "namespaceSelector": {"type": "object", "properties": {
            "any": {"type": "boolean"},
            "matchNames": {"type": "array", "items": {"type": "string"}}}},
        "jobLabel": {"type": "string"},
        "endpoints": {"type": "array", "items": {"type": "object", "properties": {
            "port": {"type": "string"}, "path": {"type": "string"},
            "scheme": {"type": "string"}, "interval": {"type": "string"},
            "scrapeTimeout": {"type": "string"}, "honorLabels": {"type": "boolean"},
            "relabelings": {"type": "array", "items": _RELABEL},
            "metricRelabelings": {"type": "array", "items": _RELABEL}}}}}),
    ("prometheusrules", "PrometheusRule", {
        "groups": {"type": "array", "items": {"type": "object", "required": ["name"],
                                              "properties": {
            "name": {"type": "string"}, "interval": {"type": "string"},
            "rules": {"type": "array", "items": {"type": "object", "required": ["expr"],
                                                 "properties": {
                "alert": {"type": "string"}, "record": {"type": "string"},
                "expr": {"x-kubernetes-int-or-string": True},
                "for": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object",
                                "additionalProperties": {"type": "string"}}}}}}}}}),
]


def monitoring_crds() -> list[dict[str, Any]]:
    return [{
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"plural": plural, "kind": kind, "singular": kind.lower()},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object", "properties": {
                         "spec": {"type": "object", "properties": spec}}}}}]},
    } for plural, kind, spec in MONITORING_CRDS]


# A control plane of this module's own: the documented CRD upgrade and Helm's own CRD
# handling must not change the CRDs under the rest of the suite.

@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory,
             binaries: Any) -> Iterator[IsolatedCluster]:
    yield from isolated_cluster(tmp_path_factory, binaries)


@pytest.fixture(scope="module")
def kubectl(isolated: IsolatedCluster) -> Any:
    return isolated.kubectl


@pytest.fixture(scope="module")
def kubeconfig(isolated: IsolatedCluster) -> Path:
    return isolated.kubeconfig


@pytest.fixture(scope="module")
def chart_crds_installed(kubectl: Any) -> None:
    """The chart's crds/ (ours + kopf's peering) and the monitoring stand-ins."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": monitoring_crds()}))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com", "crd/agentqueues.agentqueue.io")


def fresh_namespaces(kubectl: Any, count: int, **labels: str) -> list[str]:
    names = [f"aq-chart-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for name in names:
        kubectl("create", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}}))
    return names


@pytest.fixture
def namespaces(kubectl: Any) -> Iterator[Any]:
    made: list[str] = []

    def make(count: int, **labels: str) -> list[str]:
        names = fresh_namespaces(kubectl, count, **labels)
        made.extend(names)
        return names

    yield make
    for name in made:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.k8s
@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_server_side_dry_run(binaries: Any, kubectl: Any, chart_crds_installed: None,
                             namespaces: Any, values: Path | None) -> None:
    """The apiserver accepts every rendered object as it is (strict field validation),
    and the pods meet Pod Security "restricted" (enforced, so a violation is refused)."""
    restricted = {"pod-security.kubernetes.io/enforce": "restricted",
                  "pod-security.kubernetes.io/warn": "restricted"}
    release_ns, team_a, team_b = namespaces(3, **restricted)
    sets = [f"json:watch.namespaces={json.dumps([team_a, team_b])}"] \
        if values is not None and values.name.startswith("namespaced") else []
    docs = render(binaries, values, *sets, release=f"dry-{uuid.uuid4().hex[:6]}",
                  namespace=release_ns)
    out = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                  input=yaml.safe_dump_all(docs), check=False)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr
    assert len(out.stdout.strip().splitlines()) == len(docs)


@pytest.mark.k8s
def test_helm_install_upgrade_uninstall(binaries: Any, kubeconfig: Path, kubectl: Any,
                                        chart_crds_installed: None, namespaces: Any) -> None:
    (ns,) = namespaces(1)
    release = f"aq-{uuid.uuid4().hex[:6]}"
    full = f"{release}-agentqueue-operator"

    def get(kind: str, name: str, namespace: str | None = ns) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        out = kubectl(*args, check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    helm(binaries, "install", release, str(CHART), "-n", ns, "--set",
         "redis.url=redis://redis.example:6379/0", "--set", "redis.password=s3cret",
         kubeconfig=kubeconfig)
    deploy = get("deployment", full)
    assert deploy and deploy["spec"]["replicas"] == 2
    assert get("serviceaccount", full) and get("service", f"{full}-metrics")
    assert get("secret", f"{full}-redis") and get("poddisruptionbudget", full)
    assert get("clusterrole", full, None) and get("clusterrolebinding", f"{full}-kopf", None)
    assert get("clusterkopfpeerings.kopf.dev", full, None)
    hooks = helm(binaries, "get", "hooks", release, "-n", ns, kubeconfig=kubeconfig).stdout
    assert f"name: {full}-test-metrics" in hooks

    helm(binaries, "upgrade", release, str(CHART), "-n", ns, "--reuse-values", "-f",
         str(CHART / "ci" / "ha-monitoring-values.yaml"), kubeconfig=kubeconfig)
    assert get("servicemonitor", full) and get("prometheusrule", full)
    assert get("networkpolicy", full) and get("configmap", f"{full}-dashboard")
    assert get("clusterkopfpeerings.kopf.dev", "agentqueue-ha", None)
    assert get("secret", f"{full}-redis") is None  # existingSecret replaces it
    status = helm(binaries, "status", release, "-n", ns, "-o", "json", kubeconfig=kubeconfig)
    assert json.loads(status.stdout)["info"]["status"] == "deployed"

    # The documented CRD upgrade (Helm itself never upgrades crds/).
    crds = helm(binaries, "show", "crds", str(CHART)).stdout
    out = kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crds)
    assert "agentqueues.agentqueue.io serverside-applied" in out.stdout

    helm(binaries, "uninstall", release, "-n", ns, "--wait", "--timeout", "60s",
         kubeconfig=kubeconfig)
    assert get("deployment", full) is None and get("clusterrole", full, None) is None
    # Uninstalling never deletes the CRDs, so no AgentQueue is lost with the release.
    assert get("crd", "agentqueues.agentqueue.io", None)


@pytest.mark.k8s
def test_server_side_dry_run_catches_mistakes(binaries: Any, kubectl: Any,
                                              chart_crds_installed: None,
                                              namespaces: Any) -> None:
    """Negative control for the dry-run above: the same check refuses a misspelt field,
    a container that escalates, and a misspelt ServiceMonitor field."""
    (ns,) = namespaces(1, **{"pod-security.kubernetes.io/enforce": "restricted"})
    docs = render(binaries, CHART / "ci" / "ha-monitoring-values.yaml", namespace=ns)

    def dry_run(doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                       input=json.dumps(doc), check=False)

    deploy = json.loads(json.dumps(one(docs, "Deployment")))
    deploy["spec"]["replica"] = 2
    assert "unknown field" in dry_run(deploy).stderr
    pod = json.loads(json.dumps(one(docs, "Pod")))
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    assert "violates PodSecurity" in dry_run(pod).stderr
    sm = json.loads(json.dumps(one(docs, "ServiceMonitor")))
    sm["spec"]["endpoints"][0]["scrapeTimout"] = "5s"
    assert "unknown field" in dry_run(sm).stderr


@pytest.mark.k8s
def test_e2e_redis_manifest_is_valid_and_restricted(kubectl: Any, namespaces: Any) -> None:
    (ns,) = namespaces(1, **{"pod-security.kubernetes.io/enforce": "restricted",
                             "pod-security.kubernetes.io/warn": "restricted"})
    out = kubectl("apply", "-n", ns, "--dry-run=server", "--validate=strict", "-f",
                  str(CHART / "ci" / "e2e-redis.yaml"), check=False)
    assert out.returncode == 0 and "Warning" not in out.stderr, out.stderr
    secret = next(d for d in yaml.safe_load_all((CHART / "ci" / "e2e-redis.yaml").read_text())
                  if d["kind"] == "Secret")
    assert set(secret["stringData"]) == {"url", "username", "password"}


# --- the kind end-to-end workflow -------------------------------------------------------------------

WORKFLOW = ROOT / ".github" / "workflows" / "kind-e2e.yml"
ACTIONLINT_VERSION = "v1.7.7"


def test_workflow_runs_the_make_targets() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    runs = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    made = [r.split()[1] for r in runs if r.startswith("make ")]
    assert made == ["unit", "kind-up", "image", "kind-load", "deploy", "e2e"], made
    assert workflow["jobs"]["kind-e2e"]["needs"] == "unit"
    kind_cfg = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert kind_cfg["kind"] == "Cluster" and kind_cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in kind_cfg["nodes"]].count("worker") >= 2  # room for 2 replicas
    # The Makefile targets exist and expand (make -n runs nothing).
    out = subprocess.run(["make", "-n", "kind-up", "image", "kind-load", "deploy", "e2e"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for needle in ("kind create cluster", "--config kind-config.yaml", "docker build",
                   "kind load docker-image", "apply --server-side", "ci/e2e-redis.yaml",
                   "helm upgrade --install", "image.pullPolicy=Never",
                   "redis.existingSecret.name=redis-admin", "examples/quickstart.yaml",
                   "condition=Ready agentqueues", "helm test"):
        assert needle in out.stdout, needle


def actionlint() -> str | None:
    """actionlint built once from the Go module proxy (cached next to the other tools)."""
    from agentqueue_devtools.binaries import cache_root

    binary = cache_root() / "bin" / f"actionlint-{ACTIONLINT_VERSION}" / "actionlint"
    if binary.exists():
        return str(binary)
    go = shutil.which("go")
    if go is None:
        return None
    env = dict(os.environ, GOBIN=str(binary.parent), GOFLAGS="-mod=mod")
    subprocess.run([go, "install", f"github.com/rhysd/actionlint/cmd/actionlint@"
                    f"{ACTIONLINT_VERSION}"], env=env, check=True, capture_output=True,
                   timeout=300)
    return str(binary)


def test_workflow_lints_clean() -> None:
    tool = actionlint()
    if tool is None:
        missing("go is missing: cannot build actionlint")
    out = subprocess.run([tool, "-no-color", str(WORKFLOW)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
