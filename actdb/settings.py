"""Ingest settings: one home for every knob, its default and its help text.

The CLI builds its options from these fields, and the README's settings table is
generated from them too, so the three can never disagree.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


MASK_CODECS = ("bitrows", "zstd")   # store.mask_compressors builds each


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class IngestSettings:
    model: str = _opt("", "Hugging Face model id or local folder (from_pretrained).")
    corpus: tuple[str, ...] = _opt((), "Corpus files: .jsonl (text, optional domain/id), .txt, .parquet.")
    out: str = _opt("", "Output store folder.")
    revision: str | None = _opt(None, "Model revision (branch, tag or commit) for hub models.")
    layers: str = _opt("all", "Layers to record: 'all' or a list like '0,2,5-7'.")
    seq_len: int = _opt(256, "Tokens per sequence, special tokens included.")
    mode: str = _opt("packed", "'packed': documents concatenated into full-length sequences; "
                     "'document': one (truncated) document per sequence.", choices=("packed", "document"))
    batch_size: int = _opt(8, "Sequences per forward pass (with --offload, the chunk each layer sees).")
    max_tokens: int | None = _opt(None, "Token budget: stop after this many tokens (rows).")
    device: str = _opt("auto", "'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: str = _opt("auto", "Compute dtype: auto, float32, bfloat16, float16.",
                      choices=("auto", "float32", "bfloat16", "float16"))
    offload: str = _opt("auto", "Layer-by-layer weight streaming: 'auto' (when the model does not fit), 'on', 'off'.",
                        choices=("auto", "on", "off"))
    capture: str = _opt("resid", "Magnitude capture for massive activations: top-k |h| and medians of the "
                        "residual stream ('resid'), also of the FFN hidden values ('resid+ffn'; more CPU time, "
                        "see benchmarks/RESULTS.md), or 'none'.",
                        choices=("resid+ffn", "resid", "none"))
    capture_topk: int = _opt(4, "How many of the largest |h| per token and layer to keep.")
    block_tokens: int = _opt(32768, "Tokens per commit and per Zarr chunk along tokens (multiple of 8). The host buffer is "
                              "layers x d_ffn x block_tokens / 8 bytes: lower it for very large models.")
    block_memory_mb: float = _opt(1024.0, "Host memory for one block of masks of all recorded layers; "
                                  "lowers --block-tokens for large models.")
    neuron_chunk: int = _opt(512, "Neurons per Zarr chunk.")
    codec: str = _opt("bitrows", "Mask chunk codec: 'bitrows' (per neuron row, Rice-coded gaps between fires where that is "
                      "smaller, else zstd: near the entropy bound for sparse neurons) or 'zstd' (plain zstd chunks); "
                      "see benchmarks/RESULTS.md.", choices=MASK_CODECS)
    zstd_level: int = _opt(1, "Zstandard level of the mask chunks, both codecs (1: smallest and fastest here, see "
                           "benchmarks/RESULTS.md).")
    index: bool = _opt(True, "Build the query index (`actdb index`) at the end of ingest.")
    domain: str | None = _opt(None, "Domain for records that carry none (default: the file's stem).")
    skip_empty: bool = _opt(False, "Skip empty documents instead of stopping with an error.")
    resume: bool = _opt(False, "Continue an interrupted ingest into the same store.")
    overwrite: bool = _opt(False, "Replace an existing store.")
    progress: bool = _opt(True, "Show a progress bar.")

    def __post_init__(self) -> None:
        from .errors import InputError

        if self.seq_len < 2:
            raise InputError(f"--seq-len: expected at least 2, got {self.seq_len}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size: expected at least 1, got {self.batch_size}")
        if self.block_tokens < 8 or self.block_tokens % 8:
            raise InputError(f"--block-tokens: expected a positive multiple of 8, got {self.block_tokens}")
        if self.block_memory_mb <= 0:
            raise InputError(f"--block-memory-mb: expected a positive number, got {self.block_memory_mb}")
        if self.capture_topk < 1:
            raise InputError(f"--capture-topk: expected at least 1, got {self.capture_topk}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InputError(f"--max-tokens: expected a positive number, got {self.max_tokens}")
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite exclude each other")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise InputError(f"--{f.name.replace('_', '-')}: expected one of {', '.join(choices)}, "
                                 f"got {getattr(self, f.name)!r}")

    def replace(self, **kw: Any) -> "IngestSettings":
        return dataclasses.replace(self, **kw)


def settings_table() -> str:
    """Markdown table of the settings, for the README."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(IngestSettings):
        if f.name in ("model", "corpus", "out"):
            continue
        default = f.default if f.default not in (None, ()) else "—"
        rows.append(f"| `--{f.name.replace('_', '-')}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class QuerySettings:
    """`actdb sql` and `actdb query`: how long a statement may run and how much is printed."""
    timeout: float = _opt(60.0, "Seconds a statement may run before it is interrupted (0: no limit).")
    max_rows: int = _opt(1000, "Rows the table format prints; the rest are counted and left out "
                         "(CSV, JSON and Parquet write every row).")

    def __post_init__(self) -> None:
        from .errors import InputError

        if self.timeout < 0:
            raise InputError(f"--timeout: expected 0 (no limit) or a positive number of seconds, got {self.timeout}")
        if self.max_rows < 0:
            raise InputError(f"--max-rows: expected 0 or more, got {self.max_rows}")


def query_settings_table() -> str:
    """Markdown table of the query settings, for the README."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(QuerySettings):
        rows.append(f"| `--{f.name.replace('_', '-')}` | `{f.default}` | {f.metadata['help']} |")
    return "\n".join(rows)
