"""Errors raised by the agentqueue SDK.

Every error derives from :class:`AgentQueueError`; messages never contain passwords.
Redis failures are classified once, here: :func:`is_transient` tells the consumer loop
whether to retry (connection lost, timeout, server loading) or to stop (bad password,
missing permission, wrong key type).
"""

from __future__ import annotations

import builtins
from enum import StrEnum
from typing import Any

from redis import exceptions as rex


class AgentQueueError(Exception):
    """Base class of all SDK errors."""


class ConfigError(AgentQueueError):
    """The client configuration is incomplete or invalid (e.g. a missing env var)."""


class QueueTypeError(AgentQueueError):
    """The operation does not exist for this queue type (e.g. priorities on a Stream)."""


class SchemaValidationError(AgentQueueError, ValueError):
    """A payload does not satisfy the queue's JSON Schema. Nothing was sent.

    ``path`` is the JSON path of the first failing element (``$.items[2].name``),
    ``reason`` the validator's message.
    """

    def __init__(self, reason: str, path: str = "$") -> None:
        super().__init__(f"payload violates the queue schema at {path}: {reason}")
        self.reason = reason
        self.path = path


class DecodeError(AgentQueueError, ValueError):
    """An entry read from Redis is not a valid message envelope.

    ``reason`` is short and safe to store in the dead-letter queue (``x.error``).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LibraryMissingError(AgentQueueError):
    """The ``agentqueue`` Redis Functions library is not loaded on the server.

    The operator loads it when it provisions a queue; after a Redis restart without
    persistence it re-loads it on its next reconcile. Transient from the SDK's view.
    """


class MessageSettledError(AgentQueueError):
    """``ack``/``nack`` called on a message that was already acked or nacked."""


def response_text(exc: BaseException) -> str:
    """A Redis error reply without redis-py's pipeline wrapper
    (``Command # 2 (...) of pipeline caused error: ('NOGROUP ...',)`` → ``NOGROUP ...``)."""
    text = str(exc)
    _, sep, inner = text.partition("of pipeline caused error: ")
    return inner.lstrip("('\"") if sep else text


def is_no_group(exc: BaseException) -> bool:
    """The consumer group (or its stream) does not exist (yet)."""
    return isinstance(exc, rex.ResponseError) and response_text(exc).startswith("NOGROUP")


class ErrorKind(StrEnum):
    """What a Redis failure means, decided once (`error_kind`) for the SDK, the CLI and
    the operator (redisgw/errors.py maps the kinds to its exception classes)."""

    AUTH = "auth"
    """Authentication failed (WRONGPASS, NOAUTH): wrong or missing credentials."""
    PERMISSION = "permission"
    """The ACL refused the command or key (NOPERM)."""
    LIBRARY_MISSING = "library-missing"
    """The Functions library (or a function) is not loaded: the operator re-loads it."""
    UNAVAILABLE = "unavailable"
    """Retry later: connection lost or refused, timeouts, loading, failover, overload."""
    INPUT = "input"
    """Redis rejected the request (a wrong key type, a bad argument): permanent."""
    OTHER = "other"
    """Not a Redis failure this module knows."""


# Error replies that mean "try again later", not "your input is wrong".
TRANSIENT_PREFIXES = ("BUSY ", "MISCONF", "LOADING", "TRYAGAIN", "CLUSTERDOWN",
                      "MASTERDOWN", "READONLY", "OOM", "NOREPLICAS")
_LIBRARY_MISSING = ("function not found", "library not found", "noscript")


def error_kind(exc: BaseException) -> ErrorKind:
    """Classify a redis-py (or socket) exception. Order matters: redis-py's
    AuthenticationError is a ConnectionError, NoPermissionError a ResponseError."""
    if isinstance(exc, rex.AuthenticationError | rex.AuthenticationWrongNumberOfArgsError):
        return ErrorKind.AUTH
    if isinstance(exc, rex.AuthorizationError | rex.NoPermissionError):
        return ErrorKind.PERMISSION
    if isinstance(exc, LibraryMissingError):
        return ErrorKind.LIBRARY_MISSING
    if isinstance(exc, rex.ResponseError):
        text = response_text(exc)
        lower = text.lower()
        if text.startswith(("WRONGPASS", "NOAUTH")):
            return ErrorKind.AUTH
        if "noperm" in lower:  # NOPERM, also inside a script's "ERR ... NOPERM ..."
            return ErrorKind.PERMISSION
        if isinstance(exc, rex.NoScriptError) or any(m in lower for m in _LIBRARY_MISSING):
            return ErrorKind.LIBRARY_MISSING
        if isinstance(exc, rex.ClusterError | rex.TryAgainError | rex.ReadOnlyError
                      | rex.OutOfMemoryError) or text.startswith(TRANSIENT_PREFIXES):
            return ErrorKind.UNAVAILABLE
        return ErrorKind.INPUT
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | rex.ClusterError
                  | rex.RedisClusterException | rex.InvalidResponse
                  | builtins.TimeoutError | OSError):
        return ErrorKind.UNAVAILABLE  # cluster errors: a Redis Cluster failing over
    if isinstance(exc, rex.DataError):
        return ErrorKind.INPUT
    return ErrorKind.OTHER


def is_library_missing(exc: BaseException) -> bool:
    """True for the errors Redis returns when a function or library is not loaded."""
    return error_kind(exc) is ErrorKind.LIBRARY_MISSING


def is_transient(exc: BaseException, *, authenticated_before: bool = False) -> bool:
    """True for Redis failures worth retrying after a pause (`ErrorKind.UNAVAILABLE`
    and a missing library, which the operator re-loads).

    Permission errors are permanent (an ACL must change). Authentication errors
    (``WRONGPASS``/``NOAUTH``) are permanent for credentials never accepted, but
    transient once they were (``authenticated_before``): ACL users live in memory, so
    after a Redis restart without persistence or a failover they are missing until the
    operator re-creates them (seconds). Callers bound that grace (see
    :data:`AUTH_GRACE_S`).
    """
    kind = error_kind(exc)
    if kind is ErrorKind.AUTH:
        return authenticated_before
    return kind in (ErrorKind.UNAVAILABLE, ErrorKind.LIBRARY_MISSING)


#: How long a consumer whose credentials worked keeps retrying ``WRONGPASS`` before it
#: gives up: long enough for the operator to notice a restarted Redis (run_id check,
#: every few seconds) and re-create the users, short enough to surface a rotated-away
#: password.
AUTH_GRACE_S = 60.0


def safe_message(exc: BaseException, limit: int = 2000) -> str:
    """``Type: message`` truncated to ``limit`` characters, for ``x.error`` / ``e``."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def redis_errors() -> tuple[type[BaseException], ...]:
    """The exception types a Redis call can raise (for ``except`` clauses); a Redis
    Cluster client also raises ``RedisClusterException``, which is no ``RedisError``."""
    return (rex.RedisError, rex.RedisClusterException, builtins.TimeoutError, OSError)


def describe(value: Any, limit: int = 60) -> str:
    """A short, printable ``repr`` of hostile input for an error reason."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
