"""`actdb neuron STORE LAYER NEURON`: one neuron's card, from the views and the masks.

Stats (fires, frequency, per domain), coverage and detector status (a trigram detector's
trigrams as text, ∅ for a slot before the sequence start), its top tokens with
P(fires | token), a position profile, its vocabulary projection, and contexts where it fires
(the firing token in [brackets], with the tokens before it in the same sequence).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import StoreError

SPARK = " ▁▂▃▄▅▆▇█"
PAD_MARK = "∅"   # an n-gram slot before the sequence start (SPEC §1.3); unquoted, so no token reads the same


def sparkline(values: list[float], width: int = 64) -> str:
    """Frequencies in [0, 1] as block characters, averaged into at most `width` buckets."""
    if not values:
        return ""
    v = np.asarray(values, dtype=float)
    buckets = np.array_split(v, min(width, len(v)))
    return "".join(SPARK[int(round(float(b.mean()) * (len(SPARK) - 1)))] for b in buckets)


def contexts(store, layer: int, neuron: int, n: int = 5, before: int = 8) -> list[str]:
    """Up to n contexts where the neuron fires, spread evenly over the store (deterministic)."""
    rows = np.flatnonzero(store.neuron(layer, neuron))
    if not len(rows):
        return []
    pick = rows[np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int)]
    out = []
    for r in pick.tolist():
        t = store.sql("""SELECT t.row, t.token, t.domain FROM tokens t
                         WHERE t.row BETWEEN $lo AND $r AND t.seq = (SELECT seq FROM tokens WHERE row = $r)
                         ORDER BY t.row""", {"lo": max(0, r - before), "r": r})
        toks = [repr(x)[1:-1] if x is not None else "?" for x in t["token"].to_list()]
        toks[-1] = f"[{toks[-1]}]"
        out.append(f"row {r:>9,} ({t['domain'][-1]}): {''.join(toks)}")
    return out


def trigram_texts(store, ngrams: list[int]) -> list[str]:
    """Trigram ids -> text, e.g. (∅, '<s>', 'The'): tokens quoted, PAD slots as PAD_MARK."""
    if not ngrams:
        return []
    ids = dict(store.sql("SELECT ngram, token_ids FROM trigram_counts WHERE list_contains($g, ngram)",
                         {"g": [int(g) for g in ngrams]}).rows())
    used = sorted({t for v in ids.values() for t in v if t is not None})
    tok = dict(store.sql("SELECT token_id, token FROM vocab WHERE list_contains($t, token_id)", {"t": used}).rows()) \
        if used else {}
    return ["(" + ", ".join(PAD_MARK if t is None else repr(tok.get(t, f"#{t}")) for t in ids[g]) + ")"
            for g in ngrams]


def neuron_card(store, layer: int, neuron: int, top: int = 10, n_contexts: int = 5) -> list[str]:
    """The card as lines of text."""
    m = store.manifest
    if layer not in m.layers:
        raise StoreError(f"layer: expected one of the recorded layers {list(m.layers)}, got {layer}")
    if not 0 <= neuron < m.d_ffn:
        raise StoreError(f"neuron: expected 0..{m.d_ffn - 1}, got {neuron}")
    p: dict[str, Any] = {"l": layer, "n": neuron}

    def q(sql: str, **extra: Any):
        return store.sql(sql, {**p, **extra})

    s = q("SELECT fires, freq, dead FROM neurons WHERE layer = $l AND neuron = $n").row(0, named=True)
    lines = [f"neuron {layer}:{neuron} of {m.model} (fired = {store.rule}: {m.rule_record(store.rule).definition})",
             f"fires        {s['fires']:,} of {m.n_tokens:,} tokens ({100 * s['freq']:.3f} %)"
             + ("  DEAD: never fires" if s["dead"] else "")]
    if s["dead"]:
        return lines
    dom = q("SELECT domain, fires, freq FROM neuron_domains WHERE layer = $l AND neuron = $n ORDER BY freq DESC")
    lines.append("domains      " + ", ".join(f"{r['domain']} {100 * r['freq']:.1f} %" for r in dom.iter_rows(named=True)))
    cov = q("SELECT n, n_covering, n_distinct FROM coverage WHERE layer = $l AND neuron = $n ORDER BY n")
    names = {1: "tokens", 2: "bigrams", 3: "trigrams"}
    lines.append("coverage     " + ", ".join(f"{r['n_covering']:,} of {r['n_distinct']:,} {names[r['n']]}"
                                          for r in cov.iter_rows(named=True)) + " cover 95 % of its fires")
    det = q("SELECT tokens, share FROM token_detectors WHERE layer = $l AND neuron = $n")
    if det.height:
        lines.append(f"detector     token detector of {det['tokens'].to_list()[0]} ({100 * det['share'][0]:.1f} % of fires)")
    tri = q("SELECT ngrams FROM trigram_detectors WHERE layer = $l AND neuron = $n")
    if tri.height:
        grams = tri["ngrams"].to_list()[0]
        more = f", … {len(grams) - top} more" if len(grams) > top else ""
        lines.append(f"detector     trigram detector of {len(grams)} trigram(s): "
                     + ", ".join(trigram_texts(store, grams[:top])) + more)
    toks = q("""SELECT v.token, nt.fires, nt.fires / tc.count::DOUBLE AS p_fire
                 FROM neuron_tokens nt JOIN token_counts tc USING (token_id) LEFT JOIN vocab v USING (token_id)
                 WHERE nt.layer = $l AND nt.neuron = $n ORDER BY nt.rank LIMIT $k""", k=top)
    lines.append("top tokens   " + ", ".join(f"{r['token']!r} {r['fires']:,} (P={r['p_fire']:.2f})"
                                          for r in toks.iter_rows(named=True)))
    pos = q("SELECT pos, freq_full FROM neuron_positions WHERE layer = $l AND neuron = $n ORDER BY pos")
    prof = dict(zip(pos["pos"].to_list(), pos["freq_full"].to_list()))
    full = store.sql("SELECT pos FROM position_counts WHERE n_full > 0 ORDER BY pos")["pos"].to_list()
    if full:
        lines.append(f"positions    0 {sparkline([prof.get(x) or 0.0 for x in full])} {full[-1]}"
                     "  (firing frequency by position, full-length sequences)")
    pn = q("SELECT mi, pattern, strong FROM positional_neurons WHERE layer = $l AND neuron = $n")
    if pn.height:
        r = pn.row(0, named=True)
        lines.append(f"positional   I(act; pos) = {r['mi']:.3f}: {'strong' if r['strong'] else 'weak'} {r['pattern']}")
    if "vocab_projection" in store.views():
        vp = q("""SELECT token, rank FROM vocab_projection_at(k := $k)
                   WHERE layer = $l AND neuron = $n ORDER BY rank DESC""", k=top)
        up = [t for t, r in zip(vp["token"].to_list(), vp["rank"].to_list()) if r > 0][::-1]
        down = [t for t, r in zip(vp["token"].to_list(), vp["rank"].to_list()) if r < 0]
        lines.append("promotes     " + ", ".join(repr(t) for t in up))
        lines.append("suppresses   " + ", ".join(repr(t) for t in down))
    ctx = contexts(store, layer, neuron, n_contexts)
    lines += ["contexts"] + [f"  {c}" for c in ctx]
    return lines
