"""The one JSON codec for wire messages: orjson in, pydantic models out.

The services use it too (`shared.codec` adds the decoding of their event union).
"""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class DecodeError(ValueError):
    """A wire message was not valid JSON or did not match its model."""

    def __init__(self, message: str, *, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


def encode(obj: BaseModel | dict | list) -> bytes:
    if isinstance(obj, BaseModel):
        return obj.__pydantic_serializer__.to_json(obj, exclude_none=True)
    return orjson.dumps(obj)


def decode(data: bytes, model: type[M]) -> M:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise invalid(exc) from exc


def invalid(exc: ValidationError) -> DecodeError:
    """A pydantic validation error as a `DecodeError` naming the first bad field."""
    details = [
        {"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    first = details[0] if details else {"loc": "", "msg": "invalid"}
    where = f" at {first['loc']}" if first["loc"] else ""
    return DecodeError(f"invalid message{where}: {first['msg']}", details=details)


def loads(data: bytes | str) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from exc


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj, default=_default)


def _default(obj: object) -> object:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json", exclude_none=True)
    raise TypeError(f"cannot encode {type(obj).__name__}")
