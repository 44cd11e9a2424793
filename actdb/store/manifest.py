"""The store manifest: what was recorded, from which model and corpus, and how.

A store is complete exactly when `manifest.json` exists; it is written last, atomically.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, StoreError
from ..files import atomic_write_text
from ..grammar import LAYER_THRESHOLDS, RULE_GRAMMAR, parse_fire_rule
from .layout import MANIFEST_FILE, SIGN_RULE
from .record import check_version, content_digest, from_dict, parse_json, read_text, seal, unseal

# 4: the record carries its own checksum (record.seal); 3: several fire rules (`fire_rules`), each rule's masks beside the sign rule's;
# 2: mask chunks may use the actdb.bitrows codec (`codec` says which); 1: zstd only.
# Versions 1 and 2 read as one sign rule. An older actdb refuses a newer store with "upgrade
# actdb" instead of a zarr error.
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
SEALED_SINCE = 4   # versions from this one on must carry their checksum


# upper bounds (bits) of the manifest's integers
_INT_BITS = {"n_tokens": 48, "n_sequences": 48, "n_docs": 48, "max_tokens": 48, "n_layers": 16, "d_ffn": 24,
             "d_model": 24, "vocab_size": 32, "seq_len": 24, "block_tokens": 32, "neuron_chunk": 24,
             "capture_topk": 16}


@dataclass(frozen=True)
class CorpusFile:
    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class FireRuleRecord:
    name: str                          # canonical rule text: sign, abs>0.1, top:0.999
    definition: str                    # in words
    thresholds: tuple[float, ...] = ()  # per recorded layer (in the order of `layers`); () for sign, glu:SS
    # and ntop:Q (per neuron: rules/SLUG/thresholds.parquet, store/neuron_thresholds.py)


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
    fire_rule: str             # the sign rule in words (what fires, per family)
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
    fire_rules: tuple[FireRuleRecord, ...] = ()   # in order, the first the default; () = sign only (v1, v2)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON values, without its checksum."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return seal(self.to_dict(), indent=2)

    @property
    def identity(self) -> str:
        """"sha256:HEX" of what the store holds: the manifest's content (its checksum records'
        sha256 included, so every file of the store) but `extra`, which says how it was made (on
        Ray or not) and not what it holds. An index records it (index_info.py)."""
        return content_digest({k: v for k, v in self.to_dict().items() if k != "extra"})

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST_FILE) -> "Manifest":
        raw = parse_json(text, source, "a manifest")
        # the version first: a JSON file of another program is named for what it lacks
        version = check_version(raw, source, READABLE_VERSIONS, FORMAT_VERSION)
        return cls.from_dict(unseal(raw, source, required=version >= SEALED_SINCE), source)

    @classmethod
    def from_dict(cls, raw: Any, source: str = MANIFEST_FILE) -> "Manifest":
        check_version(raw, source, READABLE_VERSIONS, FORMAT_VERSION)
        m = from_dict(cls, raw, source)
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
        # far above any real store: these numbers size loops and arrays before any file is read
        for name, bits in _INT_BITS.items():
            v = getattr(self, name)
            expect(v is None or 0 <= v < 2**bits, name, f"0 <= {name} < 2**{bits}", v)
        names = [r.name for r in self.fire_rules]
        expect(len(set(names)) == len(names), "fire_rules", "distinct rules", names)
        for r in self.fire_rules:
            try:
                canonical = parse_fire_rule(r.name)
            except InputError:
                canonical = None
            expect(canonical is not None and canonical.name == r.name, "fire_rules.name", RULE_GRAMMAR, r.name)
            # per-neuron thresholds (ntop:Q) are in a file of the rule's own, not here
            want = len(self.layers) if canonical.kind in LAYER_THRESHOLDS else 0
            expect(len(r.thresholds) == want and all(t >= 0 for t in r.thresholds),
                   f"fire_rules[{r.name}].thresholds", f"{want} numbers >= 0 (one per recorded layer)"
                   if want else "none (per layer)", r.thresholds)

    @property
    def rules(self) -> tuple[str, ...]:
        """The recorded fire rules' names, in order (a store before version 3: sign)."""
        return tuple(r.name for r in self.fire_rules) or (SIGN_RULE,)

    def rule_record(self, rule: str) -> FireRuleRecord:
        for r in self.fire_rules:
            if r.name == rule:
                return r
        if rule == SIGN_RULE and not self.fire_rules:
            return FireRuleRecord(SIGN_RULE, self.fire_rule)
        raise InputError(f"rule: expected one of the recorded rules {', '.join(self.rules)}, got {rule!r}")

    def write(self, store: Path) -> None:
        atomic_write_text(Path(store) / MANIFEST_FILE, self.to_json())

    @classmethod
    def read(cls, store: Path) -> "Manifest":
        path = Path(store) / MANIFEST_FILE
        text = read_text(path)
        if text is None:
            raise StoreError(f"{path}: missing")
        return cls.from_json(text, str(path))
