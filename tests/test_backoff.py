"""Exponential backoff with full jitter: bounds, growth, cap, no overflow."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agentqueue_client.backoff import RetryPolicy, backoff_ms


def test_growth_without_jitter() -> None:
    p = RetryPolicy(initial_ms=100, max_ms=1000, multiplier=2.0, jitter=False)
    assert [p.delay_ms(n) for n in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]


def test_full_jitter_uses_the_whole_range() -> None:
    p = RetryPolicy(initial_ms=100, max_ms=10_000, multiplier=3.0, jitter=True)
    assert p.delay_ms(3, rand=lambda: 0.0) == 0
    assert p.delay_ms(3, rand=lambda: 1.0) == 900
    assert p.delay_ms(3, rand=lambda: 0.5) == 450


def test_degenerate_settings() -> None:
    assert backoff_ms(5, initial_ms=0, max_ms=100, multiplier=2, jitter=False) == 0
    assert backoff_ms(0, initial_ms=50, max_ms=100, multiplier=2, jitter=False) == 50
    assert backoff_ms(3, initial_ms=500, max_ms=100, multiplier=2, jitter=False) == 100
    assert backoff_ms(3, initial_ms=10, max_ms=100, multiplier=float("nan"),
                      jitter=False) == 10


@given(attempt=st.integers(min_value=-5, max_value=10**9),
       initial=st.integers(min_value=0, max_value=10**7),
       cap=st.integers(min_value=0, max_value=10**9),
       mult=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
       jitter=st.booleans(), r=st.floats(min_value=0.0, max_value=1.0))
def test_bounded_and_never_overflows(attempt: int, initial: int, cap: int, mult: float,
                                     jitter: bool, r: float) -> None:
    delay = backoff_ms(attempt, initial_ms=initial, max_ms=cap, multiplier=mult,
                       jitter=jitter, rand=lambda: r)
    assert 0 <= delay <= cap


@given(attempt=st.integers(min_value=1, max_value=60))
def test_monotonic_without_jitter(attempt: int) -> None:
    p = RetryPolicy(initial_ms=7, max_ms=123_456, multiplier=1.7, jitter=False)
    assert p.delay_ms(attempt) <= p.delay_ms(attempt + 1)
