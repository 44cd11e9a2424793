"""Masks equal a plain transformers forward with hooks, bit for bit, for every family."""
import numpy as np
import pytest
import torch

import actdb
from reference import reference_masks
from stores import FAMILIES, assert_same, run_ingest
from tiers import slow_except


@pytest.mark.parametrize("family", slow_except(FAMILIES, "opt", "llama", "gemma3"))
def test_masks_equal_reference_document_mode(family, model_dirs, corpus_file, tmp_path):
    # one document per sequence: batches are padded, so the padding path is exercised too
    store = run_ingest(model_dirs(family), corpus_file, tmp_path / "s", mode="document")
    ref = reference_masks(model_dirs(family), family, store, batch_size=3)
    assert_same(store, ref)
    fires = np.concatenate([ref[l].mean(0) for l in ref])
    assert 0.05 < fires.mean() < 0.95, "a degenerate model would make the comparison vacuous"


@pytest.mark.parametrize("family,batch_size,mode", slow_except([
    ("opt", 1, "packed"), ("opt", 8, "packed"), ("llama", 5, "packed"), ("gpt2", 8, "document"),
    ("bert", 1, "packed"),
], ("opt", 8, "packed")))
def test_masks_equal_reference_batch_sizes(family, batch_size, mode, model_dirs, corpus_file, tmp_path):
    store = run_ingest(model_dirs(family), corpus_file, tmp_path / "s", batch_size=batch_size, mode=mode)
    assert_same(store, reference_masks(model_dirs(family), family, store, batch_size=batch_size))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["opt", "llama", "gpt_neox", "bert"])
def test_masks_equal_reference_bf16(family, model_dirs, corpus_file, tmp_path):
    store = run_ingest(model_dirs(family), corpus_file, tmp_path / "s", dtype="bfloat16", mode="document")
    assert store.manifest.dtype == "bfloat16"
    assert_same(store, reference_masks(model_dirs(family), family, store, batch_size=3, dtype=torch.bfloat16))


@pytest.mark.slow
def test_layer_subset_and_fire_rule(model_dirs, corpus_file, tmp_path):
    store = run_ingest(model_dirs("llama"), corpus_file, tmp_path / "s", layers="1")
    m = store.manifest
    assert m.layers == (1,) and m.family == "llama"
    assert "gate_proj" in m.fire_rule and "SiLU" in m.fire_rule
    full = run_ingest(model_dirs("llama"), corpus_file, tmp_path / "full")
    assert np.array_equal(store.masks(1), full.masks(1))
    with pytest.raises(actdb.StoreError, match="recorded layers"):
        store.masks(0)


@pytest.mark.slow
def test_neuron_and_row_ranges_match_layer(model_dirs, corpus_file, tmp_path):
    store = run_ingest(model_dirs("opt"), corpus_file, tmp_path / "s")
    full = store.masks(0)
    assert np.array_equal(store.neuron(0, 5), full[:, 5])
    assert np.array_equal(store.masks(0, 13, 101), full[13:101])
    assert np.array_equal(store.neuron(0, 7, 3, 250), full[3:250, 7])


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_d_ffn_from_config_matches_the_module(family, model_dirs):
    from transformers import AutoConfig

    from actdb.ingest.adapters import adapter_for
    from actdb.ingest.adapters import get_module
    from actdb.devices import choose_device
    from actdb.ingest.models import load_model

    config = AutoConfig.from_pretrained(model_dirs(family))
    lm = load_model(model_dirs(family), config, choose_device("cpu"), torch.float32, offload=False)
    fc_in = get_module(lm.layers[0], lm.adapter.fc_in)
    # GPT-2's Conv1D stores [in, out]; Linear stores [out, in]
    width = fc_in.weight.shape[1] if type(fc_in).__name__ == "Conv1D" else fc_in.weight.shape[0]
    assert adapter_for(config.model_type).d_ffn(config) == width


@pytest.mark.slow
def test_block_memory_budget_lowers_block_tokens_not_the_masks(model_dirs, corpus_file, tmp_path):
    small = run_ingest(model_dirs("opt"), corpus_file, tmp_path / "small", block_memory_mb=0.002)
    d = small.manifest.d_ffn * len(small.manifest.layers)
    assert small.manifest.block_tokens == int(0.002 * 2**20 * 8 // d) // 8 * 8 < 256
    assert len(list((small.path / "tokens").glob("part-*.parquet"))) == -(-small.n_tokens // small.manifest.block_tokens)
    ref = run_ingest(model_dirs("opt"), corpus_file, tmp_path / "ref")
    for layer in ref.manifest.layers:
        assert np.array_equal(small.masks(layer), ref.masks(layer))


def test_the_summary_says_how_long_the_forward_waited_for_the_writer(model_dirs, corpus_file, tmp_path, monkeypatch):
    """A block writer slower than the forward is time the forward stands still (its queue of two
    blocks full); the summary says how much. The writer is held on block 0 until the forward has
    found the queue full, then 0.3 s more, so the forward waits at least that: no race on timing."""
    import queue
    import threading
    import time

    from actdb.ingest import forward

    full = threading.Event()

    class Watched(queue.Queue):
        def put(self, item, block=True, timeout=None):
            if self.full():
                full.set()
            super().put(item, block, timeout)

    real_start, real_write = forward.BlockWriter.start, forward.write_block

    def start(self):
        self.q = Watched(maxsize=self.q.maxsize)
        real_start(self)

    def slow_write(writers, index, masks, stats):
        if index == 0:
            assert full.wait(60), "the forward never found the writer's queue full"
            time.sleep(0.3)
        real_write(writers, index, masks, stats)

    monkeypatch.setattr(forward.BlockWriter, "start", start)
    monkeypatch.setattr(forward, "write_block", slow_write)
    out = tmp_path / "s"
    summary = actdb.ingest.run(actdb.IngestSettings(model=str(model_dirs("opt")), corpus=(str(corpus_file),),
                                                    out=str(out), seq_len=24, block_tokens=64, progress=False,
                                                    index=False))
    assert summary.n_tokens > 4 * 64   # blocks enough for the queue to fill behind block 0
    assert 0.3 <= summary.writer_wait_seconds <= summary.forward_seconds
    time_line = next(line for line in summary.lines() if line.startswith("time"))
    assert f"{summary.writer_wait_seconds:.1f} s of it waiting for the writer" in time_line, time_line
    assert actdb.open(out).n_tokens == summary.n_tokens   # and the store is whole
