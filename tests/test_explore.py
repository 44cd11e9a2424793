"""actdb.explore: the facts shown about a store, layer, neuron and token, as frozen dataclasses
computed once; the card and the explorer show the same ones; an Explorer's caches follow a
rebuilt index."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

import actdb
from actdb.explore.contexts import contexts
from actdb.explore.explorer import Explorer
from actdb.explore.layer import LayerQuery, layer_table
from actdb.explore.neuron import neuron_facts
from actdb.explore.overview import store_overview
from actdb.explore.tokens import token_facts


def test_facts_are_frozen_and_agree_with_the_views(known_store):
    f = neuron_facts(known_store, 0, 2, top=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.fires = 0
    assert f.fires == int(known_store.neuron(0, 2).sum())
    assert [(t.token_id, t.fires) for t in f.top_tokens] == known_store.sql(
        "SELECT token_id, fires FROM neuron_tokens WHERE layer = 0 AND neuron = 2 ORDER BY rank LIMIT 5").rows()
    assert f.prev.neuron == 1 and f.next.neuron == 3
    t = token_facts(known_store, "w5")
    assert [m.token_id for m in t.matches] == [5] and (0, 1) in [(d.layer, d.neuron) for d in t.detectors]


def test_the_card_and_the_explorer_show_the_same_facts(known_store):
    """One computation: the card's lines are the facts of the page's JSON, its contexts page 1's."""
    from starlette.testclient import TestClient

    from actdb.presentation.card import neuron_card
    from actdb.serve.app import create_app, store_names
    from actdb.settings import ServeSettings

    s = ServeSettings(contexts=3, context_tokens=8, top=6)
    (name,) = store_names([known_store])
    with TestClient(create_app([known_store], s), base_url="http://127.0.0.1") as c:
        page = c.get(f"/api/s/{name}/neuron/0/2").json()
    card = neuron_card(known_store, 0, 2, top=s.top, n_contexts=s.contexts, before=s.context_tokens)
    top = next(l for l in card if l.startswith("top tokens"))
    assert top == "top tokens   " + ", ".join(f"{t['token']!r} {t['fires']:,} (P={t['p_fire']:.2f})"
                                             for t in page["top_tokens"])
    rows = [int(l.split()[1].replace(",", "")) for l in card if l.startswith("  row")]
    assert rows == [x["row"] for x in page["contexts"]] and page["contexts_kind"] == "most telling"


def test_contexts_rank_by_p_fires_given_the_token(known_store):
    mask = known_store.neuron(0, 2)
    ids = known_store.tokens().sort("row")["token_id"].to_numpy()
    page = contexts(known_store, 0, 2, per_page=len(ids))     # every fire on one page
    p = [c.p_fire_token for c in page.contexts]
    assert sorted(c.row for c in page.contexts) == np.flatnonzero(mask).tolist() and p == sorted(p, reverse=True)
    assert all(x == pytest.approx(mask[ids == ids[c.row]].sum() / (ids == ids[c.row]).sum())
               for c, x in zip(page.contexts, p) if ids[c.row] != 2)   # BOS rows aside (not counted)


def test_an_explorer_forgets_what_it_read_from_a_rebuilt_index(known_store, tmp_path):
    from actdb.index.build import build_index

    path = shutil.copytree(known_store.path, tmp_path / "store")
    ex = Explorer(actdb.open(path), threads=True)
    before = layer_table(ex, 0, LayerQuery())
    assert store_overview(ex).thresholds["p_cov"] == 0.95
    build_index(path, progress=False, force=True, p_cov=0.5)
    fresh = actdb.open(path)
    after = layer_table(ex, 0, LayerQuery())
    assert [r.cov1 for r in after.rows] == [dict(fresh.sql("SELECT neuron, n_covering FROM coverage "
                                                           "WHERE layer = 0 AND n = 1").rows()).get(r.neuron)
                                            for r in after.rows] != [r.cov1 for r in before.rows]
    assert store_overview(ex).thresholds["p_cov"] == 0.5 and after.thresholds["p_cov"] == 0.5


# ---------------------------------------------------------------- co-firing: fires with, positional teams

def _all_masks(st) -> tuple[list[int], int, np.ndarray]:
    """(layers, d_ffn, bool [layers * d_ffn, rows]): every neuron's mask, layer after layer."""
    layers, d = list(st.manifest.layers), st.manifest.d_ffn
    return layers, d, np.concatenate([st.masks(l).T for l in layers])


def test_fires_with_equals_a_numpy_brute_force_live_and_from_the_index(known_store, tmp_path):
    """The facts' neighbours (top FIRES_WITH by phi, in the layer and over all layers) are the brute
    force's, counted live; the same lists come from the index's neuron_neighbours once it has one."""
    from cofire_reference import brute, top

    from actdb.explore.cofiring import FIRES_WITH, INDEX, LIVE, fires_with
    from actdb.index.build import build_index

    layers, d, x = _all_masks(known_store)
    n, f, both, jac, p, phi = brute(x)
    path = shutil.copytree(known_store.path, tmp_path / "store")
    build_index(path, progress=False, force=True, neighbours=12, neuron_chunk=5)
    indexed = actdb.open(path)
    cases = [(0, 1), (0, 2), (1, 3), (2, 5), (0, 0)]   # 0:0 is dead: no phi, no neighbours
    assert f[0] == 0 and all(f[layers.index(l) * d + nn] > 0 for l, nn in cases[:-1])
    for layer, neuron in cases:
        g = layers.index(layer) * d + neuron
        live = neuron_facts(known_store, layer, neuron).fires_with
        assert live.source == LIVE and live.k == FIRES_WITH
        mine = np.full(len(f), np.nan)
        lo = layers.index(layer) * d
        mine[lo:lo + d] = phi[g, lo:lo + d]
        for got, score in ((live.layer, mine), (live.all, phi[g])):
            want = top(score, g, FIRES_WITH)
            assert [(y.other_layer, y.other_neuron) for y in got] == [(layers[i // d], i % d) for i in want]
            for y, i in zip(got, want):
                assert (y.n_a, y.n_b, y.n_both, y.n_tokens) == (f[g], f[i], both[g, i], n)
                assert (y.phi, y.jaccard, y.p_other_given) == (phi[g, i], jac[g, i], p[g, i])
        if f[g] == 0:
            assert live.layer == live.all == ()
        ix = fires_with(indexed, layer, neuron)
        assert ix.source == INDEX and ix.said != live.said
        assert (ix.layer, ix.all) == (live.layer, live.all)


def test_fires_with_is_not_counted_per_page_past_the_cache(known_store, monkeypatch):
    """Masks larger than the co-firing cache would be read again for every page: then the facts say
    to build the index's table instead of counting."""
    from actdb.explore import cofiring
    from actdb.presentation.card import neuron_card

    monkeypatch.setattr(cofiring, "CACHE_MB", 0)
    fw = cofiring.fires_with(known_store, 0, 2)
    assert (fw.source, fw.layer, fw.all) == (cofiring.OFF, (), ()) and "actdb index --neighbours 20" in fw.said
    lines = neuron_card(known_store, 0, 2)
    at = lines.index(f"fires with   top {fw.k} by phi, {fw.said}")
    assert lines[at + 1] == "contexts (most telling)"


def _runs(on: np.ndarray) -> tuple[tuple[int, int], ...]:
    out, q = [], 0
    while q < len(on):
        if on[q]:
            r = q
            while r + 1 < len(on) and on[r + 1]:
                r += 1
            out.append((q, r))
            q = r
        q += 1
    return tuple(out)


def test_positional_team_equals_numpy_from_the_masks_and_positions(known_store):
    """Each member's fr(pos) and range (positions above its mean), the coverage, the cover, the
    order and the pairwise n_both / Jaccard / phi against numpy over the masks and the positions."""
    from cofire_reference import brute

    from actdb.explore.positional import positional_team

    st = known_store
    t = st.tokens().sort("row")
    pos, seq = t["pos"].to_numpy(), t["seq"].to_numpy()
    T = st.manifest.seq_len
    full = np.bincount(seq)[seq] == T
    sizes = {}
    for layer in st.manifest.layers:
        team = positional_team(st, layer)
        members = [x.neuron for x in team.neurons]
        want = set(st.sql("SELECT neuron FROM positional_neurons WHERE layer = $l", {"l": layer})["neuron"].to_list())
        assert set(members) == want and len(members) == len(want) and team.layer == layer
        sizes[layer] = len(members)
        if not members:
            continue
        m = st.masks(layer)
        fires = np.stack([m[full & (pos == q)].sum(axis=0) for q in range(T)], axis=1)[members]   # [k, T]
        above = T * fires > fires.sum(axis=1, keepdims=True)
        assert team.n_positions == T
        assert [x.ranges for x in team.neurons] == [_runs(a) for a in above]
        assert [x.n_positions for x in team.neurons] == above.sum(axis=1).tolist()
        assert np.allclose(np.array(team.profile), fires / full[pos == 0].sum(), rtol=0, atol=1e-12)
        assert list(team.coverage) == above.sum(axis=0).tolist() and team.covered == int(above.any(axis=0).sum())
        held = np.zeros(T, bool)
        for c in team.cover:
            held |= above[members.index(c)]
        assert (held == above.any(axis=0)).all()
        # the order: ranges as binary numbers from position 0, the larger first
        keys = ["".join("1" if v else "0" for v in a) for a in above]
        assert keys == sorted(keys, reverse=True)
        n, f, both, jac, p, phi = brute(m[:, members].T)
        assert team.n_tokens == n and np.array(team.n_both).tolist() == both.tolist()
        for got, ref in ((team.jaccard, jac), (team.phi, phi)):
            assert [[None if np.isnan(v) else float(v) for v in r] for r in ref] == [list(r) for r in got]
        for i, x in enumerate(team.neurons):
            others = [j for j in range(len(members)) if j != i and not np.isnan(jac[i, j])]
            if others:
                best = max(others, key=lambda j: (jac[i, j], -j))
                assert (x.partner, x.partner_jaccard) == (members[best], jac[i, best])
    assert max(sizes.values()) >= 3, "the known store plants positional neurons"
    assert positional_team(st).layer == min(l for l, k in sizes.items() if k == max(sizes.values()))
