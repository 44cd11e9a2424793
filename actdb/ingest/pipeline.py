"""`actdb ingest`: corpus -> tokens -> forward passes -> bit-packed fire masks.

Phase 1 (tokenize): the corpus is read and tokenized once into sequences; token ids and
sequence offsets go to `_staging/` (flat files, so memory does not grow with the corpus),
the token, document and vocabulary tables to Parquet. Bad input stops here, before any
model time is spent.
Phase 2 (forward, forward.py): batches of whole sequences, fixed by sequence index (so a resumed
run sees exactly the batches of an uninterrupted one), go through the model; hooks on each recorded
layer (hooks.py) compute every fire rule's mask in the same forward, packed on the model's device;
a writer thread compresses and writes each completed block of every rule and commits it, while
the next batches run.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from .adapters import adapter_for, get_module
from .capture import CaptureWriter, save_projection
from .forward import ForwardLoop
from .hooks import check_rules, fire_tests, unfixed_rules
from .corpus import (check_corpus_files, doc_token_limit, read_documents, sha256_file,
                     special_tokens, tokenize_documents)
from ..errors import ActdbError, InputError, StoreError
from ..files import file_digest, remove_temporaries
from ..store.manifest import FORMAT_VERSION, CorpusFile, FireRuleRecord, Manifest
from .models import (check_seq_len, choose_dtype, load_config, load_model, load_tokenizer,
                     resolve_model_dir, should_offload, weights_sha256)
from ..settings import IngestSettings, RaySettings
from ..devices import choose_device
from ..grammar import parse_fire_rule, parse_layer_list
from ..store.ingest_state import IngestState
from ..store.layout import (CAPTURE_KINDS as KINDS, DOCS_FILE, LOCK_FILE, MANIFEST_FILE, MASKS_DIR,
                            PENDING_CHECKSUMS, PROJECTION_FILE, RULES_DIR, SIGN_RULE, STAGING, STAGING_IDS,
                            STAGING_OFFSETS, STATE_FILE, VOCAB_FILE, rule_dir, token_parts)
from ..store.lock import writer_lock
from ..store.neuron_thresholds import from_state
from ..store.writer import (MaskWriter, check_target, codec_name, pending_checksums, read_state, record_checksums,
                            remove_store, seal_checksums, write_state)
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
    writer_wait_seconds: float = 0.0   # of forward_seconds: the forward stood still, the block writer behind

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
            f"forward {self.forward_seconds:.1f} s"
            + (f", {self.writer_wait_seconds:.1f} s of it waiting for the writer" if self.writer_wait_seconds >= 0.05 else "")
            + ")" + (f"; then the index {self.index_seconds:.1f} s" if self.index_seconds else ""),
            f"masks      {self.mask_bytes / 1e6:,.2f} MB on disk, {8 * self.mask_bytes / max(bits, 1):.3f} bits per "
            f"(token, neuron)",
        ] + [f"worker     {w}" for w in self.workers]


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
    rules = [parse_fire_rule(r) for r in s.fire_rule]
    check_rules(rules, adapter)
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
    writer = {r.name: MaskWriter(rule_dir(root, r.name), layers, d_ffn, n_tokens, s.block_tokens, s.neuron_chunk,
                                 s.codec, s.zstd_level, create) for r in rules}
    captures = CaptureWriter(root, KINDS[s.capture], len(layers), n_tokens, s.capture_topk, s.block_tokens, create)
    record_checksums(root, "arrays", [*root.glob("masks/**/zarr.json"), *root.glob(f"{RULES_DIR}/*/masks/**/zarr.json"),
                                      *root.glob("capture/**/zarr.json")])
    if not (root / PROJECTION_FILE).exists():
        save_projection(root, lm.model, lm, layers, lm.streamer)
    record_checksums(root, "projection", [root / PROJECTION_FILE])
    first_rows = min(s.block_tokens, n_tokens)
    # calibrated thresholds (top:Q, ntop:Q) are committed with block 0, so blocks done without them is a
    # damaged state: a resume would fix them from a later block, and the masks would mix two thresholds
    unfixed = unfixed_rules(rules, state.thresholds)
    if unfixed and state.blocks_done:
        raise StoreError(f"{root / STATE_FILE}: {state.blocks_done} blocks done but no thresholds for "
                         f"{', '.join(unfixed)}; start the ingest again with --overwrite")
    thresholds = from_state(root, state.thresholds, layers, d_ffn)
    shares: tuple[str, ...] = ()
    startup = writer_wait = 0.0
    if ray.on:
        from .ray_ingest import forward_on_ray

        # calibrated thresholds: block 0 is forwarded first and the others under its thresholds
        fwd_seconds, startup, shares, thresholds = forward_on_ray(
            root, model_dir, s, ray, state, (writer, captures), n_tokens, identity["dtype"], layers, thresholds)
        tests = fire_tests(rules, len(layers), d_ffn, first_rows, thresholds)
    else:
        tests = fire_tests(rules, len(layers), d_ffn, first_rows, thresholds)
        loop = ForwardLoop(root, lm, layers, d_ffn, s, state, (writer, captures), tokenizer, start_row, n_tokens, tests)
        fwd_seconds, writer_wait = loop.run(), loop.writer_wait
    records = tuple(FireRuleRecord(t.name, t.definition(adapter, first_rows, manifest.fire_rule), t.thresholds())
                    for t in tests)
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
            # counted where the forward ran: on a GPU the index keeps pace with it
            on = str(device) if str(device).startswith("cuda") else "cpu"
            build_index(root, progress=s.progress, ray=ray, device=on)
        except ActdbError as e:
            raise StoreError(f"{root}: the store is complete, but building its index failed ({e}); "
                             f"run `actdb index {root}` to retry") from None
        index_seconds = time.perf_counter() - t_index
    return IngestSummary(root, n_tokens, n_seqs, tok["n_docs"], layers, d_ffn, seconds,
                         fwd_seconds, mask_bytes, offload, start_row, index_seconds,
                         s.max_tokens if tok.get("budget_cut") and n_tokens < s.max_tokens else None, shares, startup,
                         writer_wait)

