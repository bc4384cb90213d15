"""Small asyncio helpers for SDK tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agentqueue_client import Consumer, Message


async def take(consumer: Consumer, n: int, timeout: float = 5.0) -> list[Message]:
    """The next ``n`` messages (fails after ``timeout`` seconds)."""
    out: list[Message] = []

    async def collect() -> None:
        async for msg in consumer:
            out.append(msg)
            if len(out) >= n:
                return

    await asyncio.wait_for(collect(), timeout)
    return out


async def nothing_for(consumer: Consumer, seconds: float) -> None:
    """Assert that no message arrives within ``seconds``."""
    try:
        msg = await asyncio.wait_for(consumer.next_message(), seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message {msg!r}")


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 5.0,
                     every: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        await asyncio.sleep(every)
