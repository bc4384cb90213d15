"""The KubeGateway's HTTP layer against a tiny local server (no cluster): errors are
classified once, and a call queued for one of the pool's connections never times out
for the queueing (10,000 queues at once made thousands of calls wait)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from aiohttp import web

from agentqueue import kube
from agentqueue.kube import KubeForbidden, KubeGateway, KubeNotFound, KubeUnavailable


async def _server(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_calls_queued_for_a_connection_do_not_time_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "API_CONNECTIONS", 1)
    monkeypatch.setattr(kube, "READ_TIMEOUT_S", 0.5)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)  # each answer well within the read timeout
        return web.json_response({"metadata": {"name": request.match_info["tail"]}})

    runner, url = await _server(slow)
    gateway = KubeGateway(kopf.ConnectionInfo(server=url, token="t"))
    try:
        # Eight calls, one connection: the last waits ~1.4 s in the queue.
        found = await asyncio.gather(*(gateway.get_object("agentqueues", "ns", f"q{i}")
                                       for i in range(8)))
        assert [f["metadata"]["name"] for f in found if f] == [
            f"apis/agentqueue.io/v1alpha1/namespaces/ns/agentqueues/q{i}" for i in range(8)]
    finally:
        await gateway.close()
        await runner.cleanup()


async def test_statuses_are_classified_and_the_token_is_sent() -> None:
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        last = request.match_info["tail"].rsplit("/", 1)[-1]
        status = int(last[1:]) if last[:1] == "s" and last[1:].isdigit() else 404
        return web.json_response({"kind": "Status"}, status=status)

    runner, url = await _server(answer)
    gateway = KubeGateway(kopf.ConnectionInfo(server=url, token="secret-token"))
    try:
        assert await gateway.get_object("agentqueues", "ns", "s404") is None
        with pytest.raises(KubeNotFound):
            await gateway.get_scale("v1", "Thing", "ns", "x")  # discovery: 404 -> no API
        with pytest.raises(KubeForbidden):
            await gateway.read_secret("ns", "s403")
        for status in (409, 429, 500, 503):
            with pytest.raises(KubeUnavailable):
                await gateway.read_secret("ns", f"s{status}")
        assert set(seen) == {"Bearer secret-token"}
    finally:
        await gateway.close()
        await runner.cleanup()
    gone = KubeGateway(kopf.ConnectionInfo(server=url, token="t"))
    try:
        with pytest.raises(KubeUnavailable, match="unreachable"):  # nobody listens now
            await gone.read_secret("ns", "x")
    finally:
        await gone.close()


async def test_scaling_does_not_wait_behind_a_full_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy group's /scale has its own small pool: with every connection of the main
    pool held by slow status writes, discovery, GET and PATCH of /scale still answer at
    once (10,000 new queues kept the main pool full for minutes)."""
    monkeypatch.setattr(kube, "API_CONNECTIONS", 2)
    release = asyncio.Event()
    scaled: list[Any] = []

    async def answer(request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        if tail.endswith("/status"):
            await release.wait()  # the main pool's calls hang until the test is done
            return web.json_response({})
        if tail == "apis/apps/v1":
            return web.json_response({"resources": [
                {"name": "deployments", "kind": "Deployment"},
                {"name": "deployments/scale", "kind": "Scale"}]})
        if tail.endswith("/scale"):
            if request.method == "PATCH":
                scaled.append(await request.json())
            return web.json_response({"spec": {"replicas": 0}, "status": {"replicas": 0}})
        return web.json_response({}, status=404)

    runner, url = await _server(answer)
    gateway = KubeGateway(kopf.ConnectionInfo(server=url, token="t"))
    writes = [asyncio.create_task(gateway.patch_status("agentqueues", "ns", f"q{i}", {}))
              for i in range(6)]
    try:
        await asyncio.sleep(0.1)
        assert not any(w.done() for w in writes)  # the main pool is full
        async with asyncio.timeout(2.0):
            info = await gateway.get_scale("apps/v1", "Deployment", "ns", "agent")
            await gateway.set_scale("apps/v1", "Deployment", "ns", "agent", 3)
        assert info.replicas == 0 and scaled == [{"spec": {"replicas": 3}}]
    finally:
        release.set()
        await asyncio.gather(*writes)
        await gateway.close()
        await runner.cleanup()
