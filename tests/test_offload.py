"""Layer-by-layer mode: identical masks, and never more than one block's weights in memory."""
import numpy as np
import pytest
import torch

import actdb
from actdb.ingest.models import choose_device, load_config, load_model
from actdb.ingest.offload import LayerStreamer
from test_ingest_masks import run_ingest


@pytest.mark.parametrize("family", ["opt", "llama", "gpt2", "bert"])
def test_offload_masks_equal_normal_mode(family, model_dirs, corpus_file, tmp_path):
    normal = run_ingest(model_dirs(family), corpus_file, tmp_path / "n", offload="off")
    streamed = run_ingest(model_dirs(family), corpus_file, tmp_path / "o", offload="on")
    for layer in normal.manifest.layers:
        assert np.array_equal(normal.masks(layer), streamed.masks(layer)), f"layer {layer}"


def test_offload_holds_one_block_at_a_time(model_dirs):
    mdir = model_dirs("llama")
    config = load_config(mdir)
    lm = load_model(mdir, config, choose_device("cpu"), torch.float32, offload=True)
    assert isinstance(lm.streamer, LayerStreamer)
    # before any forward, no block holds real weights
    assert all(p.is_meta for layer in lm.layers for p in layer.parameters())
    seen = []
    for i, layer in enumerate(lm.layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: seen.append(
            [j for j, l in enumerate(lm.layers) if not any(p.is_meta for p in l.parameters())]))
    ids = torch.randint(4, 60, (4, 16))
    with torch.inference_mode():
        lm.base(input_ids=ids, attention_mask=torch.ones_like(ids))
    # hooks run in registration order: the streamer loaded block i just before our hook saw it
    assert seen == [[i] for i in range(len(lm.layers))]
    assert lm.streamer.max_resident == 1 and lm.streamer.loads == len(lm.layers)
    assert all(p.is_meta for layer in lm.layers for p in layer.parameters())


def test_offload_needs_safetensors(model_dirs, tmp_path):
    import shutil

    src = model_dirs("opt")
    dst = tmp_path / "binmodel"
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(actdb.InputError, match="safetensors"):
        load_model(dst, load_config(dst), choose_device("cpu"), torch.float32, offload=True)
