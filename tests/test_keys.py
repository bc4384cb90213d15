"""The Redis key scheme: tenant separation by ACL pattern, one slot per partition."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from agentqueue_client import keys
from agentqueue_client.keys import PartitionKeys

# Kubernetes names carry no glob syntax (`*?[\`), so Redis's glob matching of these
# patterns (only `*` plus literals) is exactly fnmatchcase's.
LABEL = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
SUBDOMAIN = st.lists(LABEL, min_size=1, max_size=3).map(".".join).filter(lambda s: len(s) <= 253)
IDEM = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
               max_size=40)


def matches(pattern: str, key: str) -> bool:
    return fnmatchcase(key, pattern)


def all_keys(p: PartitionKeys, idem: str = "k", consumer: str = "c") -> list[str]:
    return [*p.all_static(priority_levels=3), p.idempotency(idem), p.processing(consumer),
            p.channel]


def test_layout() -> None:
    p = PartitionKeys("billing-ns", "billing", 2)
    assert p.queue_key == "aq:{billing-ns/billing/2}:q"
    assert p.dead_letter == "aq:{billing-ns/billing/2}:dlq"
    assert p.retry == "aq:{billing-ns/billing/2}:retry"
    assert p.meta == "aq:{billing-ns/billing/2}:meta"
    assert p.stats == "aq:{billing-ns/billing/2}:stats"
    assert p.priority_key(0) == p.queue_key and p.priority_key(3) == p.queue_key + ":3"
    assert p.idempotency("order-1") == "aq:{billing-ns/billing/2}:idem:order-1"
    assert keys.queue_key_pattern("billing-ns", "billing") == "aq:{billing-ns/billing/*"
    assert keys.channel_name("ns", "q") == "aq:{ns/q/0}:ch"
    assert keys.acl_username("ns", "q", "intake") == "aq.ns.q.intake"
    assert keys.secret_name("q", "intake") == "q.intake"


@pytest.mark.parametrize("other", [("team", "billing2"), ("team", "billin"),
                                   ("team2", "billing"), ("tea", "billing"),
                                   ("team", "billing-x"), ("team", "x-billing")])
def test_pattern_does_not_match_neighbours(other: tuple[str, str]) -> None:
    pattern = keys.queue_key_pattern("team", "billing")
    for key in all_keys(PartitionKeys(*other, 0)):
        assert not matches(pattern, key), key
    for key in all_keys(PartitionKeys("team", "billing", 0)):
        assert matches(pattern, key), key


def test_63_char_names() -> None:
    ns, q = "n" * 63, "q" * 63
    p = PartitionKeys(ns, q, 255)
    for key in all_keys(p):
        assert matches(keys.queue_key_pattern(ns, q), key)
        assert key_slot(key.encode()) == key_slot(p.queue_key.encode())
    assert not matches(keys.queue_key_pattern(ns, q[:-1]), p.queue_key)
    assert len(keys.acl_username(ns, q, "e" * 63)) == 3 + 63 * 3 + 2


@settings(max_examples=200, deadline=None)
@given(ns=LABEL, q=SUBDOMAIN, part=st.integers(0, 255), idem=IDEM)
def test_every_key_matches_its_queue_and_shares_a_slot(ns: str, q: str, part: int,
                                                       idem: str) -> None:
    p = PartitionKeys(ns, q, part)
    pattern = keys.queue_key_pattern(ns, q)
    slot = key_slot(p.queue_key.encode())
    for key in all_keys(p, idem=idem):
        assert matches(pattern, key)
        if key != p.channel:  # the channel is not a key
            assert key_slot(key.encode()) == slot


@settings(max_examples=300, deadline=None)
@given(a=st.tuples(LABEL, SUBDOMAIN), b=st.tuples(LABEL, SUBDOMAIN),
       part=st.integers(0, 255), idem=IDEM)
def test_no_key_of_another_queue_matches(a: tuple[str, str], b: tuple[str, str], part: int,
                                         idem: str) -> None:
    assume(a != b)
    pattern = keys.queue_key_pattern(*a)
    for key in all_keys(PartitionKeys(*b, part), idem=idem):
        assert not matches(pattern, key), (pattern, key)


@settings(max_examples=100, deadline=None)
@given(ns=LABEL, q=SUBDOMAIN, e1=LABEL, e2=LABEL, q2=SUBDOMAIN)
def test_usernames_and_secret_names_are_unique(ns: str, q: str, e1: str, e2: str,
                                               q2: str) -> None:
    assume((q, e1) != (q2, e2))
    # Queue names may hold dots, entry names (DNS labels) never: the last dot splits.
    assert keys.secret_name(q, e1) != keys.secret_name(q2, e2)
    assert keys.acl_username(ns, q, e1) != keys.acl_username(ns, q2, e2)
    assert " " not in keys.acl_username(ns, q, e1)


def test_partitions_spread_over_slots() -> None:
    slots = {key_slot(p.queue_key.encode()) for p in keys.partition_keys("ns", "q", 16)}
    assert len(slots) == 16
