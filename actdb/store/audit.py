"""`actdb check`: verify a store end to end and report every problem with its path.

What is checked, in order (a problem in one part does not stop the others):
  manifest      present (or the ingest is reported unfinished), readable, of a known version
  checksums     checksums.json matches the manifest's sha256; every file it lists exists
                with the recorded size and sha256; no unrecorded file where a reader would
                pick it up (tokens/, masks/, capture/). Stores written without checksums
                are verified by decoding every chunk and reading every Parquet file instead.
  thresholds    each per-neuron rule's (ntop:Q) thresholds file: present, recorded, one number
                >= 0 per recorded layer and neuron
  row counts    token parts 0..N-1 with block_tokens rows each (the last one the rest),
                rows/seq/doc/pos ranges from the Parquet statistics, docs.parquet = n_docs,
                token ids within the vocabulary, mask and capture array shapes, the
                projection's tensors
  index         present and complete, of this actdb's index version, built for this store
                (index.json "config" against the manifest), and its files' recorded sizes and
                sha256 when it lists them
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ActdbError
from .manifest import Manifest
from ..files import check_regular_file, file_digest, temporary_of
from .index_info import index_path, read_index_info
from .layout import (CAPTURE_DIR, CAPTURE_FIELDS as FIELDS, CHECKSUMS_FILE, DOCS_FILE, INDEX_BUILD_DIR, INDEX_FILE,
                     INDEX_OLD_DIR, MANIFEST_FILE, MASKS_DIR, PROJECTION_FILE as FILE, STATE_FILE, TOKENS_DIR, VOCAB_FILE,
                     layer_name, part_name, rule_dir, rule_masks, rule_thresholds, token_parts)

# where an unrecorded file would change answers: the token glob and zarr's chunk lookups
WATCHED = (TOKENS_DIR, MASKS_DIR, CAPTURE_DIR)
TOKEN_COLUMNS = ("row", "seq", "pos", "token_id", "doc", "domain")


@dataclass
class Report:
    store: Path
    problems: list[str] = field(default_factory=list)   # "PATH: what is wrong"
    notes: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    _paths: set[str] = field(default_factory=set)

    def problem(self, path: Path | str, what: str) -> None:
        """One problem per path: the first found (a missing file is not also 'missing rows')."""
        if str(path) not in self._paths:
            self._paths.add(str(path))
            self.problems.append(f"{path}: {what}")

    def lines(self) -> list[str]:
        out = [f"problem  {p}" for p in self.problems] + [f"note     {n}" for n in self.notes]
        verdict = f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)}" if self.problems else "ok"
        out.append(f"checked  {self.store}: {self.files:,} files, {self.bytes / 1e6:,.2f} MB; {verdict}")
        return out


def check_store(path: str | Path) -> Report:
    """Verify the store at `path`; never raises for what it finds, it reports it."""
    root = Path(path)
    r = Report(root)
    if not root.is_dir():
        r.problem(root, "no such store" if not root.exists() else "not a folder")
        return r
    if not (root / MANIFEST_FILE).exists():
        if (root / STATE_FILE).exists():
            r.problem(root, "ingest not finished: no manifest.json yet "
                            "(complete it with `actdb ingest ... --resume`)")
        else:
            r.problem(root / MANIFEST_FILE, "missing: not an actdb store")
        return r
    try:
        m = Manifest.read(root)
    except ActdbError as e:
        r.problems.append(str(e))
        return r
    if (root / STATE_FILE).exists():
        r.notes.append(f"{root / STATE_FILE}: left over from a finished ingest (safe to delete)")
    if m.checksums_sha256:
        _check_recorded(root, m, r)
    else:
        r.notes.append(f"{root}: no checksums recorded (written by an older actdb): "
                       "verified by decoding every chunk and reading every Parquet file")
        _decode_everything(root, m, r)
    _check_tables(root, m, r)
    _check_arrays(root, m, r)
    _check_projection(root, m, r)
    _check_neuron_thresholds(root, m, r)
    _check_index(root, m, r)
    return r


def _verify_files(base: Path, files: dict[str, Any], r: Report, alt: Path | None = None) -> None:
    """Each {relpath: {"bytes", "sha256"}} against the file on disk."""
    for rel, want in sorted(files.items()):
        p = base / rel
        if not p.exists() and alt is not None and (alt / rel).exists():
            p = alt / rel
        try:
            got = file_digest(p)
        except FileNotFoundError:
            r.problem(p, "missing (recorded at write time)")
            continue
        except OSError as e:
            r.problem(p, f"unreadable ({e.strerror or e})")
            continue
        r.files += 1
        r.bytes += got["bytes"]
        if not isinstance(want, dict):
            r.problem(p, f"bad checksum record {want!r}")
        elif got["bytes"] != want.get("bytes"):
            r.problem(p, f"size: expected {want.get('bytes')} bytes (as written), got {got['bytes']} "
                         f"({'truncated' if got['bytes'] < (want.get('bytes') or 0) else 'grown'})")
        elif got["sha256"] != want.get("sha256"):
            r.problem(p, "sha256 differs from the one recorded at write time (the file changed since)")


def _check_recorded(root: Path, m: Manifest, r: Report) -> None:
    p = root / CHECKSUMS_FILE
    try:
        check_regular_file(p)
        raw = p.read_bytes()
    except FileNotFoundError:
        r.problem(p, "missing (the manifest records its sha256)")
        return
    if hashlib.sha256(raw).hexdigest() != m.checksums_sha256:
        r.problem(p, "sha256 differs from the one in the manifest")
        return
    files = json.loads(raw)["files"]
    _verify_files(root, files, r)
    # every rule's masks are watched like the sign rule's
    for top in dict.fromkeys([*WATCHED, *(rule_masks(root, rule).relative_to(root).as_posix() for rule in m.rules)]):
        for f in sorted((root / top).rglob("*")):
            rel = f.relative_to(root).as_posix()
            if not f.is_file() or rel in files:
                continue
            if f.name.startswith(".") or f.name.endswith(".partial"):
                r.notes.append(f"{f}: temporary file left by an interrupted write (safe to delete)")
            else:
                r.problem(f, "not recorded at write time (readers would use it)")


def _decode_everything(root: Path, m: Manifest, r: Report) -> None:
    """The fallback without checksums: every Parquet file read, every chunk decoded."""
    import pyarrow.parquet as pq

    for f in sorted([*token_parts(root), root / DOCS_FILE, root / VOCAB_FILE]):
        if f.exists():
            _guard(r, f, lambda: pq.read_table(f))
    for arr_dir, arr in _arrays(root, m, r):
        for key in itertools.product(*[range(-(-s // c)) for s, c in zip(arr.shape, arr.chunks)]):
            region = tuple(slice(k * c, (k + 1) * c) for k, c in zip(key, arr.chunks))
            chunk = arr_dir / arr.metadata.encode_chunk_key(key)
            _guard(r, chunk, lambda: arr[region])


def _guard(r: Report, path: Path, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # pyarrow, zarr and safetensors raise many types for a bad file
        r.problem(path, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return None


def _arrays(root: Path, m: Manifest, r: Report) -> list[tuple[Path, Any]]:
    import zarr
    from zarr.storage import LocalStore

    from . import zarr_codec  # noqa: F401  (registers the actdb.bitrows codec with zarr)

    names = [(rule_masks(root, rule).relative_to(root), layer_name(l)) for rule in m.rules for l in m.layers]
    names += [(Path(CAPTURE_DIR), f"{kind}_{f}") for kind in m.capture for f in FIELDS]
    out = []
    for group, name in names:
        d = root / group / name
        arr = _guard(r, d / "zarr.json", lambda: zarr.open_array(LocalStore(root / group, read_only=True),
                                                                 path=name, mode="r"))
        if arr is not None:
            out.append((d, arr))
    return out


def _check_tables(root: Path, m: Manifest, r: Report) -> None:
    import pyarrow.parquet as pq

    bt = m.block_tokens
    n_parts = -(-m.n_tokens // bt)
    have = {p.name for p in token_parts(root)}
    # part by part only as far as the files go: the manifest's count may be anything
    n_named = min(n_parts, len(have) + 1)
    if n_named < n_parts:
        r.problem(root / TOKENS_DIR, f"expected {n_parts} token parts, got {len(have)}")
    else:
        for name in sorted(have - {part_name(b) for b in range(n_parts)}):
            r.problem(root / TOKENS_DIR / name, f"unexpected token part (the manifest has {n_parts})")
    total, hi = 0, {"seq": -1, "doc": -1, "pos": -1, "token_id": -1}
    before = len(r.problems)
    for b in range(n_named):
        p = root / TOKENS_DIR / part_name(b)
        if not p.exists():
            r.problem(p, f"token part missing (expected {n_parts} parts)")
            continue
        meta = _guard(r, p, lambda: pq.read_metadata(p))
        if meta is None:
            continue
        want_rows = min(bt, m.n_tokens - b * bt)
        total += meta.num_rows
        cols = meta.schema.to_arrow_schema().names
        if tuple(cols) != TOKEN_COLUMNS:
            r.problem(p, f"columns: expected {list(TOKEN_COLUMNS)}, got {cols}")
            continue
        if meta.num_rows != want_rows:
            r.problem(p, f"rows: expected {want_rows}, got {meta.num_rows}")
            continue
        stats = _minmax(meta)
        if "row" in stats and stats["row"] != (b * bt, b * bt + want_rows - 1):
            r.problem(p, f"row: expected {b * bt}..{b * bt + want_rows - 1}, got {stats['row'][0]}..{stats['row'][1]}")
        for c in hi:
            if c in stats:
                hi[c] = max(hi[c], stats[c][1])
    if total != m.n_tokens and len(r.problems) == before:  # not already explained part by part
        r.problem(root / TOKENS_DIR, f"rows: expected {m.n_tokens} in all, got {total}")
    if hi["seq"] >= 0 and hi["seq"] + 1 != m.n_sequences:
        r.problem(root / TOKENS_DIR, f"seq: expected {m.n_sequences} sequences, got {hi['seq'] + 1}")
    if hi["pos"] >= m.seq_len:
        r.problem(root / TOKENS_DIR, f"pos: expected < seq_len {m.seq_len}, got {hi['pos']}")
    for name, want in ((DOCS_FILE, m.n_docs), (VOCAB_FILE, None)):
        p = root / name
        if not p.exists():
            r.problem(p, "missing")
            continue
        meta = _guard(r, p, lambda: pq.read_metadata(p))
        if meta is None:
            continue
        if want is not None and meta.num_rows != want:
            r.problem(p, f"rows: expected {want} (n_docs), got {meta.num_rows}")
        if name == VOCAB_FILE and hi["token_id"] >= meta.num_rows:
            r.problem(p, f"rows: expected more than the largest token id {hi['token_id']}, got {meta.num_rows}")
    if hi["doc"] >= m.n_docs:
        r.problem(root / TOKENS_DIR, f"doc: expected < n_docs {m.n_docs}, got {hi['doc']}")


def _minmax(meta) -> dict[str, tuple[int, int]]:
    """Column -> (min, max) over a Parquet file's row groups, from its statistics."""
    out: dict[str, tuple[int, int]] = {}
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for i in range(rg.num_columns):
            c = rg.column(i)
            s = c.statistics
            if s is None or not s.has_min_max or not isinstance(s.min, int):
                continue
            name = c.path_in_schema
            lo, hi = out.get(name, (s.min, s.max))
            out[name] = (min(lo, s.min), max(hi, s.max))
    return out


def _check_arrays(root: Path, m: Manifest, r: Report) -> None:
    nbytes = (m.n_tokens + 7) // 8
    for d, arr in _arrays(root, m, r):
        if d.parent.name == MASKS_DIR:
            want, chunks = (m.d_ffn, nbytes), (min(m.neuron_chunk, m.d_ffn), m.block_tokens // 8)
        else:
            want, chunks = (len(m.layers), m.n_tokens), (1, m.block_tokens)
        if tuple(arr.shape[:2]) != want:
            r.problem(d, f"shape: expected {want}, got {tuple(arr.shape)}")
        elif tuple(arr.chunks[:2]) != chunks:
            r.problem(d, f"chunks: expected {chunks}, got {tuple(arr.chunks)}")


def _check_projection(root: Path, m: Manifest, r: Report) -> None:

    p = root / FILE
    if not p.exists():
        r.notes.append(f"{p}: absent (the store predates vocabulary projection)")
        return

    def shapes() -> dict[str, list[int]]:
        from safetensors import safe_open

        with safe_open(str(p), framework="np") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    got = _guard(r, p, shapes)
    if got is None:
        return
    for l in m.layers:
        if got.get(f"w_out.{l}") != [m.d_ffn, m.d_model]:
            r.problem(p, f"w_out.{l}: expected shape {[m.d_ffn, m.d_model]}, got {got.get(f'w_out.{l}')}")
    if "w_u" not in got or got["w_u"][1:] != [m.d_model]:
        r.problem(p, f"w_u: expected shape [vocab, {m.d_model}], got {got.get('w_u')}")


def _check_neuron_thresholds(root: Path, m: Manifest, r: Report) -> None:
    """Each per-neuron rule's file (its bytes are checked with every recorded file): recorded, and of
    the store's shape."""
    from ..grammar import NEURON_THRESHOLDS, parse_fire_rule
    from .neuron_thresholds import read_neuron_thresholds

    recorded = None
    if m.checksums_sha256:
        try:
            recorded = json.loads((root / CHECKSUMS_FILE).read_bytes())["files"]
        except (OSError, ValueError, KeyError, TypeError):   # reported with the checksums
            return
    for rule in m.rules:
        if parse_fire_rule(rule).kind not in NEURON_THRESHOLDS:
            continue
        p = rule_thresholds(root, rule)
        if not p.exists():
            r.problem(p, f"missing: the per-neuron thresholds of {rule}")
        elif recorded is not None and p.relative_to(root).as_posix() not in recorded:
            r.problem(p, "not recorded at write time (readers would use it)")
        else:
            try:
                read_neuron_thresholds(p, m.layers, m.d_ffn)
            except ActdbError as e:
                r.problem(p, str(e).removeprefix(f"{p}: "))


def _check_index(root: Path, m: Manifest, r: Report) -> None:
    for rule in m.rules:   # each fire rule has its index
        _check_rule_index(root, m, r, rule)


def _check_rule_index(root: Path, m: Manifest, r: Report, rule: str) -> None:
    base = rule_dir(root, rule)
    d = index_path(base)
    p = d / INDEX_FILE
    for left in (INDEX_BUILD_DIR, INDEX_OLD_DIR):
        if (base / left).exists():
            r.notes.append(f"{base / left}: left by an interrupted index rebuild (the next `actdb index` removes it)")
    if d.exists():   # no reader looks at these: a note, not a problem
        for f in sorted(d.rglob(".*.tmp")):
            if temporary_of(f.name) is not None:
                r.notes.append(f"{f}: temporary file left by an interrupted write (the next `actdb index` removes it)")
    if not p.exists():
        if d.exists():
            r.problem(d, f"index build not finished (resume it with `actdb index {root}`)")
        else:
            r.problem(d, f"no query index (build it with `actdb index {root}`)")
        return
    try:
        info = read_index_info(base)
    except ActdbError as e:   # names the file and what is wrong with it
        r.problems.append(str(e))
        return
    why = info.config.mismatch(m, rule)   # built for this store and rule? (what every reader checks too)
    if why is not None:
        r.problem(d, f"not this store's index: {why} (rebuild it with `actdb index {root} --force`)")
    _verify_files(d, info.files, r, alt=root)
