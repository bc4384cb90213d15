"""Docker-free local Kubernetes (etcd + kube-apiserver + kube-controller-manager).

Used by the test suite and by ``agentqueue dev up``. Binaries are pinned and
cached under ``~/.cache/agentqueue`` (see `binaries`).
"""

from .binaries import Binaries, ensure_binaries
from .certs import CertPair, ClusterPKI, ensure_pki, issue_client_cert
from .controlplane import ControlPlane, ControlPlaneError, ExistingCluster, Kubectl, wait_until

__all__ = [
    "Binaries",
    "CertPair",
    "ClusterPKI",
    "ControlPlane",
    "ControlPlaneError",
    "ExistingCluster",
    "Kubectl",
    "ensure_binaries",
    "ensure_pki",
    "issue_client_cert",
    "wait_until",
]
