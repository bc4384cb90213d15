"""The sweep's verdicts on one message (planning/sweep.py): pure, mutation-tested."""

from __future__ import annotations

import json

import pytest

from agentqueue.planning.sweep import (
    TIMEOUT_ERROR,
    ListVerdict,
    exceeded_reason,
    over_limit,
    promoted,
    recovered,
)
from agentqueue_client.codec import Envelope, decode_element, encode_element


def element(attempt: int = 0, priority: int = 0, error: str | None = None,
            body: bytes = b'{"n":1}', msg_id: str = "m-1") -> bytes:
    return encode_element(Envelope(body=body, attempt=attempt, error=error), msg_id, priority)


@pytest.mark.parametrize(("times", "attempts", "limit", "over"), [
    (1, 0, 1, False), (2, 0, 1, True), (1, 1, 2, False), (2, 1, 2, True), (0, 3, 3, False),
    (0, 4, 3, True), (3, 0, 3, False),
])
def test_over_limit_counts_redis_deliveries_plus_attempts(times: int, attempts: int,
                                                         limit: int, over: bool) -> None:
    assert over_limit(times, attempts, limit) is over


def test_exceeded_reason() -> None:
    assert exceeded_reason(4, 3) == "aq: exceeded maxDeliveries (4 > 3)"
    assert TIMEOUT_ERROR == "aq: not acknowledged within the visibility timeout"


def test_a_recovered_element_goes_back_with_one_more_attempt_and_why() -> None:
    v = recovered(element(attempt=0, priority=1, error="old"), "agent-7", 3, 3)
    assert v.reason == "" and v.deliveries == 0 and v.level == 1 and v.element is not None
    msg_id, priority, env = decode_element(v.element)
    assert (msg_id, priority, env.attempt, env.body) == ("m-1", 1, 1, b'{"n":1}')
    assert env.error == "consumer agent-7 timed out (visibility timeout)"


@pytest.mark.parametrize(("attempt", "limit", "dead"), [
    (0, 1, True), (0, 2, False), (1, 2, True), (1, 3, False), (2, 3, True), (5, 3, True),
])
def test_recovery_dead_letters_when_the_last_allowed_delivery_timed_out(
        attempt: int, limit: int, dead: bool) -> None:
    v = recovered(element(attempt=attempt, priority=2), "a", 3, limit)
    assert (v.element is None) is dead
    if dead:
        assert v == ListVerdict(2, reason=TIMEOUT_ERROR, deliveries=1 + attempt,
                                message_id="m-1", envelope=v.envelope)
        assert v.envelope is not None and v.envelope.attempt == attempt


def test_levels_are_clamped_to_the_queue() -> None:
    assert recovered(element(priority=5), "a", 2, 9).level == 1
    assert recovered(element(priority=5), "a", 1, 9).level == 0
    assert promoted(element(priority=5), 3, 9).level == 2
    assert promoted(element(priority=1), 3, 9).level == 1
    assert recovered(element(priority=1), "a", 3, 9).level == 1


def test_a_malformed_element_of_a_dead_consumer_is_dead_lettered_with_the_reason() -> None:
    v = recovered(b"\x00junk", "a", 3, 3)
    assert v.element is None and v.level == 0 and v.deliveries == 1
    assert v.reason == "malformed entry: element is not a valid JSON envelope"
    assert recovered(json.dumps([1]).encode(), "a", 3, 3).reason == (
        "malformed entry: element is not a JSON object")


@pytest.mark.parametrize(("attempt", "limit", "dead"), [
    (1, 1, True), (1, 2, False), (2, 2, True), (2, 3, False), (3, 3, True), (0, 1, False),
])
def test_a_due_retry_is_promoted_unless_its_next_delivery_is_over_the_limit(
        attempt: int, limit: int, dead: bool) -> None:
    raw = element(attempt=attempt, priority=1)
    v = promoted(raw, 2, limit)
    if dead:
        assert v == ListVerdict(1, reason=exceeded_reason(1 + attempt, limit),
                                deliveries=1 + attempt, message_id="m-1", envelope=v.envelope)
        assert v.envelope is not None and v.envelope.body == b'{"n":1}'
    else:
        assert v == ListVerdict(1, element=raw)  # unchanged bytes: the tail of its level


def test_an_undecodable_retry_goes_back_as_it_is() -> None:
    assert promoted(b"not json", 3, 1) == ListVerdict(0, element=b"not json")
