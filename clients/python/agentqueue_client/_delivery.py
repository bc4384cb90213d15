"""What a backend hands to the consumer: one raw delivery, decoded or not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .codec import Envelope


@dataclass
class Delivery:
    """A read entry before admission. ``envelope`` is None when it did not decode
    (``reason`` says why); ``handle`` is what the backend needs to settle it (ack, nack,
    dead-letter, release): see :data:`~agentqueue_client._backend.Handle`."""

    partition: int
    id: str
    handle: Any
    envelope: Envelope | None
    reason: str | None = None
    delivered: int = 1  # the PEL delivery count (Streams); 1 for Lists
    priority: int = 0
