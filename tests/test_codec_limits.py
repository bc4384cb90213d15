"""The wire codec's limits at their exact edges, and its error texts (issue 17: mutants
moving a limit by one, or dropping an error's reason, survived the round-trip tests)."""

from __future__ import annotations

import json

import pytest

from agentqueue_client.codec import (
    MAX_ATTEMPT,
    MAX_HEADERS,
    MAX_HEADERS_BYTES,
    MAX_KEY_BYTES,
    check_headers,
    check_idempotency_key,
    decode_element,
    decode_fields,
)
from agentqueue_client.errors import DecodeError


def test_idempotency_key_edges() -> None:
    assert check_idempotency_key("k" * MAX_KEY_BYTES) == "k" * MAX_KEY_BYTES
    assert check_idempotency_key("a b~") == "a b~"  # space and ~ are printable
    with pytest.raises(ValueError, match=f"^idempotency key longer than {MAX_KEY_BYTES} bytes$"):
        check_idempotency_key("k" * (MAX_KEY_BYTES + 1))
    for bad in ("\x1f", "a\x00", "\x7f"):
        with pytest.raises(ValueError, match="^idempotency key contains control characters$"):
            check_idempotency_key(bad)
    with pytest.raises(ValueError, match="^idempotency key must be a non-empty string$"):
        check_idempotency_key("")
    with pytest.raises(ValueError, match="^idempotency key is not valid Unicode$"):
        check_idempotency_key("\ud800")  # a lone surrogate cannot be sent as UTF-8


def test_header_edges() -> None:
    many = {f"h{i}": "v" for i in range(MAX_HEADERS)}
    assert check_headers(many) == many
    with pytest.raises(ValueError, match=f"^more than {MAX_HEADERS} headers$"):
        check_headers({**many, "one-more": "v"})
    with pytest.raises(ValueError, match="^headers must be a mapping of str to str$"):
        check_headers([("a", "b")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^headers must be a mapping of str to str$"):
        check_headers({"a": 1})  # type: ignore[dict-item]
    # Size is that of the compact, non-ASCII-escaped JSON: {"k":"..."} is 8 bytes + value.
    fits = {"k": "é" * ((MAX_HEADERS_BYTES - 8) // 2)}
    assert check_headers(fits) == fits
    with pytest.raises(ValueError, match=f"^headers larger than {MAX_HEADERS_BYTES} bytes$"):
        check_headers({"k": "x" * (MAX_HEADERS_BYTES - 8 + 1)})
    assert check_headers({"k": "x" * (MAX_HEADERS_BYTES - 8)})


def test_attempt_field_edges() -> None:
    assert decode_fields({b"d": b"{}", b"a": str(MAX_ATTEMPT).encode()}).attempt == MAX_ATTEMPT
    with pytest.raises(DecodeError, match=f"^field 'a' is larger than {MAX_ATTEMPT}$"):
        decode_fields({b"d": b"{}", b"a": str(MAX_ATTEMPT + 1).encode()})
    with pytest.raises(DecodeError, match="^field 'a' is not a small non-negative integer: "):
        decode_fields({b"d": b"{}", b"a": b"0" + str(MAX_ATTEMPT).encode()})  # 8 digits


def test_stream_header_field_edges() -> None:
    with pytest.raises(DecodeError, match="^field 'h' is not valid JSON$"):
        decode_fields({b"d": b"{}", b"h": b"{nope"})
    ok = json.dumps({"k": "x" * (MAX_HEADERS_BYTES - 8)}, separators=(",", ":")).encode()
    assert len(ok) == MAX_HEADERS_BYTES
    assert decode_fields({b"d": b"{}", b"h": ok}).headers["k"]


def element(**obj: object) -> bytes:
    return json.dumps({"i": "1-0", **obj}).encode()


def test_list_element_edges() -> None:
    assert decode_element(json.dumps({"i": "x" * 128, "d": "{}"}))[0] == "x" * 128
    with pytest.raises(DecodeError, match="^element has no valid message id 'i'$"):
        decode_element(json.dumps({"i": "x" * 129, "d": "{}"}))
    assert decode_element(element(d="{}", p=999))[1] == 999
    with pytest.raises(DecodeError, match="^field 'p' is not a small non-negative integer$"):
        decode_element(element(d="{}", p=1000))
    assert decode_element(element(d="{}", a=MAX_ATTEMPT))[2].attempt == MAX_ATTEMPT
    with pytest.raises(DecodeError, match="^field 'a' is not a small non-negative integer$"):
        decode_element(element(d="{}", a=MAX_ATTEMPT + 1))
    assert decode_element(element(d="x" * 10), max_payload_bytes=10)[2].body == b"x" * 10
    with pytest.raises(DecodeError, match="^payload larger than 10 bytes \\(11\\)$"):
        decode_element(element(d="x" * 11), max_payload_bytes=10)
    # A lone surrogate in the text payload passes through as bytes (surrogatepass).
    assert decode_element(b'{"i": "1-0", "d": "\\ud800"}')[2].body == b"\xed\xa0\x80"
    with pytest.raises(DecodeError, match="^field 'd' is not a string$"):
        decode_element(element(d=5))
    with pytest.raises(DecodeError, match="^field 'b' is not a string$"):
        decode_element(element(b=5))
    with pytest.raises(DecodeError, match="^field 'e' is not a string$"):
        decode_element(element(d="{}", e=5))


def test_element_size_is_checked_before_parsing() -> None:
    limit = 10 + MAX_HEADERS_BYTES + 4096  # payload + headers + envelope overhead
    with pytest.raises(DecodeError, match="^element is not a valid JSON envelope$"):
        decode_element(b" " * limit, max_payload_bytes=10)
    with pytest.raises(DecodeError, match=f"^element larger than 10 bytes \\({limit + 1}\\)$"):
        decode_element(b" " * (limit + 1), max_payload_bytes=10)


def test_stream_fields_edges() -> None:
    with pytest.raises(DecodeError, match="^entry is not a field map: list$"):
        decode_fields([b"d"])  # one item, but not a map: the fast path must not take it
    key = "k" * MAX_KEY_BYTES
    assert decode_fields({b"d": b"{}", b"k": key.encode()}).idempotency_key == key
    with pytest.raises(DecodeError, match=f"^field 'k' longer than {MAX_KEY_BYTES} bytes$"):
        decode_fields({b"d": b"{}", b"k": key.encode() + b"k"})
    with pytest.raises(DecodeError, match="^field name of type int$"):
        decode_fields({b"d": b"{}", 5: b"x"})
    with pytest.raises(DecodeError, match="^unknown field 'zz'$"):
        decode_fields({b"d": b"{}", b"zz": b"x"})


# ---- error texts name the offending value ---------------------------------------------------

@pytest.mark.parametrize(("fields", "message"), [
    ({b"d": b"1", b"\xff\xfe": b"?"}, "field name is not UTF-8: b'\\xff\\xfe'"),
    ({b"d": b"1", b"x.id": b"1-0"}, "reserved dead-letter field 'x.id' in a live entry"),
    ({b"d": b"1", b"a": b"-1"}, "field 'a' is not a small non-negative integer: b'-1'"),
    ({b"d": b"1", b"a": b"12345678"},
     "field 'a' is not a small non-negative integer: b'12345678'"),
])
def test_stream_field_errors_name_the_offending_value(fields: dict[bytes, bytes],
                                                      message: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_fields(fields)
    assert info.value.reason == message


@pytest.mark.parametrize(("obj", "message"), [
    ({"d": "1", "x.error": "forged"}, "reserved dead-letter field 'x.error' in a live entry"),
    ({"d": "1", "what": 1}, "unknown field 'what'"),
    ({"d": "1", "k": ""}, "field 'k' is not a valid idempotency key"),
    ({"d": "1", "k": 5}, "field 'k' is not a valid idempotency key"),
    ({"d": "1", "k": "k" * (MAX_KEY_BYTES + 1)}, "field 'k' is not a valid idempotency key"),
    ({"d": "1", "h": {f"h{i}": "v" for i in range(MAX_HEADERS + 1)}},
     "field 'h' is not a JSON object of strings"),
])
def test_element_errors_say_what_is_wrong(obj: dict[str, object], message: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_element(element(**obj))
    assert info.value.reason == message


@pytest.mark.parametrize("msg_id", ["", 5, None, ["1-0"]])
def test_element_message_id_must_be_a_non_empty_string(msg_id: object) -> None:
    with pytest.raises(DecodeError, match="^element has no valid message id 'i'$"):
        decode_element(json.dumps({"i": msg_id, "d": "{}"}))


def test_element_key_and_header_limits_are_inclusive() -> None:
    key = "é" * (MAX_KEY_BYTES // 2)  # MAX_KEY_BYTES in UTF-8, half as many characters
    assert decode_element(element(d="{}", k=key))[2].idempotency_key == key
    many = {f"h{i}": "v" for i in range(MAX_HEADERS)}
    assert decode_element(element(d="{}", h=many))[2].headers == many


def test_stream_header_count_limit_is_inclusive() -> None:
    many = {f"h{i}": "v" for i in range(MAX_HEADERS)}
    raw = json.dumps(many).encode()
    assert decode_fields({b"d": b"{}", b"h": raw}).headers == many
    with pytest.raises(DecodeError, match="^field 'h' is not a JSON object of strings$"):
        decode_fields({b"d": b"{}", b"h": json.dumps({**many, "x": "v"}).encode()})


def test_payload_limit_is_inclusive_with_other_fields_too() -> None:
    # With a second field the entry takes the general walk, not the payload-only fast path.
    assert decode_fields({b"d": b"x" * 10, b"a": b"1"}, max_payload_bytes=10).body == b"x" * 10
    with pytest.raises(DecodeError, match="^payload larger than 10 bytes \\(11\\)$"):
        decode_fields({b"d": b"x" * 11, b"a": b"1"}, max_payload_bytes=10)
