"""Store metadata files as validated frozen dataclasses: the one JSON -> dataclass loader that
the manifest, the ingest state and the index record share. Every bad value becomes
"FILE: FIELD: expected X, got Y"."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..files import check_regular_file


def parse_json(text: str, source: str, what: str) -> Any:
    """JSON text -> value; a StoreError naming `source` when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise StoreError(f"{source}: not valid JSON ({e})") from None
    except RecursionError:  # found by the fuzz test: deeply nested arrays
        raise StoreError(f"{source}: not {what} (JSON nested too deeply)") from None


# Every JSON record actdb writes carries the sha256 of its own content under this key, so an
# edited or damaged record (a flipped digit of a threshold, a removed file record, a raised
# count) is refused instead of answered from. It is a guard against accidents, not an adversary:
# whoever edits a record can recompute it, and `actdb check` says so.
CHECKSUM_KEY = "checksum"


def content_digest(raw: dict[str, Any]) -> str:
    """"sha256:HEX" of a record's content (the checksum key left out), over a canonical JSON
    form, so whitespace and key order do not matter."""
    rest = {k: v for k, v in raw.items() if k != CHECKSUM_KEY}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def seal(raw: dict[str, Any], indent: int | None = 1) -> str:
    """A record's JSON text with its checksum."""
    return json.dumps({**raw, CHECKSUM_KEY: content_digest(raw)}, indent=indent, sort_keys=True)


def unseal(raw: Any, source: str, required: bool = True) -> Any:
    """A parsed record with its checksum verified and removed. Without one: refused when
    `required` (records of this actdb always have one), else passed on (older formats)."""
    if not isinstance(raw, dict):
        return raw   # the record's own validation names what it expected
    if CHECKSUM_KEY not in raw:
        if required:
            raise StoreError(f"{source}: {CHECKSUM_KEY}: expected the record's sha256, got nothing (the file was "
                             "edited or damaged since actdb wrote it)")
        return raw
    try:
        want = content_digest(raw)
    except ValueError:   # NaN or Infinity: not JSON actdb writes
        want = None
    if raw[CHECKSUM_KEY] != want:
        raise StoreError(f"{source}: {CHECKSUM_KEY} differs from the record's content (the file was edited or "
                         "damaged since actdb wrote it); not reading it")
    return {k: v for k, v in raw.items() if k != CHECKSUM_KEY}


def read_text(path: Path) -> str | None:
    """A metadata file's text; None when it does not exist, a StoreError when it cannot be read."""
    try:
        check_regular_file(path)
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise StoreError(f"{path}: not UTF-8 text") from None
    except OSError as e:  # a folder, no permission, an I/O error
        raise StoreError(f"{path}: unreadable ({e.strerror or e})") from None


def check_version(raw: Any, source: str, readable: tuple[int, ...], current: int, key: str = "format_version",
                  old_hint: str = "") -> int:
    """The record's version field, one of `readable`; a newer one says to upgrade actdb."""
    if not isinstance(raw, dict):
        raise StoreError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get(key)
    if version not in readable or isinstance(version, bool):
        hint = ""
        if isinstance(version, int) and not isinstance(version, bool):
            hint = " (written by a newer actdb: upgrade actdb)" if version > current else old_hint
        expected = " or ".join(map(str, readable))
        raise StoreError(f"{source}: {key}: expected {expected}, got {version!r}{hint}")
    return version


def from_dict(cls: type, raw: Any, source: str, where: str = "") -> Any:
    """Build dataclass `cls` from a JSON object: every field checked against its type hint,
    missing fields take their defaults (an error if they have none), unknown ones are refused."""
    where = where or source
    if not isinstance(raw, dict):
        raise StoreError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise StoreError(f"{where}: {f.name}: expected a value, got nothing")
        kwargs[f.name] = coerce(raw[f.name], hints[f.name], f"{where}: {f.name}")
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise StoreError(f"{where}: expected known fields, got unknown {', '.join(unknown)}")
    return cls(**kwargs)


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check a JSON value against a type hint, turning lists into tuples and dicts into dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            return coerce(value, a, where)
    if dataclasses.is_dataclass(tp):   # nested records: the same rules (defaults, unknown fields)
        if not isinstance(value, dict):
            raise StoreError(f"{where}: expected an object, got {value!r}")
        return from_dict(tp, value, where, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise StoreError(f"{where}: expected a list, got {value!r}")
        return tuple(coerce(v, args[0], where) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise StoreError(f"{where}: expected an object, got {value!r}")
        return dict(value)
    if tp in _SCALARS:
        what, ok = _SCALARS[tp]
        if not ok(value):
            raise StoreError(f"{where}: expected {what}, got {value!r}")
        return float(value) if tp is float else value
    return value


# JSON scalar types: what the message names, and the check (JSON true is no integer here)
_SCALARS: dict[type, tuple[str, Any]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
}
