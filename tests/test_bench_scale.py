"""bench/scale.py (issue 15): its pieces without a cluster, and a quick run on the local
stack (no timing assertions)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import scale  # noqa: E402

HEADER = "| benchmark | case | value | baseline | ratio | goal | met |"

METRICS = """\
# HELP agentqueue_redis_command_duration_seconds Latency of the operator's Redis round trips.
# TYPE agentqueue_redis_command_duration_seconds histogram
agentqueue_redis_command_duration_seconds_bucket{le="0.005",operation="poll"} 3.0
agentqueue_redis_command_duration_seconds_count{operation="poll"} 12.0
agentqueue_redis_command_duration_seconds_sum{operation="poll"} 0.6
agentqueue_redis_command_duration_seconds_count{operation="drift"} 5.0
agentqueue_redis_command_duration_seconds_sum{operation="drift"} 9.0
"""


def test_histogram_reads_one_labelled_series() -> None:
    got = scale.histogram(METRICS, scale.POLL_METRIC, {"operation": "poll"})
    assert got == {"sum": 0.6, "count": 12.0}
    assert scale.histogram(METRICS, scale.POLL_METRIC, {"operation": "none"}) == {
        "sum": 0.0, "count": 0.0}


def test_plan_sizes() -> None:
    assert (scale.full_plan(10_000).burst, scale.full_plan(10_000).scale) == (1000, 10_000)
    assert scale.full_plan(300).burst == 150  # at most half: the growth phase still runs
    assert (scale.QUICK.burst, scale.QUICK.scale) == (20, 30)


def test_catches_sigusr2_reads_proc() -> None:
    old = signal.signal(signal.SIGUSR2, lambda *_: None)
    try:
        assert scale.catches_sigusr2(os.getpid())
    finally:
        signal.signal(signal.SIGUSR2, old)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not scale.catches_sigusr2(child.pid)
    finally:
        child.kill()
        child.wait()


def test_traced_bytes_and_summary_lines() -> None:
    text = ("traced_bytes: 1234\nframes: 10\npackage kopf 1.0 50.0% 10\n"
            + "".join(f"line {i:>3}. x\n" for i in range(1, 41)))
    assert scale.traced_bytes(text) == 1234
    lines = scale.summary_lines(text, top=3)
    assert lines[:2] == ["traced_bytes: 1234", "package kopf 1.0 50.0% 10"]
    assert len(lines) == 5


@pytest.mark.k8s
@pytest.mark.slow
def test_bench_scale_quick_runs_and_prints_the_table() -> None:
    env = dict(os.environ)
    env.pop("AQ_TRACEMALLOC_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [
        str(ROOT / "operator"), str(ROOT / "clients" / "python"), str(ROOT / "devtools"),
        env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "bench.scale", "--quick"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"bench.scale --quick exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    assert HEADER in result.stdout.splitlines()
    assert "| error" not in result.stdout
    for case in ("queues at once", "groups at once", "idle CPU", "lag poll time per tick",
                 "busy group", "operator memory at 0 objects"):
        assert case in result.stdout, case
