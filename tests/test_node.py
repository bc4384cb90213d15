"""A real single node (containerd, kubelet, kube-proxy, scheduler, CoreDNS) on this machine.

Needs root, cgroups and the Debian packages of scripts/bootstrap.sh; skipped with the exact
reason elsewhere. Figures on the reference machine (2 cores, see the constants below): node
Ready 1-4 s after its start, 0 -> 10 pods Running ~6 s, ~0.5 GiB and ~2% of a core at rest
with 11 pods. The machine must be exactly as before once the node stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentqueue_devtools import ControlPlane, Kubectl, ensure_binaries, hostnet, wait_until
from agentqueue_devtools.node import (
    Node,
    NodeError,
    _parse_a_records,
    cleanup_leftovers,
    node_unavailable_reason,
)
from agentqueue_devtools.pause import static_go_image, write_image_tar

_REASON = node_unavailable_reason()

#: Measured figures + margin (2 cores shared with whatever else runs; a cold page cache).
READY_BOUND_S = 4.0 + 16.0
TEN_PODS_BOUND_S = 6.0 + 19.0
REST_RSS_BOUND_MIB = 520 + 480

PROBE_IMAGE = "agentqueue.local/probe:1"
PROBE_SOURCE = textwrap.dedent("""\
    package main

    // serve: answer HTTP on :8080. check <service>: resolve the Service through the cluster
    // DNS, fetch it, call the apiserver through the kubernetes Service with the pod's token,
    // and show that an external name does not resolve. Exit 1 if any check fails.

    import (
    \t"crypto/tls"
    \t"crypto/x509"
    \t"fmt"
    \t"io"
    \t"net"
    \t"net/http"
    \t"os"
    \t"time"
    )

    const sa = "/var/run/secrets/kubernetes.io/serviceaccount/"

    func main() {
    \tif len(os.Args) > 1 && os.Args[1] == "serve" {
    \t\thost, _ := os.Hostname()
    \t\thttp.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, host) })
    \t\tpanic(http.ListenAndServe(":8080", nil))
    \t}
    \tok := true
    \tcheck := func(name string, err error, detail string) {
    \t\tif err != nil {
    \t\t\tok = false
    \t\t\tfmt.Printf("FAIL %s: %v\\n", name, err)
    \t\t} else {
    \t\t\tfmt.Printf("OK %s: %s\\n", name, detail)
    \t\t}
    \t}
    \tsvc := os.Args[2]
    \taddrs, err := net.LookupHost(svc)
    \tcheck("dns", err, fmt.Sprint(addrs))
    \tc := &http.Client{Timeout: 5 * time.Second}
    \tif resp, err := c.Get("http://" + svc + ":8080/"); err != nil {
    \t\tcheck("service", err, "")
    \t} else {
    \t\tbody, _ := io.ReadAll(resp.Body)
    \t\tcheck("service", nil, string(body))
    \t}
    \ttoken, err1 := os.ReadFile(sa + "token")
    \tca, err2 := os.ReadFile(sa + "ca.crt")
    \tif err1 != nil || err2 != nil {
    \t\tcheck("token", fmt.Errorf("%v %v", err1, err2), "")
    \t} else {
    \t\tpool := x509.NewCertPool()
    \t\tpool.AppendCertsFromPEM(ca)
    \t\tapi := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
    \t\t\tTLSClientConfig: &tls.Config{RootCAs: pool}}}
    \t\treq, _ := http.NewRequest("GET", "https://kubernetes.default.svc/api", nil)
    \t\treq.Header.Set("Authorization", "Bearer "+string(token))
    \t\tif resp, err := api.Do(req); err != nil {
    \t\t\tcheck("apiserver", err, "")
    \t\t} else if resp.StatusCode != 200 {
    \t\t\tcheck("apiserver", fmt.Errorf("status %d", resp.StatusCode), "")
    \t\t} else {
    \t\t\tcheck("apiserver", nil, "200 with the pod's token")
    \t\t}
    \t}
    \tif addrs, err := net.LookupHost("registry.example.com"); err == nil {
    \t\tcheck("no external dns", fmt.Errorf("resolved to %v", addrs), "")
    \t} else {
    \t\tcheck("no external dns", nil, err.Error())
    \t}
    \tif !ok {
    \t\tos.Exit(1)
    \t}
    }
    """)


# ----- what the machine looks like (compared before start / after stop) --------------------

def _out(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def machine_state(state_dir: Path) -> dict[str, Any]:
    """Everything a node may change, in comparable form."""
    watched = (str(state_dir), "/run/netns", *hostnet.SIDE_PATHS)
    return {
        "sysctls": hostnet.sysctl_snapshot(),
        "iptables": hostnet.iptables_save("ip"),
        "ip6tables": hostnet.iptables_save("ip6"),
        "nft": _out("nft", "list", "ruleset"),
        "routes": _out("ip", "route", "show", "table", "all"),
        "links": sorted(os.listdir("/sys/class/net")),
        "mounts": [m for m in hostnet.mount_points() if m.startswith(watched)],
        "netns": hostnet.netns_names(),
        "cgroups": [str(m / hostnet.CGROUP_PARENT) for m in hostnet.cgroup_mounts()
                    if (m / hostnet.CGROUP_PARENT).exists()],
        "side_dirs": hostnet.side_dirs(),
        "processes": sorted(_node_processes(state_dir)),
    }


def _node_processes(root: Path) -> list[str]:
    """Processes of a node under `root`: by their arguments, or by the pods' cgroup parent."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        if not hostnet.pid_alive(int(pid)):
            continue  # exited; only its entry waits for init to reap it
        if str(root) in cmd or f"/{hostnet.CGROUP_PARENT}/" in cgroups:
            found.append(f"{pid} {cmd[:120]}")
    return found


def assert_same_machine(before: dict[str, Any], after: dict[str, Any]) -> None:
    diffs = {}
    for key in before:
        if before[key] != after[key]:
            if key == "sysctls":
                diffs[key] = {k: (before[key].get(k), after[key].get(k))
                              for k in before[key].keys() | after[key].keys()
                              if before[key].get(k) != after[key].get(k)}
            else:
                diffs[key] = {"before": before[key], "after": after[key]}
    assert not diffs, yaml.safe_dump(diffs)


# ----- the node -------------------------------------------------------------------------------

class NodeCluster:
    def __init__(self, root: Path) -> None:
        self.node = Node(root / "node")
        self.cp = ControlPlane(root / "cp", node_ip=Node.gateway_ip)
        self.kubectl: Kubectl | None = None
        self.started_in = 0.0

    def start(self) -> None:
        began = time.monotonic()
        self.node.prepare_host()
        self.cp.start()
        self.node.start(self.cp)
        self.started_in = time.monotonic() - began
        self.kubectl = Kubectl(ensure_binaries().kubectl, self.cp.kubeconfig)

    def stop(self) -> None:
        self.node.stop(control_plane=self.cp)


@pytest.fixture(scope="module")
def probe_image() -> Path:
    return static_go_image("probe", PROBE_IMAGE, PROBE_SOURCE)


@pytest.fixture(scope="module")
def machine_before(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("node")
    return root, machine_state(root)


@pytest.fixture(scope="module")
def cluster(machine_before: tuple[Path, dict[str, Any]], probe_image: Path
            ) -> Iterator[NodeCluster]:
    c = NodeCluster(machine_before[0])
    try:
        c.start()
        c.node.import_image(probe_image)
        yield c
    finally:
        c.stop()


def _k(c: NodeCluster) -> Kubectl:
    assert c.kubectl is not None
    return c.kubectl


@pytest.mark.e2e
@pytest.mark.skipif(_REASON is not None, reason=str(_REASON))
def test_node_ready(cluster: NodeCluster) -> None:
    assert cluster.node.ready_seconds is not None
    print(f"node Ready {cluster.node.ready_seconds:.1f}s after node start; "
          f"control plane + node {cluster.started_in:.1f}s")
    assert cluster.node.ready_seconds < READY_BOUND_S
    nodes = _k(cluster)("get", "nodes", "-o", "name").stdout.split()
    assert nodes == ["node/agentqueue-dev"]


@pytest.mark.e2e
@pytest.mark.skipif(_REASON is not None, reason=str(_REASON))
def test_ten_pods_running(cluster: NodeCluster) -> None:
    k = _k(cluster)
    deploy = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 10, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                     "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "web", "image": PROBE_IMAGE,
                                     "imagePullPolicy": "Never", "args": ["serve"],
                                     "ports": [{"containerPort": 8080}]}]}}},
    }
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]}}
    began = time.monotonic()
    k("apply", "-f", "-", input=yaml.safe_dump_all([deploy, service]))

    def running() -> bool:
        phases = k("get", "pods", "-l", "app=web", "-o",
                   "jsonpath={.items[*].status.phase}").stdout.split()
        return phases.count("Running") == 10

    wait_until(running, timeout=TEN_PODS_BOUND_S + 30, interval=0.2, message="10 pods Running")
    elapsed = time.monotonic() - began
    print(f"0 -> 10 pods Running in {elapsed:.1f}s")
    assert elapsed < TEN_PODS_BOUND_S


@pytest.mark.e2e
@pytest.mark.skipif(_REASON is not None, reason=str(_REASON))
def test_pod_reaches_dns_service_and_apiserver(cluster: NodeCluster) -> None:
    k = _k(cluster)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "probe", "namespace": "default"},
           "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "probe", "image": PROBE_IMAGE,
                                    "imagePullPolicy": "Never",
                                    "args": ["check", "web.default.svc.cluster.local"]}]}}
    k("apply", "-f", "-", input=yaml.safe_dump(pod))

    def done() -> str:
        phase: str = k("get", "pod", "probe", "-o", "jsonpath={.status.phase}").stdout
        return phase if phase in ("Succeeded", "Failed") else ""

    wait_until(done, timeout=60, message="probe pod finished")
    logs = k("logs", "probe").stdout
    print(logs)
    assert done() == "Succeeded", logs
    assert "OK apiserver" in logs and "OK service: web-" in logs


@pytest.mark.e2e
@pytest.mark.skipif(_REASON is not None, reason=str(_REASON))
def test_pods_cannot_reach_outside(cluster: NodeCluster) -> None:
    # Decided without sending a packet off the machine: where the kernel would send a pod's
    # packet, and that the guard drops it before anything else sees it.
    k = _k(cluster)
    pod_ip = k("get", "pods", "-l", "app=web", "-o",
               "jsonpath={.items[0].status.podIP}").stdout.strip()
    assert pod_ip.startswith("10.244.0.")
    outside = subprocess.run(["ip", "route", "get", "203.0.113.7", "from", pod_ip, "iif",
                              hostnet.BRIDGE], capture_output=True, text=True)
    # Whatever interface it would take, it is not the bridge, so the guard drops it.
    assert f"dev {hostnet.BRIDGE}" not in outside.stdout
    assert hostnet.forward_guard_ok()
    blackholes = _out("ip", "route", "show", "type", "blackhole").split()
    assert set(hostnet.BLACKHOLES) <= set(blackholes)
    # Other pod subnets: the kernel has no way out for them (the lookup itself fails).
    route = subprocess.run(["ip", "route", "get", "10.244.9.9"], capture_output=True, text=True)
    assert route.returncode != 0, route.stdout
    # An unused Service IP: onto the bridge, never the default route (kube-proxy rewrites the
    # used ones to pod addresses first).
    route = subprocess.run(["ip", "route", "get", "10.0.0.200"], capture_output=True, text=True)
    assert route.returncode == 0 and f"dev {hostnet.BRIDGE}" in route.stdout, route.stdout
    resolv = _out("cat", str(cluster.node.state_dir / "resolv.conf"))
    assert resolv.split() == ["nameserver", hostnet.GATEWAY_IP]


@pytest.mark.e2e
@pytest.mark.skipif(_REASON is not None, reason=str(_REASON))
def test_forwarded_pod_packets_are_dropped(cluster: NodeCluster) -> None:
    """A pod's packet for a foreign address reaches the host and is dropped there.

    The foreign route leads into a veth pair whose other end sits in a throwaway network
    namespace with nowhere to go, so even without the guard nothing could leave the
    machine; the guard's drop counter and the veth's transmit counter tell which of the
    two stopped the packets.
    """
    netns_dir = (cluster.node.state_dir / "containerd" / "state" / "io.containerd.grpc.v1.cri"
                 / "netns")
    netns = sorted(netns_dir.iterdir())[0]
    link, target = "aqtest0", "198.18.0.7"  # RFC 2544 benchmarking range, local only
    sink = subprocess.Popen(["unshare", "--net", "sleep", "120"])
    try:
        time.sleep(0.2)
        subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", "aqtest1",
                        "netns", str(sink.pid)], check=True)
        Path(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6").write_text("1")  # no chatter
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
        subprocess.run(["nsenter", f"--net=/proc/{sink.pid}/ns/net", "ip", "link", "set",
                        "aqtest1", "up"], check=True)
        subprocess.run(["ip", "route", "add", "198.18.0.0/24", "dev", link], check=True)
        # A static neighbour: no ARP traffic that would move the transmit counter.
        subprocess.run(["ip", "neigh", "replace", target, "lladdr", "02:00:00:00:00:07",
                        "dev", link], check=True)
        drops, sent = _guard_drops(), _tx_packets(link)
        subprocess.run(["nsenter", f"--net={netns}", sys.executable, "-c",
                        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                        f"for _ in range(3): s.sendto(b'x', ('{target}', 9))"], check=True)
        time.sleep(0.2)
        assert _guard_drops() >= drops + 3
        assert _tx_packets(link) == sent
    finally:
        sink.kill()
        sink.wait()
        subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)


def _guard_drops() -> int:
    out = _out("iptables", "-t", "mangle", "-L", hostnet.GUARD_CHAIN, "-v", "-x", "-n")
    return sum(int(line.split()[0]) for line in out.splitlines()[2:]
               if "DROP" in line and hostnet.BRIDGE in line)


def _tx_packets(link: str) -> int:
    return int(Path(f"/sys/class/net/{link}/statistics/tx_packets").read_text())


@pytest.mark.e2e
@pytest.mark.skipif(_REASON is not None, reason=str(_REASON))
def test_second_node_refused(cluster: NodeCluster, tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="another node is running on this machine"):
        Node(tmp_path / "other").prepare_host()
    assert hostnet.forward_guard_ok()  # the refusal changed nothing


@pytest.mark.e2e
@pytest.mark.skipif(_REASON is not None, reason=str(_REASON))
def test_rest_footprint(cluster: NodeCluster) -> None:
    """Memory and CPU of the node at rest (its processes, shims and pods)."""
    pids = [int(line.split()[0]) for line in _node_processes(cluster.node.state_dir)]
    pids += [int(p) for p in Path(
        f"/sys/fs/cgroup/memory/{hostnet.CGROUP_PARENT}/cgroup.procs").read_text().split()] \
        if Path(f"/sys/fs/cgroup/memory/{hostnet.CGROUP_PARENT}").exists() else []
    pids = sorted(set(pids))

    def cpu_ticks() -> int:
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                continue
        return total

    rss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
        except OSError:
            continue
    t0, c0 = time.monotonic(), cpu_ticks()
    time.sleep(10)
    cpu = (cpu_ticks() - c0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)
    print(f"node at rest (11 pods): RSS {rss / 2**20:.0f} MiB over {len(pids)} processes, "
          f"CPU {cpu * 100:.1f}% of a core")
    assert rss / 2**20 < REST_RSS_BOUND_MIB


@pytest.mark.e2e
@pytest.mark.skipif(_REASON is not None, reason=str(_REASON))
def test_stop_restores_machine(cluster: NodeCluster,
                               machine_before: tuple[Path, dict[str, Any]]) -> None:
    root, before = machine_before
    began = time.monotonic()
    cluster.stop()
    print(f"stopped and restored in {time.monotonic() - began:.1f}s")
    assert_same_machine(before, machine_state(root))


_CRASH_SCRIPT = """
import sys, time
from pathlib import Path
from agentqueue_devtools import ControlPlane
from agentqueue_devtools.node import Node
root = Path(sys.argv[1])
node = Node(root / "node")
node.prepare_host()
cp = ControlPlane(root / "cp", node_ip=Node.gateway_ip).start()
node.start(cp)
node.import_image(Path(sys.argv[2]))
print("READY", flush=True)
time.sleep(600)
"""


@pytest.mark.e2e
@pytest.mark.skipif(_REASON is not None, reason=str(_REASON))
def test_cleanup_after_sigkill(tmp_path: Path, probe_image: Path, cluster: NodeCluster) -> None:
    """A SIGKILLed start leaves pods, shims, mounts, rules: the next start cleans them."""
    assert not cluster.node.is_running()  # the module's node is stopped by now
    before = machine_state(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", _CRASH_SCRIPT, str(tmp_path),
                             str(probe_image)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        kubectl = Kubectl(ensure_binaries().kubectl, tmp_path / "cp" / "kubeconfig")
        kubectl("run", "sleeper", f"--image={PROBE_IMAGE}", "--image-pull-policy=Never",
                "--", "serve")
        wait_until(lambda: kubectl("get", "pod", "sleeper", "-o",
                                   "jsonpath={.status.phase}").stdout == "Running",
                   timeout=60, message="pod Running before the crash")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The node's and the control plane's processes die of PDEATHSIG; pods and shims stay.
    ControlPlane.load(tmp_path / "cp").stop()  # what `dev up` does with a stale control plane
    assert hostnet.RECORD.exists()
    restored = cleanup_leftovers()
    print("restored:", restored)
    assert_same_machine(before, machine_state(tmp_path))


# ----- pure parts (no node needed) -------------------------------------------------------------

def test_unavailable_reason_names_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = node_unavailable_reason()
    assert reason is not None and "root" in reason and "uid 1000" in reason


def test_image_tar_layout(tmp_path: Path) -> None:
    import json
    import tarfile

    out = write_image_tar(tmp_path / "img.tar", "agentqueue.local/x:1",
                          {"bin/x": (b"#!", 0o755)}, ["/bin/x"], ["serve"])
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["agentqueue.local/x:1"]
        config = json.load(tar.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        layer = tar.extractfile(manifest[0]["Layers"][0])
        assert layer is not None
        with tarfile.open(fileobj=layer) as inner:
            member = inner.getmember("bin/x")
            assert member.mode == 0o755 and member.mtime == 0
    assert config["config"]["Entrypoint"] == ["/bin/x"]
    assert config["config"]["Cmd"] == ["serve"]
    # Deterministic: the same input gives the same bytes.
    again = write_image_tar(tmp_path / "again.tar", "agentqueue.local/x:1",
                            {"bin/x": (b"#!", 0o755)}, ["/bin/x"], ["serve"])
    assert again.read_bytes() == out.read_bytes()


def test_removal_script_touches_only_node_chains() -> None:
    saved = textwrap.dedent("""\
        *nat
        :PREROUTING ACCEPT [0:0]
        :POSTROUTING ACCEPT [0:0]
        :KUBE-SERVICES - [0:0]
        :DOCKER - [0:0]
        -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
        -A PREROUTING -j DOCKER
        -A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-X
        COMMIT
        *filter
        :FORWARD ACCEPT [0:0]
        -A FORWARD -j ACCEPT
        COMMIT
        *mangle
        :FORWARD ACCEPT [0:0]
        :AQ-FORWARD - [0:0]
        -A FORWARD -g AQ-FORWARD
        COMMIT
        """)
    assert hostnet.removal_script(saved) == [
        "*nat",
        '-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-F KUBE-SERVICES", "-X KUBE-SERVICES", "COMMIT",
        "*mangle", "-D FORWARD -g AQ-FORWARD", "-F AQ-FORWARD", "-X AQ-FORWARD", "COMMIT",
    ]


def test_dns_reply_parsing() -> None:
    header = (0x1234).to_bytes(2, "big") + bytes([0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0])
    question = b"\x01a\x05local\x00" + bytes([0, 1, 0, 1])
    answer = bytes([0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 1])
    assert _parse_a_records(header + question + answer, 0x1234) == ["10.0.0.1"]
    assert _parse_a_records(header + question + answer, 0x9999) == []  # not our query
    refused = header[:3] + bytes([0x85]) + header[4:]
    assert _parse_a_records(refused + question, 0x1234) == []
