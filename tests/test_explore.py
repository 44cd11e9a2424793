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
