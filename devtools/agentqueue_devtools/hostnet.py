"""The node's footprint on the machine: what it changes, and how every change is undone.

A node changes machine-wide state: kubelet writes sysctls (``vm.overcommit_memory``,
``kernel.panic``...), kube-proxy adds iptables chains, we add a bridge, blackhole routes and a
forwarding guard, containerd and kubelet make mounts, network namespaces and cgroups. Before
the first change a *record* (`RECORD`, JSON, on tmpfs like everything it describes) snapshots
the old sysctl values, which iptables tables and netns existed, and which paths did not
exist; `noderecord.cleanup()` works only from that record, so it also undoes what a crashed
run left. This module holds the primitives: snapshot, change, and undo.

Safety of the network: pods live on `BRIDGE` (`POD_CIDR`); the Service range is routed to
the bridge too (so the host's own connections to a cluster IP get a route, and kube-proxy's
OUTPUT rules turn them into pod addresses), and the rest of the pod supernet has a blackhole
route, so no packet for either range ever takes the default route; a
mangle-table guard (evaluated before kube-proxy's filter rules) drops anything forwarded
between the bridge and any other interface, so pods reach the host and each other only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import certs

Progress = Callable[[str], None]

BRIDGE = "aqbr0"
POD_SUPERNET = "10.244.0.0/16"
POD_CIDR = "10.244.0.0/24"
GATEWAY_IP = "10.244.0.1"
SERVICE_CIDR = certs.SERVICE_CLUSTER_IP_RANGE
BLACKHOLES = (POD_SUPERNET,)
#: Ranges routed onto the bridge (besides `POD_CIDR`, which is on-link): the Service range.
#: A blackhole here would make the host's connect() to a cluster IP fail before kube-proxy's
#: OUTPUT DNAT runs; a packet for an unused cluster IP now dies on the bridge, on this machine.
BRIDGE_ROUTES = (SERVICE_CIDR,)
#: The record of the one node this machine may run (tmpfs: gone with a reboot, as is
#: everything it describes). Overridable for tests of the record logic only.
RECORD = Path(os.environ.get("AGENTQUEUE_NODE_RECORD", "/run/agentqueue/node.json"))
#: Pods' cgroups live under this parent in every hierarchy (kubelet ``cgroupRoot``).
CGROUP_PARENT = "agentqueue"
GUARD_CHAIN = "AQ-FORWARD"
#: iptables chains owned by the node: kube-proxy's and kubelet's (KUBE-) and ours. Not CNI-:
#: our bridge network neither masquerades nor maps ports, so it makes none, and an image
#: build's CNI network running beside the node keeps its chains.
CHAIN_PREFIXES = ("KUBE-", "AQ-")
#: Machine paths that containerd/CNI/kubelet use whatever their configuration says (shim
#: sockets, the CNI result cache, kubelet's log symlinks). Cleanup removes only what the node
#: put there, and directories that did not exist before, so another containerd sharing
#: them (e.g. an image build) keeps its files.
SIDE_PATHS = ("/run/netns", "/var/lib/cni", "/run/containerd", "/var/log/containers",
              "/var/log/pods", "/opt/containerd", "/etc/cni")
NETNS_DIR = Path("/run/netns")
#: containerd 1.6's CRI names every pod network namespace ``cni-<uuid>`` under /run/netns.
NETNS_PREFIX = "cni-"
CNI_NETWORK = "agentqueue"

#: sysctl trees snapshotted; per-interface entries only for interfaces that exist now.
_SYSCTL_ROOTS = ("kernel", "vm", "net/ipv4", "net/ipv6", "net/bridge", "net/netfilter",
                 "net/core")
#: Values the kernel changes on its own, or write-only triggers: never restored.
_SYSCTL_SKIP = re.compile(
    r"^(kernel/(random|ns_last_pid|tainted|perf_event_max_sample_rate|usermodehelper"
    r"|sched_domain|hostname|domainname|core_pattern)"
    r"|vm/(drop_caches|compact_memory|stat_refresh)"
    r"|net/ipv[46]/(route/flush|neigh/)"
    r"|net/netfilter/nf_conntrack_count)")
_IFACE_DIRS = re.compile(r"^net/ipv[46]/conf/([^/]+)/")
#: Restored first: writing ip_forward resets every interface's `forwarding`.
_SYSCTL_FIRST = ("net/ipv4/ip_forward",)


class HostError(RuntimeError):
    """The machine cannot host the node, or another node owns it."""


def _run(cmd: list[str], check: bool = True, input: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, text=True, input=input, capture_output=True)


# ----- sysctls ---------------------------------------------------------------------------

def sysctl_snapshot() -> dict[str, str]:
    """Every readable, writable sysctl under `_SYSCTL_ROOTS` (key: path under /proc/sys)."""
    base = Path("/proc/sys")
    out: dict[str, str] = {}
    for root in _SYSCTL_ROOTS:
        for dirpath, _dirs, files in os.walk(base / root):
            rel_dir = os.path.relpath(dirpath, base)
            for name in files:
                key = f"{rel_dir}/{name}"
                if _SYSCTL_SKIP.match(key):
                    continue
                path = Path(dirpath) / name
                if not os.stat(path).st_mode & 0o200:
                    continue
                try:
                    out[key] = path.read_text()
                except OSError:
                    continue  # write-only or not readable in this namespace
    return out


def restore_sysctls(snapshot: dict[str, str]) -> list[str]:
    """Write back every value that differs from `snapshot`; returns the keys written."""
    changed: list[str] = []
    keys = [k for k in _SYSCTL_FIRST if k in snapshot]
    keys += sorted(k for k in snapshot if k not in _SYSCTL_FIRST)
    for key in keys:
        path = Path("/proc/sys") / key
        try:
            if path.read_text() == snapshot[key]:
                continue
            path.write_text(snapshot[key])
            changed.append(key.replace("/", "."))
        except OSError:
            continue  # interface gone, or a value the kernel now refuses
    return changed


def set_sysctl(key: str, value: str) -> None:
    Path("/proc/sys", key.replace(".", "/")).write_text(value)


# ----- iptables ---------------------------------------------------------------------------

_FAMILIES = {"ip": ("iptables", "iptables-save", "iptables-restore"),
             "ip6": ("ip6tables", "ip6tables-save", "ip6tables-restore")}


def iptables_save(family: str = "ip") -> str:
    """``iptables-save`` without counters and comment lines (comparable across runs)."""
    out = _run([_FAMILIES[family][1]]).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith("#")) + "\n"


def _tables(saved: str) -> list[str]:
    return [ln[1:] for ln in saved.splitlines() if ln.startswith("*")]


def _owned(chain: str) -> bool:
    return chain.startswith(CHAIN_PREFIXES)


def remove_owned_rules(family: str) -> int:
    """Delete every rule in or jumping to a node-owned chain, then those chains."""
    script = removal_script(iptables_save(family))
    if script:
        _run([_FAMILIES[family][2], "--noflush"], input="\n".join(script) + "\n")
    return sum(1 for line in script if line.startswith(("-D ", "-X ")))


def removal_script(saved: str) -> list[str]:
    """``iptables-restore --noflush`` input undoing the node's rules in `saved` (pure).

    Jumps into node-owned chains from other chains are deleted rule by rule (their exact
    text, as saved); node-owned chains are flushed, then deleted. Nothing else is touched.
    """
    script: list[str] = []
    table = ""
    deletes: list[str] = []
    chains: list[str] = []
    for line in saved.splitlines() + ["*"]:
        if line.startswith("*"):
            if table and (deletes or chains):
                script += [f"*{table}", *deletes, *(f"-F {c}" for c in chains),
                           *(f"-X {c}" for c in chains), "COMMIT"]
            table, deletes, chains = line[1:], [], []
        elif line.startswith(":") and _owned(line[1:].split()[0]):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            parts = line.split()
            if not _owned(parts[1]) and (_owned(_arg(parts, "-j")) or _owned(_arg(parts, "-g"))):
                deletes.append("-D " + line[3:])
    return script


def _arg(parts: list[str], flag: str) -> str:
    return parts[parts.index(flag) + 1] if flag in parts else ""


def foreign_kube_chains() -> list[str]:
    """KUBE-* chains present now (before our node starts they belong to someone else)."""
    found = []
    for family in _FAMILIES:
        table = ""
        for line in iptables_save(family).splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":KUBE-"):
                found.append(f"{family} {table} {line[1:].split()[0]}")
    return found


def drop_new_empty_tables(family: str, tables_before: Iterable[str]) -> list[str]:
    """Delete tables the node brought into existence (iptables-nft keeps them once made)."""
    before = set(tables_before)
    dropped: list[str] = []
    saved = iptables_save(family)
    blocks = re.split(r"^\*", saved, flags=re.M)[1:]
    for block in blocks:
        lines = block.splitlines()
        name = lines[0].strip()
        if name in before:
            continue
        policies = [ln for ln in lines[1:] if ln.startswith(":")]
        rules = [ln for ln in lines[1:] if ln.startswith("-")]
        default = all(ln.split()[1] == "ACCEPT" for ln in policies)
        builtin_only = all(ln[1:].split()[0].isupper() and not _owned(ln[1:].split()[0])
                           and ln.split()[1] != "-" for ln in policies)
        if rules or not default or not builtin_only:
            continue
        if _run(["nft", "delete", "table", family, name], check=False).returncode == 0:
            dropped.append(f"{family} {name}")
    return dropped


def _guard_rules() -> list[list[str]]:
    # Bridge to bridge passes (pod to pod, also via a Service); any other forwarded
    # packet that enters or leaves by the bridge is dropped: pods reach the host only.
    return [["-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN"],
            ["-i", BRIDGE, "-j", "DROP"],
            ["-o", BRIDGE, "-j", "DROP"]]


def install_forward_guard() -> None:
    _run(["iptables", "-t", "mangle", "-N", GUARD_CHAIN])
    for rule in _guard_rules():
        _run(["iptables", "-t", "mangle", "-A", GUARD_CHAIN, *rule])
    _run(["iptables", "-t", "mangle", "-I", "FORWARD", "1", "-j", GUARD_CHAIN])


def forward_guard_ok() -> bool:
    """True if the guard is in place and the first rule of mangle FORWARD."""
    saved = iptables_save("ip")
    mangle = saved.split("*mangle", 1)[1].split("COMMIT", 1)[0] if "*mangle" in saved else ""
    forward = [ln for ln in mangle.splitlines() if ln.startswith("-A FORWARD ")]
    return bool(forward) and forward[0] == f"-A FORWARD -j {GUARD_CHAIN}" and all(
        f"-A {GUARD_CHAIN} {' '.join(r)}" in mangle for r in _guard_rules())


# ----- routes, bridge ------------------------------------------------------------------------

def routes() -> list[dict[str, Any]]:
    return list(json.loads(_run(["ip", "-j", "route", "show", "table", "all"]).stdout or "[]"))


def check_ranges_free() -> None:
    """Refuse when any route already covers our pod or Service ranges (another CNI, a VPN)."""
    ours = [ipaddress.ip_network(n) for n in (*BLACKHOLES, *BRIDGE_ROUTES)]
    for r in routes():
        dst = r.get("dst", "")
        if dst in ("default", "") or r.get("table") == "local" or ":" in dst:
            continue
        try:
            net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        for mine in ours:
            if isinstance(net, ipaddress.IPv4Network) and net.overlaps(mine):
                raise HostError(f"route {dst} ({r.get('dev') or r.get('type')}) overlaps the "
                                f"node's range {mine}; remove it or stop what owns it")


def create_bridge() -> None:
    _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    # No IPv6 on the bridge: pods are IPv4-only and must not autoconfigure anything.
    set_sysctl(f"net.ipv6.conf.{BRIDGE}.disable_ipv6", "1")
    _run(["ip", "addr", "add", f"{GATEWAY_IP}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    for net in BLACKHOLES:
        _run(["ip", "route", "add", "blackhole", net])
    for net in BRIDGE_ROUTES:
        _run(["ip", "route", "add", net, "dev", BRIDGE, "src", GATEWAY_IP])


def remove_bridge_and_routes() -> list[str]:
    done: list[str] = []
    for net in BRIDGE_ROUTES:  # gone with the bridge anyway; explicit for a clear report
        if _run(["ip", "route", "del", net, "dev", BRIDGE], check=False).returncode == 0:
            done.append(f"route {net} dev {BRIDGE}")
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run(["ip", "link", "del", BRIDGE], check=False)
        done.append(f"bridge {BRIDGE}")
    for net in BLACKHOLES:
        if _run(["ip", "route", "del", "blackhole", net], check=False).returncode == 0:
            done.append(f"blackhole {net}")
    return done


# ----- mounts, netns, cgroups, processes ---------------------------------------------------

def mount_points() -> list[str]:
    points = []
    with open("/proc/self/mounts") as f:
        for line in f:
            # /proc/mounts escapes blanks as octal (\\040).
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[1]))
    return points


def unmount_under(roots: Iterable[str], keep: Iterable[str] = ()) -> list[str]:
    """Unmount (deepest first, lazily if busy) every mount under `roots` not in `keep`."""
    prefixes = [r.rstrip("/") + "/" for r in roots]
    kept = set(keep)
    done: list[str] = []
    for _ in range(3):  # a mount may hide another one below it
        targets = sorted({p for p in mount_points()
                          if p not in kept and any(p.startswith(x) for x in prefixes)},
                         key=lambda p: p.count("/"), reverse=True)
        if not targets:
            break
        for p in targets:
            if _run(["umount", p], check=False).returncode != 0:
                _run(["umount", "-l", p], check=False)
            done.append(p)
    return done


def netns_names() -> list[str]:
    return sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []


def remove_new_netns(before: Iterable[str]) -> list[str]:
    old = set(before)
    removed = []
    for name in netns_names():
        if name.startswith(NETNS_PREFIX) and name not in old:
            path = NETNS_DIR / name
            if _run(["umount", str(path)], check=False).returncode != 0:
                _run(["umount", "-l", str(path)], check=False)
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(name)
    return removed


def cgroup_mounts() -> list[Path]:
    """Every cgroup v1 hierarchy and the cgroup2 mount(s)."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] in ("cgroup", "cgroup2"):
                out.append(Path(fields[1]))
    return out


def create_cgroup_parent() -> list[str]:
    made = []
    for mnt in cgroup_mounts():
        path = mnt / CGROUP_PARENT
        if not path.exists():
            path.mkdir()
            made.append(str(path))
    return made


def _cgroup_pids(root: Path) -> set[int]:
    pids: set[int] = set()
    for dirpath, _dirs, files in os.walk(root):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in (Path(dirpath) / "cgroup.procs").read_text().split())
    return pids


def kill_cgroup_tree(timeout: float = 10.0) -> int:
    """SIGKILL every process in the pods' cgroups; returns how many were signalled."""
    roots = [m / CGROUP_PARENT for m in cgroup_mounts() if (m / CGROUP_PARENT).exists()]
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = set().union(*(_cgroup_pids(r) for r in roots)) if roots else set()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.1)
    # Their parents (shims) are gone too: init reaps them; wait a moment so that no
    # process entry of a pod outlives the cleanup.
    reap_deadline = time.monotonic() + 3.0
    while time.monotonic() < reap_deadline and any(Path(f"/proc/{p}").exists() for p in killed):
        time.sleep(0.05)
    return len(killed)


def remove_cgroups(timeout: float = 10.0) -> list[str]:
    """rmdir the pods' cgroup trees bottom-up (a cgroup empties a moment after its tasks die)."""
    removed: list[str] = []
    deadline = time.monotonic() + timeout
    for mnt in cgroup_mounts():
        root = mnt / CGROUP_PARENT
        if not root.exists():
            continue
        dirs = [Path(d) for d, _s, _f in os.walk(root)]
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        removed.append(str(root))
    return removed


def processes_matching(needle: str) -> list[int]:
    """Pids whose command line contains `needle` (e.g. our containerd socket path)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry))
    return pids


def kill_pids(pids: Iterable[int], timeout: float = 5.0) -> None:
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except (OSError, IndexError):
        return False


def side_dirs() -> list[str]:
    """Every directory under `SIDE_PATHS` now (to tell later which ones the node made)."""
    out: list[str] = []
    for side in SIDE_PATHS:
        if os.path.isdir(side) and not os.path.islink(side):
            out += [d for d, _s, _f in os.walk(side)]
    return out


def _live_unix_sockets() -> set[str]:
    with open("/proc/net/unix") as f:
        return {ln.split()[-1] for ln in list(f)[1:] if len(ln.split()) >= 8}


def remove_side_files(state_dir: Path, dirs_before: Iterable[str],
                      sandbox_ids: Iterable[str] = ()) -> list[str]:
    """Remove what the node left under `SIDE_PATHS`: CNI results of its network or its
    sandboxes, symlinks into its state dir, shim sockets nobody listens on, then directories
    that are empty now and did not exist before. Everything else is someone else's."""
    ids = tuple(sandbox_ids)
    keep_dirs = set(dirs_before)
    live = _live_unix_sockets()
    ours = str(state_dir).rstrip("/") + "/"
    removed: list[str] = []
    for side in SIDE_PATHS:
        if not os.path.isdir(side) or os.path.islink(side):
            continue
        for dirpath, _dirs, files in os.walk(side, topdown=False):
            for name in files:
                path = os.path.join(dirpath, name)
                mine = (
                    (os.path.islink(path) and os.readlink(path).startswith(ours))
                    or ("/cni/" in path and (name.startswith(f"{CNI_NETWORK}-")
                                             or any(f"-{i}-" in name for i in ids)))
                    or (_is_socket(path) and path not in live and "/containerd/" in path))
                if mine:
                    os.unlink(path)
                    removed.append(path)
            if dirpath not in keep_dirs and not os.listdir(dirpath):
                os.rmdir(dirpath)
                removed.append(dirpath)
    return removed


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False
