"""The local stack for the operator benchmarks: redis-server + a Go-built control plane
(etcd, kube-apiserver, kube-controller-manager) + the operator as a subprocess, as in
production. Nothing but loopback; everything lives in one temp dir, removed on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from .common import ROOT, MissingPrerequisite, log

GROUP, VERSION = "agentqueue.io", "v1alpha1"


def _ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != (obj.get("metadata") or {}).get("generation"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or [])


class LocalStack:
    """``with LocalStack() as stack:`` gives ``stack.api`` (kubernetes ApiClient),
    ``stack.redis`` (devcluster RedisServer) and ``stack.operator_pid``."""

    def __init__(self, *, drift_interval: str = "30s", log_level: str = "INFO") -> None:
        self.drift_interval = drift_interval
        self.log_level = log_level
        self.tmp = Path(tempfile.mkdtemp(prefix="aq-bench-stack-"))
        self.redis: Any = None
        self.plane: Any = None
        self.api: Any = None
        self.kubectl: Path | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        try:
            from kubernetes import client, config

            from agentqueue_devtools import ControlPlane, ensure_binaries
            from agentqueue_devtools.redisserver import RedisServer
        except ImportError as exc:
            raise MissingPrerequisite(f"local stack not importable ({exc})") from None
        if shutil.which("redis-server") is None:
            raise MissingPrerequisite("redis-server not found (apt-get install redis-server)")
        try:
            binaries = ensure_binaries(progress=log)
        except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
            raise MissingPrerequisite(f"control-plane binaries unavailable ({exc}); run "
                                      "`make bootstrap`") from None
        self.kubectl = binaries.kubectl
        started = time.monotonic()
        self.redis = RedisServer(self.tmp / "redis").start()
        self.plane = ControlPlane(self.tmp / "k8s", binaries, progress=log).start()
        self.run_kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        self.run_kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd",
                         "-l", "app.kubernetes.io/part-of=agentqueue")
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.plane.kubeconfig),
                                client_configuration=cfg)
        cfg.connection_pool_maxsize = 32
        self.api = client.ApiClient(cfg)
        self.start_operator()
        log(f"stack: up in {time.monotonic() - started:.1f}s (operator pid "
            f"{self.operator_pid}, logs in {self.tmp})")

    def start_operator(self) -> None:
        env = dict(os.environ)
        env.update({
            "KUBECONFIG": str(self.plane.kubeconfig),
            "AGENTQUEUE_REDIS_URL": self.redis.url,
            "AGENTQUEUE_REDIS_USERNAME": self.redis.admin_username,
            "AGENTQUEUE_REDIS_PASSWORD": self.redis.admin_password,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "operator"), str(ROOT / "clients" / "python"), str(ROOT / "devtools"),
                                                        env.get("PYTHONPATH")])),
        })
        self._log_file = open(self.tmp / "operator.log", "ab")  # noqa: SIM115 - the child's
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "agentqueue.cli", "run", "--metrics-port", "0",
             "--liveness", "", "--drift-interval", self.drift_interval,
             "--log-level", self.log_level],
            env=env, cwd=ROOT, stdout=self._log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)

    @property
    def operator_pid(self) -> int:
        assert self.operator is not None
        return self.operator.pid

    def check_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is not None:
            raise RuntimeError(f"the operator exited with {self.operator.returncode}: "
                               f"{self.operator_log_tail()}")

    def operator_log_tail(self, lines: int = 8) -> str:
        try:
            text = (self.tmp / "operator.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return " / ".join(text.strip().splitlines()[-lines:])[-1500:]

    def stop(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(20)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()
        if self._log_file is not None:
            self._log_file.close()
        if self.api is not None:
            self.api.close()
        if self.plane is not None:
            self.plane.stop()
        if self.redis is not None:
            self.redis.stop()
        if os.environ.get("AQ_BENCH_KEEP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)

    def run_kubectl(self, *args: str) -> str:
        assert self.kubectl is not None and self.plane is not None
        out = subprocess.run([str(self.kubectl), f"--kubeconfig={self.plane.kubeconfig}", *args],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    # --- objects ------------------------------------------------------------------------------

    def create_namespace(self, name: str) -> None:
        from kubernetes import client

        client.CoreV1Api(self.api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> None:
        from kubernetes import client

        client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, body)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        from kubernetes import client

        obj = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name)
        return cast(dict[str, Any], obj)

    def wait_ready(self, plural: str, namespace: str, name: str, timeout: float) -> float:
        """Poll until Ready (10 ms apart); returns when it saw it (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(plural, namespace, name)
            if _ready(obj):
                return time.monotonic()
            if time.monotonic() > deadline:
                self.check_operator()
                raise TimeoutError(f"{plural}/{name} not Ready within {timeout:.0f}s: "
                                   f"{(obj.get('status') or {}).get('conditions')}")
            time.sleep(0.01)


class ReadyWatch:
    """Watches one namespace's objects of one kind in a thread and records, per name,
    the first moment (time.monotonic) it was Ready at its current generation."""

    def __init__(self, stack: LocalStack, plural: str, namespace: str) -> None:
        self.stack = stack
        self.plural = plural
        self.namespace = namespace
        self.ready_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{plural}", daemon=True)

    def __enter__(self) -> ReadyWatch:
        self._thread.start()
        time.sleep(0.2)  # let the watch open before anything is created
        return self

    def __exit__(self, *exc: object) -> None:
        # A daemon thread: it notices the flag at the next event or watch timeout (≤ 5 s);
        # nothing waits for it.
        self._stop.set()

    def _run(self) -> None:
        from kubernetes import client, watch

        api = client.CustomObjectsApi(self.stack.api)
        version: str | None = None
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                kwargs: dict[str, Any] = {"timeout_seconds": 5, "_request_timeout": 10}
                if version:
                    kwargs["resource_version"] = version
                for event in w.stream(api.list_namespaced_custom_object, GROUP, VERSION,
                                      self.namespace, self.plural, **kwargs):
                    now = time.monotonic()
                    obj = event["object"]
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event["type"] in ("ADDED", "MODIFIED") and _ready(obj):
                        name = obj["metadata"]["name"]
                        with self._lock:
                            self.ready_at.setdefault(name, now)
                    if self._stop.is_set():
                        break
            except client.ApiException as exc:
                if exc.status == 410:  # too old: start over from a fresh list
                    version = None
                    continue
                self._error = exc
                time.sleep(0.2)
            except Exception as exc:  # noqa: BLE001 - kept and re-raised by wait()
                self._error = exc
                time.sleep(0.2)
            finally:
                w.stop()

    def count(self, names: set[str]) -> int:
        with self._lock:
            return sum(1 for n in names if n in self.ready_at)

    def wait(self, names: set[str], timeout: float,
             on_tick: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while self.count(names) < len(names):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(names) - self.count(names)} of {len(names)} "
                                   f"{self.plural} not Ready within {timeout:.0f}s"
                                   + (f" (watch error: {self._error})" if self._error else ""))
            if on_tick is not None:
                on_tick()
            time.sleep(0.02)
