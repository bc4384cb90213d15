"""Garbage-collector thresholds for the operator process.

Every poll tick allocates a few objects per consumer group (replies, states, figures):
with CPython's default thresholds (700, 10, 10) a 10,000-group tick triggers several
full collections that walk every object the operator holds (kopf's bodies, caches),
which measured ~35% of the tick (bench/polling.py). Collecting young objects every
20,000 allocations instead keeps the cyclic garbage bounded and the full walks rare.
"""

from __future__ import annotations

import gc

THRESHOLDS = (20_000, 20, 20)


def tune() -> None:
    """Apply the operator's thresholds (idempotent)."""
    gc.set_threshold(*THRESHOLDS)
