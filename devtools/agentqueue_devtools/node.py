"""A real single node: containerd + runc + CNI bridge, kubelet, kube-proxy, kube-scheduler, CoreDNS.

Order of use (the bridge must exist before the apiserver binds its gateway address)::

    node = Node(state_dir / "node")
    node.prepare_host()                       # snapshot, bridge, routes, guard
    cp = ControlPlane(state_dir, node_ip=Node.gateway_ip).start()
    node.start(cp)                            # Ready in ~20 s
    ...
    node.stop(control_plane=cp)               # node, control plane, then the machine

Only one node may run on a machine (it owns the bridge, the pod ranges and the iptables
chains); `hostnet.RECORD` says which. Everything the node changes is undone by `stop()`, or
by `cleanup_leftovers()` after a crash, from the snapshot in that record (see `hostnet`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from . import hostnet
from .binaries import NodeBinaries, ensure_node_binaries
from .controlplane import ControlPlane, _die_with_parent, _Process, _tail, free_ports
from .noderecord import (
    NodeError,
    cleanup,
    cleanup_leftovers,
    live_pids,
    read_record,
    running_node,
    start_time,
    write_record,
)
from .pause import PAUSE_IMAGE, ensure_pause_image

__all__ = ["Node", "NodeError", "cleanup_leftovers", "dns_query", "node_unavailable_reason",
           "running_node"]

Progress = Callable[[str], None]

NODE_NAME = "agentqueue-dev"
CLUSTER_DOMAIN = "cluster.local"
#: kubelet's ``clusterDNS``: CoreDNS runs on the host and listens on the bridge gateway.
CLUSTER_DNS_IP = hostnet.GATEWAY_IP
CNI_BIN_DIR = Path("/usr/lib/cni")
#: Host tools the node runs; all from Debian packages installed by scripts/bootstrap.sh.
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "iptables",
              "iptables-save", "iptables-restore", "ip6tables-save", "nft", "umount")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
PACKAGES_HINT = ("run scripts/bootstrap.sh (apt-get install containerd runc "
                 "containernetworking-plugins iptables nftables conntrack)")
# Stop order: kubelet first so nothing restarts containers, containerd last.
_STOP_ORDER = ("kubelet", "kube-scheduler", "kube-proxy", "coredns", "containerd")
_CAP_NET_ADMIN = 12
_CAP_SYS_ADMIN = 21


def _say(msg: str) -> None:
    print(f"[devcluster] {msg}", file=sys.stderr, flush=True)


# ----- can a node run here? --------------------------------------------------------------

def node_unavailable_reason() -> str | None:
    """Why a node cannot run on this machine, or None if it can (checked without changes)."""
    if not sys.platform.startswith("linux"):
        return f"a node needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return (f"a node needs root (containerd, kubelet and the pod bridge do); "
                f"running as uid {os.geteuid()}")
    caps = _effective_caps()
    for bit, name in ((_CAP_NET_ADMIN, "CAP_NET_ADMIN"), (_CAP_SYS_ADMIN, "CAP_SYS_ADMIN")):
        if not caps & (1 << bit):
            return f"a node needs {name}, which this process lacks (an unprivileged container?)"
    if not hostnet.cgroup_mounts():
        return "no cgroup hierarchy is mounted (see /proc/mounts), so pods cannot be confined"
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    missing += [f"{CNI_BIN_DIR}/{p}" for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).exists()]
    if missing:
        return f"missing {', '.join(missing)}: {PACKAGES_HINT}"
    if not os.access("/proc/sys/net/ipv4/ip_forward", os.W_OK):
        return "sysctls are read-only here (/proc/sys is not writable), kubelet needs them"
    if _run_ok(["iptables", "-t", "mangle", "-S", "FORWARD"]) is False:
        return "iptables does not work here (no netfilter in this kernel or namespace)"
    return None


def _effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _run_ok(cmd: list[str]) -> bool:
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          check=False).returncode == 0


# ----- the node ------------------------------------------------------------------------------

class Node:
    """One node on this machine, registered as `name` with the given control plane."""

    gateway_ip = hostnet.GATEWAY_IP

    def __init__(self, state_dir: Path, binaries: NodeBinaries | None = None,
                 progress: Progress | None = None, name: str = NODE_NAME) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.name = name
        self._binaries = binaries
        self._say = progress or _say
        self._procs: list[_Process] = []
        self._control_plane: ControlPlane | None = None
        self.ready_seconds: float | None = None

    # ----- paths ---------------------------------------------------------------------------

    @property
    def containerd_socket(self) -> Path:
        return self.state_dir / "run" / "containerd.sock"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pod_log_dir(self) -> Path:
        return self.state_dir / "pod-logs"

    # ----- lifecycle -----------------------------------------------------------------------

    def prepare_host(self) -> None:
        """Snapshot the machine, then create the bridge, blackhole routes and forward guard.

        Must run before the control plane starts in node mode (it binds the bridge address).
        Cleans a crashed run's leftovers first; refuses if another node is running.
        """
        reason = node_unavailable_reason()
        if reason:
            raise NodeError(reason)
        record = read_record()
        if record is not None:
            if record.get("state_dir") == str(self.state_dir) and \
                    record.get("owner", {}).get("pid") == os.getpid() and not self._procs:
                return  # prepared by this process already
            live = live_pids(record)
            if live:
                raise NodeError(
                    f"another node is running on this machine (state dir {record['state_dir']}, "
                    f"pids {live}); only one may run at a time: stop it first "
                    f"(agentqueue dev down)")
            cleanup_leftovers(self._say)
        began = time.monotonic()
        if Path(f"/sys/class/net/{hostnet.BRIDGE}").exists():
            raise NodeError(f"interface {hostnet.BRIDGE} exists but no node owns it; "
                            f"remove it (ip link del {hostnet.BRIDGE}) if it is a leftover")
        hostnet.check_ranges_free()
        # Our cleanup deletes every KUBE-* chain: refuse to share iptables with another
        # Kubernetes (a kubeadm/k3s node on this machine).
        foreign = hostnet.foreign_kube_chains()
        if foreign:
            raise NodeError(f"iptables already holds Kubernetes chains ({', '.join(foreign[:3])}"
                            f"{'...' if len(foreign) > 3 else ''}): another Kubernetes runs on "
                            f"this machine; a node here would remove its rules on stop")
        record = {
            "version": 1,
            "state_dir": str(self.state_dir),
            "node_name": self.name,
            "owner": {"pid": os.getpid(), "start": start_time(os.getpid())},
            "detached": False,
            "containerd_socket": str(self.containerd_socket),
            "processes": [],
            "sysctls": hostnet.sysctl_snapshot(),
            "iptables_tables": {f: hostnet._tables(hostnet.iptables_save(f))
                                for f in ("ip", "ip6")},
            "netns": hostnet.netns_names(),
            "mounts": hostnet.mount_points(),
            "side_dirs": hostnet.side_dirs(),
        }
        write_record(record)  # before the first change: a crash from here on is undoable
        try:
            hostnet.create_cgroup_parent()
            hostnet.create_bridge()
            hostnet.install_forward_guard()
            # Routing pod -> Service -> pod turns around on the bridge; the guard above keeps
            # every other forwarded packet off the bridge.
            hostnet.set_sysctl("net.ipv4.ip_forward", "1")
            if Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
                hostnet.set_sysctl("net.bridge.bridge-nf-call-iptables", "1")
        except BaseException:
            cleanup(record, self._say)
            raise
        self._say(f"host prepared in {time.monotonic() - began:.1f}s: bridge {hostnet.BRIDGE} "
                  f"{self.gateway_ip}/24, Services {', '.join(hostnet.BRIDGE_ROUTES)} on it, "
                  f"blackholes {', '.join(hostnet.BLACKHOLES)}, "
                  f"forward guard")

    def start(self, control_plane: ControlPlane, timeout: float = 90.0, *,
              detach: bool = False) -> Node:
        """Start containerd, kubelet, kube-proxy, kube-scheduler and CoreDNS; wait for Ready."""
        if control_plane.node_ip != self.gateway_ip:
            raise NodeError("the control plane must run in node mode: "
                            f"ControlPlane(..., node_ip={self.gateway_ip!r})")
        self.prepare_host()
        began = time.monotonic()
        self._control_plane = control_plane
        try:
            binaries = self._binaries or ensure_node_binaries(self._say)
            pause = ensure_pause_image(self._say)
            self._write_configs(control_plane)
            self._spawn("containerd", ["containerd", "--config",
                                       str(self.state_dir / "containerd.toml")], detach)
            self._wait(lambda: _run_ok(["ctr", "--address", str(self.containerd_socket),
                                        "version"]), began + timeout, "containerd")
            self._say(f"containerd up in {time.monotonic() - began:.1f}s")
            self.import_image(pause)
            self._spawn_components(binaries, control_plane, detach)
            self._record_processes(detach)
            deadline = began + timeout
            self._wait(self._node_ready, deadline, f"node {self.name} Ready")
            self.ready_seconds = time.monotonic() - began
            self._wait(self._proxy_synced, deadline, "kube-proxy synced")
            self._wait(lambda: bool(dns_query(CLUSTER_DNS_IP, "kubernetes.default.svc."
                                              f"{CLUSTER_DOMAIN}")), deadline, "cluster DNS")
        except BaseException:
            self.stop()
            raise
        self._say(f"node {self.name} Ready in {self.ready_seconds:.1f}s "
                  f"(DNS and Services ready after {time.monotonic() - began:.1f}s)")
        return self

    def stop(self, timeout: float = 15.0, *,
             control_plane: ControlPlane | None = None) -> list[str]:
        """Stop every node process and restore the machine (see `hostnet`); returns what
        was restored.

        Pass the node-mode `control_plane` to stop it too, in the one fast order: node
        processes, then the control plane (its apiserver hangs ~15 s in shutdown once the
        bridge address is gone), then the machine's network and sysctls.
        """
        record = read_record()
        ours = record is not None and record.get("state_dir") == str(self.state_dir)
        procs = self._procs or ([_Process(p["name"], p["pid"], p["executable"])
                                 for p in record.get("processes", [])]
                                if ours and record is not None else [])
        began = time.monotonic()
        by_name = {p.name: p for p in procs}
        for name in _STOP_ORDER:
            if name in by_name:
                by_name[name].stop(timeout)
        self._procs = []
        self._say(f"node processes stopped in {time.monotonic() - began:.1f}s")
        if control_plane is not None:
            control_plane.stop(timeout)
        if record is None:
            return []
        if not ours:  # another state dir's record: clean it only if it is a leftover
            return [] if live_pids(record) else cleanup(record, self._say)
        return cleanup(record, self._say)

    @classmethod
    def load(cls, progress: Progress | None = None) -> Node | None:
        """The node recorded on this machine (started by any process), or None."""
        record = read_record()
        if record is None:
            return None
        node = cls(Path(record["state_dir"]), progress=progress, name=record["node_name"])
        node._procs = [_Process(p["name"], p["pid"], p["executable"])
                       for p in record.get("processes", [])]
        return node

    def is_running(self) -> bool:
        return any(p.alive() for p in self._procs)

    def import_image(self, tarball: Path, base_name: str | None = None) -> list[str]:
        """Import a docker-archive or OCI tarball into the node's image store (``k8s.io``).

        An OCI archive whose refs are bare tags (``1.0``) needs `base_name`
        (``agentqueue.local/operator``) to become ``agentqueue.local/operator:1.0``. Images are
        kept across node restarts and never garbage-collected (kubelet's image GC is off).
        Returns the image names now in the store.
        """
        began = time.monotonic()
        cmd = ["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", "images",
               "import"]
        if base_name:
            cmd += ["--base-name", base_name]
        result = subprocess.run([*cmd, str(tarball)], text=True, capture_output=True,
                                check=False)
        if result.returncode != 0:
            raise NodeError(f"importing {tarball} failed: {result.stderr.strip()}")
        self._say(f"imported {Path(tarball).name} in {time.monotonic() - began:.1f}s")
        return self.images()

    def images(self) -> list[str]:
        out = subprocess.run(["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io",
                              "images", "ls", "-q"], text=True, capture_output=True, check=True)
        # CRI also names each image by its config digest; those are not names to use.
        return [n for n in out.stdout.split() if not n.startswith("sha256:")]

    # ----- internals -----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], detach: bool) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        tie = not detach and threading.current_thread() is threading.main_thread()
        executable = shutil.which(argv[0]) or argv[0]
        with (self.log_dir / f"{name}.log").open("wb") as log:
            popen = subprocess.Popen(
                [executable, *argv[1:]], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.state_dir, start_new_session=True,
                preexec_fn=_die_with_parent if tie else None)
        self._procs.append(_Process(name, popen.pid, executable, popen))
        self._record_processes(detach)

    def _record_processes(self, detach: bool) -> None:
        record = read_record()
        if record is None:
            raise NodeError(f"{hostnet.RECORD} vanished while the node was starting")
        record["processes"] = [{"name": p.name, "pid": p.pid, "executable": p.executable}
                               for p in self._procs]
        record["detached"] = detach
        write_record(record)

    def _spawn_components(self, b: NodeBinaries, cp: ControlPlane, detach: bool) -> None:
        sd = self.state_dir
        kubelet_kc = cp.kubeconfig_for(f"system:node:{self.name}", ["system:nodes"])
        proxy_kc = cp.kubeconfig_for("system:kube-proxy")
        sched_kc = cp.kubeconfig_for("system:kube-scheduler")
        self._write_kubelet_config(cp)
        self._write_proxy_config(proxy_kc)
        self._spawn("kubelet", [
            str(b.kubelet), f"--config={sd / 'kubelet.yaml'}", f"--kubeconfig={kubelet_kc}",
            f"--root-dir={sd / 'kubelet'}", f"--hostname-override={self.name}",
            f"--node-ip={self.gateway_ip}", "--v=1"], detach)
        self._spawn("kube-proxy", [str(b.kube_proxy), f"--config={sd / 'kube-proxy.yaml'}",
                                   "--v=1"], detach)
        self._spawn("kube-scheduler", [
            str(b.kube_scheduler), f"--kubeconfig={sched_kc}",
            f"--authentication-kubeconfig={sched_kc}", f"--authorization-kubeconfig={sched_kc}",
            "--leader-elect=false", "--secure-port=0"], detach)
        self._spawn("coredns", [str(b.coredns), "-conf", str(sd / "Corefile")], detach)

    def _write_configs(self, cp: ControlPlane) -> None:
        sd = self.state_dir
        for sub in ("run", "containerd/root", "containerd/state", "cni/net.d", "cni/networks",
                    "kubelet", "pod-logs", "volume-plugins", "logs", "certs.d/_default"):
            (sd / sub).mkdir(parents=True, exist_ok=True)
        (sd / "containerd.toml").write_text(_containerd_config(sd))
        # Every registry resolves to a closed loopback port: a pull can never leave the
        # machine, and an image that was not imported fails fast.
        (sd / "certs.d" / "_default" / "hosts.toml").write_text(
            'server = "http://127.0.0.1:9"\n\n[host."http://127.0.0.1:9"]\n'
            '  capabilities = ["pull", "resolve"]\n')
        (sd / "cni" / "net.d" / "10-agentqueue.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": hostnet.CNI_NETWORK,
            "plugins": [{
                "type": "bridge", "bridge": hostnet.BRIDGE, "isGateway": True,
                "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "dataDir": str(sd / "cni" / "networks"),
                         "ranges": [[{"subnet": hostnet.POD_CIDR,
                                      "gateway": hostnet.GATEWAY_IP}]],
                         "routes": [{"dst": "0.0.0.0/0"}]},
            }],
        }, indent=1))
        # Pods with dnsPolicy Default get this file: no nameserver outside the machine.
        (sd / "resolv.conf").write_text(f"nameserver {CLUSTER_DNS_IP}\n")
        (sd / "Corefile").write_text(
            f"{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{\n"
            f"    bind {CLUSTER_DNS_IP}\n    errors\n    cache 30\n"
            f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n"
            f"        kubeconfig {cp.kubeconfig} {_current_context(cp.kubeconfig)}\n"
            f"        pods insecure\n    }}\n}}\n"
            # Any other name: REFUSED at once (no forwarding; nothing leaves the machine).
            f".:53 {{\n    bind {CLUSTER_DNS_IP}\n}}\n")

    def _write_kubelet_config(self, cp: ControlPlane) -> None:
        healthz = free_ports(1)[0]
        self._kubelet_healthz = healthz
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": self.gateway_ip, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(cp.ca_file)}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{hostnet.CGROUP_PARENT}",
            "failCgroupV1": False, "failSwapOn": False,
            "clusterDNS": [CLUSTER_DNS_IP], "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(self.state_dir / "resolv.conf"),
            # Imported images cannot be pulled again: never garbage-collect them.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            # A dev machine's disk and memory are shared: never evict on their account.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            "podLogsDir": str(self.pod_log_dir),
            "volumePluginDir": str(self.state_dir / "volume-plugins"),
            "serializeImagePulls": False, "registerNode": True,
            "rotateCertificates": False, "serverTLSBootstrap": False,
            "nodeStatusReportFrequency": "1m", "shutdownGracePeriod": "0s",
        }
        (self.state_dir / "kubelet.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def _write_proxy_config(self, kubeconfig: Path) -> None:
        healthz, metrics = free_ports(2)
        self._proxy_healthz = healthz
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables", "hostnameOverride": self.name,
            "clusterCIDR": hostnet.POD_CIDR,
            "healthzBindAddress": f"127.0.0.1:{healthz}",
            "metricsBindAddress": f"127.0.0.1:{metrics}",
            # NodePorts only on the bridge address: nothing is exposed on the machine's NICs.
            "nodePortAddresses": [f"{self.gateway_ip}/32"],
            # Leave conntrack sysctls alone (0 = do not set).
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
            # Without br_netfilter, replies between pods on one bridge bypass iptables:
            # masquerading all Service traffic makes them return through the host.
            "iptables": {"masqueradeAll": not Path("/proc/sys/net/bridge").exists(),
                         "localhostNodePorts": False, "syncPeriod": "30s",
                         "minSyncPeriod": "0s"},
        }
        (self.state_dir / "kube-proxy.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def _wait(self, predicate: Callable[[], bool], deadline: float, what: str) -> None:
        while not predicate():
            for proc in self._procs:
                if not proc.alive():
                    log = self.log_dir / f"{proc.name}.log"
                    raise NodeError(f"{proc.name} exited while waiting for {what}; "
                                    f"{log}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise NodeError(f"timed out waiting for {what}; logs in {self.log_dir}")
            time.sleep(0.2)

    def _api_get(self, path: str) -> dict[str, Any] | None:
        cp = self._control_plane
        assert cp is not None
        pki = cp.pki
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        try:
            with urllib.request.urlopen(cp.server_url + path, context=ctx, timeout=2) as r:
                return dict(json.load(r))
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError, ValueError):
            return None

    def _node_ready(self) -> bool:
        node = self._api_get(f"/api/v1/nodes/{self.name}")
        conditions = (node or {}).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _proxy_synced(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self._proxy_healthz}/healthz"
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False


def _current_context(kubeconfig: Path) -> str:
    return str(yaml.safe_load(kubeconfig.read_text())["current-context"])


def _containerd_config(sd: Path) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{sd / 'containerd' / 'root'}"
state = "{sd / 'containerd' / 'state'}"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{sd / 'run' / 'containerd.sock'}"

[ttrpc]
  address = "{sd / 'run' / 'containerd-ttrpc.sock'}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{sd / 'containerd' / 'opt'}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # This root lacks CAP_SYS_RESOURCE: without it runc fails every pod with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Pod network namespaces under our state dir, not /run/netns.
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{sd / 'run' / 'runc'}"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{sd / 'cni' / 'net.d'}"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{sd / 'certs.d'}"
"""


# ----- a minimal DNS client (readiness check; no resolver library needed) -------------------

def dns_query(server: str, name: str, timeout: float = 1.0) -> list[str]:
    """A records for `name` from `server` (UDP 53); [] on any failure or empty answer."""
    qid = int.from_bytes(os.urandom(2), "big")
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(packet, (server, 53))
            reply = s.recv(2048)
        except OSError:
            return []
    return _parse_a_records(reply, qid)


def _parse_a_records(reply: bytes, qid: int) -> list[str]:
    if len(reply) < 12:
        return []
    rid, flags, qd, an = struct.unpack(">HHHH", reply[:8])
    if rid != qid or flags & 0x000F:
        return []
    pos = 12
    for _ in range(qd):
        pos = _skip_name(reply, pos) + 4
    out = []
    for _ in range(an):
        pos = _skip_name(reply, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", reply[pos:pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(reply[pos:pos + 4]))
        pos += rdlen
    return out


def _skip_name(buf: bytes, pos: int) -> int:
    while True:
        length = buf[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += length + 1

