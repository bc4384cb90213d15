"""Issue 14's smaller items, each with the test that fails on the bug: forged
counters, out-of-range JSON numbers, terminal escapes in the tools' output, a bad port
in a Redis URL, malformed scale targets, and the bounds on costly fields. (The deletion
decision is tested with the other pure planning in test_hostile_planning.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agentqueue import reasons
from agentqueue.models import AgentQueueSpec
from agentqueue.models.group import ConsumerGroupSpec
from agentqueue.models.queue import QueueType, Role
from agentqueue.models.retention import RetentionPolicySpec
from agentqueue.planning.acl import acl_rules
from agentqueue.redisgw import backlog, connection, functions, users
from agentqueue.redisgw.connection import RedisTarget
from agentqueue.services.errors import SpecProblem
from agentqueue.services.queues import parse_spec, schema_size
from agentqueue.tools._common import printable
from agentqueue_client import keys
from agentqueue_client.codec import DecodeError, parse_json

ROOT = Path(__file__).resolve().parents[1]


# --- retry counter set to -1000000 by a consumer ----------------------------------------

async def test_a_forged_negative_retry_counter_reads_as_zero(redis_client: Any,
                                                             redis_target: RedisTarget) -> None:
    await functions.ensure_library(redis_client)
    part = keys.PartitionKeys("tenant", "jobs", 0)
    name, password = keys.acl_username("tenant", "jobs", "agent"), users.new_password()
    await users.ensure_user(redis_client, name, acl_rules(Role.CONSUMER, "tenant", "jobs",
                                                          QueueType.STREAM, 1),
                            [users.sha256_hex(password)])
    consumer = await connection.connect(RedisTarget(redis_target.url, name, password))
    try:
        # A Redis ACL cannot bound HINCRBY's increment: the reader does.
        assert await consumer.hincrby(part.stats, "retries", -1_000_000) == -1_000_000
    finally:
        await connection.close_client(consumer)
    got = await backlog.retry_counters(redis_client, [part], "Stream")
    assert got is not None and got.retries == {0: 0}
    await redis_client.hset(part.stats, "retries", "7")
    got = await backlog.retry_counters(redis_client, [part], "Stream")
    assert got is not None and got.retries == {0: 7}


# --- 1e999999 was delivered as inf ------------------------------------------------------

@pytest.mark.parametrize("body", [b"1e999999", b"-1e400", b'{"x": [1, 2e308]}'])
def test_numbers_beyond_a_double_are_not_json(body: bytes) -> None:
    with pytest.raises(DecodeError, match="out of range"):
        parse_json(body)


@pytest.mark.parametrize("body, value", [(b"1.7976931348623157e308", 1.7976931348623157e308),
                                         (b"-1e-400", -0.0), (b"1e2", 100.0)])
def test_numbers_within_a_double_still_parse(body: bytes, value: float) -> None:
    assert parse_json(body) == value


# --- terminal escapes in peek / dlq ls ---------------------------------------------------

def test_printable_escapes_control_characters() -> None:
    assert printable("ok é ü 日本") == "ok é ü 日本"
    assert printable("\x1b]0;pwned\x07\x1b[2J") == "\\x1b]0;pwned\\x07\\x1b[2J"
    assert printable("a\x9bb\x7f\x00") == "a\\x9bb\\x7f\\x00"
    assert printable("tab\there\nnl") == "tab\\x09here\\x0anl"
    assert printable("\u202egnp.exe") == "\\u202egnp.exe"
    assert printable(b"\x1b[31m") == "\\x1b[31m"
    assert printable(None) == ""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), str(ROOT / "clients" / "python"), str(ROOT / "devtools"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "agentqueue.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


async def test_peek_and_dlq_ls_never_print_escape_sequences(redis_server: Any,
                                                            redis_client: Any) -> None:
    await functions.ensure_library(redis_client)
    part = keys.PartitionKeys("ns1", "escq", 0)
    await redis_client.hset(part.meta, mapping={"type": "Stream", "partitions": "1"})
    evil = "\x1b]0;owned\x07\x1b[2Jhello"
    await redis_client.xadd(part.queue_key, {"d": evil})
    await redis_client.xadd(part.dead_letter, {"d": evil, "x.id": "1-1", "x.group": "g\x1b[31m",
                                               "x.error": "bad\x1b[1m", "x.deliveries": "3"})
    url = redis_server.admin_url
    for args in (["peek", "escq"], ["dlq", "ls", "escq"]):
        out = _cli(*args, "-n", "ns1", "--redis-url", url)
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout and "\x07" not in out.stdout
        assert "\\x1b]0;owned\\x07\\x1b[2Jhello" in out.stdout
    out = _cli("dlq", "ls", "escq", "-n", "ns1", "--redis-url", url)
    assert "group=g\\x1b[31m" in out.stdout and "error=bad\\x1b[1m" in out.stdout


# --- a bad port in a Redis URL -----------------------------------------------------------

@pytest.mark.parametrize("url", ["redis://u:secret@redis:abc", "redis://redis:99999",
                                 "redis://redis:0", "redis://redis:-1", "rediss://[::1]:x"])
def test_a_bad_port_is_a_clear_error_without_the_password(url: str) -> None:
    with pytest.raises(ValueError) as err:
        RedisTarget.from_secret_data({"url": url.encode()})
    assert str(err.value) == "url has an invalid port (expected a number from 1 to 65535)"


@pytest.mark.parametrize("url, port", [("redis://redis:1", 1), ("redis://redis:65535", 65535),
                                       ("redis://redis", 6379)])
def test_ports_at_the_bounds_are_accepted(url: str, port: int) -> None:
    assert RedisTarget(url).port == port


# --- malformed scaleTargetRef.apiVersion --------------------------------------------------

def _group(**scaling: Any) -> dict[str, Any]:
    return {"queueRef": {"name": "q"}, "scaling": scaling}


@pytest.mark.parametrize("api_version", ["apps/v1/extra", "/v1", "apps/", "Apps/v1", "apps//v1",
                                         "apps/1", "", "a" * 251 + "/v1"])
def test_malformed_scale_target_api_version_is_refused(api_version: str) -> None:
    with pytest.raises(ValidationError, match="apiVersion"):
        ConsumerGroupSpec.from_wire({**_group(), "scaleTargetRef": {
            "apiVersion": api_version, "kind": "Deployment", "name": "w"}})


@pytest.mark.parametrize("api_version, kind", [("apps/v1", "Deployment"), ("v1", "Foo"),
                                               ("argoproj.io/v1alpha1", "Rollout"),
                                               ("keda.sh/v1beta2", "ScaledJob2")])
def test_well_formed_scale_targets_pass(api_version: str, kind: str) -> None:
    spec = ConsumerGroupSpec.from_wire({**_group(), "scaleTargetRef": {
        "apiVersion": api_version, "kind": kind, "name": "w"}})
    assert spec.scale_target_ref is not None and spec.scale_target_ref.kind == kind


@pytest.mark.parametrize("kind", ["deployment", "Deploy-ment", "1Deployment", "Deploy ment"])
def test_malformed_scale_target_kind_is_refused(kind: str) -> None:
    with pytest.raises(ValidationError, match="kind"):
        ConsumerGroupSpec.from_wire({**_group(), "scaleTargetRef": {
            "apiVersion": "apps/v1", "kind": kind, "name": "w"}})


# --- bounds -----------------------------------------------------------------------------

@pytest.mark.parametrize("interval", ["0s", "0ms", "199ms", "100ms"])
def test_poll_interval_below_the_minimum_is_refused(interval: str) -> None:
    with pytest.raises(ValidationError, match="pollInterval must be at least 200ms"):
        ConsumerGroupSpec.from_wire(_group(pollInterval=interval))


@pytest.mark.parametrize("interval", ["200ms", "201ms", "1s", "0s200ms"])
def test_poll_interval_at_the_minimum_is_accepted(interval: str) -> None:
    assert ConsumerGroupSpec.from_wire(_group(pollInterval=interval)).scaling.poll_interval == (
        interval)


def test_retention_interval_bounds() -> None:
    with pytest.raises(ValidationError, match="interval must be at least 1s"):
        RetentionPolicySpec.from_wire({"maxLength": 5, "interval": "999ms"})
    assert RetentionPolicySpec.from_wire({"maxLength": 5, "interval": "1s"}).interval == "1s"


def _access(n: int) -> dict[str, Any]:
    return {"consumers": [{"name": f"c{i}"} for i in range(n)]}


def test_partitions_times_access_entries_is_bounded() -> None:
    ok = AgentQueueSpec.from_wire({"partitions": 32, "access": _access(32)})  # 1024
    assert ok.partitions == 32
    with pytest.raises(ValidationError, match=r"at most 1024 \(here 33 x 32\)"):
        AgentQueueSpec.from_wire({"partitions": 33, "access": _access(32)})


def _schema_of(size: int) -> dict[str, Any]:
    """A JSON Schema whose compact JSON is exactly `size` bytes."""
    base = {"description": ""}
    pad = size - schema_size(base)
    return {"description": "x" * pad}


def test_schema_size_is_bounded_by_the_operator_setting() -> None:
    assert schema_size(_schema_of(1000)) == 1000
    assert parse_spec({"schema": _schema_of(1000)}, max_schema_bytes=1000).schema_ is not None
    with pytest.raises(SpecProblem) as err:
        parse_spec({"schema": _schema_of(1001)}, max_schema_bytes=1000)
    assert err.value.reason == reasons.SPEC_TOO_LARGE and err.value.retry_after is None
    assert err.value.message == ("spec.schema is 1001 bytes as JSON; this operator accepts at "
                                 "most 1000 (operator.maxSchemaBytes)")
    # the default: 32 KiB
    parse_spec({"schema": _schema_of(32 * 1024)})
    with pytest.raises(SpecProblem):
        parse_spec({"schema": _schema_of(32 * 1024 + 1)})


def test_schema_top_level_keys_are_bounded() -> None:
    AgentQueueSpec.from_wire({"schema": {f"k{i}": 1 for i in range(256)}})
    with pytest.raises(ValidationError, match="more than 256 top-level keys"):
        AgentQueueSpec.from_wire({"schema": {f"k{i}": 1 for i in range(257)}})
