"""Reading and writing JSON fields: the helpers the state text (``codec``) and the journal
records (``records``) share. Every error is a ``StateError`` naming the field."""

from __future__ import annotations

import base64
import binascii
import json
import math
import sys
from typing import Any

from .errors import StateError

__all__ = ["Fields", "b64", "b64decode", "dump", "parse_json"]


if sys.version_info >= (3, 11):

    def b64decode(text: str) -> bytes:
        return binascii.a2b_base64(text, strict_mode=True)

else:  # pragma: no cover

    def b64decode(text: str) -> bytes:
        return base64.b64decode(text, validate=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def dump(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _reject_constant(name: str) -> None:
    raise StateError(f"state text holds {name}, which is not a valid number")


def parse_json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise StateError(f"state text is not valid JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise StateError(f"state text is not valid JSON: {exc}") from None


class Fields:
    """Reads the fields of one JSON object, naming ``where`` in every error."""

    __slots__ = ("obj", "where")

    def __init__(self, obj: object, where: str, keys: frozenset[str]) -> None:
        if not isinstance(obj, dict):
            raise StateError(f"{where}: expected an object, got {type(obj).__name__}")
        if obj.keys() == keys:  # the usual case, in one comparison
            self.obj: dict[str, Any] = obj
            self.where = where
            return
        missing = keys - obj.keys()
        if missing:
            raise StateError(f"{where}: missing field {sorted(missing)[0]!r}")
        extra = obj.keys() - keys
        if extra:
            raise StateError(f"{where}: unknown field {sorted(extra)[0]!r}")
        self.obj = obj
        self.where = where

    def fail(self, key: str, what: str) -> StateError:
        return StateError(f"{self.where}.{key}: {what}, got {self.obj[key]!r:.80}")

    def get_int(self, key: str, lo: int, hi: int) -> int:
        v = self.obj[key]
        if type(v) is not int or not lo <= v <= hi:
            raise self.fail(key, f"expected an integer {lo}..{hi}")
        return v

    def get_opt_int(self, key: str, lo: int, hi: int) -> int | None:
        return None if self.obj[key] is None else self.get_int(key, lo, hi)

    def get_bool(self, key: str) -> bool:
        v = self.obj[key]
        if type(v) is not bool:
            raise self.fail(key, "expected true or false")
        return v

    def get_str(self, key: str, nonempty: bool = False) -> str:
        v = self.obj[key]
        if not isinstance(v, str) or (nonempty and not v):
            raise self.fail(key, "expected a non-empty string" if nonempty else "expected a string")
        if "\x00" in v:
            raise self.fail(key, "must not contain U+0000")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise self.fail(key, "expected valid UTF-8 text") from None
        return v

    def get_opt_str(self, key: str) -> str | None:
        return None if self.obj[key] is None else self.get_str(key)

    def get_opt_time(self, key: str) -> float | None:
        v = self.obj[key]
        if v is None:
            return None
        try:
            t = float(v) if type(v) in (int, float) else math.nan
        except OverflowError:
            t = math.nan
        if not math.isfinite(t):
            raise self.fail(key, "expected a time in seconds or null")
        return t

    def get_bytes(self, key: str) -> bytes:
        v = self.obj[key]
        if not isinstance(v, str):
            raise self.fail(key, "expected base64 text")
        if not v:
            return b""
        try:
            return b64decode(v)
        except (binascii.Error, ValueError):
            raise self.fail(key, "expected base64 text") from None

    def get_list(self, key: str) -> list[Any]:
        v = self.obj[key]
        if not isinstance(v, list):
            raise self.fail(key, "expected a list")
        return v
