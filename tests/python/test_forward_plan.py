"""A batch planned once (AttentionLayer.plan) and run (AttentionLayer.run) on every layer of a
model whose caches share the block tables: each run gives what prefill or decode gives with the
same arguments, a plan may be run again, and a plan made for another cache is refused."""

import numpy as np
import pytest

import dsattn
from helpers import poisoned_bf16, random_bf16, small_config
from test_caller_cache import caller_caches

PAGES, PAGE_SIZE = 8, 16


def two_layer_model(config):
    """Two layers with their own weights, each on its own pair of caller cache tensors."""
    layers = []
    for seed in (41, 42):
        weights = dsattn.LayerWeights.synthetic(config, seed=seed)
        latent, keys = caller_caches(config, "bf16", PAGES, PAGE_SIZE)
        layers.append(dsattn.AttentionLayer(config, weights, latent_cache=latent,
                                            index_key_cache=keys, policy="per-request"))
    return layers


@pytest.mark.parametrize("policy", ["per-request", "mla", "masked"])
def test_one_plan_runs_every_layer_as_their_forwards_do(rng, policy):
    config = small_config(32)
    planned, forwarded = two_layer_model(config), two_layer_model(config)
    tables = [[0, 1], [2, 3, 4], [5, 6, 7]]
    prefix, extend = [12, 36, 30], [8, 4, 10]  # contexts 20, 40 and 40 (index_topk 32)
    first = random_bf16(rng, (sum(prefix), config.hidden_size))
    for layer in planned + forwarded:
        layer.policy = policy
        layer.prefill(first, [0, 0, 0], prefix, tables)
    hidden = random_bf16(rng, (sum(extend), config.hidden_size))

    plan = planned[0].plan(prefix, extend, tables)
    assert isinstance(plan, dsattn.ForwardPlan)
    assert plan.total_tokens == sum(extend) and plan.num_requests == 3
    for mine, theirs in zip(planned, forwarded):
        want = theirs.prefill(hidden, prefix, extend, tables, return_lse=True)
        assert plan.paths == want.paths
        for _ in range(2):  # a plan may be run again
            out = poisoned_bf16(hidden.shape)
            got = mine.run(plan, hidden, out=out, return_lse=True)
            assert got.out is out and got.paths == want.paths
            np.testing.assert_array_equal(got.out, want.out)
            np.testing.assert_array_equal(got.lse, want.lse)


def test_a_decode_plan_runs_as_decode_does(rng):
    config = small_config(32)
    planned, forwarded = two_layer_model(config), two_layer_model(config)
    tables = [[0, 1, 2], [3]]
    context = [40, 10]
    first = random_bf16(rng, (sum(context), config.hidden_size))
    step = random_bf16(rng, (2, config.hidden_size))
    for layer in (planned[0], forwarded[0]):
        layer.prefill(first, [0, 0], context, tables)
    plan = planned[0].plan(context, [1, 1], tables, mode="decode")
    want = forwarded[0].decode(step, context, tables)
    got = planned[0].run(plan, step)
    assert got.paths == want.paths
    np.testing.assert_array_equal(got.out, want.out)


def test_a_plan_for_another_cache_or_batch_is_refused():
    config = small_config(32)
    layer = two_layer_model(config)[0]
    plan = layer.plan([0], [8], [[0]])
    weights = dsattn.LayerWeights.synthetic(config, seed=43)
    other = dsattn.AttentionLayer(config, weights, num_pages=PAGES, page_size=32)
    hidden = np.zeros((8, config.hidden_size), np.uint16)
    with pytest.raises(ValueError, match="this cache has 8 pages of 32 tokens"):
        other.run(plan, hidden)
    with pytest.raises(ValueError, match="hidden"):
        layer.run(plan, hidden[:7])
    with pytest.raises(ValueError, match='mode: expected "prefill" or "decode"'):
        layer.plan([0], [8], [[0]], mode="verify")
    with pytest.raises(ValueError, match="block table must cover 20 positions"):
        layer.plan([0], [20], [[0]])  # 20 positions, one page of 16


def test_a_plan_over_device_block_tables_runs_as_the_host_tables_plan(rng):
    # The tables as an int32 tensor on the layer's device (here the CPU), read only there.
    config = small_config(32)
    planned, forwarded = two_layer_model(config), two_layer_model(config)
    tables = [[0, 1], [2, 3, 4], [5, 6, 7]]
    prefix, extend = [12, 36, 30], [8, 4, 10]
    first = random_bf16(rng, (sum(prefix), config.hidden_size))
    for layer in (planned[0], forwarded[0]):
        layer.prefill(first, [0, 0, 0], prefix, tables)
    hidden = random_bf16(rng, (sum(extend), config.hidden_size))
    device_tables = np.array([[0, 1, -1], [2, 3, 4], [5, 6, 7]], np.int32)
    plan = planned[0].plan(prefix, extend, device_tables, on_device=True)
    want = forwarded[0].prefill(hidden, prefix, extend, tables)
    got = planned[0].run(plan, hidden)
    assert got.paths == want.paths and plan.faults() == []
    np.testing.assert_array_equal(got.out, want.out)

    # An entry outside the cache: read as page 0, its page's new tokens not written, reported.
    device_tables[1, 2] = PAGES
    bad = planned[0].plan(prefix, extend, device_tables, on_device=True)
    assert len(bad.faults()) == 1 and "outside the cache's pages [0, 8)" in bad.faults()[0]
    # It runs: requests 0 and 2 (rows 0-7 and 12-21) as before, request 1 reads page 0 instead.
    rerun = planned[0].run(bad, hidden)
    np.testing.assert_array_equal(rerun.out[:8], want.out[:8])
    np.testing.assert_array_equal(rerun.out[12:], want.out[12:])
    with pytest.raises(ValueError, match="sequence_ids: a plan over device block tables"):
        planned[0].plan(prefix, extend, device_tables, sequence_ids=[1, 2, 3], on_device=True)
    own = dsattn.AttentionLayer(config, dsattn.LayerWeights.synthetic(config, seed=44),
                                num_pages=PAGES, page_size=PAGE_SIZE)
    with pytest.raises(ValueError, match="is for the caller's cache"):
        own.plan(prefix, extend, device_tables, on_device=True)
