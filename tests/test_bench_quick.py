"""The benchmarks run end to end in quick mode and print the results table.

No timing assertions: machines differ and CI is noisy. This only proves that
``python -m bench.run --quick`` (Redis-only benchmarks, the local control plane with
the operator, the optional peers when installed) works and prints its table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADER = "| benchmark | case | value | baseline | ratio | goal | met |"


@pytest.mark.k8s
@pytest.mark.slow
def test_bench_quick_runs_and_prints_the_table() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "operator"), str(ROOT / "clients" / "python"), str(ROOT / "devtools"),
                                                      env.get("PYTHONPATH")]))
    # `pods` needs the node stack: tests/test_e2e_pods.py runs it on the stack it brings up.
    result = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--only",
                             "polling,dataplane,memory,reconcile,scaling"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"bench.run --quick exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    assert HEADER in result.stdout.splitlines()
    for name in ("polling", "dataplane", "memory", "reconcile", "scaling"):
        assert f"| {name} |" in result.stdout, f"no row for {name}"
    assert "| error" not in result.stdout
