"""Drill: a network partition between the operator and one Redis (docs/drills.md).

redis-server runs in a network namespace of its own, reached over a veth pair on a
random link-local /30 (169.254.x.y); the partition is the namespace's end of the pair
going down (packets are dropped: the operator's connections time out, as in a real
partition, rather than being refused), the heal brings it back up. Needs root and
iproute2; skipped otherwise (a failure when CI=true). Everything created is removed at the
end. The drill runs its own control plane and operator: link-local addresses are refused
by the operator's default address policy (cloud metadata lives there), so this operator runs
with `--no-default-denied-addresses`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentqueue_devtools.redisserver import RedisServer, redis_server_binary

from .operator_fixtures import condition, get_obj, wait_for, wait_ready, wait_reason
from .required import missing
from .test_drills_common import Plane, dedicated_plane, new_operator, say
from .test_drills_redis import admin_secret, group
from .test_operator_queue import apply, queue

pytestmark = [pytest.mark.k8s, pytest.mark.slow]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=10)


class Netns:
    """A network namespace joined to the host by a veth pair on a /30."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"aqdrill-{tag}"
        self.host_if, self.ns_if = f"aqh{tag}", f"aqn{tag}"
        third = secrets.randbelow(200) + 20
        fourth = secrets.randbelow(60) * 4
        self.host_ip = f"169.254.{third}.{fourth + 1}"
        self.ns_ip = f"169.254.{third}.{fourth + 2}"

    def create(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        self.exec("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        self.exec("ip", "link", "set", self.ns_if, "up")
        self.exec("ip", "link", "set", "lo", "up")

    def exec(self, *cmd: str) -> None:
        _ip("netns", "exec", self.name, *cmd)

    def partition(self) -> None:
        self.exec("ip", "link", "set", self.ns_if, "down")

    def heal(self) -> None:
        self.exec("ip", "link", "set", self.ns_if, "up")

    def delete(self) -> None:
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.name, check=False)


@pytest.fixture
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        missing("needs root and iproute2 (ip netns)")
    ns = Netns()
    try:
        ns.create()
    except (subprocess.CalledProcessError, OSError) as exc:
        ns.delete()
        missing(f"cannot create a network namespace here: {exc}")
    yield ns
    ns.delete()


def redis_in(ns: Netns, workdir: Path) -> RedisServer:
    """A RedisServer whose process runs inside `ns`, bound to its address."""
    wrapper = workdir / "redis-in-netns"
    workdir.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f"#!/bin/sh\nexec ip netns exec {ns.name} {redis_server_binary()} "
                       "\"$@\"\n")
    wrapper.chmod(0o755)
    server = RedisServer(workdir / "data")
    server.host = ns.ns_ip
    old = os.environ.get("REDIS_SERVER")
    os.environ["REDIS_SERVER"] = str(wrapper)
    try:
        server.start()
    finally:
        if old is None:
            os.environ.pop("REDIS_SERVER", None)
        else:
            os.environ["REDIS_SERVER"] = old
    return server


def _ready(kubectl: Any, kind: str, name: str, ns: str) -> tuple[str, str]:
    cond = condition(get_obj(kubectl, kind, name, ns)) or {}
    return cond.get("status", "?"), cond.get("reason", "?")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, binaries: Any) -> Iterator[Plane]:
    """A control plane of the drill's own: its operator must reach a link-local Redis,
    which the session operator's address policy refuses by default (cloud metadata lives
    there), so this one runs with the defaults off, as an administrator whose Redis is on
    link-local addresses would run it."""
    with dedicated_plane(tmp_path_factory.mktemp("partition-plane"), binaries) as p:
        yield p


def test_network_partition_operator_to_redis(plane: Plane, netns: Netns,
                                             tmp_path: Path) -> None:
    far = redis_in(netns, tmp_path / "far")
    near = RedisServer(tmp_path / "near").start()
    kubectl = plane.kubectl
    namespace = plane.namespace(f"partition-{secrets.token_hex(3)}")
    operator = new_operator(plane, near, tmp_path / "operator.log",
                            ["--no-default-denied-addresses"])
    assert operator.proc is not None
    pid = operator.proc.pid
    try:
        for name, server in (("far", far), ("near", near)):
            admin_secret(kubectl, namespace, name, server)
            apply(kubectl, namespace, queue(f"{name}-q", redis={"secretRef": {"name": name}},
                                            access={"consumers": [{"name": "worker"}]}))
            apply(kubectl, namespace, group(f"{name}-g", queueRef={"name": f"{name}-q"}))
        for name in ("far", "near"):
            wait_ready(kubectl, "agentqueues", f"{name}-q", namespace)
            wait_ready(kubectl, "consumergroups", f"{name}-g", namespace)

        netns.partition()
        t0 = time.monotonic()
        wait_reason(kubectl, "agentqueues", "far-q", namespace, "RedisUnavailable",
                    timeout=150)
        t_queue = time.monotonic() - t0
        wait_for(lambda: _ready(kubectl, "consumergroups", "far-g", namespace)[0] == "False",
                 timeout=150, what="group Ready=False")
        t_group = time.monotonic() - t0
        apply(kubectl, namespace, queue("near-new", redis={"secretRef": {"name": "near"}}))
        t1 = time.monotonic()
        wait_ready(kubectl, "agentqueues", "near-new", namespace, timeout=60)
        t_new = time.monotonic() - t1
        assert _ready(kubectl, "agentqueues", "near-q", namespace)[0] == "True"

        netns.heal()
        cut_for = time.monotonic() - t0
        t2 = time.monotonic()
        wait_ready(kubectl, "agentqueues", "far-q", namespace, timeout=150)
        t_q = time.monotonic() - t2
        wait_for(lambda: _ready(kubectl, "consumergroups", "far-g", namespace)
                 == ("True", "Active"), timeout=150, what="group Ready again")
        t_g = time.monotonic() - t2
        assert operator.proc.pid == pid and operator.proc.poll() is None
        say(f"partition: queue RedisUnavailable after {t_queue:.1f}s, group Ready=False after "
            f"{t_group:.1f}s; a new queue on the other Redis Ready in {t_new:.1f}s meanwhile; "
            f"healed after {cut_for:.1f}s: queue Ready in {t_q:.1f}s, group in {t_g:.1f}s; "
            "operator not restarted")
    finally:
        plane.drop_namespace(namespace)
        operator.stop()
        far.stop()
        near.stop()
