"""`actdb serve` over HTTP (Starlette's TestClient): every page and its /api/ twin, numbers
against the views queried directly and a numpy computation from the masks, the 404s, the
escaping, the static folder, the console's confinement and limits, concurrency, the probe."""
from __future__ import annotations

import html
import re
import threading
import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from actdb.serve.app import create_app, store_names
from actdb.settings import ServeSettings
from serve_stores import HOSTILE, corpus_texts

SETTINGS = ServeSettings(probe=True, timeout=2.0, max_rows=50, contexts=4, page_size=5)
BASE = "http://127.0.0.1"   # a loopback Host header: the server answers no other name


@pytest.fixture(scope="module")
def served(known_store, hostile_store, probe_store):
    stores = [known_store, hostile_store, probe_store]
    names = dict(zip(("known", "hostile", "probe"), store_names(stores)))
    with TestClient(create_app(stores, SETTINGS), raise_server_exceptions=False, base_url=BASE) as client:
        yield client, names


def get(client, url: str, status: int = 200):
    r = client.get(url)
    assert r.status_code == status, (url, r.status_code, r.text[:500])
    return r


def api(client, url: str, status: int = 200):
    return get(client, "/api" + url, status).json()


def test_every_page_answers_html_and_json(served):
    c, n = served
    k = n["known"]
    for url in ["/", f"/s/{k}", f"/s/{k}/layer/0", f"/s/{k}/neuron/0/1", f"/s/{k}/neuron/0/1?page=2",
                f"/s/{k}/token?q=w5", f"/s/{k}/token", f"/s/{k}/doc/0", f"/s/{k}/doc/0?layer=0&neuron=1",
                f"/s/{k}/sql", f"/s/{k}/sql?q=SELECT+1", f"/s/{k}/sql?saved=dead_per_layer"]:
        r = get(c, url)
        assert r.headers["content-type"].startswith("text/html") and "<main>" in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
        j = get(c, "/api" + (url if url != "/" else "/stores"))
        assert j.headers["content-type"] == "application/json"
        j.json()
    assert get(c, f"/s/{k}/figure/fig1a.png").content[:8] == b"\x89PNG\r\n\x1a\n"
    assert get(c, "/static/app.js").text.startswith("// actdb serve")


def test_stores_page_numbers_equal_the_views(served, known_store):
    from actdb.presentation.report import headline

    c, n = served
    (s,) = api(c, f"/s/{n['known']}")["stores"]
    m = known_store.manifest
    assert (s["n_tokens"], s["n_sequences"], s["fire_rule"], s["layers"]) == (m.n_tokens, m.n_sequences, m.fire_rule,
                                                                             list(m.layers))
    doms = known_store.sql("SELECT domain, n FROM domain_counts ORDER BY domain")
    assert sorted((d["domain"], d["tokens"]) for d in s["domains"]) == list(doms.iter_rows())
    assert [(h["what"], h["value"]) for h in s["headline"]] == headline(known_store)
    ls = known_store.sql("SELECT layer, n_dead FROM layer_stats ORDER BY layer")
    assert [(r["layer"], r["n_dead"]) for r in s["layer_stats"]] == list(ls.iter_rows())
    assert [r["n_dead"] for r in s["layer_stats"]] == [int((known_store.masks(l).sum(0) == 0).sum()) for l in m.layers]
    names = {f["name"] for f in s["figures"]}
    assert {"fig1a", "fig3a", "massive-top"} <= names
    page = get(c, "/").text
    assert all(f'src="/s/{n["known"]}/figure/{f}.png"' in page for f in names)   # every figure inline
    assert all(html.escape(h["value"]) in page for h in s["headline"])


def test_layer_table_sorts_filters_and_pages(served, known_store):
    c, n = served
    k = n["known"]
    fires = known_store.masks(0).sum(axis=0)          # numpy, from the masks
    d = known_store.manifest.d_ffn
    rows, page = [], 1
    while True:                                       # page through the whole layer, sorted by freq desc
        j = api(c, f"/s/{k}/layer/0?sort=freq&desc=1&page={page}")
        rows += j["rows"]
        if page == j["pages"]:
            break
        page += 1
    assert j["total"] == d and len(rows) == d and j["pages"] == -(-d // SETTINGS.page_size)
    assert [r["fires"] for r in rows] == sorted(fires.tolist(), reverse=True)
    assert all(r["fires"] == fires[r["neuron"]] for r in rows)
    assert {r["neuron"] for r in rows if r["dead"]} == set(np.flatnonzero(fires == 0).tolist())
    # coverage columns: the coverage view
    cov = dict(known_store.sql("SELECT neuron, n_covering FROM coverage WHERE layer = 0 AND n = 2").iter_rows())
    assert all(r["cov2"] == cov.get(r["neuron"]) for r in rows)
    # filters
    det = set(known_store.sql("SELECT neuron FROM token_detectors WHERE layer = 0")["neuron"].to_list())
    j = api(c, f"/s/{k}/layer/0?detector=token&page=1")
    got = {r["neuron"] for r in j["rows"]}
    assert 1 in det and j["total"] == len(det) and got <= det
    pos = known_store.sql("SELECT neuron, pattern FROM positional_neurons WHERE layer = 1")
    j = api(c, f"/s/{k}/layer/1?pattern=oscillatory&sort=mi&desc=1")
    assert {r["neuron"] for r in j["rows"]} == {nn for nn, p in pos.iter_rows() if p == "oscillatory"} and 3 in \
        {r["neuron"] for r in j["rows"]}
    j = api(c, f"/s/{k}/layer/0?dead=1")
    assert [r["neuron"] for r in j["rows"]] == np.flatnonzero(fires == 0).tolist()
    j = api(c, f"/s/{k}/layer/0?min_freq=0.5")
    assert j["total"] == int((fires / known_store.manifest.n_tokens >= 0.5).sum())
    massive = known_store.sql("SELECT count(*) FROM massive_activations_at(source := 'ffn') WHERE layer = 0").item()
    j = api(c, f"/s/{k}/layer/0?massive=1")
    assert j["has_massive"] == ("ffn" in known_store.manifest.capture)
    if j["has_massive"]:
        assert sum(r["massive"] for r in j["rows"]) <= massive
    # a bad sort or filter is a 400 naming it
    assert "sort: expected one of" in api(c, f"/s/{k}/layer/0?sort=drop", 400)["error"]
    assert "min_freq: expected a number" in api(c, f"/s/{k}/layer/0?min_freq=x", 400)["error"]
    t = get(c, f"/s/{k}/layer/0?sort=fires&desc=1&page=2").text      # rendered in that order
    assert [int(x) for x in re.findall(r'data-neuron="(\d+)"', t)] == \
        [r["neuron"] for r in api(c, f"/s/{k}/layer/0?sort=fires&desc=1&page=2")["rows"]]


def test_neuron_page_numbers_equal_views_and_masks(served, known_store):
    c, n = served
    k = n["known"]
    mask = known_store.neuron(0, 1)
    ids = known_store.tokens().sort("row")["token_id"].to_numpy()
    j = api(c, f"/s/{k}/neuron/0/1")
    assert j["fires"] == int(mask.sum()) == int((ids == 5).sum())
    assert j["token_detector"]["tokens"] == ["w5"]
    top = j["top_tokens"][0]
    assert top["token"] == "w5" and top["p_fire"] == pytest.approx(1.0)
    nt = known_store.sql("SELECT token_id, fires FROM neuron_tokens WHERE layer = 0 AND neuron = 2 ORDER BY rank")
    j2 = api(c, f"/s/{k}/neuron/0/2")
    assert [(t["token_id"], t["fires"]) for t in j2["top_tokens"]] == list(nt.head(SETTINGS.top).iter_rows())
    m2 = known_store.neuron(0, 2)
    for t in j2["top_tokens"]:                       # P(fires | token) from numpy, BOS rows excluded as the views do
        rows = (ids == t["token_id"]) & (known_store.tokens().sort("row")["pos"].to_numpy() > 0)
        assert t["p_fire"] == pytest.approx(m2[rows].mean())
    doms = known_store.sql("SELECT domain, fires FROM neuron_domains WHERE layer = 0 AND neuron = 2 ORDER BY domain")
    assert sorted((d["domain"], d["fires"]) for d in j2["domains"]) == list(doms.iter_rows())
    cov = known_store.sql("SELECT n, n_covering FROM coverage WHERE layer = 0 AND neuron = 2 ORDER BY n")
    assert [(x["n"], x["n_covering"]) for x in j2["coverage"]] == list(cov.iter_rows())
    vp = known_store.sql(f"SELECT token, rank FROM vocab_projection_at(k := {SETTINGS.top}) "
                         "WHERE layer = 0 AND neuron = 2 AND rank > 0 ORDER BY rank")
    assert [t["token"] for t in j2["promoted"]] == vp["token"].to_list()
    assert j2["prev"] == {"layer": 0, "neuron": 1} and j2["next"] == {"layer": 0, "neuron": 3}
    last = api(c, f"/s/{k}/neuron/0/15")
    assert last["next"] == {"layer": 1, "neuron": 0}
    osc = api(c, f"/s/{k}/neuron/1/3")
    assert osc["positional"]["pattern"] == "oscillatory" and osc["positional"]["strong"]
    full = known_store.sql("SELECT pos, freq_full FROM neuron_positions WHERE layer = 1 AND neuron = 3 ORDER BY pos")
    prof = {p["pos"]: p["freq"] for p in osc["positions"]}
    assert all(prof[p] == pytest.approx(f) for p, f in full.iter_rows())
    assert "DEAD" not in get(c, f"/s/{k}/neuron/0/0").text and api(c, f"/s/{k}/neuron/0/0")["dead"]


def test_contexts_highlight_every_fire_rank_then_sample(served, known_store):
    c, n = served
    k = n["known"]
    mask = known_store.neuron(0, 2)
    tok = known_store.tokens().sort("row")
    ids, seq = tok["token_id"].to_numpy(), tok["seq"].to_numpy()
    pages = api(c, f"/s/{k}/neuron/0/2")["contexts_pages"]
    assert pages == 1 + -(-(int(mask.sum()) - SETTINGS.contexts) // SETTINGS.contexts)
    seen = []
    for p in (1, 2, 3):
        j = api(c, f"/s/{k}/neuron/0/2?page={p}")
        assert j["contexts_kind"] == ("most telling" if p == 1 else "random sample")
        for ctx in j["contexts"]:
            r = ctx["row"]
            assert mask[r] and ctx["seq"] == seq[r]
            for t in ctx["tokens"]:                   # every firing token highlighted, no other
                assert t["fired"] == bool(mask[t["row"]]) and seq[t["row"]] == seq[r]
            seen.append(r)
        if p == 1:   # the ranking: P(fires | token) over the whole store, highest first
            p_tok = {t: mask[ids == t].mean() for t in set(ids[mask].tolist())}
            best = max(p_tok.values())
            assert p_tok[int(ids[j["contexts"][0]["row"]])] == pytest.approx(best)
            assert [x["p_fire_token"] for x in j["contexts"]] == sorted((x["p_fire_token"] for x in j["contexts"]),
                                                                        reverse=True)
    assert len(seen) == len(set(seen))               # pages never repeat a context
    assert api(c, f"/s/{k}/neuron/0/2?page=2") == api(c, f"/s/{k}/neuron/0/2?page=2")   # seeded: reproducible
    page = get(c, f"/s/{k}/neuron/0/1").text
    links = re.findall(r'href="(/s/[^"]*/doc/\d+\?layer=0&amp;neuron=1#r\d+)"', page)
    assert len(links) == SETTINGS.contexts
    doc = api(c, html.unescape(links[0]).split("#")[0])
    row = int(links[0].rsplit("#r", 1)[1])
    assert any(t["row"] == row and t["fired"] and t["text"] == "w5" for t in doc["tokens"])
    assert "not found" in get(c, f"/s/{k}/neuron/0/2?page=999", 404).text


def test_token_page_detectors_and_top_neurons(served, known_store):
    c, n = served
    j = api(c, f"/s/{n['known']}/token?q=w5")
    assert [m["token_id"] for m in j["matches"]] == [5]
    det = known_store.sql("SELECT layer, neuron FROM token_detectors WHERE list_contains(token_ids, 5) ORDER BY ALL")
    assert [(d["layer"], d["neuron"]) for d in j["detectors"]] == list(det.iter_rows())
    assert (0, 1) in [(d["layer"], d["neuron"]) for d in j["detectors"]]
    tok = known_store.tokens().sort("row")
    not_bos = tok["pos"].to_numpy() > 0
    is5 = (tok["token_id"].to_numpy() == 5) & not_bos
    for r in j["top_neurons"]:                        # fires and P(fires | token) from the masks
        m = known_store.neuron(r["layer"], r["neuron"])
        assert r["fires"] == int(m[is5].sum()) and r["p_fire"] == pytest.approx(m[is5].mean())
    assert [r["fires"] for r in j["top_neurons"]] == sorted((r["fires"] for r in j["top_neurons"]), reverse=True)
    assert api(c, f"/s/{n['known']}/token?id=5")["matches"] == j["matches"]


def test_document_page_highlights_the_neuron(served, known_store):
    c, n = served
    tok = known_store.tokens().sort("row")
    doc = int(tok["doc"][100])
    rows = np.flatnonzero(tok["doc"].to_numpy() == doc)
    j = api(c, f"/s/{n['known']}/doc/{doc}?layer=0&neuron=2")
    m = known_store.neuron(0, 2)
    assert [t["row"] for t in j["tokens"]] == rows.tolist()
    assert [t["fired"] for t in j["tokens"]] == m[rows].tolist() and j["n_fired"] == int(m[rows].sum())
    page = get(c, f"/s/{n['known']}/doc/{doc}?layer=0&neuron=2").text
    assert page.count('class="tok fire"') == int(m[rows].sum())


@pytest.mark.parametrize("url, says", [
    ("/s/{k}/layer/7", "layer 7: not recorded in store"),
    ("/s/{k}/layer/x", "layer 'x': expected a number"),
    ("/s/{k}/neuron/0/999", "neuron 0:999: not in store"),
    ("/s/{k}/neuron/5/0", "layer 5: not recorded"),
    ("/s/{k}/token?q=nosuchtoken", "token 'nosuchtoken': not in the vocabulary"),
    ("/s/{k}/token?id=4444", "token id 4444: not in the vocabulary"),
    ("/s/{k}/doc/99999", "document 99999: not in store"),
    ("/s/nosuchstore/layer/0", "store 'nosuchstore': not served here"),
    ("/s/{k}/figure/fig99.png", "figure 'fig99'"),
    ("/s/{k}/sql?saved=nosuch", "saved query 'nosuch'"),
    ("/no/such/page", "/no/such/page: no such page"),
])
def test_not_found_names_what(served, url, says):
    c, n = served
    url = url.format(k=n["known"])
    r = get(c, url, 404)
    assert says in html.unescape(r.text) and "Traceback" not in r.text
    if not url.endswith(".png") and url.startswith("/s/"):
        assert says in api(c, url, 404)["error"]


def test_static_paths_cannot_leave_the_static_folder(served):
    c, _ = served
    for url in ["/static/..%2fapp.py", "/static/%2e%2e/app.py", "/static/..%2f..%2fsettings.py",
                "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc/passwd", "/static//etc/passwd"]:
        r = c.get(url)
        assert r.status_code == 404, url
        assert "import" not in r.text and "root:" not in r.text


def test_corpus_text_is_escaped(served, hostile_store):
    c, n = served
    h = n["hostile"]
    pages = [get(c, f"/s/{h}/neuron/0/1").text, get(c, f"/s/{h}/token?q={HOSTILE}").text,
             get(c, f"/s/{h}/doc/0?layer=0&neuron=1").text, get(c, f"/s/{h}/layer/0").text,
             get(c, f"/s/{h}/sql?q=SELECT+token+FROM+vocab").text,
             get(c, f"/s/{h}/sql?q=SELECT+'<script>alert(2)</script>'+AS+x").text, get(c, "/").text]
    for p in pages:
        assert "<script>alert" not in p and "<i>x</i>" not in p
        assert re.findall(r"<script[^>]*>", p) == ['<script src="/static/app.js" defer>']
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0] and "&lt;script&gt;alert(2)" in pages[5]
    assert api(c, f"/s/{h}/token?q={HOSTILE}")["matches"][0]["token"] == HOSTILE
    assert "<script>alert(1)</script>" not in get(c, f"/s/{h}/token?q=<script>alert(1)</script>x", 404).text


def test_console_answers_like_the_views(served, known_store):
    c, n = served
    k = n["known"]
    sql = "SELECT layer, neuron, fires FROM neurons WHERE fires > $f ORDER BY fires DESC, layer, neuron LIMIT 20"
    j = api(c, f"/s/{k}/sql?q={sql}&p.f=100")
    want = known_store.sql(sql, {"f": 100})
    assert [x["name"] for x in j["columns"]] == want.columns and j["rows"] == [list(r) for r in want.iter_rows()]
    assert not j["truncated"] and j["error"] is None
    csv = get(c, f"/api/s/{k}/sql.csv?q={sql}&p.f=100")
    assert csv.headers["content-type"].startswith("text/csv") and "attachment" in csv.headers["content-disposition"]
    lines = csv.text.strip().splitlines()
    assert lines[0] == "layer,neuron,fires" and lines[1:] == [",".join(map(str, r)) for r in want.iter_rows()]
    # a saved query with its parameters as form fields
    j = api(c, f"/s/{k}/sql?saved=token_detectors_per_layer")
    assert j["chosen"]["params"] and j["rows"] == [list(r) for r in known_store.query("token_detectors_per_layer")
                                                   .iter_rows()]
    page = get(c, f"/s/{k}/sql?saved=token_detectors_per_layer").text
    assert all(f'name="p.{p["name"]}"' in page for p in j["chosen"]["params"])


def test_console_reads_only_the_store_and_cuts_off(served):
    c, n = served
    k = n["known"]
    for sql in ["SELECT * FROM read_text('/etc/passwd')", "SELECT * FROM read_csv('/etc/hostname')",
                "SELECT * FROM glob('/*')", "COPY (SELECT 1) TO '/tmp/x.csv'", "SET lock_configuration = false"]:
        j = api(c, f"/s/{k}/sql?q={sql}", 400)
        assert j["error"] and not j["rows"], sql
        r = get(c, f"/s/{k}/sql?q={sql}", 400)
        assert "root:x" not in r.text and j["error"] in html.unescape(r.text)
    j = api(c, f"/s/{k}/sql?q=SELECT * FROM read_text('/etc/passwd')", 400)
    assert "reads only the store's own files" in j["error"]
    j = api(c, f"/s/{k}/sql?q=SELECT row FROM tokens ORDER BY row")   # row limit: cut off and says so
    assert j["truncated"] and len(j["rows"]) == SETTINGS.max_rows and j["rows"][-1] == [SETTINGS.max_rows - 1]
    assert "cut off at 50 rows" in get(c, f"/s/{k}/sql?q=SELECT row FROM tokens").text
    assert "first 50 rows" in get(c, f"/api/s/{k}/sql.csv?q=SELECT row FROM tokens").headers["x-actdb-cut-off"]
    t = time.perf_counter()
    j = api(c, f"/s/{k}/sql?q={LONG}", 408)            # time limit: cut off and says so
    assert time.perf_counter() - t < SETTINGS.timeout + 5
    assert "query interrupted after 2 s (--timeout of actdb serve)" == j["error"]


# long, in little memory: a console query needing more than --memory-mb stops with that error instead
LONG = "SELECT count(*) FROM range(1000000000000) a WHERE hash(a.range) = 42"


@pytest.mark.slow
def test_pages_answer_while_a_long_query_runs(known_store):
    """A console query runs in a worker thread on its own database: the other pages answer
    meanwhile (each request runs in its own thread with its own DuckDB cursor)."""
    slow = ServeSettings(timeout=8.0)
    (k,) = store_names([known_store])
    out = {}
    with TestClient(create_app([known_store], slow), base_url=BASE) as c:
        get(c, f"/s/{k}/neuron/0/1")                # warm: the token arrays load once

        def long():
            out["long"] = api(c, f"/s/{k}/sql?q={LONG}", 408)
            out["long_done"] = time.perf_counter()

        th = threading.Thread(target=long)
        th.start()
        time.sleep(0.5)
        for url in [f"/s/{k}/sql?q=SELECT 42 AS x", f"/s/{k}/neuron/0/1", f"/s/{k}/layer/0", f"/s/{k}/token?q=w5"]:
            get(c, url)
        done = time.perf_counter()
        th.join()
    assert out["long"]["error"] == "query interrupted after 8 s (--timeout of actdb serve)"
    assert done < out["long_done"], "the other pages waited for the long query"


def test_probe_off_says_why(served, known_store):
    c, n = served
    k = n["known"]
    page = get(c, f"/s/{k}/neuron/0/1").text        # --probe, but model 'synthetic' is nowhere here
    assert 'id="probe-off"' in page and "cannot be loaded here" in page and "synthetic" in page
    r = api(c, f"/s/{k}/probe?text=w5&layer=0&neuron=1", 400)
    assert "cannot be loaded here" in r["error"] and "synthetic" in r["error"]
    p = get(c, f"/s/{n['probe']}/neuron/0/1").text    # a store whose model folder is here: on
    assert 'id="probe-off"' not in p and 'class="probe-form"' in p
    with TestClient(create_app([known_store], ServeSettings()), base_url=BASE) as off:      # no --probe
        (name,) = store_names([known_store])
        for url in (f"/s/{name}/neuron/0/1", f"/s/{name}/token?q=w5"):
            assert "start actdb serve with --probe" in off.get(url).text
        assert "start actdb serve with --probe" in off.get(f"/api/s/{name}/probe?text=w5&layer=0").json()["error"]


def test_probe_fires_as_the_store_recorded(served, probe_store):
    """The probe's fires on a document's text equal the store's masks of its sequence (one
    document per sequence, batch 1): an independent path, the ingest forward and the store."""
    c, n = served
    p = n["probe"]
    texts = corpus_texts(probe_store.corpus)
    tok = probe_store.tokens().sort("row")
    m = probe_store.manifest
    checked = 0
    for doc in (0, 3, 7):
        rows = np.flatnonzero(tok["doc"].to_numpy() == doc)
        for layer in m.layers:
            masks = probe_store.masks(layer)[rows]              # [tokens, d_ffn]
            j = api(c, f"/s/{p}/probe?text={texts[doc]}&layer={layer}")
            assert [t["token_id"] for t in j["tokens"]] == tok["token_id"].to_numpy()[rows].tolist()
            assert [t["n_fired"] for t in j["tokens"]] == masks.sum(axis=1).tolist()
            nn = int(np.argmax(masks.sum(axis=0) % len(rows)))   # a neuron that fires on some tokens only
            j = api(c, f"/s/{p}/probe?text={texts[doc]}&layer={layer}&neuron={nn}")
            assert [t["fired"] for t in j["tokens"]] == masks[:, nn].tolist()
            checked += 1
    assert checked == 3 * len(m.layers)
    long = " ".join(texts) * 3
    j = api(c, f"/s/{p}/probe?text={long}&layer={m.layers[0]}&neuron=0")
    assert j["cut"] and j["n_tokens"] == SETTINGS.probe_max_tokens
    assert "expected some text" in api(c, f"/s/{p}/probe?text=&layer=0", 400)["error"]
    assert "layer 9: not recorded" in api(c, f"/s/{p}/probe?text=a&layer=9", 404)["error"]


@pytest.mark.slow
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_serve_command_prints_its_url_and_warns_off_loopback(known_store, host):
    import json
    import subprocess
    import sys
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "actdb.cli", "serve", str(known_store.path), "--host", host,
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        if host != "127.0.0.1":
            assert first.startswith(f"warning: listening on {host}, not loopback") and "SQL console" in first
            first = proc.stdout.readline()
        m = re.match(r"actdb serve: (http://[\d.]+:(\d+)/) ", first)
        assert m, first + proc.stderr.read() if proc.poll() is not None else first
        with urllib.request.urlopen(f"http://127.0.0.1:{m.group(2)}/api/stores", timeout=30) as r:
            assert json.load(r)["stores"][0]["n_tokens"] == known_store.manifest.n_tokens
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    r = subprocess.run([sys.executable, "-m", "actdb.cli", "serve", str(known_store.path), "--port", "70000"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--port: expected 0..65535, got 70000" in r.stderr


def test_the_explorer_document_lists_every_route(served):
    """Each route of the app is in the explorer document's route table (HTML paths; /api twins by rule)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "docs" / "explorer.md").read_text()
    c, _ = served
    names = {"{store}": "STORE", "{layer}": "L", "{neuron}": "N", "{doc}": "D", "{name}": "NAME"}
    paths = [r.path for r in c.app.app.routes if r.path != "/static"]
    assert len(paths) > 10
    for path in paths:
        for k, v in names.items():
            path = path.replace(k, v)
        if path.startswith("/api/") and "/api" + path[4:] in readme:
            continue
        html_twin = path[4:] if path.startswith("/api/s/") else path
        assert f"`{path}" in readme or f"`{html_twin}" in readme, path


def test_probe_fires_as_the_store_recorded_under_magnitude_rules(tmp_path, model_dirs):
    """The probe reads the handle's fire rule: under top:Q and abs>T it compares |h| (the output
    projection's input) with the layer's recorded threshold, and its fires equal that rule's masks."""
    import actdb
    from serve_stores import make_probe_store, probe_corpus

    corpus = probe_corpus(tmp_path / "corpus.jsonl")
    path = make_probe_store(tmp_path / "store", model_dirs("llama"), corpus, ("sign", "top:0.9", "abs>0.05")).path
    texts = corpus_texts(corpus)
    for rule in ("top:0.9", "abs>0.05"):
        st = actdb.open(path, rule=rule)
        (name,) = store_names([st])
        tok = st.tokens().sort("row")
        with TestClient(create_app([st], SETTINGS), base_url=BASE) as c:
            for doc in (0, 5):
                rows = np.flatnonzero(tok["doc"].to_numpy() == doc)
                for layer in st.manifest.layers:
                    masks = st.masks(layer)[rows]                       # [tokens, d_ffn] of this rule
                    r = c.get(f"/api/s/{name}/probe", params={"text": texts[doc], "layer": layer})
                    assert r.status_code == 200, r.text
                    assert [t["n_fired"] for t in r.json()["tokens"]] == masks.sum(axis=1).tolist(), (rule, layer)
        assert 0 < st.masks(st.manifest.layers[0]).mean() < 0.5, rule   # the rule is not the sign's


def test_every_fire_rule_is_served_and_linked(tmp_path, model_dirs):
    """A store recorded under several fire rules is served once per rule (what `actdb serve`
    opens): each name reads its own rule's masks, says that rule in words, and links to the
    same store and neuron under the other rule."""
    import actdb
    from actdb.serve.app import open_every_rule
    from serve_stores import make_probe_store, probe_corpus

    path = make_probe_store(tmp_path / "store", model_dirs("llama"), probe_corpus(tmp_path / "corpus.jsonl"),
                            ("sign", "top:0.9")).path
    stores = open_every_rule([str(path)])
    names = store_names(stores)
    assert [s.rule for s in stores] == ["sign", "top:0.9"] and names == ["store", "store-top-0.9"]
    m = stores[0].manifest
    layer = m.layers[0]
    with TestClient(create_app(stores, SETTINGS), base_url=BASE) as c:
        listed = api(c, "/stores")["stores"]
        assert [(s["name"], s["rule"], s["fire_rule"]) for s in listed] == [
            (names[0], "sign", m.fire_rule), (names[1], "top:0.9", m.fire_rules[1].definition)]
        fires = {}
        for name, rule in zip(names, ("sign", "top:0.9")):
            want = actdb.open(path, rule=rule).masks(layer).sum(axis=0)      # [d_ffn] fires of that rule
            got = [api(c, f"/s/{name}/neuron/{layer}/{n}")["fires"] for n in range(4)]
            assert got == want[:4].tolist(), rule
            fires[rule] = got
        assert fires["sign"] != fires["top:0.9"]                               # the pages do differ by rule
        d = api(c, f"/s/{names[1]}/neuron/{layer}/2")
        assert d["other_rules"] == [{"rule": "sign", "store": names[0]}] and "|h|" in d["fire_rule"]
        assert f'href="/s/{names[1]}/neuron/{layer}/2"' in get(c, f"/s/{names[0]}/neuron/{layer}/2").text
        assert f'href="/s/{names[0]}"' in get(c, f"/s/{names[1]}").text
