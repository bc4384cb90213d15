"""OpenTelemetry tracing of the operator's own calls (agentqueue/tracing.py).

- In process, with the SDK's in-memory exporter: Redis commands (a real redis-server) and
  Kubernetes calls (the real apiserver, through the KubeGateway) become spans with sensible
  names and attributes, children of a reconcile span, and no password or password hash is
  recorded anywhere.
- The real operator (a subprocess on a control plane of this module's own) sends its spans
  over OTLP/HTTP to a tiny local collector: Redis, the KubeGateway's calls and kopf's own.
- With an endpoint configured but the libraries missing, the operator warns once and runs.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
import yaml
from kubernetes.client import CoreV1Api
from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from agentqueue import tracing
from agentqueue.kube import KubeGateway, login
from agentqueue.models.queue import QueueType, Role
from agentqueue.planning.acl import acl_rules
from agentqueue.redisgw import users
from agentqueue_devtools import ControlPlane, Kubectl
from agentqueue_devtools.redisserver import RedisServer

from .operator_fixtures import OperatorProcess, get_obj, wait_for, wait_ready

ROOT = Path(__file__).resolve().parents[1]
REDIS_SCOPE = "opentelemetry.instrumentation.redis"
URLLIB3_SCOPE = "opentelemetry.instrumentation.urllib3"
AIOHTTP_SCOPE = "opentelemetry.instrumentation.aiohttp_client"
STATEMENT_KEYS = ("db.statement", "db.query.text")


@pytest.fixture
def no_tracing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*tracing.ENDPOINT_VARS, "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER",
                "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def spans(no_tracing_env: None) -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, into memory (the global provider is left alone)."""
    tracing.shutdown()
    exporter = InMemorySpanExporter()
    assert tracing.setup(exporter, set_global=False, batch=False)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def statement(span: ReadableSpan) -> str | None:
    attrs = span.attributes or {}
    return next((str(attrs[k]) for k in STATEMENT_KEYS if k in attrs), None)


def assert_no_secret(texts: list[str], secrets: list[str]) -> None:
    for secret in secrets:
        leaks = [t for t in texts if secret in t]
        assert not leaks, f"a secret is in the spans: {leaks[:3]}"


# --- unit ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "route"), [
    ("/api/v1/namespaces/ns1/secrets/billing.intake",
     ("/api/v1/namespaces/{namespace}/secrets/{name}", "ns1")),
    ("/api/v1/namespaces/ns1/secrets", ("/api/v1/namespaces/{namespace}/secrets", "ns1")),
    ("/apis/agentqueue.io/v1alpha1/namespaces/ns1/agentqueues/billing/status",
     ("/apis/agentqueue.io/v1alpha1/namespaces/{namespace}/agentqueues/{name}/status", "ns1")),
    ("/apis/agentqueue.io/v1alpha1/agentqueues",
     ("/apis/agentqueue.io/v1alpha1/agentqueues", None)),
    ("/apis/kopf.dev/v1/clusterkopfpeerings/agentqueue",
     ("/apis/kopf.dev/v1/clusterkopfpeerings/{name}", None)),
    ("/api/v1/namespaces/ns1", ("/api/v1/namespaces/{name}", "ns1")),
    ("/api/v1/namespaces", ("/api/v1/namespaces", None)),
    ("/apis/apps/v1", ("/apis/apps/v1", None)),
    ("/apis", ("/apis", None)),
    ("/version", None),
    ("/v1/traces", None),
])
def test_k8s_route(path: str, route: tuple[str, str | None] | None) -> None:
    assert tracing.k8s_route(path) == route


def only_command_names(text: str) -> bool:
    """Every word of every line is "?" but the command and a subcommand keyword."""
    for line in text.split("\n"):
        words = line.split()
        container = bool(words) and words[0] in tracing._CONTAINER_COMMANDS
        rest = words[2:] if container else words[1:]
        if any(w != "?" for w in rest):
            return False
    return True


def test_statement_keeps_only_command_names() -> None:
    sanitize = tracing._sanitize_statement
    assert sanitize("ACL SETUSER u on >s3cret #abc") == "ACL SETUSER ? ? ? ?"
    assert sanitize("ACL ? ? ?") == "ACL ? ? ?"
    assert sanitize("FUNCTION LOAD ?") == "FUNCTION LOAD ?"
    assert sanitize("AUTH user s3cret") == "AUTH ? ?"
    assert sanitize("CONFIG SET requirepass s3cret") == "CONFIG SET ? ?"
    assert sanitize("SET k v\nGET k") == "SET ? ?\nGET ?"
    assert sanitize("CLIENT 5ecret") == "CLIENT ?"


def test_off_without_endpoint(no_tracing_env: None, caplog: pytest.LogCaptureFixture) -> None:
    tracing.shutdown()
    assert tracing.setup() is False and not tracing.enabled()
    with tracing.reconcile_span("AgentQueue", "ns", "q"):
        pass
    assert not [r for r in caplog.records if r.name == "agentqueue.tracing"]


@pytest.mark.parametrize("var", ["OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none"])
def test_off_when_switched_off(no_tracing_env: None, monkeypatch: pytest.MonkeyPatch,
                               var: str) -> None:
    tracing.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv(*var.split("="))
    assert tracing.setup() is False
    tracing.shutdown()


def test_endpoint_without_the_libraries_warns_once(no_tracing_env: None,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    tracing.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    # An installed SDK without one instrumentation: nothing is half set up.
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.redis", None)
    caplog.set_level("INFO", logger="agentqueue.tracing")
    assert tracing.setup() is False
    assert tracing.setup() is False  # lifecycle's call after run_operator's: no second line
    warnings = [r for r in caplog.records if r.name == "agentqueue.tracing"]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert "agentqueue[tracing]" in warnings[0].getMessage()
    assert not URLLib3Instrumentor().is_instrumented_by_opentelemetry
    tracing.shutdown()


def test_the_image_lock_can_trace() -> None:
    """The image installs requirements.lock: it must hold the tracing extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(" ")[0].split("==")
            pins[canonicalize_name(name)] = version
    for spec in project["project"]["optional-dependencies"]["tracing"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (extra tracing) is not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (spec, pins[name])


# --- in process: real redis-server and apiserver, in-memory exporter -------------------------

@pytest.fixture
def kube_login(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The operator's own login (agentqueue.kube.login) on the test cluster's kubeconfig."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    return login()


@pytest.fixture
def secret_owner(kube: Any, namespace: str) -> dict[str, Any]:
    """An object that exists, to own the test's Secret: an ownerReference to an absent uid
    lets the garbage collector delete the Secret between its POST and the GET after it (a
    CI run read 404 there)."""
    created = CoreV1Api(kube).create_namespaced_config_map(
        namespace, {"metadata": {"name": "billing"}})
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "billing", "uid": created.metadata.uid}}


@pytest.mark.k8s
async def test_redis_and_kube_calls_become_spans_without_secrets(
        redis_client: Any, redis_server: RedisServer, kube_login: Any, namespace: str,
        secret_owner: dict[str, Any], spans: InMemorySpanExporter) -> None:
    # `spans` last: the fixtures' own Redis and Kubernetes calls happen before it.
    hashed_password, plain_password = users.new_password(), users.new_password()
    rules = acl_rules(Role.PRODUCER, namespace, "billing", QueueType.STREAM, 1)
    gateway = KubeGateway(kube_login)
    owner = secret_owner
    unauthenticated = aredis.Redis(host=redis_server.host, port=redis_server.port, protocol=2)
    try:
        with tracing.reconcile_span("AgentQueue", namespace, "billing", handler="create"):
            # The operator's way: hashes only.
            await users.ensure_user(redis_client, "aq.trace.hashed", rules,
                                    [users.sha256_hex(hashed_password)])
            # Plaintext on the wire, as a user might: still never recorded.
            await redis_client.execute_command("ACL", "SETUSER", "aq.trace.plain", "on",
                                               f">{plain_password}", "+ping")
            await unauthenticated.execute_command("AUTH", "aq.trace.plain", plain_password)
            async with redis_client.pipeline(transaction=False) as pipe:
                pipe.hset(f"aq:{{{namespace}/billing/0}}:meta", "password", plain_password)
                pipe.hgetall(f"aq:{{{namespace}/billing/0}}:meta")
                await pipe.execute()
            await gateway.apply_secret(namespace, "billing.intake",
                                       {"REDIS_PASSWORD": plain_password}, owner, {})
            await gateway.read_secret(namespace, "billing.intake")
    finally:
        await unauthenticated.aclose()
        await gateway.close()

    finished = spans.get_finished_spans()
    reconcile = [s for s in finished if s.name == "reconcile AgentQueue"]
    assert len(reconcile) == 1
    assert dict(reconcile[0].attributes or {}) == {
        "agentqueue.kind": "AgentQueue", "k8s.namespace.name": namespace,
        "agentqueue.name": "billing", "agentqueue.handler": "create"}
    parent_id = reconcile[0].context.span_id
    by_scope: dict[str, list[ReadableSpan]] = {}
    for s in finished:
        if s is not reconcile[0]:
            assert s.instrumentation_scope is not None
            by_scope.setdefault(s.instrumentation_scope.name, []).append(s)
            # Children of the reconcile, the Kubernetes calls from worker threads too.
            assert s.parent is not None and s.parent.span_id == parent_id, s.name

    redis_spans = by_scope[REDIS_SCOPE]
    names = {s.name for s in redis_spans}
    assert {"ACL SETUSER", "ACL GETUSER", "AUTH"} <= names, names
    for s in redis_spans:
        attrs = s.attributes or {}
        text = statement(s)
        assert text, f"{s.name}: no statement in {dict(attrs)}"
        assert only_command_names(text), text
        assert attrs.get("db.system") == "redis" or attrs.get("db.system.name") == "redis"
    assert any((s.attributes or {}).get("db.redis.pipeline_length") == 2 for s in redis_spans)

    # apply_secret GETs (404: absent) and then POSTs (201); read_secret GETs (200). (Not
    # by order: a span ends when its response is released.)
    def status(span: ReadableSpan) -> Any:
        attrs = span.attributes or {}
        return attrs.get("http.status_code", attrs.get("http.response.status_code"))

    kube = by_scope[AIOHTTP_SCOPE]
    posts = [s for s in kube if s.name == "POST /api/v1/namespaces/{namespace}/secrets"]
    gets = [s for s in kube if s.name == "GET /api/v1/namespaces/{namespace}/secrets/{name}"]
    assert sorted(status(s) for s in posts) == [201]
    assert sorted(status(s) for s in gets) == [200, 404]
    for s in posts + gets:
        attrs = s.attributes or {}
        assert attrs["k8s.namespace.name"] == namespace
        assert attrs["url.template"] == s.name.split(" ", 1)[1]

    texts = [s.name for s in finished]
    for s in finished:
        texts += [str(v) for v in (s.attributes or {}).values()]
        texts += [str(v) for e in s.events for v in (e.attributes or {}).values()]
    assert_no_secret(texts, [plain_password, hashed_password, users.sha256_hex(hashed_password),
                             users.sha256_hex(plain_password), redis_server.admin_password])


async def test_reconcile_span_records_the_error(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.reconcile_span("ConsumerGroup", "ns", "g"):
        raise RuntimeError("boom")
    (span,) = spans.get_finished_spans()
    assert span.name == "reconcile ConsumerGroup" and not span.status.is_ok
    assert [e.name for e in span.events] == ["exception"]


# --- the real operator over OTLP/HTTP --------------------------------------------------------

@dataclass
class Collector:
    """A minimal OTLP/HTTP trace receiver: POST /v1/traces, protobuf in, 200 out."""

    url: str
    bodies: list[bytes] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[dict[str, Any]]:
        """Every received span: name, scope, attributes, resource attributes."""
        with self.lock:
            bodies = list(self.bodies)
        out = []
        for body in bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for rs in request.resource_spans:
                resource = attributes_of(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.append({"name": span.name, "scope": ss.scope.name,
                                    "attributes": attributes_of(span.attributes),
                                    "resource": resource})
        return out


def attributes_of(kvs: Any) -> dict[str, Any]:
    result = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        value = getattr(kv.value, kind) if kind else None
        result[kv.key] = list(value.values) if kind == "array_value" else value
    return result


@pytest.fixture
def collector() -> Iterator[Collector]:
    server: ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            with state.lock:
                state.paths.append(self.path)
                state.content_types.append(self.headers.get("Content-Type", ""))
                state.bodies.append(body)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = Collector(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Plane:
    kubeconfig: Path
    kubectl: Kubectl


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, binaries: Any) -> Iterator[Plane]:
    """A control plane of this module's own: the suite's session-wide operator must not
    reconcile what these operators do."""
    with ControlPlane(tmp_path_factory.mktemp("tracing-plane"), binaries) as cp:
        kubectl = Kubectl(binaries.kubectl, cp.kubeconfig)
        kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        yield Plane(cp.kubeconfig, kubectl)


@pytest.fixture(scope="module")
def plane_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("tracing-redis")).start()
    yield server
    server.stop()


def run_operator(plane: Plane, server: RedisServer, log: Path, namespace: str,
                 env: dict[str, str]) -> OperatorProcess:
    op = OperatorProcess(plane.kubeconfig, {
        "AGENTQUEUE_REDIS_URL": server.url,
        "AGENTQUEUE_REDIS_USERNAME": server.admin_username,
        "AGENTQUEUE_REDIS_PASSWORD": server.admin_password,
        **env}, log, ["--namespace", namespace])
    op.start()
    return op


def new_namespace(plane: Plane) -> str:
    name = f"aq-trace-{uuid.uuid4().hex[:8]}"
    plane.kubectl("create", "namespace", name)
    return name


def apply_queue(plane: Plane, namespace: str) -> None:
    manifest = {"apiVersion": "agentqueue.io/v1alpha1", "kind": "AgentQueue",
                "metadata": {"name": "billing"},
                "spec": {"type": "Stream", "access": {"producers": [{"name": "intake"}],
                                                      "consumers": [{"name": "worker"}]}}}
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


@pytest.mark.k8s
@pytest.mark.timeout(240)
def test_operator_sends_its_spans_over_otlp_http(plane: Plane, plane_redis: RedisServer,
                                                 collector: Collector, tmp_path: Path) -> None:
    namespace = new_namespace(plane)
    op = run_operator(plane, plane_redis, tmp_path / "operator.log", namespace, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_SERVICE_NAME": "aq-operator-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    })
    try:
        apply_queue(plane, namespace)
        wait_ready(plane.kubectl, "agentqueues", "billing", namespace, timeout=60)

        def complete() -> list[dict[str, Any]] | None:
            found = collector.spans()
            names = {(s["scope"], s["name"]) for s in found}
            wanted = {
                # The KubeGateway (aiohttp, like kopf): the credential Secrets.
                (AIOHTTP_SCOPE, "POST /api/v1/namespaces/{namespace}/secrets"),
                # kopf (aiohttp): its watch of the namespace's AgentQueues.
                (AIOHTTP_SCOPE, "GET /apis/agentqueue.io/v1alpha1/namespaces/{namespace}"
                                "/agentqueues"),
                # Redis: the ACL users, the Functions library.
                (REDIS_SCOPE, "ACL SETUSER"), (REDIS_SCOPE, "FUNCTION LOAD"),
            }
            return found if wanted <= names else None

        found = wait_for(complete, timeout=60, what="operator spans at the collector")
    finally:
        op.stop()
    assert set(collector.paths) == {"/v1/traces"}
    assert set(collector.content_types) == {"application/x-protobuf"}
    assert {s["resource"].get("service.name") for s in found} == {"aq-operator-under-test"}
    assert {s["resource"].get("service.version") for s in found} == {"0.1.0"}
    urls = [str(s["attributes"].get("http.url", s["attributes"].get("url.full", "")))
            for s in found]
    assert not [u for u in urls if u.startswith(collector.url)], "the exporter traced itself"
    ours = [s for s in found if s["attributes"].get("k8s.namespace.name") == namespace]
    assert ours, "no span carries the queue's namespace"
    for s in found:
        if s["scope"] == REDIS_SCOPE:
            text = next(str(s["attributes"][k]) for k in STATEMENT_KEYS
                        if k in s["attributes"])
            assert only_command_names(text), text

    # No credential anywhere in what left the process, bytes as sent.
    obj = get_obj(plane.kubectl, "secret", "billing.intake", namespace)
    assert obj is not None
    password = base64.b64decode(obj["data"]["REDIS_PASSWORD"]).decode()
    secrets = [password, hashlib.sha256(password.encode()).hexdigest(),
               plane_redis.admin_password]
    with collector.lock:
        raw = list(collector.bodies)
    for secret in secrets:
        assert not any(secret.encode() in body for body in raw), "a credential was exported"


@pytest.mark.k8s
@pytest.mark.timeout(240)
def test_operator_runs_untraced_without_the_libraries(plane: Plane, plane_redis: RedisServer,
                                                      tmp_path: Path) -> None:
    blocker = tmp_path / "site"
    blocker.mkdir()
    # As if the tracing extra were not installed: its imports fail in the operator.
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "for name in ('opentelemetry.sdk', 'opentelemetry.instrumentation',\n"
        "             'opentelemetry.exporter'):\n"
        "    sys.modules[name] = None\n")
    namespace = new_namespace(plane)
    log = tmp_path / "operator.log"
    op = run_operator(plane, plane_redis, log, namespace, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "PYTHONPATH": str(blocker),
    })
    try:
        apply_queue(plane, namespace)
        wait_ready(plane.kubectl, "agentqueues", "billing", namespace, timeout=60)
    finally:
        op.stop()
    text = log.read_text(errors="replace")
    assert text.count("tracing libraries are missing") == 1, text[-3000:]
    assert "tracing on" not in text


# --- the Helm chart --------------------------------------------------------------------------

CHART = ROOT / "charts" / "agentqueue-operator"


def helm_template(binaries: Any, *sets: str, check: bool = True) -> Any:
    args = [str(binaries.helm), "template", "aq", str(CHART), "--namespace", "ops"]
    for s in sets:
        args += ["--set-json" if s.startswith("json:") else "--set", s.removeprefix("json:")]
    env = dict(os.environ, HELM_CACHE_HOME="/tmp/aq-helm/cache",
               HELM_CONFIG_HOME="/tmp/aq-helm/config", HELM_DATA_HOME="/tmp/aq-helm/data")
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    if not check:
        return out
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["env"]


def test_chart_tracing_env_configures_the_operator(binaries: Any, no_tracing_env: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert not [e for e in helm_template(binaries) if e["name"].startswith("OTEL_")]
    env = helm_template(binaries, "tracing.otlpEndpoint=http://otel.obs:4318",
                        "tracing.samplerArg=0.25", "tracing.headersSecret.name=otlp-auth",
                        'json:tracing.resourceAttributes={"deployment.environment":"prod"}')
    names = [e["name"] for e in env]
    by_name = {e["name"]: e for e in env}
    # $(POD_ID) is expanded by the kubelet only from variables defined before it.
    assert names.index("POD_ID") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert by_name["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"] == {
        "name": "otlp-auth", "key": "headers"}
    # What the operator makes of it, with the kubelet's $(POD_ID) expansion.
    for e in env:
        if "value" in e and e["name"].startswith("OTEL_"):
            monkeypatch.setenv(e["name"], e["value"].replace("$(POD_ID)", "aq-7d9f-x2"))
    assert tracing.endpoint_from_env() == "http://otel.obs:4318"
    tracing.shutdown()
    assert tracing.setup(InMemorySpanExporter(), set_global=False, batch=False)
    try:
        provider = tracing._state.provider  # type: ignore[union-attr]
        assert {k: provider.resource.attributes.get(k) for k in (
            "service.name", "k8s.pod.name", "k8s.namespace.name", "deployment.environment")} == {
            "service.name": "agentqueue-operator", "k8s.pod.name": "aq-7d9f-x2",
            "k8s.namespace.name": "ops", "deployment.environment": "prod"}
        assert "TraceIdRatioBased{0.25}" in provider.sampler.get_description()
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(("value", "error"), [
    ("tracing.otlpEndpoint=otel:4318", "otlpEndpoint"),
    ("tracing.samplerArg=2", "samplerArg"),
    ("tracing.sampler=sometimes", "sampler"),
    ("tracing.bogus=1", "bogus"),
])
def test_chart_rejects_bad_tracing_values(binaries: Any, value: str, error: str) -> None:
    out = helm_template(binaries, value, check=False)
    assert out.returncode != 0 and error in out.stderr, out.stderr
