"""Data-plane subcommands: `agentqueue status|peek|send|dlq` (also `kubectl agentqueue`).

They find queues and credentials through the Kubernetes API like kubectl does (the
current context), or talk to Redis directly with --redis-url."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from . import GROUP, VERSION


def _api(args: argparse.Namespace) -> Any:
    from kubernetes import client, config

    config.load_kube_config(config_file=getattr(args, "kubeconfig", None),
                            context=getattr(args, "context", None))
    return client.CustomObjectsApi(), client.CoreV1Api()


def _current_namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=args.kubeconfig)
        return str(active["context"].get("namespace") or "default")
    except (config.ConfigException, KeyError, TypeError):
        return "default"


def _ready(obj: dict[str, Any]) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return f"{cond.get('status')}" + (
                f" ({cond.get('reason')})" if cond.get("status") != "True" else "")
    return "Unknown"


def status_rows(queues: list[dict[str, Any]], groups: list[dict[str, Any]]) -> list[list[str]]:
    """One row per queue, one per group under it. Pure, for tests."""
    rows = []
    by_queue: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for g in groups:
        key = (g["metadata"]["namespace"], (g.get("spec") or {}).get("queueRef", {}).get("name"))
        by_queue.setdefault(key, []).append(g)
    for q in sorted(queues, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"])):
        ns, name = q["metadata"]["namespace"], q["metadata"]["name"]
        st = q.get("status") or {}
        spec = q.get("spec") or {}
        rows.append([ns, name, "", spec.get("type", "Stream"), str(spec.get("partitions", 1)),
                     str(st.get("length", "-")), "", "", "", str(st.get("deadLetterLength", "-")),
                     "", _ready(q)])
        for g in sorted(by_queue.get((ns, name), []), key=lambda o: o["metadata"]["name"]):
            gs = g.get("status") or {}
            replicas = "-" if gs.get("currentReplicas") is None else (
                f"{gs.get('currentReplicas')}/{gs.get('desiredReplicas')}")
            rows.append([ns, name, g["metadata"]["name"], "", "", "", str(gs.get("lag", "-")),
                         str(gs.get("pending", "-")),
                         f"{gs.get('oldestPendingAgeSeconds', 0):.1f}s", "", replicas, _ready(g)])
    return rows


HEADER = ["NAMESPACE", "QUEUE", "GROUP", "TYPE", "PARTS", "LENGTH", "LAG", "PENDING",
          "OLDEST", "DLQ", "REPLICAS", "READY"]


def render_table(rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [HEADER, *rows])


def _cmd_status(args: argparse.Namespace) -> int:
    with one_line_errors(args):
        return _status(args)


def _status(args: argparse.Namespace) -> int:
    custom, _ = _api(args)
    if args.all_namespaces:
        queues = custom.list_cluster_custom_object(GROUP, VERSION, "agentqueues")["items"]
        groups = custom.list_cluster_custom_object(GROUP, VERSION, "consumergroups")["items"]
    else:
        ns = _current_namespace(args)
        queues = custom.list_namespaced_custom_object(GROUP, VERSION, ns, "agentqueues")["items"]
        groups = custom.list_namespaced_custom_object(GROUP, VERSION, ns,
                                                      "consumergroups")["items"]
    if args.queue:
        queues = [q for q in queues if q["metadata"]["name"] == args.queue]
    if args.output == "json":
        print(json.dumps({"queues": queues, "groups": groups}, indent=2, default=str))
    elif not queues:
        where = "any namespace" if args.all_namespaces else \
            f"namespace {_current_namespace(args)!r}"
        what = f"AgentQueue {args.queue!r}" if args.queue else "AgentQueues"
        print(f"no {what} in {where}", file=sys.stderr)
    else:
        print(render_table(status_rows(queues, groups)))
    return 0


def _redis_env(args: argparse.Namespace) -> dict[str, str]:
    """Credentials: --redis-url, else the queue's Secret via the Kubernetes API."""
    if args.redis_url:
        return {"REDIS_URL": args.redis_url}
    import base64

    _, core = _api(args)
    ns = _current_namespace(args)
    custom, _ = _api(args)
    queue = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "agentqueues", args.queue)
    users = (queue.get("status") or {}).get("users") or []
    wanted = [u for u in users if u["role"] == args.role] or users
    if not wanted:
        raise SystemExit(f"AgentQueue {ns}/{args.queue} has no access entry to use; "
                         "pass --redis-url")
    secret = core.read_namespaced_secret(wanted[0]["secretName"], ns)
    env = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
    address = getattr(args, "redis_address", None) or os.environ.get("AGENTQUEUE_REDIS_ADDRESS")
    if address and env.get("REDIS_URL"):
        env["REDIS_URL"] = via_address(env["REDIS_URL"], address)
    return env


def via_address(url: str, address: str) -> str:
    """``url`` with its host and port replaced by ``address`` (``host:port``): the Secret
    names Redis as pods reach it (a cluster DNS name); from outside the cluster it is
    reached elsewhere (a port-forward, or the cluster IP on the local dev node)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{address}" if userinfo else address))


def _run_tool(args: argparse.Namespace, fn_name: str) -> int:
    from .tools import cli_entry

    with one_line_errors(args):
        env = _redis_env(args)
        ns = _current_namespace(args)
        result = asyncio.run(getattr(cli_entry, fn_name)(args, env, ns))
    return int(result or 0)


def _command(args: argparse.Namespace) -> str:
    sub = getattr(args, "dlq_command", None)
    return " ".join(filter(None, ["agentqueue", getattr(args, "command", None), sub]))


def describe_failure(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a failure a user can act on; None for a bug (left as a traceback).
    Pure, for tests. Never repeats a credential: Redis and Kubernetes messages are
    scrubbed of URL userinfo, and Secrets' contents never reach an exception here."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from redis import exceptions as rexc

    from .redisgw.errors import scrub

    queue = getattr(args, "queue", None) or ""
    role = getattr(args, "role", None)
    first = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    if isinstance(exc, rexc.NoPermissionError):
        return (f"the {role} credentials of queue {queue!r} may not do this ({first}); "
                f"try another role with --role (observer, producer, consumer) or --redis-url")
    if isinstance(exc, rexc.AuthenticationError):
        return (f"Redis refused the {role} credentials of queue {queue!r} ({first}); "
                f"they may have been rotated: try again, or pass --redis-url")
    if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError)):
        return (f"cannot reach Redis ({first}); from outside the cluster pass "
                f"--redis-address HOST:PORT (e.g. a kubectl port-forward) or --redis-url")
    if isinstance(exc, rexc.ResponseError):
        return f"Redis answered with an error: {first}"
    if isinstance(exc, ApiException):
        if exc.status == 404:
            return f"AgentQueue {queue!r} not found in namespace {args.namespace or 'default'!r}"
        if exc.status in (401, 403):
            return f"the Kubernetes API refused: {exc.reason} (check your kubeconfig's rights)"
        return f"the Kubernetes API answered {exc.status} {exc.reason}"
    if isinstance(exc, ConfigException):
        return f"no usable Kubernetes configuration ({first}): set KUBECONFIG or pass --redis-url"
    return None


@contextlib.contextmanager
def one_line_errors(args: argparse.Namespace) -> Iterator[None]:
    """Turn failures a user can act on into one line on stderr and exit code 1."""
    try:
        yield
    except Exception as exc:
        message = describe_failure(exc, args)
        if message is None:
            raise
        raise SystemExit(f"{_command(args)}: {message}") from None


def add_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-n", "--namespace", default=os.environ.get("AQ_NAMESPACE"))
        p.add_argument("--kubeconfig", default=None)
        p.add_argument("--context", default=None)
        p.add_argument("--redis-address", default=None, metavar="HOST:PORT",
                       help="reach Redis here instead of the Secret's host (e.g. a "
                            "port-forward); env AGENTQUEUE_REDIS_ADDRESS")

    p = sub.add_parser("status", help="queues and groups: length, lag, pending, DLQ, replicas")
    common(p)
    p.add_argument("queue", nargs="?")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=_cmd_status)

    for name, help_text, role in (("peek", "show the head of a queue", "observer"),
                                  ("send", "send one message", "producer")):
        p = sub.add_parser(name, help=help_text)
        common(p)
        p.add_argument("queue")
        p.add_argument("--redis-url", default=None)
        p.add_argument("--role", default=role)
        if name == "peek":
            p.add_argument("--count", type=int, default=10)
        else:
            p.add_argument("payload", help="JSON or text")
            p.add_argument("--key", default=None)
            p.add_argument("--idempotency-key", default=None)
        p.set_defaults(func=lambda a, n=name: _run_tool(a, n))

    p = sub.add_parser("dlq", help="inspect, replay or purge a dead-letter queue")
    dsub = p.add_subparsers(dest="dlq_command", required=True)
    for name in ("ls", "show", "replay", "purge"):
        d = dsub.add_parser(name)
        common(d)
        d.add_argument("queue")
        d.add_argument("--redis-url", default=None)
        d.add_argument("--role", default="consumer")
        if name in ("show", "replay"):
            d.add_argument("ids", nargs="*")
        if name == "replay":
            d.add_argument("--all", action="store_true")
        if name == "purge":
            d.add_argument("--yes", action="store_true")
        if name == "ls":
            d.add_argument("--count", type=int, default=50)
        d.set_defaults(func=lambda a, n=name: _run_tool(a, f"dlq_{n}"))


