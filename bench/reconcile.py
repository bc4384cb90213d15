"""Reconcile: time from an API create (what ``kubectl apply`` sends) to Ready, and the
operator's cost at rest with 1,000 queues and 1,000 consumer groups.

The local stack (redis-server, etcd + kube-apiserver + kube-controller-manager, the
operator as a subprocess with ``--drift-interval 30s``) runs on this machine. Each queue
is a one-partition Stream with one producer and one consumer (two ACL users, two
Secrets); Ready means ``Ready=True`` at ``observedGeneration == generation``, seen
through a watch.

- 1 queue: sequential trials (create, wait for Ready, next), p50/p95/max.
  Goal: p95 < 300 ms.
- 100 and 1,000 queues created at once (8 client threads): per-queue latency
  p50/p95/max and the time until all are Ready. Goal: 1,000 all Ready < 60 s.
- Idle: the operator's CPU (from /proc/<pid>/stat, over a window) and RSS, first with
  the queues only (a 30 s window: one drift interval), then after a ConsumerGroup on
  each of the 1,000 queues is Ready and things have settled (60 s window).
  Goals (with the groups): CPU < 5% of one core; RSS < 200 MB.

Profiling: with ``AQ_BENCH_PROFILE_DIR=<dir>`` and py-spy installed, the 1,000-queue
burst (first 60 s) and each idle window are also sampled by py-spy (collapsed stacks written to <dir>, a summary to the log).

Quick mode: 3 single trials, 10 queues at once, 10 groups, 2-3 s idle windows.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import (
    Row,
    fmt_s,
    latency_triplet,
    log,
    main,
    met,
    percentile,
    proc_cpu_seconds,
    proc_rss_bytes,
)
from .stack import LocalStack, ReadyWatch

NAME = "reconcile"
_LINE = re.compile(r":\d+\)$")
API_VERSION = "agentqueue.io/v1alpha1"
SINGLE_P95_GOAL = 0.300
ALL_READY_GOAL = 60.0
CPU_GOAL = 0.05
RSS_GOAL = 200_000_000


@dataclass(frozen=True)
class Plan:
    single_trials: int
    batches: tuple[int, ...]
    groups: int
    settle_s: float
    queue_window_s: float
    idle_window_s: float


QUICK = Plan(single_trials=3, batches=(10,), groups=10, settle_s=2.0, queue_window_s=2.0,
             idle_window_s=3.0)
FULL = Plan(single_trials=30, batches=(100, 1000), groups=1000, settle_s=40.0,
            queue_window_s=30.0, idle_window_s=60.0)


def queue_body(name: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AgentQueue",
            "metadata": {"name": name},
            "spec": {"type": "Stream", "partitions": 1,
                     "access": {"producers": [{"name": "producer"}],
                                "consumers": [{"name": "worker"}]}}}


def group_body(name: str, queue: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "ConsumerGroup",
            "metadata": {"name": name},
            "spec": {"queueRef": {"name": queue}}}


def create_all(stack: LocalStack, plural: str, namespace: str,
               bodies: list[dict[str, Any]]) -> dict[str, float]:
    """Create concurrently; return name → monotonic time just before its create call."""
    started: dict[str, float] = {}

    def one(body: dict[str, Any]) -> None:
        started[body["metadata"]["name"]] = time.monotonic()
        stack.create(plural, namespace, body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, bodies))
    return started


def single_trials(stack: LocalStack, trials: int) -> list[float]:
    ns = "bench-single"
    stack.create_namespace(ns)
    latencies: list[float] = []
    with ReadyWatch(stack, "agentqueues", ns) as watch:
        for i in range(trials):
            name = f"single-{i}"
            start = time.monotonic()
            stack.create("agentqueues", ns, queue_body(name))
            watch.wait({name}, 60, stack.check_operator)
            latencies.append(watch.ready_at[name] - start)
            time.sleep(0.05)
    return latencies


def batch(stack: LocalStack, n: int, timeout: float) -> tuple[list[float], float, float, str]:
    ns = f"bench-batch-{n}"
    stack.create_namespace(ns)
    names = {f"q-{i:04d}" for i in range(n)}
    profiler = start_profiler(stack.operator_pid, 60, f"burst-{n}") if n >= 1000 else None
    with ReadyWatch(stack, "agentqueues", ns) as watch:
        t0 = time.monotonic()
        started = create_all(stack, "agentqueues", ns, [queue_body(x) for x in sorted(names)])
        created = time.monotonic() - t0
        watch.wait(names, timeout, stack.check_operator)
        all_ready = max(watch.ready_at.values()) - t0
        latencies = [watch.ready_at[x] - started[x] for x in names]
    if profiler is not None:
        finish_profiler(*profiler)
    return latencies, all_ready, created, ns


def create_groups(stack: LocalStack, ns: str, count: int, timeout: float) -> float:
    """A ConsumerGroup on each of the first ``count`` queues; → seconds until all Ready."""
    names = {f"g-{i:04d}" for i in range(count)}
    with ReadyWatch(stack, "consumergroups", ns) as watch:
        t0 = time.monotonic()
        create_all(stack, "consumergroups", ns,
                   [group_body(f"g-{i:04d}", f"q-{i:04d}") for i in range(count)])
        watch.wait(names, timeout, stack.check_operator)
        return time.monotonic() - t0


def idle(stack: LocalStack, settle_s: float, window_s: float, label: str) -> tuple[float, int]:
    """Operator CPU share (of one core) over ``window_s`` after ``settle_s``, and RSS.

    With AQ_BENCH_PROFILE_DIR set (and py-spy installed) the window is also sampled by
    py-spy; the collapsed stacks land in that directory and the top frames in the log.
    """
    time.sleep(settle_s)
    stack.check_operator()
    pid = stack.operator_pid
    profiler = start_profiler(pid, window_s, label)
    cpu0, t_start = proc_cpu_seconds(pid), time.monotonic()
    time.sleep(window_s)
    cpu1, t_end = proc_cpu_seconds(pid), time.monotonic()
    stack.check_operator()
    if profiler is not None:
        finish_profiler(*profiler)
    return (cpu1 - cpu0) / (t_end - t_start), proc_rss_bytes(pid)


def start_profiler(pid: int, seconds: float,
                   label: str) -> tuple[subprocess.Popen[bytes], Path] | None:
    out_dir = os.environ.get("AQ_BENCH_PROFILE_DIR")
    pyspy = shutil.which("py-spy")
    if not out_dir or not pyspy:
        return None
    path = Path(out_dir) / f"operator-{label}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--duration",
                             str(int(seconds)), "--rate", "100", "--format", "raw",
                             "--nonblocking", "--output", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, path


def finish_profiler(proc: subprocess.Popen[bytes], path: Path) -> None:
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if not path.exists():
        log(f"reconcile: py-spy wrote no profile to {path}")
        return
    log(f"reconcile: py-spy profile in {path}; frames by share of samples:")
    for line in summarize_profile(path):
        log("  " + line)


def summarize_profile(path: Path, top: int = 12) -> list[str]:
    """From py-spy's collapsed stacks (``frame;frame;... count``, outermost first):
    the share of busy samples by innermost agentqueue frame, by innermost kopf frame,
    and by leaf frame."""
    total = 0
    by: dict[str, Counter[str]] = {"agentqueue": Counter(), "kopf": Counter(),
                                   "leaf": Counter()}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        n = int(count)
        total += n
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        by["leaf"][frames[-1]] += n
        for package in ("agentqueue", "kopf"):
            mine = [f for f in frames if f"({package}/" in f]
            by[package][mine[-1] if mine else "(none)"] += n
    out: list[str] = []
    for name, counter in by.items():
        out.append(f"by innermost {name} frame ({total} samples):")
        out += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(top)]
    return out


def run(quick: bool) -> list[Row]:
    plan = QUICK if quick else FULL
    rows: list[Row] = []
    with LocalStack() as stack:
        # Warm-up: the operator connects, loads the Functions library, starts watching.
        stack.create_namespace("bench-warmup")
        stack.create("agentqueues", "bench-warmup", queue_body("warmup"))
        t0 = time.monotonic()
        stack.wait_ready("agentqueues", "bench-warmup", "warmup", 120)
        log(f"reconcile: warm-up queue Ready after {time.monotonic() - t0:.1f}s")

        log(f"reconcile: {plan.single_trials} single-queue trials")
        lat = single_trials(stack, plan.single_trials)
        p95 = percentile(lat, 95)
        rows.append(Row(NAME, f"1 queue: create → Ready, p50 / p95 / max ({len(lat)} trials)",
                        latency_triplet(lat), "", "", "p95 < 300 ms",
                        met(p95 < SINGLE_P95_GOAL)))

        last_ns, last_n = "", 0
        for n in plan.batches:
            log(f"reconcile: {n} queues at once")
            lat, all_ready, created, last_ns = batch(stack, n, timeout=max(120.0, 0.5 * n))
            last_n = n
            rows.append(Row(NAME, f"{n:,} queues at once: create → Ready per queue, "
                            "p50 / p95 / max", latency_triplet(lat), "", "", "", ""))
            goal = "< 60 s" if n >= 1000 else ""
            rows.append(Row(NAME, f"{n:,} queues at once: first create → all Ready (creates took "
                            f"{created:.1f} s)",
                            fmt_s(all_ready), "", "", goal,
                            met(all_ready < ALL_READY_GOAL) if goal else ""))

        total_queues = 1 + plan.single_trials + sum(plan.batches)
        log(f"reconcile: idle with {total_queues} queues")
        cpu_q, rss_q = idle(stack, plan.settle_s / 4, plan.queue_window_s, "queues-only")
        rows.append(Row(NAME, f"operator idle CPU / RSS ({total_queues:,} queues, no groups, "
                        f"{plan.queue_window_s:.0f} s window)",
                        f"{cpu_q * 100:.1f}% / {rss_q / 1e6:.0f} MB", "", "", "", ""))

        groups = min(plan.groups, last_n)
        log(f"reconcile: {groups} consumer groups at once")
        groups_ready = create_groups(stack, last_ns, groups, timeout=max(120.0, 0.5 * groups))
        rows.append(Row(NAME, f"{groups:,} groups at once: first create → all Ready",
                        fmt_s(groups_ready), "", "", "", ""))
        log(f"reconcile: groups Ready after {groups_ready:.1f}s; settling {plan.settle_s:.0f}s")
        cpu, rss = idle(stack, plan.settle_s, plan.idle_window_s, "queues-and-groups")
        what = f"{total_queues:,} queues + {groups:,} groups"
        rows.append(Row(NAME, f"operator idle CPU ({what}, {plan.idle_window_s:.0f} s window)",
                        f"{cpu * 100:.1f}% of a core", "", "", "< 5%", met(cpu < CPU_GOAL)))
        rows.append(Row(NAME, f"operator RSS ({what})", f"{rss / 1e6:.0f} MB", "", "",
                        "< 200 MB", met(rss < RSS_GOAL)))
    return rows


if __name__ == "__main__":
    sys.exit(main(NAME, run))
