"""vocab_projection, detector_suppression and massive_activations views, against direct
computations on the weights and on planted behaviour."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import actdb
from actdb.index.build import build_index
from actdb.store.synthetic import write_store
from stores import run_ingest
from tiny import planted_model


@pytest.fixture(scope="module")
def opt_store(model_dirs, corpus_file, tmp_path_factory):
    return run_ingest(model_dirs("opt"), corpus_file, tmp_path_factory.mktemp("opt") / "s", index=True)


def test_vocab_projection_equals_direct_scores(opt_store):
    w = load_file(opt_store.path / "projection.safetensors")
    n_real = len(opt_store.vocab())
    assert w["w_u"].shape[0] > n_real, "the tiny model has padding rows in its vocabulary"
    for layer, neuron in [(0, 0), (1, 17), (2, 47)]:
        direct = (w[f"w_out.{layer}"][neuron] @ w["w_u"].T)[:n_real].double().numpy()   # padding masked
        got = opt_store.sql("SELECT token_id, score, rank FROM vocab_projection_at(k := 5) "
                            "WHERE layer = $l AND neuron = $n ORDER BY rank DESC", {"l": layer, "n": neuron})
        top = got.filter(got["rank"] > 0).sort("rank")                      # rank 1, 2, ... 5
        bottom = got.filter(got["rank"] < 0).sort("rank", descending=True)  # rank -1, -2, ... -5
        assert top["token_id"].to_list() == list(np.argsort(-direct, kind="stable")[:5])
        assert bottom["token_id"].to_list() == list(np.argsort(direct, kind="stable")[:5])
        np.testing.assert_allclose(got["score"].to_numpy(), direct[got["token_id"].to_numpy()], rtol=1e-5)
    t = np.array([3, 9, 20])
    udf = opt_store.sql("SELECT proj_score(1, 4, t) AS s FROM unnest($t) u(t)", {"t": t.tolist()})["s"].to_numpy()
    np.testing.assert_allclose(udf, (w["w_out.1"][4].double() @ w["w_u"][t].double().T).numpy(), rtol=1e-12)
    pad = opt_store.sql("SELECT proj_score(1, 4, $t) AS s", {"t": n_real})["s"][0]
    assert pad is None or np.isnan(pad), "padding rows of the vocabulary have no score"


def test_planted_detector_suppresses_its_trigger(tmp_path):
    rng = np.random.default_rng(0)
    V, d_ffn, d_model, T = 20, 8, 6, 64
    tokens = rng.integers(1, V, size=T * 40)
    tokens[::7] = 5          # enough occurrences of both triggers
    tokens[3::11] = 7

    def mask(layer, a, b):
        t = tokens[a:b]
        m = rng.random((d_ffn, b - a)) < 0.5      # the rest: no detectors (fire on everything at random)
        m[0], m[1] = t == 5, t == 7                # neuron 0 detects token 5, neuron 1 token 7
        return m
    root = write_store(tmp_path / "s", tokens, [T] * 40, mask, layers=[0], n_layers=1, d_ffn=d_ffn, seq_len=T,
                       vocab=[f"t{i}" for i in range(V)])
    w_u = torch.randn(V, d_model, generator=torch.Generator().manual_seed(1))
    w_out = torch.randn(d_ffn, d_model, generator=torch.Generator().manual_seed(2))
    w_out[0] = -w_u[5]      # points away from its trigger: suppresses it
    w_out[1] = w_u[7]       # points at its trigger: promotes it
    save_file({"w_out.0": w_out, "w_u": w_u}, str(root / "projection.safetensors"))
    build_index(root, progress=False)
    st = actdb.open(root)
    got = st.sql("SELECT neuron, tokens, mean_score, suppresses FROM detector_suppression ORDER BY neuron")
    assert got["neuron"].to_list() == [0, 1]
    assert got["tokens"].to_list() == [["t5"], ["t7"]]
    assert got["suppresses"].to_list() == [True, False]
    np.testing.assert_allclose(got["mean_score"].to_list(), [-(w_u[5] @ w_u[5]).item(), (w_u[7] @ w_u[7]).item()],
                               rtol=1e-5)


@pytest.mark.slow
def test_massive_activation_view_finds_the_planted_one(model_dirs, corpus_file, tmp_path):
    mdir = planted_model(model_dirs("llama"), tmp_path / "planted")
    st = run_ingest(mdir, corpus_file, tmp_path / "s", index=True)
    got = st.sql("SELECT DISTINCT row, dim, token_id, pos FROM massive_activations ORDER BY row")
    bos = st.tokens().filter(st.tokens()["token_id"] == 2)["row"].to_list()
    assert got["row"].to_list() == bos and set(got["dim"]) == {5} and set(got["token_id"]) == {2}
    assert set(got["pos"]) == {0}
    # thresholds are parameters: a higher floor than the planted value finds nothing
    assert len(st.sql("SELECT * FROM massive_activations_at(abs_min := 1e6)")) == 0
    clean = run_ingest(model_dirs("llama"), corpus_file, tmp_path / "clean", index=True)
    assert len(clean.sql("SELECT * FROM massive_activations")) == 0
    assert len(clean.sql("SELECT * FROM massive_activations_at(abs_min := 0, ratio := 1)")) > 0
