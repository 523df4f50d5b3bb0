"""The layer through the bindings: both forms agree where both are exact, decode and verify
continue a prefill the way a fresh prefill computes it, outputs land in the caller's buffer."""

import json

import numpy as np
import pytest

import dsattn
from helpers import BF16_AGREEMENT, poisoned_bf16, random_bf16, relative_difference, small_config

TOPK = 32


@pytest.fixture(scope="module")
def config():
    return small_config(TOPK)


@pytest.fixture(scope="module")
def weights(config):
    return dsattn.LayerWeights.synthetic(config, seed=21)


def layer_for(config, weights, **kwargs):
    kwargs.setdefault("num_pages", 8)
    return dsattn.AttentionLayer(config, weights, **kwargs)


def prefill_batch(layer, hidden, prefix_lens, extend_lens):
    """Fresh requests: prefixes written by one earlier prefill each, then the batch."""
    tables, offset, rows = [], 0, []
    for prefix, extend in zip(prefix_lens, extend_lens):
        table = layer.allocate(prefix + extend)
        if prefix:
            layer.prefill(hidden[offset:offset + prefix], [0], [prefix], [table])
        rows.append(hidden[offset + prefix:offset + prefix + extend])
        offset += prefix + extend
        tables.append(table)
    out = poisoned_bf16((sum(extend_lens), hidden.shape[1]))
    result = layer.prefill(np.concatenate(rows), prefix_lens, extend_lens, tables, out=out)
    assert result.out is out
    return result


@pytest.mark.parametrize(
    "prefix_lens,extend_lens",
    [([0], [50]), ([20], [12]), ([0, 7, 0], [1, 25, 31]), ([64], [1])],
    ids=["no_prefix", "with_prefix", "mixed_batch", "prefix_on_page_boundary"],
)
def test_mha_and_mla_agree_where_both_are_exact(config, weights, rng, prefix_lens, extend_lens):
    cfg = config.replace(index_topk=128)  # every context below index_topk: both forms exact
    hidden = random_bf16(rng, (sum(prefix_lens) + sum(extend_lens), cfg.hidden_size))
    results = {}
    for policy in ["mha", "mla", "per-request"]:
        layer = layer_for(cfg, weights, policy=policy, num_pages=16)
        results[policy] = prefill_batch(layer, hidden, prefix_lens, extend_lens)
        assert np.isfinite(dsattn.bf16_to_float32(results[policy].out)).all(), policy
    assert results["mha"].paths == ["dense_mha"] * len(prefix_lens)
    assert results["mla"].paths == ["sparse_mla"] * len(prefix_lens)
    assert results["per-request"].paths == ["dense_mha"] * len(prefix_lens)
    assert relative_difference(results["mha"].out, results["mla"].out) <= BF16_AGREEMENT
    np.testing.assert_array_equal(results["per-request"].out, results["mha"].out)


def test_masked_policy_agrees_with_mla_past_index_topk(config, weights, rng):
    # Past index_topk masked MHA attends to sparse MLA's selection through the dense form.
    hidden = random_bf16(rng, (30 + 45, config.hidden_size))
    results = {}
    for policy in ["masked", "mla"]:
        layer = layer_for(config, weights, policy=policy)
        results[policy] = prefill_batch(layer, hidden, [0, 0], [30, 45])
    assert results["masked"].paths == ["masked_mha"] * 2
    assert relative_difference(results["masked"].out, results["mla"].out) <= BF16_AGREEMENT
    assert dsattn.plan(config, [0, 0], [30, 45], policy="masked") == ["masked_mha"] * 2


def test_per_request_policy_splits_a_batch_across_index_topk(config, weights, rng):
    # Request 0 stays within index_topk (dense MHA), request 1 does not (sparse MLA); each row
    # agrees with the same request run alone. Not bit for bit: alone, the projections are GEMMs
    # of other shapes, which BLAS may sum in another order.
    hidden = random_bf16(rng, (10 + 45, config.hidden_size))
    layer = layer_for(config, weights)
    batch = prefill_batch(layer, hidden, [0, 0], [10, 45])
    assert batch.paths == ["dense_mha", "sparse_mla"]
    alone = [prefill_batch(layer_for(config, weights), hidden[:10], [0], [10]),
             prefill_batch(layer_for(config, weights), hidden[10:], [0], [45])]
    assert relative_difference(batch.out[:10], alone[0].out) <= 1e-2
    assert relative_difference(batch.out[10:], alone[1].out) <= 1e-2


@pytest.mark.parametrize("n", [5, TOPK - 1, TOPK, 50])
def test_decode_equals_last_row_of_fresh_prefill(config, weights, rng, n):
    hidden = random_bf16(rng, (n + 1, config.hidden_size))
    layer = layer_for(config, weights)
    table = layer.allocate(n + 1)
    layer.prefill(hidden[:n], [0], [n], [table])
    out = poisoned_bf16((1, config.hidden_size))
    decoded = layer.decode(hidden[n:], [n], [table], out=out)
    assert decoded.out is out and decoded.paths == ["sparse_mla"]

    fresh_layer = layer_for(config, weights, policy="mla")  # the decode path for every row
    fresh = fresh_layer.prefill(hidden, [0], [n + 1], [fresh_layer.allocate(n + 1)])
    assert relative_difference(decoded.out, fresh.out[n:]) <= 1e-2


@pytest.mark.parametrize("n", [10, TOPK - 1, 45])  # at TOPK - 1 the drafts cross index_topk
def test_verify_equals_decode_steps(config, weights, rng, n):
    prompt = random_bf16(rng, (n, config.hidden_size))
    drafts = random_bf16(rng, (3, config.hidden_size))
    # Two requests with the same prompt and drafts: num_tokens as one int, block tables as an
    # int32 tensor.
    layer = layer_for(config, weights)
    a, b = layer.allocate(n + 3), layer.allocate(n + 3)
    layer.prefill(np.concatenate([prompt, prompt]), [0, 0], [n, n], [a, b])
    verified = layer.verify(np.concatenate([drafts, drafts]), [n, n], 3,
                            np.array([a, b], dtype=np.int32))
    assert verified.paths == ["sparse_mla", "sparse_mla"]

    stepwise = layer_for(config, weights)
    c = stepwise.allocate(n + 3)
    stepwise.prefill(prompt, [0], [n], [c])
    for i in range(3):
        one = stepwise.decode(drafts[i:i + 1], [n + i], [c])
        for r in range(2):
            row = verified.out[r * 3 + i:r * 3 + i + 1]
            assert relative_difference(row, one.out) <= 1e-2, f"request {r} draft token {i}"
    np.testing.assert_array_equal(verified.out[:3], verified.out[3:])


def test_fp8_cache_forms_agree_and_decode_runs(config, weights, rng):
    cfg = config.replace(index_topk=64, kv_lora_rank=128)  # FP8 blocks of 128
    weights = dsattn.LayerWeights.synthetic(cfg, seed=4)
    hidden = random_bf16(rng, (41, cfg.hidden_size))
    outs = {}
    for policy in ["mha", "mla"]:
        layer = layer_for(cfg, weights, kv_cache="fp8", policy=policy)
        assert layer.kv_cache == "fp8"
        table = layer.allocate(41)
        layer.prefill(hidden[:20], [0], [20], [table])
        outs[policy] = layer.prefill(hidden[20:40], [20], [20], [table]).out
        decoded = layer.decode(hidden[40:], [40], [table]).out
        assert np.isfinite(dsattn.bf16_to_float32(decoded)).all()
    assert relative_difference(outs["mha"], outs["mla"]) <= BF16_AGREEMENT


def test_out_may_be_the_input(config, weights, rng):
    hidden = random_bf16(rng, (12, config.hidden_size))
    layer = layer_for(config, weights)
    expected = layer.prefill(hidden, [0], [12], [layer.allocate(12)]).out
    in_place = hidden.copy()
    layer2 = layer_for(config, weights)
    result = layer2.prefill(in_place, [0], [12], [layer2.allocate(12)], out=in_place)
    assert result.out is in_place
    np.testing.assert_array_equal(in_place, expected)


def test_allocate_free_and_cache_full(config, weights):
    layer = layer_for(config, weights, num_pages=4)
    assert (layer.page_size, layer.num_pages, layer.free_pages) == (64, 4, 4)
    table = layer.allocate(65)
    assert len(table) == 2 and layer.free_pages == 2
    grown = layer.allocate(128, table)
    assert grown[:2] == table and len(grown) == 2  # already covered: nothing new
    grown = layer.allocate(129, grown)
    assert len(grown) == 3 and layer.free_pages == 1
    with pytest.raises(dsattn.CacheFull) as full:
        layer.allocate(2 * 64 + 1)
    assert isinstance(full.value, RuntimeError)
    assert layer.free_pages == 1  # all or nothing
    layer.free(grown)
    assert layer.free_pages == 4
    with pytest.raises(ValueError, match="page 0 which is not in use"):
        layer.free(grown)
    assert layer.free_pages == 4
    assert layer.allocate(0) == []


def test_policy_is_readable_and_settable(config, weights):
    layer = layer_for(config, weights, policy="threshold=16")
    assert layer.policy == "threshold=16"
    layer.policy = "mla"
    assert layer.policy == "mla"
    assert layer.device == "cpu" and "AttentionLayer" in repr(layer)


def test_page_size_changes_where_tokens_live_not_the_output(config, weights, rng):
    hidden = random_bf16(rng, (100, config.hidden_size))
    outs = []
    for page_size in (16, 64, 256):
        layer = layer_for(config, weights, num_pages=8, page_size=page_size)
        assert layer.page_size == page_size
        table = layer.allocate(100)
        assert len(table) == -(-100 // page_size)
        outs.append(layer.prefill(hidden, [0], [100], [table]).out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[2], outs[1])
    with pytest.raises(ValueError, match="page_size must be a multiple of 16"):
        layer_for(config, weights, page_size=40)


def test_plan_says_which_path_each_request_takes(config):
    topk = config.index_topk
    assert dsattn.plan(config, [0, 0, 10], [topk, topk + 1, topk - 10]) == [
        "dense_mha", "sparse_mla", "dense_mha"]
    assert dsattn.plan(config, [0], [5], policy="mla") == ["sparse_mla"]
    assert dsattn.plan(config, [0, 0, 10], [topk, topk + 1, topk - 10], policy="per-request") == [
        "dense_mha", "sparse_mla", "dense_mha"]
    assert dsattn.plan(config, [5, 3], [1, 1], mode="decode") == ["sparse_mla", "sparse_mla"]
    with pytest.raises(ValueError, match="policy mha is not exact for request 1"):
        dsattn.plan(config, [0, topk], [1, 1], policy="mha")
    with pytest.raises(ValueError, match="same length"):
        dsattn.plan(config, [0, 0], [1])
    with pytest.raises(ValueError, match="extend_len >= 1"):
        dsattn.plan(config, [0], [0])


def test_auto_plans_with_a_given_cost_profile(config, weights, tmp_path):
    topk = config.index_topk
    # Both paths priced per latent decompressed or absorbed, alike: dense MHA decompresses the
    # whole context and sparse MLA absorbs the new rows only, so a fresh prompt ties (dense) and
    # new rows over a prefix go sparse.
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({
        "device": "test", "source": "test",
        "dense": {"fixed_s": 0, "decompress_s_per_flop": 1e-12, "attention_s_per_flop": 0},
        "sparse": {"fixed_s": 0, "absorb_s_per_flop": 1e-12, "score_s_per_pair": 0,
                   "mla_s_per_flop": 0}}))
    shapes = ([0, topk - 4], [topk - 4, 4])
    assert dsattn.plan(config, *shapes, profile=str(profile)) == ["dense_mha", "sparse_mla"]
    assert dsattn.plan(config, *shapes, policy="per-request") == ["dense_mha", "dense_mha"]
    layer = layer_for(config, weights, profile=str(profile))
    assert layer.policy == "auto" and json.loads(layer.cost_profile)["device"] == "test"
    layer.policy = "mla"
    assert layer.cost_profile is None
    layer.policy = "auto"  # the given profile again
    assert json.loads(layer.cost_profile)["device"] == "test"
    # The cost model behind that choice: per-latent prices on both paths, so a fresh prompt's
    # dense cost (its context decompressed) equals its sparse one (its rows absorbed); new rows
    # over a prefix cost less sparse. A context past index_topk inside the extend can split.
    costs = dsattn.predict_costs(config, *shapes, profile=str(profile))
    assert costs[0]["dense_mha"] == pytest.approx(costs[0]["sparse_mla"])
    assert costs[0]["row_split"] is None and costs[1]["row_split"] is None
    assert costs[1]["sparse_mla"] < costs[1]["dense_mha"]
    per_flop = 1e-12 * 2 * config.kv_lora_rank * config.num_heads * (
        config.qk_nope_head_dim + config.v_head_dim)
    assert costs[1]["dense_mha"] == pytest.approx(topk * per_flop)
    assert costs[1]["sparse_mla"] == pytest.approx(4 * per_flop)
    long = dsattn.predict_costs(config, [topk - 8], [20], profile=str(profile))[0]
    assert long["dense_mha"] is None
    # 8 dense rows decompress a context of topk; 12 sparse rows are absorbed.
    assert long["row_split"] == pytest.approx((topk + 12) * per_flop)
    with pytest.raises(ValueError, match="same length"):
        dsattn.predict_costs(config, [0, 0], [1], profile=str(profile))
    with pytest.raises(ValueError, match="no built-in cost profile for device cpu"):
        dsattn.predict_costs(config, [0], [1])  # the small test shape has none
    with pytest.raises(ValueError, match="cost profile: 'sparse.mla_s_per_flop' must be a number"):
        bad = tmp_path / "bad.json"
        bad.write_text(profile.read_text().replace('"mla_s_per_flop": 0', '"mla_s_per_flop": "x"'))
        dsattn.plan(config, [0], [1], profile=str(bad))


def test_sequence_ids_keep_requests_sharing_a_prefix_out_of_each_others_pages(
        config, weights, rng):
    layer = layer_for(config, weights)
    page = layer.page_size
    hidden = random_bf16(rng, (page + 4, config.hidden_size))
    prefix = layer.allocate(page)
    layer.prefill(hidden[:page], [0], [page], [prefix], sequence_ids=[0])
    # Two requests continue the prefix, each in a page of its own.
    first = layer.allocate(page + 4, list(prefix))
    second = layer.allocate(page + 4, list(prefix))
    layer.prefill(hidden[page:page + 2], [page], [2], [first], sequence_ids=[1])
    layer.prefill(hidden[page:page + 2], [page], [2], [second], sequence_ids=[2])
    # The second request with the first's block table (equal to it up to the page written).
    with pytest.raises(ValueError, match=f"block_table\\[1\\] = {first[1]} holds tokens of "
                                         "sequence 1"):
        layer.decode(hidden[:1], [page + 2], [first], sequence_ids=[2])
    layer.decode(hidden[:1], [page + 2], [first], sequence_ids=[1])
    with pytest.raises(ValueError, match="sequence_ids: expected one id per request \\(1\\), got 2"):
        layer.decode(hidden[:1], [page + 3], [first], sequence_ids=[1, 2])
    with pytest.raises(ValueError, match="sequence_ids"):
        layer.decode(hidden[:1], [page + 3], [first], sequence_ids=[-1])


def test_layer_lse_agrees_between_the_dense_and_sparse_forms(config, weights, rng):
    hidden = random_bf16(rng, (30, config.hidden_size))
    results = {}
    for policy in ("mha", "mla"):
        layer = layer_for(config, weights, policy=policy)
        table = layer.allocate(30)
        results[policy] = layer.prefill(hidden, [0], [30], [table], return_lse=True)
    lse = results["mha"].lse
    assert lse.shape == (30, config.num_heads) and lse.dtype == np.float32
    assert np.isfinite(lse).all()
    np.testing.assert_allclose(lse, results["mla"].lse, atol=0.05, rtol=0)
    # A caller's buffer is filled in place; a wrong shape is refused.
    layer = layer_for(config, weights, policy="mla")
    table = layer.allocate(30)
    mine = np.full((30, config.num_heads), np.nan, dtype=np.float32)
    assert layer.prefill(hidden, [0], [30], [table], lse=mine).lse is mine
    np.testing.assert_array_equal(mine, results["mla"].lse)
    with pytest.raises(ValueError, match="lse"):
        layer.prefill(hidden[:4], [30], [4], [layer.allocate(34, table)],
                      lse=np.zeros((3, config.num_heads), np.float32))
