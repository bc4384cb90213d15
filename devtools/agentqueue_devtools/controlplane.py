"""A real, Docker-free Kubernetes control plane: etcd + kube-apiserver + kube-controller-manager.

This is the envtest model: no kubelet and no scheduler, so Pods never run, but
the API, RBAC, admission, namespace deletion and ownerReference garbage
collection behave exactly as in a real cluster. Everything lives under one
state directory (PKI, kubeconfigs, etcd data, logs, ``state.json``), so a
separate process can find the running cluster and stop it (`ControlPlane.load`).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from . import certs
from .binaries import Binaries, ensure_binaries

Progress = Callable[[str], None]

STATE_FILE = "state.json"
CLUSTER_NAME = "agentqueue-dev"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Start order; stop() goes in reverse so etcd outlives its clients.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
_PR_SET_PDEATHSIG = 1
_PORT_ATTEMPTS = 3


class ControlPlaneError(RuntimeError):
    """A component failed to start or the cluster state is inconsistent."""


class _PortTaken(ControlPlaneError):
    """A component lost the race for its freshly picked port."""


def _say(msg: str) -> None:
    print(f"[devcluster] {msg}", file=sys.stderr, flush=True)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open while picking, so no duplicates)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, user: str, client: certs.CertPair,
                     cluster_name: str = CLUSTER_NAME) -> Path:
    """Self-contained client-certificate kubeconfig (data embedded, so it can be copied)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": {
            "server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": _b64(client.cert),
            "client-key-data": _b64(client.key)}}],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": cluster_name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds a private key
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test process dies hard
    # (SIGKILL, segfault) the kernel sends us SIGTERM, so nothing leaks.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Field 3 is the state; a zombie has exited already.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _pid_runs(pid: int, executable: str) -> bool:
    """True if `pid` is alive and still runs `executable` (guards against pid reuse)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return argv0 == executable and _pid_alive(pid)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class _Process:
    name: str
    pid: int
    executable: str
    popen: subprocess.Popen[bytes] | None = None  # None when loaded from state.json

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _pid_runs(self.pid, self.executable)

    def signal_group(self, sig: signal.Signals) -> None:
        # Every component leads its own session, so pgid == pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def wait_gone(self, timeout: float) -> bool:
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(self.pid):
                return True
            time.sleep(0.05)
        return not _pid_alive(self.pid)

    def stop(self, timeout: float) -> None:
        if not self.alive():
            return
        self.signal_group(signal.SIGTERM)
        if not self.wait_gone(timeout):
            self.signal_group(signal.SIGKILL)
            self.wait_gone(5.0)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on free loopback ports.

    Use as a context manager, or `start()`/`stop()`. With ``start(detach=True)``
    the processes outlive this Python process (for ``agentqueue dev up``);
    another process stops them with ``ControlPlane.load(state_dir).stop()``.

    Node mode (`node_ip`, the node bridge's gateway address, which must exist already):
    the apiserver binds and advertises that address so pods reach it through the
    ``kubernetes`` Service, the endpoint reconciler keeps that Service's endpoints, the
    ServiceAccount admission plugin mounts tokens, the Node authorizer serves kubelets
    and the apiserver can reach kubelets (logs, exec). Without it nothing changes.
    """

    def __init__(self, state_dir: Path, binaries: Binaries | None = None,
                 progress: Progress | None = None, *, node_ip: str | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.node_ip = node_ip
        self._binaries = binaries
        self._say = progress or _say
        self._procs: list[_Process] = []
        self._ports: dict[str, int] = {}
        self._server_url: str | None = None
        self._atexit_registered = False
        self.startup_seconds: float | None = None

    # ----- paths and connection details -------------------------------------------------

    @property
    def pki(self) -> certs.ClusterPKI:
        return certs.ensure_pki(self.state_dir / "pki")

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (client cert in group system:masters)."""
        return self.state_dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    @property
    def server_url(self) -> str:
        if self._server_url is None:
            raise ControlPlaneError("control plane not started")
        return self._server_url

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    def kubeconfig_for(self, user: str, groups: Sequence[str] = ()) -> Path:
        """Kubeconfig authenticating as `user` in `groups` via a fresh client certificate.

        For a ServiceAccount: ``kubeconfig_for("system:serviceaccount:ns:sa",
        ["system:serviceaccounts", "system:serviceaccounts:ns"])``.
        """
        stem = certs.safe_filename(user)
        users = self.state_dir / "users"
        pair = certs.issue_client_cert(
            self.pki.ca, certs.CertPair(users / f"{stem}.crt", users / f"{stem}.key"),
            user, groups)
        return write_kubeconfig(users / f"{stem}.kubeconfig", self.server_url, self.ca_file,
                                user, pair)

    # ----- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 90.0, *, detach: bool = False,
              wait_for_controllers: bool = True) -> ControlPlane:
        """Start all components and wait until the API serves (and controllers run).

        `detach`: do not tie the processes to this Python process's lifetime
        (no atexit hook, no parent-death signal), for a cluster that outlives us.
        """
        if self.is_running():
            raise ControlPlaneError(f"already running (pids {[p.pid for p in self._procs]})")
        self._refuse_if_other_instance_running()
        binaries = self._binaries or ensure_binaries(self._say)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            try:
                return self._start_once(binaries, timeout, detach, wait_for_controllers)
            except _PortTaken as exc:
                # Free ports are picked then released; another process may grab one first.
                if attempt == _PORT_ATTEMPTS:
                    raise
                self._say(f"{exc}; retrying with new ports")
        raise AssertionError("unreachable")

    def _start_once(self, binaries: Binaries, timeout: float, detach: bool,
                    wait_for_controllers: bool) -> ControlPlane:
        began = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        pki = self.pki
        etcd_port, peer_port, api_port = free_ports(3)
        self._ports = {"etcd": etcd_port, "etcd-peer": peer_port, "kube-apiserver": api_port}
        self._server_url = f"https://{self.node_ip or '127.0.0.1'}:{api_port}"
        write_kubeconfig(self.kubeconfig, self._server_url, self.ca_file, certs.ADMIN_USER,
                         pki.admin)
        if not detach:
            self._register_atexit()
        try:
            # All three start at once: apiserver retries etcd and the controller
            # manager waits for apiserver health on its own, which saves seconds.
            self._spawn("etcd", self._etcd_args(binaries, etcd_port, peer_port), detach)
            self._spawn("kube-apiserver", self._apiserver_args(binaries, pki, etcd_port), detach)
            self._spawn("kube-controller-manager", self._kcm_args(binaries, pki), detach)
            self._save_state(detach)
            deadline = began + timeout
            self._wait_for("/readyz", deadline)
            api_ready = time.monotonic() - began
            if wait_for_controllers:
                # The serviceaccount controller creating default/default proves the
                # controller manager is up and reconciling.
                self._wait_for("/api/v1/namespaces/default/serviceaccounts/default", deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        self._say(f"control plane ready at {self._server_url} in {self.startup_seconds:.1f}s "
                  f"(apiserver ready after {api_ready:.1f}s); state in {self.state_dir}")
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate every component (SIGTERM to its process group, then SIGKILL)."""
        for proc in reversed(self._procs):
            proc.stop(timeout)
        self._procs = []
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def is_running(self) -> bool:
        """True if any component of this instance is still alive."""
        return any(p.alive() for p in self._procs)

    @classmethod
    def load(cls, state_dir: Path) -> ControlPlane:
        """Attach to a cluster started by another process (reads ``state.json``).

        Raises FileNotFoundError if none is recorded, ValueError if the file is corrupt.
        """
        cp = cls(state_dir)
        try:
            state = json.loads(cp.state_file.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no control plane recorded in {cp.state_dir}") from None
        try:
            cp._server_url = str(state["server_url"])
            cp.node_ip = state.get("node_ip")
            cp._ports = dict(state["ports"])
            cp._procs = [_Process(p["name"], int(p["pid"]), p["executable"])
                         for p in state["processes"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed {cp.state_file}: {exc!r}") from exc
        return cp

    def __enter__(self) -> ControlPlane:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ----- internals ----------------------------------------------------------------------

    def _refuse_if_other_instance_running(self) -> None:
        # Two clusters must never share one etcd data directory.
        if not self.state_file.exists():
            return
        try:
            other = ControlPlane.load(self.state_dir)
        except (FileNotFoundError, ValueError):
            return  # unreadable leftovers: treat as stale
        if other.is_running():
            raise ControlPlaneError(
                f"a control plane from {self.state_dir} is already running at "
                f"{other.server_url}; stop it first")

    def _register_atexit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

    def _spawn(self, name: str, argv: list[str], detach: bool) -> None:
        # PDEATHSIG is bound to the spawning *thread*, so only use it from the main thread.
        tie = not detach and threading.current_thread() is threading.main_thread()
        # Fresh log per start, so a failure is diagnosed from this run's output only.
        with (self.log_dir / f"{name}.log").open("wb") as log:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.state_dir, start_new_session=True,
                preexec_fn=_die_with_parent if tie else None,
            )
        self._procs.append(_Process(name, popen.pid, argv[0], popen))

    def _save_state(self, detach: bool) -> None:
        state: dict[str, Any] = {
            "server_url": self._server_url,
            "ports": self._ports,
            "kubeconfig": str(self.kubeconfig),
            **({"node_ip": self.node_ip} if self.node_ip else {}),
            "detached": detach,
            "started_at": time.time(),
            "processes": [{"name": p.name, "pid": p.pid, "executable": p.executable}
                          for p in self._procs],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    def _etcd_args(self, b: Binaries, client_port: int, peer_port: int) -> list[str]:
        client = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        return [
            str(b.etcd), "--name=agentqueue", f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=agentqueue={peer}",
            # Throwaway dev data: skipping fsync makes every API write much faster.
            "--unsafe-no-fsync", "--log-level=warn",
        ]

    def _node_serving_cert(self, pki: certs.ClusterPKI) -> certs.CertPair:
        # Its own pair, so the default serving cert (and anything pinned to it) is untouched.
        pair = certs.CertPair(pki.directory / "apiserver-node.crt",
                              pki.directory / "apiserver-node.key")
        if not pair.cert.exists() or pair.cert.stat().st_mtime < pki.ca.cert.stat().st_mtime:
            certs.issue_serving_cert(pki.ca, pair,
                                     ips=(*certs.SERVING_IPS, str(self.node_ip)))
        return pair

    def _apiserver_args(self, b: Binaries, pki: certs.ClusterPKI, etcd_port: int) -> list[str]:
        if self.node_ip:
            return self._node_apiserver_args(b, pki, etcd_port)
        return [
            str(b.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self._ports['kube-apiserver']}",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving.cert}", f"--tls-private-key-file={pki.serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--service-cluster-ip-range={certs.SERVICE_CLUSTER_IP_RANGE}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            "--authorization-mode=RBAC",
            # No Pods ever run, so token automounting is pointless and only adds latency.
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            # The `kubernetes` Endpoints would hold a loopback IP, which validation rejects.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ]

    def _node_apiserver_args(self, b: Binaries, pki: certs.ClusterPKI,
                             etcd_port: int) -> list[str]:
        serving = self._node_serving_cert(pki)
        return [
            str(b.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={self.node_ip}", f"--advertise-address={self.node_ip}",
            f"--secure-port={self._ports['kube-apiserver']}",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--service-cluster-ip-range={certs.SERVICE_CLUSTER_IP_RANGE}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            # logs/exec/port-forward: the apiserver calls the kubelet with the admin identity;
            # the kubelet's serving cert is self-signed, so it is not verified (local only).
            f"--kubelet-client-certificate={pki.admin.cert}",
            f"--kubelet-client-key={pki.admin.key}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
        ]

    def _kcm_args(self, b: Binaries, pki: certs.ClusterPKI) -> list[str]:
        kubeconfig = str(self.kubeconfig)
        return [
            str(b.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            # No HTTPS endpoint: avoids clashes on the fixed default port 10257.
            "--secure-port=0",
            "--leader-elect=false",
            # Default set, which includes garbagecollector and namespace.
            "--controllers=*",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={pki.sa_private_key}",
            f"--root-ca-file={pki.ca.cert}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
        ]

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.pki
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        return ctx

    def _get(self, path: str, ctx: ssl.SSLContext) -> bool:
        try:
            with urllib.request.urlopen(self.server_url + path, context=ctx, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
            return False

    def _wait_for(self, path: str, deadline: float) -> None:
        ctx = self._ssl_context()
        while not self._get(path, ctx):
            self._check_alive()
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"timed out waiting for {path}; logs in {self.log_dir}")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        for proc in self._procs:
            if not proc.alive():
                log = self.log_dir / f"{proc.name}.log"
                tail = _tail(log)
                error = _PortTaken if "address already in use" in tail else ControlPlaneError
                raise error(f"{proc.name} exited during start-up; {log}:\n{tail}")


@dataclass(frozen=True)
class ExistingCluster:
    """An already-running cluster given by a kubeconfig (e.g. ``$AGENTQUEUE_KUBECONFIG``).

    Offers the read-only part of `ControlPlane`'s interface so fixtures work unchanged.
    """

    kubeconfig: Path

    def _current_cluster(self) -> dict[str, Any]:
        config = yaml.safe_load(self.kubeconfig.read_text())
        context_name = config.get("current-context")
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        return dict(next(c["cluster"] for c in config["clusters"]
                         if c["name"] == context["cluster"]))

    @property
    def server_url(self) -> str:
        return str(self._current_cluster()["server"])

    @property
    def ca_file(self) -> Path | None:
        cluster = self._current_cluster()
        if "certificate-authority" in cluster:
            return Path(cluster["certificate-authority"])
        return None

    def kubeconfig_for(self, user: str, groups: Sequence[str] = ()) -> Path:
        raise NotImplementedError("client certificates can only be issued for a local "
                                  "ControlPlane, not for an external cluster")


class Kubectl:
    """Run the pinned kubectl against one cluster: ``kubectl("get", "ns", "-o", "json")``."""

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(cmd, input=input, text=True, capture_output=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, cmd, result.stdout,
                                                result.stderr)
        return result


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.2,
               message: str = "condition") -> None:
    """Poll `predicate` until truthy; controllers converge asynchronously."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout:.0f}s")
        time.sleep(interval)
