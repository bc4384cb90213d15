"""The contact-center example's SLA report (loadgen.py): pure figures from outcomes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "contact-center"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(EXAMPLE))  # loadgen imports agents like the image does
    try:
        spec = importlib.util.spec_from_file_location(f"cc_report_{name}", EXAMPLE / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLE))


loadgen = _load("loadgen")
agents = _load("agents")


def _outcome(i: int, handled: float, escalated_wait: float | None = None,
             redeliveries: int = 0) -> dict[str, object]:
    sent = 1000.0
    return {"id": f"conv-r-{i}", "outcome": "escalated" if escalated_wait is not None
            else "resolved", "sent_at": sent, "done_at": sent + handled,
            "escalated_at": None if escalated_wait is None else sent + handled - escalated_wait,
            "redeliveries": redeliveries}


def test_all_slas_met() -> None:
    outcomes = [_outcome(i, handled=1.0 + i / 100) for i in range(90)]
    outcomes += [_outcome(90 + i, handled=5.0, escalated_wait=0.5) for i in range(10)]
    r = loadgen.sla_report(outcomes, sent=100, started=1000.0, finished=1006.0)
    assert (r.outcomes, r.resolved, r.escalated) == (100, 90, 10)
    assert r.handled_within == 1.0 and r.handled_p99 == 5.0
    assert r.deliveries == 2 * 100 + 10 and r.redeliveries == 0
    assert r.escalation_p99 == 0.5
    assert r.met == {"handled": True, "retries": True, "escalation": True}
    assert [line.endswith("met") for line in r.lines()[1:]] == [True, True, True]


def test_missing_outcomes_count_as_late() -> None:
    # 98 of 100 outcomes: 98% handled within 30 s < 99%.
    r = loadgen.sla_report([_outcome(i, 1.0) for i in range(98)], sent=100, started=0,
                           finished=1)
    assert r.handled_within == pytest.approx(0.98)
    assert r.met["handled"] is False


def test_boundaries_of_each_sla() -> None:
    # Exactly 30 s is not "within 30 s"; 2% retries is not "below 2%"; 120 s wait misses.
    late = loadgen.sla_report([_outcome(0, 30.0)], sent=1, started=0, finished=1)
    assert late.met["handled"] is False
    ok = loadgen.sla_report([_outcome(0, 29.99)], sent=1, started=0, finished=1)
    assert ok.met["handled"] is True
    # 49 outcomes x 2 deliveries = 98, + 2 redeliveries = 100 deliveries: exactly 2%.
    at_limit = loadgen.sla_report([_outcome(i, 1.0, redeliveries=1 if i < 2 else 0)
                                   for i in range(49)], sent=49, started=0, finished=1)
    assert at_limit.retry_share == pytest.approx(0.02)
    assert at_limit.met["retries"] is False
    below = loadgen.sla_report([_outcome(i, 1.0, redeliveries=1 if i < 1 else 0)
                                for i in range(49)], sent=49, started=0, finished=1)
    assert below.met["retries"] is True
    slow = loadgen.sla_report([_outcome(0, 200.0, escalated_wait=120.0)], sent=1, started=0,
                              finished=1)
    assert slow.met["escalation"] is False
    fast = loadgen.sla_report([_outcome(0, 20.0, escalated_wait=119.9)], sent=1, started=0,
                              finished=1)
    assert fast.met["escalation"] is True


def test_duplicates_are_told_apart_by_entry_time() -> None:
    sent_ms = 1_700_000_000_000
    ids = [f"{sent_ms + 5}-0", f"{sent_ms - 60_000}-3", f"{sent_ms - 10}-0"]
    assert loadgen.duplicates(ids, sent_ms) == 1


def test_require_env_names_the_missing_secret() -> None:
    with pytest.raises(SystemExit) as exc:
        agents.require_env("billing", {"BILLING_REDIS_URL": "redis://x:1"})
    msg = str(exc.value)
    assert "ESCALATION_REDIS_URL (Secret escalation.billing-agent)" in msg
    assert "FEEDBACK_REDIS_URL (Secret feedback.billing-agent)" in msg
    assert "BILLING_REDIS_URL" not in msg.split("missing credentials:")[1].split(".")[0]
    agents.require_env("evaluate", {"ESCALATION_REDIS_URL": "u", "FEEDBACK_REDIS_URL": "u"})


@pytest.mark.k8s
def test_creds_reports_kubectl_reason(binaries: Any, kubeconfig: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The real kubectl against the real apiserver: a namespace without the Secrets."""
    monkeypatch.setenv("PATH", f"{Path(binaries.kubectl).parent}:/usr/bin:/bin")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(SystemExit) as exc:
        agents.export_lines("classify", "aq-no-such-namespace")
    msg = str(exc.value)
    assert "cannot read Secret intake.classifier in namespace aq-no-such-namespace" in msg
    assert "(NotFound)" in msg and "Traceback" not in msg
