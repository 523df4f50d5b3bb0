"""LayerWeights: synthetic, loaded from a checkpoint, copied from the caller's tensors, and handed
back as zero-copy views."""

import gc
import os

import numpy as np
import pytest

import dsattn
from checkpoint_writer import write_checkpoint
from helpers import random_bf16, small_config

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "data")

NAMES = [
    "q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight",
    "kv_a_layernorm.weight", "kv_b_proj.weight", "o_proj.weight", "indexer.wq_b.weight",
    "indexer.wk.weight", "indexer.k_norm.weight", "indexer.k_norm.bias",
    "indexer.weights_proj.weight",
]


def expected_shapes(c):
    H = c.num_heads
    return {
        "q_a_proj.weight": (c.q_lora_rank, c.hidden_size),
        "q_a_layernorm.weight": (c.q_lora_rank,),
        "q_b_proj.weight": (H * c.qk_head_dim, c.q_lora_rank),
        "kv_a_proj_with_mqa.weight": (c.latent_dim, c.hidden_size),
        "kv_a_layernorm.weight": (c.kv_lora_rank,),
        "kv_b_proj.weight": (H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank),
        "o_proj.weight": (c.hidden_size, H * c.v_head_dim),
        "indexer.wq_b.weight": (c.index_n_heads * c.index_head_dim, c.q_lora_rank),
        "indexer.wk.weight": (c.index_head_dim, c.hidden_size),
        "indexer.k_norm.weight": (c.index_head_dim,),
        "indexer.k_norm.bias": (c.index_head_dim,),
        "indexer.weights_proj.weight": (c.index_n_heads, c.hidden_size),
    }


def one_prefill(config, weights, hidden):
    layer = dsattn.AttentionLayer(config, weights, num_pages=4)
    table = layer.allocate(hidden.shape[0])
    return layer.prefill(hidden, [0], [hidden.shape[0]], [table]).out


def test_tensors_are_named_shaped_and_seeded():
    c = small_config()
    t = dsattn.LayerWeights.synthetic(c, seed=5).tensors()
    assert list(t) == NAMES
    for name, shape in expected_shapes(c).items():
        assert t[name].shape == shape and t[name].dtype == np.uint16, name
    again = dsattn.LayerWeights.synthetic(c, seed=5).tensors()
    other = dsattn.LayerWeights.synthetic(c, seed=6).tensors()
    for name in NAMES:
        np.testing.assert_array_equal(t[name], again[name])
        assert not np.array_equal(t[name], other[name]), name
        assert np.count_nonzero(t[name]) > 0.9 * t[name].size, name


def test_tensors_are_views_of_the_weights_memory():
    w = dsattn.LayerWeights.synthetic(small_config(), seed=1)
    first, second = w.tensors(), w.tensors()
    for name in NAMES:
        assert np.shares_memory(first[name], second[name]), name
    first["o_proj.weight"][0, 0] ^= 0x0100
    assert second["o_proj.weight"][0, 0] == first["o_proj.weight"][0, 0]
    # The views keep the memory alive after the weights object is gone.
    kept = first["q_a_proj.weight"]
    snapshot = kept.copy()
    del w, first, second
    gc.collect()
    np.testing.assert_array_equal(kept, snapshot)


def test_from_tensors_copies_the_very_same_weights(rng):
    c = small_config()
    w = dsattn.LayerWeights.synthetic(c, seed=2)
    source = w.tensors()
    copied = dsattn.LayerWeights.from_tensors(c, source)
    for name, array in copied.tensors().items():
        np.testing.assert_array_equal(array, source[name])
        assert not np.shares_memory(array, source[name]), name
    hidden = random_bf16(rng, (9, c.hidden_size))
    np.testing.assert_array_equal(one_prefill(c, w, hidden), one_prefill(c, copied, hidden))


def test_from_tensors_refusals_name_the_weight():
    c = small_config()
    good = dsattn.LayerWeights.synthetic(c, seed=3).tensors()
    missing = {k: v for k, v in good.items() if k != "kv_b_proj.weight"}
    with pytest.raises(ValueError, match="missing weight 'kv_b_proj.weight'"):
        dsattn.LayerWeights.from_tensors(c, missing)
    with pytest.raises(ValueError, match="unknown weight 'kv_b_proj'"):
        dsattn.LayerWeights.from_tensors(c, {**good, "kv_b_proj": good["kv_b_proj.weight"]})
    with pytest.raises(ValueError, match=r"o_proj.weight must have shape \[96, 64\], got \[96, 63\]"):
        dsattn.LayerWeights.from_tensors(c, {**good, "o_proj.weight": good["o_proj.weight"][:, :63].copy()})
    with pytest.raises(TypeError, match="q_a_proj.weight: expected dtype bfloat16 .* got float32"):
        dsattn.LayerWeights.from_tensors(
            c, {**good, "q_a_proj.weight": good["q_a_proj.weight"].astype(np.float32)})
    with pytest.raises(ValueError, match="q_b_proj.weight must be contiguous"):
        wide = np.zeros((96, 96), np.uint16)
        dsattn.LayerWeights.from_tensors(c, {**good, "q_b_proj.weight": wide[:, ::2]})
    with pytest.raises(ValueError, match="1 dimensions"):
        dsattn.LayerWeights.from_tensors(
            c, {**good, "kv_a_layernorm.weight": good["kv_a_layernorm.weight"][None, :]})


def test_weights_without_an_indexer_are_an_index_share_layer():
    c = small_config()
    good = dsattn.LayerWeights.synthetic(c, seed=3).tensors()
    no_indexer = {k: v for k, v in good.items() if not k.startswith("indexer.")}
    shared = dsattn.LayerWeights.from_tensors(c, no_indexer)
    assert not any(k.startswith("indexer.") for k in shared.tensors())
    partial = {k: v for k, v in good.items() if k != "indexer.wk.weight"}
    with pytest.raises(ValueError, match="missing weight 'indexer.wk.weight'"):
        dsattn.LayerWeights.from_tensors(c, partial)
    # One layer on its own cannot take another layer's top-k.
    with pytest.raises(ValueError, match="weights have no indexer"):
        dsattn.AttentionLayer(c, shared)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8_blocks"])
def test_load_reads_a_checkpoint_layer(tmp_path, rng, fp8):
    config_json = os.path.join(DATA, "small_config.json")
    c = dsattn.AttentionConfig.from_json(config_json)
    weights = {name: random_bf16(rng, shape, std=0.05) for name, shape in expected_shapes(c).items()}
    expected = write_checkpoint(tmp_path, config_json, weights, layer=3, fp8=fp8)
    assert dsattn.AttentionConfig.from_checkpoint(str(tmp_path)) == c
    loaded = dsattn.LayerWeights.load(str(tmp_path), 3).tensors()
    for name in NAMES:
        np.testing.assert_array_equal(loaded[name], expected[name], err_msg=name)
    if fp8:  # the dequantised weights differ from the originals, but only by e4m3 rounding
        assert not np.array_equal(loaded["o_proj.weight"], weights["o_proj.weight"])


def test_load_errors_raise_checkpoint_error(tmp_path, rng):
    config_json = os.path.join(DATA, "small_config.json")
    c = dsattn.AttentionConfig.from_json(config_json)
    weights = {name: random_bf16(rng, shape) for name, shape in expected_shapes(c).items()}
    write_checkpoint(tmp_path, config_json, weights, layer=0)
    with pytest.raises(dsattn.CheckpointError, match="model.layers.1.self_attn.q_a_proj.weight"):
        dsattn.LayerWeights.load(str(tmp_path), 1)
    assert issubclass(dsattn.CheckpointError, ValueError)
    with pytest.raises(dsattn.CheckpointError):
        dsattn.LayerWeights.load(str(tmp_path / "nowhere"), 0)


def test_devices_are_parsed():
    c = small_config()
    assert dsattn.LayerWeights.synthetic(c, 0, device="cpu").device == "cpu"
    for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1"]:
        with pytest.raises(ValueError, match="device: expected"):
            dsattn.LayerWeights.synthetic(c, 0, device=bad)
    with pytest.raises(ValueError, match="framework"):
        dsattn.LayerWeights.synthetic(c, 0).tensors("jax")
