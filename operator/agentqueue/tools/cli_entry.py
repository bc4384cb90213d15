"""The CLI's data-plane commands: thin wrappers that print what the tools return."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import redis.asyncio as aredis

from . import dlq
from ._common import printable
from .peek import peek as peek_messages


def client_for(env: dict[str, str], timeout: float | None = None) -> Any:
    """A client from a credentials Secret's environment (a cluster client when it says
    ``REDIS_CLUSTER``, the sentinels' primary with ``REDIS_SENTINELS``); ``timeout``
    bounds connecting and each reply."""
    kwargs: dict[str, Any] = {"decode_responses": False}
    if timeout is not None:
        kwargs.update(socket_connect_timeout=timeout, socket_timeout=timeout)
    if env.get("REDIS_USERNAME"):
        kwargs["username"] = env["REDIS_USERNAME"]
    if env.get("REDIS_PASSWORD"):
        kwargs["password"] = env["REDIS_PASSWORD"]
    if env.get("REDIS_CA_CERT"):
        kwargs["ssl_ca_data"] = env["REDIS_CA_CERT"]
    if env.get("REDIS_SENTINELS", "").strip():  # the primary the sentinels name now
        from agentqueue_client.config import sentinel_client
        return sentinel_client(env["REDIS_SENTINELS"].split(","),
                               env.get("REDIS_SENTINEL_MASTER", "").strip(),
                               env.get("REDIS_URL") or "redis://", **kwargs)
    if env.get("REDIS_CLUSTER", "").strip().lower() in ("1", "true", "yes"):
        # Pipelines of the tools mix partitions: the cluster client splits them per node.
        return aredis.RedisCluster.from_url(env["REDIS_URL"], **kwargs)
    return aredis.Redis.from_url(env["REDIS_URL"], **kwargs)


async def peek(args: argparse.Namespace, env: dict[str, str], ns: str) -> int:
    client = client_for(env)
    try:
        messages = await peek_messages(client, ns, args.queue, count=args.count)
    finally:
        await client.aclose()
    for m in messages:
        flag = f"  [{printable(m.problem)}]" if m.problem else ""
        print(f"{m.partition}/{printable(m.id)}  attempt={m.attempt}  "
              f"{printable(m.preview())}{flag}")
    if not messages:
        print(f"no messages in {ns}/{args.queue}", file=sys.stderr)
    return 0


async def send(args: argparse.Namespace, env: dict[str, str], ns: str) -> int:
    from agentqueue_client import ClientConfig, Producer

    env = {**env, "AQ_NAMESPACE": env.get("AQ_NAMESPACE", ns),
           "AQ_QUEUE": env.get("AQ_QUEUE", args.queue)}
    producer = Producer(ClientConfig.from_env(env))
    try:
        payload: Any
        try:
            payload = json.loads(args.payload)
        except json.JSONDecodeError:
            payload = args.payload
        mid = await producer.send(payload, key=args.key, idempotency_key=args.idempotency_key)
        print(mid)
    finally:
        await producer.close()
    return 0


async def dlq_ls(args: argparse.Namespace, env: dict[str, str], ns: str) -> int:
    client = client_for(env)
    try:
        letters = await dlq.dlq_list(client, ns, args.queue, count=args.count)
    finally:
        await client.aclose()
    for d in letters:
        print(f"{printable(d.ref)}  deliveries={d.deliveries}  group={printable(d.group)}"
              f"  error={printable(d.error)}  {printable(d.preview(60))}")
    if not letters:
        print(f"the dead-letter queue of {ns}/{args.queue} is empty", file=sys.stderr)
    return 0


async def dlq_show(args: argparse.Namespace, env: dict[str, str], ns: str) -> int:
    client = client_for(env)
    try:
        for ref in args.ids:
            d = await dlq.dlq_show(client, ns, args.queue, ref)
            print(json.dumps(d.to_dict() if d else {"ref": ref, "missing": True}, indent=2))
    finally:
        await client.aclose()
    return 0


async def dlq_replay(args: argparse.Namespace, env: dict[str, str], ns: str) -> int:
    if not args.ids and not args.all:
        print("name dead letters by <partition>/<id>, or pass --all", file=sys.stderr)
        return 2
    client = client_for(env)
    try:
        result = await dlq.dlq_replay(client, ns, args.queue, "all" if args.all else args.ids)
    finally:
        await client.aclose()
    for old, new in result.replayed.items():
        print(f"replayed {printable(old)} -> {printable(new)}")
    for ref in result.missing:
        print(f"missing {printable(ref)}", file=sys.stderr)
    return 0 if not result.missing else 1


async def dlq_purge(args: argparse.Namespace, env: dict[str, str], ns: str) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            print("refusing to purge without --yes (no terminal to ask)", file=sys.stderr)
            return 2
        answer = input(f"purge the dead-letter queue of {ns}/{args.queue}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 1
    client = client_for(env)
    try:
        removed = await dlq.dlq_purge(client, ns, args.queue, "all")
    finally:
        await client.aclose()
    print(f"purged {removed} dead letter(s)")
    return 0
