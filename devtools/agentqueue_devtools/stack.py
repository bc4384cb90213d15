"""The local stack behind `agentqueue dev up`, kept alive by a small detached supervisor so
the command can return.

Two shapes:

* **node** (the default wherever a node can run: Linux, root, cgroups, netfilter): the
  control plane plus a real node (`node.Node`), images built locally (`images`), Redis as
  a pod behind a Service and the operator installed from the Helm chart (`inkube`), so
  the quickstart's agents really start, drain the queue and stop;
* **control plane only** (``--no-node``, or where a node cannot run, with the reason
  printed): a host redis-server and the operator as a host process; Deployments are
  scaled but no pod ever runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .binaries import ensure_binaries
from .controlplane import ControlPlane

READY_FILE = "ready.json"
#: The operator image is also imported under this tag, so `helm upgrade` to a new tag can be
#: tried (and is, by the e2e suite) without a registry or a rebuild.
ALT_OPERATOR_TAG = "dev-upgrade"
PID_FILE = "supervisor.pid"
LOG_FILE = "stack.log"
REPO = Path(__file__).resolve().parents[2]


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
    from agentqueue import crdgen
    out = state_dir() / "crds"
    crdgen.write(out)
    return out


def _stop_flag() -> Callable[[], bool]:
    stop = False

    def _term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    return lambda: stop


def _apply_crds(kubectl: list[str], directory: Path | None = None) -> None:
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(directory or crds_dir())],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                    "crd", "-l", "app.kubernetes.io/part-of=agentqueue"], check=True,
                   stdout=subprocess.DEVNULL)


def _checked(cmd: list[str], what: str) -> None:
    got = subprocess.run(cmd, capture_output=True, text=True)
    if got.returncode != 0:
        raise StackError(f"{what} failed: {(got.stderr or got.stdout).strip()[-2000:]}")


class StackError(RuntimeError):
    """A step of the stack failed; the message says which and why (no traceback)."""


class _Steps:
    """Progress lines with the time of every step (the cold path builds for minutes)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, what: str, fn: Callable[[], Any]) -> Any:
        began = time.monotonic()
        _say(f"{what} ...")
        result = fn()
        _say(f"{what}: done in {time.monotonic() - began:.1f}s "
             f"(total {time.monotonic() - self.t0:.1f}s)")
        return result


def serve_node(root: Path) -> None:
    """Supervisor of the node stack: control plane, node, images, Redis pod, operator chart."""
    from . import images as image_builds
    from . import inkube
    from .node import Node

    stopped = _stop_flag()
    step = _Steps()
    binaries = step("control-plane binaries", lambda: ensure_binaries(progress=_say))
    built = step("images (base, operator, redis, agent)",
                 lambda: image_builds.ensure_images(progress=_say))
    alt = step("operator image under a second tag (for upgrades)",
               lambda: image_builds.retag(built["operator"], ALT_OPERATOR_TAG))
    node = Node(root / "node", progress=_say)
    step("host preparation (bridge, routes, forward guard)", node.prepare_host)
    plane = ControlPlane(root / "k8s", binaries, _say, node_ip=Node.gateway_ip)
    try:
        step("control plane", plane.start)
        step("node", lambda: node.start(plane))
        for ref in (built["operator"], built["redis"], built["agent"], alt):
            step(f"import {ref.name}", functools.partial(node.import_image, ref.tarball))
        kubectl = [str(binaries.kubectl), "--kubeconfig", str(plane.kubeconfig)]
        # The chart's CRDs (ours + kopf's peering), server-side first: the documented upgrade
        # path, since Helm never upgrades crds/ (hence --skip-crds below).
        step("CRDs", lambda: _apply_crds(kubectl, inkube.CHART / "crds"))
        password = inkube.new_password()
        step("namespace " + inkube.RELEASE_NAMESPACE, lambda: subprocess.run(
            [*kubectl, "create", "namespace", inkube.RELEASE_NAMESPACE], check=True,
            stdout=subprocess.DEVNULL))

        def redis_pod() -> None:
            inkube.kubectl_apply(kubectl, inkube.redis_manifests(password, built["redis"].name))
            subprocess.run([*kubectl, "-n", inkube.RELEASE_NAMESPACE, "rollout", "status",
                            "deployment/" + inkube.REDIS_NAME, "--timeout=120s"], check=True,
                           stdout=subprocess.DEVNULL)
        step("Redis pod and Service", redis_pod)
        operator = built["operator"]
        helm_args = inkube.helm_install_args(
            inkube.OperatorImage(operator.repository, operator.tag))
        helm = [str(binaries.helm), "--kubeconfig", str(plane.kubeconfig)]
        step("operator (helm install, waits for the pod to be Ready)",
             lambda: _checked([*helm, *helm_args], "helm install"))
        metrics_ip = inkube.cluster_ip(kubectl, inkube.RELEASE_NAMESPACE,
                                       _metrics_service(kubectl))
        redis_ip = inkube.cluster_ip(kubectl, inkube.RELEASE_NAMESPACE, inkube.REDIS_NAME)
        ready = {
            "mode": "node",
            "kubeconfig": str(plane.kubeconfig),
            "redis_url": inkube.host_redis_url(kubectl, password),
            "redis_address": f"{redis_ip}:{inkube.REDIS_PORT}",
            "metrics_url": f"http://{metrics_ip}:9090/metrics",
            "kubectl": str(binaries.kubectl),
            "helm": str(binaries.helm),
            "chart": str(inkube.CHART),
            "helm_install_args": helm_args,
            "operator_image": operator.name,
            "operator_image_alt_tag": ALT_OPERATOR_TAG,
            "containerd_socket": str(node.containerd_socket),
            "operator_log": f"kubectl -n {inkube.RELEASE_NAMESPACE} logs "
                            "deploy/agentqueue-agentqueue-operator",
            "node_log_dir": str(node.log_dir),
        }
        (root / READY_FILE).write_text(json.dumps(ready, indent=2))
        _say(f"stack ready in {time.monotonic() - step.t0:.1f}s")
        while not stopped():
            time.sleep(0.5)
    finally:
        (root / READY_FILE).unlink(missing_ok=True)
        # Node processes, then the control plane while its address (the bridge) exists,
        # then the machine restored.
        node.stop(control_plane=plane)


def _metrics_service(kubectl: list[str]) -> str:
    from . import inkube
    return subprocess.run(
        [*kubectl, "-n", inkube.RELEASE_NAMESPACE, "get", "service", "-l",
         "app.kubernetes.io/component=metrics", "-o", "jsonpath={.items[0].metadata.name}"],
        check=True, capture_output=True, text=True).stdout.strip()


def serve(root: Path) -> None:
    """Supervisor of the control-plane-only stack: host redis-server, host operator."""
    from .redisserver import RedisServer

    stopped = _stop_flag()
    binaries = ensure_binaries(progress=_say)
    redis = RedisServer(root / "redis")
    redis.start()
    _say(f"redis-server up at {redis.url}")
    plane = ControlPlane(root / "k8s", binaries)
    t0 = time.monotonic()
    plane.start()
    _say(f"control plane up at {plane.server_url} in {time.monotonic() - t0:.1f}s")
    kubectl = [str(binaries.kubectl), "--kubeconfig", str(plane.kubeconfig)]
    _apply_crds(kubectl)
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
        "mode": "control-plane",
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
        while not stopped():
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


#: Examples that are not a single file: the manifest to apply and the namespace it uses.
EXAMPLES = {
    "quickstart": ("quickstart.yaml", "default"),
    "contact-center": ("contact-center/manifests.yaml", "contact-center"),
}


def resolve_example(example: str, namespace: str | None) -> tuple[Path, str]:
    """(manifest, namespace) for ``--example``: a name above, a file or a directory under
    examples/, or a path. Each named example has its own namespace so two can coexist."""
    if example in EXAMPLES:
        rel, default_ns = EXAMPLES[example]
        return REPO / "examples" / rel, namespace or default_ns
    for candidate in (REPO / "examples" / f"{example}.yaml", REPO / "examples" / example,
                      Path(example)):
        if candidate.exists():
            return candidate, namespace or "default"
    raise SystemExit(f"no example {example!r}: use one of {', '.join(EXAMPLES)}, a file or "
                     "directory under examples/, or a path")


def choose_mode(node: bool | None) -> tuple[bool, str | None]:
    """(run a node?, why not). ``node``: True = required, False = never, None = if possible."""
    if node is False:
        return False, None
    from .images import unavailable_reason as images_unavailable
    from .node import node_unavailable_reason
    reason = node_unavailable_reason() or images_unavailable()
    if reason and node:
        raise SystemExit(f"--node was asked for, but {reason}")
    return reason is None, reason


def _prebuild(node: bool) -> None:
    """Builds that take minutes on a cold cache run in the foreground, with their progress."""
    step = _Steps()
    step("control-plane binaries", lambda: ensure_binaries(progress=_say))
    if node:
        from . import images
        from .binaries import ensure_node_binaries
        from .pause import ensure_pause_image
        step("node binaries (kubelet, kube-proxy, kube-scheduler, CoreDNS)",
             lambda: ensure_node_binaries(_say))
        step("pause image", lambda: ensure_pause_image(_say))
        step("images (base, operator, redis, agent)", lambda: images.ensure_images(_say))


def _follow(log: Path, offset: int) -> int:
    """Echo the supervisor's new progress lines; return the new offset."""
    try:
        with log.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset
    for line in chunk.decode(errors="replace").splitlines():
        if line.startswith(("[agentqueue]", "[devcluster]", "[images]")):
            print(line, file=sys.stderr, flush=True)
    return offset + len(chunk)


def up(example: str = "quickstart", namespace: str | None = None, timeout: float = 1800,
       node: bool | None = None) -> int:
    root = state_dir()
    root.mkdir(parents=True, exist_ok=True)
    sample, namespace = resolve_example(example, namespace)
    if running_pid(root) and read_ready(root):
        _say("the local stack is already running")
    else:
        with_node, why_not = choose_mode(node)
        if why_not:
            _say(f"no node: {why_not}; starting the control plane only (Deployments are "
                 "scaled, no pod runs)")
        t0 = time.monotonic()
        _prebuild(with_node)
        (root / READY_FILE).unlink(missing_ok=True)
        log = open(root / LOG_FILE, "ab")  # noqa: SIM115 - handed to the detached child
        offset = log.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentqueue_devtools.stack",
             "serve-node" if with_node else "serve", str(root)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        (root / PID_FILE).write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while read_ready(root) is None:
            offset = _follow(root / LOG_FILE, offset)
            if proc.poll() is not None:
                _say(f"the stack failed to start; log {root / LOG_FILE}:")
                print((root / LOG_FILE).read_text()[-4000:], file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                _say("timed out waiting for the stack")
                return 1
            time.sleep(0.3)
        _follow(root / LOG_FILE, offset)
        _say(f"stack started in {time.monotonic() - t0:.1f}s")
    ready = read_ready(root)
    assert ready is not None
    kubectl = [ready["kubectl"], "--kubeconfig", ready["kubeconfig"], "-n", namespace]
    if subprocess.run([*kubectl, "get", "namespace", namespace], capture_output=True
                      ).returncode != 0:
        subprocess.run([*kubectl, "create", "namespace", namespace], check=True,
                       stdout=subprocess.DEVNULL)
    _say(f"applying {sample} in namespace {namespace}")
    got = subprocess.run([*kubectl, "apply", "-f", str(sample)], capture_output=True, text=True)
    print(got.stdout, end="")
    if got.returncode != 0:
        _say(f"kubectl apply failed: {got.stderr.strip()}")
        return 1
    t0 = time.monotonic()
    for kind in ("agentqueues", "consumergroups", "retentionpolicies"):
        present = subprocess.run([*kubectl, "get", kind, "-o", "name"], capture_output=True,
                                 text=True).stdout.split()
        if not present:
            continue
        _say(f"waiting for the {kind} to be Ready")
        result = subprocess.run([*kubectl, "wait", "--for=condition=Ready", "--timeout=120s",
                                 kind, "--all"])
        if result.returncode != 0:
            _say(f"not Ready; see `kubectl describe {kind}` and the operator's log "
                 f"({ready['operator_log']})")
            return 1
    _say(f"everything Ready {time.monotonic() - t0:.1f}s after the apply")
    subprocess.run([*kubectl, "get", "agentqueue,consumergroup,retentionpolicy"])
    ns = "" if namespace == "default" else f" -n {namespace}"
    pods = (f"""  kubectl{ns} get pods -w               # agents start when work waits, stop when drained
""" if ready.get("mode") == "node" else """  (control plane only: Deployments are scaled, no pod runs; see `agentqueue dev up --node`)
""")
    print(f"""
The local stack is running (state in {root}).

  eval "$(agentqueue dev env)"          # KUBECONFIG, REDIS_URL, METRICS_URL, PATH
  kubectl get aq,cg,rp{ns}               # the queues, groups and policies
  kubectl describe aq billing{ns}        # conditions and Events
{pods}  agentqueue status{ns}                 # lengths, lag, pending, DLQ, replicas
  curl -s $METRICS_URL | grep agentqueue_
  agentqueue dev down                   # stop everything and remove the state
""")
    return 0


def env_exports() -> int:
    ready = read_ready(state_dir())
    if ready is None:
        _say("the local stack is not running: agentqueue dev up")
        return 1
    # kubectl and helm, and this venv's bin (agentqueue and the kubectl-agentqueue plugin).
    tool_dir = str(Path(ready["kubectl"]).parent)
    venv_bin = str(Path(sys.executable).parent)
    print(f"export KUBECONFIG={ready['kubeconfig']}")
    print(f"export REDIS_URL={ready['redis_url']}")
    print(f"export METRICS_URL={ready['metrics_url']}")
    if ready.get("redis_address"):
        # Credentials Secrets name Redis by its cluster DNS name (for pods); the CLI on this
        # machine reaches the same Service by its cluster IP.
        print(f"export AGENTQUEUE_REDIS_ADDRESS={ready['redis_address']}")
    print(f"export PATH={tool_dir}:{venv_bin}:$PATH")
    return 0


def down() -> int:
    root = state_dir()
    pid = running_pid(root)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 90  # the node stops its pods and restores the machine
        while time.monotonic() < deadline and running_pid(root):
            time.sleep(0.2)
        if running_pid(root):
            os.kill(pid, signal.SIGKILL)
    # Whatever a killed supervisor left: the control plane first (while the bridge it binds
    # still exists), then the node's changes to the machine, from the node's record.
    if (root / "k8s").exists():
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            ControlPlane.load(root / "k8s").stop()
    from .node import NodeError, cleanup_leftovers
    with contextlib.suppress(NodeError):  # a node of another stack is still running
        for line in cleanup_leftovers(_say):
            _say(line)
    import shutil
    shutil.rmtree(root, ignore_errors=True)
    _say("the local stack is stopped and its state removed")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["serve", "serve-node"])
    parser.add_argument("root")
    args = parser.parse_args()
    try:
        (serve_node if args.action == "serve-node" else serve)(Path(args.root))
    except (StackError, subprocess.CalledProcessError) as exc:
        _say(f"the stack failed: {exc}")
        sys.exit(1)
