"""`agentqueue dev up|down|env`: the local stack."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    dev = sub.add_parser("dev", help="the local stack: redis-server, Kubernetes, the operator")
    dsub = dev.add_subparsers(dest="dev_command", required=True)
    p = dsub.add_parser("up", help="start the stack and apply a sample queue")
    p.add_argument("--example", default="quickstart",
                   help="quickstart, contact-center, or examples/<name>.yaml / a directory / "
                        "a path to apply")
    p.add_argument("--namespace", "-n", default=None,
                   help="where to apply it (default: the example's own: quickstart -> "
                        "default, contact-center -> contact-center)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--node", dest="node", action="store_true", default=None,
                      help="require a real node (fail if one cannot run here)")
    mode.add_argument("--no-node", dest="node", action="store_false",
                      help="control plane only: host redis-server and operator, no pods")
    p.set_defaults(func=lambda a: _up(a))
    p = dsub.add_parser("env", help="print shell exports for the running stack")
    p.set_defaults(func=lambda a: _env())
    p = dsub.add_parser("down", help="stop the stack and remove its state")
    p.set_defaults(func=lambda a: _down())


def _up(args: argparse.Namespace) -> int:
    from .stack import up
    return up(args.example, args.namespace, node=args.node)


def _env() -> int:
    from .stack import env_exports
    return env_exports()


def _down() -> int:
    from .stack import down
    return down()
