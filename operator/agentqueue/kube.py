"""The Kubernetes gateway: Secrets, custom-object status, the /scale subresource, and
the autoscalers we must not fight. The official client is synchronous, so every call
runs in a worker thread; errors are classified once, here."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import contextvars
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError
from urllib3.exceptions import HTTPError

from . import GROUP, VERSION

T = TypeVar("T")
MANAGED_BY = "agentqueue-operator"
API_THREADS = 24
"""Kubernetes API calls in flight at most (the client is synchronous: one thread each;
lifecycle.startup sizes the client's connection pool to match)."""


class KubeError(Exception):
    """Base of the classified Kubernetes errors."""


class KubeUnavailable(KubeError):
    """Transient: the apiserver is unreachable, overloaded or answered a conflict."""


class KubeNotFound(KubeError):
    """The object does not exist."""


class KubeForbidden(KubeError):
    """RBAC denies the call: a deployment problem, not a transient one."""


def _classify(exc: ApiException | HTTPError) -> KubeError:
    if isinstance(exc, HTTPError):
        return KubeUnavailable(f"apiserver unreachable: {type(exc).__name__}")
    status = exc.status or 0
    reason = exc.reason or ""
    if status == 404:
        return KubeNotFound(reason)
    if status == 403:
        return KubeForbidden(f"forbidden: {reason}")
    if status in (409, 429) or status >= 500:
        return KubeUnavailable(f"apiserver answered {status} {reason}")
    return KubeError(f"apiserver answered {status} {reason}")


@dataclass(frozen=True)
class ScaleInfo:
    replicas: int
    status_replicas: int


def standard_labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "agentqueue",
        # Not app.kubernetes.io/instance: Argo CD tracks by that label, and a queue named
        # like an Application would make Argo CD prune the operator's Secrets.
        "agentqueue.io/queue": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


@dataclass(frozen=True)
class SecretRead:
    """A Secret as read: its data, and who controls it (for the conflict check)."""

    data: dict[str, bytes]
    controller_uid: str | None
    managed_by: str | None

    def owned_by(self, owner: dict[str, Any]) -> bool:
        """Created by the operator for `owner`: its controller reference and our label.
        Anything else (a Secret the tenant made, or one of another object) is not ours
        to overwrite, re-label or adopt."""
        return (self.controller_uid is not None
                and self.controller_uid == owner["metadata"].get("uid")
                and self.managed_by == MANAGED_BY)


class Unread:
    """Marks an argument the caller did not read (None means "read: absent")."""


UNREAD = Unread()


class KubeGateway:
    def __init__(self, api: k8s.ApiClient) -> None:
        self.api = api
        self.core = k8s.CoreV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)
        self.autoscaling = k8s.AutoscalingV2Api(api)
        self._dynamic: DynamicClient | None = None
        # Its own threads: the default executor has min(32, cores + 4) (6 on 2 cores),
        # which capped the operator at 6 API calls in flight when 1,000 objects came.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=API_THREADS, thread_name_prefix="kube")
        self._lock = asyncio.Lock()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            # As asyncio.to_thread does: the call runs in the caller's context (its
            # tracing span is the parent of the call's span).
            context = contextvars.copy_context()
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(context.run, fn, *args, **kwargs))
        except (ApiException, HTTPError) as exc:
            raise _classify(exc) from None

    # --- Secrets -------------------------------------------------------------------------
    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        try:
            obj = await self._call(self.core.read_namespaced_secret, name, namespace)
        except KubeNotFound:
            return None
        return {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}

    async def read_secret_owned(self, namespace: str, name: str) -> SecretRead | None:
        """The Secret with its ownership (None: absent)."""
        try:
            obj = await self._call(self.core.read_namespaced_secret, name, namespace)
        except KubeNotFound:
            return None
        meta = obj.metadata
        controller = next((ref.uid for ref in (meta.owner_references or [])
                           if ref.controller), None) if meta else None
        labels = (meta.labels or {}) if meta else {}
        return SecretRead({k: base64.b64decode(v) for k, v in (obj.data or {}).items()},
                          controller, labels.get("app.kubernetes.io/managed-by"))

    async def apply_secret(
        self,
        namespace: str,
        name: str,
        data: dict[str, str],
        owner: dict[str, Any],
        labels: dict[str, str],
        *,
        current: dict[str, bytes] | None | Unread = UNREAD,
    ) -> bool:
        """Create or update an owned Secret; returns True when something was written.

        `current`: the Secret's data as the caller just read it (None: absent), to spare
        a second GET."""
        if isinstance(current, Unread):
            current = await self.read_secret(namespace, name)
        wanted = {k: v.encode() for k, v in data.items()}
        if current == wanted:
            return False
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "ownerReferences": [owner_reference(owner)],
            },
            "stringData": data,
        }
        if current is None:
            await self._call(self.core.create_namespaced_secret, namespace, body)
        else:
            # Replace, not patch: keys the operator no longer writes must go.
            body["data"] = {}
            await self._call(self.core.replace_namespaced_secret, name, namespace, body)
        return True

    async def delete_secret(self, namespace: str, name: str) -> None:
        with contextlib.suppress(KubeNotFound):
            await self._call(self.core.delete_namespaced_secret, name, namespace)

    # --- custom objects ------------------------------------------------------------------
    async def patch_status(self, plural: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        """Merge-patch status (lists such as conditions are replaced whole)."""
        await self._call(self.custom.patch_namespaced_custom_object_status,
                         GROUP, VERSION, namespace, plural, name, {"status": status})

    async def get_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = await self._call(self.custom.get_namespaced_custom_object,
                                   GROUP, VERSION, namespace, plural, name)
        except KubeNotFound:
            return None
        return cast(dict[str, Any], obj)

    async def list_objects(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        out = cast(dict[str, Any], await self._call(self.custom.list_namespaced_custom_object,
                                                    GROUP, VERSION, namespace, plural))
        return list(out.get("items", []))

    # --- /scale --------------------------------------------------------------------------
    async def _scale_resource(self, api_version: str, kind: str) -> Any:
        async with self._lock:
            if self._dynamic is None:
                self._dynamic = await self._call(DynamicClient, self.api)
        try:
            resource = await asyncio.to_thread(
                self._dynamic.resources.get, api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            raise KubeNotFound(f"no API serves {kind} in {api_version}") from None
        scale = resource.subresources.get("scale")
        if scale is None:
            raise KubeNotFound(f"{kind} in {api_version} has no /scale subresource")
        return scale

    async def get_scale(self, api_version: str, kind: str, namespace: str,
                        name: str) -> ScaleInfo:
        scale = await self._scale_resource(api_version, kind)
        assert self._dynamic is not None
        obj = await self._call(self._dynamic.get, scale, name=name, namespace=namespace)
        return ScaleInfo(int(obj.spec.replicas or 0), int(obj.status.replicas or 0))

    async def set_scale(self, api_version: str, kind: str, namespace: str, name: str,
                        replicas: int) -> None:
        """Patch only /scale: the operator never writes the workload's spec otherwise."""
        scale = await self._scale_resource(api_version, kind)
        assert self._dynamic is not None
        await self._call(self._dynamic.patch, scale, name=name, namespace=namespace,
                         body={"spec": {"replicas": replicas}},
                         content_type="application/merge-patch+json")

    async def workload_controller(self, api_version: str, kind: str, namespace: str,
                                  name: str) -> str | None:
        """`Kind/name` of the controller that owns the workload (an ownerReference with
        controller: true), if any: it would undo our /scale writes or fight them."""
        async with self._lock:
            if self._dynamic is None:
                self._dynamic = await self._call(DynamicClient, self.api)
        try:
            resource = await asyncio.to_thread(
                self._dynamic.resources.get, api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            raise KubeNotFound(f"no API serves {kind} in {api_version}") from None
        try:
            obj = await self._call(self._dynamic.get, resource, name=name, namespace=namespace)
        except (KubeNotFound, KubeForbidden):
            # Absent, or RBAC grants only its /scale (extraScaleTargets): cannot tell.
            return None
        data = cast(dict[str, Any], obj.to_dict())
        for ref in ((data.get("metadata") or {}).get("ownerReferences") or []):
            if ref.get("controller"):
                return f"{ref.get('kind')}/{ref.get('name')}"
        return None

    async def competing_autoscaler(self, namespace: str, api_version: str, kind: str,
                                   name: str) -> str | None:
        """Name of an HPA or KEDA ScaledObject already scaling this workload, if any."""
        hpas = await self._call(self.autoscaling.list_namespaced_horizontal_pod_autoscaler,
                                namespace)
        for hpa in hpas.items:
            ref = hpa.spec.scale_target_ref
            if ref.kind == kind and ref.name == name:
                return f"HorizontalPodAutoscaler/{hpa.metadata.name if hpa.metadata else '?'}"
        try:
            scaled = cast(dict[str, Any], await self._call(
                self.custom.list_namespaced_custom_object,
                "keda.sh", "v1alpha1", namespace, "scaledobjects"))
        except KubeNotFound:
            return None
        for obj in scaled.get("items", []):
            ref = obj.get("spec", {}).get("scaleTargetRef", {})
            if ref.get("name") == name and ref.get("kind", "Deployment") == kind:
                return f"ScaledObject/{obj['metadata']['name']}"
        return None


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
