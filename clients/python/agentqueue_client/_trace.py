"""W3C trace context propagation, when OpenTelemetry is installed (optional)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_inject: Callable[[], dict[str, str]] | None = None
_loaded = False


def _load() -> Callable[[], dict[str, str]] | None:
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None

    def inject() -> dict[str, str]:
        if not trace.get_current_span().get_span_context().is_valid:
            return {}
        carrier: dict[str, Any] = {}
        propagate.inject(carrier)
        return {k: str(v) for k, v in carrier.items() if k in ("traceparent", "tracestate")}

    return inject


def trace_headers() -> dict[str, str]:
    """``traceparent``/``tracestate`` of the active span; empty without OpenTelemetry or
    without an active span."""
    global _inject, _loaded
    if not _loaded:
        _inject, _loaded = _load(), True
    return _inject() if _inject is not None else {}
