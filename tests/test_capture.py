"""Magnitude capture and projection weights, against direct computations."""
import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.activations import ACT2FN

from reference import REF, _get
from stores import run_ingest
from tiers import slow_except
from tiny import planted_model


def block_outputs(model_dir, family, store):
    """(layer -> per sequence [len, d_model] residual stream, layer -> per sequence [len, d_ffn]
    FFN hidden values act(fc(x))), from a plain forward with hooks, one sequence at a time."""
    cls = AutoModel if family == "bert" else AutoModelForCausalLM
    model = cls.from_pretrained(model_dir).eval()
    config = AutoConfig.from_pretrained(model_dir)
    act = ACT2FN[getattr(config, REF[family][2])]
    toks = store.tokens().sort("row")
    seqs = np.split(toks["token_id"].to_numpy(), np.flatnonzero(np.diff(toks["seq"].to_numpy())) + 1)
    out = {l: [] for l in store.manifest.layers}
    ffn = {l: [] for l in store.manifest.layers}
    blocks = _get(model, REF[family][0])
    for l in out:
        blocks[l].register_forward_hook(lambda m, a, o, l=l: out[l].append((o[0] if isinstance(o, tuple) else o)[0]))
        _get(blocks[l], REF[family][1]).register_forward_hook(  # OPT flattens to [seq, d_ffn]
            lambda m, a, o, l=l: ffn[l].append(act(o).reshape(-1, o.shape[-1])))
    for s in seqs:  # one sequence at a time: no padding in the reference
        with torch.no_grad():
            model(input_ids=torch.from_numpy(s.astype(np.int64))[None])
    return ({l: [x.numpy() for x in v] for l, v in out.items()},
            {l: [x.numpy() for x in v] for l, v in ffn.items()})


def lower_median(x):
    x = np.sort(np.abs(x).ravel())
    return x[(len(x) - 1) // 2]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(REF))
def test_capture_equals_direct_computation(family, model_dirs, corpus_file, tmp_path):
    """Every family: the forward holds the captured values of several layers and computes their
    statistics after it (LayerHooks), so a family that changed a layer's output later would fail here."""
    store = run_ingest(model_dirs(family), corpus_file, tmp_path / "s", mode="document", capture_topk=3,
                       capture="resid+ffn")
    assert store.manifest.capture == ("resid", "ffn") and store.manifest.capture_topk == 3
    cap = zarr.open_group(store.path / "capture", mode="r")
    resid, ffn = block_outputs(model_dirs(family), family, store)
    for kind, ref in (("resid", resid), ("ffn", ffn)):
        for i, layer in enumerate(store.manifest.layers):
            h = np.concatenate(ref[layer])                                   # [rows, d]
            a = np.abs(h)
            order = np.argsort(-a, axis=1, kind="stable")[:, :3]
            dims = cap[f"{kind}_topk_dim"][i]
            np.testing.assert_allclose(np.abs(cap[f"{kind}_topk_value"][i]), np.take_along_axis(a, order, 1),
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(cap[f"{kind}_topk_value"][i], np.take_along_axis(h, dims, 1), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(cap[f"{kind}_median"][i], [lower_median(r) for r in h], rtol=1e-5, atol=1e-6)
            seq_med = np.concatenate([np.full(len(s), lower_median(s)) for s in ref[layer]])
            np.testing.assert_allclose(cap[f"{kind}_seq_median"][i], seq_med, rtol=1e-5, atol=1e-6)


def test_default_capture_is_the_residual_stream(model_dirs, corpus_file, tmp_path):
    store = run_ingest(model_dirs("opt"), corpus_file, tmp_path / "s")
    assert store.manifest.capture == ("resid",)
    assert sorted(zarr.open_group(store.path / "capture", mode="r").array_keys()) == \
        sorted(f"resid_{f}" for f in ("topk_value", "topk_dim", "median", "seq_median"))


@pytest.mark.parametrize("offload", slow_except(["off", "on"], "off"))
@pytest.mark.parametrize("family", slow_except(["opt", "gpt2", "llama", "bert"], "opt"))
def test_projection_weights_equal_the_model(family, offload, model_dirs, corpus_file, tmp_path):
    store = run_ingest(model_dirs(family), corpus_file, tmp_path / "s", offload=offload, capture="none")
    saved = load_file(store.path / "projection.safetensors")
    cls = AutoModel if family == "bert" else AutoModelForCausalLM
    model = cls.from_pretrained(model_dirs(family))
    blocks = _get(model, REF[family][0])
    out_path = {"opt": "fc2", "gpt2": "mlp.c_proj", "llama": "mlp.down_proj", "bert": "output.dense"}[family]
    for l in store.manifest.layers:
        w = _get(blocks[l], out_path).weight.detach()
        w_out = w if family == "gpt2" else w.t()                              # [d_ffn, d_model]
        assert torch.equal(saved[f"w_out.{l}"], w_out)
    w_u = (model.get_input_embeddings() if family == "bert" else model.get_output_embeddings()).weight.detach()
    assert torch.equal(saved["w_u"], w_u)
    n, t = 3, 7
    assert torch.allclose(saved[f"w_out.{l}"][n] @ saved["w_u"][t], w_out[n] @ w_u[t])


def massive(store, layer_index, abs_min=100.0, ratio=1000.0):
    cap = zarr.open_group(store.path / "capture", mode="r")
    v, d = cap["resid_topk_value"][layer_index], cap["resid_topk_dim"][layer_index]
    med = cap["resid_seq_median"][layer_index][:, None]
    hit = (np.abs(v) > abs_min) & (np.abs(v) >= ratio * med)
    rows, ranks = np.nonzero(hit)
    return rows, d[rows, ranks]


@pytest.mark.slow
def test_planted_massive_activation_found_and_absent_without(model_dirs, corpus_file, tmp_path):
    mdir = planted_model(model_dirs("llama"), tmp_path / "planted")
    store = run_ingest(mdir, corpus_file, tmp_path / "s", layers="0,2")
    toks = store.tokens().sort("row")
    bos_rows = np.flatnonzero(toks["token_id"].to_numpy() == 2)
    for i in range(2):
        rows, dims = massive(store, i)
        assert set(dims) == {5}
        assert np.array_equal(np.unique(rows), bos_rows)
    clean = run_ingest(model_dirs("llama"), corpus_file, tmp_path / "clean")
    assert all(len(massive(clean, i)[0]) == 0 for i in range(len(clean.manifest.layers)))


@pytest.mark.parametrize("lengths", [[64, 64, 64], [64, 7, 1], [5, 64, 30]])
def test_medians_equal_sorting_with_padding_and_nan(lengths):
    """The in-place numpy selection against a sort, on ragged batches (padding rows must not
    enter a sequence's median) and with a NaN (torch.median's answer: NaN)."""
    from actdb.ingest.capture import magnitude_stats

    g = torch.Generator().manual_seed(len(lengths) + sum(lengths))
    h = torch.randn(len(lengths), 64, 96, generator=g) * 3
    h[0, 3, 5] = float("nan")
    h[-1, 0, 7] = float("nan")   # in the last sequence too: another thread's share
    valid = torch.zeros(len(lengths), 64, dtype=torch.bool)
    for j, n in enumerate(lengths):
        valid[j, :n] = True
    h0 = h.clone()
    st = magnitude_stats(h, valid.reshape(-1), lengths, k=4)
    torch.testing.assert_close(h, h0, rtol=0, atol=0, equal_nan=True)  # the hooked tensor is not reordered
    x = h.numpy()
    want_tok = [np.nan if np.isnan(x[j, t]).any() else lower_median(x[j, t])
                for j, n in enumerate(lengths) for t in range(n)]
    want_seq = [np.nan if np.isnan(x[j, :n]).any() else lower_median(x[j, :n])
                for j, n in enumerate(lengths) for _ in range(n)]
    np.testing.assert_array_equal(st["median"].numpy(), np.array(want_tok, dtype=np.float32))
    np.testing.assert_array_equal(st["seq_median"].numpy(), np.array(want_seq, dtype=np.float32))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_stats_equal_the_torch_path(dtype, threads, monkeypatch):
    """The compiled one-pass |h| and top-k, and the medians, with the sequences split over 1-3
    threads, against the torch/numpy path: medians bit for bit, top-k values equal, dims equal
    where |h| has no ties (bf16 and rounded values have many, where the compiled path puts the
    lower dimension first)."""
    from actdb.ingest import capture, pool

    monkeypatch.setattr(pool, "threads", lambda: threads)
    # numba is a dependency: a kernel that fails to load is a failure here, not a skip
    assert capture.compiled() is not None, "the compiled ingest kernels did not load"
    g = torch.Generator().manual_seed(7)
    for trial in range(20):
        lengths = torch.randint(1, 49, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        h = (torch.randn(len(lengths), 48, 1 + trial * 7, generator=g) * 3).to(dtype)
        if trial % 4 == 3:
            h = h.relu().round()   # ties, zeros
        if trial % 4 == 2:
            h[..., ::3] = -0.0     # |h| is +0: the selections compare the bits of |h|
        valid = (torch.arange(48)[None, :] < torch.tensor(lengths)[:, None]).reshape(-1)
        got = capture.magnitude_stats(h, valid, lengths, k=4)
        want = capture._stats_torch(h.reshape(len(lengths), 48, -1), valid, lengths, 4)
        for key in ("median", "seq_median"):
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
        torch.testing.assert_close(got["topk_value"].abs(), want["topk_value"].abs(), rtol=0, atol=0)
        rows = h.float().reshape(-1, h.shape[-1])[valid]
        torch.testing.assert_close(got["topk_value"], rows.gather(1, got["topk_dim"].long()), rtol=0, atol=0)
        if dtype == torch.float32 and trial % 4 != 3:
            assert torch.equal(got["topk_dim"], want["topk_dim"])


@pytest.mark.parametrize("d", [1, 3, 31, 32, 33, 64, 100, 576])
@pytest.mark.parametrize("k", [1, 4, 40])
def test_compiled_topk_equals_a_stable_sort(d, k):
    """The compiled top-k (block maxima, then a scan of the blocks that reach the k-th largest)
    against a stable sort of |h|: values and dimensions bit for bit, ties lower dimension first,
    on widths around the block size and rows of ties, zeros, -0.0 and infinities; NaN reported."""
    from actdb.ingest.kernels import row_topk

    rng = np.random.default_rng(d * 100 + k)
    kk = min(k, d)
    h = rng.normal(size=(40, d)).astype(np.float32) * 3
    h[5:10] = rng.integers(-2, 3, size=(5, d))               # many ties
    h[10] = 0.0
    h[11, ::2] = -0.0
    h[12:15] = np.abs(h[12:15]).round()                      # ReLU-like: zeros beyond a few positives
    h[15, d // 2] = -np.inf
    h[16, 0] = h[16, -1] = np.inf
    h[17, -1] = 1e30                                         # the largest in the last (partial) block
    a = np.empty_like(h)
    vals = np.full((40, kk), np.nan, np.float32)
    dims = np.full((40, kk), -1, np.int32)
    assert not row_topk(h, a, vals, dims)
    np.testing.assert_array_equal(a.view(np.int32), np.abs(h).view(np.int32))
    want = np.argsort(-np.abs(h), axis=1, kind="stable")[:, :kk]
    np.testing.assert_array_equal(dims, want)
    np.testing.assert_array_equal(vals.view(np.int32), np.take_along_axis(h, want, 1).view(np.int32))
    h[20, d - 1] = np.nan
    assert row_topk(h, a, vals, dims)


@pytest.mark.parametrize("lengths", [[256] * 8, [100, 1, 1, 1, 300], [0, 0, 5], [7], [3, 0, 9, 0]])
@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_the_statistics_shares_cover_every_sequence_once(lengths, n):
    """The split of a batch's sequences over threads: contiguous, in order, none empty, every
    sequence once, and the rows of the largest share no more than needed (a sequence is not cut)."""
    from actdb.ingest.pool import shares

    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    got = shares(starts, n)
    assert [j for r in got for j in r] == list(range(len(lengths)))
    assert len(got) <= n and all(len(r) for r in got)
    rows = [int(starts[r.stop] - starts[r.start]) for r in got]
    assert max(rows) <= max(sum(lengths) / n + max(lengths), max(lengths))
    if lengths == [256] * 8:
        assert rows == [2048 // n] * n if 8 % n == 0 else max(rows) - min(rows) <= 256


@pytest.mark.parametrize("env, torch_first, want", [
    ({}, False, "actdb"), ({"GOMP_SPINCOUNT": "7"}, False, "7"), ({"OMP_WAIT_POLICY": "passive"}, False, None),
    ({}, True, None)])
def test_importing_actdb_before_torch_shortens_the_openmp_spin(env, torch_first, want):
    """In a fresh interpreter: `import actdb` sets GOMP_SPINCOUNT (read once, when torch's OpenMP
    runtime loads) unless the user set it or OMP_WAIT_POLICY, or torch is loaded already."""
    import os
    import subprocess
    import sys

    from actdb.devices import OPENMP_SPIN

    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = ("import torch\n" if torch_first else "") + "import os, actdb\nprint(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(OPENMP_SPIN if want == "actdb" else want)]


def test_the_forward_loops_malloc_setting_reuses_large_blocks():
    """In a fresh interpreter: a 40 MB tensor made and freed five times is faulted in anew each time
    under glibc's default thresholds, and not again once devices.steady_malloc has fixed them; a user's
    own MALLOC_MMAP_THRESHOLD_ is left alone."""
    import os
    import subprocess
    import sys

    code = """
import resource, sys, torch
from actdb.devices import steady_malloc
def faults():
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        a = torch.ones(40 << 20, dtype=torch.uint8)
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
before = faults()
done = steady_malloc()
faults()
print(before, done, faults())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    before, done, after = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                         check=True).stdout.split()
    pages = 5 * (40 << 20) // (2 << 20)   # at least a fault per 2 MB (transparent huge pages) each time
    assert done == "True" and int(before) >= pages and int(after) * 10 < int(before)
    user = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_MMAP_THRESHOLD_": "1000000"},
                          capture_output=True, text=True, check=True).stdout.split()
    assert user[1] == "False" and int(user[2]) >= pages


def _captured(lm, layers, ids, mask, lengths, kinds=("resid", "ffn")):
    """{kind: per layer stats} of one forward through LayerHooks."""
    from actdb.ingest.hooks import LayerHooks

    with LayerHooks(lm, layers, [], lambda *a: None, kinds, 3) as hooks:
        hooks.forward(ids, mask, lengths)
        return {kind: [dict(st) for st in hooks.stats[kind]] for kind in kinds}


def _tiny_batch():
    lengths = np.array([20, 13, 7])
    ids = torch.randint(4, 60, (3, 20), generator=torch.Generator().manual_seed(5))
    mask = (torch.arange(20)[None, :] < torch.from_numpy(lengths)[:, None]).long()
    return ids * mask, mask, lengths


def test_held_layers_give_the_statistics_of_one_layer_at_a_time(model_dirs, monkeypatch):
    """LayerHooks holds the captured values and computes their statistics together; with a hold of
    one byte (a pass after every layer) and of all layers the answers equal magnitude_stats of each
    layer's own hooked values, bit for bit, over a padded batch."""
    from actdb.devices import choose_device
    from actdb.ingest import capture, hooks as hooks_module
    from actdb.ingest.models import load_config, load_model

    mdir = model_dirs("llama")
    lm = load_model(mdir, load_config(mdir), choose_device("cpu"), torch.float32, offload=False)
    layers = tuple(range(len(lm.layers)))
    ids, mask, lengths = _tiny_batch()
    seen: dict[tuple[str, int], torch.Tensor] = {}
    for l in layers:   # the values the hooks read, kept apart (copies) by a plain hook
        lm.layers[l].register_forward_hook(
            lambda m, a, o, l=l: seen.__setitem__(("resid", l), (o[0] if isinstance(o, tuple) else o).clone()))
        lm.layers[l].mlp.act_fn.register_forward_hook(lambda m, a, o, l=l: seen.__setitem__(("ffn", l), o.clone()))
    held_all = _captured(lm, layers, ids, mask, lengths)
    monkeypatch.setattr(hooks_module, "HOLD_BYTES", 1)
    one_by_one = _captured(lm, layers, ids, mask, lengths)
    valid = mask.bool().reshape(-1)
    for kind in ("resid", "ffn"):
        for i, l in enumerate(layers):
            want = capture.magnitude_stats(seen[(kind, l)], valid, lengths.tolist(), 3)
            for got in (held_all[kind][i], one_by_one[kind][i]):
                assert got.keys() == want.keys()
                for key in want:
                    assert torch.equal(got[key], want[key]), (kind, l, key)


def test_a_held_value_changed_in_place_is_an_error(model_dirs):
    """A model that writes into a layer's output after its hook would make held statistics wrong:
    the version counter shows it, and the forward stops with one clear error instead."""
    from actdb.devices import choose_device
    from actdb.errors import InputError
    from actdb.ingest.models import load_config, load_model

    mdir = model_dirs("llama")
    lm = load_model(mdir, load_config(mdir), choose_device("cpu"), torch.float32, offload=False)
    ids, mask, lengths = _tiny_batch()
    assert _captured(lm, (0, 1), ids, mask, lengths, ("resid",))["resid"][0]["median"].shape == (40,)
    lm.layers[1].register_forward_pre_hook(lambda m, args: args[0].mul_(2))   # layer 0's output, in place
    with pytest.raises(InputError, match=r"llama: layer 0's resid values were changed in place"):
        _captured(lm, (0, 1), ids, mask, lengths, ("resid",))
