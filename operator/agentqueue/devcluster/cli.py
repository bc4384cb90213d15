"""`agentqueue dev up|down|env`: the local stack."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    dev = sub.add_parser("dev", help="the local stack: redis-server, Kubernetes, the operator")
    dsub = dev.add_subparsers(dest="dev_command", required=True)
    p = dsub.add_parser("up", help="start the stack and apply a sample queue")
    p.add_argument("--example", default="quickstart",
                   help="examples/<name>.yaml (or a directory) to apply")
    p.add_argument("--namespace", "-n", default="default")
    p.set_defaults(func=lambda a: _up(a))
    p = dsub.add_parser("env", help="print shell exports for the running stack")
    p.set_defaults(func=lambda a: _env())
    p = dsub.add_parser("down", help="stop the stack and remove its state")
    p.set_defaults(func=lambda a: _down())


def _up(args: argparse.Namespace) -> int:
    from .stack import up
    return up(args.example, args.namespace)


def _env() -> int:
    from .stack import env_exports
    return env_exports()


def _down() -> int:
    from .stack import down
    return down()
