"""Optional OpenTelemetry tracing of the operator's Redis and Kubernetes calls.

Off unless an OTLP endpoint is configured with the standard variables
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``) and the
``tracing`` extra is installed (``pip install 'agentqueue[tracing]'``; the image has it).
With an endpoint but without the libraries the operator logs one warning and runs untraced.

Everything else is the OpenTelemetry SDK's own configuration, read from the environment:
``OTEL_SERVICE_NAME`` (default ``agentqueue-operator``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the default here, or ``grpc`` when
opentelemetry-exporter-otlp-proto-grpc is installed), ``OTEL_BSP_*``, ``OTEL_SDK_DISABLED``
and ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (``redis``, ``aiohttp-client``, ``urllib3``).

What is traced, by the maintained instrumentations rather than by hand:
- Redis (redis-py, including ``redis.asyncio`` and cluster clients): one span per command or
  pipeline, named after the command (and subcommand: ``ACL SETUSER``). ``db.statement`` holds the command name with every
  argument replaced by ``?`` (the instrumentation sanitizes by default, 0.48b0 already did;
  the hooks below enforce it again), so ``ACL SETUSER`` hashes and ``AUTH`` passwords never leave the process.
- Kubernetes: kopf's own calls and the KubeGateway's (both aiohttp; urllib3 stays
  instrumented for a login through the official client).
  Spans are named ``<METHOD> <path template>`` (``GET /api/v1/namespaces/{namespace}/secrets/
  {name}``) with ``k8s.namespace.name``; request and response bodies and headers are not
  recorded.
- Reconciles: :func:`reconcile_span` around a handler makes the calls above its children.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agentqueue_client.text import as_text

from . import __version__

log = logging.getLogger("agentqueue.tracing")

SERVICE_NAME = "agentqueue-operator"
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
# The attributes under which the Redis instrumentation records the command (old and new
# semantic conventions, chosen by OTEL_SEMCONV_STABILITY_OPT_IN).
_STATEMENT_KEYS = ("db.statement", "db.query.text")
# Commands whose first argument is a subcommand keyword: ``ACL SETUSER`` says more than ``ACL``.
_CONTAINER_COMMANDS = frozenset({"ACL", "CLIENT", "CLUSTER", "CONFIG", "FUNCTION", "MEMORY",
                                 "OBJECT", "SCRIPT", "XGROUP", "XINFO"})


@dataclass
class _State:
    provider: Any
    instrumentors: list[Any] = field(default_factory=list)
    tracer: Any = None


_state: _State | None = None
_attempted = False


def endpoint_from_env() -> str | None:
    """The configured OTLP traces endpoint, if any."""
    for var in ENDPOINT_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


def _display(endpoint: str | None) -> str | None:
    """The endpoint without credentials, for logs."""
    if not endpoint:
        return endpoint
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else "(unparsable URL)"


def enabled() -> bool:
    return _state is not None


def setup(exporter: Any = None, *, set_global: bool = True, batch: bool = True) -> bool:
    """Turn tracing on when configured; returns whether it is on. Safe to call more than
    once (only the first call acts) and never raises: tracing must not stop the operator.

    ``exporter`` (a SpanExporter) replaces the OTLP exporter and turns tracing on without
    an endpoint (tests). ``set_global=False`` leaves OpenTelemetry's global tracer provider
    alone (it can be set once per process); ``batch=False`` exports each span at its end."""
    global _state, _attempted
    if _attempted:
        return _state is not None
    _attempted = True
    if exporter is None:
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return False
        if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
            return False
        endpoint = endpoint_from_env()
        if not endpoint:
            return False
    else:
        endpoint = None
    try:
        _state = _start(exporter, set_global=set_global, batch=batch)
    except ImportError as exc:
        log.warning(
            "an OTLP endpoint is configured (%s) but the tracing libraries are missing "
            "(%s): install agentqueue[tracing]; running without tracing",
            _display(endpoint), exc)
        return False
    except Exception:  # noqa: BLE001 - tracing is optional: never fail the operator for it
        log.warning("could not set up tracing; running without it", exc_info=True)
        return False
    log.info("tracing on", extra={"otlp_endpoint": _display(endpoint) or "custom exporter",
                                  "instrumented": [type(i).__name__
                                                   for i in _state.instrumentors]})
    return True


def shutdown() -> None:
    """Flush and stop: export what is buffered, remove the instrumentation. After it,
    :func:`setup` may be called again (tests)."""
    global _state, _attempted
    state, _state, _attempted = _state, None, False
    if state is None:
        return
    for instrumentor in state.instrumentors:
        with contextlib.suppress(Exception):
            instrumentor.uninstrument()
    state.provider.shutdown()


@contextlib.contextmanager
def reconcile_span(kind: str, namespace: str, name: str,
                   handler: str | None = None) -> Iterator[None]:
    """A span around one reconcile of one object (no-op while tracing is off). The Redis
    and Kubernetes calls made inside it, also from worker threads started with
    ``asyncio.to_thread``, become its children. An exception marks it as an error."""
    state = _state
    if state is None:
        yield
        return
    attributes = {"agentqueue.kind": kind, "k8s.namespace.name": namespace,
                  "agentqueue.name": name}
    if handler:
        attributes["agentqueue.handler"] = handler
    with state.tracer.start_as_current_span(f"reconcile {kind}", attributes=attributes):
        yield


# --- set-up ----------------------------------------------------------------------------------

def _start(exporter: Any, *, set_global: bool, batch: bool) -> _State:
    # Every import first: a missing library leaves nothing half set up.
    from opentelemetry import trace
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        exporter = _otlp_exporter()
    provider = TracerProvider(resource=_resource(Resource))  # sampler: OTEL_TRACES_SAMPLER
    provider.add_span_processor(
        BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    state = _State(provider=provider, tracer=provider.get_tracer("agentqueue", __version__))
    disabled = {n.strip() for n in
                os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    wanted: list[tuple[str, Any, dict[str, Any]]] = [
        ("redis", RedisInstrumentor, {"request_hook": _redis_request_hook,
                                      "response_hook": _redis_response_hook}),
        ("aiohttp-client", AioHttpClientInstrumentor, {"request_hook": _aiohttp_request_hook}),
        ("urllib3", URLLib3Instrumentor, {"request_hook": _urllib3_request_hook}),
    ]
    try:
        for name, cls, hooks in wanted:
            if name in disabled:
                continue
            instrumentor = cls()
            if instrumentor.is_instrumented_by_opentelemetry:
                # Someone else (opentelemetry-instrument) got there first: theirs stays.
                log.info("already instrumented, left as it is", extra={"library": name})
                continue
            instrumentor.instrument(tracer_provider=provider, **hooks)
            state.instrumentors.append(instrumentor)
    except BaseException:
        for instrumentor in state.instrumentors:  # nothing stays half set up
            with contextlib.suppress(Exception):
                instrumentor.uninstrument()
        provider.shutdown()
        raise
    if set_global:
        trace.set_tracer_provider(provider)
    return state


def _otlp_exporter() -> Any:
    protocol = next((os.environ[v].strip().lower() for v in PROTOCOL_VARS
                     if os.environ.get(v, "").strip()), "http/protobuf")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        if protocol != "http/protobuf":
            log.warning("OTLP protocol %r is not supported; using http/protobuf", protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    # Endpoint, headers, certificates, compression and timeout come from the environment.
    return OTLPSpanExporter()


def _resource(resource_cls: Any) -> Any:
    """OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win; the operator's name and version
    fill in what they leave out."""
    resource = resource_cls.create()
    defaults: dict[str, str] = {}
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        defaults["service.name"] = SERVICE_NAME
    if "service.version" not in resource.attributes:
        defaults["service.version"] = __version__
    return resource.merge(resource_cls(defaults)) if defaults else resource


# --- hooks: names, attributes, and no secrets -------------------------------------------------

def _hook(fn: Callable[..., None]) -> Callable[..., None]:
    """The instrumentations call some hooks unguarded, inside the traced call: a hook
    must never fail the Redis or Kubernetes call it observes."""
    def guarded(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001
            log.debug("tracing hook %s failed", fn.__name__, exc_info=True)
    guarded.__name__ = fn.__name__
    return guarded


def _scrub_statement(span: Any) -> None:
    """Keep only the command names in the recorded statement: whatever the
    instrumentation's version records, no argument (a password, an ACL SETUSER hash, a
    payload) is exported."""
    attributes = getattr(span, "attributes", None)
    if not attributes or not span.is_recording():
        return
    for key in _STATEMENT_KEYS:
        value = attributes.get(key)
        if isinstance(value, str):
            span.set_attribute(key, _sanitize_statement(value))


def _sanitize_statement(statement: str) -> str:
    """``SET k v`` → ``SET ? ?``, ``FUNCTION LOAD code`` → ``FUNCTION LOAD ?``, line by
    line (pipelines); idempotent. Only the command and a subcommand keyword stay."""
    lines = []
    for line in statement.split("\n"):
        words = line.split()
        keep = 1
        if len(words) > 1 and words[0].upper() in _CONTAINER_COMMANDS and \
                words[1].isalpha() and len(words[1]) <= 20:
            keep = 2
        lines.append(" ".join(words[:keep] + ["?"] * (len(words) - keep)))
    return "\n".join(lines)


@_hook
def _redis_request_hook(span: Any, instance: Any, args: Any, kwargs: Any) -> None:
    _scrub_statement(span)
    if len(args) >= 2 and str(args[0]).upper() in _CONTAINER_COMMANDS:
        sub = as_text(args[1], errors="strict")
        if sub.isalpha() and len(sub) <= 20 and span.is_recording():
            span.update_name(f"{str(args[0]).upper()} {sub.upper()}")


@_hook
def _redis_response_hook(span: Any, instance: Any, response: Any) -> None:
    _scrub_statement(span)


def k8s_route(path: str) -> tuple[str, str | None] | None:
    """The low-cardinality template of a Kubernetes API path and its namespace:
    ``/apis/g/v/namespaces/ns/plural/name/status`` →
    ``("/apis/g/v/namespaces/{namespace}/plural/{name}/status", "ns")``; None when the path
    is not an API resource path (``/version``, ``/healthz``, another server)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        head, rest = parts[:2], parts[2:]
    elif parts[:1] == ["apis"]:
        head, rest = parts[:3], parts[3:]
    else:
        return None
    namespace = None
    if rest[:1] == ["namespaces"] and len(rest) >= 2:
        namespace = rest[1]
        if len(rest) == 2:  # the Namespace object itself
            return "/" + "/".join([*head, "namespaces", "{name}"]), namespace
        head, rest = [*head, "namespaces", "{namespace}"], rest[2:]
    template = [*head, *rest[:1]]
    if len(rest) >= 2:
        template += ["{name}", *rest[2:3]]
    return "/" + "/".join(template), namespace


def _name_k8s_span(span: Any, method: str, path: str) -> None:
    route = k8s_route(path)
    if route is None or not span.is_recording():
        return
    template, namespace = route
    span.update_name(f"{method.upper()} {template}")
    span.set_attribute("url.template", template)
    if namespace:
        span.set_attribute("k8s.namespace.name", namespace)


@_hook
def _aiohttp_request_hook(span: Any, params: Any) -> None:
    _name_k8s_span(span, str(params.method), str(params.url.path))


@_hook
def _urllib3_request_hook(span: Any, pool: Any, request_info: Any) -> None:
    _name_k8s_span(span, str(request_info.method), urlsplit(str(request_info.url)).path)
