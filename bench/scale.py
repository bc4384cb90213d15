"""Scale (issue 15): one operator for 10,000 queues and 10,000 consumer groups.

On the local stack (bench/stack.py: redis-server, etcd + kube-apiserver +
kube-controller-manager, the operator as a subprocess with ``--drift-interval 30s`` and
its Prometheus metrics on a free loopback port), one Redis server for everything:

1. **0 objects**: right after the operator serves its metrics: RSS (and the traced heap,
   below). Then one warm-up queue in its own namespace (the operator connects, loads the
   Functions library), not counted below.
2. **Burst** (``--burst``, default 1,000; at most half of ``--scale``): that many queues
   created at once (8 client threads) → all ``Ready=True`` at ``observedGeneration``,
   seen through a watch (goal < 15 s); then a ConsumerGroup on each (no
   ``scaleTargetRef``) created at once → all Ready with reason ``Active`` (goal < 15 s).
   After 40 s to settle, the operator at rest over a 60 s window: CPU (from
   ``/proc/<pid>/stat``, % of one core) and RSS (goals < 3%, < 150 MB).
3. **Scale** (``--scale``, default 10,000): the queues and groups up to that many each,
   created the same way (progress lines with rates), then ONE busy group beside them in
   its own namespace: a Deployment target (replicas 0; no pods run here), a one-partition
   queue and a group with ``pollInterval: 1s``, ``activationLag: 1`` (bench/scaling.py).
   After 60 s to settle, at rest over a 60 s window: CPU and RSS (goals < 10%, < 400 MB)
   and the lag poll's time per tick: the operator's histogram
   ``agentqueue_redis_command_duration_seconds{operation="poll"}`` read from its metrics
   endpoint before and after the window, Δsum / Δcount. Then the busy group's scale
   reaction: XADD of one entry → the Deployment's ``spec.replicas`` leaving 0, 20 trials
   at random phases of the poll loop (goal p95 ≤ 2 s).

The queues are light but real: one-partition Streams with ONE consumer access entry
each (so one ACL user and one credentials Secret per queue), all in one namespace.
Creating 20,000 objects is bound by the apiserver + etcd (~140 creates/s with 8 threads
on a 2-core VM: ~2.5 min of creates alone at 10,000 + 10,000).

**Memory.** With ``AQ_TRACEMALLOC_DIR=<dir>`` in the benchmark's environment the operator
(this checkout's) is started under ``agentqueue.memtrace`` (``tracemalloc``, frames from
``AQ_TRACEMALLOC_FRAMES``, default 10). At 0 objects, after the burst and at scale — each
after its idle window, so the snapshot's CPU is not counted — the benchmark sends the
operator SIGUSR2 (only when /proc shows it catches SIGUSR2: the default action would kill
it), waits for ``<dir>/tracemalloc-<pid>-<n>.txt`` and logs its bytes-per-package table
and top lines; a row per point gives RSS / traced Python heap. Tracing costs CPU and
memory: never publish CPU or RSS figures from a traced run (the rows say "traced").
With ``AQ_TRACEMALLOC_FRAMES=0`` nothing is traced: each point writes a census of the
live Python objects by type instead (``agentqueue.memtrace.census``), and the CPU and RSS
rows stay comparable (the census runs after each idle window; its walk briefly takes
memory of its own, which the next RSS reading may still hold).

**Baseline** (``--baseline-ref <git ref>``, default none): the operator of that ref,
checked out with ``git worktree add --detach`` into a temp dir and run with only its
``operator/`` and ``clients/python/`` on PYTHONPATH (and its CRDs), on a fresh stack after
this one is torn down: the burst (queues Ready, groups Ready, at rest CPU / RSS) is
measured again and the ratio column gives new ÷ baseline (below 1 is better in every
row). The worktree is removed afterwards. Never at scale: the burst only.

Quick mode: burst 20, scale 30, 2-3 s windows, 3 trials (runs in well under a minute).

    python -m bench.scale                         # 1,000 burst, 10,000 at scale
    python -m bench.scale --scale 3000            # cut the run short
    python -m bench.scale --baseline-ref main     # + ratios against main's operator
    AQ_TRACEMALLOC_DIR=/tmp/tm python -m bench.scale --scale 2000   # memory by package
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    ROOT,
    Row,
    fmt_ms,
    fmt_ratio,
    fmt_s,
    guarded,
    latency_triplet,
    log,
    met,
    percentile,
    proc_cpu_seconds,
    proc_rss_bytes,
    table,
)
from .reconcile import finish_profiler, start_profiler
from .scaling import Scaling
from .stack import TRACEMALLOC_ENV, LocalStack, ReadyWatch

FRAMES_ENV = "AQ_TRACEMALLOC_FRAMES"

NAME = "scale"
API_VERSION = "agentqueue.io/v1alpha1"
NS, WARMUP_NS, BUSY_NS = "bench-scale", "bench-scale-warmup", "bench-scale-busy"
DEFAULT_SCALE, DEFAULT_BURST = 10_000, 1_000

READY_GOAL_S = 15.0
BURST_CPU_GOAL, BURST_RSS_GOAL = 0.03, 150_000_000
SCALE_CPU_GOAL, SCALE_RSS_GOAL = 0.10, 400_000_000
REACTION_P95_GOAL_S = 2.0
POLL_METRIC = "agentqueue_redis_command_duration_seconds"
PATCHES_METRIC = "agentqueue_status_patches_total"
QUIET_PATCHES, QUIET_MAX_S = 10, 600.0


@dataclass(frozen=True)
class Plan:
    burst: int
    scale: int
    settle_s: float          # before the burst's idle window
    scale_settle_s: float    # before the idle window at scale
    window_s: float
    trials: int
    zero_settle_s: float
    quiet_slice_s: float = 20.0  # the quiet check's slice (wait_quiet)


QUICK = Plan(burst=20, scale=30, settle_s=2.0, scale_settle_s=3.0, window_s=3.0, trials=3,
             zero_settle_s=1.0, quiet_slice_s=2.0)


def full_plan(scale: int, burst: int = DEFAULT_BURST) -> Plan:
    scale = max(2, scale)
    return Plan(burst=max(1, min(burst, scale // 2)), scale=scale, settle_s=40.0,
                scale_settle_s=60.0, window_s=60.0, trials=20, zero_settle_s=5.0)


def queue_name(i: int) -> str:
    return f"q-{i:05d}"


def group_name(i: int) -> str:
    return f"g-{i:05d}"


def queue_body(name: str) -> dict[str, Any]:
    """One partition, one consumer access entry: one ACL user and one Secret."""
    return {"apiVersion": API_VERSION, "kind": "AgentQueue", "metadata": {"name": name},
            "spec": {"type": "Stream", "partitions": 1,
                     "access": {"consumers": [{"name": "worker"}]}}}


def group_body(name: str, queue: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "ConsumerGroup", "metadata": {"name": name},
            "spec": {"queueRef": {"name": queue}}}


# --- figures ----------------------------------------------------------------------------

@dataclass
class Burst:
    """The burst's figures, for this operator or the baseline's."""

    n: int
    queues_created_s: float = 0.0
    queues_ready_s: float = 0.0
    queues_latency: list[float] = field(default_factory=list)
    groups_created_s: float = 0.0
    groups_ready_s: float = 0.0
    cpu: float = 0.0
    rss: int = 0


@dataclass
class AtScale:
    queues: int
    groups: int
    queues_created_s: float = 0.0
    queues_ready_s: float = 0.0
    groups_created_s: float = 0.0
    groups_ready_s: float = 0.0
    cpu: float = 0.0
    rss: int = 0
    poll_mean_s: float | None = None
    poll_ticks: int = 0
    reaction: list[float] = field(default_factory=list)


@dataclass
class MemoryPoint:
    label: str
    rss: int
    traced: int | None
    note: str = ""


# --- creating and waiting ---------------------------------------------------------------

def create_all(stack: LocalStack, plural: str, namespace: str,
               bodies: Sequence[dict[str, Any]], progress: bool) -> tuple[dict[str, float], float]:
    """Create concurrently (8 threads); → name → monotonic time just before its create
    call, and the seconds all creates took. ``progress``: a line every 1,000 creates."""
    started: dict[str, float] = {}
    done = [0]
    lock = threading.Lock()
    t0 = time.monotonic()

    def one(body: dict[str, Any]) -> None:
        started[body["metadata"]["name"]] = time.monotonic()
        stack.create(plural, namespace, body)
        with lock:
            done[0] += 1
            n = done[0]
        if progress and n % 1000 == 0:
            elapsed = time.monotonic() - t0
            log(f"  {n:,} of {len(bodies):,} {plural} created in {elapsed:.0f}s "
                f"({n / elapsed:.0f}/s)")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, bodies))
    return started, time.monotonic() - t0


def create_and_wait(stack: LocalStack, plural: str, bodies: Sequence[dict[str, Any]],
                    timeout: float, reason: str | None = None
                    ) -> tuple[float, float, list[float]]:
    """→ (creates took, first create → all Ready, per-object create → Ready)."""
    names = {b["metadata"]["name"] for b in bodies}
    big = len(bodies) >= 1000
    with ReadyWatch(stack, plural, NS, reason=reason) as watch:
        t0 = time.monotonic()
        started, created = create_all(stack, plural, NS, bodies, progress=big)
        log(f"  {len(bodies):,} {plural} created in {created:.1f}s; waiting for Ready")
        watch.wait(names, timeout, stack.check_operator, progress_every=10.0 if big else None)
        ready = max(watch.ready_at[n] for n in names) - t0
        latencies = [watch.ready_at[n] - started[n] for n in names]
    return created, ready, latencies


def ready_timeout(n: int) -> float:
    return max(180.0, 0.5 * n)


# --- measuring --------------------------------------------------------------------------

def idle_window(stack: LocalStack, settle_s: float, window_s: float,
                label: str, quiet_slice_s: float = 20.0) -> tuple[float, int, dict[str, float] | None, dict[str, float] | None]:
    """CPU share of one core over the window after ``settle_s``, RSS at its end, and the
    poll histogram (sum, count) before and after (None without metrics)."""
    time.sleep(settle_s)
    wait_quiet(stack, label, quiet_slice_s)
    stack.check_operator()
    pid = stack.operator_pid
    profiler = start_profiler(pid, window_s, label)
    before = poll_histogram(stack)
    cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
    time.sleep(window_s)
    cpu1, t1 = proc_cpu_seconds(pid), time.monotonic()
    after = poll_histogram(stack)
    stack.check_operator()
    if profiler is not None:
        finish_profiler(*profiler)
    return (cpu1 - cpu0) / (t1 - t0), proc_rss_bytes(pid), before, after


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')


def scrape(url: str) -> str:
    """The metrics page (loopback only; any proxy setting ignored)."""
    with _NO_PROXY.open(url, timeout=10) as resp:
        return str(resp.read().decode("utf-8", "replace"))


def histogram(text: str, name: str, labels: dict[str, str]) -> dict[str, float]:
    """``{"sum": s, "count": c}`` of one labelled series of a histogram (zeros if absent)."""
    out = {"sum": 0.0, "count": 0.0}
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m["name"] not in (f"{name}_sum", f"{name}_count"):
            continue
        present = (m["labels"] or "").split(",")
        if all(w in present for w in wanted):
            out[m["name"].rsplit("_", 1)[1]] += float(m["value"])
    return out


def status_patches(stack: LocalStack) -> float | None:
    """agentqueue_status_patches_total over all kinds (None without metrics)."""
    if not stack.metrics_port:
        return None
    total = None
    for line in scrape(stack.metrics_url).splitlines():
        m = _SAMPLE.match(line)
        if m and m["name"] == PATCHES_METRIC:
            total = (total or 0.0) + float(m["value"])
    return total or 0.0


def wait_quiet(stack: LocalStack, label: str, slice_s: float = 20.0) -> float:
    """After the settle time: wait until the operator has stopped catching up, i.e. sent
    at most QUIET_PATCHES status patches in QUIET_SLICE_S (at rest only changes are
    written; at 10,000 objects the first ticks of new groups and queues keep writing for
    minutes after the last is Ready). At most QUIET_MAX_S; returns the seconds waited."""
    t0 = time.monotonic()
    last = status_patches(stack)
    if last is None:
        return 0.0
    while time.monotonic() - t0 < QUIET_MAX_S:
        time.sleep(slice_s)
        now = status_patches(stack) or 0.0
        if now - last <= QUIET_PATCHES:
            waited = time.monotonic() - t0
            log(f"scale[{label}]: quiet ({now - last:.0f} status patches in "
                f"{slice_s:.0f}s) after {waited:.0f}s more")
            return waited
        last = now
    log(f"scale[{label}]: still writing status after {QUIET_MAX_S:.0f}s more; measuring anyway")
    return time.monotonic() - t0


def poll_histogram(stack: LocalStack) -> dict[str, float] | None:
    if not stack.metrics_port:
        return None
    try:
        return histogram(scrape(stack.metrics_url), POLL_METRIC, {"operation": "poll"})
    except OSError as exc:
        log(f"scale: metrics not readable ({exc})")
        return None


def wait_metrics(stack: LocalStack, timeout: float = 240.0) -> float:
    """Until the operator serves its metrics (it has started; traced, its imports alone
    take ~30 s here); → seconds waited."""
    t0 = time.monotonic()
    while True:
        stack.check_operator()
        try:
            scrape(stack.metrics_url)
            return time.monotonic() - t0
        except OSError:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"the operator served no metrics within {timeout:.0f}s: "
                                   f"{stack.operator_log_tail()}") from None
            time.sleep(0.1)


def catches_sigusr2(pid: int) -> bool:
    """From /proc/<pid>/status SigCgt: does the process handle SIGUSR2 (else it dies)?"""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGUSR2 - 1) & 1)
    except OSError:
        pass
    return False


def memory_point(stack: LocalStack, label: str, timeout: float = 900.0) -> MemoryPoint:
    """RSS now and, when traced, a tracemalloc snapshot (SIGUSR2) summarised in the log."""
    pid = stack.operator_pid
    rss = proc_rss_bytes(pid)
    directory = stack.tracemalloc_dir
    if directory is None:
        return MemoryPoint(label, rss, None, f"{TRACEMALLOC_ENV} not set")
    if not catches_sigusr2(pid):
        log(f"scale: the operator does not catch SIGUSR2 (no agentqueue.memtrace): no "
            f"snapshot at {label}")
        return MemoryPoint(label, rss, None, "no SIGUSR2 handler")
    known = set(directory.glob(f"tracemalloc-{pid}-*.txt"))
    t0 = time.monotonic()
    os.kill(pid, signal.SIGUSR2)
    while True:
        new = set(directory.glob(f"tracemalloc-{pid}-*.txt")) - known
        if new:
            path = max(new, key=lambda p: p.stat().st_mtime)
            break
        stack.check_operator()
        if time.monotonic() - t0 > timeout:
            log(f"scale: no tracemalloc snapshot within {timeout:.0f}s at {label}")
            return MemoryPoint(label, rss, None, "snapshot timed out")
        time.sleep(0.2)
    text = path.read_text(errors="replace")
    traced = traced_bytes(text)
    log(f"scale: memory at {label}: RSS {rss / 1e6:.0f} MB, traced "
        f"{(traced or 0) / 2**20:.1f} MiB (snapshot {time.monotonic() - t0:.1f}s, {path})")
    for line in summary_lines(text):
        log("  " + line)
    return MemoryPoint(label, rss, traced)


def traced_bytes(text: str) -> int | None:
    """The traced heap, or in the census mode the live Python objects' bytes."""
    for line in text.splitlines():
        if line.startswith(("traced_bytes:", "census_bytes:")):
            return int(line.split(":", 1)[1])
    return None


def summary_lines(text: str, top: int = 12) -> list[str]:
    """The package table and the top lines of a memtrace summary, for the log."""
    lines = text.splitlines()
    out = [x for x in lines if x.startswith(("package ", "traced_", "tracemalloc_", "census_",
                                             "module "))]
    out += [x for x in lines if x.startswith(("line ", "type "))][:top]
    return out


# --- the phases -------------------------------------------------------------------------

def burst(stack: LocalStack, plan: Plan, who: str) -> Burst:
    """The burst: queues, then a group on each, then at rest."""
    stack.create_namespace(WARMUP_NS)
    stack.create("agentqueues", WARMUP_NS, queue_body("warmup"))
    t0 = time.monotonic()
    stack.wait_ready("agentqueues", WARMUP_NS, "warmup", 120)
    log(f"scale[{who}]: warm-up queue Ready after {time.monotonic() - t0:.1f}s")
    stack.create_namespace(NS)
    out = Burst(plan.burst)
    n = plan.burst
    log(f"scale[{who}]: {n:,} queues at once")
    out.queues_created_s, out.queues_ready_s, out.queues_latency = create_and_wait(
        stack, "agentqueues", [queue_body(queue_name(i)) for i in range(n)], ready_timeout(n))
    log(f"scale[{who}]: {n:,} queues all Ready after {out.queues_ready_s:.1f}s")
    log(f"scale[{who}]: {n:,} groups at once")
    out.groups_created_s, out.groups_ready_s, _ = create_and_wait(
        stack, "consumergroups", [group_body(group_name(i), queue_name(i)) for i in range(n)],
        ready_timeout(n), reason="Active")
    log(f"scale[{who}]: {n:,} groups all Ready after {out.groups_ready_s:.1f}s; settling "
        f"{plan.settle_s:.0f}s, then {plan.window_s:.0f}s at rest")
    out.cpu, out.rss, _, _ = idle_window(stack, plan.settle_s, plan.window_s,
                                         f"{who}-burst-{n}", plan.quiet_slice_s)
    log(f"scale[{who}]: at rest with {n:,}+{n:,}: CPU {out.cpu * 100:.1f}% of a core, RSS "
        f"{out.rss / 1e6:.0f} MB")
    return out


def grow(stack: LocalStack, plan: Plan) -> tuple[AtScale, Scaling]:
    """From the burst up to ``plan.scale`` queues and groups, the busy group, at rest,
    the busy group's reaction."""
    n0, n = plan.burst, plan.scale
    out = AtScale(n, n)
    if n > n0:
        log(f"scale: {n - n0:,} more queues (to {n:,})")
        out.queues_created_s, out.queues_ready_s, _ = create_and_wait(
            stack, "agentqueues", [queue_body(queue_name(i)) for i in range(n0, n)],
            ready_timeout(n - n0))
        log(f"scale: queues all Ready after {out.queues_ready_s:.1f}s (creates "
            f"{out.queues_created_s:.1f}s)")
        log(f"scale: {n - n0:,} more groups (to {n:,})")
        out.groups_created_s, out.groups_ready_s, _ = create_and_wait(
            stack, "consumergroups",
            [group_body(group_name(i), queue_name(i)) for i in range(n0, n)],
            ready_timeout(n - n0), reason="Active")
        log(f"scale: groups all Ready after {out.groups_ready_s:.1f}s (creates "
            f"{out.groups_created_s:.1f}s)")
    log("scale: the busy group (pollInterval 1s, a Deployment target)")
    busy = Scaling(stack, ns=BUSY_NS, queue="busy", cg="busy", deploy="busy-agent")
    busy.setup("1s", timeout=ready_timeout(n))
    log(f"scale: settling {plan.scale_settle_s:.0f}s, then {plan.window_s:.0f}s at rest with "
        f"{n:,}+{n:,}")
    out.cpu, out.rss, before, after = idle_window(stack, plan.scale_settle_s, plan.window_s,
                                                  f"scale-{n}", plan.quiet_slice_s)
    if before is not None and after is not None and after["count"] > before["count"]:
        out.poll_ticks = int(after["count"] - before["count"])
        out.poll_mean_s = (after["sum"] - before["sum"]) / (after["count"] - before["count"])
    log(f"scale: at rest with {n:,}+{n:,}: CPU {out.cpu * 100:.1f}% of a core, RSS "
        f"{out.rss / 1e6:.0f} MB, poll "
        + (f"{out.poll_mean_s * 1000:.1f} ms per tick over {out.poll_ticks} ticks"
           if out.poll_mean_s is not None else "not measured"))
    return out, busy


# --- baseline ---------------------------------------------------------------------------

def git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def baseline_burst(ref: str, plan: Plan) -> tuple[Burst, str]:
    """The burst with the operator of ``ref`` (a temporary detached worktree)."""
    commit = git("rev-parse", "--short", f"{ref}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix="aq-bench-baseline-"))
    src = tmp / "src"
    git("worktree", "add", "--detach", str(src), commit)
    log(f"scale: baseline {ref} ({commit}) checked out in {src}")
    try:
        with LocalStack(operator_root=src) as stack:
            return burst(stack, plan, f"baseline {commit}"), commit
    finally:
        try:
            git("worktree", "remove", "--force", str(src))
        except RuntimeError as exc:
            log(f"scale: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)
        git("worktree", "prune")


# --- the rows ---------------------------------------------------------------------------

def _vs(value: float, base: float | None, fmt: Any) -> tuple[str, str]:
    if base is None:
        return "", ""
    return fmt(base), fmt_ratio(value, base)


def _pct(x: float) -> str:
    return f"{x * 100:.1f}% of a core"


def _mb(x: float) -> str:
    return f"{x / 1e6:.0f} MB"


def rows_for(b: Burst, base: Burst | None, commit: str, s: AtScale | None,
             memory: list[MemoryPoint], traced: bool, census: bool = False) -> list[Row]:
    n = b.n
    tag = " (traced: not comparable)" if traced else ""
    rows: list[Row] = []
    base_cell, ratio = _vs(b.queues_ready_s, base.queues_ready_s if base else None, fmt_s)
    rows.append(Row(NAME, f"{n:,} queues at once: first create → all Ready (creates took "
                    f"{b.queues_created_s:.1f} s)" + (f"; baseline {commit}" if base else ""),
                    fmt_s(b.queues_ready_s), base_cell, ratio, "< 15 s",
                    met(b.queues_ready_s < READY_GOAL_S)))
    rows.append(Row(NAME, f"{n:,} queues at once: create → Ready per queue, p50 / p95 / max",
                    latency_triplet(b.queues_latency)))
    base_cell, ratio = _vs(b.groups_ready_s, base.groups_ready_s if base else None, fmt_s)
    rows.append(Row(NAME, f"{n:,} groups at once (one per queue): first create → all Ready "
                    f"(creates took {b.groups_created_s:.1f} s)", fmt_s(b.groups_ready_s),
                    base_cell, ratio, "< 15 s", met(b.groups_ready_s < READY_GOAL_S)))
    base_cell, ratio = _vs(b.cpu, base.cpu if base else None, _pct)
    rows.append(Row(NAME, f"operator idle CPU ({n:,} queues + {n:,} groups){tag}", _pct(b.cpu),
                    base_cell, ratio, "< 3%", met(b.cpu < BURST_CPU_GOAL)))
    base_cell, ratio = _vs(b.rss, base.rss if base else None, _mb)
    rows.append(Row(NAME, f"operator RSS ({n:,} queues + {n:,} groups){tag}", _mb(b.rss),
                    base_cell, ratio, "< 150 MB", met(b.rss < BURST_RSS_GOAL)))
    if s is not None:
        what = f"{s.queues:,} queues + {s.groups:,} groups"
        if s.queues_ready_s:
            rows.append(Row(NAME, f"growing to {what}: queues all Ready / groups all Ready "
                            f"(creates took {s.queues_created_s:.0f} s / "
                            f"{s.groups_created_s:.0f} s)",
                            f"{fmt_s(s.queues_ready_s)} / {fmt_s(s.groups_ready_s)}"))
        rows.append(Row(NAME, f"operator idle CPU ({what}, one Redis){tag}", _pct(s.cpu),
                        "", "", "< 10%", met(s.cpu < SCALE_CPU_GOAL)))
        rows.append(Row(NAME, f"operator RSS ({what}){tag}", _mb(s.rss), "", "", "< 400 MB",
                        met(s.rss < SCALE_RSS_GOAL)))
        poll = (f"{fmt_ms(s.poll_mean_s)} ({s.poll_ticks} ticks)" if s.poll_mean_s is not None
                else "not measured (no poll observations in the window)")
        rows.append(Row(NAME, f"lag poll time per tick, mean ({what}; "
                        f"{POLL_METRIC}{{operation=\"poll\"}} Δsum/Δcount){tag}", poll))
        if s.reaction:
            p95 = percentile(s.reaction, 95)
            rows.append(Row(NAME, f"1 busy group among {s.groups:,}: work → spec.replicas 0→1, "
                            f"pollInterval 1s, p50 / p95 / max ({len(s.reaction)} trials)",
                            latency_triplet(s.reaction), "", "", "p95 ≤ 2 s",
                            met(p95 <= REACTION_P95_GOAL_S)))
    for m in memory:
        heap = f"{m.traced / 2**20:.1f} MiB" if m.traced is not None else f"— ({m.note})"
        heap_name = "Python objects (census)" if census else "traced Python heap"
        rows.append(Row(NAME, f"operator memory at {m.label}: RSS / {heap_name}",
                        f"{_mb(m.rss)} / {heap}"))
    return rows


def run(quick: bool, scale: int = DEFAULT_SCALE, baseline_ref: str | None = None,
        burst_size: int = DEFAULT_BURST) -> list[Row]:
    plan = QUICK if quick else full_plan(scale, burst_size)
    env_dir = os.environ.get(TRACEMALLOC_ENV)
    trace_dir = Path(env_dir).resolve() if env_dir else None
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
    log(f"scale: burst {plan.burst:,}, scale {plan.scale:,}"
        + (f", tracing into {trace_dir}" if trace_dir else "")
        + (f", baseline {baseline_ref}" if baseline_ref else ""))
    memory: list[MemoryPoint] = []
    started = time.monotonic()
    with LocalStack(metrics=True, tracemalloc_dir=trace_dir) as stack:
        waited = wait_metrics(stack)
        time.sleep(plan.zero_settle_s)
        log(f"scale: operator serving after {waited:.1f}s")
        memory.append(memory_point(stack, "0 objects (just started)"))
        b = burst(stack, plan, "new")
        memory.append(memory_point(stack, f"{plan.burst:,} queues + {plan.burst:,} groups"))
        s, busy = grow(stack, plan)
        memory.append(memory_point(stack, f"{plan.scale:,} queues + {plan.scale:,} groups"))
        log(f"scale: {plan.trials} scale-reaction trials of the busy group")
        s.reaction = busy.trials(plan.trials, 1.0)
        tmp = stack.tmp
    if tmp.exists() and os.environ.get("AQ_BENCH_KEEP") != "1":
        log(f"scale: WARNING: {tmp} (etcd, Redis data) is still there after teardown")
    log(f"scale: this operator done in {time.monotonic() - started:.0f}s; stack removed")
    base: Burst | None = None
    commit = ""
    if baseline_ref:
        t0 = time.monotonic()
        base, commit = baseline_burst(baseline_ref, plan)
        log(f"scale: baseline done in {time.monotonic() - t0:.0f}s")
    census = os.environ.get(FRAMES_ENV) == "0"
    return rows_for(b, base, commit, s, memory, trace_dir is not None and not census,
                    census)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (burst 20, scale 30)")
    parser.add_argument("--scale", type=int, default=DEFAULT_SCALE, metavar="N",
                        help=f"queues and groups at scale (default {DEFAULT_SCALE:,})")
    parser.add_argument("--burst", type=int, default=DEFAULT_BURST, metavar="N",
                        help=f"created at once (default {DEFAULT_BURST:,}; at most N/2)")
    parser.add_argument("--baseline-ref", metavar="REF",
                        help="also run the burst with the operator of this git ref")
    args = parser.parse_args(argv)
    rows = guarded(NAME, lambda quick: run(quick, args.scale, args.baseline_ref, args.burst),
                   args.quick)
    print(table(rows), flush=True)
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
