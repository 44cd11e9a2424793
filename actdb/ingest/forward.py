"""The ingest's forward loop: batches of staged token rows through the model, every fire rule's
masks packed on the model's device, assembled into blocks on the host and written (and committed)
by a writer thread while the next batches run. Used by the single-process ingest (pipeline.py) and
by each Ray worker for its blocks (ray_ingest.py).

Batches are whole sequences fixed by sequence index (batch b is sequences b*B..(b+1)*B), so a
resumed run, or a Ray worker forwarding one block, runs exactly the batches of an uninterrupted
run; rows before its first row (committed already, or another worker's) are dropped by the packers.
"""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..devices import steady_malloc
from ..errors import StoreError
from ..settings import IngestSettings
from ..store.ingest_state import IngestState
from ..store.layout import CAPTURE_DIR, CAPTURE_KINDS, STAGING, STAGING_IDS, STAGING_OFFSETS
from ..store.neuron_thresholds import to_state
from ..store.writer import block_chunk_files, record_checksums, write_state
from .capture import RowAccumulator
from .hooks import FireTest, LayerHooks, calibrated_thresholds
from .models import LoadedModel
from .packing import BlockAssembler, RowPacker

Writers = tuple   # ({rule name: MaskWriter}, CaptureWriter)


def write_block(writers: Writers, index: int, masks: dict[str, np.ndarray], stats: dict) -> None:
    """Write block `index`'s chunk files: each rule's masks [layers, d_ffn, bytes] and capture rows."""
    for rule, w in writers[0].items():
        w.write_block(index, masks[rule])
    writers[1].write_block(index, stats)


def commit_files(root: Path, writers: Writers, index: int) -> None:
    """Record the checksums of block `index`'s files (every rule's), before the block is marked done."""
    files = [f for w in writers[0].values() for f in w.block_files(index)]
    record_checksums(root, f"block-{index:06d}", files +
                     block_chunk_files(root / CAPTURE_DIR, writers[1].arrays, index))


class BlockWriter(threading.Thread):
    """Writes and commits blocks in order while the forward passes go on (with state None, only
    writes them: a Ray worker's, which its driver commits)."""

    def __init__(self, root: Path, writers: Writers, state: IngestState | None, layers: tuple[int, ...],
                 release: Callable[[dict[str, np.ndarray]], None] = lambda masks: None) -> None:
        super().__init__(daemon=True)
        self.root, self.writers, self.state, self.layers = root, writers, state, layers
        self.release = release   # called with a block's masks once they are written
        self.q: queue.Queue = queue.Queue(maxsize=2)  # bounds host memory to a few blocks
        self.error: BaseException | None = None
        self.waited = 0.0   # seconds the forward loop stood still because the queue was full

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
                self.release(masks)
                if self.state is None:   # a Ray worker's blocks: the driver commits them
                    continue
                commit_files(self.root, self.writers, index)
                # calibrated thresholds are fixed once block 0 is: they are committed with it
                self.state = self.state.replace(blocks_done=index + 1, thresholds=to_state(
                    self.root, self.layers, thresholds, self.state.thresholds))
                write_state(self.root, self.state)
            except BaseException as e:  # reported by the main thread
                self.error = e

    def put(self, item: tuple) -> None:
        self._check()
        t = time.perf_counter()
        self.q.put(item)
        self.waited += time.perf_counter() - t

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


class ForwardLoop:
    """Forward token rows start_row.. (a block boundary) and write every rule's masks of their
    blocks, committing each block unless state is None (a Ray worker's). stop_row (a block
    boundary, or n_tokens): the blocks before it only, from the same batches as a whole run. A
    calibrated rule among `tests` not yet fixed is fixed by block 0, which must then be among the
    blocks forwarded."""

    def __init__(self, root: Path, lm: LoadedModel, layers: tuple[int, ...], d_ffn: int, s: IngestSettings,
                 state: IngestState | None, writers: Writers, tokenizer, start_row: int, n_tokens: int,
                 tests: list[FireTest], stop_row: int | None = None) -> None:
        self.root, self.lm, self.layers, self.d_ffn, self.s = root, lm, layers, d_ffn, s
        self.state, self.writers, self.tests = state, writers, tests
        self.start_row, self.n_tokens = start_row, n_tokens
        self.stop_row = n_tokens if stop_row is None else stop_row
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        # the batches: staged ids and offsets (flat files), batch range covering start_row..stop_row
        self.token_ids = np.memmap(root / STAGING / STAGING_IDS, dtype=np.int32, mode="r")
        self.offsets = np.fromfile(root / STAGING / STAGING_OFFSETS, dtype=np.int64)
        self.n_seqs = len(self.offsets) - 1
        B = s.batch_size
        stop = self.stop_row
        self.n_batches = int(np.searchsorted(self.offsets, stop - 1, side="right") - 1) // B + 1 if stop else 0
        first_seq = (int(np.searchsorted(self.offsets, start_row, side="right") - 1) if start_row < n_tokens
                     else self.n_seqs)
        self.first_batch = first_seq // B
        # rows of the first batch before start_row: already committed (or another worker's)
        skip = start_row - int(self.offsets[min(self.first_batch * B, self.n_seqs)]) if start_row < n_tokens else 0

        # per rule: a packer per layer (bits to whole bytes, on the device), one assembler (bytes to blocks, host)
        self.names = [t.name for t in tests]
        self.packers = {name: [RowPacker(skip) for _ in layers] for name in self.names}
        self.assemblers = {name: BlockAssembler(len(layers), d_ffn, s.block_tokens // 8,
                                                first_block=start_row // s.block_tokens) for name in self.names}
        self.packed: dict[str, list[torch.Tensor | None]] = {name: [None] * len(layers) for name in self.names}
        # capture: stats rows on the host, cut into the same blocks as the masks
        self.kinds = CAPTURE_KINDS[s.capture]
        self.rows = RowAccumulator(skip)
        self.writer = BlockWriter(root, writers, state, layers, release=self._release)

    def _release(self, masks: dict[str, np.ndarray]) -> None:
        for name, block in masks.items():
            self.assemblers[name].release(block)

    def _fired(self, name: str, i: int, fired: torch.Tensor) -> None:
        # fired: [n, d_ffn] bool -> [d_ffn, n/8] uint8, or None while fewer than 8 rows wait
        self.packed[name][i] = self.packers[name][i].push(fired)

    def _fired_packed(self, name: str, i: int, packed: torch.Tensor) -> None:
        # packed: [d_ffn, n/8] uint8, the bits _fired would have packed
        self.packed[name][i] = self.packers[name][i].push_packed(packed)

    def run(self) -> float:
        """Forward and write the blocks; returns the seconds spent in the batches (forward,
        packing, assembling, and waiting for the writer: `writer_wait` of them)."""
        from tqdm import tqdm

        steady_malloc()   # the batches' large blocks reused, not faulted in anew (devices.py)
        s = self.s
        hooks = LayerHooks(self.lm, self.layers, self.tests, self._fired, self.kinds, s.capture_topk,
                           on_packed=self._fired_packed)
        self.writer.start()
        fwd = 0.0
        bar = tqdm(total=self.n_tokens, initial=self.start_row, unit="tok", unit_scale=True, desc="forward",
                   disable=not s.progress, dynamic_ncols=True)
        try:
            for b in range(self.first_batch, self.n_batches):
                lo, hi = b * s.batch_size, min((b + 1) * s.batch_size, self.n_seqs)
                fwd += self._batch(hooks, lo, hi)
                bar.update(int(self.offsets[hi] - max(self.offsets[lo], self.start_row)))
            if self.stop_row == self.n_tokens:   # a Ray worker's block before the last ends on a block boundary
                t = time.perf_counter()   # the last rows' packing and handing over count as the batches' do
                self._push({name: [p for p in (q.finish(self.d_ffn, self.lm.device) for q in self.packers[name])
                                   if p is not None] for name in self.names})
                last = {name: self.assemblers[name].finish() for name in self.names}
                if last[self.names[0]] is not None:
                    self._emit({name: [last[name]] for name in self.names})
                fwd += time.perf_counter() - t
        finally:
            bar.close()
            hooks.remove()
            self.writer.close()
        return fwd

    @property
    def writer_wait(self) -> float:
        """Seconds the batches waited for the writer (its queue full): a writer slower than the forward."""
        return self.writer.waited

    def _batch(self, hooks: LayerHooks, lo: int, hi: int) -> float:
        """Forward sequences lo..hi and hand their completed blocks to the writer; returns the
        seconds from the forward on."""
        offsets = self.offsets
        lengths = np.diff(offsets[lo:hi + 1])
        width = int(lengths.max())
        ids = np.full((hi - lo, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((hi - lo, width), dtype=np.int64)
        for j in range(hi - lo):
            a, e = offsets[lo + j], offsets[lo + j + 1]
            ids[j, :e - a] = self.token_ids[a:e]
            mask[j, :e - a] = 1
        device = self.lm.device
        input_ids = torch.from_numpy(ids).to(device)                # [batch, seq]
        attention = torch.from_numpy(mask).to(device)               # [batch, seq]
        t = time.perf_counter()
        hooks.forward(input_ids, attention, lengths, row0=int(offsets[lo]))
        if self.kinds:
            st = hooks.stats
            self.rows.push({f"{kind}_{name}": torch.stack([x[name] for x in st[kind]]).cpu().numpy()
                            for kind in self.kinds for name in st[kind][0]})   # [layers, n, ...]
        self._push({name: [p for p in self.packed[name] if p is not None] for name in self.names})
        for name in self.names:
            self.packed[name][:] = [None] * len(self.layers)
        return time.perf_counter() - t

    def _push(self, parts: dict[str, list[torch.Tensor]]) -> None:
        """parts: per rule, each layer's packed bytes [d_ffn, m] (none while fewer than 8 rows wait)."""
        if all(parts[name] for name in self.names):
            self._emit({name: self.assemblers[name].push(torch.stack(parts[name]).cpu().numpy())  # [layers, d_ffn, m]
                        for name in self.names})

    def _emit(self, blocks: dict[str, list[tuple[int, np.ndarray]]]) -> None:
        # every rule's assembler received the same bytes, so they complete the same blocks
        bt = self.s.block_tokens
        for k, (index, _) in enumerate(blocks[self.names[0]]):
            masks = {name: blocks[name][k][1] for name in self.names}
            if index * bt >= self.stop_row:   # rows of the next block in the last batch
                self._release(masks)
                continue
            if index == 0:
                for t in self.tests:
                    t.patch_first_block(masks[t.name])
            n = min(bt, self.n_tokens - index * bt)
            self.writer.put((index, masks, self.rows.take(n) if self.kinds else {},
                             calibrated_thresholds(self.tests)))
