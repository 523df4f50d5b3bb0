"""The layer on the caller's cache tensors (an engine's own paged cache): the same outputs as on
the layer's own cache, the new tokens' latents and keys in the caller's pages and nowhere else,
prefix pages shared read-only between requests, and refusals that name the argument."""

import numpy as np
import pytest

import dsattn
from helpers import random_bf16, small_config

INDEX_KEY_BYTES = 128 + 4  # 128 e4m3 values and one f32 scale per token


def latent_width(config, kv_cache):
    """Row width of the latent cache: bf16 values, or the bytes of an FP8 row (e4m3 values, one
    f32 scale per 128, bf16 rope)."""
    if kv_cache == "bf16":
        return config.kv_lora_rank + config.qk_rope_head_dim
    return config.kv_lora_rank + 4 * (config.kv_lora_rank // 128) + 2 * config.qk_rope_head_dim


def caller_caches(config, kv_cache, pages, page_size):
    dtype = np.uint16 if kv_cache == "bf16" else np.uint8
    latent = np.zeros((pages, page_size, latent_width(config, kv_cache)), dtype)
    keys = np.zeros((pages, page_size, INDEX_KEY_BYTES), np.uint8)
    return latent, keys


@pytest.mark.parametrize("kv_cache,page_size", [("bf16", 16), ("bf16", 64), ("fp8", 64)])
def test_same_outputs_as_the_layers_own_cache(rng, kv_cache, page_size):
    config = small_config(32, kv_lora_rank=128)  # FP8 rows need blocks of 128
    weights = dsattn.LayerWeights.synthetic(config, seed=31)
    hidden = random_bf16(rng, (71, config.hidden_size))
    pages = 8
    own = dsattn.AttentionLayer(config, weights, kv_cache=kv_cache, num_pages=pages,
                                page_size=page_size)
    latent, keys = caller_caches(config, kv_cache, pages, page_size)
    theirs = dsattn.AttentionLayer(config, weights, latent_cache=latent, index_key_cache=keys)
    assert not theirs.owns_cache and own.owns_cache
    assert (theirs.kv_cache, theirs.num_pages, theirs.page_size) == (kv_cache, pages, page_size)
    table = own.allocate(71)  # the same pages in both: the same slots
    outs = []
    for layer in (own, theirs):
        first = layer.prefill(hidden[:40], [0], [40], [table]).out
        second = layer.prefill(hidden[40:70], [40], [30], [table]).out
        step = layer.decode(hidden[70:], [70], [table]).out
        outs.append((first, second, step))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    # The 71 tokens' rows are in the caller's pages (in the table's order), the others untouched.
    flat_latent = latent.reshape(pages * page_size, -1)
    flat_keys = keys.reshape(pages * page_size, -1)
    slots = [table[p // page_size] * page_size + p % page_size for p in range(71)]
    written = np.zeros(pages * page_size, bool)
    written[slots] = True
    assert np.all(np.any(flat_latent[written] != 0, axis=1))
    assert np.all(np.any(flat_keys[written] != 0, axis=1))
    assert not np.any(flat_latent[~written]) and not np.any(flat_keys[~written])


def to_page_major(keys):
    """[pages, page_size, 132] index-key rows, rewritten page-major: each page's 128-byte values
    slot by slot, then its 4-byte scales (vLLM's layout), in a tensor of the same shape."""
    pages, page_size, _ = keys.shape
    values = keys[:, :, :128].reshape(pages, page_size * 128)
    scales = keys[:, :, 128:].reshape(pages, page_size * 4)
    return np.concatenate([values, scales], axis=1).reshape(keys.shape)


@pytest.mark.parametrize("page_size", [16, 64])
def test_page_major_index_keys_give_the_same_outputs(rng, page_size):
    config = small_config(32)
    weights = dsattn.LayerWeights.synthetic(config, seed=33)
    hidden = random_bf16(rng, (71, config.hidden_size))
    caches, outs = {}, {}
    for layout in ("rows", "page-major"):
        latent, keys = caller_caches(config, "bf16", 8, page_size)
        layer = dsattn.AttentionLayer(config, weights, latent_cache=latent, index_key_cache=keys,
                                      index_key_layout=layout)
        assert layer.index_key_layout == layout
        table = list(range(7, 7 - -(-71 // page_size), -1))  # pages in reverse order
        outs[layout] = (layer.prefill(hidden[:60], [0], [60], [table]).out,
                        layer.decode(hidden[60:61], [60], [table]).out)
        caches[layout] = keys
    for a, b in zip(outs["rows"], outs["page-major"]):
        np.testing.assert_array_equal(a, b)  # past index_topk: the indexer read every key
    np.testing.assert_array_equal(caches["page-major"], to_page_major(caches["rows"]))
    own = dsattn.AttentionLayer(config, weights, num_pages=8, index_key_layout="page-major")
    assert own.index_key_layout == "page-major"
    with pytest.raises(ValueError, match="index_key_layout must be \"rows\" or \"page-major\", got 'x'"):
        dsattn.AttentionLayer(config, weights, num_pages=8, index_key_layout="x")


def test_requests_share_prefix_pages_read_only(rng):
    config = small_config(32)
    weights = dsattn.LayerWeights.synthetic(config, seed=32)
    page_size = 16
    latent, keys = caller_caches(config, "bf16", 6, page_size)
    layer = dsattn.AttentionLayer(config, weights, latent_cache=latent, index_key_cache=keys)
    prompt = random_bf16(rng, (32, config.hidden_size))
    tails = random_bf16(rng, (20, config.hidden_size))
    layer.prefill(prompt, [0], [32], [[0, 1]])  # the shared prefix: pages 0 and 1
    before = latent[:2].copy()
    shared = layer.prefill(tails, [32, 32], [10, 10], [[0, 1, 2], [0, 1, 3]]).out
    np.testing.assert_array_equal(latent[:2], before)  # read, never written
    # Each request as if alone, on a private copy of the prefix in a cache of its own.
    for i in range(2):
        own = dsattn.AttentionLayer(config, weights, num_pages=6, page_size=page_size)
        table = own.allocate(42)
        own.prefill(prompt, [0], [32], [table])
        alone = own.prefill(tails[10 * i:10 * i + 10], [32], [10], [table]).out
        np.testing.assert_array_equal(shared[10 * i:10 * i + 10], alone)
    # Two requests writing their new tokens into one page: refused before anything is written.
    snapshot = latent.copy()
    with pytest.raises(ValueError, match="request 1: page 2 receives its new tokens but is also used by request 0"):
        layer.prefill(tails, [32, 32], [10, 10], [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(latent, snapshot)


def test_refusals_name_the_argument():
    config = small_config(32)
    weights = dsattn.LayerWeights.synthetic(config, seed=33)
    latent, keys = caller_caches(config, "bf16", 4, 16)

    def make(**kwargs):
        return dsattn.AttentionLayer(config, weights, **kwargs)

    with pytest.raises(ValueError, match="latent_cache and index_key_cache come together"):
        make(latent_cache=latent)
    with pytest.raises(ValueError, match="latent_cache"):
        make(latent_cache=latent[:, :, :-1], index_key_cache=keys)  # rows too narrow
    with pytest.raises(ValueError, match="index_key_cache"):
        make(latent_cache=latent, index_key_cache=keys[:3])  # another page count
    with pytest.raises(TypeError, match="latent_cache"):
        make(latent_cache=latent.astype(np.float32), index_key_cache=keys)
    with pytest.raises(ValueError, match="page_size .dimension 1. must be a multiple of 16"):
        bad = np.zeros((4, 40, latent.shape[2]), np.uint16)
        make(latent_cache=bad, index_key_cache=np.zeros((4, 40, INDEX_KEY_BYTES), np.uint8))
    padded = np.zeros((4, 16, latent.shape[2] + 8), np.uint16)  # pages with a wider stride
    with pytest.raises(ValueError, match="latent_cache: pages must be contiguous rows"):
        make(latent_cache=padded[:, :, :latent.shape[2]], index_key_cache=keys)
    with pytest.raises(ValueError, match="page_size=64 disagrees with the given cache tensors"):
        make(latent_cache=latent, index_key_cache=keys, page_size=64)
    with pytest.raises(ValueError, match="kv_cache='fp8' disagrees"):
        make(latent_cache=latent, index_key_cache=keys, kv_cache="fp8")
    layer = make(latent_cache=latent, index_key_cache=keys, num_pages=4)
    for call in (lambda: layer.allocate(10), lambda: layer.free([0]), lambda: layer.free_pages):
        with pytest.raises(ValueError, match="the caller's cache tensors, whose pages the caller"):
            call()
    with pytest.raises(ValueError, match="outside the cache's \\[0, 4\\) pages"):
        layer.prefill(random_bf16(np.random.default_rng(1), (5, config.hidden_size)), [0], [5],
                      [[4]])
    assert "the caller's cache of 4 pages" in repr(layer)
