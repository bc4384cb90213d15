"""Redis server settings that silently lose queue data, judged from what the server
reports (INFO and the `default` user's flags). Pure: the gateway gathers the facts.

Two are worth a warning on every queue that lives on such a server:

* ``maxmemory-policy`` other than ``noeviction`` with a memory limit: at the limit,
  Redis deletes keys to make room. ``allkeys-*`` may delete whole streams, dead-letter
  queues and retry schedules; ``volatile-*`` deletes keys with a TTL: idempotency keys
  before their time, so a retried send can be enqueued twice.
* AOF on while the ``default`` user is disabled: Redis replays a Function's writes as
  MULTI/EXEC and re-checks EXEC against ``default`` while loading, so every such
  transaction is dropped at restart (redis/redis#14541, fixed upstream by #14545;
  valkey-io/valkey#3983). Our enqueue with an idempotency key, nack, promote and
  dead-letter are such Functions. Lock ``default`` with an unknown password instead.
"""

from __future__ import annotations

from dataclasses import dataclass

EVICTION = "EvictionPolicy"
AOF_DEFAULT_USER_OFF = "AOFWithDefaultUserOff"


@dataclass(frozen=True)
class ServerFacts:
    node: str
    maxmemory: int | None = None
    maxmemory_policy: str | None = None
    aof_enabled: bool | None = None
    default_user_off: bool | None = None  # None: not visible to the admin user


@dataclass(frozen=True)
class Risk:
    reason: str
    node: str
    message: str


def assess(facts: ServerFacts) -> list[Risk]:
    """The data-loss risks of one node; unknown facts raise nothing."""
    out: list[Risk] = []
    policy = facts.maxmemory_policy
    if facts.maxmemory and policy and policy != "noeviction":
        what = ("streams, dead-letter queues and retry schedules"
                if policy.startswith("allkeys") else
                "idempotency keys before their TTL (a retried send may be enqueued twice)")
        out.append(Risk(EVICTION, facts.node,
                        f"{facts.node}: maxmemory-policy {policy} with maxmemory "
                        f"{facts.maxmemory}: at the limit Redis evicts {what}; "
                        "set maxmemory-policy noeviction"))
    if facts.aof_enabled and facts.default_user_off:
        out.append(Risk(AOF_DEFAULT_USER_OFF, facts.node,
                        f"{facts.node}: AOF is on and the default user is off: Redis drops "
                        "Function transactions when it replays the AOF at restart "
                        "(redis/redis#14541); keep default on with a random password "
                        "nobody knows instead of off"))
    return out


def summary(risks: list[Risk]) -> str:
    return "; ".join(r.message for r in risks)
