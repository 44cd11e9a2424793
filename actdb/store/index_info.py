"""The query index's record, index/index.json: what it was built from, the settings and
thresholds it was built with, and every file with size and sha256.

Written last by actdb.index, so the index is complete exactly when it exists. Read as a
validated frozen dataclass: only checked values reach the views' SQL."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, StoreError
from ..files import atomic_write_text
from ..grammar import RULE_GRAMMAR, parse_fire_rule
from ..settings import THRESHOLDS, IndexSettings, range_problem, threshold_range
from .layout import INDEX_DIR, INDEX_FILE
from .record import check_version, from_dict, parse_json, read_text, seal, unseal

# 6: the massive-activation summaries (capture_layers, massive_rows) beside the capture; a version 5
# index still answers everything else, and `actdb index` rebuilds it (its config differs);
# 5: the record carries its checksum (record.seal) and the identity of the store it was built from
# (`store`: the manifest's content digest), so an index copied in from another store is refused;
# 4: n-grams padded before the sequence start (so every n counts the same fires), n-gram ids in base
# vocabulary + 1 (`vocab_base`) with `ngram_pad` the PAD digit, and every threshold recorded.
# Older indexes counted other n-grams: they are refused with "rebuild" (and rebuilt by
# `actdb index`), never read with other semantics.
INDEX_VERSION = 6
READABLE_INDEX_VERSIONS = (5, 6)
_DEFAULTS = IndexSettings()


@dataclass(frozen=True)
class IndexConfig:
    """What the index was built from and with; a build with another config is a rebuild."""
    version: int
    layers: tuple[int, ...]          # the store's recorded layers
    ngram_layers: tuple[int, ...]    # those with bigram / trigram tables
    vocab_base: int                  # n-gram id = base-V number of its slots (vocabulary + 1)
    ngram_pad: int                   # the digit of a slot before the sequence start (= vocab_base - 1)
    n_tokens: int
    seq_len: int
    weights_sha256: str
    prefix: bool                     # the tokenizer puts a prefix token (BOS) at position 0
    top_k: int
    store: str                       # Manifest.identity of the store it was built from
    rule: str = "sign"               # the fire rule whose masks it counts; older indexes: sign
    neighbours: int = 0              # co-firing neighbours kept per neuron (neuron_neighbours.parquet); 0: none
    # the thresholds, defaults from settings.IndexSettings (the one table of the paper's values)
    p_cov: float = _DEFAULTS.p_cov
    tok_max_cov: int = _DEFAULTS.tok_max_cov
    tri_max_cov: int = _DEFAULTS.tri_max_cov
    p_token: float = _DEFAULTS.p_token
    p_share: float = _DEFAULTS.p_share
    weak_eps: float = _DEFAULTS.weak_eps
    mi_min: float = _DEFAULTS.mi_min
    min_switches: int = _DEFAULTS.min_switches
    abs_min: float = _DEFAULTS.abs_min
    ratio: float = _DEFAULTS.ratio

    def thresholds(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in THRESHOLDS}

    def mismatch(self, manifest: Any, rule: str) -> str | None:
        """Why this index does not answer for `rule` of the store with `manifest`, or None: what it
        was built from must be that store (its identity, which covers every file) and that rule."""
        for key, want in (("n_tokens", manifest.n_tokens), ("weights_sha256", manifest.weights_sha256),
                          ("layers", tuple(manifest.layers)), ("seq_len", manifest.seq_len), ("rule", rule)):
            if getattr(self, key) != want:
                return f"{key}: built for {getattr(self, key)!r}, the store has {want!r}"
        if self.store != manifest.identity:
            return (f"store: built for the store {self.store[:19]}…, this one is {manifest.identity[:19]}… (an index "
                    f"copied from another store, or a store written again)")
        return None

    def validate(self, source: str) -> None:
        def expect(cond: bool, what: str, expected: str, got: Any) -> None:
            if not cond:
                raise StoreError(f"{source}: config: {what}: expected {expected}, got {got!r}")

        expect(self.vocab_base >= 2, "vocab_base", ">= 2", self.vocab_base)
        expect(self.ngram_pad == self.vocab_base - 1, "ngram_pad", f"vocab_base - 1 = {self.vocab_base - 1}",
               self.ngram_pad)
        expect(self.n_tokens >= 0, "n_tokens", ">= 0", self.n_tokens)
        expect(self.seq_len >= 2, "seq_len", ">= 2", self.seq_len)
        expect(self.top_k >= 1, "top_k", ">= 1", self.top_k)
        expect(self.neighbours >= 0, "neighbours", ">= 0", self.neighbours)
        expect(len(self.layers) > 0 and all(l >= 0 for l in self.layers), "layers", "layer numbers >= 0",
               list(self.layers))
        expect(set(self.ngram_layers) <= set(self.layers), "ngram_layers", f"among the layers {list(self.layers)}",
               list(self.ngram_layers))
        try:
            canonical = parse_fire_rule(self.rule).name
        except InputError:
            canonical = None
        expect(canonical == self.rule, "rule", RULE_GRAMMAR, self.rule)
        for name, value in self.thresholds().items():
            bad = range_problem(threshold_range(name), value)
            expect(bad is None, name, bad or "", value)


@dataclass(frozen=True)
class IndexInfo:
    config: IndexConfig
    files: dict[str, Any] = field(default_factory=dict)   # relative path -> {"bytes", "sha256"}

    def to_json(self) -> str:
        return seal(json.loads(json.dumps(dataclasses.asdict(self))))

    @classmethod
    def from_json(cls, text: str, source: str) -> "IndexInfo":
        raw = parse_json(text, source, "an index record")
        if not isinstance(raw, dict):
            raise StoreError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        config = raw.get("config")
        if not isinstance(config, dict):
            raise StoreError(f"{source}: config: expected an object, got {config!r}")
        check_version(config, f"{source}: config", READABLE_INDEX_VERSIONS, INDEX_VERSION, key="version",
                      old_hint=" (an index of an older actdb: rebuild it with `actdb index STORE --force`)")
        info = from_dict(cls, unseal(raw, source), source)
        files = info.files
        if not all(isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
                   for v in files.values()):
            raise StoreError(f"{source}: files: expected {{path: {{bytes, sha256}}}}, got {files!r}"[:300])
        info.config.validate(source)
        return info

    def write(self, index_dir: Path) -> None:
        atomic_write_text(Path(index_dir) / INDEX_FILE, self.to_json())


def index_path(store_path: str | Path) -> Path:
    return Path(store_path) / INDEX_DIR


def read_index_info(store_path: str | Path, index_dir: Path | None = None) -> IndexInfo | None:
    """The index record of a store (or of the index folder `index_dir`); None when there is none
    (no index, or a build not finished), a StoreError naming the file when it is bad."""
    p = Path(index_dir if index_dir is not None else index_path(store_path)) / INDEX_FILE
    text = read_text(p)
    if text is None:
        return None
    return IndexInfo.from_json(text, str(p))


def bound_index_info(root: str | Path, base: str | Path, manifest: Any, rule: str) -> IndexInfo | None:
    """The index record of rule `rule` (its folder under `base`, store.layout.rule_dir) of the
    store at `root`; None when there is none; a StoreError when it is bad or was built for
    another store or rule: an index answers only for the store it was built from."""
    info = read_index_info(base)
    if info is not None:
        why = info.config.mismatch(manifest, rule)
        if why is not None:
            raise StoreError(f"{index_path(base) / INDEX_FILE}: not this store's index ({why}); rebuild it with "
                             f"`actdb index {root} --force`")
    return info
