"""Shared pieces of the failure drills (tests/test_drills_*.py); no tests here.

The drills that kill or restart the operator or a control-plane component run against a
*dedicated* control plane (`Plane`), never the session one: the session `operator` is
cluster-wide, so a second operator on the same apiserver would reconcile the same
objects against another Redis. A dedicated etcd + kube-apiserver + controller manager
starts in a few seconds once the binaries are cached.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from agentqueue_devtools import Binaries, ControlPlane, Kubectl

from .operator_fixtures import OperatorProcess, condition

ROOT = Path(__file__).resolve().parents[1]
PEERING_CRDS = ROOT / "charts" / "agentqueue-operator" / "crds" / "kopf.dev_peerings.yaml"
API = "agentqueue.io/v1alpha1"


def say(msg: str) -> None:
    """Drill figures: printed (shown with -s, and in the report of a failing test)."""
    print(f"[drill] {msg}", flush=True)


class Plane:
    """A dedicated control plane with the agentqueue (and kopf peering) CRDs."""

    def __init__(self, cp: ControlPlane, binaries: Binaries) -> None:
        self.cp = cp
        self.binaries = binaries
        self.kubectl = Kubectl(binaries.kubectl, cp.kubeconfig)

    @property
    def kubeconfig(self) -> Path:
        return self.cp.kubeconfig

    def install_crds(self) -> None:
        self.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        self.kubectl("apply", "--server-side", "-f", str(PEERING_CRDS))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")

    def namespace(self, name: str) -> str:
        self.kubectl("create", "namespace", name)
        return name

    def drop_namespace(self, name: str, timeout: float = 60) -> None:
        """Delete a drill's namespace, stripping the operator's finalizers so it really
        goes (the drill's Redis goes with the test anyway): objects left behind would be
        picked up by the next drill's operator on this control plane."""
        from kubernetes import client, config

        self.kubectl("delete", "namespace", name, "--wait=false", check=False)
        api = config.new_client_from_config(config_file=str(self.kubeconfig))
        custom = client.CustomObjectsApi(api)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                left = 0
                for plural in ("consumergroups", "agentqueues", "retentionpolicies"):
                    items = custom.list_namespaced_custom_object(
                        "agentqueue.io", "v1alpha1", name, plural)["items"]
                    for obj in items:
                        left += 1
                        if obj["metadata"].get("finalizers"):
                            try:
                                custom.patch_namespaced_custom_object(
                                    "agentqueue.io", "v1alpha1", name, plural,
                                    obj["metadata"]["name"],
                                    {"metadata": {"finalizers": None}})
                            except client.ApiException as exc:
                                if exc.status != 404:
                                    raise
                if not left:
                    return
                time.sleep(0.5)
        finally:
            api.close()

    # --- one component at a time ----------------------------------------------------------
    def component(self, name: str) -> Any:
        """The running `_Process` of one component (etcd, kube-apiserver, ...)."""
        found = [p for p in self.cp._procs if p.name == name]  # noqa: SLF001
        assert found, f"no {name} in this control plane"
        return found[-1]

    def kill_component(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.component(name)
        proc.signal_group(sig)
        assert proc.wait_gone(15), f"{name} did not exit"
        self.cp._procs.remove(proc)  # noqa: SLF001

    def start_apiserver(self, timeout: float = 60.0) -> float:
        """Start kube-apiserver again on its old port and wait for /readyz; returns the
        seconds it took. ControlPlane has no public per-component restart: this uses its
        own argument builder and spawner, so the new process is owned (and stopped) by
        the ControlPlane like the original."""
        cp = self.cp
        t0 = time.monotonic()
        args = cp._apiserver_args(self.binaries, cp.pki, cp._ports["etcd"])  # noqa: SLF001
        cp._spawn("kube-apiserver", args, False)  # noqa: SLF001
        cp._wait_for("/readyz", time.monotonic() + timeout)  # noqa: SLF001
        return time.monotonic() - t0


@contextmanager
def dedicated_plane(workdir: Path, binaries: Binaries) -> Iterator[Plane]:
    if os.environ.get("AGENTQUEUE_KUBECONFIG"):
        pytest.skip("drills that kill control-plane components need the local control plane")
    with ControlPlane(workdir, binaries) as cp:
        plane = Plane(cp, binaries)
        plane.install_crds()
        yield plane


def operator_env(server: Any) -> dict[str, str]:
    """Env of an operator whose default Redis is `server` (admin credentials)."""
    return {"AGENTQUEUE_REDIS_URL": server.url,
            "AGENTQUEUE_REDIS_USERNAME": server.admin_username,
            "AGENTQUEUE_REDIS_PASSWORD": server.admin_password}


def new_operator(plane: Plane, server: Any, log: Path,
                 extra_args: list[str] | None = None) -> OperatorProcess:
    op = OperatorProcess(plane.kubeconfig, operator_env(server), log, extra_args)
    op.start()
    return op


def aq(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "AgentQueue", "metadata": {"name": name}, "spec": spec}


def cg(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ConsumerGroup", "metadata": {"name": name},
            "spec": spec}


def apply_all(kubectl: Any, namespace: str, manifests: list[dict[str, Any]]) -> None:
    """One `kubectl apply` for many objects (a List)."""
    doc = {"apiVersion": "v1", "kind": "List", "items": manifests}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc), timeout=300)


def apply_in_background(plane: Plane, namespace: str,
                        manifests: list[dict[str, Any]]) -> subprocess.Popen[str]:
    """`kubectl apply` of many objects without waiting for it (creating 100+ objects
    takes seconds; a drill acts while they arrive). Wait on the returned process."""
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
    proc = subprocess.Popen([str(plane.binaries.kubectl), f"--kubeconfig={plane.kubeconfig}",
                             "apply", "-n", namespace, "-f", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(doc)
    proc.stdin.close()
    return proc


def list_objs(kubectl: Any, plural: str, namespace: str) -> list[dict[str, Any]]:
    out = kubectl("get", plural, "-n", namespace, "-o", "json", check=False, timeout=60)
    if out.returncode != 0:
        return []
    return list(json.loads(out.stdout)["items"])


def is_ready(obj: dict[str, Any]) -> bool:
    cond = condition(obj)
    gen = obj.get("metadata", {}).get("generation")
    return bool(cond and cond["status"] == "True"
                and (obj.get("status") or {}).get("observedGeneration") == gen)


def count_ready(kubectl: Any, plural: str, namespace: str) -> int:
    return sum(1 for o in list_objs(kubectl, plural, namespace) if is_ready(o))


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last={last!r}")


def acl_users(r: redis.Redis, admin: str) -> set[str]:
    """Every ACL user but the admin and `default`."""
    return {u for u in r.acl_users() if u not in (admin, "default")}


def kopf_log_lines(text: str) -> list[dict[str, Any]]:
    """The operator's JSON log lines (others skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
