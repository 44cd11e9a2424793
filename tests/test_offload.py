"""Layer-by-layer mode: identical masks, and never more than one block's weights in memory."""
import numpy as np
import pytest
import torch

import actdb
from actdb.devices import choose_device
from actdb.ingest.models import load_config, load_model
from actdb.ingest.offload import LayerStreamer
from stores import run_ingest


@pytest.mark.slow
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


def _edited_copy(src, dst, **config_changes):
    """A copy of a saved model whose config.json no longer matches its weights."""
    import json
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("offload", ["on", "off"])
def test_config_wider_than_the_weights_is_refused(offload, model_dirs, corpus_file, tmp_path):
    """ffn_dim 96 in config.json over fc1 weights 48 wide: refused before any forward, naming the
    tensor and both shapes (layer-by-layer mode once ran on 48 invented neurons and exited 0)."""
    from cli_runner import ingest, one_error_line

    mdir = _edited_copy(model_dirs("opt"), tmp_path / "m", ffn_dim=96)
    code, out = ingest(mdir, corpus_file, out=tmp_path / "s", extra=["--offload", offload])
    line = one_error_line(out)
    assert code != 0 and "internal error" not in line, out
    assert "fc1.weight" in line and "96" in line and "48" in line, line
    if offload == "on":
        assert "expected shape [96, 32]" in line and "the checkpoint has [48, 32]" in line, line
    assert not (tmp_path / "s" / "manifest.json").exists()


@pytest.mark.parametrize("offload", ["on", "off"])
def test_config_deeper_than_the_weights_is_refused(offload, model_dirs, corpus_file, tmp_path):
    """num_hidden_layers 4 over weights of 3 layers: the fourth would be random (two ingests of one
    model recorded different masks), so it is refused in both modes, saying which layers are missing."""
    from cli_runner import ingest, one_error_line

    mdir = _edited_copy(model_dirs("opt"), tmp_path / "m", num_hidden_layers=4)
    code, out = ingest(mdir, corpus_file, out=tmp_path / "s", extra=["--offload", offload])
    assert code != 0 and one_error_line(out) == (f"Error: {mdir}: config.json has 4 layers, the weights hold 3 "
                                                 "(no weights for model.decoder.layers.3.*)")
    assert not (tmp_path / "s").exists()


def test_offload_checks_every_shape_before_the_first_forward(model_dirs, tmp_path):
    """The check runs when the streamer is built, so a mismatch in the last block is found
    before block 0 runs; a tensor missing from the checkpoint is named too."""
    from safetensors.torch import load_file, save_file

    mdir = _edited_copy(model_dirs("opt"), tmp_path / "m")
    (weights,) = mdir.glob("*.safetensors")
    tensors = load_file(weights)
    last = "model.decoder.layers.2.fc2.weight"
    tensors[last] = tensors[last][:, :-1].contiguous()
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(actdb.InputError, match=r"layers\.2\.fc2\.weight: expected shape \[32, 48\].*has \[32, 47\]"):
        load_model(mdir, load_config(mdir), choose_device("cpu"), torch.float32, offload=True)
    del tensors[last]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(actdb.InputError, match=r"weight .*layers\.2\.fc2\.weight not found in the checkpoint"):
        load_model(mdir, load_config(mdir), choose_device("cpu"), torch.float32, offload=True)
