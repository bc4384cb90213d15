"""What the operator's sweep decides about one message (pure; the sweeps themselves are
``redisgw/groups.py`` for Streams and ``redisgw/list_sweep.py`` for Lists).

Deliveries count as the SDK counts them (docs/protocol.md 6.1): a message with attempt
``a`` in its envelope that Redis handed out ``n`` times has had ``n + a`` deliveries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from agentqueue_client.codec import Envelope, decode_element, encode_element
from agentqueue_client.errors import DecodeError

TIMEOUT_ERROR = "aq: not acknowledged within the visibility timeout"
"""The dead-letter reason of a message whose last allowed delivery timed out."""


def over_limit(times_delivered: int, attempts: int, max_deliveries: int) -> bool:
    """Delivered more often than allowed: the consumer that holds it should have
    dead-lettered it on reading (the SDK does; a client of another language may not)."""
    return times_delivered + attempts > max_deliveries


def exceeded_reason(deliveries: int, max_deliveries: int) -> str:
    return f"aq: exceeded maxDeliveries ({deliveries} > {max_deliveries})"


@dataclass(frozen=True)
class ListVerdict:
    """Where one List element goes: back onto `level` as `element`, or (element None) to
    the dead-letter stream with `reason` after `deliveries`."""

    level: int
    element: bytes | None = None
    reason: str = ""
    deliveries: int = 0
    message_id: str = ""
    envelope: Envelope | None = None


def _level(priority: int, levels: int) -> int:
    return max(0, min(priority, levels - 1))


def recovered(raw: bytes, owner: str, levels: int, max_deliveries: int) -> ListVerdict:
    """An element of a dead consumer's processing list: its delivery ``1 + a`` timed out.
    Back at the head with ``a`` + 1, unless that was the last allowed delivery."""
    try:
        msg_id, priority, env = decode_element(raw)
    except DecodeError as exc:
        return ListVerdict(0, reason=f"malformed entry: {exc.reason}", deliveries=1)
    delivered = 1 + env.attempt
    level = _level(priority, levels)
    if delivered >= max_deliveries:
        # As on a Stream; `x.consumer` names the consumer, the envelope keeps `e`.
        return ListVerdict(level, reason=TIMEOUT_ERROR, deliveries=delivered,
                           message_id=msg_id, envelope=env)
    back = dataclasses.replace(env, attempt=env.attempt + 1,
                               error=f"consumer {owner} timed out (visibility timeout)")
    return ListVerdict(level, element=encode_element(back, msg_id, priority))


def promoted(raw: bytes, levels: int, max_deliveries: int) -> ListVerdict:
    """A due retry (its ``a`` already counts the failed delivery): its next delivery is
    ``1 + a``. An undecodable one goes back as it is: the reader dead-letters it with its
    reason."""
    try:
        msg_id, priority, env = decode_element(raw)
    except DecodeError:
        return ListVerdict(0, element=raw)
    level = _level(priority, levels)
    if over_limit(1, env.attempt, max_deliveries):
        return ListVerdict(level, reason=exceeded_reason(1 + env.attempt, max_deliveries),
                           deliveries=1 + env.attempt, message_id=msg_id, envelope=env)
    return ListVerdict(level, element=raw)
