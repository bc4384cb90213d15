"""The local control plane behaves like a real cluster where the operator relies on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kubernetes import client

import agentqueue
from agentqueue_devtools import (
    Binaries,
    ControlPlane,
    ExistingCluster,
    Kubectl,
    certs,
    wait_until,
)
from agentqueue_devtools.binaries import K8S_VERSION


def _gone(read: object) -> bool:
    """True once `read()` answers 404."""
    try:
        read()  # type: ignore[operator]
    except client.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _configmap(name: str, owner: client.V1ConfigMap | None = None) -> client.V1ConfigMap:
    refs = None
    if owner is not None:
        meta = owner.metadata
        assert meta is not None and meta.name and meta.uid
        refs = [client.V1OwnerReference(api_version="v1", kind="ConfigMap",
                                        name=meta.name, uid=meta.uid)]
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, owner_references=refs),
                              data={"k": "v"})


@pytest.mark.k8s
def test_apiserver_reports_pinned_version(kubectl: Kubectl) -> None:
    out = json.loads(kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == f"v{K8S_VERSION}"
    assert out["clientVersion"]["gitVersion"].startswith("v1.34.")


def test_helm_runs(binaries: Binaries) -> None:
    out = subprocess.run([str(binaries.helm), "version", "--short"], check=True,
                         capture_output=True, text=True).stdout
    assert out.startswith("v")


@pytest.mark.k8s
def test_helm_reaches_cluster(binaries: Binaries, kubeconfig: Path) -> None:
    subprocess.run([str(binaries.helm), "list", "--all-namespaces", f"--kubeconfig={kubeconfig}"],
                   check=True, capture_output=True, text=True)


@pytest.mark.k8s
def test_namespace_deletion_completes(kubectl: Kubectl, kube: client.ApiClient) -> None:
    name = f"aq-ns-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    kubectl("create", "configmap", "payload", "-n", name, "--from-literal=a=b")
    # --wait blocks until the namespace controller has emptied and finalized it.
    kubectl("delete", "namespace", name, "--wait=true", "--timeout=90s")
    assert _gone(lambda: client.CoreV1Api(kube).read_namespace(name))


@pytest.mark.k8s
def test_owner_reference_garbage_collection(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, _configmap("owner"))
    core.create_namespaced_config_map(namespace, _configmap("dependent", owner))
    core.delete_namespaced_config_map("owner", namespace)
    wait_until(lambda: _gone(lambda: core.read_namespaced_config_map("dependent", namespace)),
               timeout=90, message="garbage collection of the dependent ConfigMap")


@pytest.mark.k8s
def test_client_cert_user_is_subject_to_rbac(control_plane: ControlPlane | ExistingCluster,
                                             binaries: Binaries, kubectl: Kubectl,
                                             namespace: str) -> None:
    if isinstance(control_plane, ExistingCluster):
        pytest.skip("needs the local control plane's CA")
    user = f"system:serviceaccount:{namespace}:operator"
    sa_kubectl = Kubectl(binaries.kubectl, control_plane.kubeconfig_for(
        user, ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]))
    assert sa_kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"
                      ).stdout == user
    denied = sa_kubectl("get", "configmaps", "-n", namespace, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr
    kubectl("create", "rolebinding", "view", "-n", namespace, "--clusterrole=view",
            f"--serviceaccount={namespace}:operator")
    wait_until(lambda: sa_kubectl("get", "configmaps", "-n", namespace, check=False
                                  ).returncode == 0, timeout=30, message="RBAC grant")


def test_serviceaccount_user_names_are_file_safe() -> None:
    assert certs.safe_filename("system:serviceaccount:ns:sa") == "system_serviceaccount_ns_sa"


@pytest.mark.k8s
def test_detached_cluster_is_stopped_by_another_process(tmp_path: Path,
                                                        binaries: Binaries) -> None:
    """What `agentqueue dev up` / `dev down` do: start detached, later load state and stop."""
    state_dir = tmp_path / "cluster"
    env = {**os.environ, "PYTHONPATH": str(Path(agentqueue.__file__).parents[1])}
    starter = ("import sys; from pathlib import Path; from agentqueue_devtools import "
               "ControlPlane; ControlPlane(Path(sys.argv[1])).start(detach=True, "
               "wait_for_controllers=False)")
    subprocess.run([sys.executable, "-c", starter, str(state_dir)], check=True, env=env,
                   timeout=120)
    cp = ControlPlane.load(state_dir)
    try:
        assert cp.is_running()
        pids = [p["pid"] for p in json.loads((state_dir / "state.json").read_text())["processes"]]
        Kubectl(binaries.kubectl, cp.kubeconfig)("get", "namespace", "default")
    finally:
        cp.stop()
    assert not cp.is_running()
    assert not (state_dir / "state.json").exists()
    # Orphans are reaped by PID 1 at its own pace; a zombie counts as stopped.
    assert not any(_running(pid) for pid in pids)
