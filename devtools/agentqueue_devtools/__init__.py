"""Docker-free local Kubernetes (etcd + kube-apiserver + kube-controller-manager).

Used by the test suite and by ``agentqueue dev up``. Binaries are pinned and
cached under ``~/.cache/agentqueue`` (see `binaries`). Where the machine allows it
(`node_unavailable_reason` is None), a real node runs pods beside it (see `node`).
"""

from .binaries import Binaries, NodeBinaries, ensure_binaries, ensure_node_binaries
from .certs import CertPair, ClusterPKI, ensure_pki, issue_client_cert
from .controlplane import ControlPlane, ControlPlaneError, ExistingCluster, Kubectl, wait_until
from .node import Node, NodeError, cleanup_leftovers, node_unavailable_reason
from .pause import PAUSE_IMAGE, ensure_pause_image

__all__ = [
    "Binaries",
    "CertPair",
    "ClusterPKI",
    "ControlPlane",
    "ControlPlaneError",
    "ExistingCluster",
    "Kubectl",
    "Node",
    "NodeBinaries",
    "NodeError",
    "PAUSE_IMAGE",
    "cleanup_leftovers",
    "ensure_node_binaries",
    "ensure_pause_image",
    "node_unavailable_reason",
    "ensure_binaries",
    "ensure_pki",
    "issue_client_cert",
    "wait_until",
]
