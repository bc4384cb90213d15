"""The Kubernetes gateway: Secrets, custom-object status, the /scale subresource, and
the autoscalers we must not fight. Plain HTTP on aiohttp (kopf's own client library):
the official client's generated API classes cost ~25 MB of RSS and a thread per call in
flight. Credentials come from kopf's own login functions (service account, kubeconfig);
errors are classified once, here."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

from . import GROUP, VERSION

MANAGED_BY = "agentqueue-operator"
API_CONNECTIONS = 24
"""Kubernetes API calls in flight at most (connections in the pool)."""
SCALE_CONNECTIONS = 4
"""A second, small pool for the scaling path (/scale, discovery, the autoscaler and
controller checks): a busy group's scale-up must not queue behind thousands of status
writes and Secret applies (10,000 new queues fill the main pool for minutes)."""
READ_TIMEOUT_S = 60.0
"""Most seconds between two reads of an answer (not a bound on the whole call: a call
may first wait for one of the pool's connections, which must not count, or 10,000
queues created at once time out in the queue)."""
CONNECT_TIMEOUT_S = 10.0
RELOGIN_S = 300.0
"""Credentials are read again this often (a service account's token file is rotated by
the kubelet) and at once after a 401."""
DISCOVERY_TTL_S = 300.0
MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """Base of the classified Kubernetes errors."""


class KubeUnavailable(KubeError):
    """Transient: the apiserver is unreachable, overloaded or answered a conflict."""


class KubeNotFound(KubeError):
    """The object does not exist."""


class KubeForbidden(KubeError):
    """RBAC denies the call: a deployment problem, not a transient one."""


def _classify(status: int, reason: str) -> KubeError:
    if status == 404:
        return KubeNotFound(reason)
    if status == 403:
        return KubeForbidden(f"forbidden: {reason}")
    if status in (409, 429) or status >= 500:
        return KubeUnavailable(f"apiserver answered {status} {reason}")
    return KubeError(f"apiserver answered {status} {reason}")


def login() -> kopf.ConnectionInfo:
    """The operator's credentials: in a pod its service account (the apiserver by the
    KUBERNETES_SERVICE_HOST/PORT the kubelet sets, as the official client does), else
    the kubeconfig (KUBECONFIG or ~/.kube/config), else what the official client makes
    of it (exec plugins, auth providers) when it is installed."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings)
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
        "KUBERNETES_SERVICE_PORT")
    if info is not None and host and port:
        host = f"[{host}]" if ":" in host else host
        return kopf.ConnectionInfo(server=f"https://{host}:{port}", ca_path=info.ca_path,
                                   token=info.token,
                                   default_namespace=info.default_namespace)
    if info is None:
        with contextlib.suppress(Exception):
            info = kopf.login_with_kubeconfig(settings=settings)
    if info is None or not (info.token or info.certificate_data or info.certificate_path
                            or info.username):
        try:
            client_info = kopf.login_via_client(logger=logging.getLogger("agentqueue.kube"),
                                                settings=settings)
        except Exception:  # noqa: BLE001 - not installed, or nothing to log in with
            client_info = None
        info = client_info or info
    if info is None:
        raise KubeError("no Kubernetes credentials: neither a service account nor a "
                        "kubeconfig (KUBECONFIG, ~/.kube/config)")
    return info


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
    def __init__(self, info: kopf.ConnectionInfo,
                 relogin: Callable[[], kopf.ConnectionInfo] | None = None) -> None:
        self.info = info
        self.server = info.server.rstrip("/")
        self._relogin = relogin
        self._logged_in = time.monotonic()
        self._session: aiohttp.ClientSession | None = None
        self._scale_session: aiohttp.ClientSession | None = None
        self._discovery: dict[str, tuple[float, dict[str, dict[str, Any]] | None]] = {}

    def _open(self, scaling: bool = False) -> aiohttp.ClientSession:
        session = self._scale_session if scaling else self._session
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=SCALE_CONNECTIONS if scaling else API_CONNECTIONS,
                    ssl=self.info.as_ssl_context()),
                headers=self.info.as_http_headers(),
                timeout=aiohttp.ClientTimeout(total=None, connect=None,
                                              sock_connect=CONNECT_TIMEOUT_S,
                                              sock_read=READ_TIMEOUT_S),
                trust_env=self.info.trust_env)
            if scaling:
                self._scale_session = session
            else:
                self._session = session
        return session

    async def _close_sessions(self) -> None:
        old = (self._session, self._scale_session)
        self._session = self._scale_session = None
        for session in old:
            if session is not None:
                await session.close()

    async def close(self) -> None:
        await self._close_sessions()

    async def _login_again(self) -> bool:
        if self._relogin is None:
            return False
        try:
            info = await asyncio.to_thread(self._relogin)
        except Exception:  # noqa: BLE001 - keep the credentials we have
            return False
        self._logged_in = time.monotonic()
        if info == self.info:
            return False
        self.info = info
        await self._close_sessions()
        return True

    async def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                       body: Any = None, content_type: str | None = None,
                       scaling: bool = False) -> Any:
        """The JSON answer of one API call; errors classified (KubeError subclasses).
        `scaling`: through the scaling path's own pool (SCALE_CONNECTIONS)."""
        if time.monotonic() - self._logged_in > RELOGIN_S:
            await self._login_again()
        for attempt in (0, 1):
            headers = {"Content-Type": content_type} if content_type else None
            try:
                async with self._open(scaling).request(method, self.server + path, params=params,
                                                json=body, headers=headers) as resp:
                    if resp.status == 401 and attempt == 0 and await self._login_again():
                        continue
                    if resp.status >= 400:
                        raise _classify(resp.status, resp.reason or "")
                    return await resp.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise KubeUnavailable(f"apiserver unreachable: {type(exc).__name__}") from None
        raise KubeError("apiserver answered 401 Unauthorized")

    # --- Secrets -------------------------------------------------------------------------
    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        found = await self.read_secret_owned(namespace, name)
        return found.data if found is not None else None

    async def read_secret_owned(self, namespace: str, name: str) -> SecretRead | None:
        """The Secret with its ownership (None: absent)."""
        try:
            obj = await self._request("GET", _secret_path(namespace, name))
        except KubeNotFound:
            return None
        meta = obj.get("metadata") or {}
        controller = next((ref.get("uid") for ref in (meta.get("ownerReferences") or [])
                           if ref.get("controller")), None)
        labels = meta.get("labels") or {}
        return SecretRead({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()},
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
            await self._request("POST", _secret_path(namespace), body=body)
        else:
            # Replace, not patch: keys the operator no longer writes must go.
            body["data"] = {}
            await self._request("PUT", _secret_path(namespace, name), body=body)
        return True

    async def delete_secret(self, namespace: str, name: str) -> None:
        with contextlib.suppress(KubeNotFound):
            await self._request("DELETE", _secret_path(namespace, name))

    # --- custom objects ------------------------------------------------------------------
    async def patch_status(self, plural: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        """Merge-patch status (lists such as conditions are replaced whole)."""
        await self._request("PATCH", _object_path(plural, namespace, name) + "/status",
                            body={"status": status}, content_type=MERGE_PATCH)

    async def get_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = await self._request("GET", _object_path(plural, namespace, name))
        except KubeNotFound:
            return None
        return obj if isinstance(obj, dict) else None

    async def object_keys(self, plural: str, namespaces: tuple[str, ...]
                          ) -> set[tuple[str, str]]:
        """(namespace, name) of every object of ours of `plural` in `namespaces` (all
        when empty), read in pages of 500 (a LIST of 10,000 whole objects is tens of MB)."""
        keys: set[tuple[str, str]] = set()
        for ns in namespaces or (None,):
            token: str | None = None
            while True:
                params: dict[str, Any] = {"limit": "500"}
                if token:
                    params["continue"] = token
                page = await self._request("GET", _object_path(plural, ns), params=params)
                for item in page.get("items", []):
                    meta = item.get("metadata") or {}
                    keys.add((str(meta.get("namespace")), str(meta.get("name"))))
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
        return keys

    # --- /scale --------------------------------------------------------------------------
    async def _resource(self, api_version: str, kind: str) -> dict[str, Any]:
        """The discovery entry of `kind` in `api_version` (its plural, whether it has
        /scale), from the API's discovery document (kept DISCOVERY_TTL_S)."""
        now = time.monotonic()
        cached = self._discovery.get(api_version)
        if cached is None or now - cached[0] > DISCOVERY_TTL_S:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                doc = await self._request("GET", base, scaling=True)
                kinds: dict[str, dict[str, Any]] | None = {}
                names = {r.get("name") for r in doc.get("resources") or []}
                for res in doc.get("resources") or []:
                    plural = str(res.get("name") or "")
                    if "/" in plural or not res.get("kind"):
                        continue
                    kinds[str(res["kind"])] = {  # type: ignore[index]
                        "base": base, "plural": plural,
                        "scale": f"{plural}/scale" in names}
            except KubeNotFound:
                kinds = None
            cached = self._discovery[api_version] = (now, kinds)
        found = (cached[1] or {}).get(kind)
        if found is None:
            raise KubeNotFound(f"no API serves {kind} in {api_version}")
        return found

    async def _scale_path(self, api_version: str, kind: str, namespace: str,
                          name: str) -> str:
        res = await self._resource(api_version, kind)
        if not res["scale"]:
            raise KubeNotFound(f"{kind} in {api_version} has no /scale subresource")
        return _path(res["base"], res["plural"], namespace, name) + "/scale"

    async def get_scale(self, api_version: str, kind: str, namespace: str,
                        name: str) -> ScaleInfo:
        obj = await self._request("GET", await self._scale_path(api_version, kind, namespace,
                                                                name), scaling=True)
        return ScaleInfo(int((obj.get("spec") or {}).get("replicas") or 0),
                         int((obj.get("status") or {}).get("replicas") or 0))

    async def set_scale(self, api_version: str, kind: str, namespace: str, name: str,
                        replicas: int) -> None:
        """Patch only /scale: the operator never writes the workload's spec otherwise."""
        await self._request("PATCH", await self._scale_path(api_version, kind, namespace, name),
                            body={"spec": {"replicas": replicas}}, content_type=MERGE_PATCH,
                            scaling=True)

    async def workload_controller(self, api_version: str, kind: str, namespace: str,
                                  name: str) -> str | None:
        """`Kind/name` of the controller that owns the workload (an ownerReference with
        controller: true), if any: it would undo our /scale writes or fight them."""
        res = await self._resource(api_version, kind)
        try:
            obj = await self._request("GET", _path(res["base"], res["plural"], namespace,
                                                   name), scaling=True)
        except (KubeNotFound, KubeForbidden):
            # Absent, or RBAC grants only its /scale (extraScaleTargets): cannot tell.
            return None
        for ref in ((obj.get("metadata") or {}).get("ownerReferences") or []):
            if ref.get("controller"):
                return f"{ref.get('kind')}/{ref.get('name')}"
        return None

    async def competing_autoscaler(self, namespace: str, api_version: str, kind: str,
                                   name: str) -> str | None:
        """Name of an HPA or KEDA ScaledObject already scaling this workload, if any."""
        hpas = await self._request(
            "GET", _path("/apis/autoscaling/v2", "horizontalpodautoscalers", namespace),
            scaling=True)
        for hpa in hpas.get("items") or []:
            ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            if ref.get("kind") == kind and ref.get("name") == name:
                return f"HorizontalPodAutoscaler/{(hpa.get('metadata') or {}).get('name', '?')}"
        try:
            scaled = await self._request(
                "GET", _path("/apis/keda.sh/v1alpha1", "scaledobjects", namespace),
                scaling=True)
        except KubeNotFound:
            return None
        for obj in scaled.get("items", []):
            ref = obj.get("spec", {}).get("scaleTargetRef", {})
            if ref.get("name") == name and ref.get("kind", "Deployment") == kind:
                return f"ScaledObject/{obj['metadata']['name']}"
        return None


def _path(base: str, plural: str, namespace: str | None = None, name: str | None = None
          ) -> str:
    out = base
    if namespace is not None:
        out += f"/namespaces/{quote(namespace, safe='')}"
    out += f"/{plural}"
    if name is not None:
        out += f"/{quote(name, safe='')}"
    return out


def _secret_path(namespace: str, name: str | None = None) -> str:
    return _path("/api/v1", "secrets", namespace, name)


def _object_path(plural: str, namespace: str | None, name: str | None = None) -> str:
    return _path(f"/apis/{GROUP}/{VERSION}", plural, namespace, name)


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
