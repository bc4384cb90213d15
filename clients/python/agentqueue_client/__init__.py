"""The agentqueue SDK: produce to and consume from queues managed by the operator.

>>> from agentqueue_client import Consumer, Producer
>>> async def main() -> None:
...     async with Producer.from_env() as producer:
...         await producer.send({"task": "triage", "ticket": 1}, idempotency_key="ticket-1")
...     async with Consumer.from_env(group="triage") as consumer:
...         async for msg in consumer:
...             await msg.once("notify", lambda pipe: pipe.incr("notified"))
...             await msg.ack()

Delivery is at least once; with idempotency keys and :meth:`Message.once`, side effects
happen exactly once. A synchronous wrapper lives in :mod:`agentqueue_client.sync`.
"""

from .backoff import RetryPolicy, backoff_ms
from .codec import Envelope, PayloadSchema, decode_fields, encode_fields, encode_payload
from .config import ClientConfig
from .consumer import Consumer
from .errors import (
    AgentQueueError,
    ConfigError,
    DecodeError,
    LibraryMissingError,
    MessageSettledError,
    QueueTypeError,
    SchemaValidationError,
)
from .message import Message
from .meta import QueueMeta
from .producer import Outgoing, Producer, partition_for

__all__ = [
    "AgentQueueError",
    "ClientConfig",
    "ConfigError",
    "Consumer",
    "DecodeError",
    "Envelope",
    "LibraryMissingError",
    "Message",
    "MessageSettledError",
    "Outgoing",
    "PayloadSchema",
    "Producer",
    "QueueMeta",
    "QueueTypeError",
    "RetryPolicy",
    "SchemaValidationError",
    "backoff_ms",
    "decode_fields",
    "encode_fields",
    "encode_payload",
    "partition_for",
]
