"""Index and views against direct numpy computations from the unpacked masks.

Store `known`: hand-built masks with known answers (dead neuron, one-token detector,
positions-0..9 neuron, oscillatory neuron, trigram detector...), several mask blocks so
n-grams straddle block boundaries, a BOS prefix and a last sequence shorter than seq_len.
Store `real`: a tiny seeded OPT model ingested for real. (Both made once per session by
conftest.py; `known` is tests/stores.py's, the numpy reference tests/views_reference.py.)
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

import actdb
from actdb.index.build import build_index, read_index_info
from stores import BOS, D, LAYERS, make_known, same_index
from tiers import slow_except
from views_reference import Ref, gram_ids


@pytest.mark.parametrize("which", ["known", "real"])
def test_neurons_layer_stats_domains(which, request):
    st, ref = request.getfixturevalue(f"{which}_store"), request.getfixturevalue(f"{which}_ref")
    df = st.sql("SELECT layer, neuron, fires, freq, dead FROM neurons ORDER BY layer, neuron")
    for l in ref.layers:
        sub = df.filter(df["layer"] == l)
        f = ref.fires(l)
        assert sub["fires"].to_list() == f.tolist()
        assert np.allclose(sub["freq"].to_numpy(), f / ref.n)
        assert sub["dead"].to_list() == (f == 0).tolist()
    ls = st.sql("SELECT * FROM layer_stats ORDER BY layer")
    for row in ls.iter_rows(named=True):
        f = ref.fires(row["layer"])
        assert row["n_neurons"] == ref.d and row["n_dead"] == int((f == 0).sum())
        assert row["dead_frac"] == pytest.approx((f == 0).mean())
        assert row["mean_freq_alive"] == pytest.approx((f[f > 0] / ref.n).mean())
    nd = st.sql("SELECT layer, neuron, domain, fires FROM neuron_domains")
    got = {(r["layer"], r["neuron"], r["domain"]): r["fires"] for r in nd.iter_rows(named=True)}
    want = {}
    for l in ref.layers:
        for dom in set(ref.dom):
            f = ref.masks[l][ref.dom == dom].sum(axis=0)
            want.update({(l, nn, dom): int(f[nn]) for nn in range(ref.d) if f[nn]})
    assert got == want


def test_known_answers(known_store):
    st = known_store
    dead = st.sql("SELECT layer, neuron FROM neurons WHERE dead ORDER BY ALL")
    assert (0, 0) in dead.rows() and (1, 0) in dead.rows()
    td = st.sql("SELECT layer, neuron, token_ids, tokens FROM token_detectors ORDER BY ALL")
    rows = {(r[0], r[1]): (r[2], r[3]) for r in td.rows()}
    assert rows[(0, 1)] == ([5], ["w5"]) and rows[(1, 1)] == ([6], ["w6"])
    assert sorted(rows[(0, 4)][0]) == [7, 8]
    assert (0, 5) not in rows                         # fires on half of token 9's occurrences only
    tri = st.sql("SELECT ngrams FROM trigram_detectors WHERE layer = 0 AND neuron = 6").rows()
    assert tri == [([gram_ids(st, (3, 4, 5))],)]
    pn = {(r[0], r[1]): r[2:] for r in st.sql("SELECT layer, neuron, pattern, strong FROM positional_neurons").rows()}
    assert pn[(0, 2)] == ("both extremes", True)
    assert pn[(0, 3)] == ("oscillatory", True)
    assert pn[(0, 7)] == ("both extremes", False)     # reaches 0 exactly, 1 only approximately
    assert (0, 1) not in pn
    rg = st.sql("SELECT layer, neuron, pos_start, pos_end FROM oscillatory_ranges WHERE layer = 0 ORDER BY ALL").rows()
    assert rg == [(0, 3, 0, 3), (0, 3, 8, 11)]
    cov = dict(((r[0], r[1], r[2]), r[3]) for r in st.sql("SELECT layer, neuron, n, n_covering FROM coverage").rows())
    assert cov[(0, 1, 1)] == 1 and cov[(0, 6, 3)] == 1
    assert (0, 0, 1) not in cov                        # dead: no coverage row


@pytest.mark.parametrize("which", slow_except(["known", "real", "noprefix"], "known"))
def test_neuron_tokens_and_ngrams(which, request):
    """The n-gram tables hold each neuron's top_k n-grams (fires desc, then id) with exact totals."""
    st, ref = request.getfixturevalue(f"{which}_store"), request.getfixturevalue(f"{which}_ref")
    K = st.sql("SELECT top_k FROM index_info").item()
    assert K == read_index_info(st.path).config.top_k == 64
    for k, view, col in ((1, "neuron_tokens", "token_id"), (2, "neuron_bigrams", "ngram"), (3, "neuron_trigrams", "ngram")):
        df = st.sql(f"SELECT layer, neuron, {col}, fires, rank, cum, total FROM {view} ORDER BY layer, neuron, rank")
        got = {}
        for r in df.rows():
            got.setdefault((r[0], r[1]), []).append(r[2:])
        want = {}
        for l in (ref.layers if k == 1 else ref.ngram_layers):
            for nn in range(ref.d):
                top = ref.top(l, nn, k, K, st)
                if top:
                    total = sum(ref.counts(l, nn, k).values())
                    cum = np.cumsum([c for _, c in top]).tolist()
                    want[(l, nn)] = [(g, c, i + 1, cu, total) for i, ((g, c), cu) in enumerate(zip(top, cum))]
        assert got == want, view
    cnt = dict(st.sql("SELECT token_id, count FROM token_counts").rows())
    assert cnt == {g[0]: c for g, c in ref.gram_count[1].items()}
    cnt3 = dict(st.sql("SELECT ngram, count FROM trigram_counts").rows())
    assert cnt3 == {gram_ids(st, g): c for g, c in ref.gram_count[3].items()}


@pytest.mark.parametrize("which", ["known", "real", "noprefix"])
@pytest.mark.parametrize("p", [0.95, 0.5])
def test_coverage(which, p, request):
    st, ref = request.getfixturevalue(f"{which}_store"), request.getfixturevalue(f"{which}_ref")
    got = {(r[0], r[1], r[2]): r[3] for r in st.sql("SELECT layer, neuron, n, n_covering FROM coverage_at(p := $p)",
                                                    {"p": p}).rows()}
    want = {}
    for k in (1, 2, 3):
        for l in (ref.layers if k == 1 else ref.ngram_layers):
            for nn in range(ref.d):
                c = ref.coverage(l, nn, k, p)
                if c is not None:   # beyond top_k only p = 0.95 is exact; other p say NULL ("more than K")
                    want[(l, nn, k)] = c if p == 0.95 or c <= 64 else None
    assert got == want


@pytest.mark.parametrize("which", ["known", "real", "noprefix"])
def test_detectors(which, request):
    st, ref = request.getfixturevalue(f"{which}_store"), request.getfixturevalue(f"{which}_ref")
    for max_cov in (5, 12):
        got = {(r[0], r[1]): set(r[2]) for r in st.sql(
            "SELECT layer, neuron, token_ids FROM token_detectors_at(max_cov := $m)", {"m": max_cov}).rows()}
        want = {}
        for l in ref.layers:
            for nn in range(ref.d):
                d = ref.detector(l, nn, 1, max_cov)
                if d is not None:
                    want[(l, nn)] = {g[0] for g in d}
        assert got == want
    got = {(r[0], r[1]): set(r[2]) for r in st.sql("SELECT layer, neuron, ngrams FROM trigram_detectors").rows()}
    want = {}
    for l in ref.ngram_layers:
        for nn in range(ref.d):
            d = ref.detector(l, nn, 3, 50)
            if d is not None:
                want[(l, nn)] = {gram_ids(st, g) for g in d}
    assert got == want


@pytest.mark.parametrize("which", ["known", "real", "noprefix"])
def test_ngram_fires_same_for_every_n(which, request):
    """Coverage for n = 1, 2, 3 has one denominator, the neuron's fires on every row
    but the BOS position (all rows without a prefix token), and the n-gram counts sum to those rows."""
    st, ref = request.getfixturevalue(f"{which}_store"), request.getfixturevalue(f"{which}_ref")
    counted = ref.pos >= (1 if st.manifest.prefix_tokens else 0)
    fires = {}
    for l, nn, n, f in st.sql("SELECT layer, neuron, n, fires FROM coverage").rows():
        fires.setdefault((l, nn), {})[n] = f
    assert fires
    for l in ref.ngram_layers:
        want = ref.masks[l][counted].sum(axis=0)
        for nn in range(ref.d):
            assert fires.get((l, nn), {}) == ({k: int(want[nn]) for k in (1, 2, 3)} if want[nn] else {}), (l, nn)
    for view in ("token_counts", "bigram_counts", "trigram_counts"):
        assert st.sql(f"SELECT sum(count) FROM {view}").item() == int(counted.sum()), view


def test_pad_slots(known_store, noprefix_store):
    """A slot before the sequence start decodes to NULL, and only there: with BOS the bigram ending
    at position 1 is (BOS, x_1) and the trigram (PAD, BOS, x_1); without, position 0 gives
    (PAD, x_0) and (PAD, PAD, x_0), position 1 (PAD, x_0, x_1)."""
    def at(st, n, pad_slots):
        nulls = " AND ".join(f"token_ids[{i + 1}] IS {'' if i < pad_slots else 'NOT '}NULL" for i in range(n))
        view = "bigram_counts" if n == 2 else "trigram_counts"
        return st.sql(f"SELECT token_ids, count FROM {view} WHERE {nulls}").rows()

    def tokens(st, q):
        return st.sql(f"SELECT seq, pos, token_id FROM tokens WHERE {q} ORDER BY row").rows()

    st = known_store
    n1 = len(tokens(st, "pos = 1"))
    assert at(st, 2, 1) == [] and at(st, 3, 2) == []            # position 0 (BOS) ends no n-gram
    tri = at(st, 3, 1)
    assert sum(c for _, c in tri) == n1 and {g[1] for g, _ in tri} == {BOS}
    bos_first = st.sql(f"SELECT sum(count) FROM bigram_counts WHERE token_ids[1] = {BOS}").item()
    assert bos_first == n1                                    # (BOS, x_1), not (PAD, x_1)
    st = noprefix_store
    x0 = Counter(t for _, _, t in tokens(st, "pos = 0"))
    assert Counter({g[1]: c for g, c in at(st, 2, 1)}) == x0
    assert Counter({g[2]: c for g, c in at(st, 3, 2)}) == x0
    assert sum(c for _, c in at(st, 3, 1)) == len(tokens(st, "pos = 1"))
    assert st.sql("SELECT count(*) FROM neuron_trigrams WHERE token_ids[1] IS NULL").item() > 0
    cfg = read_index_info(st.path).config
    assert cfg.ngram_pad == cfg.vocab_base - 1 == 12   # one past the 12 token ids


def test_old_index_version_is_stale(tmp_path):
    """An index of version 2 or 3 (n-grams without PAD) is refused by the views and reported by
    check with the rebuild command; `actdb index` rebuilds it."""
    from actdb.store.audit import check_store
    from actdb.store.index_info import INDEX_VERSION

    p = make_known(tmp_path / "s", prefix=False)
    build_index(p, progress=False)
    info_p = p / "index" / "index.json"
    info = json.loads(info_p.read_text())
    info["config"]["version"] = 2
    del info["config"]["ngram_pad"]
    del info["checksum"]   # as an older actdb wrote it
    info_p.write_text(json.dumps(info))
    with pytest.raises(actdb.StoreError, match=r"version: expected 5 or 6, got 2.*--force"):
        actdb.open(p).sql("SELECT count(*) FROM coverage")
    problems = check_store(p).problems
    assert any("version: expected 5 or 6, got 2" in x and "--force" in x for x in problems), problems
    build_index(p, progress=False)
    assert read_index_info(p).config.version == INDEX_VERSION
    assert actdb.open(p).sql("SELECT count(*) FROM coverage").item() > 0
    assert not check_store(p).problems


@pytest.mark.parametrize("which", ["known", "real"])
def test_positions_and_positional(which, request):
    st, ref = request.getfixturevalue(f"{which}_store"), request.getfixturevalue(f"{which}_ref")
    df = st.sql("SELECT layer, neuron, pos, fires, fires_full FROM neuron_positions")
    got = {(r[0], r[1], r[2]): (r[3], r[4]) for r in df.rows()}
    want = {}
    for l in ref.layers:
        m = ref.masks[l]
        for q in range(ref.T):
            a = m[ref.pos == q].sum(axis=0)
            b = m[(ref.pos == q) & ref.full].sum(axis=0)
            want.update({(l, nn, q): (int(a[nn]), int(b[nn])) for nn in range(ref.d) if a[nn]})
    assert got == want
    for mi_min, sw in ((0.05, 3), (0.01, 2)):
        pn = st.sql("SELECT layer, neuron, mi, pattern, strong FROM positional_neurons_at(mi_min := $a, min_switches := $b)",
                    {"a": mi_min, "b": sw})
        got = {(r[0], r[1]): r[2:] for r in pn.rows()}
        want = {(l, nn): v for l in ref.layers for nn, v in ref.positional(l, mi_min, sw).items()}
        assert set(got) == set(want)
        for key, (mi, pat, strong) in want.items():
            assert got[key][0] == pytest.approx(mi, abs=1e-12)
            assert got[key][1:] == (pat, strong), key


def test_tokens_view(known_store):
    st = known_store
    df = st.sql("SELECT row, seq, pos, token_id, token, domain FROM tokens ORDER BY row")
    t = st.tokens().sort("row")
    assert df["token_id"].to_list() == t["token_id"].to_list()
    assert df["token"].to_list() == [f"w{i}" for i in t["token_id"].to_list()]


def test_index_json_lists_every_file(known_store):
    """index.json records every file of the index with its byte size and sha256."""
    import hashlib

    root = known_store.path / "index"
    files = read_index_info(known_store.path).files
    on_disk = {str(f.relative_to(root)) for f in root.rglob("*") if f.is_file() and f.name != "index.json"}
    assert set(files) == on_disk and "vocab_projection.parquet" in files and "coverage.parquet" in files
    assert any(k.startswith("capture/") for k in files)
    for name, d in files.items():
        data = (root / name).read_bytes()
        assert d == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name


@pytest.mark.slow
def test_index_resume_equals_fresh(tmp_path, monkeypatch):
    """A build killed after some units resumes, counts only the missing units, and gives the same index."""
    import actdb.index.build as ix

    a = make_known(tmp_path / "a")
    b = make_known(tmp_path / "b")
    build_index(a, progress=False, neuron_chunk=4)
    real_count = ix.count_unit
    calls = []

    def dying(arr, tok, n0, *rest):
        calls.append(n0)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_count(arr, tok, n0, *rest)

    monkeypatch.setattr(ix, "count_unit", dying)
    with pytest.raises(KeyboardInterrupt):
        build_index(b, progress=False, neuron_chunk=4, workers=1)
    assert read_index_info(b) is None
    state = json.loads((b / "index" / "_state.json").read_text())
    assert len(state["done"]) == 3 and state["chunks"] == {"False": 4, "True": 4}
    calls.clear()
    monkeypatch.setattr(ix, "count_unit", lambda *args: calls.append(args[2]) or real_count(*args))
    # a different chunk bound on resume keeps the recorded units
    build_index(b, progress=False, neuron_chunk=D)
    assert len(calls) == len(LAYERS) * D // 4 - 3
    assert not (b / "index" / "_state.json").exists() and not (b / "index" / "_parts").exists()
    same_index(a, b)


@pytest.mark.slow
def test_index_threads_equal_one_thread_and_resume(tmp_path, monkeypatch):
    """Units counted in 3 threads give the same files as one thread; an error in one unit stops
    the build with the finished units recorded, and the resumed build gives the same index."""
    import actdb.index.build as ix

    a, b, c = (make_known(tmp_path / n) for n in "abc")
    build_index(a, progress=False, neuron_chunk=4, workers=1)
    build_index(b, progress=False, neuron_chunk=4, workers=3)
    same_index(a, b)
    real_count = ix.count_unit

    def failing(arr, tok, n0, *rest):
        if n0 == 8:
            raise OSError("disk gone")
        return real_count(arr, tok, n0, *rest)

    monkeypatch.setattr(ix, "count_unit", failing)
    with pytest.raises(actdb.StoreError, match="cannot write the index: disk gone"):  # one line, not internal
        build_index(c, progress=False, neuron_chunk=4, workers=3)
    state = json.loads((c / "index" / "_state.json").read_text())
    assert read_index_info(c) is None and all(not n.endswith("n0000008") for n in state["done"])
    assert sorted(p.name for p in (c / "index" / "_parts").iterdir()) == state["done"]   # no half-written unit
    monkeypatch.setattr(ix, "count_unit", real_count)
    build_index(c, progress=False, workers=2)
    same_index(a, c)


def test_units_are_recorded_as_they_end():
    """Each finished unit is recorded while the others still run (a killed build resumes from
    them, and the progress bar moves), not once all have ended."""
    import threading

    from actdb.index.build import _run_units

    first_recorded = threading.Event()
    got = []

    def run(u):
        if u == 1:
            assert first_recorded.wait(20), "unit 0 ended but was not recorded while unit 1 ran"
        return u

    def finished(name):
        got.append(name)
        if name == 0:
            first_recorded.set()

    _run_units(run, [0, 1], 2, finished)
    assert got == [0, 1]


@pytest.mark.slow
def test_index_memory_budget_sets_chunk(tmp_path, monkeypatch):
    """A tiny memory budget counts one neuron per unit and gives the same index."""
    import actdb.index.build as ix

    a = make_known(tmp_path / "a")
    b = make_known(tmp_path / "b")
    build_index(a, progress=False)
    real_count = ix.count_unit
    widths = []
    monkeypatch.setattr(ix, "count_unit", lambda *args: widths.append(args[3] - args[2]) or real_count(*args))
    build_index(b, progress=False, memory_mb=1e-6)
    assert widths == [1] * (len(LAYERS) * D)
    same_index(a, b)
    assert ix.chunk_size(1000, 3072, 512, 512, None) == 3072 - 3072 % 512   # whole Zarr chunks when they fit
    assert ix.chunk_size(10**6, 3072, 512, 512, None) == 512 * 2**20 // (24 * 10**6)
    assert ix.chunk_size(10**6, 3072, 512, 512, None, cell=4) == 512 * 2**20 // (4 * 10**6)


def test_a_unit_holds_what_the_budget_counts_and_maps_nothing(tmp_path):
    """The budget's bytes per cell are what counting a unit allocates (the compiled kernel: its int32
    counts; a budget of 24 B per cell made n-gram units six times narrower than the memory allowed,
    so at 20M tokens every unit of one neuron reread the whole layer), and the token arrays are read
    block by block, never mapped (mapped pages of arrays read whole by every unit counted as the
    index's memory, growing with the tokens)."""
    import tracemalloc

    from actdb.index import count
    from actdb.index.tokens import TokenArrays
    from actdb.store.index_info import read_index_info

    p = make_known(tmp_path / "s")
    build_index(p, progress=False)
    st = actdb.open(p)
    m = st.manifest
    tok = TokenArrays(st, m, read_index_info(p).config.vocab_base, tmp_path / "tmp")
    cell = count.cell_bytes("cpu", tok.n)
    assert cell == count.COMPILED_CELL_BYTES and count.compiled() is not None
    ch = m.d_ffn
    count.count_unit(st.packed(LAYERS[0]), tok, 0, 1, True, m.block_tokens)   # loads the kernel first
    tracemalloc.start()
    try:
        counts = count.count_unit(st.packed(LAYERS[0]), tok, 0, ch, True, m.block_tokens)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    cells = ch * tok.width(True)
    assert counts.shape == (ch, tok.width(True)) and counts.nbytes == cells * cell
    # the counts, then per block its words and column ids (bounded by the block, not the tokens)
    block = m.block_tokens * (ch // 8 + 8 + 6 * 8) + 64 * 1024
    assert peak <= cells * cell + block, (peak, cells * cell)
    with open("/proc/self/maps") as f:
        mapped = [line for line in f if str(tmp_path / "tmp") in line]
    assert not mapped, mapped
    np.testing.assert_array_equal(tok.column("token"), np.concatenate(
        [tok.block(("token",), s0, min(tok.n, s0 + 7))[0] for s0 in range(0, tok.n, 7)]))
    tok.close()


def test_index_top_k_truncation(tmp_path):
    """top_k = 3 on a store whose neurons fire on many more n-grams: the n-gram tables keep
    exactly 3 rows per such neuron, coverage and detectors at the paper's thresholds stay
    exact, and coverage_at(p) at other p is exact up to K and NULL beyond."""
    K = 3
    p = make_known(tmp_path / "s")
    build_index(p, progress=False, top_k=K)
    st = actdb.open(p)
    ref = Ref(st)
    assert st.sql("SELECT top_k FROM index_info").item() == K
    n_trunc = 0
    for k, view in ((1, "neuron_tokens"), (3, "neuron_trigrams")):
        rows = dict(((r[0], r[1]), r[2]) for r in st.sql(f"SELECT layer, neuron, count(*) FROM {view} GROUP BY ALL").rows())
        for l in (ref.layers if k == 1 else ref.ngram_layers):
            for nn in range(ref.d):
                nd = len(ref.counts(l, nn, k))
                assert rows.get((l, nn), 0) == min(nd, K)
                n_trunc += nd > K
    assert n_trunc > 10
    exact = {(r[0], r[1], r[2]): r[3:] for r in st.sql("SELECT layer, neuron, n, n_covering, n_distinct FROM coverage").rows()}
    for q in (0.5, 0.95, 0.99):
        got = {(r[0], r[1], r[2]): r[3] for r in st.sql("SELECT layer, neuron, n, n_covering FROM coverage_at(p := $p)",
                                                        {"p": q}).rows()}
        n_null = 0
        for k in (1, 2, 3):
            for l in (ref.layers if k == 1 else ref.ngram_layers):
                for nn in range(ref.d):
                    c = ref.coverage(l, nn, k, q)
                    if c is None:
                        assert (l, nn, k) not in got
                        continue
                    want = c if q == 0.95 or c <= K else None
                    n_null += want is None
                    assert got[(l, nn, k)] == want, (q, l, nn, k)
                    assert exact[(l, nn, k)] == (ref.coverage(l, nn, k), len(ref.counts(l, nn, k)))
        assert n_null > 0 if q != 0.95 else n_null == 0
    det = {(r[0], r[1]): set(r[2]) for r in st.sql("SELECT layer, neuron, token_ids FROM token_detectors").rows()}
    want = {(l, nn): {g[0] for g in d} for l in ref.layers for nn in range(ref.d)
            if (d := ref.detector(l, nn, 1, 5)) is not None}
    assert det == want and len(want) >= 4
    tri = {(r[0], r[1]): set(r[2]) for r in st.sql("SELECT layer, neuron, ngrams FROM trigram_detectors").rows()}
    want = {(l, nn): {gram_ids(st, g) for g in d} for l in ref.ngram_layers for nn in range(ref.d)
            if (d := ref.detector(l, nn, 3, 50)) is not None}
    assert tri == want and len(want) >= 1


def test_index_layers_option_and_errors(tmp_path):
    p = make_known(tmp_path / "s")
    build_index(p, layers=[2], progress=False)
    st = actdb.open(p)
    assert st.sql("SELECT DISTINCT layer FROM neuron_trigrams").rows() == [(2,)]
    with pytest.raises(actdb.InputError):
        build_index(p, layers=[3], progress=False)
    with pytest.raises(actdb.StoreError):
        build_index(tmp_path / "nothing", progress=False)
    with pytest.raises(actdb.InputError):
        build_index(p, top_k=0, progress=False)
    from click.testing import CliRunner

    from actdb.cli import main

    r = CliRunner().invoke(main, ["index", str(p), "--top-k", "2", "--memory-mb", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    fresh = actdb.open(p)
    assert fresh.sql("SELECT top_k FROM index_info").item() == 2
    assert fresh.sql("SELECT max(rank) FROM neuron_tokens").item() == 2


@pytest.mark.parametrize("merge_at", [1, 50, 1 << 20])
def test_distinct_counter_equals_unique_of_everything(merge_at, monkeypatch):
    """Distinct n-gram ids and counts, fed part by part and merged at any point, equal np.unique
    of all keys at once."""
    import actdb.index.tokens as ix

    monkeypatch.setattr(ix.DistinctCounter, "MERGE_AT", merge_at)
    rng = np.random.default_rng(merge_at)
    parts = [rng.integers(0, 300, size=rng.integers(0, 120)) * 10**9 for _ in range(25)]
    c = ix.DistinctCounter()
    for p in parts:
        c.add(p)
    keys, counts = c.result()
    want_k, want_c = np.unique(np.concatenate(parts), return_counts=True)
    np.testing.assert_array_equal(keys, want_k)
    np.testing.assert_array_equal(counts, want_c)
    assert keys.dtype == np.int64 and counts.dtype == np.int64
