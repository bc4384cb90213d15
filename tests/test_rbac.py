"""The chart's RBAC is exactly enough: the real operator, run as the chart's ServiceAccount
(a client certificate for `system:serviceaccount:<ns>:<sa>`) with the chart's own
arguments and environment, provisions queues, groups and policies and scales a workload;
everything outside the grants is refused by the apiserver. Both modes: cluster-wide
(ClusterRole) and watch-these-namespaces (Roles), and HA: two replicas, one active.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from .operator_fixtures import OperatorProcess, free_port, get_obj, wait_for, wait_ready
from .test_chart import CHART, IsolatedCluster, fresh_namespace, helm, isolated_cluster

pytestmark = pytest.mark.k8s


# --- a cluster of our own -----------------------------------------------------------------------
# The suite's session-wide operator (tests/operator_fixtures.py) serves every namespace of
# the shared cluster; here only the operators started by these tests may act, so the
# cluster-wide fixtures are overridden with an isolated control plane.

@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory,
             binaries: Any) -> Iterator[IsolatedCluster]:
    yield from isolated_cluster(tmp_path_factory, binaries)


@pytest.fixture(scope="module")
def control_plane(isolated: IsolatedCluster) -> Any:
    return isolated.control_plane


@pytest.fixture(scope="module")
def kubeconfig(isolated: IsolatedCluster) -> Path:
    return isolated.kubeconfig


@pytest.fixture(scope="module")
def kubectl(isolated: IsolatedCluster) -> Any:
    return isolated.kubectl


@pytest.fixture(scope="module")
def crds_installed(isolated: IsolatedCluster) -> None:
    return None  # isolated_cluster() installed them


@pytest.fixture
def namespace(kubectl: Any) -> Iterator[str]:
    yield from fresh_namespace(kubectl)


# --- the installed chart and its identity ------------------------------------------------------

@dataclass
class Release:
    name: str
    namespace: str
    fullname: str
    service_account: str
    kubeconfig: Path  # authenticates as the ServiceAccount
    deployment: dict[str, Any]
    peering: str | None
    env: dict[str, str]  # the container's env, resolved as the kubelet would

    @property
    def container(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]

    def operator_args(self, liveness_port: int | None = None) -> list[str]:
        """The chart's arguments; the listening ports are moved to free local ones."""
        out = []
        for arg in self.container["args"]:
            if arg.startswith("--metrics-port="):
                continue  # OperatorProcess picks a free one
            if arg.startswith("--liveness="):
                path = arg.split("/", 3)[3]
                arg = f"--liveness=http://127.0.0.1:{liveness_port}/{path}" \
                    if liveness_port else "--liveness="
            out.append(arg)
        return out


def install(binaries: Any, kubectl: Any, control_plane: Any, kubeconfig: Path, redis: Any,
            *sets: str) -> Release:
    namespace = f"aq-rbac-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    name = f"r{uuid.uuid4().hex[:6]}"
    # The CRDs are in place already (crds_installed; Helm 4 would server-side apply its
    # copies over kubectl's and refuse on any difference, which test_chart.py checks).
    args = ["install", name, str(CHART), "-n", namespace, "--skip-crds",
            "--set", f"redis.url={redis.url}",
            "--set", f"redis.username={redis.admin_username}",
            "--set", f"redis.password={redis.admin_password}"]
    for s in sets:
        args += ["--set-json" if s.startswith("json:") else "--set", s.removeprefix("json:")]
    helm(binaries, *args, kubeconfig=kubeconfig)
    manifest = helm(binaries, "get", "manifest", name, "-n", namespace,
                    kubeconfig=kubeconfig).stdout
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    sa = pod["serviceAccountName"]
    args_ = pod["containers"][0]["args"]
    peering = next((a.split("=", 1)[1] for a in args_ if a.startswith("--peering=")), None)
    try:
        sa_kubeconfig = control_plane.kubeconfig_for(
            f"system:serviceaccount:{namespace}:{sa}",
            ["system:serviceaccounts", f"system:serviceaccounts:{namespace}",
             "system:authenticated"])
    except NotImplementedError:
        pytest.skip("needs the local control plane to act as the ServiceAccount")
    env = resolve_env(kubectl, namespace, pod["containers"][0]["env"])
    return Release(name, namespace, deployment["metadata"]["name"], sa, sa_kubeconfig,
                   deployment, peering, env)


def resolve_env(kubectl: Any, namespace: str, env: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for var in env:
        if "value" in var:
            out[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"].get("secretKeyRef")
        if ref is None:
            continue  # fieldRef: POD_ID, set per process
        secret = get_obj(kubectl, "secret", ref["name"], namespace)
        data = (secret or {}).get("data", {})
        if ref["key"] in data:
            out[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
        else:
            assert ref.get("optional"), f"{ref} missing and not optional"
    return out


def uninstall(binaries: Any, kubectl: Any, kubeconfig: Path, release: Release) -> None:
    helm(binaries, "uninstall", release.name, "-n", release.namespace, kubeconfig=kubeconfig,
         check=False)
    kubectl("delete", "namespace", release.namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def cluster_release(binaries: Any, kubectl: Any, control_plane: Any, kubeconfig: Path,
                    crds_installed: None, operator_redis: Any) -> Iterator[Release]:
    release = install(binaries, kubectl, control_plane, kubeconfig, operator_redis)
    yield release
    uninstall(binaries, kubectl, kubeconfig, release)


@pytest.fixture(scope="module")
def sa_api(cluster_release: Release) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(cluster_release.kubeconfig))
    yield api
    api.close()


def can_i(api: client.ApiClient, verb: str, resource: str, namespace: str | None = None,
          name: str | None = None) -> bool:
    """SelfSubjectAccessReview as the ServiceAccount. `resource` is
    `[group/]resource[/subresource]`, e.g. `apps/deployments/scale` or `secrets`."""
    parts = resource.split("/")
    group = ""
    if len(parts) > 1 and ("." in parts[0] or parts[0] in ("apps", "autoscaling")):
        group, parts = parts[0], parts[1:]
    attrs = client.V1ResourceAttributes(
        verb=verb, group=group, resource=parts[0],
        subresource=parts[1] if len(parts) > 1 else None, namespace=namespace, name=name)
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=attrs)))
    return bool(review.status and review.status.allowed)


# Everything the operator does in a namespace it serves (kube.py and kopf).
NAMESPACED_GRANTS = [
    *[(verb, f"agentqueue.io/{kind}") for kind in ("agentqueues", "consumergroups",
                                                    "retentionpolicies")
      for verb in ("get", "list", "watch", "patch")],
    *[(verb, f"agentqueue.io/{kind}/status") for kind in ("agentqueues", "consumergroups",
                                                           "retentionpolicies")
      for verb in ("get", "patch", "update")],
    ("update", "agentqueue.io/agentqueues/finalizers"),
    *[(verb, "secrets") for verb in ("get", "create", "update", "delete")],
    ("create", "events"), ("patch", "events"),
    ("create", "events.k8s.io/events"), ("patch", "events.k8s.io/events"),
    *[(verb, f"apps/{kind}/scale") for kind in ("deployments", "statefulsets")
      for verb in ("get", "patch", "update")],
    ("get", "apps/deployments"),
    ("list", "autoscaling/horizontalpodautoscalers"),
    ("list", "keda.sh/scaledobjects"),
]
# What it never does: every one of these must be refused.
NAMESPACED_DENIALS = [
    ("list", "secrets"), ("watch", "secrets"), ("patch", "secrets"),
    ("create", "agentqueue.io/agentqueues"), ("update", "agentqueue.io/agentqueues"),
    ("delete", "agentqueue.io/agentqueues"), ("delete", "agentqueue.io/consumergroups"),
    ("deletecollection", "agentqueue.io/retentionpolicies"),
    ("get", "configmaps"), ("list", "pods"), ("create", "pods"), ("get", "pods/log"),
    ("create", "pods/exec"), ("get", "apps/statefulsets"), ("list", "apps/deployments"),
    ("patch", "apps/deployments"), ("update", "apps/deployments"),
    ("delete", "apps/deployments"), ("create", "apps/deployments"),
    ("get", "autoscaling/horizontalpodautoscalers"),
    ("create", "autoscaling/horizontalpodautoscalers"), ("delete", "events"),
    ("create", "serviceaccounts/token"), ("create", "rbac.authorization.k8s.io/roles"),
    ("create", "rbac.authorization.k8s.io/rolebindings"),
]
CLUSTER_GRANTS = [
    ("list", "apiextensions.k8s.io/customresourcedefinitions"),
    ("watch", "apiextensions.k8s.io/customresourcedefinitions"),
    ("list", "namespaces"), ("watch", "namespaces"),
]
CLUSTER_DENIALS = [
    ("get", "namespaces"), ("create", "namespaces"), ("delete", "namespaces"),
    ("create", "apiextensions.k8s.io/customresourcedefinitions"),
    ("update", "apiextensions.k8s.io/customresourcedefinitions"),
    ("list", "nodes"), ("create", "rbac.authorization.k8s.io/clusterrolebindings"),
    ("impersonate", "users"), ("list", "secrets"),
]


def test_service_account_may_do_what_the_operator_does(cluster_release: Release,
                                                       sa_api: client.ApiClient) -> None:
    elsewhere = f"any-{uuid.uuid4().hex[:6]}"  # cluster-wide mode: any namespace at all
    missing = [(v, r) for v, r in NAMESPACED_GRANTS if not can_i(sa_api, v, r, elsewhere)]
    missing += [(v, r) for v, r in CLUSTER_GRANTS if not can_i(sa_api, v, r)]
    peering = cluster_release.peering
    assert peering
    for verb in ("list", "watch"):
        if not can_i(sa_api, verb, "kopf.dev/clusterkopfpeerings"):
            missing.append((verb, "clusterkopfpeerings"))
    for verb in ("get", "patch"):
        if not can_i(sa_api, verb, "kopf.dev/clusterkopfpeerings", name=peering):
            missing.append((verb, f"clusterkopfpeerings/{peering}"))
    assert not missing, f"the chart does not grant: {missing}"


def test_service_account_may_do_nothing_else(cluster_release: Release,
                                             sa_api: client.ApiClient) -> None:
    elsewhere = f"any-{uuid.uuid4().hex[:6]}"
    allowed = [(v, r) for v, r in NAMESPACED_DENIALS if can_i(sa_api, v, r, elsewhere)]
    allowed += [(v, r) for v, r in CLUSTER_DENIALS if can_i(sa_api, v, r)]
    for verb, name in (("patch", "someone-elses-peering"), ("delete", cluster_release.peering),
                       ("update", cluster_release.peering)):
        if can_i(sa_api, verb, "kopf.dev/clusterkopfpeerings", name=name):
            allowed.append((verb, f"clusterkopfpeerings/{name}"))
    assert not allowed, f"the chart grants more than the operator needs: {allowed}"


def sa_kubectl(binaries: Any, release: Release, *args: str,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binaries.kubectl), f"--kubeconfig={release.kubeconfig}", *args],
                          input=input, capture_output=True, text=True, timeout=60)


def test_real_requests_outside_the_grants_are_forbidden(
        binaries: Any, kubectl: Any, cluster_release: Release, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment("agent")))
    kubectl("create", "secret", "generic", "someone-elses", "-n", namespace,
            "--from-literal=k=v")

    def forbidden(*args: str, input: str | None = None) -> None:
        out = sa_kubectl(binaries, cluster_release, *args, input=input)
        assert out.returncode != 0 and "forbidden" in out.stderr.lower(), (args, out.stderr)

    def allowed(*args: str) -> str:
        out = sa_kubectl(binaries, cluster_release, *args)
        assert out.returncode == 0, (args, out.stderr)
        return out.stdout

    forbidden("get", "secrets", "-n", namespace)                     # list
    forbidden("get", "configmaps", "-n", namespace)
    forbidden("get", "namespace", namespace)
    forbidden("delete", "deployment", "agent", "-n", namespace)
    forbidden("patch", "deployment", "agent", "-n", namespace, "--type=merge", "-p",
              '{"spec":{"template":{"spec":{"containers":[{"name":"a","image":"evil"}]}}}}')
    forbidden("create", "-n", namespace, "-f", "-",
              input=json.dumps(queue("not-mine")))
    forbidden("create", "clusterrolebinding", "escalate", "--clusterrole=cluster-admin",
              f"--serviceaccount={cluster_release.namespace}:{cluster_release.service_account}")
    # ...while the operator's own moves go through.
    allowed("get", "secret", "someone-elses", "-n", namespace)
    allowed("scale", "deployment", "agent", "-n", namespace, "--replicas=2")
    allowed("create", "secret", "generic", "made-by-operator", "-n", namespace,
            "--from-literal=k=v")
    assert get_obj(kubectl, "deployment", "agent", namespace)["spec"]["replicas"] == 2  # type: ignore[index]


# --- the real operator as the ServiceAccount -----------------------------------------------------

def deployment(name: str, replicas: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "a", "image": "agent:1"}]}}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": spec}


def queue(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentqueue.io/v1alpha1", "kind": "AgentQueue",
            "metadata": {"name": name, "labels": {"tier": "rbac"}}, "spec": spec}


def workload(namespace: str, prefix: str) -> list[dict[str, Any]]:
    """A queue with users, a group scaling a Deployment, and a retention policy."""
    return [
        queue(f"{prefix}q", partitions=2, access={
            "producers": [{"name": "intake"}], "consumers": [{"name": "worker"}]}),
        deployment(f"{prefix}worker"),
        {"apiVersion": "agentqueue.io/v1alpha1", "kind": "ConsumerGroup",
         "metadata": {"name": f"{prefix}g"},
         "spec": {"queueRef": {"name": f"{prefix}q"},
                  "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": f"{prefix}worker"},
                  "scaling": {"minReplicas": 1, "maxReplicas": 3}}},
        {"apiVersion": "agentqueue.io/v1alpha1", "kind": "RetentionPolicy",
         "metadata": {"name": f"{prefix}p"},
         "spec": {"selector": {"matchLabels": {"tier": "rbac"}}, "maxLength": 1000}},
    ]


def start_operator(release: Release, tmp_path: Path, pod: str,
                   liveness_port: int | None = None) -> OperatorProcess:
    env = dict(release.env, POD_ID=pod)
    op = OperatorProcess(release.kubeconfig, env, tmp_path / f"{pod}.log",
                         release.operator_args(liveness_port))
    op.start()
    return op


def log_records(op: OperatorProcess) -> list[dict[str, Any]]:
    out = []
    for line in op.log_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def handled(op: OperatorProcess, namespace: str, name: str) -> bool:
    """The operator's own log shows it handled this object."""
    for record in log_records(op):
        obj = record.get("object") or {}
        if obj.get("namespace") == namespace and obj.get("name") == name and \
                "succeeded" in str(record.get("message", "")):
            return True
    return False


def rbac_denials(op: OperatorProcess, namespace: str | None = None) -> list[str]:
    """Log lines showing the apiserver refused the operator for lack of permission: the
    apiserver's RBAC message ("User ... cannot <verb> resource ..."), kopf's "Not enough
    permissions", or a Forbidden about an object of `namespace`. (Other namespaces of the
    shared test cluster may be terminating, which is refused as Forbidden too.)"""
    return [line for line in op.log_text().splitlines() if is_denial(line, namespace)]


# A 403 as a status code ("code": 403, 403 Forbidden, (403)), not any 403 in a line: a
# debug line quoting a patch's resourceVersion '403' was once counted as a denial.
_STATUS_403 = re.compile(r"[Ff]orbidden|\bcode\W{0,3}:\s*403\b|\b403 Forbidden|\(403\)")


def is_denial(line: str, namespace: str | None) -> bool:
    if "being terminated" in line:
        return False
    try:
        record = json.loads(line)
    except ValueError:
        record = {}
    obj = record.get("object") if isinstance(record, dict) else None
    ours = bool(namespace) and isinstance(obj, dict) and obj.get("namespace") == namespace
    return bool(re.search(r"cannot \w+ resource", line) or "Not enough permissions" in line
                or (ours and _STATUS_403.search(line)))


@pytest.mark.parametrize(("message", "denied"), [
    ("JSON-patching the resource with: [{'op': 'test', 'path': '/metadata/resourceVersion', "
     "'value': '403'}]", False),
    ("APIForbiddenError('agentqueues is forbidden', {'code': 403})", True),
    ('Patching failed: {"kind": "Status", "code": 403}', True),
    ("Request failed: 403 Forbidden", True),
    ("HTTP error (403) on patch", True),
    ("patched status of 403 partitions", False),
])
def test_a_denial_is_told_from_a_403_in_other_words(message: str, denied: bool) -> None:
    line = json.dumps({"message": message, "object": {"namespace": "ns1"}})
    assert is_denial(line, "ns1") is denied
    assert is_denial(line, "ns2") is False  # another namespace's: not ours to judge


def assert_never_forbidden(op: OperatorProcess, namespace: str | None = None) -> None:
    denials = rbac_denials(op, namespace)
    assert not denials, "refused by RBAC:\n" + "\n".join(denials[:10])


def test_operator_works_cluster_wide_with_the_chart_rbac(
        cluster_release: Release, kubectl: Any, namespace: str, tmp_path: Path) -> None:
    liveness = free_port()
    op = start_operator(cluster_release, tmp_path, f"{cluster_release.fullname}-0", liveness)
    try:
        manifests = workload(namespace, "c")
        kubectl("apply", "-n", namespace, "-f", "-",
                input=yaml.safe_dump_all(manifests))
        wait_ready(kubectl, "agentqueues", "cq", namespace, timeout=60)
        wait_ready(kubectl, "consumergroups", "cg", namespace, timeout=60)
        wait_ready(kubectl, "retentionpolicies", "cp", namespace, timeout=60)
        for name in ("cq", "cg", "cp"):
            wait_for(functools.partial(handled, op, namespace, name), timeout=30,
                     what=f"{name} handled by this operator")
        secret = get_obj(kubectl, "secret", "cq.intake", namespace)
        assert secret and secret["metadata"]["ownerReferences"][0]["kind"] == "AgentQueue"
        # /scale: minReplicas 1 lifts the worker from 0.
        wait_for(lambda: (get_obj(kubectl, "deployment", "cworker", namespace) or {})
                 .get("spec", {}).get("replicas") == 1, timeout=60, what="scaled to 1")
        # The chart's probe path answers.
        with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=5) as r:
            assert r.status == 200
        # Nothing the operator wrote makes the manifests differ (Argo CD's view).
        diff = kubectl("diff", "-n", namespace, "-f", "-",
                       input=yaml.safe_dump_all(manifests), check=False)
        assert diff.returncode == 0, diff.stdout + diff.stderr
        # Deleting: the finalizers run with the chart's grants too (group before queue).
        for plural, name in (("consumergroups", "cg"), ("retentionpolicies", "cp"),
                             ("agentqueues", "cq")):
            kubectl("delete", plural, name, "-n", namespace, "--timeout=60s")
        assert_never_forbidden(op, namespace)
    finally:
        op.stop()


def test_denials_are_detected_without_the_chart_rbac(
        cluster_release: Release, control_plane: Any, kubectl: Any, namespace: str,
        tmp_path: Path) -> None:
    """Negative control: the same operator as an identity without the chart's bindings is
    refused, and rbac_denials() sees it (so the checks above are not vacuous)."""
    nobody = control_plane.kubeconfig_for(
        f"system:serviceaccount:{cluster_release.namespace}:nobody",
        ["system:serviceaccounts", f"system:serviceaccounts:{cluster_release.namespace}",
         "system:authenticated"])
    stranger = Release(**{**vars(cluster_release), "kubeconfig": nobody})
    op = start_operator(stranger, tmp_path, "nobody-0")
    try:
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(queue("x")))
        wait_for(lambda: rbac_denials(op, namespace), timeout=30, what="a refusal")
    finally:
        op.kill()  # it only retries refused calls; no need for a clean stop


@pytest.fixture(scope="module")
def namespaced_release(binaries: Any, kubectl: Any, control_plane: Any, kubeconfig: Path,
                       crds_installed: None, operator_redis: Any) -> Iterator[
                           tuple[Release, str, str]]:
    watched, other = (f"aq-watched-{uuid.uuid4().hex[:6]}", f"aq-other-{uuid.uuid4().hex[:6]}")
    for ns in (watched, other):
        kubectl("create", "namespace", ns)
    release = install(binaries, kubectl, control_plane, kubeconfig, operator_redis,
                      f"json:watch.namespaces={json.dumps([watched])}", "replicaCount=1")
    yield release, watched, other
    uninstall(binaries, kubectl, kubeconfig, release)
    for ns in (watched, other):
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_namespaced_mode_grants_only_the_watched_namespaces(
        namespaced_release: tuple[Release, str, str]) -> None:
    release, watched, other = namespaced_release
    api = config.new_client_from_config(config_file=str(release.kubeconfig))
    try:
        missing = [(v, r) for v, r in NAMESPACED_GRANTS if not can_i(api, v, r, watched)]
        assert not missing, missing
        leaked = [(v, r) for v, r in NAMESPACED_GRANTS if can_i(api, v, r, other)]
        assert not leaked, f"granted outside the watched namespace: {leaked}"
        assert not can_i(api, "list", "agentqueue.io/agentqueues")  # all namespaces
        assert all(can_i(api, v, r) for v, r in CLUSTER_GRANTS)
        assert can_i(api, "patch", "kopf.dev/kopfpeerings", watched, release.peering)
        assert not can_i(api, "patch", "kopf.dev/kopfpeerings", other, release.peering)
        assert not can_i(api, "list", "kopf.dev/clusterkopfpeerings")
    finally:
        api.close()


def test_operator_works_namespaced_with_the_chart_rbac(
        namespaced_release: tuple[Release, str, str], kubectl: Any, tmp_path: Path) -> None:
    release, watched, other = namespaced_release
    assert f"--namespace={watched}" in release.operator_args()
    op = start_operator(release, tmp_path, f"{release.fullname}-0")
    try:
        kubectl("apply", "-n", watched, "-f", "-",
                input=yaml.safe_dump_all(workload(watched, "n")))
        kubectl("apply", "-n", other, "-f", "-", input=json.dumps(queue("ignored")))
        wait_ready(kubectl, "agentqueues", "nq", watched, timeout=60)
        wait_ready(kubectl, "consumergroups", "ng", watched, timeout=60)
        wait_ready(kubectl, "retentionpolicies", "np", watched, timeout=60)
        wait_for(lambda: handled(op, watched, "nq"), timeout=30, what="nq handled")
        time.sleep(2)
        assert not any((r.get("object") or {}).get("namespace") == other
                       for r in log_records(op)), "touched a namespace it does not watch"
        assert_never_forbidden(op, watched)
    finally:
        op.stop()


# --- HA: two replicas, one active ----------------------------------------------------------------

def peers(kubectl: Any, name: str) -> dict[str, Any]:
    obj = get_obj(kubectl, "clusterkopfpeerings.kopf.dev", name, "") or {}
    return dict(obj.get("status") or {})


def test_two_replicas_one_active_and_failover(cluster_release: Release, kubectl: Any,
                                              namespace: str, tmp_path: Path) -> None:
    """The chart's default: 2 replicas with kopf peering. Exactly one replica works; when
    it stops, the standby takes over."""
    peering = cluster_release.peering
    assert peering and cluster_release.deployment["spec"]["replicas"] == 2
    pods = [f"{cluster_release.fullname}-{uuid.uuid4().hex[:5]}" for _ in range(2)]
    ops = [start_operator(cluster_release, tmp_path, pod) for pod in pods]
    try:
        wait_for(lambda: set(pods) <= set(peers(kubectl, peering)), timeout=60,
                 what="both replicas in the peering object")

        def paused(op: OperatorProcess) -> bool:
            # A replica that already sees a higher-priority peer when it starts opens its
            # watch-streams paused and never logs the "Pausing" toggle.
            text = op.log_text()
            return "Pausing operations in favour of" in text or (
                "cluster-wide (paused)" in text and "Resuming operations" not in text)

        def conflicting(op: OperatorProcess) -> bool:
            return "Possibly conflicting operators with the same priority" in op.log_text()

        wait_for(lambda: any(paused(op) or conflicting(op) for op in ops), timeout=90,
                 what="the replicas to settle who is active")
        time.sleep(2)
        assert not any(conflicting(op) for op in ops), (
            "both replicas run with the same kopf peering priority, so kopf pauses all of "
            "them and no replica is active: the operator must give each replica a distinct "
            "priority (e.g. a random one when --peering is set)")
        standby = [op for op in ops if paused(op)]
        assert len(standby) == 1, "exactly one replica must stand by"
        active = next(op for op in ops if op is not standby[0])

        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(queue("ha1")))
        wait_ready(kubectl, "agentqueues", "ha1", namespace, timeout=60)
        wait_for(lambda: handled(active, namespace, "ha1"), timeout=30, what="active handles")
        assert not handled(standby[0], namespace, "ha1"), "the standby worked too"

        active.stop()  # a clean stop leaves the peering at once
        wait_for(lambda: "Resuming operations" in standby[0].log_text(), timeout=90,
                 what="the standby takes over")
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(queue("ha2")))
        wait_ready(kubectl, "agentqueues", "ha2", namespace, timeout=60)
        wait_for(lambda: handled(standby[0], namespace, "ha2"), timeout=30,
                 what="the former standby handles new queues")
        for op in ops:
            assert_never_forbidden(op, namespace)
    finally:
        for op in ops:
            op.stop()
