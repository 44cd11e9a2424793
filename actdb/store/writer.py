"""The ingest-time writer: mask arrays, checksum records, ingest state and the commit protocol.

Commit protocol: a block's mask chunks are written (each chunk file atomically by zarr)
before `ingest-state.json` records the block as done, so a kill leaves at most
uncommitted chunks, which resume rewrites. Nothing is read from an incomplete store
unless asked for explicitly.

Integrity: each step hashes the files it just wrote into `_checksums/STEP.json` before it
commits; at the end they are merged into `checksums.json`, whose sha256 the manifest
records (`actdb check` verifies the chain). Mask chunks also carry a crc32c that zarr
verifies on every read, so a flipped bit or a cut file raises instead of reading garbage.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..faults import point as fault_point
from ..errors import StoreError
from ..files import atomic_write_text, file_digest
from ..settings import MASK_CODECS
from .ingest_state import IngestState, read_state as _read_state, write_state as _write_state
from .layout import (CHECKSUMS_FILE, LOCK_FILE, MANIFEST_FILE, MASKS_DIR, PENDING_CHECKSUMS, STATE_FILE,
                     foreign_file, is_store_entry, layer_name)
from .manifest import Manifest
from .record import parse_json, read_text, seal, unseal


def codec_name(codec: str, level: int) -> str:
    """The manifest's record of the mask codec."""
    return f"{codec}(level={level})+crc32c"


def mask_compressors(codec: str, level: int) -> list[Any]:
    """Zarr compressors of the mask arrays: the codec, then a crc32c that zarr checks on
    every read (a flipped bit raises, see CheckedArray)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from .zarr_codec import BitRowsCodec

    if codec not in MASK_CODECS:
        raise ValueError(f"mask codec: expected one of {', '.join(MASK_CODECS)}, got {codec!r}")
    return [BitRowsCodec(level=level) if codec == "bitrows" else ZstdCodec(level=level), Crc32cCodec()]


def record_checksums(root: Path, step: str, paths: Iterable[Path]) -> None:
    """Hash the files a step just wrote (still in the page cache) into _checksums/STEP.json,
    before the step is committed; files that do not exist (empty chunks) are not recorded."""
    root = Path(root)
    files = {}
    for p in paths:
        try:
            files[Path(p).relative_to(root).as_posix()] = file_digest(p)
        except FileNotFoundError:
            continue
    (root / PENDING_CHECKSUMS).mkdir(exist_ok=True)
    atomic_write_text(root / PENDING_CHECKSUMS / f"{step}.json", seal({"files": files}, indent=None))


def pending_checksums(root: Path) -> dict[str, Any]:
    """The committed steps' records merged ({relative path: digest}); a step record edited or
    damaged since it was written is refused, naming it (a resume checks them before any work)."""
    files: dict[str, Any] = {}
    for p in sorted((root / PENDING_CHECKSUMS).glob("*.json")):
        raw = unseal(parse_json(read_text(p) or "", str(p), "a checksum record"), str(p))
        if not isinstance(raw, dict) or not isinstance(raw.get("files"), dict):
            raise StoreError(f"{p}: expected a checksum record {{files: {{path: digest}}}}, got other JSON")
        files.update(raw["files"])
    return files


def seal_checksums(root: Path) -> str:
    """Merge the steps' records into checksums.json; returns its sha256 (for the manifest)."""
    files = pending_checksums(root)
    text = json.dumps({"algorithm": "sha256", "files": files}, indent=0, sort_keys=True)
    atomic_write_text(root / CHECKSUMS_FILE, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def block_chunk_files(group_dir: Path, arrays: dict[str, Any], block: int) -> list[Path]:
    """Chunk files of `block` (chunk index along axis 1, the token axis) of zarr arrays."""
    out = []
    for name, arr in arrays.items():
        grid = [range(-(-s // c)) for s, c in zip(arr.shape, arr.chunks)]
        grid[1] = range(block, block + 1)
        out += [Path(group_dir) / name / arr.metadata.encode_chunk_key(k) for k in itertools.product(*grid)]
    return out


def is_store(path: Path) -> bool:
    """Whether `path` is an actdb store, judged by content, not by file names: its manifest
    validates, or it holds a valid ingest state (an interrupted ingest). A web app's
    manifest.json does not make a folder a store."""
    return _not_a_store(Path(path)) is None


def _not_a_store(root: Path) -> str | None:
    """Why `root` is not an actdb store, or None when it is one."""
    if (root / MANIFEST_FILE).exists():
        try:
            Manifest.read(root)
            return None
        except StoreError as e:
            why = str(e)
    else:
        why = f"no {MANIFEST_FILE}"
    if (root / STATE_FILE).exists():
        try:
            state = read_state(root)
        except StoreError as e:
            return f"{why}; {e}"
        # read_state may hand back a dict (checked here) or an already validated record
        if not isinstance(state, dict) or (isinstance(state.get("identity"), dict)
                                           and isinstance(state.get("blocks_done"), int)):
            return None
        return f"{why}; {root / STATE_FILE}: expected an actdb ingest state, got other JSON"
    return why


def read_state(root: Path) -> IngestState | None:
    """The validated ingest state (store/ingest_state.py); None when there is none."""
    return _read_state(root)


def write_state(root: Path, state: IngestState) -> None:
    _write_state(root, state)


def check_target(root: Path) -> None:
    """Refuse, with one line and writing nothing, a folder an ingest may not write into: it must
    be missing, empty, or an actdb store holding nothing but the entries of the store layout, and
    in its folders nothing but the files actdb writes."""
    if not root.exists():
        return
    if not root.is_dir():
        raise StoreError(f"{root}: expected a folder for the store, got a file")
    names = sorted(p.name for p in root.iterdir() if p.name != LOCK_FILE)  # a stale lock is ours
    if not names:
        return
    why = _not_a_store(root)
    if why is not None:
        raise StoreError(f"{root}: not an actdb store; refusing to write into a folder that holds {names[0]!r} "
                         f"({why}); expected an empty folder or an actdb store; nothing was changed")
    foreign = [n for n in names if not is_store_entry(n)]
    if foreign:
        raise StoreError(f"{root}: holds {foreign[0]!r}, which actdb did not write; expected a store with "
                         f"nothing else in it (move it out and run again); nothing was changed")
    refuse_foreign_files(root, [root / n for n in names])


def refuse_foreign_files(root: Path, folders: list[Path]) -> None:
    """Refuse, deleting nothing, when a file under `folders` (actdb's own folders in the store at
    `root`) is not one actdb writes (layout.is_actdb_file): --overwrite, a resumed ingest and an
    index rebuild delete those folders, and a user's file must not go with them."""
    bad = foreign_file(root, folders)
    if bad is not None:
        raise StoreError(f"{bad}: not written by actdb; move it out and run again; nothing was changed")


def remove_store(root: Path) -> None:
    """Remove what actdb wrote in `root` (the entries of the store layout), and nothing else:
    the folder itself and the writer lock stay. Refuses, deleting nothing, where check_target does.
    The manifest and then the ingest state go last, so an interrupted removal still leaves a
    folder that is recognised as a store (and can be overwritten again)."""
    check_target(root)
    if not root.exists():
        return
    last = {MANIFEST_FILE: 1, STATE_FILE: 2}
    ours = sorted((p for p in root.iterdir() if is_store_entry(p.name) and p.name != LOCK_FILE),
                  key=lambda p: (last.get(p.name, 0), p.name))
    for p in ours:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


class MaskWriter:
    """Zarr arrays of one store, opened for writing whole blocks. An all-zero chunk (dead neurons,
    silent stretches) is not stored, as zarr's write_empty_chunks=False would do, but found by a
    cheap any() on the block: zarr's own test compares each chunk with the fill value element by
    element, a fifth of the writer's CPU (benchmarks/RESULTS.md, "Ingest overhead, third pass")."""

    def __init__(self, root: Path, layers: tuple[int, ...], d_ffn: int, n_tokens: int,
                 block_tokens: int, neuron_chunk: int, codec: str, zstd_level: int, create: bool) -> None:
        import zarr

        self.block_bytes = block_tokens // 8
        self.dir = root / MASKS_DIR
        group = zarr.open_group(self.dir, mode="a")
        self.arrays = {}
        for layer in layers:
            if create:
                arr = group.create_array(
                    layer_name(layer), shape=(d_ffn, (n_tokens + 7) // 8), dtype="uint8",
                    chunks=(min(neuron_chunk, d_ffn), self.block_bytes), fill_value=0,
                    compressors=mask_compressors(codec, zstd_level), overwrite=True)
            else:
                arr = group[layer_name(layer)]
            self.arrays[layer] = arr.with_config({"write_empty_chunks": True})

    def write_block(self, index: int, data: np.ndarray) -> None:
        """data: [n_layers, d_ffn, nbytes] for block `index`, in the order of `layers`."""
        start = index * self.block_bytes
        for i, (layer, arr) in enumerate(self.arrays.items()):
            arr[:, start:start + data.shape[-1]] = data[i]
            rows = arr.chunks[0]
            for c, path in enumerate(block_chunk_files(self.dir, {layer_name(layer): arr}, index)):  # neuron chunks in order
                if not data[i, c * rows:(c + 1) * rows].any():   # read as fill_value 0 without a file, as before
                    path.unlink(missing_ok=True)
            fault_point("mask-layer", f"{index}")   # a block half written: some layers, not all

    def block_files(self, index: int) -> list[Path]:
        """The chunk files block `index` may have written (all-zero chunks are not)."""
        return block_chunk_files(self.dir, {layer_name(l): a for l, a in self.arrays.items()}, index)
