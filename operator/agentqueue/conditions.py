"""Kubernetes-style conditions: set one, keep lastTransitionTime when nothing changed."""

from __future__ import annotations

import datetime as dt
from typing import Any


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def iso(ts: float) -> str:
    """An epoch time as status writes times (RFC 3339, UTC, whole seconds)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z")


def parse_time(value: str | None) -> float | None:
    """A status (or metadata) time as epoch seconds; None when absent."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    generation: int | None = None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Return a new list with `type_` set; the transition time moves only on a status change."""
    wanted = status if isinstance(status, str) else ("True" if status else "False")
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions or []:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        changed = cond.get("status") != wanted
        out.append({
            "type": type_,
            "status": wanted,
            "reason": reason,
            "message": message,
            "lastTransitionTime": (now or now_iso()) if changed
            else cond.get("lastTransitionTime") or now or now_iso(),
            "observedGeneration": generation,
        })
    if not found:
        out.append({
            "type": type_, "status": wanted, "reason": reason, "message": message,
            "lastTransitionTime": now or now_iso(), "observedGeneration": generation,
        })
    for cond in out:
        if cond.get("observedGeneration") is None:
            cond.pop("observedGeneration", None)
    return out


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    cond = get_condition(conditions, type_)
    return bool(cond and cond.get("status") == "True")


def remove_condition(conditions: list[dict[str, Any]] | None, type_: str) -> list[dict[str, Any]]:
    return [dict(c) for c in conditions or [] if c.get("type") != type_]


def merge_changed(fresh: list[dict[str, Any]] | None, ours: list[dict[str, Any]] | None,
                  seen: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The conditions to write over `fresh` (just read from the API server): the types
    `ours` changed relative to `seen` (the copy our computation started from) replace
    those in `fresh`, types we removed are removed, and everything else in `fresh` is
    kept. A merge patch replaces the whole list, so this is how two writers of one
    object's conditions (a handler and a daemon, say) avoid clobbering each other."""
    mine = {c["type"]: c for c in ours or []}
    before = {c["type"]: c for c in seen or []}
    changed = {t for t, c in mine.items() if before.get(t) != c}
    removed = set(before) - set(mine)
    out = [dict(mine[c["type"]]) if c.get("type") in changed else dict(c)
           for c in fresh or [] if c.get("type") not in removed]
    present = {c.get("type") for c in out}
    out += [dict(c) for t, c in mine.items() if t in changed and t not in present]
    return out
