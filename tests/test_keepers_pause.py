"""The keepers stop while kopf pauses this replica for a peer with a higher priority:
kopf's own peering code decides, and the Runtime's PeeringPause follows what it logs."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.configs import configuration
from kopf._cogs.structs import references
from kopf._core.engines import peering

from agentqueue.runtime import PeeringPause


def _event(peers: dict[str, dict[str, Any]]) -> Any:
    return {"type": "MODIFIED", "object": {"metadata": {"name": "agentqueue"},
                                           "status": peers}}


async def test_pause_and_resume_follow_kopfs_peering_decisions() -> None:
    gate = PeeringPause()
    logging.getLogger(PeeringPause.LOGGER).setLevel(logging.WARNING)  # as in quiet mode
    gate.install()  # lowers it again: the pause lines are INFO
    try:
        settings = configuration.OperatorSettings()
        settings.peering.name = "agentqueue"
        settings.peering.priority = 100
        toggles = aiotoggles.ToggleSet(any)
        conflicts = await toggles.make_toggle(False)
        resource = references.Resource("kopf.dev", "v1", "clusterkopfpeerings",
                                       namespaced=False)
        pressure = asyncio.Event()
        pressure.set()  # kopf would sleep until the peers expire: wake at once
        now = dt.datetime.now(dt.UTC).isoformat()
        me = peering.Identity("me")

        async def event(peers: dict[str, dict[str, Any]]) -> None:
            await peering.process_peering_event(
                raw_event=_event(peers), namespace=None, resource=resource, identity=me,
                settings=settings, autoclean=False, conflicts_found=conflicts,
                stream_pressure=pressure)

        mine = {"me": {"priority": 100, "lifetime": 60, "lastseen": now}}
        await event(mine)
        assert not gate.paused and conflicts.is_off()
        await event({**mine, "newer": {"priority": 200, "lifetime": 60, "lastseen": now}})
        assert gate.paused and conflicts.is_on()
        await event({**mine, "lower": {"priority": 50, "lifetime": 60, "lastseen": now}})
        assert not gate.paused and conflicts.is_off()
    finally:
        gate.remove()
