"""Retention: which RetentionPolicy governs a queue, and where to trim. Pure.

Trim points
-----------
The policy wants to drop the oldest entries beyond ``maxLength`` and those older
than ``maxAge`` (entry ids carry their creation time, so the age cut is ``MINID
<now - maxAge>``). With ``protectUndelivered`` the trim never passes the *floor*:
the oldest entry some group has not acked — its oldest pending entry, or the first
entry after its last-delivered id, whichever is older.

The figures the plan needs besides ids come from the gateway:

- ``unacked``: how many entries are at or after the floor (the floor group's exact
  lag, plus the entries between its oldest pending and last-delivered ids);
- ``unacked_older_than_age``: how many of them are older than the age cut.

Then, with ``B = length - unacked`` entries before the floor (all acked):

- protected: a MAXLEN cut keeps ``max(maxLength, unacked)`` entries and an age cut
  becomes ``MINID min(age cut, floor)``; protection kept
  ``max(unacked - maxLength, unacked_older_than_age)`` entries;
- unprotected: the trim removes a prefix of ``t`` entries, so it dropped exactly
  ``max(0, t - B)`` entries some group had not acked.

The MAXLEN guard (``guard_unacked``) lets the gateway add entries appended between
observing and trimming, so a protected MAXLEN cut cannot creep past the floor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..models.common import parse_duration
from ..models.retention import (
    LabelSelector,
    LabelSelectorRequirement,
    RetentionPolicySpec,
    SelectorOperator,
)
from .lag import StreamId, format_id, parse_id

APPROXIMATE_LIMIT = 100_000
"""LIMIT for approximate trims: whole nodes only, so cheap; Redis' default is 10,000."""


# ---- settings ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RetentionSettings:
    max_length: int | None = None
    exact: bool = False
    max_age_ms: int | None = None
    protect_undelivered: bool = True
    dead_letter_max_length: int | None = None
    dead_letter_max_age_ms: int | None = None
    idempotency_ttl_ms: int | None = None

    @classmethod
    def from_spec(cls, spec: RetentionPolicySpec) -> RetentionSettings:
        def ms(value: str | None) -> int | None:
            return None if value is None else int(parse_duration(value) * 1000)

        return cls(
            max_length=spec.max_length,
            exact=spec.exact,
            max_age_ms=ms(spec.max_age),
            protect_undelivered=spec.protect_undelivered,
            dead_letter_max_length=spec.dead_letter.max_length,
            dead_letter_max_age_ms=ms(spec.dead_letter.max_age),
            idempotency_ttl_ms=ms(spec.idempotency_key_ttl),
        )

    @property
    def trims_queue(self) -> bool:
        return self.max_length is not None or self.max_age_ms is not None

    @property
    def trims_dead_letters(self) -> bool:
        return self.dead_letter_max_length is not None or self.dead_letter_max_age_ms is not None


# ---- observations -------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupPosition:
    name: str
    last_delivered_id: str
    oldest_pending_id: str | None = None
    """None: nothing pending."""


@dataclass(frozen=True)
class PartitionObservation:
    length: int
    first_id: str | None
    groups: Sequence[GroupPosition] = ()
    unacked: int | None = None
    """Entries at or after the floor; None: unknown (see module docstring)."""
    unacked_older_than_age: int | None = None
    """Entries in [floor, age cut); only needed with maxAge and a floor below the cut."""


def next_id(value: StreamId) -> StreamId:
    """The smallest id after `value`: everything from it on is undelivered."""
    return value[0], value[1] + 1


def first_unacked(group: GroupPosition) -> StreamId:
    after = next_id(parse_id(group.last_delivered_id))
    if group.oldest_pending_id is None:
        return after
    return min(after, parse_id(group.oldest_pending_id))


def floor_of(groups: Iterable[GroupPosition]) -> tuple[StreamId | None, list[str]]:
    """The oldest entry some group has not acked, and the groups holding it there."""
    floors = [(first_unacked(g), g.name) for g in groups]
    if not floors:
        return None, []
    low = min(f for f, _ in floors)
    return low, sorted(name for f, name in floors if f == low)


def age_cut(now_ms: int, max_age_ms: int) -> StreamId:
    return max(0, now_ms - max_age_ms), 0


# ---- the plan -----------------------------------------------------------------------------

@dataclass(frozen=True)
class TrimPlan:
    """XTRIM arguments for one partition plus what is needed to report on them."""

    minid: str | None = None
    maxlen: int | None = None
    approximate: bool = True
    guard_unacked: int | None = None
    """Protected MAXLEN: keep at least this many + entries appended since observing."""
    protected: int = 0
    protected_exact: bool = True
    floor: str | None = None
    blocked_by: tuple[str, ...] = ()
    """Groups at the floor, when protection keeps entries the policy would drop."""
    acked_before_floor: int | None = None
    """Entries before the floor (all acked by every group); None: unknown."""
    skipped: str | None = None
    """Why a trim the policy asks for was not planned (unknown figures)."""
    protecting: bool = False
    """Planned under protection: no trim passes the floor."""

    @property
    def trims(self) -> bool:
        return self.minid is not None or self.maxlen is not None

    @property
    def limit(self) -> int | None:
        """XTRIM's LIMIT: approximate trims only (Redis refuses it with "=")."""
        return APPROXIMATE_LIMIT if self.approximate else None

    def xtrim_args(self) -> list[list[str]]:
        """The XTRIM commands (without the key), in order: MINID first, then MAXLEN.
        A guarded MAXLEN is applied by the gateway's script instead."""
        mode = "~" if self.approximate else "="
        extra = ["LIMIT", str(self.limit)] if self.limit is not None else []
        out = []
        if self.minid is not None:
            out.append(["MINID", mode, self.minid, *extra])
        if self.maxlen is not None:
            out.append(["MAXLEN", mode, str(self.maxlen), *extra])
        return out

    def dropped_undelivered(self, trimmed: int) -> int | None:
        """Entries some group had not acked among the `trimmed` oldest (exact when the
        figures were known). Always 0 under protection."""
        if self.floor is None or self.protecting:
            return 0
        if self.acked_before_floor is None:
            return None
        return max(0, trimmed - self.acked_before_floor)


def plan_trim(settings: RetentionSettings, obs: PartitionObservation,
              now_ms: int) -> TrimPlan:
    """Where to trim one partition of a queue (see the module docstring)."""
    approx = not settings.exact
    if not settings.trims_queue or obs.length <= 0:
        return TrimPlan()  # nothing to trim
    floor, holders = floor_of(obs.groups)
    cut = age_cut(now_ms, settings.max_age_ms) if settings.max_age_ms is not None else None
    before_floor = _before_floor(obs, floor)
    if floor is None or not settings.protect_undelivered:
        n = settings.max_length
        return TrimPlan(
            minid=format_id(cut) if cut else None,
            maxlen=n if n is not None and obs.length > n else None,
            approximate=approx, floor=format_id(floor) if floor else None,
            acked_before_floor=before_floor)
    return _protected(settings, obs, floor, holders, cut, approx, before_floor)


def _before_floor(obs: PartitionObservation, floor: StreamId | None) -> int | None:
    if floor is None:
        return obs.length
    if obs.first_id is not None and floor <= parse_id(obs.first_id):
        return 0
    if obs.unacked is None:
        return None
    return max(0, obs.length - obs.unacked)


def _protected(settings: RetentionSettings, obs: PartitionObservation, floor: StreamId,
               holders: list[str], cut: StreamId | None, approx: bool,
               before_floor: int | None) -> TrimPlan:
    """A trim that never passes the floor (`dropped_undelivered` is 0, so the plan does
    not carry `acked_before_floor`)."""
    minid: str | None = None
    protected, exact, skipped = 0, True, None
    if cut is not None:
        minid = format_id(min(cut, floor))
        if floor < cut:
            if obs.unacked_older_than_age is None:
                exact = False
            else:
                protected = obs.unacked_older_than_age
    maxlen: int | None = None
    guard: int | None = None
    n = settings.max_length
    if n is not None and obs.length > n:
        unacked = obs.length - before_floor if before_floor is not None else None
        if unacked is None:
            skipped = "the number of unacked entries is unknown: MAXLEN not applied"
            exact = False
        else:
            maxlen, guard = n, unacked
            protected = max(protected, unacked - n)
    return TrimPlan(minid=minid, maxlen=maxlen, approximate=approx, guard_unacked=guard,
                    protected=protected, protected_exact=exact, floor=format_id(floor),
                    blocked_by=tuple(holders) if protected else (), skipped=skipped,
                    protecting=True)


def plan_dead_letter(settings: RetentionSettings, now_ms: int) -> TrimPlan:
    """The dead-letter stream: no groups read it, so nothing to protect. Its ids are the
    times the messages were dead-lettered, so maxAge counts from then."""
    cut = (age_cut(now_ms, settings.dead_letter_max_age_ms)
           if settings.dead_letter_max_age_ms is not None else None)
    return TrimPlan(minid=format_id(cut) if cut else None,
                    maxlen=settings.dead_letter_max_length, approximate=not settings.exact)


# ---- which policy governs a queue ---------------------------------------------------------

@dataclass(frozen=True)
class PolicyRef:
    name: str
    creation_timestamp: str
    """RFC 3339, as in metadata.creationTimestamp (sorts as text)."""
    selector: LabelSelector | Mapping[str, Any] | None
    """A mapping is validated when matched (`selector_matches`)."""


def _requirement(labels: Mapping[str, str], req: LabelSelectorRequirement) -> bool:
    present = req.key in labels
    op = SelectorOperator(req.operator)
    if op is SelectorOperator.IN:
        return present and labels[req.key] in req.values
    if op is SelectorOperator.NOT_IN:
        return not present or labels[req.key] not in req.values
    if op is SelectorOperator.EXISTS:
        return present
    return not present  # DoesNotExist


def selector_matches(selector: LabelSelector | Mapping[str, Any] | None,
                     labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics; an empty selector matches everything, no
    selector matches nothing (the policy then applies only to queues naming it)."""
    if selector is None:
        return False
    sel = LabelSelector.model_validate(selector)  # a LabelSelector passes as it is
    if any(labels.get(k) != v for k, v in sel.match_labels.items()):
        return False
    return all(_requirement(labels, r) for r in sel.match_expressions)


def _as_ref(policy: PolicyRef | tuple[str, str, Any]) -> PolicyRef:
    if isinstance(policy, PolicyRef):
        return policy
    return PolicyRef(*policy)


def effective_policy(queue_labels: Mapping[str, str] | None, queue_explicit_ref: str | None,
                     policies: Iterable[PolicyRef | tuple[str, str, Any]]
                     ) -> tuple[str | None, list[str]]:
    """(governing policy name or None, names of the other policies that select it).

    An explicit ``spec.retentionPolicyRef`` wins (even if that policy does not exist:
    then none applies, rather than a surprise); otherwise the oldest matching policy
    (ties by name)."""
    refs = sorted((_as_ref(p) for p in policies), key=lambda p: (p.creation_timestamp, p.name))
    labels = queue_labels or {}
    matching = [p.name for p in refs if selector_matches(p.selector, labels)]
    if queue_explicit_ref is not None:
        winner = queue_explicit_ref if any(p.name == queue_explicit_ref for p in refs) else None
        return winner, [n for n in matching if n != queue_explicit_ref]
    if not matching:
        return None, []
    return matching[0], matching[1:]
