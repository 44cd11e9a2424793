"""`actdb neuron STORE LAYER NEURON`: one neuron's card, the facts of actdb.explore as text.

Stats (fires, frequency, per domain), coverage and detector status (a trigram detector's
trigrams as text, ∅ for a slot before the sequence start), its top tokens with
P(fires | token), a position profile, its vocabulary projection, the neurons it fires together
with (top by phi, in its layer and over all layers), and the most telling contexts where it
fires (the firing token in [brackets], with the tokens before it in the same sequence).
"""
from __future__ import annotations

import numpy as np

from ..explore.cofiring import NO_NEIGHBOURS, OFF, FiresWith
from ..explore.contexts import contexts
from ..explore.explorer import Explorer
from ..explore.neuron import neuron_facts
from ..explore.overview import rule_words
from ..explore.thresholds import share

SPARK = " ▁▂▃▄▅▆▇█"
NGRAMS = {1: "tokens", 2: "bigrams", 3: "trigrams"}


def sparkline(values: list[float], width: int = 64) -> str:
    """Frequencies in [0, 1] as block characters, averaged into at most `width` buckets."""
    if not values:
        return ""
    v = np.asarray(values, dtype=float)
    buckets = np.array_split(v, min(width, len(v)))
    return "".join(SPARK[int(round(float(b.mean()) * (len(SPARK) - 1)))] for b in buckets)


def _text(token: str) -> str:
    return repr(token)[1:-1]   # control characters visible


def neuron_card(store, layer: int, neuron: int, top: int = 10, n_contexts: int = 5, before: int = 8) -> list[str]:
    """The card as lines of text: `top` tokens, projected tokens and trigrams, `n_contexts`
    contexts with up to `before` tokens before the fire."""
    ex = Explorer(store, name=str(store.path))
    f = neuron_facts(ex, layer, neuron, top)
    m = ex.manifest
    lines = [f"neuron {layer}:{neuron} of {m.model} (fired = {ex.rule}: {rule_words(m, ex.rule)})",
             f"fires        {f.fires:,} of {f.n_tokens:,} tokens ({100 * f.freq:.3f} %)"
             + ("  DEAD: never fires" if f.dead else "")]
    if f.dead:
        return lines
    lines.append("domains      " + ", ".join(f"{d.domain} {100 * d.freq:.1f} %" for d in f.domains))
    lines.append("coverage     " + ", ".join(f"{c.n_covering:,} of {c.n_distinct:,} {NGRAMS[c.n]}" for c in f.coverage)
                 + f" cover {share(f.thresholds['p_cov'])} of its fires")
    if f.token_detector:
        td = f.token_detector
        lines.append(f"detector     token detector of {list(td.tokens)} ({100 * td.share:.1f} % of fires)")
    if f.trigram_detector:
        gd = f.trigram_detector
        more = f", … {gd.n - len(gd.trigrams)} more" if gd.n > len(gd.trigrams) else ""
        lines.append(f"detector     trigram detector of {gd.n} trigram(s): " + ", ".join(gd.trigrams) + more)
    lines.append("top tokens   " + ", ".join(f"{t.token!r} {t.fires:,} (P={t.p_fire:.2f})" for t in f.top_tokens))
    if f.positions:
        lines.append(f"positions    0 {sparkline([p.freq for p in f.positions])} {f.positions[-1].pos}"
                     "  (firing frequency by position, full-length sequences)")
    if f.positional:
        p = f.positional
        lines.append(f"positional   I(act; pos) = {p.mi:.3f}: {'strong' if p.strong else 'weak'} {p.pattern}")
    if f.promoted is not None:
        lines.append("promotes     " + ", ".join(repr(t.token) for t in f.promoted))
        lines.append("suppresses   " + ", ".join(repr(t.token) for t in f.suppressed or ()))
    lines += fires_with_lines(f.fires_with, layer)
    lines.append("contexts (most telling)")
    for c in contexts(ex, layer, neuron, per_page=n_contexts, window=before).contexts:
        shown = [t for t in c.tokens if t.row <= c.row]
        text = "".join(f"[{_text(t.text)}]" if t.center else _text(t.text) for t in shown)
        lines.append(f"  row {c.row:>9,} (doc {c.doc}, pos {c.pos}): {text}")
    return lines


def fires_with_lines(fw: FiresWith, layer: int) -> list[str]:
    """The neurons it fires together with: each list with n_both, phi, Jaccard, P(other | this)."""
    out = [f"fires with   top {fw.k} by phi, {fw.said}"]
    if fw.source == OFF:
        return out
    for head, items in ((f"in layer {layer}", fw.layer), ("all layers", fw.all)):
        rows = [f"{x.other_layer}:{x.other_neuron:<6} n_both {x.n_both:>9,}  phi {x.phi:.3f}  Jaccard {x.jaccard:.3f}  "
                f"P(other | this) {x.p_other_given:.3f}" for x in items]
        rows = rows or [NO_NEIGHBOURS]
        out += [f"  {head if i == 0 else '':<13}{r}" for i, r in enumerate(rows)]
    return out
