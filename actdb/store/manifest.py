"""The store manifest: what was recorded, from which model and corpus, and how.

A store is complete exactly when `manifest.json` exists; it is written last, atomically.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..io import atomic_write_text
from .layout import MANIFEST_FILE

# 2: mask chunks may use the actdb.bitrows codec (`codec` says which); 1: zstd only.
# An older actdb refuses a version-2 store with "upgrade actdb" instead of a zarr error.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class CorpusFile:
    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    format_version: int
    actdb_version: str
    model: str
    model_revision: str | None
    weights_sha256: str
    architecture: str          # config.model_type, e.g. "opt"
    model_class: str           # e.g. "OPTForCausalLM"
    family: str                # adapter family, e.g. "opt", "llama"
    fire_rule: str             # SPEC §1.1 rule in words
    n_layers: int              # layers of the model
    layers: tuple[int, ...]    # layers recorded
    d_ffn: int
    d_model: int
    vocab_size: int
    dtype: str
    seq_len: int
    mode: str                  # packed | document
    prefix_tokens: tuple[int, ...]  # special tokens the tokenizer puts before each sequence (BOS)
    suffix_tokens: tuple[int, ...]
    separator_token: int | None     # between documents in packed mode
    corpus: tuple[CorpusFile, ...]
    max_tokens: int | None
    n_tokens: int
    n_sequences: int
    n_docs: int
    block_tokens: int
    neuron_chunk: int
    codec: str
    mask_layout: str = ("masks/layer_LL: uint8 [d_ffn, ceil(n_tokens/8)]; bit r%8 (little-endian) "
                        "of byte r//8 is whether the neuron fired on token row r")
    capture: tuple[str, ...] = ()    # magnitude capture kinds: resid, ffn (see capture.py)
    capture_topk: int = 0
    checksums_sha256: str = ""       # of checksums.json (store.py); "" for stores written without one
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST_FILE) -> "Manifest":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise StoreError(f"{source}: not valid JSON ({e})") from None
        except RecursionError:  # found by the fuzz test: deeply nested arrays
            raise StoreError(f"{source}: not a manifest (JSON nested too deeply)") from None
        return cls.from_dict(raw, source)

    @classmethod
    def from_dict(cls, raw: Any, source: str = MANIFEST_FILE) -> "Manifest":
        if not isinstance(raw, dict):
            raise StoreError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        version = raw.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            hint = " (written by a newer actdb: upgrade actdb)" if isinstance(version, int) and version > FORMAT_VERSION else ""
            expected = " or ".join(map(str, READABLE_VERSIONS))
            raise StoreError(f"{source}: format_version: expected {expected}, got {version!r}{hint}")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                    continue
                raise StoreError(f"{source}: {f.name}: expected a value, got nothing")
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], f"{source}: {f.name}")
        unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise StoreError(f"{source}: expected known fields, got unknown {', '.join(unknown)}")
        m = cls(**kwargs)
        m.validate(source)
        return m

    def validate(self, source: str = MANIFEST_FILE) -> None:
        def expect(cond: bool, what: str, expected: str, got: Any) -> None:
            if not cond:
                raise StoreError(f"{source}: {what}: expected {expected}, got {got!r}")

        expect(self.mode in ("packed", "document"), "mode", "packed or document", self.mode)
        expect(self.n_layers > 0, "n_layers", "> 0", self.n_layers)
        expect(all(0 <= l < self.n_layers for l in self.layers), "layers", f"within 0..{self.n_layers - 1}", self.layers)
        expect(len(set(self.layers)) == len(self.layers) and len(self.layers) > 0, "layers", "distinct, non-empty", self.layers)
        expect(self.d_ffn > 0, "d_ffn", "> 0", self.d_ffn)
        expect(self.n_tokens >= 0, "n_tokens", ">= 0", self.n_tokens)
        expect(self.block_tokens > 0 and self.block_tokens % 8 == 0, "block_tokens", "a positive multiple of 8", self.block_tokens)
        expect(self.seq_len >= 2, "seq_len", ">= 2", self.seq_len)

    def write(self, store: Path) -> None:
        atomic_write_text(Path(store) / MANIFEST_FILE, self.to_json())

    @classmethod
    def read(cls, store: Path) -> "Manifest":
        path = Path(store) / MANIFEST_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StoreError(f"{path}: missing") from None
        except UnicodeDecodeError:
            raise StoreError(f"{path}: not UTF-8 text") from None
        except OSError as e:  # a folder, no permission, an I/O error
            raise StoreError(f"{path}: unreadable ({e.strerror or e})") from None
        return cls.from_json(text, str(path))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check a JSON value against a type hint, turning lists into tuples and dicts into dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            return _coerce(value, a, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise StoreError(f"{where}: expected an object, got {value!r}")
        names = {f.name for f in dataclasses.fields(tp)}
        if set(value) != names:
            raise StoreError(f"{where}: expected fields {sorted(names)}, got {sorted(value)}")
        hints = typing.get_type_hints(tp)
        return tp(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in value.items()})
    if origin is tuple:
        if not isinstance(value, list):
            raise StoreError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise StoreError(f"{where}: expected an object, got {value!r}")
        return dict(value)
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise StoreError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise StoreError(f"{where}: expected a string, got {value!r}")
        return value
    return value
