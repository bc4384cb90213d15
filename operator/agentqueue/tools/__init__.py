"""Operational tools behind the CLI: dead-letter queue inspection and replay, peeking."""

from .dlq import DeadLetter, ReplayResult, dlq_list, dlq_purge, dlq_replay, dlq_show
from .peek import PeekedMessage, peek

__all__ = [
    "DeadLetter",
    "PeekedMessage",
    "ReplayResult",
    "dlq_list",
    "dlq_purge",
    "dlq_replay",
    "dlq_show",
    "peek",
]
