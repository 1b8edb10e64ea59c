"""Models and streams from Python: forward against forward over all
positions, streams against the model, rewind, snapshots, weights."""

import numpy as np
import pytest
import torch

import edifice

CONFIGS = {
    "sliding_window": {"model": "sliding_window", "embed_dim": 12, "window_size": 4, "num_heads": 2, "head_dim": 4, "ffn_dim": 16, "seq_len": 20},
    "hybrid": {"model": "hybrid", "embed_dim": 12, "lstm_hidden": 8, "lstm_layers": 2, "num_heads": 2, "head_dim": 4, "attention_window": 5, "seq_len": 20},
    "dual_chunk": {"model": "dual_chunk", "embed_dim": 12, "hidden_size": 16, "num_heads": 2, "num_layers": 2, "chunk_size": 4, "strict_causal": True, "seq_len": 20},
}


def frames(t, e, seed=0):
    return np.random.default_rng(seed).standard_normal((t, e)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_stream_equals_the_model_and_rewinds(name):
    model = edifice.Model.from_config(CONFIGS[name], seed=3)
    t, e = model.input_dims
    x = frames(t, e)
    full = model.forward(x[None], all=True)[0]
    assert full.shape == (t, model.output_size)
    assert np.allclose(model.forward(x[None])[0], full[-1], atol=1e-6)

    stream = edifice.Stream(model, rollback=4)
    outs = np.stack([stream.step(f) for f in x])
    assert np.abs(outs - full).max() < 1e-5
    snap = stream.snapshot()
    stream.rewind(3)
    assert stream.position == t - 3
    again = np.stack([stream.step(f) for f in x[-3:]])
    assert np.array_equal(again, outs[-3:])
    stream.restore(snap)
    assert stream.position == t
    stream.reset()
    assert stream.position == 0 and np.array_equal(stream.step(x[0]), outs[0])


def test_torch_inputs_give_torch_outputs():
    model = edifice.Model.from_config(CONFIGS["sliding_window"])
    x = torch.randn(2, 20, 12)
    y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, model.output_size)
    assert np.array_equal(y.numpy(), model.forward(x.numpy()))


def test_weights_round_trip_and_config_files(tmp_path):
    a = edifice.Model.from_config(CONFIGS["hybrid"], seed=1)
    b = edifice.Model.from_config(CONFIGS["hybrid"], seed=2)
    x = frames(20, 12)[None]
    assert not np.array_equal(a.forward(x), b.forward(x))
    a.save_weights(tmp_path / "w.safetensors")
    b.load_weights(tmp_path / "w.safetensors")
    assert np.array_equal(a.forward(x), b.forward(x))
    path = tmp_path / "c.toml"
    path.write_text("model = \"ring\"\nembed_dim = 8\nwindow_size = 8\n")
    ring = edifice.Model.from_config(path)
    assert ring.name == "ring" and ring.config["embed_dim"] == 8


def test_bad_model_inputs_raise():
    with pytest.raises(ValueError, match="unknown|model"):
        edifice.Model.from_config({"model": "nope"})
    with pytest.raises(ValueError):
        edifice.Model.from_config({"model": "ring", "embed_dim": 8, "no_such_option": 1})
    with pytest.raises(TypeError, match="config"):
        edifice.Model.from_config(3)
    model = edifice.Model.from_config(CONFIGS["sliding_window"])
    with pytest.raises(OSError, match="missing.safetensors"):
        model.load_weights("missing.safetensors")
    with pytest.raises(ValueError, match="x: expected 3 dims"):
        model.forward(np.zeros((20, 12), np.float32))
    with pytest.raises(TypeError, match="x: expected float32"):
        model.forward(np.zeros((1, 20, 12)))
    with pytest.raises(ValueError):
        model.forward(np.zeros((1, 20, 5), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        model.forward(np.full((1, 20, 12), np.nan, np.float32))
    stream = edifice.Stream(model, rollback=2)
    with pytest.raises(ValueError, match="frame: expected shape"):
        stream.step(np.zeros(5, np.float32))
    with pytest.raises(ValueError):
        stream.rewind(3)
    with pytest.raises(ValueError):
        stream.restore(b"not a snapshot")
    with pytest.raises(TypeError, match="model"):
        edifice.Stream("ring")
    assert stream.position == 0


def test_corrupt_weights_file_raises(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="bad.safetensors"):
        edifice.Model.from_config(CONFIGS["hybrid"]).load_weights(path)
