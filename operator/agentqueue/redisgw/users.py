"""ACL users on every primary (Redis keeps users per node and never replicates them).

Passwords go over the wire only as SHA-256 hashes (`#<hex>`), so they can be
compared with ACL GETUSER to detect drift, and never appear in a command log.
Rotation without downtime: during the grace period a user holds two hashes (new
and previous), then only the new one.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

from agentqueue_client.text import as_text

from ..planning.acl import acl_setuser_args, getuser_dict, normalize_getuser, rules_match
from .connection import RedisClient, node_name, primaries
from .errors import translate_errors

__all__ = [
    "acl_digests",
    "delete_user",
    "ensure_user",
    "get_user",
    "list_usernames",
    "new_password",
    "password_hashes",
    "sha256_hex",
]

PASSWORD_BYTES = 32
REFERENCE_PREFIX = "agentqueue.reference."

# (node, rules) → ACL GETUSER of a scratch user with those rules: how this server
# spells them. Redis 7.0 rewrites command rules into categories and exceptions, so
# the only reliable comparison is with the server's own spelling.
_references: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
# Nodes already swept of scratch users left by older operator versions (which created
# and deleted them in separate commands).
_swept: set[str] = set()


def new_password() -> str:
    """32 random bytes, URL-safe base64 (43 characters): safe in URLs and env vars."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def sha256_hex(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


async def get_user(node: Any, username: str) -> dict[str, Any] | None:
    """ACL GETUSER of one node as a dict; None when the user does not exist."""
    reply = await node.execute_command("ACL", "GETUSER", username)
    return None if reply is None else getuser_dict(reply)


async def _reference(node: Any, rules: Sequence[str], *, fresh: bool = False
                     ) -> dict[str, Any]:
    """The server's spelling of `rules`, read from a scratch user that is disabled and
    has no password (nobody can log in as it). Created, read and deleted in one
    MULTI/EXEC: it never exists outside that transaction, so neither a killed operator
    nor a failed connection can leave it behind. A random name per call keeps
    concurrent reconciles apart."""
    key = (node_name(node), tuple(rules))
    if not fresh and key in _references:
        return _references[key]
    await _sweep_references(node)
    name = REFERENCE_PREFIX + secrets.token_hex(6)
    async with node.pipeline(transaction=True) as pipe:
        pipe.execute_command("ACL", "SETUSER", name, *rules, "off", "resetpass")
        pipe.execute_command("ACL", "GETUSER", name)
        pipe.execute_command("ACL", "DELUSER", name)
        _, raw, _ = await pipe.execute()
    if raw is None:  # pragma: no cover - the transaction makes this impossible
        raise RuntimeError("reference ACL user vanished")
    reply = getuser_dict(raw)
    _references[key] = reply
    return reply


async def _sweep_references(node: Any) -> None:
    """Once per node and process: delete scratch users that an older operator version,
    killed between its SETUSER and DELUSER, left behind (ACL USERS lists names only:
    cheap even with many users). Ours never outlive their transaction."""
    key = node_name(node)
    if key in _swept:
        return
    _swept.add(key)
    names = [as_text(n, errors="strict")
             for n in await node.execute_command("ACL", "USERS")]
    stale = [n for n in names if n.startswith(REFERENCE_PREFIX)]
    if stale:
        await node.execute_command("ACL", "DELUSER", *stale)


async def _matches(node: Any, observed: dict[str, Any] | None, rules: Sequence[str],
                   hashes: Sequence[str]) -> bool:
    if observed is None:
        return False
    if rules_match(observed, await _reference(node, rules), hashes):
        return True
    # The cached spelling may be stale (server upgraded behind the same address).
    return rules_match(observed, await _reference(node, rules, fresh=True), hashes)


async def ensure_user(client: RedisClient, username: str, rules: Sequence[str],
                      password_hashes: Sequence[str]) -> bool:
    """Make `username` exactly `rules` + `password_hashes` on every primary.

    Reads ACL GETUSER first (not ACL LIST: slow with many users) and writes only on
    drift. Returns whether any node changed."""
    args = acl_setuser_args(username, rules, password_hashes)
    changed = False
    with translate_errors(f"ensure ACL user {username}"):
        for node in await primaries(client):
            observed = await get_user(node, username)
            if await _matches(node, observed, rules, password_hashes):
                continue
            await node.execute_command("ACL", "SETUSER", *args)
            changed = True
    return changed


async def password_hashes(client: RedisClient, username: str) -> list[str]:
    """Password hashes the user holds (union over primaries; [] when absent)."""
    found: list[str] = []
    with translate_errors(f"read ACL user {username}"):
        for node in await primaries(client):
            observed = await get_user(node, username)
            if observed is None:
                continue
            for h in sorted(normalize_getuser(observed).passwords):
                if h not in found:
                    found.append(h)
    return found


async def delete_user(client: RedisClient, username: str) -> bool:
    """ACL DELUSER on every primary. Redis also closes that user's connections, so a
    removed credential stops working at once. Returns whether it existed anywhere."""
    existed = False
    with translate_errors(f"delete ACL user {username}"):
        for node in await primaries(client):
            existed |= bool(await node.execute_command("ACL", "DELUSER", username))
    return existed


async def list_usernames(client: RedisClient, prefix: str = "aq.") -> set[str]:
    """Users whose name starts with `prefix`, on any primary (for orphan clean-up)."""
    names: set[str] = set()
    with translate_errors("list ACL users"):
        for node in await primaries(client):
            for name in await node.execute_command("ACL", "USERS"):
                text = as_text(name, errors="strict")
                if text.startswith(prefix):
                    names.add(text)
    return names


UserDigest = tuple[bytes | None, ...]
"""A user's ACL LIST line on each primary (in the client's node order), hashed; None
where the user does not exist."""


async def acl_digests(client: RedisClient, prefix: str = "aq.") -> dict[str, UserDigest]:
    """Every user whose name starts with `prefix`, by a digest of its ACL LIST line on
    each primary: one ACL LIST per primary for all users (the keeper's drift check),
    instead of an ACL GETUSER per user. The lines hold password hashes: only their
    digests leave this function."""
    nodes = await primaries(client)
    found: dict[str, list[bytes | None]] = {}
    marker = f"user {prefix}".encode()
    with translate_errors("list ACL rules"):
        for i, node in enumerate(nodes):
            for raw in await node.execute_command("ACL", "LIST"):
                line = raw if isinstance(raw, bytes) else str(raw).encode()
                if not line.startswith(marker):
                    continue
                name = line.split(b" ", 2)[1].decode(errors="replace")
                digests = found.setdefault(name, [None] * len(nodes))
                digests[i] = hashlib.blake2b(line, digest_size=8).digest()
    return {name: tuple(d) for name, d in found.items()}
