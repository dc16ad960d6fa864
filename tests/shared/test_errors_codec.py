"""shared.errors (the error tree and its two wire functions) and shared.codec (the one codec)."""

from __future__ import annotations

import pytest

from shared import codec
from shared.contracts import ErrorInfo, InvokeRequest, TraceRequest
from switchboard_sdk import errors


def all_error_classes() -> list[type[errors.SwitchboardError]]:
    out, todo = [], [errors.SwitchboardError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


ERROR_CLASSES = all_error_classes()


def test_the_tree_has_the_documented_codes_and_each_code_is_unique():
    codes = [cls.code for cls in ERROR_CLASSES]
    assert len(codes) == len(set(codes)), sorted(codes)
    for code in ("invalid_request", "payload_too_large", "unknown_workflow", "unavailable", "internal"):
        assert code in codes


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_round_trip_keeps_class_code_message_retryable_and_details(cls):
    original = cls("it broke", details=[{"loc": "messages", "msg": "too short"}])

    wire = errors.to_wire(original)
    # through the real codec, as it travels
    back = errors.from_wire(codec.decode(codec.encode(wire), ErrorInfo))

    assert type(back) is cls
    assert back.code == cls.code == wire.code
    assert back.retryable is cls.retryable
    assert back.message == "it broke"
    assert back.details == [{"loc": "messages", "msg": "too short"}]


def test_retryable_is_carried_on_the_wire():
    assert errors.to_wire(errors.BudgetUnavailable("x")).retryable is True
    assert errors.to_wire(errors.InvalidRequest("x")).retryable is False


def test_router_unavailable_is_still_importable_and_caught_as_unavailable():
    """Agent code written for SDK 0.1.0 names it in `except` clauses; planning moved into the
    gateway, so nothing raises it any more, but the name and its place in the tree stay."""
    from switchboard_sdk.errors import RouterUnavailable

    assert issubclass(RouterUnavailable, errors.Unavailable)
    assert RouterUnavailable.code == "router_unavailable"
    assert RouterUnavailable.retryable is True
    # an older gateway's wire error still arrives as the class agents catch
    try:
        raise errors.from_wire(ErrorInfo(code="router_unavailable", message="m", retryable=True))
    except errors.Unavailable as caught:
        assert type(caught) is RouterUnavailable


def test_unknown_code_becomes_the_base_class_keeping_the_code():
    back = errors.from_wire(ErrorInfo(code="quota_melted", message="later", retryable=True))

    assert type(back) is errors.SwitchboardError
    assert back.code == "quota_melted"
    assert back.retryable is True
    assert back.message == "later"
    # the class attribute is untouched
    assert errors.SwitchboardError.code == "internal"


def test_a_foreign_exception_becomes_internal():
    wire = errors.to_wire(KeyError("boom"))

    assert wire.code == "internal"
    assert wire.retryable is False
    assert "KeyError" in wire.message


def test_payload_too_large_is_an_invalid_request():
    assert isinstance(
        errors.from_wire(ErrorInfo(code="payload_too_large", message="")), errors.InvalidRequest
    )


def test_decode_valid_message():
    req = codec.decode(b'{"invocation_id": "abc"}', TraceRequest)
    assert req == TraceRequest(invocation_id="abc")


def test_encode_leaves_out_none():
    assert codec.encode(ErrorInfo(code="x", message="y")) == b'{"code":"x","message":"y","retryable":false}'


def test_decode_wrong_type_names_the_location():
    data = (
        b'{"invocation_id": "a", "workflow": "w", "messages": [{"role": "user", "content": 3}], '
        b'"max_tokens": "many"}'
    )

    with pytest.raises(codec.DecodeError) as caught:
        codec.decode(data, InvokeRequest)

    exc = caught.value
    assert isinstance(exc, ValueError)
    assert str(exc).startswith("invalid message at messages.0.content: ")
    assert {d["loc"] for d in exc.details} == {"messages.0.content", "max_tokens"}


def test_decode_missing_and_unknown_fields_are_listed():
    with pytest.raises(codec.DecodeError) as caught:
        codec.decode(b'{"workflow": "w", "messages": [], "colour": "red"}', InvokeRequest)

    locs = {d["loc"]: d["msg"] for d in caught.value.details}
    assert locs.keys() == {"invocation_id", "messages", "colour"}
    assert locs["invocation_id"] == "Field required"
    assert locs["colour"] == "Extra inputs are not permitted"


def test_decode_not_json_says_where():
    with pytest.raises(codec.DecodeError) as caught:
        codec.decode(b'{"invocation_id": "a",, }', TraceRequest)

    message = str(caught.value)
    assert "Invalid JSON" in message
    assert "line 1 column 23" in message


def test_decode_json_of_the_wrong_shape():
    with pytest.raises(codec.DecodeError) as caught:
        codec.decode(b"[1, 2]", TraceRequest)
    assert "object" in str(caught.value)


def test_loads_not_json():
    assert codec.loads(b'{"a": [1]}') == {"a": [1]}
    with pytest.raises(codec.DecodeError) as caught:
        codec.loads(b"\xff\xfe")
    assert str(caught.value).startswith("not JSON: ")
