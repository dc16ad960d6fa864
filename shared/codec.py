"""The services' codec: the SDK's (`switchboard_sdk.codec`, the one JSON codec for wire messages)
plus the decoding of events as the union of every kind."""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from shared.contracts import AnyEvent, Event
from switchboard_sdk.codec import DecodeError, decode, dumps, encode, invalid, loads

__all__ = ["DecodeError", "decode", "decode_event", "dumps", "encode", "loads"]

_EVENT = TypeAdapter(AnyEvent)
_STAMPED = ("event_id", "ts", "env", "service")  # what the emitting bus fills in


def decode_event(data: bytes) -> Event:
    """An event as its kind's model; an unknown kind, a missing field or an unstamped envelope
    is a `DecodeError`."""
    try:
        event = _EVENT.validate_json(data)
    except ValidationError as exc:
        raise invalid(exc) from exc
    missing = [name for name in _STAMPED if not getattr(event, name)]
    if missing:
        raise DecodeError(f"invalid event: envelope lacks {', '.join(missing)}")
    return event
