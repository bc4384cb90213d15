"""The envelope codec: round trips, and hostile input that must give a DecodeError with a
reason — never another exception."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentqueue_client.codec import (
    MAX_PAYLOAD_BYTES,
    Envelope,
    PayloadSchema,
    check_headers,
    check_idempotency_key,
    decode_element,
    decode_fields,
    encode_element,
    encode_fields,
    encode_payload,
    parse_json,
)
from agentqueue_client.errors import ConfigError, DecodeError, SchemaValidationError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30)
idem_keys = st.text(alphabet=st.characters(min_codepoint=0x20, blacklist_categories=("Cs",),
                                           blacklist_characters="\x7f"),
                    min_size=1, max_size=100)
header_maps = st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=5)


def _stored(fields: dict[str, bytes]) -> dict[bytes, bytes]:
    """What redis-py hands back for an entry: bytes names and values."""
    return {k.encode(): v for k, v in fields.items()}


@given(payload=json_values, key=st.none() | idem_keys, headers=header_maps,
       attempt=st.integers(min_value=0, max_value=1000), error=st.none() | st.text())
def test_stream_round_trip(payload: Any, key: str | None, headers: dict[str, str],
                           attempt: int, error: str | None) -> None:
    env = Envelope(encode_payload(payload), key, headers, attempt, error)
    back = decode_fields(_stored(encode_fields(env)))
    assert back.idempotency_key == key
    assert dict(back.headers) == headers
    assert back.attempt == attempt
    assert back.error == (error.encode("utf-8", "replace").decode("utf-8", "replace")
                          if error is not None else None)
    assert parse_json(back.body) == payload


@given(body=st.binary(max_size=300), key=st.none() | idem_keys, headers=header_maps,
       priority=st.integers(min_value=0, max_value=9))
def test_element_round_trip_with_binary_payloads(body: bytes, key: str | None,
                                                 headers: dict[str, str], priority: int) -> None:
    raw = encode_element(Envelope(body, key, headers), "m-1", priority)
    msg_id, prio, env = decode_element(raw)
    assert (msg_id, prio, env.body, env.idempotency_key, dict(env.headers)) == (
        "m-1", priority, body, key, headers)


@given(st.dictionaries(st.binary(max_size=8) | st.text(max_size=8),
                       st.binary(max_size=64) | st.text(max_size=64), max_size=6))
def test_arbitrary_field_maps_never_crash(fields: dict[Any, Any]) -> None:
    try:
        decode_fields(fields)
    except DecodeError as exc:
        assert exc.reason


@given(st.binary(max_size=400))
def test_arbitrary_elements_never_crash(raw: bytes) -> None:
    try:
        decode_element(raw)
    except DecodeError as exc:
        assert exc.reason


@given(st.binary(max_size=400))
def test_arbitrary_payloads_parse_or_fail_cleanly(raw: bytes) -> None:
    try:
        parse_json(raw)
    except DecodeError as exc:
        assert exc.reason


@pytest.mark.parametrize("fields, reason", [
    ({b"k": b"x"}, "missing payload field 'd'"),
    ({b"d": b"1", b"x.id": b"1-0"}, "reserved dead-letter field"),
    ({b"d": b"1", b"x.error": b"forged"}, "reserved dead-letter field"),
    ({b"d": b"1", b"zzz": b"?"}, "unknown field"),
    ({b"d": b"1", b"\xff\xfe": b"?"}, "field name is not UTF-8"),
    ({b"d": b"1", b"a": b"-1"}, "field 'a'"),
    ({b"d": b"1", b"a": b"1e3"}, "field 'a'"),
    ({b"d": b"1", b"a": b"99999999999999999999"}, "field 'a'"),
    ({b"d": b"1", b"h": b"[1,2]"}, "field 'h'"),
    ({b"d": b"1", b"h": b'{"a": 1}'}, "field 'h'"),
    ({b"d": b"1", b"h": b"{" * 100_000}, "field 'h'"),
    ({b"d": b"1", b"k": b"\xff"}, "field 'k' is not valid UTF-8"),
    ({b"d": b"1", b"k": b""}, "field 'k' is empty"),
    ({b"d": b"1", b"k": b"x" * 10_000}, "field 'k' longer"),
    ({b"d": b"x" * (MAX_PAYLOAD_BYTES + 1)}, "payload larger"),
    ("not a mapping", "entry is not a field map"),
    ({b"d": [1, 2]}, "field 'd' of type list"),
])
def test_hostile_fields(fields: Any, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_fields(fields)
    assert reason in info.value.reason


@pytest.mark.parametrize("body, reason", [
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b"{not json", "not valid JSON"),
    (b"NaN", "not valid JSON"),
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    (b"1" * 10_000, "not valid JSON"),  # above Python's int digit limit
    (b"", "not valid JSON"),
])
def test_hostile_payloads(body: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_json(body)
    assert reason in info.value.reason


@pytest.mark.parametrize("raw, reason", [
    (b'{"d": "x"}', "message id"),
    (b'{"i": "1", "d": "x", "b": "eA=="}', "exactly one"),
    (b'{"i": "1", "b": "***"}', "base64"),
    (b'{"i": "1", "d": "x", "x.id": "1"}', "reserved"),
    (b'{"i": "1", "d": "x", "what": 1}', "unknown field"),
    (b'{"i": "1", "d": "x", "a": "3"}', "field 'a'"),
    (b'{"i": "1", "d": "x", "p": true}', "field 'p'"),
    (b'{"i": "1", "d": 5}', "field 'd'"),
    (b"[]", "not a JSON object"),
    (b"\xff", "not a valid JSON envelope"),
])
def test_hostile_elements(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_element(raw)
    assert reason in info.value.reason


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=20)
@given(size=st.integers(min_value=MAX_PAYLOAD_BYTES - 2, max_value=MAX_PAYLOAD_BYTES + 2))
def test_payload_size_limit_is_exact(size: int) -> None:
    fields = {b"d": b"0" * size}
    if size <= MAX_PAYLOAD_BYTES:
        assert len(decode_fields(fields).body) == size
    else:
        with pytest.raises(DecodeError):
            decode_fields(fields)


def test_encode_payload_rules() -> None:
    assert encode_payload(b"\x00raw") == b"\x00raw"
    assert encode_payload("hi") == b'"hi"'
    assert encode_payload({"é": 1}) == '{"é":1}'.encode()
    with pytest.raises(ValueError, match="JSON"):
        encode_payload(float("nan"))
    with pytest.raises(ValueError, match="JSON"):
        encode_payload(object())


def test_producer_side_checks() -> None:
    assert check_idempotency_key("order-1") == "order-1"
    for bad in ("", "a\nb", "x" * 600, "\x7f", "\ud800"):
        with pytest.raises(ValueError):
            check_idempotency_key(bad)
    assert check_headers({"a": "b"}) == {"a": "b"}
    for bad_headers in ({"a": 1}, {i: "x" for i in range(1)}, {str(i): "" for i in range(65)}):
        with pytest.raises(ValueError):
            check_headers(bad_headers)  # type: ignore[arg-type]


def test_schema() -> None:
    schema = PayloadSchema(json.dumps({"type": "object", "required": ["n"],
                                       "properties": {"n": {"type": "integer"},
                                                      "tags": {"type": "array",
                                                               "items": {"type": "string"}}}}))
    schema.validate({"n": 1, "tags": ["a"]})
    with pytest.raises(SchemaValidationError) as info:
        schema.validate({"n": 1, "tags": ["a", 2]})
    assert info.value.path == "$.tags[1]"
    with pytest.raises(SchemaValidationError, match="'n' is a required property"):
        schema.validate({})
    with pytest.raises(ConfigError):
        PayloadSchema('{"type": 12}')
    with pytest.raises(ConfigError):
        PayloadSchema("{nope")


# ---- the wire format and odd-but-valid values -------------------------------------------------

def test_element_wire_format_is_compact_utf8_json() -> None:
    # Compact and not \u-escaped: the element's size stays close to the payload's, which
    # is what the consumer's element size limit (payload + headers + 4096) assumes.
    assert encode_element(Envelope('{"n":"é"}'.encode()), "m-1") == (
        '{"i":"m-1","d":"{\\"n\\":\\"é\\"}"}'.encode())
    assert encode_element(Envelope(b"\xff", "k", {"h": "v"}, 2, "boom"), "m-1", 3) == (
        b'{"i":"m-1","b":"/w==","k":"k","h":{"h":"v"},"a":2,"e":"boom","p":3}')


def test_element_priority_defaults_to_zero() -> None:
    assert decode_element(encode_element(Envelope(b"{}"), "m-1"))[1] == 0


def test_field_values_may_be_text_or_numbers() -> None:
    # Field maps from clients decoding replies (str) or returning numbers, as accepted.
    env = decode_fields({"d": "{}", "a": 3, "k": "é"})
    assert (env.body, env.attempt, env.idempotency_key) == (b"{}", 3, "é")
    assert decode_fields({"d": 1.5, "k": "x"}).body == b"1.5"


def test_lone_surrogates_in_text_fields_pass_as_bytes_not_exceptions() -> None:
    # Hostile input never raises anything but DecodeError: a lone surrogate in a text
    # payload keeps its (invalid) UTF-8 bytes, and parse_json then refuses those.
    assert decode_fields({"d": "\ud800", "k": "x"}).body == b"\xed\xa0\x80"
    with pytest.raises(DecodeError, match="^payload is not valid UTF-8$"):
        parse_json(decode_fields({"d": "\ud800", "k": "x"}).body)


def test_error_field_survives_text_that_is_not_utf8() -> None:
    # A producer's error text with a lone surrogate (from str(exc) of a bad file name)
    # is sent with "?" in its place, not refused.
    assert encode_fields(Envelope(b"1", error="bad \ud800"))["e"] == b"bad ?"
    # Read back: invalid bytes become U+FFFD, and the cut at 8 KiB splits no character.
    assert decode_fields({b"d": b"1", b"e": b"bad \xff"}).error == "bad \ufffd"
    error = decode_fields({b"d": b"1", b"e": ("x" + "é" * 5000).encode()}).error
    assert error == "x" + "é" * 4095 + "\ufffd"


@pytest.mark.parametrize("number", [
    -9223372036854775809,  # one below the 64-bit range: 19 digits
    18446744073709551616,  # one above the unsigned 64-bit range
    123456789012345678901234567890,
])
def test_integers_beyond_64_bits_stay_exact(number: int) -> None:
    # orjson would read them as floats, silently dropping digits.
    parsed = parse_json(encode_payload({"id": number, "score": 0.5}))
    assert parsed == {"id": number, "score": 0.5} and type(parsed["id"]) is int


@pytest.mark.parametrize(("body", "value"), [
    (b"[1.5, 123456789012345678901]", [1.5, 123456789012345678901]),
    (b"[0.1234567890123456789]", [0.1234567890123456789]),
    (b'"1234567890123456789012"', "1234567890123456789012"),
    (b"1" * 19, 1111111111111111111),  # 19 digits, still inside 64 bits
])
def test_payloads_with_long_numbers_parse_like_the_standard_parser(body: bytes,
                                                                   value: Any) -> None:
    assert parse_json(body) == value == json.loads(body)


@pytest.mark.parametrize(("body", "reason"), [
    (b"NaN", "payload is not valid JSON: NaN is not JSON"),
    (b"[-Infinity]", "payload is not valid JSON: -Infinity is not JSON"),
    (b"1e400", "payload is not valid JSON: number 1e400 is out of range (it would be "
               "infinite)"),
    (b"[" + b"9" * 45 + b"e999]", "payload is not valid JSON: number " + "9" * 40
     + " is out of range (it would be infinite)"),
    (b"[1.5, 123456789012345678901, 1e999]", "payload is not valid JSON: number 1e999 is "
                                             "out of range (it would be infinite)"),
    (b"{nope", "payload is not valid JSON: Expecting property name enclosed in double "
               "quotes: line 1 column 2 (char 1)"),
])
def test_json_refusals_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_json(body)
    assert info.value.reason == reason


def test_json_refusal_reason_is_bounded() -> None:
    # Python's own text for an over-long integer is longer than the 120 characters kept.
    with pytest.raises(DecodeError) as info:
        parse_json(b"1" * 10_000)
    prefix = "payload is not valid JSON: "
    assert info.value.reason.startswith(prefix + "Exceeds the limit (4300 digits) for integer")
    assert len(info.value.reason) == len(prefix) + 120


# ---- the schema's texts ----------------------------------------------------------------------

def test_schema_keeps_its_text() -> None:
    text = '{"type": "object"}'
    assert PayloadSchema(text).text == text  # the client compares it to the queue's meta


@pytest.mark.parametrize(("text", "reason", "cut"), [
    # jsonschema's text for this one runs on (the metaschema path): cut at 200 characters
    ('{"type": 12}', "12 is not valid under any of the given schemas", True),
    ("{nope", "Expecting property name enclosed in double quotes", False),
])
def test_invalid_schema_says_why_within_a_bound(text: str, reason: str, cut: bool) -> None:
    with pytest.raises(ConfigError) as info:
        PayloadSchema(text)
    message = str(info.value)
    prefix = "the queue's JSON Schema is invalid: "
    assert message.startswith(prefix + reason)
    assert (len(message) == len(prefix) + 200) if cut else (len(message) < len(prefix) + 200)


def test_schema_violation_reason_is_bounded() -> None:
    schema = PayloadSchema(json.dumps({"enum": [f"value-{i:03}" for i in range(100)]}))
    with pytest.raises(SchemaValidationError) as info:
        schema.validate("zz")
    assert info.value.reason.startswith("'zz' is not one of ['value-000', ")
    assert len(info.value.reason) == 300 and info.value.path == "$"


def test_schema_validation_of_a_too_deep_payload_is_a_validation_error() -> None:
    schema = PayloadSchema('{"items": {"$ref": "#"}}')
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(SchemaValidationError) as info:
        schema.validate(deep)
    assert info.value.reason == "payload nested too deeply to validate"


def test_schema_without_jsonschema_is_refused_naming_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The client alone (no `schema` extra) refuses a queue with a schema, never skips it."""
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # import jsonschema -> ImportError
    with pytest.raises(ConfigError) as err:
        PayloadSchema('{"type": "object"}')
    assert str(err.value) == ("this queue has a JSON Schema and validating it needs "
                              "jsonschema: pip install 'agentqueue-client[schema]'")
