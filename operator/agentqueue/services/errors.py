"""Problems a reconcile can report, classified for the handlers."""

from __future__ import annotations

QueueSeen = tuple[tuple[str, str], int]
"""(namespace, queue) and its `Runtime.queue_versions` value when it was read: what a
ConsumerGroup waits on (the queue to appear or become Ready), to retry when it changes."""


class SpecProblem(Exception):
    """The spec (or something it names) is wrong: Ready=False with this reason, an Event.

    `retry_after` is set when the fix may come from outside the spec (a Secret created
    later, a queue that appears): the handler retries instead of giving up.
    """

    def __init__(self, reason: str, message: str, retry_after: float | None = 30.0,
                 depends_on: QueueSeen | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.depends_on = depends_on


class Waiting(Exception):
    """Not an error: something we depend on is not ready yet (e.g. the queue)."""

    def __init__(self, reason: str, message: str, delay: float = 5.0,
                 depends_on: QueueSeen | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.delay = delay
        self.depends_on = depends_on
