"""kopf handlers: thin glue from events to the services (observe → plan → apply → status)."""

from . import groups, lifecycle, queues, retention, watch  # noqa: F401
