"""Magnitude capture at ingest, for massive activations (Sun et al. 2024; docs/definitions.md), and the
weights that vocabulary projection needs (docs/definitions.md), so no model is needed at query time.

For every token row and recorded layer, of the residual stream (the block's output
hidden state) and of the FFN hidden values (the activation output):
  topk_value [k] signed values of the k largest |h|, topk_dim [k] their dimensions,
  median     median |h| over the token's dimensions,
  seq_median median |h| over the whole sequence (all positions and dimensions), the
             reference code's denominator; repeated on each of the sequence's rows.
Medians are lower medians (torch.median / kthvalue): element ceil(n/2) of the sorted values.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path
from ..store.layout import CAPTURE_DIR, CAPTURE_FIELDS as FIELDS, PROJECTION_FILE
from .adapters import get_module
from .packing import compiled
from .pool import in_threads, shares



HOLD_BYTES = 128 << 20
"""How many bytes of hooked values LayerHooks holds before computing their statistics in one pass
(layer_stats). One pass per layer cost the forward ~4 % on SmolLM2 where its work alone is ~1.2 %: a
hand-over to the helper thread each layer, and the forward's next layer slowed after it; holding up
to this much (29 of SmolLM2's 30 residual layers of a 2,048-token batch) halved the capture's cost
(benchmarks/RESULTS.md, "Ingest overhead, fifth pass"). A bound, so the memory stays flat for any model."""


def magnitude_stats(h: torch.Tensor, valid: torch.Tensor, lengths: list[int], k: int) -> dict[str, torch.Tensor]:
    """h: [batch, seq, d] (or [batch*seq, d]); valid: [batch*seq] bool, the first lengths[j]
    rows of each sequence j (as ingest's attention masks) -> per valid row stats."""
    return layer_stats([h], valid, lengths, k)[0]


def layer_stats(hs: list[torch.Tensor], valid: torch.Tensor, lengths: list[int],
                k: int) -> list[dict[str, torch.Tensor]]:
    """magnitude_stats of several values of one batch (layers of one kind: the same width), their
    compiled work split over the threads in one hand-over."""
    b = len(lengths)
    xs = [h.detach().reshape(b, -1, h.shape[-1]) for h in hs]                  # [batch, seq, d] each
    out: list[dict[str, torch.Tensor] | None] = [None] * len(xs)
    cpu = [i for i, x in enumerate(xs) if x.device.type == "cpu"]
    if cpu and compiled() is not None:
        for i, st in zip(cpu, _stats_jit([xs[i].float().contiguous() for i in cpu], lengths, k)):
            out[i] = st
    return [st if st is not None else _stats_torch(x, valid, lengths, k) for st, x in zip(out, xs)]


def _stats_jit(xs: list[torch.Tensor], lengths: list[int], k: int) -> list[dict[str, torch.Tensor] | None]:
    """magnitude_stats on CPU over valid rows only: |h| and the top-k by a compiled kernel
    (ingest/kernels.py), the medians by numpy's (SIMD) partition; xs: values [batch, seq, d] float32,
    contiguous, of one width. None for a value that holds a NaN (the torch path, whose NaN answers
    these are not). The (value, sequence) pairs are split over torch's thread count, one share in the
    calling thread (pool.py): the kernel and numpy's partition release the GIL. Each thread works one
    sequence at a time in its own [seq, d] buffer (590 KB for SmolLM2: it stays in the core's L2 from
    one sequence to the next, where a batch-sized one came back from memory)."""
    b, width, d = xs[0].shape
    kk = min(k, d)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)             # sequence j: rows starts[j]..
    n, m_all = int(starts[-1]), len(xs)
    hs = [x.numpy() for x in xs]                                               # [batch, seq, d] each, read only
    vals = np.empty((m_all, n, kk), dtype=np.float32)                          # [values, n valid, k]
    dims = np.empty((m_all, n, kk), dtype=np.int32)
    med = np.empty((m_all, n), dtype=np.float32)
    seq = np.empty((m_all, b), dtype=np.float32)
    nan = np.zeros(m_all, dtype=bool)

    def stats_of(items: range) -> None:
        """Items v * b + j: value v's sequence j."""
        a = _scratch((width, d)).numpy()                                       # |h| of a sequence, reordered by the selections
        for item in items:
            v, j = divmod(item, b)
            m, lo = lengths[j], starts[j]
            if not m or nan[v]:
                continue
            rows = a[:m]                                                       # [m, d] |h| of sequence j
            if compiled().row_topk(hs[v][j, :m], rows, vals[v, lo:lo + m], dims[v, lo:lo + m]):
                nan[v] = True
                continue
            # selected as int32: |h| >= 0 without NaN here, whose bits order as the values do, and numpy
            # selects int32 1.6-2x faster than float32 (benchmarks/RESULTS.md, "Ingest overhead, third pass")
            bits = rows.view(np.int32)
            bits.partition((d - 1) // 2, axis=-1)
            med[v, lo:lo + m] = rows[:, (d - 1) // 2]
            # the row pass moved values only within rows: the sequence's |h| are intact
            bits.reshape(-1).partition((m * d - 1) // 2)
            seq[v, j] = rows.reshape(-1)[(m * d - 1) // 2]
    in_threads(stats_of, shares(np.concatenate([[0], np.cumsum(np.tile(lengths, m_all))])))
    return [None if nan[v] else
            {"topk_value": torch.from_numpy(vals[v]), "topk_dim": torch.from_numpy(dims[v]),
             "median": torch.from_numpy(med[v]), "seq_median": torch.from_numpy(np.repeat(seq[v], lengths))}
            for v in range(m_all)]


def _stats_torch(x: torch.Tensor, valid: torch.Tensor, lengths: list[int], k: int) -> dict[str, torch.Tensor]:
    """magnitude_stats with torch ops and numpy's selection (CUDA, NaN, and without numba)."""
    b = len(lengths)
    sign = x.float()                                                           # [batch, seq, d]
    a = torch.abs(sign, out=_scratch(sign.shape, sign.device))                 # a copy: ours to reorder
    vals, dims = a.topk(min(k, a.shape[-1]), dim=-1)                          # [batch, seq, k]
    signed = sign.gather(-1, dims)
    width = a.shape[1]
    med, seq_med = _medians(a, lengths)                                        # [batch, seq], [batch]
    seq_med = seq_med[:, None].expand(b, width)                                # [batch, seq]

    def rows(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b * width, *x.shape[2:])[valid]
    return {"topk_value": rows(signed), "topk_dim": rows(dims.to(torch.int32)),
            "median": rows(med), "seq_median": rows(seq_med.contiguous())}


_SCRATCH = threading.local()   # per thread: (shape, device) -> reused float32 buffer


def _scratch(shape: tuple[int, ...], device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """A reused float32 buffer of `shape`, the calling thread's (a fresh 25 MB tensor per hook call
    costs more in page faults than the abs itself). Stats are computed one hook call at a time and
    nothing they return aliases it; a few shapes are kept (FFN and residual widths, a shorter last
    batch)."""
    cache = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (tuple(shape), device)
    if key not in cache:
        if len(cache) >= 4:
            cache.pop(next(iter(cache)))
        cache[key] = torch.empty(shape, dtype=torch.float32, device=device)
    return cache[key]


def _medians(a: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower medians of a [batch, seq, d] (>= 0) per row and per sequence (its first
    lengths[j] rows). Reorders a in place on CPU."""
    b, width, _ = a.shape
    if a.device.type != "cpu":
        med = a.median(dim=-1).values
        seq = [a[j, :n].reshape(-1).median() for j, n in enumerate(lengths)]
        return med, torch.stack(seq)
    # numpy's introselect in place, split over torch's intra-op threads (it releases the GIL):
    # torch.median made the default capture cost 60 % of the forward on CPU (benchmarks/RESULTS.md)
    x = a.numpy()
    d = x.shape[2]
    rows = x.reshape(b * width, d)
    med = np.empty(b * width, dtype=x.dtype)
    seq = np.empty(b, dtype=x.dtype)
    def row_part(r: range) -> None:
        med[r.start:r.stop] = _select(rows[r.start:r.stop], d)
    in_threads(row_part, shares(np.arange(b * width + 1)))
    # the per-row pass moved values only within rows, so each sequence's values are intact

    def seq_part(js: range) -> None:
        for j in js:
            seq[j] = _select(x[j, :lengths[j]].reshape(-1), lengths[j] * d)
    in_threads(seq_part, shares(np.concatenate([[0], np.cumsum(lengths)])))
    return torch.from_numpy(med.reshape(b, width)), torch.from_numpy(seq)


def _select(x: np.ndarray, axis_len: int) -> np.ndarray:
    """Element (n-1)//2 of each sorted last-axis vector (torch.median's lower median), NaN
    where the vector holds a NaN as torch.median gives. Partitions x in place."""
    kth = (axis_len - 1) // 2
    x.partition(kth, axis=-1)
    out = x[..., kth].copy()
    tail = x[..., kth:]
    nan = np.isnan(tail).any(axis=-1)  # NaN sorts last, so any NaN lies at or after kth
    if np.any(nan):
        out[nan] = np.nan
    return out


class RowAccumulator:
    """Host-side rows of capture stats, cut into the same blocks as the masks."""

    def __init__(self, skip: int = 0) -> None:
        self.parts: list[dict[str, np.ndarray]] = []
        self.skip = skip

    def push(self, stats: dict[str, np.ndarray]) -> None:
        """stats: name -> [layers, n, ...]."""
        n = next(iter(stats.values())).shape[1]
        if self.skip:
            k = min(self.skip, n)
            stats = {key: v[:, k:] for key, v in stats.items()}
            self.skip -= k
            n -= k
        if n:
            self.parts.append(stats)

    def take(self, n: int) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {}
        need = n
        while need:
            part = self.parts[0]
            m = next(iter(part.values())).shape[1]
            use = min(m, need)
            for key, v in part.items():
                out.setdefault(key, []).append(v[:, :use])
            if use == m:
                self.parts.pop(0)
            else:
                self.parts[0] = {key: v[:, use:] for key, v in part.items()}
            need -= use
        return {key: np.concatenate(v, axis=1) for key, v in out.items()}


class CaptureWriter:
    """Zarr arrays under STORE/capture/: {kind}_{field}, [layers, n_tokens, ...], chunked by block."""

    def __init__(self, root: Path, kinds: tuple[str, ...], n_layers: int, n_tokens: int, k: int,
                 block_tokens: int, create: bool) -> None:
        import zarr
        from zarr.codecs import Crc32cCodec, ZstdCodec

        group = zarr.open_group(root / CAPTURE_DIR, mode="a")
        self.arrays = {}
        self.block_tokens = block_tokens
        for kind in kinds:
            for field in FIELDS:
                name = f"{kind}_{field}"
                if not create:
                    self.arrays[name] = group[name]
                    continue
                tail = (k,) if field.startswith("topk") else ()
                dtype = "int32" if field == "topk_dim" else "float32"
                self.arrays[name] = group.create_array(
                    name, shape=(n_layers, n_tokens, *tail), dtype=dtype,
                    chunks=(1, block_tokens, *tail), fill_value=0, overwrite=True,
                    compressors=[ZstdCodec(level=3), Crc32cCodec()])  # crc32c: a flipped bit raises on read

    def write_block(self, index: int, stats: dict[str, np.ndarray]) -> None:
        start = index * self.block_tokens
        for name, arr in self.arrays.items():
            v = stats[name]
            arr[:, start:start + v.shape[1]] = v


def save_projection(root: Path, model: torch.nn.Module, lm, layers: tuple[int, ...], streamer=None) -> None:
    """FFN output rows of the recorded layers and the unembedding, in the model's dtype:
    projection.safetensors with w_out.L [d_ffn, d_model] (row n = neuron n's residual
    update) and w_u [vocab, d_model]."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for l in layers:
        fc = get_module(lm.layers[l], lm.adapter.fc_out)
        w = _weight(fc, f"{_path_of(model, fc)}.weight", streamer)
        # Linear stores [out=d_model, in=d_ffn]; GPT-2's Conv1D stores [in=d_ffn, out=d_model]
        tensors[f"w_out.{l}"] = (w if type(fc).__name__ == "Conv1D" else w.t()).contiguous()
    head = model.get_output_embeddings() if lm.adapter.decoder else None
    if head is None or (head.weight.is_meta and streamer is not None and
                        streamer.tensor(f"{_path_of(model, head)}.weight") is None):
        head = model.get_input_embeddings()  # tied, or an encoder without an LM head
    tensors["w_u"] = _weight(head, f"{_path_of(model, head)}.weight", streamer).contiguous()
    with atomic_path(root / PROJECTION_FILE) as tmp:
        try:
            save_file({k: v.detach().cpu() for k, v in tensors.items()}, str(tmp))
        except Exception as e:  # SafetensorError, which carries an I/O error only in its text
            raise _os_error(e, root / PROJECTION_FILE) from None


def _os_error(e: Exception, path: Path) -> Exception:
    """safetensors' "I/O error: No space left on device (os error 28)" as the OSError it is, so
    the ingest reports it in one line like any other write (and says it can be resumed)."""
    import errno as errno_names
    import os
    import re

    m = re.search(r"os error (\d+)", str(e))
    if m is None or int(m.group(1)) not in errno_names.errorcode:
        return e
    code = int(m.group(1))
    return OSError(code, os.strerror(code), str(path))


def _path_of(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _weight(module: torch.nn.Module, name: str, streamer) -> torch.Tensor:
    w = module.weight
    if w.is_meta:  # layer-by-layer mode: read this one tensor from the checkpoint
        t = streamer.tensor(name)
        if t is None:
            raise KeyError(name)
        return t.to(w.dtype)
    return w
