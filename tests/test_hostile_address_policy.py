"""The Redis address policy as a pure decision (planning/address_policy). Nothing here
opens a connection or resolves a name: addresses are given."""

from __future__ import annotations

import pytest

from agentqueue.planning.address_policy import (
    AddressPolicy,
    Endpoint,
    needs_resolution,
    refusal,
)

PREFIX = "Redis address refused by the operator's address policy: "
DEFAULT = AddressPolicy()


@pytest.mark.parametrize("host, addresses, why", [
    ("169.254.169.254", [], "169.254.169.254 is in 169.254.0.0/16"),
    ("169.254.0.0", [], "169.254.0.0 is in 169.254.0.0/16"),
    ("169.254.255.255", [], "169.254.255.255 is in 169.254.0.0/16"),
    ("fe80::1", [], "fe80::1 is in fe80::/10"),
    ("fe80::1%eth0", [], "fe80::1 is in fe80::/10"),
    ("::ffff:169.254.169.254", [], "169.254.169.254 is in 169.254.0.0/16"),
    ("0.0.0.0", [], "0.0.0.0 is in 0.0.0.0/8"),
    ("metadata.google.internal", [], "host metadata.google.internal matches "
                                     "metadata.google.internal"),
    ("METADATA.google.internal.", [], "host metadata.google.internal matches "
                                      "metadata.google.internal"),
    # a name that resolves to a link-local address (DNS pointing at the metadata service)
    ("redis.example", ["10.0.0.5", "169.254.169.254"], "169.254.169.254 is in 169.254.0.0/16"),
])
def test_refused_by_default(host: str, addresses: list[str], why: str) -> None:
    assert refusal(DEFAULT, host, 6379, addresses) == PREFIX + why


@pytest.mark.parametrize("host, addresses", [
    ("169.253.255.255", []), ("169.255.0.0", []), ("fec0::1", []), ("1.0.0.0", []),
    ("127.0.0.1", []), ("redis.redis.svc", ["10.96.0.12"]), ("localhost", ["127.0.0.1", "::1"]),
])
def test_allowed_by_default(host: str, addresses: list[str]) -> None:
    """Just outside every default network: allowed (no allow-list)."""
    assert refusal(DEFAULT, host, 6379, addresses) is None


def test_defaults_can_be_turned_off() -> None:
    assert refusal(AddressPolicy(deny_defaults=False), "169.254.169.254", 6379, []) is None


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


def test_deny_list_adds_to_the_defaults() -> None:
    policy = AddressPolicy.build(deny=["127.0.0.2/32", "*.internal"])
    assert refusal(policy, "127.0.0.2", 6379, []) == PREFIX + "127.0.0.2 is in 127.0.0.2/32"
    assert refusal(policy, "127.0.0.1", 6379, []) is None
    assert refusal(policy, "127.0.0.3", 6379, []) is None
    assert refusal(policy, "db.internal", 6379, []) == (
        PREFIX + "host db.internal matches *.internal")
    assert refusal(policy, "169.254.1.1", 6379, []) == PREFIX + "169.254.1.1 is in 169.254.0.0/16"


def test_bad_entries_fail_at_start_up() -> None:
    with pytest.raises(ValueError, match="'10.0.0.300/8' is not a network"):
        AddressPolicy.build(allow=["10.0.0.300/8"])
    with pytest.raises(ValueError, match="empty"):
        AddressPolicy.build(deny=[" "])


def test_resolution_only_when_needed() -> None:
    assert needs_resolution(DEFAULT, "redis.example") is True  # default networks
    assert needs_resolution(DEFAULT, "10.0.0.1") is False
    assert needs_resolution(AddressPolicy(deny_defaults=False), "redis.example") is False
    assert needs_resolution(AddressPolicy(deny_defaults=False, allow=("*.svc",)),
                            "redis.svc") is False
    assert needs_resolution(AddressPolicy(deny_defaults=False,
                                          api_endpoints=(Endpoint("10.0.0.1", 443),)),
                            "redis.svc") is True
