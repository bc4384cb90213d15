"""The latest body of every object of our three kinds, as the watch delivered it.

The keepers read bodies from here instead of holding kopf daemons (which kept a live
body and a task per object). Stored trimmed (no managedFields and none of kopf's own
annotations: its diff-base is a second copy of the spec) and as compact JSON: a body
as Python dicts and strings took ~15 KB, as JSON ~2 KB, and reading one back costs a
few microseconds (orjson). `get` returns a fresh copy the caller may change."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

KOPF_ANNOTATION_PREFIX = "agentqueue.io/"
KEPT_ANNOTATIONS = frozenset({"agentqueue.io/rotate-credentials"})


try:
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    _loads = orjson.loads
except ImportError:  # pragma: no cover - the operator installs the client's `fast` extra
    import json

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    _loads = json.loads  # type: ignore[assignment]


def trimmed(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain, trimmed copy of a watched body (kopf's bodies are live views)."""
    return _loads(_dumps(_trim(body)))  # type: ignore[no-any-return]


def _trim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body without what nothing here reads (shallow: for serializing at once)."""
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations:
        kept = {k: v for k, v in annotations.items()
                if not k.startswith(KOPF_ANNOTATION_PREFIX) or k in KEPT_ANNOTATIONS}
        if kept:
            meta["annotations"] = kept
        else:
            meta.pop("annotations", None)
    out: dict[str, Any] = {k: v for k, v in body.items() if k != "metadata"}
    out["metadata"] = meta
    return out


class Objects:
    """kind -> (namespace, name) -> trimmed body."""

    def __init__(self) -> None:
        self._bodies: dict[str, dict[tuple[str, str], bytes]] = {}
        self._groups: dict[tuple[str, str], set[str]] = {}
        """(namespace, queue) -> names of the ConsumerGroups naming it."""

    def put(self, kind: str, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if kind == "ConsumerGroup":
            self._unindex(key)
            queue = ((body.get("spec") or {}).get("queueRef") or {}).get("name")
            if isinstance(queue, str):
                self._groups.setdefault((key[0], queue), set()).add(key[1])
        self._bodies.setdefault(kind, {})[key] = _dumps(_trim(body))

    def drop(self, kind: str, namespace: str, name: str) -> None:
        if kind == "ConsumerGroup":
            self._unindex((namespace, name))
        self._bodies.get(kind, {}).pop((namespace, name), None)

    def _unindex(self, key: tuple[str, str]) -> None:
        raw = self._bodies.get("ConsumerGroup", {}).get(key)
        old = _loads(raw) if raw is not None else {}
        queue = ((old.get("spec") or {}).get("queueRef") or {}).get("name")
        if not isinstance(queue, str):
            return
        names = self._groups.get((key[0], queue))
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._groups[(key[0], queue)]

    def groups_of(self, namespace: str, queue: str) -> list[str]:
        """The ConsumerGroups whose queueRef names this queue."""
        return sorted(self._groups.get((namespace, queue), ()))

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        raw = self._bodies.get(kind, {}).get((namespace, name))
        return _loads(raw) if raw is not None else None  # type: ignore[no-any-return]

    def of_kind(self, kind: str) -> Iterator[dict[str, Any]]:
        for raw in list(self._bodies.get(kind, {}).values()):
            yield _loads(raw)

    def count(self, kind: str) -> int:
        return len(self._bodies.get(kind, {}))
