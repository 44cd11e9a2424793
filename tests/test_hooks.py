"""The fire rules' one home (actdb/ingest/hooks.py): the probe's fires equal the store's masks for
the same tokens under every rule and family, and a rule kind that reads two points of a layer plugs
into the hooks as one class."""
import dataclasses

import numpy as np
import pytest
import torch

import actdb
from actdb.ingest.hooks import ACT, H, FireTest, LayerHooks, Reading
from actdb.devices import choose_device
from actdb.ingest.models import load_config, load_model
from actdb.ingest.thresholds import floor32
from actdb.serve.probe import Probe
from actdb.grammar import parse_fire_rule
from actdb.settings import ServeSettings
from serve_stores import corpus_texts, make_probe_store, probe_corpus
from stores import run_ingest

RULES = ("sign", "abs>0.02", "top:0.9", "ntop:0.9")
GATED_RULES = ("glu:+-", "glu:-+")   # the sign cases of a gated FFN (llama)


def no_hooks_left(lm) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.layers.modules())


@pytest.mark.parametrize("family", ["opt", "gpt2", "llama", "bert"])
def test_probe_fires_equal_the_store_masks_under_every_rule(family, model_dirs, tmp_path):
    """One document per sequence, batch 1 (no padding): the probe of a document's text reads the
    store's tokens of its sequence, and its fires are that sequence's mask rows, bit for bit."""
    corpus = probe_corpus(tmp_path / "corpus.jsonl")
    rules = RULES + GATED_RULES * (family == "llama")
    path = make_probe_store(tmp_path / "store", model_dirs(family), corpus, rules).path
    texts = corpus_texts(corpus)
    seen = {}
    for rule in rules:
        st = actdb.open(path, rule=rule)
        tok = st.tokens().sort("row")
        probe = Probe(st, ServeSettings(probe=True, probe_max_tokens=64))
        got, want = [], []
        for doc in range(len(texts)):
            rows = np.flatnonzero(tok["doc"].to_numpy() == doc)
            for layer in st.manifest.layers:
                r = probe.run(texts[doc], layer)
                assert r.ids == tok["token_id"].to_numpy()[rows].tolist() and not r.cut
                got.append(r.fired)                                   # [tokens, d_ffn] bool
                want.append(st.masks(layer)[rows])
        assert no_hooks_left(probe._loaded[0]), "the probe left a hook on the model"
        got, want = np.concatenate(got), np.concatenate(want)
        assert got.shape == want.shape and int((got != want).sum()) == 0, f"{rule}: {int((got != want).sum())} bits differ"
        assert 0.01 < want.mean() < 0.99, f"{rule}: a rule that never or always fires makes the comparison vacuous"
        seen[rule] = want
    assert not np.array_equal(seen["sign"], seen["top:0.9"]) and not np.array_equal(seen["abs>0.02"], seen["top:0.9"])
    assert not np.array_equal(seen["top:0.9"], seen["ntop:0.9"])


class SignAndAbove(FireTest):
    """A test-only kind: act > 0 and |h| > 0.02, a reading of two points of the layer (as glu:SS's of
    act_fn(gate x) and up x is), derived at h with the activation output kept from before."""
    kind = "sign-and-abs"
    reading = Reading("act > 0 and |h|", H, lambda h, rows, act: rows(act > 0) & (rows(h).float().abs() > floor32(0.02)),
                      also=(ACT,))

    def fired(self, i: int, value: torch.Tensor, row0: int) -> torch.Tensor:
        return value


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_a_rule_reading_two_points_is_one_class(family, model_dirs, corpus_file, tmp_path):
    """Run through the hooks over padded batches, the test-only kind equals the AND of the store's
    sign and abs>0.02 masks (which equal the reference forward: test_fire_rules.py)."""
    store = run_ingest(model_dirs(family), corpus_file, tmp_path / "s", mode="document", fire_rule=("sign", "abs>0.02"))
    lm = load_model(model_dirs(family), load_config(model_dirs(family)), choose_device("cpu"), torch.float32,
                    offload=False)
    layers = store.manifest.layers
    rule = dataclasses.replace(parse_fire_rule("sign"), name="sign-and-abs", kind="sign-and-abs")   # not in the grammar
    test = SignAndAbove(rule, len(layers), store.manifest.d_ffn, 0)
    got: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    toks = store.tokens().sort("row")
    seqs = np.split(toks["token_id"].to_numpy(), np.flatnonzero(np.diff(toks["seq"].to_numpy())) + 1)
    padded = 0
    with LayerHooks(lm, layers, [test], lambda name, i, fired: got[i].append(fired)) as hooks:
        for lo in range(0, len(seqs), 3):   # the store's batches, right-padded
            group = seqs[lo:lo + 3]
            lengths = np.array([len(s) for s in group])
            ids = torch.zeros(len(group), int(lengths.max()), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, s in enumerate(group):
                ids[j, :len(s)] = torch.from_numpy(s.astype(np.int64))
                mask[j, :len(s)] = 1
            hooks.forward(ids, mask, lengths)
            padded += bool((lengths != lengths.max()).any())
    assert no_hooks_left(lm) and padded > 0
    for i, layer in enumerate(layers):
        want = store.masks(layer) & store.with_rule("abs>0.02").masks(layer)
        mine = torch.cat(got[i]).numpy()
        assert mine.shape == want.shape and np.array_equal(mine, want), f"layer {layer}"
        assert 0 < want.mean() < store.masks(layer).mean(), "the AND must differ from either rule"


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_packed_sign_bits_equal_the_hooks_bool_masks(family, model_dirs):
    """Given on_packed, the sign rule's hook hands on its bits packed straight from the activations
    (Reading.pack) for a batch without padding, and they are the bool masks' packed bit for bit; a
    padded batch, or a rule whose mask is not its reading, still goes to on_fired."""
    from actdb.ingest.hooks import fire_tests
    from actdb.ingest.packing import pack_rows

    lm = load_model(model_dirs(family), load_config(model_dirs(family)), choose_device("cpu"), torch.float32,
                    offload=False)
    layers = tuple(range(len(lm.layers)))
    tests = fire_tests([parse_fire_rule(r) for r in ("sign", "abs>0.02")], len(layers), lm.adapter.d_ffn(lm.config), 0,
                       {})
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, lm.config.vocab_size, (3, 16), generator=g)           # [batch, seq]: 48 rows
    full = torch.ones_like(ids)
    padded = full.clone()
    padded[1, 11:] = 0
    for mask, lengths, fast in ((full, np.array([16, 16, 16]), True), (padded, np.array([16, 11, 16]), False)):
        bools: dict[tuple[str, int], torch.Tensor] = {}
        packs: dict[tuple[str, int], torch.Tensor] = {}
        with LayerHooks(lm, layers, tests, lambda name, i, fired: bools.__setitem__((name, i), fired)) as hooks:
            hooks.forward(ids, mask, lengths)
        want = dict(bools)
        bools.clear()
        with LayerHooks(lm, layers, tests, lambda name, i, fired: bools.__setitem__((name, i), fired),
                        on_packed=lambda name, i, p: packs.__setitem__((name, i), p)) as hooks:
            hooks.forward(ids, mask, lengths)
        assert no_hooks_left(lm)
        assert sorted(packs) == ([("sign", i) for i in range(len(layers))] if fast else [])
        assert sorted(bools) == sorted(k for k in want if k not in packs)
        for key, p in packs.items():
            assert np.array_equal(p.numpy(), pack_rows(want[key]).numpy()), key
            assert 0 < want[key].float().mean() < 1
        for key, b in bools.items():
            assert torch.equal(b, want[key]), key
