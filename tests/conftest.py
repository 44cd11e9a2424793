import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

import actdb  # noqa: E402
from actdb.index.build import build_index  # noqa: E402
from stores import make_known  # noqa: E402
from tiny import make_corpus, make_model  # noqa: E402
from views_reference import Ref  # noqa: E402


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """family -> folder of a saved tiny seeded model (built once per session, on demand)."""
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            d = tmp_path_factory.mktemp(f"model_{family}")
            make_model(d, family, seed=1)
            cache[family] = d
        return cache[family]
    return get


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", n_docs=30, seed=3)


@pytest.fixture(scope="session")
def hostile_store(tmp_path_factory):
    """tests/serve_stores.py: a store whose vocabulary holds <script>alert(1)</script>."""
    from serve_stores import make_hostile

    return make_hostile(tmp_path_factory.mktemp("hostile") / "store")


@pytest.fixture(scope="session")
def probe_store(tmp_path_factory, model_dirs):
    """tests/serve_stores.py: a tiny LLaMA store the probe can load; .corpus is its corpus file."""
    from serve_stores import make_probe_store, probe_corpus

    corpus = probe_corpus(tmp_path_factory.mktemp("probe_corpus") / "corpus.jsonl")
    st = make_probe_store(tmp_path_factory.mktemp("probe") / "store", model_dirs("llama"), corpus)
    st.corpus = corpus
    return st


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, model_dirs, corpus_file) -> Path:
    """A complete store of the tiny OPT model under two fire rules (sign, top:0.9), several token
    parts and mask blocks, residual and FFN capture, projection weights and its index: every kind
    of file actdb writes. Made once; a test that changes it works on a copy (tiny_store_copy)."""
    out = tmp_path_factory.mktemp("tiny_store") / "store"
    actdb.ingest.run(actdb.IngestSettings(model=str(model_dirs("opt")), corpus=(str(corpus_file),), out=str(out),
                                          seq_len=24, block_tokens=64, fire_rule=("sign", "top:0.9"),
                                          capture="resid+ffn", progress=False))
    return out


@pytest.fixture
def tiny_store_copy(tiny_store, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_store, tmp_path / "store", symlinks=True))


# ---------------------------------------------------------------- the views' stores (tests/stores.py)

@pytest.fixture(scope="session")
def known_store(tmp_path_factory):
    """The hand-built store `known` (stores.make_known) with projection weights and magnitude
    capture planted (refs_projection_massive.plant) and its index."""
    from refs_projection_massive import plant

    p = make_known(tmp_path_factory.mktemp("known") / "store")
    plant(p, actdb.open(p).tokens().sort("row")["pos"].to_numpy())  # projection weights + capture
    build_index(p, progress=False, neuron_chunk=5)
    return actdb.open(p)


@pytest.fixture(scope="session")
def noprefix_store(tmp_path_factory):
    """`known` from a tokenizer that adds no BOS, with its index."""
    p = make_known(tmp_path_factory.mktemp("noprefix") / "store", prefix=False)
    build_index(p, progress=False, neuron_chunk=5)
    return actdb.open(p)


@pytest.fixture(scope="session")
def real_store(tmp_path_factory, model_dirs, corpus_file):
    """The tiny seeded OPT model ingested for real, with its index of layers 0 and 1."""
    out = tmp_path_factory.mktemp("real") / "store"
    actdb.ingest.run(actdb.IngestSettings(model=str(model_dirs("opt")), corpus=(str(corpus_file),), out=str(out),
                                          seq_len=32, batch_size=4, block_tokens=512, progress=False))
    build_index(out, layers=[0, 1], progress=False)  # idempotent if ingest already built it
    return actdb.open(out)


@pytest.fixture(scope="session")
def known_ref(known_store):
    """views_reference.Ref of known_store: what its views must answer."""
    return Ref(known_store)


@pytest.fixture(scope="session")
def real_ref(real_store):
    return Ref(real_store)


@pytest.fixture(scope="session")
def noprefix_ref(noprefix_store):
    return Ref(noprefix_store)


ACROSS_SIZES = ((2, 32), (3, 48), (4, 64))   # tiny OPT models: layers x neurons per layer


@pytest.fixture(scope="session")
def across_paths(tmp_path_factory, corpus_file) -> dict[str, Path]:
    """Stores of tests/tiny.py's OPT at three sizes (2 layers x 32 neurons, 3 x 48, 4 x 64), each over
    the same corpus, named opt2, opt3, opt4. Their indexes take massive-activation thresholds a
    random model reaches (|h| > 0.1 and 4 x the median), and opt3's other detector thresholds
    (p_token = p_share = 0.8), so that a query across them answers at each store's own."""
    import actdb
    from actdb.index.build import build_index

    root = tmp_path_factory.mktemp("across")
    out = {}
    for n, d in ACROSS_SIZES:
        model = root / f"tiny-opt-{n}x{d}"
        make_model(model, "opt", seed=n, num_hidden_layers=n, ffn_dim=d)
        store = out[f"opt{n}"] = root / f"opt{n}"
        actdb.ingest.run(actdb.IngestSettings(model=str(model), corpus=(str(corpus_file),), out=str(store),
                                              seq_len=24, block_tokens=256, index=False, progress=False))
        more = dict(p_token=0.8, p_share=0.8) if n == 3 else {}
        build_index(store, progress=False, abs_min=0.1, ratio=4.0, **more)
    return out


@pytest.fixture(scope="session")
def across_stores(across_paths):
    """actdb.open of the three stores of across_paths: schemas opt2, opt3, opt4."""
    import actdb

    return actdb.open(list(map(str, across_paths.values())))
