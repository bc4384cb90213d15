"""The latest body of every object of our three kinds, as the watch delivered it.

The keepers read bodies from here instead of holding kopf daemons (which kept a live
body and a task per object). Stored trimmed: no managedFields and none of kopf's own
annotations (its diff-base is a second copy of the spec), which are most of the bytes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

KOPF_ANNOTATION_PREFIX = "agentqueue.io/"
KEPT_ANNOTATIONS = frozenset({"agentqueue.io/rotate-credentials"})


def trimmed(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain, trimmed copy of a watched body (kopf's bodies are live views)."""
    import copy

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
    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in body.items() if k != "metadata"}
    out["metadata"] = copy.deepcopy(meta)
    return out


class Objects:
    """kind -> (namespace, name) -> trimmed body."""

    def __init__(self) -> None:
        self._bodies: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        self._groups: dict[tuple[str, str], set[str]] = {}
        """(namespace, queue) -> names of the ConsumerGroups naming it."""

    def put(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        plain = trimmed(body)
        key = (meta["namespace"], meta["name"])
        if kind == "ConsumerGroup":
            self._unindex(key)
            queue = ((plain.get("spec") or {}).get("queueRef") or {}).get("name")
            if isinstance(queue, str):
                self._groups.setdefault((key[0], queue), set()).add(key[1])
        self._bodies.setdefault(kind, {})[key] = plain
        return plain

    def drop(self, kind: str, namespace: str, name: str) -> None:
        if kind == "ConsumerGroup":
            self._unindex((namespace, name))
        self._bodies.get(kind, {}).pop((namespace, name), None)

    def _unindex(self, key: tuple[str, str]) -> None:
        old = self._bodies.get("ConsumerGroup", {}).get(key)
        queue = ((old or {}).get("spec") or {}).get("queueRef", {}).get("name")
        names = self._groups.get((key[0], queue)) if isinstance(queue, str) else None
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._groups[(key[0], queue)]

    def groups_of(self, namespace: str, queue: str) -> list[str]:
        """The ConsumerGroups whose queueRef names this queue."""
        return sorted(self._groups.get((namespace, queue), ()))

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._bodies.get(kind, {}).get((namespace, name))

    def of_kind(self, kind: str) -> Iterator[dict[str, Any]]:
        yield from list(self._bodies.get(kind, {}).values())

    def count(self, kind: str) -> int:
        return len(self._bodies.get(kind, {}))
