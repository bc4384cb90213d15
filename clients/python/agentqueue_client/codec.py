"""The message envelope: encoding, decoding and validation. Pure (no I/O).

A stream entry carries the fields of ``docs/design.md``::

    d   payload bytes (JSON text when the SDK produced it from a Python object)
    k   idempotency key          (optional)
    h   headers, a JSON object of strings (optional; ``traceparent`` lives here)
    a   attempt number of a retried message (absent: 0)
    e   last error of a retried message

List and PubSub elements are one JSON object with the same short names plus ``i`` (the
message id) and ``p`` (the priority level); a payload that is not valid UTF-8 travels
base64-encoded in ``b`` instead of ``d``.

Policy for entries read from a live queue (decided here, enforced by the consumer):

* ``d`` is required; ``k``, ``h``, ``a`` and ``e`` are validated (types, sizes).
* ``x.*`` fields are reserved for the dead-letter stream. A live entry carrying one was
  forged or replayed without the SDK's tools, so it is rejected.
* Any other unknown field is rejected too. The envelope has no version number, so an
  unknown field means a producer that does not follow the contract; rejecting it puts
  the entry in the dead-letter queue, where it can be inspected and replayed once the
  consumers understand it. Silently dropping data could not be undone.

Rejections raise :class:`DecodeError` with a short reason; hostile input (invalid UTF-8,
deep nesting, huge numbers, huge payloads, wrong types) never raises anything else.

Example::

    >>> fields = encode_fields(Envelope(body=encode_payload({"n": 1}), idempotency_key="o-1"))
    >>> env = decode_fields(fields)
    >>> parse_json(env.body), env.idempotency_key
    ({'n': 1}, 'o-1')
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

try:  # optional accelerator; the standard parser is the reference
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]
from .errors import ConfigError, DecodeError, SchemaValidationError, describe

MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
MAX_KEY_BYTES = 512
MAX_HEADERS_BYTES = 64 * 1024
MAX_HEADERS = 64
MAX_ATTEMPT = 1_000_000
MAX_ERROR_BYTES = 8 * 1024

PAYLOAD, KEY, HEADERS, ATTEMPT, ERROR = "d", "k", "h", "a", "e"
ENVELOPE_FIELDS = frozenset({PAYLOAD, KEY, HEADERS, ATTEMPT, ERROR})
_PAYLOAD_B = PAYLOAD.encode()
DLQ_PREFIX = "x."
DLQ_FIELDS = ("x.id", "x.deliveries", "x.group", "x.consumer", "x.error", "x.time")
# List/PubSub elements only.
ELEMENT_ID, ELEMENT_PRIORITY, ELEMENT_BINARY = "i", "p", "b"


@dataclass(frozen=True)
class Envelope:
    """One message as it travels: the payload bytes and its metadata."""

    body: bytes
    idempotency_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 0
    error: str | None = None


# --- encoding (producer side) -----------------------------------------------------------

def encode_payload(payload: Any) -> bytes:
    """Bytes pass through unchanged; anything else becomes compact JSON text (UTF-8).

    ``str`` is JSON-encoded too (``"hi"`` → ``b'"hi"'``), so consumers that expect JSON
    always get JSON. NaN and infinities are refused (not JSON).
    """
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"payload is not JSON-serialisable: {exc}") from None


def check_idempotency_key(key: str) -> str:
    """Validate a producer's idempotency key: 1..512 UTF-8 bytes, no control characters."""
    if not isinstance(key, str) or not key:
        raise ValueError("idempotency key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"idempotency key longer than {MAX_KEY_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ValueError("idempotency key contains control characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("idempotency key is not valid Unicode") from None
    return key


def check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers are a small map of strings to strings."""
    if not isinstance(headers, Mapping):
        raise ValueError("headers must be a mapping of str to str")
    if len(headers) > MAX_HEADERS:
        raise ValueError(f"more than {MAX_HEADERS} headers")
    out: dict[str, str] = {}
    for k, v in headers.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError("headers must be a mapping of str to str")
        out[k] = v
    if len(_headers_json(out)) > MAX_HEADERS_BYTES:
        raise ValueError(f"headers larger than {MAX_HEADERS_BYTES} bytes")
    return out


def _headers_json(headers: Mapping[str, str]) -> bytes:
    return json.dumps(dict(headers), separators=(",", ":"), ensure_ascii=False).encode()


def encode_fields(env: Envelope) -> dict[str, bytes]:
    """The stream entry fields of an envelope (``d`` first)."""
    fields: dict[str, bytes] = {PAYLOAD: env.body}
    if env.idempotency_key is not None:
        fields[KEY] = env.idempotency_key.encode("utf-8")
    if env.headers:
        fields[HEADERS] = _headers_json(env.headers)
    if env.attempt:
        fields[ATTEMPT] = str(env.attempt).encode()
    if env.error is not None:
        fields[ERROR] = env.error.encode("utf-8", "replace")
    return fields


def encode_element(env: Envelope, message_id: str, priority: int = 0) -> bytes:
    """A List/PubSub element: one JSON object (see the module docstring)."""
    obj: dict[str, Any] = {ELEMENT_ID: message_id}
    try:
        obj[PAYLOAD] = env.body.decode("utf-8")
    except UnicodeDecodeError:
        obj[ELEMENT_BINARY] = base64.b64encode(env.body).decode("ascii")
    if env.idempotency_key is not None:
        obj[KEY] = env.idempotency_key
    if env.headers:
        obj[HEADERS] = dict(env.headers)
    if env.attempt:
        obj[ATTEMPT] = env.attempt
    if env.error is not None:
        obj[ERROR] = env.error
    if priority:
        obj[ELEMENT_PRIORITY] = priority
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- decoding (consumer side) -----------------------------------------------------------

def _name(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"field name is not UTF-8: {describe(raw)}") from None


def _bytes(raw: bytes | str | int | float) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    return str(raw).encode()


def _text(name: str, raw: bytes, limit: int) -> str:
    if len(raw) > limit:
        raise DecodeError(f"field {name!r} longer than {limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"field {name!r} is not valid UTF-8") from None


def _attempt(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 7:
        raise DecodeError(f"field 'a' is not a small non-negative integer: {describe(raw)}")
    value = int(raw)
    if value > MAX_ATTEMPT:
        raise DecodeError(f"field 'a' is larger than {MAX_ATTEMPT}")
    return value


def _headers(raw: bytes) -> dict[str, str]:
    if len(raw) > MAX_HEADERS_BYTES:
        raise DecodeError(f"field 'h' larger than {MAX_HEADERS_BYTES} bytes")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise DecodeError("field 'h' is not valid JSON") from None
    return _header_map(obj)


def _header_map(obj: Any) -> dict[str, str]:
    if not isinstance(obj, dict) or len(obj) > MAX_HEADERS or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
        raise DecodeError("field 'h' is not a JSON object of strings")
    return obj


def decode_fields(fields: Mapping[bytes, bytes] | Mapping[str, str] | Any, *,
                  max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> Envelope:
    """Validate a live stream entry's fields and return its envelope.

    Raises :class:`DecodeError` (with a reason) for anything that is not a valid
    envelope, including ``x.*`` and unknown fields (see the module docstring).
    """
    if type(fields) is dict and len(fields) == 1:
        # The common entry, a payload and nothing else: skip the general walk.
        body = fields.get(_PAYLOAD_B)
        if type(body) is bytes and len(body) <= max_payload_bytes:
            return Envelope(body=body)
    if not isinstance(fields, Mapping):
        raise DecodeError(f"entry is not a field map: {type(fields).__name__}")
    values: dict[str, bytes] = {}
    for raw_name, raw_value in fields.items():
        if not isinstance(raw_name, bytes | str):
            raise DecodeError(f"field name of type {type(raw_name).__name__}")
        name = _name(raw_name)
        if name.startswith(DLQ_PREFIX):
            raise DecodeError(f"reserved dead-letter field {describe(name)} in a live entry")
        if name not in ENVELOPE_FIELDS:
            raise DecodeError(f"unknown field {describe(name)}")
        if not isinstance(raw_value, bytes | str | int | float):
            raise DecodeError(f"field {name!r} of type {type(raw_value).__name__}")
        values[name] = _bytes(raw_value)
    if PAYLOAD not in values:
        raise DecodeError("missing payload field 'd'")
    body = values[PAYLOAD]
    if len(body) > max_payload_bytes:
        raise DecodeError(f"payload larger than {max_payload_bytes} bytes ({len(body)})")
    key = None
    if KEY in values:
        key = _text(KEY, values[KEY], MAX_KEY_BYTES)
        if not key:
            raise DecodeError("field 'k' is empty")
    headers = _headers(values[HEADERS]) if HEADERS in values else {}
    attempt = _attempt(values[ATTEMPT]) if ATTEMPT in values else 0
    error = None
    if ERROR in values:
        error = values[ERROR][:MAX_ERROR_BYTES].decode("utf-8", "replace")
    return Envelope(body=body, idempotency_key=key, headers=headers, attempt=attempt,
                    error=error)


def decode_element(raw: bytes | str, *,
                   max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> tuple[str, int, Envelope]:
    """Validate a List/PubSub element; return ``(message id, priority, envelope)``."""
    data = _bytes(raw)
    if len(data) > max_payload_bytes + MAX_HEADERS_BYTES + 4096:
        raise DecodeError(f"element larger than {max_payload_bytes} bytes ({len(data)})")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise DecodeError("element is not a valid JSON envelope") from None
    if not isinstance(obj, dict):
        raise DecodeError("element is not a JSON object")
    allowed = ENVELOPE_FIELDS | {ELEMENT_ID, ELEMENT_PRIORITY, ELEMENT_BINARY}
    for name in obj:
        if name.startswith(DLQ_PREFIX):
            raise DecodeError(f"reserved dead-letter field {describe(name)} in a live entry")
        if name not in allowed:
            raise DecodeError(f"unknown field {describe(name)}")
    msg_id = obj.get(ELEMENT_ID)
    if not isinstance(msg_id, str) or not msg_id or len(msg_id) > 128:
        raise DecodeError("element has no valid message id 'i'")
    priority = obj.get(ELEMENT_PRIORITY, 0)
    if type(priority) is not int or not 0 <= priority < 1000:
        raise DecodeError("field 'p' is not a small non-negative integer")
    if (PAYLOAD in obj) == (ELEMENT_BINARY in obj):
        raise DecodeError("element needs exactly one of 'd' (text) and 'b' (base64)")
    if PAYLOAD in obj:
        if not isinstance(obj[PAYLOAD], str):
            raise DecodeError("field 'd' is not a string")
        body = obj[PAYLOAD].encode("utf-8", "surrogatepass")
    else:
        if not isinstance(obj[ELEMENT_BINARY], str):
            raise DecodeError("field 'b' is not a string")
        try:
            body = base64.b64decode(obj[ELEMENT_BINARY], validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError("field 'b' is not valid base64") from None
    if len(body) > max_payload_bytes:
        raise DecodeError(f"payload larger than {max_payload_bytes} bytes ({len(body)})")
    key = obj.get(KEY)
    if key is not None and (not isinstance(key, str) or not key
                            or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES):
        raise DecodeError("field 'k' is not a valid idempotency key")
    headers = _header_map(obj[HEADERS]) if HEADERS in obj else {}
    attempt = obj.get(ATTEMPT, 0)
    if type(attempt) is not int or not 0 <= attempt <= MAX_ATTEMPT:
        raise DecodeError("field 'a' is not a small non-negative integer")
    error = obj.get(ERROR)
    if error is not None and not isinstance(error, str):
        raise DecodeError("field 'e' is not a string")
    return msg_id, priority, Envelope(body=body, idempotency_key=key, headers=headers,
                                      attempt=attempt, error=error)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one beyond a double's range (``1e999999``) would
    become an infinity, which JSON cannot express: refused like NaN."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range (it would be infinite)")
    return value


# One decoder for every payload: json.loads(..., parse_constant=...) builds a new one
# per call, which cost more than the parse of a small payload.
_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)

# orjson reads an integer beyond 64 bits as a float, silently dropping digits (ijl/orjson
# issue 308), where the standard parser keeps it exact. Such an integer has at least 19
# digits in a row (-9223372036854775809), so a body with a run that long (a long
# decimal too, or a long digit string: rare) goes to the standard parser. One C-speed
# pass: digits become "0", anything else a space.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def parse_json(body: bytes) -> Any:
    """Parse a payload as strict JSON (UTF-8, no NaN/Infinity); :class:`DecodeError`."""
    if orjson is not None and _LONG_DIGIT_RUN not in body.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # let the standard parser decide and word the reason
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("payload is not valid UTF-8") from None
    try:
        return _STRICT_JSON.decode(text)
    except RecursionError:
        raise DecodeError("payload JSON is nested too deeply") from None
    except ValueError as exc:
        raise DecodeError(f"payload is not valid JSON: {str(exc)[:120]}") from None


# --- schema -------------------------------------------------------------------------------

class PayloadSchema:
    """A compiled JSON Schema (draft 2020-12).

    >>> PayloadSchema('{"type": "object", "required": ["n"]}').validate({"n": 1})
    """

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            # Only queues with a schema need jsonschema (the client's `schema` extra); without
            # it the queue is refused, never read or written unvalidated.
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError
        except ImportError:
            raise ConfigError(
                "this queue has a JSON Schema and validating it needs jsonschema: "
                "pip install 'agentqueue-client[schema]'") from None
        try:
            schema = json.loads(text)
            Draft202012Validator.check_schema(schema)
        except (ValueError, SchemaError) as exc:
            raise ConfigError(f"the queue's JSON Schema is invalid: {str(exc)[:200]}") from None
        self._validator = Draft202012Validator(schema)

    def validate(self, payload: Any) -> None:
        """Raise :class:`SchemaValidationError` for the first (most relevant) violation."""
        from jsonschema.exceptions import best_match  # imported by __init__ already

        try:
            error = best_match(self._validator.iter_errors(payload))
        except RecursionError:
            raise SchemaValidationError("payload nested too deeply to validate") from None
        if error is not None:
            path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                                 for p in error.absolute_path)
            raise SchemaValidationError(error.message[:300], path)
