"""The store's layout: the name of every file and folder actdb writes, in one place.

    STORE/
      manifest.json              present only once the store is complete (written last)
      ingest-state.json          while ingesting: settings identity + committed progress
      .actdb.lock                the writer's lock (ingest, index, --overwrite); readers never take it
      masks/layer_LL             Zarr v3 uint8 [d_ffn, ceil(n_tokens/8)], see bits.py (the sign rule)
      rules/SLUG/masks/layer_LL  the same for each other fire rule (SLUG: rule_slug, e.g. top-0.999)
      rules/SLUG/index/          that rule's query index (and its _index_build/, _index_old/)
      rules/SLUG/thresholds.parquet  a rule's per-neuron thresholds (ntop:Q): layer, neuron, threshold
      capture/KIND_FIELD         Zarr v3 magnitude capture (massive activations)
      tokens/part-BBBBBB.parquet one part per block: row, seq, pos, token_id, doc, domain
      docs.parquet               doc, doc_id, domain, source
      vocab.parquet              token_id, token (decoded text), piece (vocabulary entry)
      projection.safetensors     FFN output rows and unembedding (vocabulary projection)
      checksums.json             bytes and sha256 of every file above, recorded as it was written
      index/                     the query index (actdb.index), index/index.json written last
      _index_build/              a rebuild over a complete index, swapped in when complete
      _index_old/                the old index for an instant of a swap without an atomic exchange
      _staging/                  token ids and sequence offsets for the forward passes
      _checksums/                while ingesting: the checksum records of each committed step

Inside its folders actdb writes only the names of the grammar below (is_actdb_file): a
rebuild or --overwrite deletes those folders, so anything else in them is refused first.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from ..errors import InputError
from ..files import temporary_of

MANIFEST_FILE = "manifest.json"
STATE_FILE = "ingest-state.json"
LOCK_FILE = ".actdb.lock"
CHECKSUMS_FILE = "checksums.json"
PENDING_CHECKSUMS = "_checksums"
STAGING = "_staging"
MASKS_DIR = "masks"
CAPTURE_DIR = "capture"
TOKENS_DIR = "tokens"
DOCS_FILE = "docs.parquet"
VOCAB_FILE = "vocab.parquet"
PROJECTION_FILE = "projection.safetensors"
INDEX_DIR = "index"
INDEX_BUILD_DIR = "_index_build"
INDEX_OLD_DIR = "_index_old"
RULES_DIR = "rules"
NEURON_THRESHOLDS_FILE = "thresholds.parquet"   # rules/SLUG/: per-neuron thresholds (store/neuron_thresholds.py)
STAGING_IDS = "token_ids.i32"       # _staging/: every sequence's token ids, back to back
STAGING_OFFSETS = "seq_offsets.i64"  # _staging/: where each sequence starts in STAGING_IDS
STAGING_PROBE = "ray-probe"          # _staging/: the token a Ray driver writes for its workers to read back
SIGN_RULE = "sign"   # the default rule (act > 0), whose masks and index stay at the top of the store

# everything directly under STORE/ that actdb writes; --overwrite removes these and nothing else
STORE_ENTRIES = (MANIFEST_FILE, STATE_FILE, LOCK_FILE, CHECKSUMS_FILE, PENDING_CHECKSUMS, STAGING, MASKS_DIR,
                 CAPTURE_DIR, TOKENS_DIR, DOCS_FILE, VOCAB_FILE, PROJECTION_FILE, INDEX_DIR, INDEX_BUILD_DIR,
                 INDEX_OLD_DIR, RULES_DIR)
# what a write cut short leaves beside an entry: files.atomic_path's .NAME.PID.tmp (files.temporary_of),
# the token tables' docs.tmp.parquet
DOCS_TMP = "docs.tmp.parquet"


def is_store_entry(name: str) -> bool:
    """Whether a name directly under STORE/ is one actdb writes (an entry or its temporary)."""
    if name in STORE_ENTRIES or name == DOCS_TMP:
        return True
    return temporary_of(name) in STORE_ENTRIES

# a folder holding any of these is a store, or one being written: user actions write nothing inside it
STORE_MARKERS = (MANIFEST_FILE, STATE_FILE, LOCK_FILE)


def enclosing_store(path: str | Path) -> tuple[Path, str] | None:
    """(store folder, the marker it holds) when `path` is a store or lies anywhere inside one,
    symlinks followed and `..` resolved (the path itself need not exist); else None."""
    p = Path(path).resolve()
    for folder in (p, *p.parents):
        for marker in STORE_MARKERS:
            if os.path.lexists(folder / marker):
                return folder, marker
    return None


def check_outside_stores(path: str | Path, option: str = "-o") -> None:
    """Refuse, in one line, an output path that is or lies inside a store: every output option
    (sql, query, plot, report) asks this before it writes anything."""
    found = enclosing_store(path)
    if found is not None:
        store, marker = found
        raise InputError(f"{option} {path}: inside the actdb store {store} (it holds {marker}); expected a path "
                         "outside any store; nothing was written")


# magnitude capture (ingest/capture.py): arrays CAPTURE_DIR/{kind}_{field}
CAPTURE_KINDS = {"resid+ffn": ("resid", "ffn"), "resid": ("resid",), "none": ()}
CAPTURE_FIELDS = ("topk_value", "topk_dim", "median", "seq_median")

# the query index (actdb.index), files under INDEX_DIR
INDEX_FILE = "index.json"
INDEX_STATE = "_state.json"
INDEX_PARTS = "_parts"
INDEX_TMP = "_tmp"
# folders of work in progress (a rebuild beside the index, a unit's parts, staged tokens, pending
# records): no reader answers from their files
TRANSIENT = frozenset({INDEX_BUILD_DIR, INDEX_OLD_DIR, INDEX_PARTS, INDEX_TMP, STAGING, PENDING_CHECKSUMS})
INDEX_CAPTURE_DIR = "capture"
INDEX_PROJECTION_FILE = "vocab_projection.parquet"
INDEX_CAPTURE_LAYERS = "capture_layers.parquet"   # per kind and layer: top-3 |h| and median (index/massive.py)
INDEX_MASSIVE = "massive.parquet"                 # the capture rows past the recorded thresholds (index/massive.py)
INDEX_TABLES = ("neuron_fires", "neuron_domains", "neuron_positions", "positional", "neuron_tokens",
                "neuron_bigrams", "neuron_trigrams", "coverage", "token_detectors", "trigram_detectors")
INDEX_COUNTS = ("position_counts", "token_counts", "bigram_counts", "trigram_counts")
INDEX_NEIGHBOURS = "neuron_neighbours"   # every neuron's top co-firing neighbours (`actdb index --neighbours K`)
COFIRE_SPILL = "cofire.bits"             # _tmp/: the masks as 64-bit words while the neighbours are counted


def _grammar() -> re.Pattern:
    """Every path (relative to STORE/, '/'-separated) that actdb writes inside its folders."""
    chunks = r"(?:zarr\.json|c(?:/\d+)+)"                       # zarr v3: metadata, chunk keys
    part = r"part-\d{6,}\.parquet"
    table = "(?:" + "|".join(INDEX_TABLES + INDEX_COUNTS + (INDEX_NEIGHBOURS,)) + r")\.parquet"
    index = (rf"(?:{re.escape(INDEX_FILE)}|{re.escape(INDEX_STATE)}|{table}|{re.escape(INDEX_PROJECTION_FILE)}"
             rf"|{re.escape(INDEX_CAPTURE_LAYERS)}|{re.escape(INDEX_MASSIVE)}"
             rf"|{INDEX_CAPTURE_DIR}/{part}"
             rf"|{INDEX_PARTS}/\.?l\d+_n\d+(?:\.tmp)?/{table}"     # a unit's parts (index/build.py)
             rf"|{INDEX_TMP}/col_[a-z_]+\.npy"                         # the token arrays (index/tokens.py)
             rf"|{INDEX_TMP}/{re.escape(COFIRE_SPILL)})")
    rule = rf"(?:{RULES_DIR}/[A-Za-z0-9._-]+/)?"
    staging = "|".join(map(re.escape, (STAGING_IDS, STAGING_OFFSETS, STAGING_PROBE)))
    return re.compile("|".join([
        rf"{rule}{MASKS_DIR}/(?:zarr\.json|layer_\d+/{chunks})",
        rf"{CAPTURE_DIR}/(?:zarr\.json|[a-z]+_[a-z_]+/{chunks})",
        rf"{TOKENS_DIR}/{part}",
        rf"{STAGING}/(?:{staging})",
        rf"{PENDING_CHECKSUMS}/[A-Za-z0-9_.-]+\.json",
        rf"{rule}(?:{INDEX_DIR}|{INDEX_BUILD_DIR}|{INDEX_OLD_DIR})/{index}",
        rf"{RULES_DIR}/[A-Za-z0-9._-]+/{re.escape(NEURON_THRESHOLDS_FILE)}",
    ]))


_ACTDB_PATH = _grammar()
_ZARR_PARTIAL = re.compile(r"[^/]+\.[0-9a-f]{32}\.partial")   # zarr's write of a chunk, cut short


def is_actdb_file(rel: str) -> bool:
    """Whether actdb writes the file at `rel` (relative to STORE/, '/'-separated) inside one of its
    folders, or a write of it cut short left it (files.atomic_path's temporary, zarr's .partial)."""
    folder, _, name = rel.rpartition("/")
    original = temporary_of(name)
    if original is not None:
        rel = f"{folder}/{original}" if folder else original
    elif _ZARR_PARTIAL.fullmatch(name):
        return folder.split("/", 1)[0] in (MASKS_DIR, CAPTURE_DIR, RULES_DIR)
    return _ACTDB_PATH.fullmatch(rel) is not None


def foreign_file(root: Path, folders: Iterable[Path]) -> Path | None:
    """The first file (or link) under `folders` (actdb's folders of the store at `root`) that actdb
    does not write, else None. Links are not followed."""
    root = Path(root)
    todo = sorted(Path(f) for f in folders)
    while todo:
        folder = todo.pop(0)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                todo.append(Path(e.path))
            elif not is_actdb_file(Path(e.path).relative_to(root).as_posix()):
                return Path(e.path)
    return None


def rule_slug(rule: str) -> str:
    """A fire rule's folder name: abs>0.1 -> abs-gt-0.1, top:0.999 -> top-0.999, glu:+- -> glu-pn
    (one per rule)."""
    if rule.startswith("glu:"):
        return "glu-" + rule[4:].replace("+", "p").replace("-", "n")
    return rule.replace(">", "-gt-").replace(":", "-")


def rule_dir(root: Path, rule: str) -> Path:
    """Where a rule's masks/ and index/ live: the store itself for the sign rule (as in stores
    written before rules existed), else STORE/rules/SLUG."""
    return Path(root) if rule == SIGN_RULE else Path(root) / RULES_DIR / rule_slug(rule)


def rule_masks(root: Path, rule: str) -> Path:
    return rule_dir(root, rule) / MASKS_DIR


def rule_thresholds(root: Path, rule: str) -> Path:
    """A per-neuron rule's thresholds file, STORE/rules/SLUG/thresholds.parquet."""
    return Path(root) / RULES_DIR / rule_slug(rule) / NEURON_THRESHOLDS_FILE


def layer_name(layer: int) -> str:
    return f"layer_{layer:02d}"


def part_name(block: int) -> str:
    """Token part of mask block `block`."""
    return f"part-{block:06d}.parquet"


PART_GLOB = "part-*.parquet"


def token_parts(root: Path) -> list[Path]:
    return sorted((Path(root) / TOKENS_DIR).glob(PART_GLOB))


def index_table(root: Path, name: str) -> Path:
    """STORE/index/NAME.parquet."""
    return Path(root) / INDEX_DIR / f"{name}.parquet"


def index_capture_parts(root: Path) -> Path:
    return Path(root) / INDEX_DIR / INDEX_CAPTURE_DIR


def index_file(root: Path, name: str) -> Path:
    """STORE/index/NAME (any file of the index)."""
    return Path(root) / INDEX_DIR / name


def token_schema():
    import pyarrow as pa

    return pa.schema([("row", pa.int64()), ("seq", pa.int64()), ("pos", pa.int32()),
                      ("token_id", pa.int32()), ("doc", pa.int64()),
                      ("domain", pa.dictionary(pa.int16(), pa.string()))])


def doc_schema():
    import pyarrow as pa

    return pa.schema([("doc", pa.int64()), ("doc_id", pa.string()), ("domain", pa.string()),
                      ("source", pa.string())])
