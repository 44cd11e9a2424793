"""The settings of every command: one home for every knob, its default and its help text,
the paper's thresholds (with their value ranges) included.

The CLI builds its options from these fields, and the README's settings tables are
generated from them too, so the three can never disagree.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .grammar import parse_fire_rule


MASK_CODECS = ("bitrows", "zstd")   # store.mask_compressors builds each


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


ZSTD_LEVELS = (-7, 22)   # the levels both mask codecs accept (store/zarr_codec.py checks them too)


def check_finite(settings: Any) -> None:
    """Refuse a float setting that is nan or infinite (click's FLOAT takes both): every comparison
    with nan is false, so a range check alone lets it through, and inf would mean "no limit"."""
    import math

    for f in dataclasses.fields(settings):
        v = getattr(settings, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"--{f.name.replace('_', '-')}: expected a finite number, got {v}")


@dataclass(frozen=True)
class IngestSettings:
    model: str = _opt("", "Hugging Face model id or local folder (from_pretrained).")
    corpus: tuple[str, ...] = _opt((), "Corpus files: .jsonl (text, optional domain/id), .txt, .parquet.")
    out: str = _opt("", "Store folder to write.")
    revision: str | None = _opt(None, "Model revision (branch, tag or commit) for hub models.")
    layers: str = _opt("all", "Layers to record: 'all' or a list like '0,2,5-7'; negative numbers count from "
                       "the end (-1: the last layer).")
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
    fire_rule: tuple[str, ...] = _opt(("sign",), "Fire rule, repeatable (all share one forward): 'sign' (the "
                                      "activation's output > 0, the papers' rule), 'abs>T' (abs(h) > T), 'top:Q' "
                                      "(abs(h) above the layer's Q-quantile of abs(h) over the first block, "
                                      "0.5 <= Q < 1), 'ntop:Q' (abs(h) above the neuron's own Q-quantile over the "
                                      "first block) or 'glu:SS' (gated FFNs: the signs, + or -, of act_fn(gate x) and "
                                      "up x), h = the value the FFN's output projection reads; the first is the "
                                      "views' default.", multiple=True)
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
        check_finite(self)
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
        if self.neuron_chunk < 1:
            raise InputError(f"--neuron-chunk: expected at least 1, got {self.neuron_chunk}")
        lo, hi = ZSTD_LEVELS
        if not lo <= self.zstd_level <= hi:
            raise InputError(f"--zstd-level: expected {lo}..{hi}, got {self.zstd_level}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InputError(f"--max-tokens: expected a positive number, got {self.max_tokens}")
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite exclude each other")
        rules = [parse_fire_rule(r).name for r in self.fire_rule]   # each checked, in one line
        if not rules:
            raise InputError("--fire-rule: expected at least one rule, got none")
        if len(set(rules)) != len(rules):
            raise InputError(f"--fire-rule: expected distinct rules, got {', '.join(self.fire_rule)}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise InputError(f"--{f.name.replace('_', '-')}: expected one of {', '.join(choices)}, "
                                 f"got {getattr(self, f.name)!r}")

    def replace(self, **kw: Any) -> "IngestSettings":
        return dataclasses.replace(self, **kw)


# Value ranges of the thresholds: the expected-text and the Python test of each kind. The index
# settings and the index record (index.json) check these; the views check the same ranges in SQL
# (query/views.py, RANGE_SQL, kept equal to these by a test).
RANGES: dict[str, tuple[str, Any]] = {
    "share": ("a number in (0, 1]", lambda v: 0 < v <= 1),
    "count": ("an integer >= 1", lambda v: v == int(v) and v >= 1),
    "nonneg": ("a number >= 0", lambda v: v >= 0),
    "eps": ("a number in [0, 0.5)", lambda v: 0 <= v < 0.5),
}


def range_problem(kind: str, value: Any) -> str | None:
    """None if `value` is in range `kind` (RANGES), else what was expected."""
    expected, ok = RANGES[kind]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or not ok(value):
        return expected
    if kind == "count" and not isinstance(value, int):
        return expected
    return None


def _thr(default: Any, kind: str, help: str, when: str = "index") -> Any:
    """A threshold: `when` = 'index' (precomputed at it) or 'query' (the views' default only)."""
    return _opt(default, help, range=kind, threshold=when)


@dataclass(frozen=True)
class IndexSettings:
    """`actdb index`: what the index keeps and the paper's thresholds (coverage, detectors,
    positional neurons, massive activations). The index records the thresholds it was built
    with (index.json), and the views take their defaults from that record."""
    layers: str | None = _opt(None, "Layers that get bigram/trigram tables: a list like 0,2,5-7 or 'all', as "
                              "--layers of ingest (default: the first half of the network).")
    top_k: int = _opt(64, "N-grams kept per neuron in neuron_tokens/bigrams/trigrams (coverage and detectors at "
                      "the recorded thresholds are exact regardless).")
    memory_mb: float = _opt(512.0, "Memory for the counts of the units counted at once (split between the "
                            "workers); sets how many neurons a unit counts.")
    workers: int = _opt(0, "Units counted at once, in threads (0: one per available core).")
    neighbours: int = _opt(0, "Co-firing: keep each alive neuron's top this many neighbours by phi, within its layer "
                           "and over all layers, exact (the view neuron_neighbours); 0: none.")
    device: str = _opt("cpu", "Where the fires are counted: 'cpu' (compiled kernels; numpy and torch with "
                       "ACTDB_INDEX_JIT=0), 'cuda', 'cuda:1', ... (torch on that device), or 'auto' (cuda if available). "
                       "The files do not depend on it.")
    p_cov: float = _thr(0.95, "share", "Coverage: the fewest n-grams that account for this share of a neuron's "
                        "fires (coverage, detectors' p_cov).")
    tok_max_cov: int = _thr(5, "count", "Token detectors: covered by at most this many tokens (max_cov).")
    tri_max_cov: int = _thr(50, "count", "Trigram detectors: covered by at most this many trigrams (max_cov).")
    p_token: float = _thr(0.95, "share", "Detectors: a covered n-gram has P(fires given the n-gram) at least this.")
    p_share: float = _thr(0.95, "share", "Detectors: the covered n-grams account for this share of the fires.")
    weak_eps: float = _thr(0.05, "eps", "Positional: a frequency within this of 0 or 1 counts as (weakly) extreme.")
    mi_min: float = _thr(0.05, "nonneg", "Positional neurons: I(act; pos) above this (query default).", "query")
    min_switches: int = _thr(3, "count", "Positional: this many low/high alternations make a pattern oscillatory "
                             "(query default).", "query")
    abs_min: float = _thr(100.0, "nonneg", "Massive activations: abs(h) above this (query default).", "query")
    ratio: float = _thr(1000.0, "nonneg", "Massive activations: abs(h) at least this times the sequence's median abs(h) "
                        "(query default).", "query")
    force: bool = _opt(False, "Rebuild even if a complete index exists (the old one answers until the new one "
                       "is complete).")
    progress: bool = _opt(True, "Show a progress bar.")

    def __post_init__(self) -> None:
        check_finite(self)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise InputError(f"--top-k: expected a positive number of n-grams per neuron, got {self.top_k!r}")
        if not (isinstance(self.memory_mb, (int, float)) and self.memory_mb > 0):
            raise InputError(f"--memory-mb: expected a positive budget, got {self.memory_mb!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise InputError(f"--workers: expected 0 (one per core) or a positive number, got {self.workers!r}")
        if not (isinstance(self.device, str) and self.device):
            raise InputError(f"--device: expected auto, cpu or cuda[:N], got {self.device!r}")
        if isinstance(self.neighbours, bool) or not isinstance(self.neighbours, int) or self.neighbours < 0:
            raise InputError(f"--neighbours: expected 0 (none) or a number of neighbours, got {self.neighbours!r}")
        for name, value in self.thresholds().items():
            bad = range_problem(threshold_range(name), value)
            if bad:
                raise InputError(f"--{name.replace('_', '-')}: expected {bad}, got {value!r}")

    def thresholds(self) -> dict[str, Any]:
        """{name: value} of the thresholds, in field order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if "threshold" in f.metadata}

    def replace(self, **kw: Any) -> "IndexSettings":
        return dataclasses.replace(self, **kw)


def threshold_range(name: str) -> str:
    """The RANGES kind of threshold `name` (an IndexSettings field)."""
    return next(f.metadata["range"] for f in dataclasses.fields(IndexSettings) if f.name == name)


THRESHOLDS = tuple(f.name for f in dataclasses.fields(IndexSettings) if "threshold" in f.metadata)
# positional arguments of the commands, not options
POSITIONAL = ("model", "corpus", "out")


def settings_table(cls: type = IngestSettings) -> str:
    """Markdown table of the settings of `cls` (IngestSettings, IndexSettings, RaySettings,
    QuerySettings or ServeSettings), for the README."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in POSITIONAL:
            continue
        default = f.default if f.default not in (None, ()) else "—"
        if f.metadata.get("multiple") and default != "—":
            default = " ".join(default)
        rows.append(f"| `--{f.name.replace('_', '-')}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class RaySettings:
    """`--ray` on `actdb ingest` and `actdb index`: where the work runs. Not part of what a store
    records (a store made on Ray equals one made by one process), so resuming with or without Ray is
    the same ingest."""
    ray: str | None = _opt(None, "Spread the forward passes (ingest) or the index units over a Ray cluster: 'auto' "
                           "(the cluster of RAY_ADDRESS or `ray start` on this machine, else a local one) or its "
                           "ADDRESS (host:port). Needs `pip install 'actdb[ray]'` and a store on a filesystem every "
                           "worker sees.", flag_value="auto")
    ray_workers: int = _opt(0, "Ray worker actors (ingest) or index tasks at once (0: one per GPU, or with "
                            "--gpus-per-worker 0 one per CPU of the cluster).")
    gpus_per_worker: float = _opt(0.0, "GPUs each ingest worker holds (0: CPU workers, which share the cluster's CPUs).")

    def __post_init__(self) -> None:
        check_finite(self)
        if self.ray is not None and not self.ray.strip():
            raise InputError("--ray: expected 'auto' or a cluster ADDRESS, got ''")
        if isinstance(self.ray_workers, bool) or not isinstance(self.ray_workers, int) or self.ray_workers < 0:
            raise InputError(f"--ray-workers: expected 0 (one per GPU or CPU) or a positive number, got {self.ray_workers!r}")
        if not (isinstance(self.gpus_per_worker, (int, float)) and self.gpus_per_worker >= 0):
            raise InputError(f"--gpus-per-worker: expected a number >= 0, got {self.gpus_per_worker!r}")
        if self.ray is None and (self.ray_workers or self.gpus_per_worker):
            raise InputError("--ray-workers and --gpus-per-worker: expected them with --ray, got them without")

    @property
    def on(self) -> bool:
        return self.ray is not None


@dataclass(frozen=True)
class QuerySettings:
    """`actdb sql` and `actdb query`: how long a statement may run and how much is printed."""
    timeout: float = _opt(60.0, "Seconds a statement may run before it is interrupted (0: no limit).")
    max_rows: int = _opt(1000, "Rows the table format prints; the rest are counted and left out "
                         "(CSV, JSON and Parquet write every row).")

    def __post_init__(self) -> None:
        check_finite(self)
        if self.timeout < 0:
            raise InputError(f"--timeout: expected 0 (no limit) or a positive number of seconds, got {self.timeout}")
        if self.max_rows < 0:
            raise InputError(f"--max-rows: expected 0 or more, got {self.max_rows}")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeSettings:
    """`actdb serve`: where it listens, how long and how much a query may answer, the probe."""
    host: str = _opt("127.0.0.1", "Address to listen on. Anything but loopback makes the pages and the SQL "
                     "console reachable by others on the network (a warning says so).")
    port: int = _opt(8000, "Port to listen on (0: any free port).")
    timeout: float = _opt(10.0, "Seconds a query (a page's or the console's) may run before it is cut off.")
    memory_mb: float = _opt(2048.0, "Memory (MiB) the SQL console's query engine may use; a console query that needs "
                            "more stops with an error instead of growing the server.")
    max_rows: int = _opt(1000, "Rows the SQL console (page, JSON and CSV) answers; past them it is cut off and "
                         "says so.")
    page_size: int = _opt(100, "Neurons per page of a layer's table (and rows of a token's neuron lists).")
    top: int = _opt(20, "Top tokens, and promoted and suppressed tokens, on a neuron's page.")
    contexts: int = _opt(10, "Contexts per page on a neuron's page.")
    context_tokens: int = _opt(12, "Tokens shown on each side of a firing token in a context.")
    seed: int = _opt(0, "Seed of the random sample of contexts (with the layer and neuron: reproducible).")
    probe: bool = _opt(False, "Offer the probe: load the store's model (lazily, on the first probe) and run "
                       "typed text through it.")
    probe_device: str = _opt("cpu", "Device of the probe's model: cpu, cuda, cuda:1, ...")
    probe_max_tokens: int = _opt(256, "Tokens of typed text the probe runs (special tokens included); the rest "
                                 "is cut off and says so.")

    def __post_init__(self) -> None:
        check_finite(self)
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port: expected 0..65535, got {self.port}")
        if self.timeout <= 0:
            raise InputError(f"--timeout: expected a positive number of seconds, got {self.timeout}")
        if self.memory_mb <= 0:
            raise InputError(f"--memory-mb: expected a positive number of MiB, got {self.memory_mb}")
        for name in ("max_rows", "page_size", "top", "contexts", "probe_max_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')}: expected at least 1, got {getattr(self, name)}")
        if self.context_tokens < 0:
            raise InputError(f"--context-tokens: expected 0 or more, got {self.context_tokens}")

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK or self.host.startswith("127.")

    @property
    def allowed_hosts(self) -> list[str]:
        """The Host header values the server answers: the loopback names and --host (for a wildcard
        --host, 0.0.0.0 or ::, also this machine's name and the addresses it resolves to), an IPv6
        address also in brackets (as a Host header writes it). Any other name reaching it is a page
        of some other site whose name was made to resolve here (DNS rebinding)."""
        hosts = [*LOOPBACK, self.host]
        if self.host in ("0.0.0.0", "::"):
            import socket

            try:
                name = socket.gethostname()
                hosts += [name, *(a[4][0] for a in socket.getaddrinfo(name, None))]
            except OSError:   # a machine whose own name does not resolve: by address, then
                pass
        return sorted({n for h in hosts if "*" not in h for n in (h, f"[{h}]" if ":" in h else h)})
