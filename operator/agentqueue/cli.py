"""The `agentqueue` command: run the operator, render CRDs, the local stack, and tools."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__, crdgen
from .models.common import parse_duration

REPO_CRDS = Path("crds")


def _cmd_crds(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.check:
        problems = crdgen.check(out)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print(f"crds/ differs from the models: run `agentqueue crds --out {out}`",
                  file=sys.stderr)
            return 1
        print(f"{out}: in sync with the models")
        return 0
    if args.stdout:
        for text in crdgen.render_all().values():
            sys.stdout.write("---\n" + text)
        return 0
    for path in crdgen.write(out):
        print(f"wrote {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import DefaultRedis, OperatorConfig, default_redis_from_env
    from .operator_main import run_operator

    default = default_redis_from_env()
    if args.redis_url:
        default = DefaultRedis(
            url=args.redis_url,
            username=args.redis_username or (default.username if default else None),
            password=os.environ.get("AGENTQUEUE_REDIS_PASSWORD") or os.environ.get(
                "REDIS_PASSWORD"),
            ca_file=args.redis_ca_file,
        )
    from .planning.address_policy import AddressPolicy

    try:
        policy = AddressPolicy.build(allow=args.allow_redis_address or (),
                                     deny=args.deny_redis_address or (),
                                     deny_defaults=not args.no_default_denied_addresses)
    except ValueError as exc:
        raise SystemExit(f"agentqueue run: {exc}") from None
    config = OperatorConfig(
        default_redis=default,
        namespaces=tuple(args.namespace or ()),
        drift_interval=parse_duration(args.drift_interval),
        metrics_port=None if args.metrics_port == 0 else args.metrics_port,
        min_poll_interval=parse_duration(args.min_poll_interval),
        max_schema_bytes=args.max_schema_bytes,
        deletion_timeout=parse_duration(args.deletion_timeout),
        peering_lifetime=_peering_lifetime(args.peering_lifetime),
        address_policy=policy,
    )
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    asyncio.run(run_operator(config, peering=args.peering, liveness=args.liveness,
                             log_level=args.log_level, log_format=args.log_format))
    return 0


PEERING_LIFETIME_BOUNDS = (5, 600)


def _peering_lifetime(text: str) -> int:
    seconds = parse_duration(text)
    low, high = PEERING_LIFETIME_BOUNDS
    if not low <= seconds <= high:
        raise SystemExit(f"agentqueue run: --peering-lifetime {text} is out of range: "
                         f"between {low}s and {high // 60}m")
    return int(seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentqueue",
        description="Kubernetes operator for Redis work queues for AI agents.")
    parser.add_argument("--version", action="version", version=f"agentqueue {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the operator")
    p.add_argument("--namespace", "-n", action="append",
                   help="watch this namespace (repeat); default: all namespaces")
    p.add_argument("--peering", default=None,
                   help="kopf peering name for HA (one active replica); default: standalone")
    p.add_argument("--peering-lifetime", default="15s",
                   help="how long a replica's peering record stays valid, i.e. how long a "
                   "crashed active replica holds the standby back (5s..10m)")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                   help="liveness endpoint URL ('' to disable)")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus port (0: off)")
    p.add_argument("--redis-url", default=None,
                   help="default Redis URL (env AGENTQUEUE_REDIS_URL); the password comes "
                   "from env AGENTQUEUE_REDIS_PASSWORD, never a flag")
    p.add_argument("--redis-username", default=None, help="default Redis ACL user")
    p.add_argument("--redis-ca-file", default=None, help="CA bundle for rediss:// URLs")
    p.add_argument("--drift-interval", default="30s", help="how often Redis is checked")
    p.add_argument("--min-poll-interval", default="200ms",
                   help="floor of every ConsumerGroup's scaling.pollInterval")
    p.add_argument("--max-schema-bytes", type=int, default=32 * 1024,
                   help="largest AgentQueue spec.schema (compact JSON)")
    p.add_argument("--deletion-timeout", default="2m",
                   help="release a deleted queue whose Redis stays unreachable this long")
    p.add_argument("--allow-redis-address", action="append", metavar="CIDR|HOST",
                   help="Redis addresses tenants may name (repeat; default: any not denied)")
    p.add_argument("--deny-redis-address", action="append", metavar="CIDR|HOST",
                   help="Redis addresses tenants may not name, besides the defaults")
    p.add_argument("--no-default-denied-addresses", action="store_true",
                   help="allow link-local and metadata addresses (not recommended)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster/env)")
    p.add_argument("--log-level", default=os.environ.get("AGENTQUEUE_LOG_LEVEL", "INFO"))
    p.add_argument("--log-format", choices=["json", "text"], default="json")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("crds", help="write the CRDs rendered from the models")
    p.add_argument("--out", default=str(REPO_CRDS), help="directory (default: the repo's crds/)")
    p.add_argument("--check", action="store_true", help="fail if the directory differs")
    p.add_argument("--stdout", action="store_true", help="print instead of writing")
    p.set_defaults(func=_cmd_crds)

    _add_dev_parser(sub)
    try:
        from . import tools_cli
    except ImportError:  # the data-plane tools are optional in a minimal install
        tools_cli = None  # type: ignore[assignment]
    if tools_cli is not None:
        tools_cli.add_parsers(sub)
    return parser


def _add_dev_parser(sub: Any) -> None:
    """`agentqueue dev`: the local stack, from the dev tooling (its own distribution,
    agentqueue-devtools, never in the operator image); without it, one line saying so."""
    try:
        from agentqueue_devtools import cli as dev_cli
    except ImportError:
        p = sub.add_parser("dev", help="the local stack (needs agentqueue-devtools)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_no_devtools)
        return
    dev_cli.add_parser(sub)


def _no_devtools(args: argparse.Namespace) -> int:
    print("agentqueue dev: the dev tooling is not installed here (it is its own "
          "distribution: pip install -e devtools/ from a checkout, as `make bootstrap` does)",
          file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
