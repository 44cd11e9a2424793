"""Co-firing (actdb/cofire) against a numpy brute force: the masks as bool matrices, every
n_both from one integer matrix product, the measures written out again. Exact counts, every
measure with its NULL cases, token subsets, two fire rules, the table function, the index table,
the cross-store match and its refusal."""
import csv
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import actdb
from actdb.errors import InputError
from actdb import cofire
from actdb.jit import compiled
from actdb.store.synthetic import write_store
from cofire_reference import brute, top

ACTDB = str(Path(sys.executable).with_name("actdb"))
LAYERS, D, N, T = (0, 1, 3), 70, 1003, 40   # 1003 rows: not a multiple of 8 or 64


def _masks(seed: int = 0) -> np.ndarray:
    """bool [layers, D, N] with structure: copies, complements, subsets, a dead neuron, an
    always-firing one, positional ones, and ties (equal rows)."""
    rng = np.random.default_rng(seed)
    m = rng.random((len(LAYERS), D, N)) < rng.uniform(0.02, 0.6, (len(LAYERS), D, 1))
    pos = np.arange(N) % T
    m[0, 1] = m[0, 0]                       # a copy: phi 1
    m[0, 2] = ~m[0, 0]                      # a complement: phi -1
    m[1, 5] = m[0, 0] & (rng.random(N) < 0.5)   # a subset across layers
    m[2, 7] = m[0, 0]                       # another copy, in layer 3: a tie with 0:1
    m[0, 3] = False                         # dead
    m[1, 3] = True                          # fires on every row: phi NULL
    m[2, 10] = pos < 10                     # positional (layer 3)
    m[2, 11] = (pos >= 10) & (pos < 20)
    return m


def _store(path: Path, m: np.ndarray, block: int = 200) -> Path:
    ids = np.arange(N) % 50
    lens = [T] * (N // T) + [N % T]
    doms = ["code" if i % 3 else "prose" for i in range(len(lens))]
    return write_store(path, ids, lens, lambda l, a, b: m[LAYERS.index(l), :, a:b], layers=LAYERS, n_layers=4,
                       d_ffn=D, seq_len=T, vocab=[f"t{i}" for i in range(50)], domains=doms, block_tokens=block,
                       neuron_chunk=32)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from actdb.index.build import build_index

    m = _masks()
    root = _store(tmp_path_factory.mktemp("cofire") / "store", m)
    build_index(root, progress=False)   # the views, without the co-firing table
    return root, m


def _rows(subset: cofire.TokenSubset) -> np.ndarray:
    lens = [T] * (N // T) + [N % T]
    doms = np.repeat(["code" if i % 3 else "prose" for i in range(len(lens))], lens)
    pos = np.arange(N) % T
    keep = np.ones(N, bool)
    if subset.domain is not None:
        keep &= doms == subset.domain
    if subset.pos_min is not None:
        keep &= pos >= subset.pos_min
    if subset.pos_max is not None:
        keep &= pos <= subset.pos_max
    return keep


def _flat(m: np.ndarray, layers=LAYERS) -> np.ndarray:
    return np.concatenate([m[LAYERS.index(l)] for l in layers])


def _gid(layer: int, neuron: int, layers=LAYERS) -> int:
    return layers.index(layer) * D + neuron


@pytest.mark.parametrize("by", cofire.MEASURES)
@pytest.mark.parametrize("subset", [cofire.TokenSubset(), cofire.TokenSubset(domain="code"),
                                    cofire.TokenSubset(pos_min=5, pos_max=24),
                                    cofire.TokenSubset(domain="prose", pos_min=12)])
def test_one_against_all_equals_brute_force(synth, by, subset):
    root, m = synth
    st = actdb.open(root)
    keep = _rows(subset)
    n, f, both, jac, p, phi = brute(_flat(m)[:, keep])
    score = {"phi": phi, "jaccard": jac, "p": p}[by]
    for layer, neuron in ((0, 0), (1, 5), (3, 10), (0, 3), (1, 3), (3, 69)):
        g = _gid(layer, neuron)
        got = st.neighbours(layer, neuron, k=12, by=by, **dataclasses.asdict(subset))
        want = top(score[g], g, 12)
        assert [(x.other_layer, x.other_neuron) for x in got] == [(LAYERS[i // D], i % D) for i in want]
        for r, (x, i) in enumerate(zip(got, want), 1):
            assert (x.n_a, x.n_b, x.n_both, x.n_tokens, x.rank) == (f[g], f[i], both[g, i], n, r)
            for name, ref in (("jaccard", jac), ("p_other_given", p), ("phi", phi)):
                v = getattr(x, name)
                assert (v is None) == bool(np.isnan(ref[g, i])) and (v is None or v == ref[g, i])


def test_null_cases(synth):
    root, m = synth
    st = actdb.open(root)
    assert st.neighbours(0, 3, by="phi") == [] and st.neighbours(0, 3, by="p") == []   # dead: n_a = 0
    assert st.neighbours(1, 3, by="phi") == []                                        # fires everywhere
    j = st.neighbours(1, 3, by="jaccard", k=3)
    assert j and all(x.phi is None and x.p_other_given is not None for x in j)
    assert all((x.other_layer, x.other_neuron) != (0, 3) for x in st.neighbours(0, 0, k=500))   # a dead B: no phi
    copy = st.neighbours(0, 0, k=3)
    assert [(x.other_layer, x.other_neuron, x.phi) for x in copy[:2]] == [(0, 1, 1.0), (3, 7, 1.0)]   # a tie: lower first
    assert st.neighbours(0, 0, k=500)[-1].phi == -1.0 and st.neighbours(0, 0, k=500)[-1].other_neuron == 2
    # a subset where the neuron never fires: P(B | A) is NULL, so nothing ranks by it
    assert st.neighbours(3, 10, by="p", pos_min=30) == []


def test_layers_and_errors(synth):
    root, m = synth
    st = actdb.open(root)
    got = st.neighbours(0, 0, k=500, layers=[3])
    assert {x.other_layer for x in got} == {3} and len(got) == D
    for kwargs, msg in (({"by": "cosine"}, "by: expected one of phi, jaccard, p"), ({"k": 0}, "k: expected"),
                        ({"layers": [2]}, "layers: expected recorded layers"),
                        ({"domain": "poetry"}, "domain: expected one of ['code', 'prose']")):
        with pytest.raises(InputError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            st.neighbours(0, 0, **kwargs)
    with pytest.raises(InputError, match="neuron: expected 0..69, got 70"):
        st.neighbours(0, 70)
    with pytest.raises(InputError, match="pos_min..pos_max: expected pos_min <= pos_max"):
        cofire.TokenSubset(pos_min=5, pos_max=2)


def test_table_function_equals_python(synth):
    root, m = synth
    st = actdb.open(root)
    sql = st.sql("SELECT * FROM neighbours(1, 5, k := 7, by := 'jaccard', layers := [0, 3], domain := 'code', "
                 "pos_max := 30)")
    py = st.neighbours(1, 5, k=7, by="jaccard", layers=[0, 3], domain="code", pos_max=30)
    assert sql.columns == ["layer", "neuron", "other_layer", "other_neuron", "n_a", "n_b", "n_both", "n_tokens",
                           "jaccard", "p_other_given", "phi", "rank"]
    assert sql.rows() == [tuple(r.values()) for r in cofire.as_rows(py)]
    assert st.sql("SELECT count(*) FROM neighbours(0, 3)").item() == 0
    with pytest.raises(InputError, match="by: expected one of phi, jaccard, p, got 'x'"):
        st.sql("SELECT * FROM neighbours(0, 0, by := 'x')")


def _check_table(tab, m: np.ndarray, k: int) -> None:
    """The index table neuron_neighbours against the brute force, both scopes."""
    n, f, both, jac, p, phi = brute(_flat(m))
    rows = {}
    for r in tab.iter_rows(named=True):
        rows.setdefault((r["layer"], r["neuron"], r["scope"]), []).append(r)
    alive = [g for g in range(len(f)) if f[g] > 0]
    assert {(LAYERS[g // D], g % D) for g in alive} >= {(a, b) for a, b, _ in rows}
    for g in alive:
        for scope in cofire.SCOPES:
            if scope == "layer":
                s = np.full(len(f), np.nan)
                s[g // D * D:(g // D + 1) * D] = phi[g, g // D * D:(g // D + 1) * D]
            else:
                s = phi[g]
            want = top(s, g, k)
            got = rows.get((LAYERS[g // D], g % D, scope), [])
            assert [(r["other_layer"], r["other_neuron"]) for r in got] == [(LAYERS[i // D], i % D) for i in want]
            for r, i in zip(got, want):
                assert (r["n_a"], r["n_b"], r["n_both"], r["phi"]) == (f[g], f[i], both[g, i], phi[g, i])
                assert r["jaccard"] == jac[g, i] and r["p_other_given"] == p[g, i]
            assert [r["rank"] for r in got] == list(range(1, len(got) + 1))


@pytest.mark.parametrize("path", ["kernels", "numpy", "torch"])
def test_index_table_equals_brute_force(synth, tmp_path, path, monkeypatch):
    root, m = synth
    store = Path(shutil.copytree(root, tmp_path / "s"))
    if path == "numpy":
        monkeypatch.setenv("ACTDB_INDEX_JIT", "0")
    compiled.cache_clear()
    try:
        st = actdb.open(store)
        out = tmp_path / "nn.parquet"
        # memory_mb this small: tiles of 64 neurons, so off-diagonal tiles merge both ways
        cofire.build_neighbours(st, out, 6, tmp_path / "tmp", memory_mb=0.01, workers=2, torch_cpu=path == "torch")
    finally:
        compiled.cache_clear()
    import polars as pl

    _check_table(pl.read_parquet(out), m, 6)
    assert not (tmp_path / "tmp" / "cofire.bits").exists()


def test_index_view_and_record(synth, tmp_path):
    from actdb.index.build import build_index
    from actdb.store.index_info import read_index_info

    root, m = synth
    store = Path(shutil.copytree(root, tmp_path / "s"))
    with pytest.raises(InputError, match="neuron_neighbours: this store's index has no co-firing table"):
        actdb.open(store).sql("SELECT * FROM neuron_neighbours")
    build_index(store, neighbours=5, progress=False)
    info = read_index_info(store)
    assert info.config.neighbours == 5 and "neuron_neighbours.parquet" in info.files
    st = actdb.open(store)
    tab = st.sql("SELECT * FROM neuron_neighbours ORDER BY layer, neuron, scope, rank")
    assert tab.columns[:9] == ["layer", "neuron", "other_layer", "other_neuron", "n_both", "jaccard",
                               "p_other_given", "phi", "rank"]
    _check_table(tab, m, 5)
    # one call for a neuron's page: the index's lists, as the dataclasses neighbours() gives
    for scope in cofire.SCOPES:
        got = st.indexed_neighbours(1, 5, scope)
        want = st.neighbours(1, 5, k=5, layers=[1] if scope == "layer" else None)
        assert got == want
    assert actdb.open(root).indexed_neighbours(1, 5) is None
    # the index's record covers the table: a changed byte is refused
    p = store / "index" / "neuron_neighbours.parquet"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(actdb.StoreError, match="neuron_neighbours.parquet"):
        actdb.open(store).sql("SELECT count(*) FROM neuron_neighbours")


def test_two_rules_and_match(tiny_store, tmp_path):
    st = actdb.open(tiny_store)
    a, b = st.with_rule("sign"), st.with_rule("top:0.9")
    layers = st.manifest.layers
    xa = np.concatenate([a.masks(l).T for l in layers])
    xb = np.concatenate([b.masks(l).T for l in layers])
    d = st.manifest.d_ffn
    # the table function under each rule (the handle's, or rule :=)
    for h, x, rule in ((a, xa, None), (b, xb, "top:0.9")):
        n, f, both, jac, p, phi = brute(x)
        g = int(np.argmax(f > 0))
        got = st.sql(f"SELECT * FROM neighbours({layers[g // d]}, {g % d}, k := 5"
                     + (f", rule := '{rule}'" if rule else "") + ")")
        want = top(phi[g], g, 5)
        assert [(r[2], r[3], r[6]) for r in got.rows()] == [(layers[i // d], i % d, both[g, i]) for i in want]
    # each neuron of the sign rule against every neuron of top:0.9: its best match by phi
    got = cofire.match_stores(a, b, workers=2, memory_mb=0.01)
    x = np.concatenate([xa, xb])
    n, f, both, jac, p, phi = brute(x)
    D2 = len(xa)
    want = []
    for g in range(D2):
        t = top(np.r_[np.full(D2, np.nan), phi[g, D2:]], g, 1)
        if t:
            want.append((layers[g // d], g % d, layers[(t[0] - D2) // d], (t[0] - D2) % d, both[g, t[0]], phi[g, t[0]]))
    assert [(r.layer, r.neuron, r.other_layer, r.other_neuron, r.n_both, r.phi) for r in got] == want
    same = cofire.match_stores(a, b, same_layer=True)
    assert all(r.layer == r.other_layer for r in same) and len(same) == len(want)


def test_match_refuses_other_rows_and_cli(synth, tmp_path):
    root, m = synth
    other = np.roll(np.arange(N) % 50, 1)
    ids_root = write_store(tmp_path / "other", other, [T] * (N // T) + [N % T],
                           lambda l, a, b: m[LAYERS.index(l), :, a:b], layers=LAYERS, n_layers=4, d_ffn=D, seq_len=T,
                           vocab=[f"t{i}" for i in range(50)], block_tokens=200)
    with pytest.raises(InputError, match=r"token rows: expected the rows of .*, got another token_id at row 0"):
        cofire.match_stores(actdb.open(root), actdb.open(ids_root))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    out = tmp_path / "m.csv"
    r = subprocess.run([ACTDB, "match", str(root), str(root), "-o", str(out), "--same-layer"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    n, f, *_ = brute(_flat(m))
    assert len(rows) == sum(1 for g in range(len(f)) if 0 < f[g] < N)
    # a store against itself: each neuron's best match is a copy of it (phi 1), itself included
    assert all(float(r["phi"]) == 1.0 for r in rows)
    r = subprocess.run([ACTDB, "match", str(root), str(ids_root), "-o", str(out)], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 1 and "token rows: expected the rows of" in r.stderr and len(r.stderr.splitlines()) == 1
    r = subprocess.run([ACTDB, "match", str(root), str(root), "-o", str(root / "m.csv")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "inside the actdb store" in r.stderr and not (root / "m.csv").exists()


@pytest.mark.parametrize("a_rates, b_rates", [((0.001, 0.003), (0.001, 0.004)),          # every row sparse
                                               ((0.001, 0.003, 0.3, 0.5), (0.001, 0.004)),  # half sparse, half dense
                                               ((0.3, 0.4), (0.3, 0.4))])                   # b too dense for lists
def test_counting_paths_equal_numpy(a_rates, b_rates):
    """Each row of a tile by either kernel (sparse rows from their fires, dense ones by popcount of
    every word pair), on blocks whose width is no multiple of the kernels' word and row blocks."""
    rng = np.random.default_rng(1)

    def bits(n: int, w: int, rates: tuple) -> np.ndarray:
        halves = [rng.uniform(lo, hi, (n // (len(rates) // 2), 1)) for lo, hi in zip(rates[::2], rates[1::2])]
        p = np.concatenate(halves + [np.full((n - sum(len(h) for h in halves), 1), rates[-1])])
        return np.packbits(rng.random((n, w * 64)) < p, axis=1, bitorder="little").view("<u8")

    a, b = bits(131, 300, a_rates), bits(97, 300, b_rates)
    want = np.bitwise_count(a[:, None, :] & b[None, :, :]).sum(-1)
    for torch_cpu in (False, True):
        counter = cofire.counts._Counter("cpu", 2, torch_cpu)
        got = counter.zeros(*want.shape)
        counter.add(a, b, got)
        counter.add(a, b, got)
        assert (counter.result(got) == 2 * want).all()
        counter.close()


@pytest.mark.parametrize("path", ["kernels", "numpy"])
def test_counts_among_a_few_neurons_equal_brute_force(synth, path, monkeypatch):
    root, m = synth
    if path == "numpy":
        monkeypatch.setenv("ACTDB_INDEX_JIT", "0")
    compiled.cache_clear()
    try:
        ids = [11, 3, 10, 0, 7, 7, 69, 40]   # any order, a repeat, several neuron chunks
        st = actdb.open(root)
        n, fires, both = cofire.counts_among(st, 3, ids)
    finally:
        compiled.cache_clear()
    _, f, ref, *_ = brute(m[LAYERS.index(3)][ids])
    assert n == N and fires.tolist() == f.tolist() and both.tolist() == ref.tolist()
    # a few neurons' chunks, none kept: the handle's cache of whole layers stays empty (memory flat
    # in tokens for the team figure and page)
    cache = st.__dict__.get("_cofire_cache")
    assert cache is None or cache.used == 0
    with pytest.raises(InputError, match="neurons: expected 0..69, got 70"):
        cofire.counts_among(actdb.open(root), 3, [1, 70])
    with pytest.raises(InputError, match="layer: expected one of the recorded layers"):
        cofire.counts_among(actdb.open(root), 2, [1])
