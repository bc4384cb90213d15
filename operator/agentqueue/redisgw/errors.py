"""Redis errors, classified once at the gateway boundary.

Callers above `redisgw` see three kinds, and decide retry policy from the kind alone:

- `RedisUnavailable`: transient (connection refused or reset, timeouts, LOADING,
  cluster down, failover in progress, OOM, a busy script). Retry later.
- `RedisAuthError`: our credentials are wrong or lack a permission. Retrying soon
  will not help; an operator needs to fix a Secret or ACL.
- `RedisSpecError`: Redis rejected what we asked for (a wrong type at our key, a bad
  argument). Permanent for this input.

Messages never contain passwords: URLs are scrubbed of their userinfo and redis-py's
own messages carry host and port only.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import ParamSpec, TypeVar

from redis import exceptions as rex

from agentqueue_client.errors import ErrorKind, error_kind

__all__ = [
    "RedisAuthError",
    "RedisError",
    "RedisLibraryMissing",
    "RedisSpecError",
    "RedisUnavailable",
    "classify",
    "is_busygroup",
    "scrub",
    "translate_errors",
    "translated",
]

P = ParamSpec("P")
T = TypeVar("T")


class RedisError(Exception):
    """Base of the gateway's errors; `str()` is safe to log and to put in a status."""


class RedisUnavailable(RedisError):
    """Transient: the server is unreachable, loading, failing over or overloaded."""


class RedisLibraryMissing(RedisUnavailable):
    """The agentqueue Functions library is not loaded (e.g. after a restart without
    persistence). Transient: the operator re-loads it when it notices."""


class RedisAuthError(RedisError):
    """Authentication failed or the user lacks a permission (NOPERM)."""


class RedisSpecError(RedisError):
    """Redis rejected our input (WRONGTYPE, a syntax error, a bad argument)."""


# "redis://user:secret@host" → "redis://***@host"; also `user:secret@` in free text.
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^@/\s]*@", re.IGNORECASE)

def scrub(text: str) -> str:
    """Remove credentials from URLs in `text`."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return scrub(text)


def is_busygroup(exc: BaseException) -> bool:
    """XGROUP CREATE on an existing group: a plain ResponseError, known by its prefix.
    Callers treat it as success."""
    return isinstance(exc, rex.ResponseError) and str(exc).startswith("BUSYGROUP")


def classify(exc: BaseException) -> RedisError:
    """Map a redis-py (or socket) exception to the gateway's error kinds (decided by
    the one classification the SDK uses too: `agentqueue_client.errors.error_kind`)."""
    if isinstance(exc, RedisError):
        return exc
    kind = error_kind(exc)
    return _BY_KIND[kind](_message(exc))


_BY_KIND: dict[ErrorKind, type[RedisError]] = {
    ErrorKind.AUTH: RedisAuthError,
    ErrorKind.PERMISSION: RedisAuthError,
    ErrorKind.LIBRARY_MISSING: RedisLibraryMissing,
    ErrorKind.UNAVAILABLE: RedisUnavailable,
    ErrorKind.INPUT: RedisSpecError,
    ErrorKind.OTHER: RedisError,
}


_HANDLED: tuple[type[BaseException], ...] = (
    rex.RedisError, rex.RedisClusterException, builtins.TimeoutError, OSError,
)


@contextlib.contextmanager
def translate_errors(what: str | None = None) -> Iterator[None]:
    """Re-raise redis-py errors inside the block as gateway errors.

    `what` prefixes the message ("ensure user aq.ns.q.x: ..."). The original is not
    chained (`from None`): its args may hold command arguments such as passwords.
    """
    try:
        yield
    except RedisError:
        raise
    except _HANDLED as exc:
        err = classify(exc)
        if what:
            err = type(err)(f"{what}: {err}")
        raise err from None


def translated(what: str | None = None) -> Callable[[Callable[P, Awaitable[T]]],
                                                    Callable[P, Awaitable[T]]]:
    """Decorator form of `translate_errors` for coroutine functions."""

    def deco(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            with translate_errors(what):
                return await fn(*args, **kwargs)

        return wrapper

    return deco
