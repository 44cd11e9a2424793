"""Text with a neuron's fires: a document of the store in order (from the tokens view and the
neuron's mask), or typed text the store's model was run on (the explorer's probe)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, NotFound
from .explorer import explorer

DOC_MAX_TOKENS = 20000   # a page, not a dump: longer documents are cut, and the answer says so
PROBE_LISTED = 64        # neurons listed per token when a whole layer is probed


@dataclass(frozen=True)
class DocToken:
    row: int
    seq: int
    pos: int
    token_id: int
    text: str
    fired: bool


@dataclass(frozen=True)
class Document:
    doc: int
    doc_id: str | None
    source: str | None
    domain: str
    layer: int | None          # the neuron whose fires are marked, if any
    neuron: int | None
    tokens: tuple[DocToken, ...]
    cut: bool                  # longer than DOC_MAX_TOKENS: the rest left out
    n_fired: int


def document(store, doc: int, layer: int | None = None, neuron: int | None = None) -> Document:
    """Document `doc`'s tokens in order, each where neuron layer:neuron fired marked.
    `store`: an actdb.Store or an Explorer."""
    ex = explorer(store)
    t = ex.q("SELECT row, seq, pos, token_id, token, domain FROM tokens WHERE doc = $d ORDER BY row LIMIT $k",
             d=doc, k=DOC_MAX_TOKENS + 1)
    if not t.height:
        raise NotFound(f"document {doc}: not in store {ex.name} (documents 0..{ex.manifest.n_docs - 1} that left tokens)")
    info = ex.st().docs().filter(doc=doc)
    cut = t.height > DOC_MAX_TOKENS
    t = t.head(DOC_MAX_TOKENS)
    rows = t["row"].to_list()
    fired = [False] * len(rows)
    if neuron is not None or layer is not None:
        if layer is None or neuron is None:
            raise InputError("layer and neuron: expected both or neither")
        ex.check_neuron(layer, neuron)
        m = ex.st().neuron(layer, neuron, rows[0], rows[-1] + 1)
        fired = [bool(m[r - rows[0]]) for r in rows]
    meta = info.row(0, named=True) if info.height else {}
    toks = tuple(DocToken(r, s, p, i, x if x is not None else f"#{i}", f)
                 for r, s, p, i, x, f in zip(rows, t["seq"].to_list(), t["pos"].to_list(), t["token_id"].to_list(),
                                             t["token"].to_list(), fired))
    return Document(doc, meta.get("doc_id"), meta.get("source"), t["domain"][0], layer, neuron, toks, cut, sum(fired))


@dataclass(frozen=True)
class ProbeToken:
    token_id: int
    text: str
    fired: bool | None              # the neuron's fire (a neuron probed)
    n_fired: int | None             # how many of the layer's neurons fired (a layer probed)
    neurons: tuple[int, ...] | None  # the first PROBE_LISTED of them


@dataclass(frozen=True)
class ProbeAnswer:
    layer: int
    neuron: int | None
    tokens: tuple[ProbeToken, ...]
    n_tokens: int
    n_fired: int | None             # the neuron's fires over the text
    cut: bool
    device: str


def probe_answer(store, ids: list[int], fired: Any, layer: int, neuron: int | None, cut: bool,
                 device: str) -> ProbeAnswer:
    """Typed text's tokens `ids` with `fired` (bool [tokens, d_ffn] of layer `layer`, a forward of
    the store's model): per token, the neuron's fire, or the layer's neurons that fired."""
    ex = explorer(store)
    fired = np.asarray(fired, dtype=bool)
    toks = []
    for i, tid in enumerate(ids):
        if neuron is None:
            on = np.flatnonzero(fired[i])
            toks.append(ProbeToken(tid, ex.token_text(tid), None, int(len(on)), tuple(on[:PROBE_LISTED].tolist())))
        else:
            toks.append(ProbeToken(tid, ex.token_text(tid), bool(fired[i, neuron]), None, None))
    return ProbeAnswer(layer, neuron, tuple(toks), len(ids),
                       sum(bool(t.fired) for t in toks) if neuron is not None else None, cut, device)
