"""Fixtures that run the real operator (a subprocess, as in production) against the
local control plane and a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def crds_installed(kubectl: Any) -> None:
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd",
            "-l", "app.kubernetes.io/part-of=agentqueue")


class OperatorProcess:
    """`agentqueue run` as a child process, with its log in a file we can scan."""

    def __init__(self, kubeconfig: Path, env: dict[str, str], log_path: Path,
                 extra_args: list[str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.env = env
        self.log_path = log_path
        self.metrics_port = free_port()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), str(ROOT / "clients" / "python"), str(ROOT / "devtools"), env.get("PYTHONPATH", "")])
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentqueue.cli", "run", "--metrics-port",
             str(self.metrics_port), "--liveness", "", "--drift-interval", "2s",
             "--log-level", "DEBUG", *self.extra_args],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def operator_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The operator's default Redis: its own server, apart from the gateway tests' one
    (whose fixtures flush it between tests)."""
    from agentqueue_devtools.redisserver import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("operator-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def operator(crds_installed: None, kubeconfig: Path, operator_redis: Any,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    env = {
        "AGENTQUEUE_REDIS_URL": operator_redis.url,
        "AGENTQUEUE_REDIS_USERNAME": operator_redis.admin_username,
        "AGENTQUEUE_REDIS_PASSWORD": operator_redis.admin_password,
    }
    op = OperatorProcess(kubeconfig, env, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


def get_obj(kubectl: Any, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    out = kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def condition(obj: dict[str, Any] | None, type_: str = "Ready") -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def wait_ready(kubectl: Any, kind: str, name: str, namespace: str,
               timeout: float = 30.0) -> dict[str, Any]:
    def _ready() -> dict[str, Any] | None:
        obj = get_obj(kubectl, kind, name, namespace)
        cond = condition(obj)
        gen = (obj or {}).get("metadata", {}).get("generation")
        if cond and cond["status"] == "True" and obj and \
                obj["status"].get("observedGeneration") == gen:
            return obj
        return None
    return wait_for(_ready, timeout, what=f"{kind}/{name} Ready")  # type: ignore[no-any-return]


def wait_reason(kubectl: Any, kind: str, name: str, namespace: str, reason: str,
                type_: str = "Ready", timeout: float = 30.0) -> dict[str, Any]:
    def _reason() -> dict[str, Any] | None:
        obj = get_obj(kubectl, kind, name, namespace)
        cond = condition(obj, type_)
        return obj if cond and cond.get("reason") == reason else None
    return wait_for(_reason, timeout, what=f"{kind}/{name} {type_} reason {reason}")  # type: ignore[no-any-return]
