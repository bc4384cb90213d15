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
from datetime import UTC, datetime
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


def _redis_group(group: dict[str, Any]) -> str:
    """The Redis consumer group a ConsumerGroup reads as (its spec, else its name)."""
    spec = group.get("spec") or {}
    return str(spec.get("groupName") or group["metadata"]["name"])


def _visibility_ms(group: dict[str, Any]) -> int:
    from .models.common import parse_duration

    try:
        return int(parse_duration((group.get("spec") or {}).get("visibilityTimeout") or "30s")
                   * 1000)
    except ValueError:
        return 30_000


def status_written_at(obj: dict[str, Any]) -> datetime | None:
    """When the operator last wrote the object's status (its managedFields entry for the
    status subresource); None if unknown."""
    times = [m.get("time") for m in (obj.get("metadata") or {}).get("managedFields") or []
             if m.get("subresource") == "status" and m.get("time")]
    if not times:
        return None
    try:
        return max(datetime.fromisoformat(str(t).replace("Z", "+00:00")) for t in times)
    except ValueError:
        return None


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _source(obj: dict[str, Any], live: Any, now: datetime) -> str:
    if live is not None and not isinstance(live, str):
        return "live"
    written = status_written_at(obj)
    return "status" + (f" {_age((now - written).total_seconds())} old" if written else "")


def status_rows(queues: list[dict[str, Any]], groups: list[dict[str, Any]],
                live: dict[tuple[str, str], Any] | None = None,
                now: datetime | None = None) -> list[list[str]]:
    """One row per queue, one per group under it. ``live``: (namespace, queue) →
    `tools.live.QueueFigures`, or a string saying why Redis was not read (the objects'
    status is shown then, with its age). Pure, for tests."""
    from .tools.live import QueueFigures

    live = live or {}
    now = now or datetime.now(UTC)
    rows = []
    by_queue: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for g in groups:
        key = (g["metadata"]["namespace"], (g.get("spec") or {}).get("queueRef", {}).get("name"))
        by_queue.setdefault(key, []).append(g)
    for q in sorted(queues, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"])):
        ns, name = q["metadata"]["namespace"], q["metadata"]["name"]
        st = q.get("status") or {}
        spec = q.get("spec") or {}
        found = live.get((ns, name))
        figures = found if isinstance(found, QueueFigures) else None
        fresh = figures is not None
        if figures is not None:
            length, dlq = str(figures.length), str(figures.dead_letters)
            retries, oldest = str(figures.scheduled_retries), _age(figures.oldest_waiting_s)
            waiting = str(figures.length) if figures.type == "List" else ""
            pending = str(figures.in_flight) if figures.type == "List" else ""
            consumers = _consumers(figures.present, figures.gone) \
                if figures.type == "List" else ""
        else:
            length, dlq = str(st.get("length", "-")), str(st.get("deadLetterLength", "-"))
            retries, oldest = str(st.get("scheduledRetries", "-")), "-"
            waiting = pending = consumers = ""
        rows.append([ns, name, "", spec.get("type", "Stream"), str(spec.get("partitions", 1)),
                     length, waiting, oldest, pending, "", retries, dlq, consumers, "",
                     _ready(q), _source(q, found, now)])
        for g in sorted(by_queue.get((ns, name), []), key=lambda o: o["metadata"]["name"]):
            gs = g.get("status") or {}
            replicas = "-" if gs.get("currentReplicas") is None else (
                f"{gs.get('currentReplicas')}/{gs.get('desiredReplicas')}")
            gfig = figures.groups.get(_redis_group(g)) if figures is not None else None
            if figures is not None and figures.type == "List":
                cells = ["", "", "", "", ""]  # the queue's row has the List figures
            elif gfig is not None and gfig.found:
                cells = [f"{gfig.lag}" + ("" if gfig.lag_exact else "+"),
                         _age(gfig.oldest_waiting_s), str(gfig.pending),
                         _age(gfig.oldest_pending_s), _consumers(gfig.present, gfig.gone)]
            elif fresh:
                cells = ["-", "-", "-", "-", "-"]  # no such group in Redis (yet)
            else:
                age = gs.get("oldestPendingAgeSeconds")
                cells = [str(gs.get("lag", "-")), "-", str(gs.get("pending", "-")),
                         _age(float(age)) if age is not None else "-",
                         str(gs.get("consumers", "-"))]
            rows.append([ns, name, g["metadata"]["name"], "", "", "", *cells[:2], cells[2],
                         cells[3], "", "", cells[4], replicas, _ready(g),
                         "live" if fresh else _source(g, None, now)])
    return rows


def _consumers(present: set[str], gone: set[str]) -> str:
    left = len(gone - present)
    return f"{len(present)}" + (f" (+{left} gone)" if left else "")


HEADER = ["NAMESPACE", "QUEUE", "GROUP", "TYPE", "PARTS", "LENGTH", "WAITING",
          "OLDEST-WAITING", "PENDING", "OLDEST-PENDING", "RETRIES", "DLQ", "CONSUMERS",
          "REPLICAS", "READY", "FIGURES"]


def render_table(rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [HEADER, *rows])


def _cmd_status(args: argparse.Namespace) -> int:
    with one_line_errors(args):
        return _status(args)


# Roles whose credentials may read the live figures, best first (the observer is made
# for it; a consumer's rights include the same reads on Stream queues).
_LIVE_ROLES = ("observer", "consumer")


def live_credentials(queue: dict[str, Any], read_secret: Any,
                     address: str | None) -> dict[str, str] | str:
    """The environment of a Secret that may read the queue's live figures, or a short
    reason why there is none. ``read_secret(name)`` returns the Secret's decoded data."""
    from kubernetes.client.exceptions import ApiException

    users = (queue.get("status") or {}).get("users") or []
    wanted = sorted((u for u in users if u.get("role") in _LIVE_ROLES),
                    key=lambda u: _LIVE_ROLES.index(u["role"]))
    if not wanted:
        return "no observer or consumer access entry (add an observer to spec.access)"
    try:
        env = read_secret(wanted[0]["secretName"])
    except ApiException as exc:
        if exc.status in (401, 403):
            return f"may not read Secret {wanted[0]['secretName']!r}"
        return f"Secret {wanted[0]['secretName']!r}: {exc.status} {exc.reason}"
    if not env.get("REDIS_URL"):
        return f"Secret {wanted[0]['secretName']!r} has no REDIS_URL"
    if address:
        env["REDIS_URL"] = via_address(env["REDIS_URL"], address)
    return env


async def read_live(queues: list[dict[str, Any]], groups: list[dict[str, Any]],
                    creds: dict[tuple[str, str], dict[str, str] | str],
                    timeout: float = 5.0) -> dict[tuple[str, str], Any]:
    """Each queue's live figures (`tools.live.QueueFigures`), or why they could not be
    read: a short, credential-free reason. Queues are read concurrently."""
    from redis import exceptions as rexc

    from .redisgw.errors import scrub
    from .tools import live
    from .tools.cli_entry import client_for

    gate = asyncio.Semaphore(16)

    async def one(q: dict[str, Any]) -> tuple[tuple[str, str], Any]:
        ns, name = q["metadata"]["namespace"], q["metadata"]["name"]
        env = creds.get((ns, name), "no credentials")
        if isinstance(env, str):
            return (ns, name), env
        spec = q.get("spec") or {}
        mine = {_redis_group(g): _visibility_ms(g) for g in groups
                if g["metadata"]["namespace"] == ns
                and (g.get("spec") or {}).get("queueRef", {}).get("name") == name}
        async with gate:
            client = client_for(env, timeout=timeout)
            try:
                figures = await asyncio.wait_for(live.read_queue(
                    client, ns, name, str(spec.get("type", "Stream")),
                    int(spec.get("partitions", 1)), mine,
                    int(spec.get("priorityLevels", 1))), timeout * 3)
            except (rexc.RedisError, OSError, TimeoutError) as exc:
                text = str(exc).strip().splitlines()[0] if str(exc).strip() \
                    else type(exc).__name__
                return (ns, name), f"Redis: {scrub(text)}"
            finally:
                await client.aclose()
        return (ns, name), figures

    pairs = await asyncio.gather(*(one(q) for q in queues
                                   if (q.get("spec") or {}).get("type", "Stream") != "PubSub"))
    return dict(pairs)


def _status(args: argparse.Namespace) -> int:
    import base64

    custom, core = _api(args)
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
    if not queues and args.output != "json":
        where = "any namespace" if args.all_namespaces else \
            f"namespace {_current_namespace(args)!r}"
        what = f"AgentQueue {args.queue!r}" if args.queue else "AgentQueues"
        print(f"no {what} in {where}", file=sys.stderr)
        return 0
    live: dict[tuple[str, str], Any] = {}
    if not args.from_status:
        address = getattr(args, "redis_address", None) or \
            os.environ.get("AGENTQUEUE_REDIS_ADDRESS")
        creds: dict[tuple[str, str], dict[str, str] | str] = {}
        for q in queues:
            ns = q["metadata"]["namespace"]

            def read_secret(name: str, ns: str = ns) -> dict[str, str]:
                secret = core.read_namespaced_secret(name, ns)
                return {k: base64.b64decode(v).decode()
                        for k, v in (secret.data or {}).items()}

            creds[(ns, q["metadata"]["name"])] = live_credentials(q, read_secret, address)
        live = asyncio.run(read_live(queues, groups, creds))
    if args.output == "json":
        out = {"queues": queues, "groups": groups,
               "live": [{"namespace": k[0], "queue": k[1],
                         **({"unavailable": v} if isinstance(v, str) else v.to_dict())}
                        for k, v in sorted(live.items())]}
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(render_table(status_rows(queues, groups, live)))
    stale = sorted((k, v) for k, v in live.items() if isinstance(v, str))
    for (ns, name), why in stale:
        print(f"{ns}/{name}: figures from its status ({why})", file=sys.stderr)
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
    if isinstance(exc, rexc.NoPermissionError) and \
            getattr(args, "dlq_command", None) in ("replay", "purge"):
        return (f"{args.dlq_command} removes dead letters, which only the Redis admin may do "
                f"(no access role has XDEL/XTRIM on the dead-letter stream): pass "
                f"--redis-url with the admin URL (locally: --redis-url \"$REDIS_URL\" after "
                f"`agentqueue dev env`)")
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

    p = sub.add_parser("status", help="queues and groups, live from Redis: waiting work and "
                                      "its age, pending, retries, DLQ, consumers, replicas")
    common(p)
    p.add_argument("queue", nargs="?")
    p.add_argument("--from-status", action="store_true",
                   help="show the figures the operator last wrote to the objects' status "
                        "instead of reading Redis")
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


