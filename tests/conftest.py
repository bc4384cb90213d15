"""Shared fixtures: one local Kubernetes control plane per test session.

Set AGENTQUEUE_KUBECONFIG to run the k8s tests against an existing cluster instead.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from agentqueue_devtools import (
    Binaries,
    ControlPlane,
    ExistingCluster,
    Kubectl,
    ensure_binaries,
)

EXTERNAL_KUBECONFIG_ENV = "AGENTQUEUE_KUBECONFIG"

pytest_plugins = ["tests.redis_fixtures", "tests.operator_fixtures"]


def _progress(msg: str) -> None:
    # Bypass pytest's capture: a first-time build takes minutes and should be visible.
    print(f"[devcluster] {msg}", file=sys.__stderr__, flush=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "k8s: needs the local Kubernetes control plane")


# `make test` runs two pytest-xdist workers: most tests wait on servers, not on the CPU.
# A module's tests stay on one worker (its module fixtures, e.g. an operator or a control
# plane of its own, start once), and the modules that change the machine itself (the node
# with its bridge, iptables and mounts; network namespaces; image builds; dev stacks) form
# one unit, so they never run beside each other. (xdist's own `loadgroup` marks do not
# work with pytest 9.2, which no longer reads the node id xdist rewrites.)
MACHINE_MODULES = frozenset({
    "test_node", "test_e2e_pods", "test_images", "test_dev_stack", "test_drills_network",
})


def scope_of(nodeid: str) -> str:
    """The xdist work unit of a test: its module, or "machine" for the modules above."""
    module = nodeid.split("::", 1)[0]
    return "machine" if Path(module).stem in MACHINE_MODULES else module


def module_scheduling() -> type:
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            # The machine unit is the longest (~6 min, the node's e2e suite): first, so the
            # other worker works through the rest meanwhile instead of waiting for it last.
            # (Only the queue is reordered: the indices sent to a worker are positions in
            # that worker's own collection, which must stay as the worker collected it.)
            if "machine" in self.workqueue:
                self.workqueue.move_to_end("machine", last=False)
            super()._assign_work_unit(node)

    return ModuleScheduling


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    return module_scheduling()(config, log)


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    """Pinned etcd/kube-apiserver/kube-controller-manager/kubectl/helm (cached)."""
    return ensure_binaries(_progress)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory,
                  binaries: Binaries) -> Iterator[ControlPlane | ExistingCluster]:
    external = os.environ.get(EXTERNAL_KUBECONFIG_ENV)
    if external:
        yield ExistingCluster(Path(external))
        return
    with ControlPlane(tmp_path_factory.mktemp("devcluster"), binaries, _progress) as cp:
        yield cp


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane | ExistingCluster) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def kube(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="session")
def kubectl(binaries: Binaries, kubeconfig: Path) -> Kubectl:
    """``kubectl(*args, input=None, check=True) -> CompletedProcess`` for the test cluster."""
    return Kubectl(binaries.kubectl, kubeconfig)


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    core = client.CoreV1Api(kube)
    name = f"aq-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    try:
        core.delete_namespace(name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
