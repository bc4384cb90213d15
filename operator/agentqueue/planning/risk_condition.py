"""The ``RedisConfigRisk`` condition of a queue (pure; `server_risks` finds the risks).

True while a server of the queue is configured to lose data, with a Warning Event when
that starts or its message changes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import reasons
from .server_risks import Risk, summary


class RiskCondition(NamedTuple):
    status: bool
    reason: str
    message: str
    warn: tuple[str, str] | None
    """(reason, message) of the Warning Event to post, or None."""


def risk_condition(risks: list[Risk], before: dict[str, Any] | None) -> RiskCondition:
    """The condition for `risks`; `before` is the RedisConfigRisk condition as the
    object's status showed it (None: absent). Reason: the risks' one reason, or
    SeveralRisks; message: their summary, cut to 1000 characters."""
    if not risks:
        return RiskCondition(False, reasons.NO_KNOWN_RISK, "", None)
    reason = risks[0].reason if len({r.reason for r in risks}) == 1 else reasons.SEVERAL_RISKS
    message = summary(risks)[:1000]
    warn = None
    if not before or before.get("status") != "True" or before.get("message") != message:
        warn = (reason, message)
    return RiskCondition(True, reason, message, warn)
