"""The local stack for the operator benchmarks: redis-server + a Go-built control plane
(etcd, kube-apiserver, kube-controller-manager) + the operator as a subprocess, as in
production. Nothing but loopback; everything lives in one temp dir, removed on exit.
"""

from __future__ import annotations

import math
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

from .common import ROOT, MissingPrerequisite, free_port, log

GROUP, VERSION = "agentqueue.io", "v1alpha1"
TRACEMALLOC_ENV = "AQ_TRACEMALLOC_DIR"
# Starts tracing before anything is imported (agentqueue.memtrace.install_from_env is
# idempotent, so an operator that calls it at startup as well is fine), then runs the CLI.
_TRACED_BOOT = ("import sys; from agentqueue import memtrace; memtrace.install_from_env(); "
                "from agentqueue.cli import main; sys.exit(main(sys.argv[1:]))")


def _ready(obj: dict[str, Any], reason: str | None = None) -> bool:
    """Ready=True at ``observedGeneration == generation`` (and with ``reason``, when
    given: a ConsumerGroup is ready with reason ``Active``)."""
    status = obj.get("status") or {}
    if status.get("observedGeneration") != (obj.get("metadata") or {}).get("generation"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               and (reason is None or c.get("reason") == reason)
               for c in status.get("conditions") or [])


class LocalStack:
    """``with LocalStack() as stack:`` gives ``stack.api`` (kubernetes ApiClient),
    ``stack.redis`` (devcluster RedisServer) and ``stack.operator_pid``.

    ``operator_root``: run the operator (and apply the CRDs) from another checkout, e.g.
    a git worktree of a baseline ref; its ``operator/`` and ``clients/python/`` are the
    operator's whole PYTHONPATH. ``metrics=True``: the operator serves Prometheus metrics
    on a free port (``stack.metrics_url``); off by default (``--metrics-port 0``).
    ``tracemalloc_dir``: trace the operator's memory (agentqueue.memtrace; SIGUSR2 writes
    a snapshot summary there). Without it ``AQ_TRACEMALLOC_DIR`` is removed from the
    operator's environment, so no other benchmark is ever traced by accident."""

    def __init__(self, *, drift_interval: str = "30s", log_level: str = "INFO",
                 operator_root: Path | None = None, metrics: bool = False,
                 tracemalloc_dir: Path | None = None) -> None:
        self.drift_interval = drift_interval
        self.log_level = log_level
        self.operator_root = operator_root
        self.metrics_port = free_port() if metrics else 0
        self.tracemalloc_dir = tracemalloc_dir
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
        self.run_kubectl("apply", "--server-side", "-f",
                         str((self.operator_root or ROOT) / "crds"))
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
        env.pop(TRACEMALLOC_ENV, None)
        if self.operator_root is not None:
            # Only the other checkout's two source roots: nothing of this one leaks in.
            path = os.pathsep.join(str(self.operator_root / p)
                                   for p in ("operator", "clients/python"))
        else:
            path = os.pathsep.join(filter(None, [str(ROOT / "operator"),
                                                 str(ROOT / "clients" / "python"),
                                                 str(ROOT / "devtools"),
                                                 env.get("PYTHONPATH")]))
        env.update({
            "KUBECONFIG": str(self.plane.kubeconfig),
            "AGENTQUEUE_REDIS_URL": self.redis.url,
            "AGENTQUEUE_REDIS_USERNAME": self.redis.admin_username,
            "AGENTQUEUE_REDIS_PASSWORD": self.redis.admin_password,
            "PYTHONPATH": path,
        })
        command = [sys.executable, "-m", "agentqueue.cli"]
        if self.tracemalloc_dir is not None:
            env[TRACEMALLOC_ENV] = str(self.tracemalloc_dir)
            command = [sys.executable, "-c", _TRACED_BOOT]
        self._log_file = open(self.tmp / "operator.log", "ab")  # noqa: SIM115 - the child's
        self.operator = subprocess.Popen(
            [*command, "run", "--metrics-port", str(self.metrics_port),
             "--liveness", "", "--drift-interval", self.drift_interval,
             "--log-level", self.log_level],
            env=env, cwd=self.operator_root or ROOT, stdout=self._log_file,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def metrics_url(self) -> str:
        """The operator's Prometheus endpoint (loopback); needs ``metrics=True``."""
        if not self.metrics_port:
            raise RuntimeError("the stack was started without metrics=True")
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

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

    def __init__(self, stack: LocalStack, plural: str, namespace: str,
                 reason: str | None = None) -> None:
        self.stack = stack
        self.plural = plural
        self.namespace = namespace
        self.reason = reason
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
                    if event["type"] in ("ADDED", "MODIFIED") and _ready(obj, self.reason):
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
             on_tick: Callable[[], None] | None = None,
             progress_every: float | None = None) -> None:
        """Until every name was Ready; ``progress_every`` seconds: a progress line."""
        start = time.monotonic()
        deadline = start + timeout
        remaining = set(names)
        next_log = start + progress_every if progress_every else math.inf
        while True:
            with self._lock:
                remaining = {n for n in remaining if n not in self.ready_at}
            if not remaining:
                return
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{len(remaining)} of {len(names)} "
                                   f"{self.plural} not Ready within {timeout:.0f}s"
                                   + (f" (watch error: {self._error})" if self._error else ""))
            if now >= next_log:
                log(f"  {len(names) - len(remaining):,} of {len(names):,} {self.plural} "
                    f"Ready after {now - start:.0f}s")
                next_log = now + (progress_every or math.inf)
            if on_tick is not None:
                on_tick()
            time.sleep(0.02 if len(remaining) < 2000 else 0.2)
