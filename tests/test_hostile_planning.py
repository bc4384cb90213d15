"""Pure tests of planning/address_policy.py, conflicts.py and deletion.py (issue 14:
hostile tenants). Nothing here opens a connection or resolves a name: addresses are given.

They also judge those modules' mutants (tests/mutation/run.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from agentqueue.planning import deletion
from agentqueue.planning.address_policy import (
    AddressPolicy,
    Endpoint,
    needs_resolution,
    refusal,
)
from agentqueue.planning.conflicts import (
    Claim,
    claims_of,
    first_claimant,
    group_name_rival,
    scale_target_rival,
)

# --- address policy: which Redis addresses a tenant may name ------------------------------

PREFIX = "Redis address refused by the operator's address policy: "
DEFAULT = AddressPolicy()


@pytest.mark.parametrize("host, addresses, why", [
    ("169.254.169.254", [], "169.254.169.254 is in 169.254.0.0/16"),
    ("169.254.0.0", [], "169.254.0.0 is in 169.254.0.0/16"),
    ("169.254.255.255", [], "169.254.255.255 is in 169.254.0.0/16"),
    ("fe80::1", [], "fe80::1 is in fe80::/10"),
    ("::", [], ":: is in ::/128"),
    ("fd00:ec2::254", [], "fd00:ec2::254 is in fd00:ec2::254/128"),
    ("::ffff:169.254.169.254", [], "169.254.169.254 is in 169.254.0.0/16"),
    ("0.0.0.0", [], "0.0.0.0 is in 0.0.0.0/8"),
    ("metadata", [], "host metadata matches metadata"),
    ("metadata.google.internal", [], "host metadata.google.internal matches "
                                     "metadata.google.internal"),
    # a name that resolves to a link-local address (DNS pointing at the metadata service)
    ("redis.example", ["10.0.0.5", "169.254.169.254"], "169.254.169.254 is in 169.254.0.0/16"),
])
def test_refused_by_default(host: str, addresses: list[str], why: str) -> None:
    assert refusal(DEFAULT, host, 6379, addresses) == PREFIX + why


@pytest.mark.parametrize("host, addresses, why", [
    # the message names the address without its scope, however many '%' follow
    ("fe80::1%eth0", [], "fe80::1 is in fe80::/10"),
    ("fe80::1%eth0%x", [], "fe80::1 is in fe80::/10"),
    ("redis.example", ["fe80::2%2"], "fe80::2 is in fe80::/10"),
    # case, a trailing dot (the DNS root) and surrounding white space change nothing
    ("METADATA.google.internal.", [], "host metadata.google.internal matches "
                                      "metadata.google.internal"),
    (" Metadata. ", [], "host metadata matches metadata"),
    (" 169.254.169.254 ", [], "169.254.169.254 is in 169.254.0.0/16"),
])
def test_how_a_host_is_written_does_not_get_it_past_the_policy(
        host: str, addresses: list[str], why: str) -> None:
    assert refusal(DEFAULT, host, 6379, addresses) == PREFIX + why


@pytest.mark.parametrize("host, addresses", [
    ("169.253.255.255", []), ("169.255.0.0", []), ("fec0::1", []), ("1.0.0.0", []),
    ("::1", []), ("fd00:ec2::253", []),
    ("127.0.0.1", []), ("redis.redis.svc", ["10.96.0.12"]), ("localhost", ["127.0.0.1", "::1"]),
    ("metadata.example", []), ("not-metadata", []),
])
def test_allowed_by_default(host: str, addresses: list[str]) -> None:
    """Just outside every default network or host name: allowed (no allow-list)."""
    assert refusal(DEFAULT, host, 6379, addresses) is None


@pytest.mark.parametrize("policy", [AddressPolicy(deny_defaults=False),
                                    AddressPolicy.build(deny_defaults=False)])
def test_defaults_can_be_turned_off(policy: AddressPolicy) -> None:
    assert refusal(policy, "169.254.169.254", 6379, []) is None
    assert refusal(policy, "metadata", 6379, []) is None


def test_build_keeps_the_defaults_on_unless_told() -> None:
    assert refusal(AddressPolicy.build(), "169.254.169.254", 6379, []) == (
        PREFIX + "169.254.169.254 is in 169.254.0.0/16")


def test_build_trims_and_lowercases_entries_and_keeps_every_setting() -> None:
    api = Endpoint("127.0.0.1", 6443)
    policy = AddressPolicy.build(allow=[" 10.0.0.0/8 ", "*.Redis.SVC"], deny=["\tDB.Internal "],
                                 deny_defaults=False, api_endpoints=[api])
    assert policy == AddressPolicy(allow=("10.0.0.0/8", "*.redis.svc"), deny=("db.internal",),
                                   deny_defaults=False, api_endpoints=(api,))


def test_the_clusters_api_server_is_refused_on_its_port_only() -> None:
    policy = AddressPolicy(api_endpoints=(Endpoint("127.0.0.1", 6443),
                                          Endpoint("kubernetes.default.svc", 443)))
    assert refusal(policy, "127.0.0.1", 6443, []) == (
        PREFIX + "127.0.0.1:6443 is the cluster's API server")
    assert refusal(policy, "apiserver.alias", 6443, ["127.0.0.1"]) == (
        PREFIX + "apiserver.alias:6443 is the cluster's API server")
    assert refusal(policy, "kubernetes.default.svc", 443, []) == (
        PREFIX + "kubernetes.default.svc:443 is the cluster's API server")
    assert refusal(policy, "127.0.0.1", 6444, []) is None  # Redis beside it
    assert refusal(policy, "127.0.0.1", 6442, []) is None


def test_an_api_endpoint_named_by_host_name_matches_that_name_only() -> None:
    policy = AddressPolicy(deny_defaults=False,
                           api_endpoints=(Endpoint("Kubernetes.Default.svc", 443),))
    assert refusal(policy, "KUBERNETES.default.svc.", 443, []) == (
        PREFIX + "kubernetes.default.svc:443 is the cluster's API server")
    # another Redis on the same port number is not the API server
    assert refusal(policy, "redis.example", 443, ["10.0.0.9"]) is None


def test_allow_list_networks_need_every_address_inside() -> None:
    policy = AddressPolicy.build(allow=["10.0.0.0/8", "fd00::/8"])
    assert refusal(policy, "10.0.0.0", 6379, []) is None
    assert refusal(policy, "10.255.255.255", 6379, []) is None
    assert refusal(policy, "redis", 6379, ["10.1.2.3", "fd00::5"]) is None
    assert refusal(policy, "11.0.0.0", 6379, []) == (
        PREFIX + "11.0.0.0 is not in its allow-list (10.0.0.0/8, fd00::/8)")
    assert refusal(policy, "9.255.255.255", 6379, []) == (
        PREFIX + "9.255.255.255 is not in its allow-list (10.0.0.0/8, fd00::/8)")
    # one address outside is enough to refuse
    assert refusal(policy, "redis", 6379, ["10.1.2.3", "192.168.0.1"]) == (
        PREFIX + "redis is not in its allow-list (10.0.0.0/8, fd00::/8)")
    # a name that did not resolve: nothing proves it is inside
    assert refusal(policy, "nowhere", 6379, []) == (
        PREFIX + "nowhere is not in its allow-list (10.0.0.0/8, fd00::/8)")


def test_allow_list_host_patterns() -> None:
    policy = AddressPolicy.build(allow=["*.redis.svc.cluster.local"])
    assert refusal(policy, "a.redis.svc.cluster.local", 6379, ["10.0.0.1"]) is None
    assert refusal(policy, "redis.svc.cluster.local", 6379, []) == (
        PREFIX + "redis.svc.cluster.local is not in its allow-list (*.redis.svc.cluster.local)")
    # ... but never past a denied address
    assert refusal(policy, "a.redis.svc.cluster.local", 6379, ["169.254.1.1"]) == (
        PREFIX + "169.254.1.1 is in 169.254.0.0/16")


def test_allow_list_of_patterns_and_networks_allows_by_either() -> None:
    policy = AddressPolicy.build(allow=["*.svc", "10.0.0.0/8"])
    assert refusal(policy, "a.svc", 6379, ["192.168.1.1"]) is None  # by its name
    assert refusal(policy, "db.example", 6379, ["10.1.1.1"]) is None  # by its address
    assert refusal(policy, "db.example", 6379, ["192.168.1.1"]) == (
        PREFIX + "db.example is not in its allow-list (*.svc, 10.0.0.0/8)")


def test_networks_with_host_bits_set_are_read_as_their_network() -> None:
    """`10.0.0.1/8` means 10.0.0.0/8 (as in most firewall configurations), in either list."""
    assert refusal(AddressPolicy.build(allow=["10.0.0.1/8"]), "10.200.0.1", 6379, []) is None
    assert refusal(AddressPolicy.build(deny=["10.0.0.1/8"]), "10.200.0.1", 6379, []) == (
        PREFIX + "10.200.0.1 is in 10.0.0.0/8")


def test_ipv4_mapped_entries_mean_their_ipv4_networks() -> None:
    """Addresses are compared unmapped (::ffff:10.0.0.5 is 10.0.0.5), so are entries: a
    mapped deny entry used to refuse nothing, not even the address it names."""
    deny = AddressPolicy.build(deny=["::ffff:10.0.0.0/104", "::FFFF:192.168.1.7"])
    for host, addresses in (("10.0.0.5", []), ("::ffff:10.0.0.5", []),
                            ("redis.example", ["::ffff:10.0.0.5"])):
        assert refusal(deny, host, 6379, addresses) == PREFIX + "10.0.0.5 is in 10.0.0.0/8"
    assert refusal(deny, "::ffff:192.168.1.7", 6379, []) == (
        PREFIX + "192.168.1.7 is in 192.168.1.7/32")
    assert refusal(deny, "11.0.0.5", 6379, []) is None
    assert refusal(deny, "::10.0.0.5", 6379, []) is None  # IPv4-compatible: another address
    allow = AddressPolicy.build(allow=["::ffff:10.0.0.0/104"])
    assert refusal(allow, "10.255.0.1", 6379, []) is None
    assert refusal(allow, "redis.example", 6379, ["::ffff:10.0.0.5", "10.0.0.6"]) is None
    assert refusal(allow, "9.0.0.1", 6379, []) == (
        PREFIX + "9.0.0.1 is not in its allow-list (::ffff:10.0.0.0/104)")
    # the whole mapped range is every IPv4 address, and no IPv6 one
    every_ipv4 = AddressPolicy.build(allow=["::ffff:0:0/96"])
    assert refusal(every_ipv4, "203.0.113.9", 6379, []) is None
    assert refusal(every_ipv4, "2001:db8::1", 6379, []) == (
        PREFIX + "2001:db8::1 is not in its allow-list (::ffff:0:0/96)")


def test_an_allowed_address_may_be_named_as_written_in_the_allow_list() -> None:
    for entry in ("10.0.0.1", "::ffff:10.0.0.1", "fd00::1"):
        assert refusal(AddressPolicy.build(allow=[entry]), entry, 6379, []) is None


def test_host_names_compare_without_case_whatever_letter_ends_them() -> None:
    policy = AddressPolicy.build(allow=["*.redis.box"])
    assert refusal(policy, "A.REDIS.BOX", 6379, []) is None
    assert refusal(policy, "A.Redis.Box.", 6379, []) is None


def test_deny_list_adds_to_the_defaults() -> None:
    policy = AddressPolicy.build(deny=["127.0.0.2/32", "*.internal"])
    assert refusal(policy, "127.0.0.2", 6379, []) == PREFIX + "127.0.0.2 is in 127.0.0.2/32"
    assert refusal(policy, "127.0.0.1", 6379, []) is None
    assert refusal(policy, "127.0.0.3", 6379, []) is None
    assert refusal(policy, "db.internal", 6379, []) == (
        PREFIX + "host db.internal matches *.internal")
    assert refusal(policy, "169.254.1.1", 6379, []) == PREFIX + "169.254.1.1 is in 169.254.0.0/16"


@pytest.mark.parametrize("entry, message", [
    ("10.0.0.300/8", "'10.0.0.300/8' is not a network (CIDR such as 10.0.0.0/8)"),
    (" 10.0.0.0/33 ", "'10.0.0.0/33' is not a network (CIDR such as 10.0.0.0/8)"),
    ("*.svc/8", "'*.svc/8' is not a network (CIDR such as 10.0.0.0/8)"),
    ("", "an empty Redis address policy entry"),
    (" \t", "an empty Redis address policy entry"),
])
@pytest.mark.parametrize("side", ["allow", "deny"])
def test_bad_entries_fail_at_start_up_naming_the_entry(entry: str, message: str,
                                                       side: str) -> None:
    with pytest.raises(ValueError) as err:
        AddressPolicy.build(**{side: ["10.0.0.0/8", entry]})
    assert str(err.value) == message


def test_resolution_only_when_needed() -> None:
    no_defaults = AddressPolicy(deny_defaults=False)
    assert needs_resolution(DEFAULT, "redis.example") is True  # default networks
    assert needs_resolution(no_defaults, "redis.example") is False
    # an IP literal is its own address, whatever the rules
    for literal in ("10.0.0.1", "fe80::1%eth0", "::ffff:10.0.0.1"):
        assert needs_resolution(DEFAULT, literal) is False
        assert needs_resolution(AddressPolicy(api_endpoints=(Endpoint("10.0.0.1", 443),)),
                                literal) is False
    # host patterns alone decide on the name
    assert needs_resolution(AddressPolicy(deny_defaults=False, allow=("*.svc",),
                                          deny=("*.internal",)), "redis.svc") is False
    # a network in either list, or an API endpoint, needs the addresses
    assert needs_resolution(AddressPolicy(deny_defaults=False, allow=("10.0.0.0/8",)),
                            "redis.svc") is True
    assert needs_resolution(AddressPolicy(deny_defaults=False, deny=("10.0.0.0/8",)),
                            "redis.svc") is True
    assert needs_resolution(AddressPolicy(deny_defaults=False,
                                          api_endpoints=(Endpoint("10.0.0.1", 443),)),
                            "redis.svc") is True


# --- conflicts: who keeps a contested Redis group or workload ------------------------------

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"


def cg(name: str, created: str = T0, *, queue: str = "q", group: str | None = None,
       target: str | None = None, kind: str | None = None, deleting: bool = False
       ) -> dict[str, Any]:
    spec: dict[str, Any] = {"queueRef": {"name": queue}}
    if group:
        spec["groupName"] = group
    if target:
        spec["scaleTargetRef"] = {"name": target, **({"kind": kind} if kind else {})}
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = T1
    return {"metadata": meta, "spec": spec}


def test_the_oldest_claimant_keeps_it_then_the_name_decides() -> None:
    a, b = Claim(T0, "b-group"), Claim(T1, "a-group")
    assert first_claimant([b, a]) == a  # older wins over a smaller name
    c, d = Claim(T0, "a"), Claim(T0, "b")
    assert first_claimant([d, c]) == c  # same second: the name decides
    assert first_claimant([]) is None


def test_group_name_claims_use_the_effective_name_on_the_same_queue() -> None:
    # every kind of non-claimant comes before a claimant: none of them ends the scan
    objs = [cg("x", queue="q2", group="workers"), cg("gone", group="workers", deleting=True),
            cg("free", group="free"), cg("workers"), cg("other", T1, group="workers")]
    assert claims_of(objs, queue="q", group_name="workers") == [Claim(T0, "workers"),
                                                                 Claim(T1, "other")]


def test_objects_that_cannot_claim_are_skipped() -> None:
    """No metadata, no string name, no spec or no queueRef: nothing claimed, no crash."""
    objs: list[dict[str, Any]] = [
        {"spec": {"queueRef": {"name": "q"}}},
        {"metadata": None, "spec": {"queueRef": {"name": "q"}}},
        {"metadata": {"name": 7, "creationTimestamp": T0}, "spec": {"queueRef": {"name": "q"}}},
        {"metadata": {"name": "workers", "creationTimestamp": T0}},
        {"metadata": {"name": "workers", "creationTimestamp": T0}, "spec": None},
        {"metadata": {"name": "workers", "creationTimestamp": T0}, "spec": {}},
        cg("workers", T1),
    ]
    assert claims_of(objs, queue="q", group_name="workers") == [Claim(T1, "workers")]
    assert claims_of(objs, queue="", target=("Deployment", "web")) == []


def test_a_claim_without_creation_time_reads_as_the_empty_time() -> None:
    """Like the caller's own claim (services: _me), so both sides order alike."""
    obj = {"metadata": {"name": "workers"}, "spec": {"queueRef": {"name": "q"}}}
    assert claims_of([obj], queue="q", group_name="workers") == [Claim("", "workers")]


def test_the_later_group_gets_the_rival_the_first_none() -> None:
    first, later = Claim(T0, "zz-first"), Claim(T1, "aa-later")
    assert group_name_rival(later, [first]) == first
    assert group_name_rival(first, [later]) is None
    assert group_name_rival(first, []) is None


def test_scale_target_claims_match_kind_and_name() -> None:
    objs = [cg("c", target="web", kind="StatefulSet"), cg("d", target="api"), cg("n"),
            cg("e", T1, target="web", deleting=True), cg("a", target="web"),
            cg("b", target="web", kind="Deployment")]
    got = claims_of(objs, queue="", target=("Deployment", "web"))
    assert got == [Claim(T0, "a"), Claim(T0, "b")]
    assert claims_of(objs, queue="", target=("StatefulSet", "web")) == [Claim(T0, "c")]
    assert scale_target_rival(Claim(T0, "b"), [Claim(T0, "a")]) == Claim(T0, "a")
    assert scale_target_rival(Claim(T0, "a"), [Claim(T0, "b")]) is None
    assert scale_target_rival(Claim(T0, "a"), []) is None


def test_scale_target_claims_ignore_the_queue_and_group_name() -> None:
    objs = [cg("a", queue="q1", group="g1", target="web"),
            cg("b", T1, queue="q2", group="g2", target="web")]
    assert claims_of(objs, queue="", target=("Deployment", "web")) == [Claim(T0, "a"),
                                                                        Claim(T1, "b")]


# --- deletion always finishes --------------------------------------------------------------

def test_a_never_provisioned_queue_is_released_at_once() -> None:
    for elapsed in (0.0, 500.0):
        assert deletion.after_failed_cleanup(False, elapsed, 120.0) == deletion.DeletionStep(
            True, 0.0)


@pytest.mark.parametrize("elapsed, timeout, step", [
    (0.0, 120.0, deletion.DeletionStep(False, 10.0)),   # retries at most every 10 s
    (109.5, 120.0, deletion.DeletionStep(False, 10.0)),
    (110.0, 120.0, deletion.DeletionStep(False, 10.0)),
    (115.0, 120.0, deletion.DeletionStep(False, 5.0)),  # ... and not past the timeout
    (119.5, 120.0, deletion.DeletionStep(False, 0.5)),
    (120.0, 120.0, deletion.DeletionStep(True)),        # the timeout reached: released
    (500.0, 120.0, deletion.DeletionStep(True)),
    (0.0, 0.0, deletion.DeletionStep(True)),            # timeout 0: at the first failure
    (0.0, 5.0, deletion.DeletionStep(False, 5.0)),
    # a clock behind the deletion timestamp counts as no time passed
    (-50.0, 120.0, deletion.DeletionStep(False, 10.0)),
    (-50.0, 5.0, deletion.DeletionStep(False, 5.0)),
    (-0.5, 5.0, deletion.DeletionStep(False, 5.0)),
])
def test_an_unreachable_redis_is_given_the_timeout(elapsed: float, timeout: float,
                                                   step: deletion.DeletionStep) -> None:
    assert deletion.after_failed_cleanup(True, elapsed, timeout) == step


@pytest.mark.parametrize("users, delete_data, what", [
    (["aq.ns.q.a", "aq.ns.q.b"], False, "ACL users aq.ns.q.a, aq.ns.q.b; keys aq:{ns/q/* (retained)"),
    (["aq.ns.q.a"], True, "ACL users aq.ns.q.a; keys aq:{ns/q/* "
                          "(deletionPolicy Delete: remove them by hand)"),
    ([], True, "keys aq:{ns/q/* (deletionPolicy Delete: remove them by hand)"),
    ([], False, "keys aq:{ns/q/* (retained)"),
])
def test_the_event_says_what_was_left_behind(users: list[str], delete_data: bool,
                                             what: str) -> None:
    assert deletion.left_behind(users, delete_data, "aq:{ns/q/*") == what
