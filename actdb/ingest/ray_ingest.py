"""Ingest on Ray (`--ray`): the forward passes of the blocks spread over worker actors.

The driver (pipeline._ingest) has tokenized, written the token tables and created the arrays, as
a single-process ingest does. Here it starts the workers (one per GPU, or CPU workers sharing the
cluster's CPUs); each loads the model once and, block by block, runs the very batches a single
process would run over the block's rows (forward.ForwardLoop with stop_row) and writes the
block's mask and capture chunks straight into the store. A block is one Zarr chunk column, so no
two workers ever write the same file. The driver records each finished block's checksums and marks
blocks done in order (ingest-state.json), so a resumed run, with or without Ray, redoes exactly the
blocks not yet marked; the manifest is written last by the caller.

Fire rules: every worker writes every rule's masks of its block. A calibrated rule's (top:Q, ntop:Q)
thresholds are fixed by the first block of tokens, so while they are not yet known (a fresh ingest)
block 0 runs alone, on one worker, which fixes and returns them; the driver commits them with block
0 (ingest-state.json, and ntop:Q's file, as the single process does) and hands them to every worker
for the other blocks. A resumed run reads them back as the single process does.

A killed worker process is restarted by Ray and its blocks are redone (max_restarts,
max_task_retries); a worker that fails for good (its constructor or a block raises) stops the run
with one line naming the worker and the block.
"""
from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from ..cluster import MAX_RESTARTS, Shape, connected, failure, worker_shape
from ..errors import StoreError
from ..files import atomic_write_text
from ..grammar import parse_fire_rule, parse_layer_list
from ..settings import IngestSettings, RaySettings
from ..store.ingest_state import IngestState
from ..store.layout import CAPTURE_KINDS as KINDS, STAGING, STAGING_PROBE, rule_dir
from ..store.neuron_thresholds import to_state
from ..store.writer import MaskWriter, write_state
from .forward import ForwardLoop, commit_files
from .hooks import Thresholds, calibrated_thresholds, fire_tests, unfixed_rules

PROBE_FILE = STAGING_PROBE   # under _staging/: a token the driver writes and every worker must read back
# tests: "BLOCK:DIR" makes the worker that writes block BLOCK's masks pause there (once), after
# writing DIR/paused-BLOCK with its pid, so a test can kill it in the middle of the block
PAUSE_ENV = "ACTDB_TEST_RAY_PAUSE"


def check_store_visible(root: Path, token: str, where: str) -> None:
    """Stop, in one line, a worker that does not see the driver's store folder (the store must be on a
    filesystem every worker sees)."""
    try:
        seen = (root / STAGING / PROBE_FILE).read_text(encoding="utf-8")
    except OSError as e:
        seen = f"unreadable ({e.strerror or e})"
    if seen != token:
        raise StoreError(f"{where} cannot see the store folder {root} (its {STAGING}/{PROBE_FILE}: expected "
                         f"the driver's {token[:8]}…, got {seen[:40]!r}); the store must be on a filesystem "
                         f"every Ray worker sees")


class _PausingMasks:
    """The mask writer with the test pause of PAUSE_ENV after block BLOCK's masks are written."""

    def __init__(self, inner: MaskWriter, spec: str) -> None:
        block, _, folder = spec.partition(":")
        self.inner, self.block, self.folder = inner, int(block), Path(folder)

    def write_block(self, index: int, data: Any) -> None:
        self.inner.write_block(index, data)
        marker = self.folder / f"paused-{index}"
        if index == self.block and not marker.exists():
            atomic_write_text(marker, str(os.getpid()))
            time.sleep(120)


class BlockWorker:
    """A Ray actor: the model loaded once, then whole blocks forwarded and written on request."""

    def __init__(self, number: int, root: str, model_dir: str, s: IngestSettings, dtype: str, n_tokens: int,
                 token: str, threads: int, pause: str | None) -> None:
        import socket

        from transformers.utils import logging as hf_logging

        from .adapters import adapter_for
        from .capture import CaptureWriter
        from ..devices import choose_device
        from .models import load_config, load_model, load_tokenizer, should_offload

        self.where = f"Ray worker {number} ({socket.gethostname()}, pid {os.getpid()})"
        self.root, self.s, self.n_tokens = Path(root), s, n_tokens
        check_store_visible(self.root, token, self.where)
        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        config = load_config(Path(model_dir))   # a folder missing on this node: one line, from here
        self.adapter = adapter_for(config.model_type)
        self.layers = parse_layer_list(s.layers, config.num_hidden_layers)
        self.d_ffn = self.adapter.d_ffn(config)
        device = choose_device(s.device)
        dt = getattr(torch, dtype)
        self.lm = load_model(Path(model_dir), config, device, dt, should_offload(s.offload, config, dt, device))
        self.tokenizer = load_tokenizer(Path(model_dir))
        self.rules = [parse_fire_rule(r) for r in s.fire_rule]
        masks = {r.name: MaskWriter(rule_dir(self.root, r.name), self.layers, self.d_ffn, n_tokens, s.block_tokens,
                                    s.neuron_chunk, s.codec, s.zstd_level, create=False) for r in self.rules}
        if pause:   # the first rule's masks written, the others' and the capture not yet
            first = self.rules[0].name
            masks[first] = _PausingMasks(masks[first], pause)
        captures = CaptureWriter(self.root, KINDS[s.capture], len(self.layers), n_tokens, s.capture_topk,
                                 s.block_tokens, create=False)
        self.writers = (masks, captures)

    def ready(self) -> str:
        return self.where

    def run_block(self, index: int, thresholds: dict[str, Thresholds]) -> tuple[int, float, dict[str, Thresholds]]:
        """Forward and write block `index`, under the calibrated rules' `thresholds` (only block 0
        may go without them: it fixes them); returns (index, forward seconds, the thresholds block 0 fixed)."""
        bt = self.s.block_tokens
        tests = fire_tests(self.rules, len(self.layers), self.d_ffn, min(bt, self.n_tokens), thresholds)
        unfixed = [t.name for t in tests if not t.fixed]
        if index and unfixed:   # the driver's order broken: thresholds come from block 0 only
            raise RuntimeError(f"block {index} was handed out before block 0 fixed {', '.join(unfixed)}")
        start = index * bt
        stop = min(self.n_tokens, start + bt)
        fwd = ForwardLoop(self.root, self.lm, self.layers, self.d_ffn, self.s, None, self.writers, self.tokenizer,
                          start, self.n_tokens, tests, stop_row=stop).run()
        return index, fwd, calibrated_thresholds(tests) if index == 0 else {}


def forward_on_ray(root: Path, model_dir: Path, s: IngestSettings, rs: RaySettings, state: IngestState,
                   writers: tuple, n_tokens: int, dtype: str, layers: tuple[int, ...],
                   thresholds: dict[str, Thresholds]) -> tuple[float, float, tuple[str, ...], dict[str, Thresholds]]:
    """Forward and commit every block not yet done on Ray workers, under the calibrated rules'
    `thresholds` read back from the ingest state (none yet: block 0 fixes them); returns (forward
    seconds, Ray start-up seconds, a line per worker with its share, the calibrated rules' thresholds)."""
    from tqdm import tqdm

    bt = s.block_tokens
    n_blocks = -(-n_tokens // bt)
    todo = list(range(state.blocks_done, n_blocks))
    if not todo:   # killed after the last block, before the manifest: nothing to forward
        return 0.0, 0.0, (), dict(thresholds)
    # calibrated rules not yet fixed: block 0 goes first and fixes them (pipeline refuses a state with
    # blocks done and no thresholds)
    unfixed = unfixed_rules(map(parse_fire_rule, s.fire_rule), state.thresholds)
    t0 = time.perf_counter()
    token = uuid.uuid4().hex
    atomic_write_text(root / STAGING / PROBE_FILE, token)
    with connected(rs) as ray:
        shape = worker_shape(ray, rs)
        shape = dataclasses.replace(shape, workers=min(shape.workers, len(todo)))   # no idle workers
        n = shape.workers
        actor = ray.remote(BlockWorker).options(num_cpus=shape.cpus, num_gpus=shape.gpus, max_restarts=MAX_RESTARTS,
                                               max_task_retries=MAX_RESTARTS)
        settings = s.replace(progress=False)
        actors = [actor.remote(i, str(root), str(model_dir), settings, dtype, n_tokens, token, shape.threads,
                               os.environ.get(PAUSE_ENV)) for i in range(n)]
        try:
            names = _start(ray, actors, root)
            startup = time.perf_counter() - t0
            t1 = time.perf_counter()
            shares, thresholds = _dispatch(ray, actors, names, todo, root, state, writers, bt, n_tokens,
                                           s.progress, shape, tqdm, bool(unfixed), layers, thresholds)
            fwd = time.perf_counter() - t1
        finally:
            for a in actors:   # a failed run: the others stop writing before the driver returns
                ray.kill(a, no_restart=True)
    total = max(sum(b for b, _ in shares.values()), 1)
    lines = [f"{names[i]}: {b} blocks, {t:,} tokens ({100 * b / total:.0f} %)" for i, (b, t) in shares.items()]
    return fwd, startup, (f"{shape.describe()}; Ray start-up {startup:.1f} s", *lines), thresholds


def _start(ray: Any, actors: list, root: Path) -> list[str]:
    """Wait for every worker to have loaded the model; the first that cannot is named in one line."""
    pending = {a.ready.remote(): i for i, a in enumerate(actors)}
    names = [f"Ray worker {i}" for i in range(len(actors))]
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        try:
            names[i] = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - Ray's errors: one line, and the run stops
            raise StoreError(f"{root}: Ray worker {i}: {failure(e)}; nothing was forwarded in this run") from None
    return names


def _dispatch(ray: Any, actors: list, names: list[str], todo: list[int], root: Path, state: IngestState,
              writers: tuple, bt: int, n_tokens: int, progress: bool, shape: Shape, tqdm,
              first_alone: bool, layers: tuple[int, ...], thresholds: dict[str, Thresholds]
              ) -> tuple[dict[int, tuple[int, int]], dict[str, Thresholds]]:
    """Hand out the blocks (two queued per worker, so it never waits for the driver), commit each
    as it finishes and mark blocks done in order; with first_alone (calibrated thresholds not yet
    fixed), block 0 runs alone and its thresholds go with every other block, committed with it.
    Returns ({worker: (blocks, tokens)}, the calibrated thresholds)."""
    queue = list(reversed(todo))
    inflight: dict[Any, tuple[int, int]] = {}
    load = [0] * len(actors)
    shares = {i: (0, 0) for i in range(len(actors))}
    finished: set[int] = set()
    thresholds = dict(thresholds)
    # in the object store once, not sent with every block (per-neuron thresholds are layers x d_ffn)
    shared = [ray.put(thresholds)]

    def fill() -> None:
        for _ in range(2):
            for i in range(len(actors)):
                if not queue or (first_alone and inflight):
                    return
                if load[i] < 2:
                    index = queue.pop()
                    inflight[actors[i].run_block.remote(index, shared[0])] = (i, index)
                    load[i] += 1

    fill()
    bar = tqdm(total=n_tokens, initial=state.blocks_done * bt, unit="tok", unit_scale=True,
               desc=f"forward ({shape.describe()})", disable=not progress, dynamic_ncols=True)
    try:
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            i, index = inflight.pop(ready[0])
            load[i] -= 1
            try:
                _, _, fixed = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - a worker failed for good: one line, nothing more marked
                kept = (f"blocks 0..{state.blocks_done - 1} are committed and --resume continues from there"
                        if state.blocks_done else "no block is committed")
                raise StoreError(f"{root}: {names[i]} failed on block {index} (tokens {index * bt:,}.."
                                 f"{min(n_tokens, (index + 1) * bt) - 1:,}): {failure(e)}; the store is not "
                                 f"complete; {kept}") from None
            commit_files(root, writers, index)
            if index == 0:
                thresholds.update(fixed)
                shared[0] = ray.put(thresholds)
                first_alone = False
            finished.add(index)
            rows = min(n_tokens, (index + 1) * bt) - index * bt
            b, t = shares[i]
            shares[i] = (b + 1, t + rows)
            if state.blocks_done in finished:   # blocks are marked done in order only
                done = state.blocks_done
                while done in finished:
                    done += 1
                state = state.replace(blocks_done=done, thresholds=to_state(root, layers, thresholds,
                                                                           state.thresholds))
                write_state(root, state)
            bar.update(rows)
            fill()
    finally:
        bar.close()
    return shares, thresholds
