"""The SDK consumer and ACL users that vanish: Redis keeps ACL users in memory, so after
a restart without persistence (or a failover) a consumer's password is refused until
the operator re-creates its user. Credentials that worked get a bounded grace; ones
that never worked fail at once."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import replace
from typing import Any

import pytest
from redis import exceptions as rex

from agentqueue_client import Consumer, Producer
from agentqueue_client import consumer as consumer_mod
from agentqueue_client.errors import is_transient

from .agents.harness import provision, sdk_config

pytest_plugins = ["tests.redis_fixtures"]


def test_auth_errors_are_transient_only_for_credentials_that_worked() -> None:
    wrongpass = rex.AuthenticationError("WRONGPASS invalid username-password pair")
    assert not is_transient(wrongpass)
    assert is_transient(wrongpass, authenticated_before=True)
    noperm = rex.NoPermissionError("NOPERM this user has no permissions")
    assert not is_transient(noperm, authenticated_before=True)
    assert is_transient(rex.ConnectionError("Connection reset by peer"))


async def _user(admin: Any, name: str, password: str) -> None:
    await admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}",
                                "~*", "&*", "+@all")


async def test_wrong_password_from_the_start_fails_fast(redis_server: Any,
                                                        redis_client: Any) -> None:
    cfg = sdk_config(redis_server, "authq1")
    await provision(redis_client, cfg)
    bad = replace(cfg, password="wrong-" + secrets.token_hex(8))
    t0 = time.monotonic()
    with pytest.raises(rex.AuthenticationError) as err:
        async with Consumer(bad, group="workers", consumer_name="c") as c:
            await c.next_message()
    assert time.monotonic() - t0 < 5
    assert bad.password not in str(err.value)


async def test_consumer_rides_out_a_lost_acl_user(redis_server: Any,
                                                  redis_client: Any) -> None:
    """The user disappears under a running consumer (ACL DELUSER also closes its
    connections, as a restart would) and comes back 1.5 s later: the consumer keeps
    going without raising and gets the next message."""
    admin_cfg = sdk_config(redis_server, "authq2")
    await provision(redis_client, admin_cfg)
    user, password = "aq.test.authq2.worker", secrets.token_hex(16)
    await _user(redis_client, user, password)
    cfg = replace(admin_cfg, username=user, password=password)
    try:
        async with Consumer(cfg, group="workers", consumer_name="c", block_ms=200) as c:
            reading = asyncio.ensure_future(c.next_message())
            await asyncio.sleep(0.3)
            await redis_client.execute_command("ACL", "DELUSER", user)
            await asyncio.sleep(1.5)
            assert not reading.done()
            await _user(redis_client, user, password)
            async with Producer(admin_cfg) as p:
                await p.send({"n": 1})
            msg = await asyncio.wait_for(reading, 15)
            assert msg is not None and msg.payload == {"n": 1}
            await msg.ack()
    finally:
        await redis_client.execute_command("ACL", "DELUSER", user)


async def test_auth_grace_is_bounded(redis_server: Any, redis_client: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A user that never comes back (e.g. the password was rotated away): the consumer
    raises once the grace is over, and the error names no password."""
    monkeypatch.setattr(consumer_mod, "AUTH_GRACE_S", 1.0)
    admin_cfg = sdk_config(redis_server, "authq3")
    await provision(redis_client, admin_cfg)
    user, password = "aq.test.authq3.worker", secrets.token_hex(16)
    await _user(redis_client, user, password)
    cfg = replace(admin_cfg, username=user, password=password)
    async with Consumer(cfg, group="workers", consumer_name="c", block_ms=200) as c:
        reading = asyncio.ensure_future(c.next_message())
        await asyncio.sleep(0.3)
        await redis_client.execute_command("ACL", "DELUSER", user)
        with pytest.raises(rex.AuthenticationError) as err:
            await asyncio.wait_for(reading, 15)
    assert password not in str(err.value)
