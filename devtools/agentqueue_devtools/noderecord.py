"""The machine record of the one node a machine may run, and the cleanup that works from it.

`Node.prepare_host()` writes `hostnet.RECORD` before its first change: a snapshot of the
sysctls, iptables tables, netns, mounts and side directories, then the node's processes as
they start. `_cleanup()` undoes everything from that record alone, so the same code serves a
clean stop and the leftovers of a crashed (SIGKILLed) run.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import hostnet
from .controlplane import _Process

Progress = Callable[[str], None]


class NodeError(RuntimeError):
    """The node cannot start here, another node runs, or cleanup left something behind."""


def _say(msg: str) -> None:
    print(f"[devcluster] {msg}", file=sys.stderr, flush=True)


def read_record() -> dict[str, Any] | None:
    try:
        return dict(json.loads(hostnet.RECORD.read_text()))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise NodeError(f"{hostnet.RECORD} is corrupt ({exc}); inspect and delete it") from exc


def write_record(record: dict[str, Any]) -> None:
    hostnet.RECORD.parent.mkdir(parents=True, exist_ok=True)
    tmp = hostnet.RECORD.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(hostnet.RECORD)


def start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def live_pids(record: dict[str, Any]) -> list[int]:
    """Recorded processes still running, and the owner if it still holds the node."""
    live = [p["pid"] for p in record.get("processes", [])
            if _Process(p["name"], p["pid"], p["executable"]).alive()]
    owner = record.get("owner", {})
    if owner and not record.get("detached") and start_time(owner["pid"]) == owner["start"]:
        live.append(owner["pid"])
    return live


def running_node() -> dict[str, Any] | None:
    """The record of the node running on this machine, if any (None if none or only leftovers)."""
    record = read_record()
    return record if record and live_pids(record) else None


def cleanup_leftovers(progress: Progress | None = None) -> list[str]:
    """Undo what a crashed node left (from `hostnet.RECORD`); returns what was restored.

    Refuses while the recorded node still runs: stop it with `Node.stop()` instead.
    """
    record = read_record()
    if record is None:
        return []
    live = live_pids(record)
    if live:
        raise NodeError(f"the node from {record['state_dir']} is still running (pids {live}); "
                        f"stop it first (agentqueue dev down)")
    say = progress or _say
    say(f"cleaning up what a previous node left ({hostnet.RECORD})")
    return cleanup(record, say)


def cleanup(record: dict[str, Any], say: Progress) -> list[str]:
    began = time.monotonic()
    done: list[str] = []
    errors: list[str] = []
    state_dir = Path(record["state_dir"])

    def step(name: str, fn: Callable[[], object]) -> None:
        try:
            result = fn()
            if isinstance(result, list) and result:
                done.append(f"{name}: {len(result)}")
            elif isinstance(result, int) and result:
                done.append(f"{name}: {result}")
        except Exception as exc:  # noqa: BLE001 - every step runs; failures are reported
            errors.append(f"{name}: {exc}")

    procs = [_Process(p["name"], p["pid"], p["executable"]) for p in record.get("processes", [])]
    def stop_procs() -> list[str]:
        alive = [p for p in procs if p.alive()]
        for p in alive:
            p.stop(5.0)
        return [p.name for p in alive]

    step("processes", stop_procs)
    sock = record.get("containerd_socket", "")
    step("shims", lambda: _kill(hostnet.processes_matching(f"-address {sock}")) if sock else [])
    step("pod processes", hostnet.kill_cgroup_tree)
    step("cgroups", hostnet.remove_cgroups)
    step("netns", lambda: hostnet.remove_new_netns(record["netns"]))
    step("mounts", lambda: hostnet.unmount_under(
        [str(state_dir), *hostnet.SIDE_PATHS], keep=record["mounts"]))
    for family, tables in record["iptables_tables"].items():
        step(f"{family}tables rules", functools.partial(hostnet.remove_owned_rules, family))
        step(f"{family} tables",
             functools.partial(hostnet.drop_new_empty_tables, family, tables))
    step("bridge and routes", hostnet.remove_bridge_and_routes)
    step("sysctls", lambda: _log_sysctls(hostnet.restore_sysctls(record["sysctls"]), say))
    step("runtime state", lambda: _remove_runtime_state(state_dir, record))
    if errors:
        raise NodeError("node cleanup incomplete (the record is kept; run it again):\n  "
                        + "\n  ".join(errors))
    hostnet.RECORD.unlink(missing_ok=True)
    say(f"machine restored in {time.monotonic() - began:.1f}s"
        + (f" ({'; '.join(done)})" if done else ""))
    return done


def _kill(pids: list[int]) -> list[int]:
    hostnet.kill_pids(pids)
    return pids


def _log_sysctls(changed: list[str], say: Progress) -> list[str]:
    if changed:
        say(f"sysctls restored: {', '.join(changed)}")
    return changed


def _safe_rmtree(path: Path) -> bool:
    # Never recurse into a mount (a lazily detached one may still be listed).
    prefix = str(path).rstrip("/") + "/"
    if any(m == str(path) or m.startswith(prefix) for m in hostnet.mount_points()):
        raise NodeError(f"{path} still has mounts; not removing it")
    if path.exists():
        shutil.rmtree(path)
        return True
    return False


def _remove_runtime_state(state_dir: Path, record: dict[str, Any]) -> list[str]:
    removed = []
    sandboxes = state_dir / "containerd" / "state" / "io.containerd.grpc.v1.cri" / "sandboxes"
    # CNI caches results per sandbox id outside our state dir (/var/lib/cni).
    ids = os.listdir(sandboxes) if sandboxes.is_dir() else []
    # Per-run state only: containerd's image store (containerd/root) is kept, so imported
    # images survive a restart.
    for sub in ("containerd/state", "kubelet", "cni/networks", "run", "pod-logs"):
        if _safe_rmtree(state_dir / sub):
            removed.append(sub)
    return removed + hostnet.remove_side_files(state_dir, record.get("side_dirs", []), ids)
