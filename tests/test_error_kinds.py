"""One classification of Redis failures for the SDK, the CLI and the operator
(`agentqueue_client.errors.error_kind`): both sides decide the same for every reply,
including the ones they used to disagree on (NOREPLICAS, MISCONF, NOSCRIPT)."""

from __future__ import annotations

import builtins

import pytest
from redis import exceptions as rex

from agentqueue.redisgw import errors as gw
from agentqueue_client.errors import (
    ErrorKind,
    LibraryMissingError,
    error_kind,
    is_library_missing,
    is_transient,
)

CASES: list[tuple[BaseException, ErrorKind]] = [
    (rex.AuthenticationError("invalid username-password pair"), ErrorKind.AUTH),
    (rex.ResponseError("WRONGPASS invalid username-password pair"), ErrorKind.AUTH),
    (rex.ResponseError("NOAUTH Authentication required."), ErrorKind.AUTH),
    (rex.NoPermissionError("this user has no permissions to run the 'xtrim' command"),
     ErrorKind.PERMISSION),
    (rex.ResponseError("NOPERM this user has no permissions to access one of the keys"),
     ErrorKind.PERMISSION),
    (rex.ResponseError("Command # 2 (FCALL aq_nack) of pipeline caused error: "
                       "('NOPERM no permissions',)"), ErrorKind.PERMISSION),
    (rex.ResponseError("Function not found"), ErrorKind.LIBRARY_MISSING),
    (rex.NoScriptError("NOSCRIPT No matching script."), ErrorKind.LIBRARY_MISSING),
    (LibraryMissingError("not loaded"), ErrorKind.LIBRARY_MISSING),
    (rex.ResponseError("NOREPLICAS Not enough good replicas to write."),
     ErrorKind.UNAVAILABLE),
    (rex.ResponseError("MISCONF Redis is configured to save RDB snapshots"),
     ErrorKind.UNAVAILABLE),
    (rex.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
     ErrorKind.UNAVAILABLE),
    (rex.ResponseError("BUSY Redis is busy running a script."), ErrorKind.UNAVAILABLE),
    (rex.ResponseError("CLUSTERDOWN The cluster is down"), ErrorKind.UNAVAILABLE),
    (rex.ReadOnlyError("READONLY You can't write against a read only replica."),
     ErrorKind.UNAVAILABLE),
    (rex.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
     ErrorKind.UNAVAILABLE),
    (rex.TimeoutError("Timeout reading from socket"), ErrorKind.UNAVAILABLE),
    (builtins.TimeoutError(), ErrorKind.UNAVAILABLE),
    (ConnectionResetError(104, "Connection reset by peer"), ErrorKind.UNAVAILABLE),
    (rex.SlotNotCoveredError("slot 7 is not covered"), ErrorKind.UNAVAILABLE),
    (rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
     ErrorKind.INPUT),
    (rex.ResponseError("ERR invalid stream ID"), ErrorKind.INPUT),
    (rex.DataError("Invalid input of type: 'NoneType'"), ErrorKind.INPUT),
    (ValueError("a bug"), ErrorKind.OTHER),
]

GATEWAY = {ErrorKind.AUTH: gw.RedisAuthError, ErrorKind.PERMISSION: gw.RedisAuthError,
           ErrorKind.LIBRARY_MISSING: gw.RedisLibraryMissing,
           ErrorKind.UNAVAILABLE: gw.RedisUnavailable, ErrorKind.INPUT: gw.RedisSpecError,
           ErrorKind.OTHER: gw.RedisError}


@pytest.mark.parametrize(("exc", "kind"), CASES, ids=[repr(c[0])[:50] for c in CASES])
def test_one_classification_for_sdk_and_operator(exc: BaseException, kind: ErrorKind) -> None:
    assert error_kind(exc) is kind
    assert type(gw.classify(exc)) is GATEWAY[kind]
    transient = kind in (ErrorKind.UNAVAILABLE, ErrorKind.LIBRARY_MISSING)
    assert is_transient(exc) is transient
    assert is_library_missing(exc) is (kind is ErrorKind.LIBRARY_MISSING)
    # Authentication failures are retried only by a client whose credentials worked
    # before (ACL users come back after a restart); permissions never.
    assert is_transient(exc, authenticated_before=True) is (transient or kind is ErrorKind.AUTH)


def test_gateway_errors_pass_through_and_say_no_password() -> None:
    already = gw.RedisUnavailable("x")
    assert gw.classify(already) is already
    text = str(gw.classify(rex.ConnectionError("Error connecting to redis://u:pw@h:1")))
    assert "pw" not in text and "***@h:1" in text


def test_a_scripts_wrapped_noperm_is_a_permission_error() -> None:
    exc = rex.ResponseError("ERR Error running script (call to f_1): @user_function: "
                            "NOPERM this user has no permissions to access one of the keys")
    assert error_kind(exc) is ErrorKind.PERMISSION


def test_response_text_unwraps_a_pipeline_error_exactly() -> None:
    from agentqueue_client.errors import response_text

    wrapped = rex.ResponseError("Command # 2 (XREADGROUP GROUP g c) of pipeline caused "
                                "error: ('NOGROUP No such key of pipeline caused error: x',)")
    assert response_text(wrapped) == "NOGROUP No such key of pipeline caused error: x',)"
    assert response_text(rex.ResponseError("NOGROUP No such key")) == "NOGROUP No such key"
    assert response_text(rex.ResponseError("of pipeline caused error: \"('x")) == "x"
    assert response_text(rex.ResponseError("of pipeline caused error: ('XX',)")) == "XX',)"


def test_no_group_is_known_through_a_pipeline_wrapper() -> None:
    from agentqueue_client.errors import is_no_group

    assert is_no_group(rex.ResponseError("Command # 1 (X) of pipeline caused error: "
                                         "('NOGROUP No such key',)"))
    assert not is_no_group(rex.ResponseError("ERR nogroup"))
    assert not is_no_group(rex.ConnectionError("NOGROUP"))  # not a reply


def test_safe_message_and_describe_are_bounded() -> None:
    from agentqueue_client.errors import describe, safe_message

    assert safe_message(ValueError("boom")) == "ValueError: boom"
    assert safe_message(ValueError()) == "ValueError"
    long = safe_message(ValueError("x" * 5000))
    assert len(long) == 2000 and long.endswith("x…")
    exact = ValueError("y" * (2000 - len("ValueError: ")))
    assert safe_message(exact) == f"ValueError: {exact}"
    assert safe_message(ValueError("abcdef"), limit=10) == "ValueErro…"
    assert describe("\x1b[31m") == repr("\x1b[31m")
    assert describe("z" * 100) == repr("z" * 100)[:59] + "…"
    assert len(describe("z" * 100)) == 60
    assert describe("z" * 58) == repr("z" * 58)  # 60 characters with the quotes
    assert describe("abcdef", limit=5) == "'abc…"


def test_schema_error_names_the_path() -> None:
    from agentqueue_client.errors import SchemaValidationError

    assert str(SchemaValidationError("is not a string")) == \
        "payload violates the queue schema at $: is not a string"
    err = SchemaValidationError("bad", "$.a[2]")
    assert (err.reason, err.path) == ("bad", "$.a[2]")
