"""`actdb ingest`: corpus -> tokens -> forward passes -> bit-packed fire masks.

Phase 1 (tokenize): the corpus is read and tokenized once into sequences; token ids and
sequence offsets go to `_staging/` (flat files, so memory does not grow with the corpus),
the token, document and vocabulary tables to Parquet. Bad input stops here, before any
model time is spent.
Phase 2 (forward): batches of whole sequences, fixed by sequence index (so a resumed run
sees exactly the batches of an uninterrupted one), go through the model; a hook on each
recorded layer's activation packs `act > 0` on the model's device (the sign rule), a hook on
the input of its output projection derives every magnitude rule's mask from h in the same
forward (ingest/rules.py); a writer thread compresses and writes each completed block of every
rule and commits it, while the next batches run.
"""
from __future__ import annotations

import dataclasses
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from .adapters import adapter_for, get_module
from .capture import CaptureWriter, RowAccumulator, magnitude_stats, save_projection
from .rules import MagnitudeRule, definition, magnitude_rules, top_thresholds, unfixed_top_rules
from .corpus import (check_corpus_files, doc_token_limit, read_documents, sha256_file,
                     special_tokens, tokenize_documents)
from ..errors import ActdbError, InputError, StoreError
from ..files import file_digest, remove_temporaries
from ..store.manifest import FORMAT_VERSION, CorpusFile, FireRuleRecord, Manifest
from .models import (check_seq_len, choose_dtype, load_config, load_model, load_tokenizer,
                     resolve_model_dir, should_offload, weights_sha256)
from .packing import BlockAssembler, RowPacker
from ..settings import IngestSettings, RaySettings
from ..devices import choose_device
from ..grammar import parse_fire_rule, parse_layer_list
from ..store.ingest_state import IngestState
from ..store.layout import (CAPTURE_DIR, CAPTURE_KINDS as KINDS, DOCS_FILE, LOCK_FILE, MANIFEST_FILE, MASKS_DIR,
                            PENDING_CHECKSUMS, PROJECTION_FILE, RULES_DIR, SIGN_RULE, STAGING, STAGING_IDS,
                            STAGING_OFFSETS, STATE_FILE, VOCAB_FILE, rule_dir, token_parts)
from ..store.lock import writer_lock
from ..store.writer import (MaskWriter, block_chunk_files, check_target, codec_name,
                    pending_checksums, read_state, record_checksums, remove_store, seal_checksums, write_state)
from .tables import write_token_tables


@dataclass(frozen=True)
class IngestSummary:
    store: Path
    n_tokens: int
    n_sequences: int
    n_docs: int
    layers: tuple[int, ...]
    d_ffn: int
    seconds: float
    forward_seconds: float
    mask_bytes: int
    offload: bool
    resumed_from: int
    index_seconds: float = 0.0
    max_tokens: int | None = None   # set when the budget was cut to whole sequences (below it)
    workers: tuple[str, ...] = ()   # on Ray: the workers, then a line per worker with its share
    startup_seconds: float = 0.0    # on Ray: connecting and starting the workers (in `seconds` too)

    def lines(self) -> list[str]:
        bits = self.n_tokens * len(self.layers) * self.d_ffn
        return [
            f"store      {self.store}",
            f"tokens     {self.n_tokens:,} in {self.n_sequences:,} sequences from {self.n_docs:,} documents"
            + (f" (resumed at token {self.resumed_from:,})" if self.resumed_from else "")
            + (f" (--max-tokens {self.max_tokens:,}, cut to whole sequences)" if self.max_tokens else ""),
            f"neurons    {len(self.layers)} layers x {self.d_ffn} = {len(self.layers) * self.d_ffn:,}"
            + (" (layer-by-layer)" if self.offload else ""),
            f"time       {self.seconds:.1f} s ({self.n_tokens / max(self.seconds, 1e-9):,.0f} tok/s; "
            f"forward {self.forward_seconds:.1f} s)" + (f"; then the index {self.index_seconds:.1f} s"
                                                        if self.index_seconds else ""),
            f"masks      {self.mask_bytes / 1e6:,.2f} MB on disk, {8 * self.mask_bytes / max(bits, 1):.3f} bits per "
            f"(token, neuron)",
        ] + [f"worker     {w}" for w in self.workers]


class StopForward(Exception):
    """Raised after the last recorded layer: the rest of the network is not needed."""


def block_tokens_for(s: IngestSettings, n_layers: int, d_ffn: int) -> int:
    """--block-tokens, lowered so one block of masks of every rule (rules x layers x d_ffn x
    tokens/8 bytes) fits --block-memory-mb; a multiple of 8, at least 8. Deterministic, so
    resume sees the same."""
    cap = int(s.block_memory_mb * 2**20 * 8 // (len(s.fire_rule) * n_layers * d_ffn)) // 8 * 8
    return max(8, min(s.block_tokens, cap))


def _prepare_store(root: Path, s: IngestSettings) -> IngestState | None:
    """Check what is at `root` against --resume/--overwrite (under the writer lock); returns the
    state to resume."""
    check_target(root)   # again: the folder may have changed before we held the lock
    if s.overwrite:
        remove_store(root)
    if (root / MANIFEST_FILE).exists():
        if s.resume:
            raise StoreError(f"{root}: store is already complete; nothing to resume")
        raise StoreError(f"{root}: store exists (pass --overwrite to replace it)")
    state = read_state(root)
    if state is not None and not s.resume:
        raise StoreError(f"{root}: holds an interrupted ingest (pass --resume to continue it, or --overwrite)")
    if state is None and s.resume:
        raise StoreError(f"{root}: no interrupted ingest to resume")
    return state


def _check_staging(root: Path, tokenized: dict[str, Any]) -> None:
    """The staged token ids and sequence offsets are what tokenization wrote (their digests are
    in the ingest state): a resumed forward never runs on changed ids."""
    recorded = tokenized.get("staging")
    if not isinstance(recorded, dict) or set(recorded) != {STAGING_IDS, STAGING_OFFSETS}:
        raise StoreError(f"{root / STATE_FILE}: tokenized.staging: expected the digests of {STAGING_IDS} and "
                         f"{STAGING_OFFSETS}, got {recorded!r}; start the ingest again with --overwrite")
    for name, want in recorded.items():
        p = root / STAGING / name
        try:
            got = file_digest(p)
        except OSError as e:
            raise StoreError(f"{p}: unreadable ({e.strerror or e}); start the ingest again with --overwrite") from None
        if got != want:
            raise StoreError(f"{p}: differs from the digest recorded in {STATE_FILE} (changed since tokenization); "
                             "start the ingest again with --overwrite")


def _identity(s: IngestSettings, corpus: list[CorpusFile], weights: str, layers: tuple[int, ...],
              dtype: torch.dtype) -> dict[str, Any]:
    """What must be the same for a resumed ingest to continue the interrupted one."""
    return {"model": s.model, "weights_sha256": weights, "corpus": [dataclasses.asdict(c) for c in corpus],
            "layers": list(layers), "seq_len": s.seq_len, "mode": s.mode, "batch_size": s.batch_size,
            "max_tokens": s.max_tokens, "dtype": str(dtype).removeprefix("torch."),
            "block_tokens": s.block_tokens, "neuron_chunk": s.neuron_chunk, "codec": s.codec,
            "zstd_level": s.zstd_level,
            "domain": s.domain, "skip_empty": s.skip_empty, "capture": s.capture,
            "capture_topk": s.capture_topk, "fire_rules": [parse_fire_rule(r).name for r in s.fire_rule]}


def _check_identity(old: dict[str, Any], new: dict[str, Any]) -> None:
    # ingests interrupted before the codec and fire-rule settings existed wrote zstd, sign only
    old = {"codec": "zstd", "fire_rules": [SIGN_RULE], **old}
    for k, v in new.items():
        if old.get(k) != v:
            raise InputError(f"--resume: {k}: expected {old.get(k)!r} (as in the interrupted ingest), got {v!r}")


def ingest(settings: IngestSettings, ray: RaySettings | None = None) -> IngestSummary:
    """Run a whole ingest (or finish an interrupted one) and return its summary; with `ray`
    (--ray), the forward passes (and the index) run on a Ray cluster (ray_ingest.py)."""
    if not settings.out:
        raise InputError("no output store given")
    ray = ray or RaySettings()
    if ray.on:   # one connection for the forward passes and the index; a missing Ray before any write
        from ..cluster import connected

        with connected(ray):
            return _locked_ingest(settings, ray)
    return _locked_ingest(settings, ray)


def _locked_ingest(settings: IngestSettings, ray: RaySettings) -> IngestSummary:
    root = Path(settings.out).resolve()   # ".", "./x/", "x/../x", a symlink: one folder, one behaviour
    check_target(root)   # before anything is written there: no lock file in a folder that is not ours
    created = not root.exists()
    fresh = created or not any(p.name != LOCK_FILE for p in root.iterdir())   # empty, a stale lock aside
    try:
        root.mkdir(parents=True, exist_ok=True)
        with writer_lock(root, "ingest"):
            try:
                return _ingest(settings.replace(out=str(root)), ray)
            except InputError:
                if fresh:
                    _discard_uncommitted(root)
                raise
    except OSError as e:  # disk full, no permission...: one line, and say whether it can be resumed
        where = f" ({e.filename})" if e.filename else ""
        hint = "; the store can be resumed with --resume" if (root / STATE_FILE).exists() else ""
        raise StoreError(f"{root}: ingest failed: {e.strerror or e}{where}{hint}") from None
    finally:
        if created:   # refused before writing anything (bad corpus, unknown model): leave no empty folder
            try:
                root.rmdir()
            except OSError:   # not empty: a store, or an interrupted one to resume
                pass


def _discard_uncommitted(root: Path) -> None:
    """After an ingest into a new (or empty) folder refused its input (a bad corpus record found while
    tokenizing, a model that cannot be used): remove what it wrote if no mask block was committed.
    The input must change before a rerun, and a resume of other input is refused, so the interrupted
    store could only block the rerun. A failure of the disk (no space, say) or blocks committed
    leave the store, to be resumed."""
    try:
        state = read_state(root)
        if (root / MANIFEST_FILE).exists() or (state is not None and state.blocks_done > 0):
            return
        remove_store(root)
    except (ActdbError, OSError):   # a damaged state, or a file that is not ours: leave everything
        pass


def _ingest(settings: IngestSettings, ray: RaySettings) -> IngestSummary:
    t0 = time.perf_counter()
    s = settings
    if not s.out:
        raise InputError("no output store given")
    root = Path(s.out)
    files = check_corpus_files(s.corpus)
    state = _prepare_store(root, s)

    model_dir, revision = resolve_model_dir(s.model, s.revision)
    config = load_config(model_dir)
    check_seq_len(config, s.seq_len)
    adapter = adapter_for(config.model_type)
    n_layers = config.num_hidden_layers
    layers = parse_layer_list(s.layers, n_layers)
    device = choose_device(s.device)
    # with GPU workers on Ray, 'auto' is chosen for their device, not the driver's
    dtype = choose_dtype(s.dtype, config, torch.device("cuda") if ray.gpus_per_worker else device)
    d_ffn = adapter.d_ffn(config)
    s = s.replace(block_tokens=block_tokens_for(s, len(layers), d_ffn))
    if not s.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    tokenizer = load_tokenizer(model_dir)
    corpus = [CorpusFile(str(p), sha256_file(p), p.stat().st_size) for p in files]
    weights = weights_sha256(model_dir)
    identity = _identity(s, corpus, weights, layers, dtype)
    if state is not None:
        _check_identity(state.identity, identity)
        # writes cut short by the kill: zarr's chunk files, atomic_path's temporaries
        remove_temporaries(root, suffixes=(".partial",))
        pending_checksums(root)   # the committed steps' records, refused now if damaged, not at the end
    else:
        root.mkdir(parents=True, exist_ok=True)
        state = IngestState(identity=identity)
        write_state(root, state)

    special = special_tokens(tokenizer)
    if state.tokenized is None:
        docs = read_documents(files, s.domain, s.skip_empty)
        limit = doc_token_limit(special, s.seq_len, s.mode, s.max_tokens)
        counts = write_token_tables(root, tokenizer, tokenize_documents(docs, tokenizer, max_doc_tokens=limit),
                                    special, s)
        state = state.replace(tokenized={**counts, "staging": {name: file_digest(root / STAGING / name)
                                                               for name in (STAGING_IDS, STAGING_OFFSETS)}})
        record_checksums(root, "tables", [*token_parts(root), root / DOCS_FILE, root / VOCAB_FILE])
        write_state(root, state)
    tok = state.tokenized
    _check_staging(root, tok)
    n_tokens, n_seqs = tok["n_tokens"], tok["n_sequences"]
    if n_tokens == 0:
        if tok.get("budget_cut"):
            raise InputError(f"--max-tokens {s.max_tokens}: the budget is cut to whole sequences, and the first "
                             f"sequence has {tok['budget_cut']} tokens: expected at least {tok['budget_cut']}")
        raise InputError("corpus gave no tokens")

    offload = should_offload(s.offload, config, dtype, device)
    lm = load_model(model_dir, config, device, dtype, offload)
    manifest = Manifest(
        format_version=FORMAT_VERSION, actdb_version=__version__, model=s.model, model_revision=revision,
        weights_sha256=weights, architecture=config.model_type, model_class=lm.model_class,
        family=adapter.family, fire_rule=adapter.fire_rule(type(get_module(lm.layers[0], adapter.act)).__name__),
        n_layers=n_layers, layers=layers, d_ffn=d_ffn, d_model=config.hidden_size,
        vocab_size=config.vocab_size, dtype=identity["dtype"], seq_len=s.seq_len, mode=s.mode,
        prefix_tokens=special.prefix, suffix_tokens=special.suffix, separator_token=special.separator,
        corpus=tuple(corpus), max_tokens=s.max_tokens, n_tokens=n_tokens, n_sequences=n_seqs,
        n_docs=tok["n_docs"], block_tokens=s.block_tokens, neuron_chunk=s.neuron_chunk,
        codec=codec_name(s.codec, s.zstd_level), capture=KINDS[s.capture], capture_topk=s.capture_topk,
        extra={"engine": "ray"} if ray.on else {})
    manifest.validate()

    start_row = state.blocks_done * s.block_tokens
    create = state.blocks_done == 0
    rules = [parse_fire_rule(r) for r in s.fire_rule]
    writer = {r.name: MaskWriter(rule_dir(root, r.name), layers, d_ffn, n_tokens, s.block_tokens, s.neuron_chunk,
                                 s.codec, s.zstd_level, create) for r in rules}
    captures = CaptureWriter(root, KINDS[s.capture], len(layers), n_tokens, s.capture_topk, s.block_tokens, create)
    record_checksums(root, "arrays", [*root.glob("masks/**/zarr.json"), *root.glob(f"{RULES_DIR}/*/masks/**/zarr.json"),
                                      *root.glob("capture/**/zarr.json")])
    if not (root / PROJECTION_FILE).exists():
        save_projection(root, lm.model, lm, layers, lm.streamer)
    record_checksums(root, "projection", [root / PROJECTION_FILE])
    first_rows = min(s.block_tokens, n_tokens)
    # thresholds are committed with block 0, so blocks done without them is a damaged state: a
    # resume would fix them from a later block, and the masks would mix two thresholds
    unfixed = unfixed_top_rules(rules, state.thresholds)
    if unfixed and state.blocks_done:
        raise StoreError(f"{root / STATE_FILE}: {state.blocks_done} blocks done but no thresholds for "
                         f"{', '.join(unfixed)}; start the ingest again with --overwrite")
    shares: tuple[str, ...] = ()
    startup = 0.0
    if ray.on:
        from .ray_ingest import forward_on_ray

        # top:Q thresholds: block 0 is forwarded first and the others under its thresholds
        fwd_seconds, startup, shares, thresholds = forward_on_ray(
            root, model_dir, s, ray, state, (writer, captures), n_tokens, identity["dtype"], _forward_all,
            commit_files)
        mags = magnitude_rules(rules, len(layers), d_ffn, first_rows, thresholds)
    else:
        mags = magnitude_rules(rules, len(layers), d_ffn, first_rows, state.thresholds)
        fwd_seconds = _forward_all(root, lm, layers, d_ffn, s, state, (writer, captures), tokenizer, start_row,
                                   n_tokens, rules, mags)
    records = tuple(FireRuleRecord(r.name, definition(r, adapter, first_rows, manifest.fire_rule),
                                   tuple(mags[r.name].values) if r.name in mags else ()) for r in rules)
    manifest = dataclasses.replace(manifest, fire_rules=records, checksums_sha256=seal_checksums(root))
    manifest.write(root)  # the store is complete from here on
    (root / STATE_FILE).unlink()
    shutil.rmtree(root / STAGING, ignore_errors=True)
    shutil.rmtree(root / PENDING_CHECKSUMS, ignore_errors=True)
    mask_bytes = sum(p.stat().st_size for r in rules for p in (rule_dir(root, r.name) / MASKS_DIR).rglob("*")
                     if p.is_file())
    seconds = time.perf_counter() - t0
    index_seconds = 0.0
    if s.index:
        from ..index.build import build_index

        t_index = time.perf_counter()
        try:
            # counted where the forward ran: on a GPU the index keeps pace with it (SPEC §4)
            on = str(device) if str(device).startswith("cuda") else "cpu"
            build_index(root, progress=s.progress, ray=ray, device=on)
        except ActdbError as e:
            raise StoreError(f"{root}: the store is complete, but building its index failed ({e}); "
                             f"run `actdb index {root}` to retry") from None
        index_seconds = time.perf_counter() - t_index
    return IngestSummary(root, n_tokens, n_seqs, tok["n_docs"], layers, d_ffn, seconds,
                         fwd_seconds, mask_bytes, offload, start_row, index_seconds,
                         s.max_tokens if tok.get("budget_cut") and n_tokens < s.max_tokens else None, shares, startup)


def write_block(writers: tuple, index: int, masks: dict[str, np.ndarray], stats: dict) -> None:
    """Write block `index`'s chunk files: each rule's masks [layers, d_ffn, bytes] and capture rows."""
    for rule, w in writers[0].items():
        w.write_block(index, masks[rule])
    writers[1].write_block(index, stats)


def commit_files(root: Path, writers: tuple, index: int) -> None:
    """Record the checksums of block `index`'s files (every rule's), before the block is marked done."""
    files = [f for w in writers[0].values() for f in w.block_files(index)]
    record_checksums(root, f"block-{index:06d}", files +
                     block_chunk_files(root / CAPTURE_DIR, writers[1].arrays, index))


class _Writer(threading.Thread):
    """Writes and commits blocks in order while the forward passes go on (with state None, only
    writes them: a Ray worker's, which its driver commits)."""

    def __init__(self, root: Path, writers: tuple, state: IngestState | None) -> None:
        super().__init__(daemon=True)
        self.root, self.writers, self.state = root, writers, state
        self.q: queue.Queue = queue.Queue(maxsize=2)  # bounds host memory to a few blocks
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            index, masks, stats, thresholds = item
            try:
                write_block(self.writers, index, masks, stats)
                if self.state is None:   # a Ray worker's blocks: the driver commits them
                    continue
                commit_files(self.root, self.writers, index)
                # top:Q thresholds are fixed once block 0 is: they are committed with it
                self.state = self.state.replace(blocks_done=index + 1, thresholds=thresholds)
                write_state(self.root, self.state)
            except BaseException as e:  # reported by the main thread
                self.error = e

    def put(self, item) -> None:
        self._check()
        self.q.put(item)

    def close(self) -> None:
        self.q.put(None)
        self.join()
        self._check()

    def _check(self) -> None:
        if self.error is not None:
            e = self.error
            if isinstance(e, OSError):
                raise StoreError(f"{self.root}: writing masks failed ({e.strerror or e}); "
                                 f"the store can be resumed with --resume") from None
            raise e


def _forward_all(root: Path, lm, layers, d_ffn, s: IngestSettings, state, writers: tuple,
                 tokenizer, start_row: int, n_tokens: int, rules: list, mags: dict[str, MagnitudeRule],
                 stop_row: int | None = None) -> float:
    """Forward rows start_row.. (a block boundary) and write every rule's masks of their blocks
    (mags: the magnitude rules among them, magnitude_rules), committing each block unless state
    is None; stop_row (a block boundary, or n_tokens): the blocks before it only, from the same
    batches as a whole run (a Ray worker's block). A top:Q rule in mags not yet fixed is fixed by
    block 0, which must then be among the blocks forwarded."""
    from tqdm import tqdm

    staging = root / STAGING
    token_ids = np.memmap(staging / STAGING_IDS, dtype=np.int32, mode="r")
    offsets = np.fromfile(staging / STAGING_OFFSETS, dtype=np.int64)
    n_seqs = len(offsets) - 1
    B = s.batch_size
    stop_row = n_tokens if stop_row is None else stop_row
    n_batches = int(np.searchsorted(offsets, stop_row - 1, side="right") - 1) // B + 1 if stop_row else 0
    first_seq = int(np.searchsorted(offsets, start_row, side="right") - 1) if start_row < n_tokens else n_seqs
    first_batch = first_seq // B
    skip = start_row - int(offsets[min(first_batch * B, n_seqs)]) if start_row < n_tokens else 0
    names = [r.name for r in rules]
    packers = {name: [RowPacker(skip) for _ in layers] for name in names}
    kinds = KINDS[s.capture]
    rows_acc = RowAccumulator(skip)
    stats_out: dict[str, list] = {kind: [None] * len(layers) for kind in kinds}
    assemblers = {name: BlockAssembler(len(layers), d_ffn, s.block_tokens // 8,
                                       first_block=start_row // s.block_tokens) for name in names}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = lm.device
    current: dict[str, Any] = {}
    packed_out: dict[str, list[torch.Tensor | None]] = {name: [None] * len(layers) for name in names}
    handles = []

    def valid_rows(x: torch.Tensor) -> torch.Tensor:
        # [batch, seq, d_ffn], or [batch*seq, d_ffn] where the model flattens (OPT) -> [n, d_ffn], n valid tokens
        x = x.reshape(-1, d_ffn)
        return x[current["valid"]] if current["padded"] else x

    def make_hook(i: int):
        def hook(module, inputs, output):
            if SIGN_RULE in packers:
                fired = valid_rows(output > 0)                            # [n, d_ffn] bool
                packed_out[SIGN_RULE][i] = packers[SIGN_RULE][i].push(fired)  # [d_ffn, n/8] uint8 or None
            if "ffn" in stats_out:
                stats_out["ffn"][i] = magnitude_stats(output, current["valid"], current["lengths"], s.capture_topk)
        return hook

    def make_h_hook(i: int):
        def hook(module, inputs):
            a = valid_rows(inputs[0].detach()).float().abs()              # [n, d_ffn] |h|, h = fc_out's input
            for name, rule in mags.items():
                packed_out[name][i] = packers[name][i].push(rule.fired(i, a, current["row0"]))
        return hook

    def make_resid_hook(i: int):
        def hook(module, inputs, output):
            h = output[0] if isinstance(output, tuple) else output       # [batch, seq, d_model]
            stats_out["resid"][i] = magnitude_stats(h, current["valid"], current["lengths"], s.capture_topk)
        return hook

    def stop_hook(module, inputs, output):
        raise StopForward

    for i, l in enumerate(layers):
        block = lm.layers[l]
        if SIGN_RULE in packers or "ffn" in kinds:
            handles.append(get_module(block, lm.adapter.act).register_forward_hook(make_hook(i)))
        if mags:
            handles.append(get_module(block, lm.adapter.fc_out).register_forward_pre_hook(make_h_hook(i)))
        if "resid" in kinds:
            handles.append(block.register_forward_hook(make_resid_hook(i)))
    handles.append(lm.layers[max(layers)].register_forward_hook(stop_hook))

    out = _Writer(root, writers, state)

    def emit(blocks: dict[str, list]) -> None:
        # every rule's assembler received the same bytes, so they complete the same blocks
        for k, (index, _) in enumerate(blocks[names[0]]):
            if index * s.block_tokens >= stop_row:   # rows of the next block in the last batch
                continue
            masks = {name: blocks[name][k][1] for name in names}
            if index == 0:
                for name, rule in mags.items():
                    rule.patch_first_block(masks[name])
            n = min(s.block_tokens, n_tokens - index * s.block_tokens)
            out.put((index, masks, rows_acc.take(n) if kinds else {}, top_thresholds(mags)))

    def push_all(parts: dict[str, list]) -> None:
        if all(parts[name] for name in names):
            emit({name: assemblers[name].push(torch.stack(parts[name]).cpu().numpy())   # [layers, d_ffn, bytes]
                  for name in names})
    out.start()
    fwd = 0.0
    bar = tqdm(total=n_tokens, initial=start_row, unit="tok", unit_scale=True, desc="forward",
               disable=not s.progress, dynamic_ncols=True)
    try:
        for b in range(first_batch, n_batches):
            lo, hi = b * B, min((b + 1) * B, n_seqs)
            lengths = np.diff(offsets[lo:hi + 1])
            width = int(lengths.max())
            ids = np.full((hi - lo, width), pad_id, dtype=np.int64)
            mask = np.zeros((hi - lo, width), dtype=np.int64)
            for j in range(hi - lo):
                a, e = offsets[lo + j], offsets[lo + j + 1]
                ids[j, :e - a] = token_ids[a:e]
                mask[j, :e - a] = 1
            input_ids = torch.from_numpy(ids).to(device)                # [batch, seq]
            attention = torch.from_numpy(mask).to(device)               # [batch, seq]
            current["padded"] = bool((lengths != width).any())
            current["valid"] = attention.bool().reshape(-1)             # [batch*seq]
            current["lengths"] = lengths.tolist()
            current["row0"] = int(offsets[lo])                          # store row of the batch's first token
            t = time.perf_counter()
            with torch.inference_mode():
                try:
                    lm.base(input_ids=input_ids, attention_mask=attention, use_cache=False)
                except StopForward:
                    pass
            if kinds:
                rows_acc.push({f"{kind}_{name}": torch.stack([st[name] for st in stats_out[kind]]).cpu().numpy()
                               for kind in kinds for name in stats_out[kind][0]})   # [layers, n, ...]
            push_all({name: [p for p in packed_out[name] if p is not None] for name in names})
            for name in names:
                packed_out[name][:] = [None] * len(layers)
            fwd += time.perf_counter() - t
            bar.update(int(offsets[hi] - max(offsets[lo], start_row)))
        if stop_row == n_tokens:   # a Ray worker's block before the last ends on a block boundary
            push_all({name: [p for p in (q.finish(d_ffn, device) for q in packers[name]) if p is not None]
                      for name in names})
            last = {name: assemblers[name].finish() for name in names}
            if last[names[0]] is not None:
                emit({name: [last[name]] for name in names})
    finally:
        bar.close()
        for h in handles:
            h.remove()
        out.close()
    return fwd
