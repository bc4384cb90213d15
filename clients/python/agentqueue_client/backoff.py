"""Exponential backoff with full jitter, capped. Pure.

The delay before retry ``n`` (``n = 1`` after the first failed delivery) is::

    cap_n = min(max_ms, initial_ms * multiplier ** (n - 1))
    delay = uniform(0, cap_n)   with jitter ("full jitter")
    delay = cap_n               without

Full jitter spreads the retries of messages that failed together (a downstream outage)
instead of sending them back in one thundering herd.

>>> RetryPolicy(initial_ms=100, max_ms=1000, multiplier=2.0, jitter=False).delay_ms(3)
400
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


def backoff_ms(attempt: int, *, initial_ms: int, max_ms: int, multiplier: float,
               jitter: bool, rand: Callable[[], float] = random.random) -> int:
    """Delay in ms before retry number ``attempt`` (1-based); never negative, never
    above ``max_ms``, never overflows (huge attempts simply give the cap)."""
    if initial_ms <= 0 or max_ms <= 0:
        return 0
    cap = float(max_ms)
    n = max(attempt, 1) - 1
    mult = max(multiplier, 1.0) if math.isfinite(multiplier) else 1.0
    # initial * mult**n <= max  <=>  n * log(mult) <= log(max / initial): no overflow.
    if mult > 1.0 and n * math.log(mult) >= math.log(cap / initial_ms):
        ceiling = cap
    else:
        ceiling = min(cap, initial_ms * mult ** n)
    if jitter:
        r = min(max(rand(), 0.0), 1.0)
        ceiling *= r
    return int(round(ceiling))


@dataclass(frozen=True)
class RetryPolicy:
    """A queue's retry settings (``retry*`` fields of the metadata hash)."""

    initial_ms: int = 1000
    max_ms: int = 300_000
    multiplier: float = 2.0
    jitter: bool = True

    def delay_ms(self, attempt: int, rand: Callable[[], float] = random.random) -> int:
        """Delay before retry ``attempt`` (1-based)."""
        return backoff_ms(attempt, initial_ms=self.initial_ms, max_ms=self.max_ms,
                          multiplier=self.multiplier, jitter=self.jitter, rand=rand)
