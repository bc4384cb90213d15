"""Client configuration from the Secret's env keys, secrets kept out of reprs, and the
forgiving parser of the metadata hash."""

from __future__ import annotations

import pytest

from agentqueue_client import ClientConfig, ConfigError, Consumer, RetryPolicy
from agentqueue_client.meta import parse_meta

ENV = {
    "REDIS_URL": "rediss://redis.example:6380/0", "REDIS_USERNAME": "aq.ns.q.worker",
    "REDIS_PASSWORD": "s3cr3t-pw", "AQ_NAMESPACE": "ns", "AQ_QUEUE": "q",
    "AQ_QUEUE_TYPE": "List", "AQ_PARTITIONS": "3",
    "AQ_QUEUE_KEYS": "aq:{ns/q/0}:q, aq:{ns/q/1}:q,aq:{ns/q/2}:q",
    "AQ_DEAD_LETTER_KEYS": "aq:{ns/q/0}:dlq", "AQ_KEY_PATTERN": "aq:{ns/q/*",
    "AQ_ROLE": "consumer", "REDIS_CA_CERT": "-----BEGIN CERTIFICATE-----\nMIIB\n",
}


def test_from_env_reads_every_key() -> None:
    cfg = ClientConfig.from_env(ENV)
    assert (cfg.url, cfg.username, cfg.password) == (ENV["REDIS_URL"], "aq.ns.q.worker",
                                                     "s3cr3t-pw")
    assert (cfg.namespace, cfg.queue, cfg.queue_type, cfg.partitions) == ("ns", "q", "List", 3)
    assert cfg.queue_keys == ("aq:{ns/q/0}:q", "aq:{ns/q/1}:q", "aq:{ns/q/2}:q")
    assert cfg.dead_letter_keys == ("aq:{ns/q/0}:dlq",)
    assert cfg.key_pattern == "aq:{ns/q/*" and cfg.role == "consumer"
    assert cfg.ca_cert is not None and cfg.ca_cert.startswith("-----BEGIN")
    assert [p.queue_key for p in cfg.partition_keys()] == list(cfg.queue_keys)
    assert ClientConfig.from_env(ENV, queue="other").queue == "other"
    assert not cfg.cluster  # no REDIS_CLUSTER: a standalone server


@pytest.mark.parametrize("value, cluster", [("1", True), ("true", True), ("YES", True),
                                            ("0", False), ("", False), ("no", False)])
def test_redis_cluster_flag(value: str, cluster: bool) -> None:
    cfg = ClientConfig.from_env({**ENV, "REDIS_CLUSTER": value})
    assert cfg.cluster is cluster
    assert f"cluster={cluster}" in repr(cfg)


def test_repr_never_shows_secrets() -> None:
    cfg = ClientConfig.from_env({**ENV, "REDIS_URL": "redis://user:urlpw@h:6379"})
    for text in (repr(cfg), str(cfg), f"{cfg}"):
        assert "s3cr3t-pw" not in text and "urlpw" not in text and "MIIB" not in text
        assert "password='***'" in text
    assert "password=None" in repr(cfg.with_(password=None))


@pytest.mark.parametrize("change, message", [
    ({"REDIS_URL": ""}, "REDIS_URL"),
    ({"REDIS_URL": "http://x"}, "redis://"),
    ({"AQ_QUEUE": ""}, "AQ_QUEUE"),
    ({"AQ_QUEUE_TYPE": "Kafka"}, "queue type"),
    ({"AQ_PARTITIONS": "two"}, "AQ_PARTITIONS"),
    ({"AQ_PARTITIONS": "0"}, "partitions"),
    ({"REDIS_URL": "unix:///run/redis.sock", "REDIS_CLUSTER": "1"}, "Cluster"),
])
def test_bad_env(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClientConfig.from_env({**ENV, **change})


def test_consumer_arguments_are_checked() -> None:
    cfg = ClientConfig.from_env(ENV)
    for name in ("a:b", "a b", "#x"):
        with pytest.raises(ConfigError):
            Consumer(cfg, group="g", consumer_name=name, client=object())
    with pytest.raises(ConfigError, match="group"):
        Consumer(cfg, consumer_name="c", client=object())


def test_meta_parsing_is_forgiving() -> None:
    meta = parse_meta({b"type": b"List", b"partitions": b"4", b"maxDeliveries": b"nope",
                       b"retryInitialMs": b"250", b"retryMultiplier": b"NaN",
                       b"retryJitter": b"0", b"visibilityMs:g": b"1500",
                       b"maxDeliveries:g": b"9", b"paused:g": b'{"reason": "x", "at": 1}',
                       b"paused:h": b"not json", b"schema": b""})
    assert meta.type == "List" and meta.partitions == 4
    assert meta.max_deliveries == 5  # malformed: default
    assert meta.retry == RetryPolicy(initial_ms=250, max_ms=300_000, multiplier=2.0,
                                     jitter=False)
    assert meta.visibility_ms("g") == 1500 and meta.visibility_ms("other") == 30_000
    assert meta.max_deliveries_for("g") == 9 and meta.max_deliveries_for("other") == 5
    assert meta.paused("g") == {"reason": "x", "at": 1}
    assert meta.paused("h") == {"reason": "not json", "at": None}
    assert meta.paused("other") is None and meta.schema_text is None
    empty = parse_meta({}, default_type="PubSub", default_partitions=2)
    assert (empty.type, empty.partitions, empty.exists) == ("PubSub", 2, False)
