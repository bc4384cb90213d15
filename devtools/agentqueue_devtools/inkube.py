"""What `agentqueue dev up` runs inside the local node: Redis as a user would run it (a pod
behind a Service, reached by its Service name) and the operator from the Helm chart.

Pure builders (manifests, helm arguments) are kept apart from the calls that apply them,
so tests can check what a user gets without a cluster.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RELEASE = "agentqueue"
RELEASE_NAMESPACE = "agentqueue-system"
REDIS_NAME = "redis"
REDIS_ADMIN_SECRET = "redis-admin"
REDIS_ADMIN_USER = "aq-admin"
REDIS_PORT = 6379
CHART = Path(__file__).resolve().parents[2] / "charts" / "agentqueue-operator"

Progress = Callable[[str], None]


def redis_service_url(namespace: str = RELEASE_NAMESPACE) -> str:
    """The URL the operator and the agents use: the Service's cluster DNS name. Fully
    qualified, because agents in other namespaces get it in their credentials Secrets."""
    return f"redis://{REDIS_NAME}.{namespace}.svc.cluster.local:{REDIS_PORT}/0"


def acl_file(password: str) -> str:
    """Redis ACL file: `default` off, one admin known only by its password's SHA-256 (the
    password itself is in no file, argument or environment variable of the pod)."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return (f"user default off\n"
            f"user {REDIS_ADMIN_USER} on #{digest} ~* &* +@all\n")


def redis_manifests(password: str, image: str,
                    namespace: str = RELEASE_NAMESPACE) -> list[dict[str, Any]]:
    """Secret (the operator's admin connection + the ACL file), Service and Deployment.

    Not for production: one pod, no persistence (a restart loses data and ACL users, the
    failure the operator repairs), restricted security context like any tenant workload.
    """
    labels = {"app.kubernetes.io/name": REDIS_NAME, "app.kubernetes.io/part-of": "agentqueue-dev"}
    secret = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": REDIS_ADMIN_SECRET, "namespace": namespace, "labels": labels},
        "stringData": {"url": redis_service_url(namespace), "username": REDIS_ADMIN_USER,
                       "password": password, "users.acl": acl_file(password)},
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": REDIS_NAME, "namespace": namespace, "labels": labels},
        "spec": {"selector": {"app.kubernetes.io/name": REDIS_NAME},
                 "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis"}]},
    }
    container = {
        "name": "redis", "image": image, "imagePullPolicy": "IfNotPresent",
        "args": ["--port", str(REDIS_PORT), "--bind", "0.0.0.0", "--protected-mode", "no",
                 "--aclfile", "/etc/redis-acl/users.acl", "--save", "", "--appendonly", "no",
                 "--dir", "/data"],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 1},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                      "limits": {"memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"},
                         {"name": "acl", "mountPath": "/etc/redis-acl", "readOnly": True}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": REDIS_NAME, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1, "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": REDIS_NAME}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 999,
                                        "runAsGroup": 999, "fsGroup": 999},
                    "containers": [container],
                    "volumes": [{"name": "data", "emptyDir": {}},
                                {"name": "acl", "secret": {
                                    "secretName": REDIS_ADMIN_SECRET, "defaultMode": 0o440,
                                    "items": [{"key": "users.acl", "path": "users.acl"}]}}],
                },
            },
        },
    }
    return [secret, service, deployment]


@dataclass(frozen=True)
class OperatorImage:
    repository: str
    tag: str


def helm_install_args(image: OperatorImage, *, namespace: str = RELEASE_NAMESPACE,
                      drift_interval: str = "10s", replicas: int = 1,
                      extra_sets: Sequence[str] = ()) -> list[str]:
    """`helm upgrade --install` for the local node: the locally built image (never pulled:
    no registry), the in-cluster Redis, one replica (a dev stack needs no standby)."""
    sets = [
        f"image.repository={image.repository}", f"image.tag={image.tag}",
        "image.pullPolicy=Never", f"replicaCount={replicas}",
        f"redis.existingSecret.name={REDIS_ADMIN_SECRET}",
        f"operator.driftInterval={drift_interval}", "operator.logFormat=text",
        *extra_sets,
    ]
    args = ["upgrade", "--install", RELEASE, str(CHART), "--namespace", namespace,
            "--create-namespace", "--skip-crds", "--wait", "--timeout", "300s"]
    for s in sets:
        args += ["--set", s]
    return args


def new_password() -> str:
    return secrets.token_urlsafe(24)


# --- applying (needs kubectl / helm) ----------------------------------------------------------

def kubectl_apply(kubectl: Sequence[str], objects: Sequence[dict[str, Any]]) -> None:
    """Server-side apply; the manifests (with the password) go through stdin, never argv."""
    doc = "\n".join(json.dumps(o) for o in objects)
    got = subprocess.run([*kubectl, "apply", "--server-side", "--force-conflicts",
                          "--field-manager=agentqueue-dev", "-f", "-"], input=doc, text=True,
                         capture_output=True)
    if got.returncode != 0:
        raise RuntimeError(f"kubectl apply failed: {got.stderr.strip()}")


def cluster_ip(kubectl: Sequence[str], namespace: str, service: str) -> str:
    out = subprocess.run([*kubectl, "-n", namespace, "get", "service", service, "-o",
                          "jsonpath={.spec.clusterIP}"], check=True, capture_output=True,
                         text=True).stdout.strip()
    if not out:
        raise RuntimeError(f"service {namespace}/{service} has no cluster IP")
    return out


def host_redis_url(kubectl: Sequence[str], password: str,
                   namespace: str = RELEASE_NAMESPACE) -> str:
    """The admin URL as the host reaches it: the Service's cluster IP (kube-proxy's rules
    route the host's own connections too; the host does not resolve cluster DNS)."""
    ip = cluster_ip(kubectl, namespace, REDIS_NAME)
    return f"redis://{REDIS_ADMIN_USER}:{password}@{ip}:{REDIS_PORT}/0"
