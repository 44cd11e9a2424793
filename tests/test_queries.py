"""Saved queries (queries/*.sql): each against a direct numpy computation (tests/test_index.Ref)
on the hand-built and the ingested store, and each against its stored answer on the
hand-built store (tests/answers/NAME.json).

Regenerate the stored answers after a deliberate change with
    ACTDB_UPDATE_ANSWERS=1 .venv/bin/pytest -q tests/test_queries.py
and review the diff of tests/answers/ before committing it.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import numpy as np

import refs_projection_massive
from actdb.query.across import folder_name, model_name
from actdb.query.catalogue import saved_queries
from views_reference import UNI_BINS, same

ANSWERS = Path(__file__).parent / "answers"
NAMES = [q.name for q in saved_queries()]
ACROSS = {q.name for q in saved_queries() if q.across}   # over several stores: stored answers on across_stores
BI_BINS = [(1, 50), (51, 100), (101, 200), (201, 500), (501, 1000), (1001, 2000), (2001, 5000), (5001, 1000000)]
TRI_BINS = [(1, 50), (51, 100), (101, 200), (201, 500), (501, 1000), (1001, 5000), (5001, 20000), (20001, 3000000)]


def expected_across(name: str, ref, st) -> list[tuple]:
    """A query across models on one store: its one-store queries' numpy answers, led by store,
    model, n_layers and depth = layer / (n_layers - 1)."""
    m = st.manifest
    lead = (folder_name(st.path), model_name(m), m.n_layers)

    def at(layer):
        return (*lead, layer, layer / (m.n_layers - 1))
    if name == "across_dead_freq":
        freq = {r[0]: r[2] for r in expected("mean_freq_alive", ref, st)}
        return [(*at(l), n, dead, pct, freq[l]) for l, n, dead, pct in expected("dead_per_layer", ref, st)]
    if name == "across_detectors":
        det = dict(expected("token_detectors_per_layer", ref, st))
        tri = {r[0]: r[1] for r in expected("trigram_detectors_per_layer", ref, st)}
        return [(*at(l), det[l], n, cum, tri.get(l)) for l, n, cum in expected("detected_tokens_per_layer", ref, st)]
    if name == "across_positional":
        return [(*at(l), pattern, strong, n) for l, pattern, strong, n in expected("positional_by_kind", ref, st)]
    if name == "across_massive_by_depth":
        return [(*at(r[0]), *r[1:]) for r in expected("massive_top_magnitudes", ref, st)]
    if name == "across_massive":
        c = refs_projection_massive._capture(st)
        top = np.abs(c["topk_value"][:, :, 0])   # [layer, row]: each token's largest |h|
        got = refs_projection_massive._massive(st)
        layers = [x["layer"] for x in got]
        count = Counter(x["dim"] for x in got)
        dims = sorted(count, key=lambda d: (-count[d], d))[:5] or None
        first = min(layers) if layers else None
        return [(*lead, float(top.max()), m.layers[int(np.argmax(top.max(axis=1)))],
                 float(np.median(np.median(c["seq_median"], axis=1))), len(got), len(count), dims, first,
                 None if first is None else first / (m.n_layers - 1),
                 float(np.mean([x["pos"] == 0 for x in got])) if got else None)]
    raise AssertionError(f"no numpy reference for saved query {name}")


def expected(name: str, ref, st) -> list[tuple]:
    if name in ACROSS:
        return expected_across(name, ref, st)
    if name in refs_projection_massive.NAMES:
        return refs_projection_massive.expected(name, ref, st)
    L = ref.layers
    if name == "dead_per_layer":
        return [(l, ref.d, int((ref.fires(l) == 0).sum()), 100 * (ref.fires(l) == 0).mean()) for l in L]
    if name == "mean_freq_alive":
        return [(l, int((ref.fires(l) > 0).sum()), (ref.fires(l)[ref.fires(l) > 0] / ref.n).mean()) for l in L]
    if name == "unigram_coverage_hist":
        out = []
        for l in L:
            cov = [ref.coverage(l, nn, 1) for nn in range(ref.d)]
            out += [(l, lo, hi, sum(1 for c in cov if c is not None and lo <= c <= hi)) for lo, hi in UNI_BINS]
        return out
    if name == "ngram_coverage_hist":
        out = []
        for k, bins in ((2, BI_BINS), (3, TRI_BINS)):
            for l in ref.ngram_layers:
                cov = [ref.coverage(l, nn, k) for nn in range(ref.d)]
                out += [(k, l, lo, hi, sum(1 for c in cov if c is not None and lo <= c <= hi)) for lo, hi in bins]
        return out
    if name in ("token_detectors_per_layer", "detected_tokens_per_layer", "new_tokens_per_layer"):
        det = {l: [ref.detector(l, nn, 1, 5) for nn in range(ref.d)] for l in L}
        toks = {l: set().union(*[d for d in det[l] if d]) for l in L}
        if name == "token_detectors_per_layer":
            return [(l, sum(d is not None for d in det[l])) for l in L]
        if name == "detected_tokens_per_layer":
            return [(l, len(toks[l]), len(set().union(*[toks[x] for x in L if x <= l]))) for l in L]
        return [(l, len(toks[l]), len(toks[l] - set().union(*[toks[x] for x in L if x < l]))) for l in L]
    if name == "trigram_detectors_per_layer":
        NL = ref.ngram_layers
        det = {l: [ref.detector(l, nn, 3, 50) for nn in range(ref.d)] for l in NL}
        grams = {l: set().union(*[d for d in det[l] if d]) for l in NL}
        out = []
        for i, l in enumerate(NL):
            below = set().union(*[grams[x] for x in NL if x < l])
            prev = grams[NL[i - 1]] if i else set()
            out.append((l, sum(d is not None for d in det[l]), len(grams[l]),
                        len(set().union(*[grams[x] for x in NL if x <= l])), len(grams[l] - below), len(grams[l] - prev)))
        return out
    if name == "positional_by_kind":
        c = Counter()
        for l in L:
            for nn, (mi, pat, strong) in ref.positional(l).items():
                c[(l, pat, strong)] += 1
        return sorted((k[0], k[1], k[2], v) for k, v in c.items())
    if name == "oscillatory_ranges":
        out = []
        for l in L:
            frp = ref.fr_pos(l)
            for nn, (mi, pat, strong) in ref.positional(l).items():
                if pat == "oscillatory" and strong:
                    on = frp[nn] == 1
                    q = 0
                    while q < ref.T:
                        if on[q]:
                            r = q
                            while r + 1 < ref.T and on[r + 1]:
                                r += 1
                            out.append((l, nn, q, r))
                            q = r
                        q += 1
        return sorted(out)
    if name == "positional_team":   # the layer with the most positional neurons, the lower of equals
        sizes = {l: len(ref.positional(l)) for l in L}
        if not any(sizes.values()):
            return []
        l = min(L, key=lambda x: (-sizes[x], x))
        m, pos = ref.masks[l][ref.full], ref.pos[ref.full]
        fires = np.stack([m[pos == q].sum(axis=0) for q in range(ref.T)], axis=1)   # [d, T]
        out = []
        for nn, (mi, pat, strong) in sorted(ref.positional(l).items()):
            above = ref.T * fires[nn] > fires[nn].sum()
            out += [(l, nn, mi, pat, strong, q, fires[nn, q] / (pos == q).sum(), bool(above[q])) for q in range(ref.T)]
        return out
    raise AssertionError(f"no numpy reference for saved query {name}")


def comparable(df, name) -> list[tuple]:
    drop = {"bin"}  # labels; bounds are compared
    cols = [c for c in df.columns if c not in drop]
    return [tuple(r) for r in df.select(cols).rows()]


@pytest.mark.parametrize("which", ["known", "real"])
@pytest.mark.parametrize("name", NAMES)
def test_saved_query_matches_numpy(name, which, request):
    st, ref = request.getfixturevalue(f"{which}_store"), request.getfixturevalue(f"{which}_ref")
    got = comparable(st.query(name), name)
    want = expected(name, ref, st)
    assert same(got, want), f"{name}: got {got[:8]} want {want[:8]}"


def test_saved_queries_are_nontrivial_on_known_store(known_store):
    """The hand-built store exercises every finding (so the checks above can fail)."""
    st = known_store
    assert st.query("dead_per_layer")["n_dead"].min() >= 1
    assert st.query("token_detectors_per_layer")["n_detectors"].to_list()[:2] >= [2, 2]
    assert st.query("new_tokens_per_layer")["n_new"].to_list()[1] >= 1
    assert st.query("trigram_detectors_per_layer")["n_detectors"].to_list()[0] >= 1
    assert set(st.query("positional_by_kind")["pattern"]) >= {"oscillatory", "both extremes"}
    assert st.query("oscillatory_ranges").height >= 2
    share = st.query("detector_suppression_share")
    assert share["n_detectors"][-1] >= 4 and 0 < share["share_suppressing"][-1] < 1
    sites = st.query("massive_sites")
    assert sites["dim"].to_list() == [refs_projection_massive.MASSIVE_DIM], "the decoy fails the ratio test"
    assert sites["share_first_position"][0] == 1.0 and sites["first_layer"][0] == 1


@pytest.mark.parametrize("name", NAMES)
def test_saved_query_stored_answer(name, request):
    """Each saved query's answer on the hand-built store, a query across models's on the three
    tiny OPT stores (conftest.across_stores)."""
    df = request.getfixturevalue("across_stores" if name in ACROSS else "known_store").query(name)
    rows = [list(r) for r in df.rows()]
    path = ANSWERS / f"{name}.json"
    if os.environ.get("ACTDB_UPDATE_ANSWERS"):
        ANSWERS.mkdir(exist_ok=True)
        path.write_text(json.dumps({"columns": df.columns, "rows": rows}, indent=1) + "\n")
    stored = json.loads(path.read_text())
    assert stored["columns"] == df.columns
    assert same([tuple(r) for r in rows], [tuple(r) for r in stored["rows"]])


def test_saved_query_headers():
    for q in saved_queries():
        assert q.title and ("Voita et al. 2023" in q.reproduces or "Sun et al. 2024" in q.reproduces), q.name
        assert "Fig" in q.reproduces or "§" in q.reproduces, q.name
        used = set(__import__("re").findall(r"\$(\w+)", q.sql))
        assert used == set(q.params), q.name
