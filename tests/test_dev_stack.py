"""`agentqueue dev up --no-node | env | down`: the control-plane-only stack, for real (the
node stack, the default where it can run, is tested by tests/test_e2e_pods.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.k8s


def _cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentqueue.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_dev_up_env_down(tmp_path: Path, binaries: object) -> None:
    env = dict(os.environ)
    env["AGENTQUEUE_DEV_DIR"] = str(tmp_path / "dev")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), str(ROOT / "clients" / "python"), str(ROOT / "devtools"), env.get("PYTHONPATH", "")])
    t0 = time.monotonic()
    up = _cli("dev", "up", "--no-node", env=env)  # the node stack: tests/test_e2e_pods.py
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"dev up (cached) took {time.monotonic() - t0:.1f}s")
        assert "agentqueue dev env" in up.stdout
        out = _cli("dev", "env", env=env)
        assert out.returncode == 0, out.stderr
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in out.stdout.splitlines() if line.startswith("export "))
        assert {"KUBECONFIG", "REDIS_URL", "METRICS_URL"} <= set(exports)
        kubectl = Path(exports["PATH"].split(":")[0]) / "kubectl"
        got = subprocess.run([str(kubectl), "--kubeconfig", exports["KUBECONFIG"], "get",
                              "agentqueues", "billing", "-o",
                              "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
                             capture_output=True, text=True, check=True)
        assert got.stdout == "True"
        deadline = time.monotonic() + 20
        body = ""
        while time.monotonic() < deadline and "agentqueue_queue_length" not in body:
            body = urllib.request.urlopen(exports["METRICS_URL"], timeout=5).read().decode()
            time.sleep(0.5)
        assert 'agentqueue_queue_length{namespace="default",partition="0",queue="billing"}' \
            in body
        assert _cli("status", "-A", "--kubeconfig", exports["KUBECONFIG"],
                    env=env).returncode == 0
    finally:
        down = _cli("dev", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert not (tmp_path / "dev").exists()
