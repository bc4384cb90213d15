"""The local stack behind `agentqueue dev up`: redis-server, the control plane and the
operator, kept alive by a small detached supervisor so the command can return."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .binaries import ensure_binaries
from .controlplane import ControlPlane

READY_FILE = "ready.json"
PID_FILE = "supervisor.pid"
LOG_FILE = "stack.log"
REPO = Path(__file__).resolve().parents[3]


def state_dir() -> Path:
    return Path(os.environ.get("AGENTQUEUE_DEV_DIR",
                               Path.home() / ".cache" / "agentqueue" / "dev"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(msg: str) -> None:
    print(f"[agentqueue] {msg}", file=sys.stderr, flush=True)


def crds_dir() -> Path:
    """The committed CRDs, rendered fresh from the models when not in a checkout."""
    repo_crds = REPO / "crds"
    if repo_crds.is_dir():
        return repo_crds
    from .. import crdgen
    out = state_dir() / "crds"
    crdgen.write(out)
    return out


def serve(root: Path) -> None:
    """Supervisor: start everything, write ready.json, wait for SIGTERM, stop everything."""
    from .redisserver import RedisServer

    stop = False

    def _term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    binaries = ensure_binaries(progress=_say)
    redis = RedisServer(root / "redis")
    redis.start()
    _say(f"redis-server up at {redis.url}")
    plane = ControlPlane(root / "k8s", binaries)
    t0 = time.monotonic()
    plane.start()
    _say(f"control plane up at {plane.server_url} in {time.monotonic() - t0:.1f}s")
    kubectl = [str(binaries.kubectl), "--kubeconfig", str(plane.kubeconfig)]
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(crds_dir())], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                    "crd", "-l", "app.kubernetes.io/part-of=agentqueue"], check=True,
                   stdout=subprocess.DEVNULL)
    metrics_port = _free_port()
    env = dict(os.environ)
    env.update({
        "AGENTQUEUE_REDIS_URL": redis.url,
        "AGENTQUEUE_REDIS_USERNAME": redis.admin_username,
        "AGENTQUEUE_REDIS_PASSWORD": redis.admin_password,
        "KUBECONFIG": str(plane.kubeconfig),
    })
    if redis.ca_file:
        env["AGENTQUEUE_REDIS_CA_FILE"] = str(redis.ca_file)
    op_log = open(root / "operator.log", "ab")  # noqa: SIM115 - lives as long as the child
    operator = subprocess.Popen(
        [sys.executable, "-m", "agentqueue.cli", "run", "--metrics-port", str(metrics_port),
         "--liveness", "", "--drift-interval", "10s"],
        env=env, stdout=op_log, stderr=subprocess.STDOUT)
    ready = {
        "kubeconfig": str(plane.kubeconfig),
        "redis_url": redis.admin_url,
        "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics",
        "kubectl": str(binaries.kubectl),
        "helm": str(binaries.helm),
        "operator_pid": operator.pid,
        "operator_log": str(root / "operator.log"),
    }
    (root / READY_FILE).write_text(json.dumps(ready, indent=2))
    _say("stack ready")
    try:
        while not stop:
            if operator.poll() is not None:
                _say(f"operator exited with {operator.returncode}; restarting it")
                operator = subprocess.Popen(operator.args, env=env, stdout=op_log,
                                            stderr=subprocess.STDOUT)
            time.sleep(0.5)
    finally:
        operator.terminate()
        try:
            operator.wait(10)
        except subprocess.TimeoutExpired:
            operator.kill()
        plane.stop()
        redis.stop()
        (root / READY_FILE).unlink(missing_ok=True)


def running_pid(root: Path) -> int | None:
    try:
        pid = int((root / PID_FILE).read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def read_ready(root: Path) -> dict[str, Any] | None:
    path = root / READY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def up(example: str = "quickstart", namespace: str = "default", timeout: float = 900) -> int:
    root = state_dir()
    root.mkdir(parents=True, exist_ok=True)
    if running_pid(root) and read_ready(root):
        _say("the local stack is already running")
    else:
        # Build or fetch the binaries in the foreground, so progress shows here.
        t0 = time.monotonic()
        ensure_binaries(progress=_say)
        _say(f"binaries ready in {time.monotonic() - t0:.1f}s")
        (root / READY_FILE).unlink(missing_ok=True)
        log = open(root / LOG_FILE, "ab")  # noqa: SIM115 - handed to the detached child
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentqueue.devcluster.stack", "serve", str(root)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        (root / PID_FILE).write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while read_ready(root) is None:
            if proc.poll() is not None:
                _say(f"the stack failed to start; log {root / LOG_FILE}:")
                print((root / LOG_FILE).read_text()[-4000:], file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                _say("timed out waiting for the stack")
                return 1
            time.sleep(0.3)
        _say(f"stack started in {time.monotonic() - t0:.1f}s")
    ready = read_ready(root)
    assert ready is not None
    kubectl = [ready["kubectl"], "--kubeconfig", ready["kubeconfig"], "-n", namespace]
    sample = REPO / "examples" / f"{example}.yaml"
    if not sample.exists():
        sample = REPO / "examples" / example
    _say(f"applying {sample}")
    subprocess.run([*kubectl, "apply", "-f", str(sample)], check=True)
    _say("waiting for the queues to be Ready")
    result = subprocess.run([*kubectl, "wait", "--for=condition=Ready", "--timeout=120s",
                             "agentqueues", "--all"])
    if result.returncode != 0:
        _say(f"not Ready; the operator's log is {ready['operator_log']}")
        return 1
    subprocess.run([*kubectl, "get", "agentqueue,consumergroup,retentionpolicy"])
    print(f"""
The local stack is running (state in {root}).

  eval "$(agentqueue dev env)"          # KUBECONFIG, REDIS_URL, METRICS_URL for this shell
  kubectl get aq,cg,rp -A               # the queues, groups and policies
  kubectl describe aq billing           # conditions and Events
  kubectl get secret billing.intake -o yaml   # a producer's credentials
  agentqueue status                     # lengths, lag, pending, DLQ, replicas
  curl -s $METRICS_URL | grep agentqueue_
  agentqueue dev down                   # stop everything and remove the state
""")
    return 0


def env_exports() -> int:
    ready = read_ready(state_dir())
    if ready is None:
        _say("the local stack is not running: agentqueue dev up")
        return 1
    tool_dir = str(Path(ready["kubectl"]).parent)
    print(f"export KUBECONFIG={ready['kubeconfig']}")
    print(f"export REDIS_URL={ready['redis_url']}")
    print(f"export METRICS_URL={ready['metrics_url']}")
    print(f"export PATH={tool_dir}:$PATH")
    return 0


def down() -> int:
    root = state_dir()
    pid = running_pid(root)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and running_pid(root):
            time.sleep(0.2)
        if running_pid(root):
            os.kill(pid, signal.SIGKILL)
    if (root / "k8s").exists():
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            ControlPlane.load(root / "k8s").stop()
    import shutil
    shutil.rmtree(root, ignore_errors=True)
    _say("the local stack is stopped and its state removed")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["serve"])
    parser.add_argument("root")
    args = parser.parse_args()
    serve(Path(args.root))
