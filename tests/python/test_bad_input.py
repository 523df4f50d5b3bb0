"""Every refusal names the argument, what was expected and what was given, with the exception type
of its kind, and leaves the outputs and the cache as they were."""

import numpy as np
import pytest

import dsattn
from helpers import BF16_NAN, poisoned_bf16, random_bf16, small_config


@pytest.fixture(scope="module")
def config():
    return small_config(32)


@pytest.fixture
def layer(config):
    return dsattn.AttentionLayer(config, dsattn.LayerWeights.synthetic(config, 9), num_pages=4)


def refused_untouched(layer, exception, match, hidden, prefix, extend, tables, out=None, **kw):
    """The call (of 10 tokens) raises `exception` matching `match`; `out` stays poisoned and no
    page moves."""
    out = poisoned_bf16((10, layer.config.hidden_size)) if out is None else out
    before, free = out.copy(), layer.free_pages
    with pytest.raises(exception, match=match):
        layer.prefill(hidden, prefix, extend, tables, out=out, **kw)
    np.testing.assert_array_equal(out, before)
    assert layer.free_pages == free


def test_layer_refuses_bad_tensors(layer, rng):
    D = layer.config.hidden_size
    h = random_bf16(rng, (10, D))
    table = [layer.allocate(10)]
    cases = [
        (TypeError, r"hidden: expected dtype bfloat16 \(or uint16 bits\), got float32",
         dict(hidden=h.astype(np.float32))),
        (TypeError, r"hidden: expected a tensor .*got list", dict(hidden=h.tolist())),
        (ValueError, r"hidden must have shape \[10, 96\], got \[10, 95\]", dict(hidden=h[:, :95].copy())),
        (ValueError, r"hidden: expected 2 dimensions \[tokens, hidden_size\], got shape \[960\]",
         dict(hidden=h.reshape(-1))),
        (ValueError, r"hidden must be contiguous", dict(hidden=np.repeat(h, 2, axis=1)[:, ::2])),
        (ValueError, r"out must have shape \[10, 96\], got \[9, 96\]", dict(out=poisoned_bf16((9, D)))),
        (TypeError, r"out: expected dtype bfloat16 .*got int16", dict(out=np.zeros((10, D), np.int16))),
        (TypeError, r"stream: expected an int .*got str", dict(stream="default")),
    ]
    for exception, match, change in cases:
        args = dict(hidden=h, prefix=[0], extend=[10], tables=table)
        args.update(change)
        refused_untouched(layer, exception, match, **args)


def test_layer_refuses_read_only_out(layer, rng):
    h = random_bf16(rng, (4, layer.config.hidden_size))
    out = poisoned_bf16(h.shape)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out: expected a writable tensor"):
        layer.prefill(h, [0], [4], [layer.allocate(4)], out=out)
    assert (out == BF16_NAN).all()


def test_layer_refuses_bad_batches(layer, rng):
    D = layer.config.hidden_size
    h = random_bf16(rng, (10, D))
    table = layer.allocate(10)
    cases = [
        (ValueError, r"prefix_lens\[0\]: expected a value >= 0, got -1", [-1], [10], [table]),
        (ValueError, r"extend_lens\[1\]: expected a value >= 1, got 0", [0, 0], [10, 0], [table, []]),
        (TypeError, r"extend_lens\[0\]: expected an int, got float", [0], [10.0], [table]),
        (ValueError, r"2 prefix lengths but 1 token counts", [0, 0], [10], [table]),
        (ValueError, r"block_tables: expected one table per request \(1\), got 2", [0], [10],
         [table, table]),
        (ValueError, r"request 0: block table must cover 74 positions", [64], [10], [table]),
        (ValueError, r"block_table\[0\] = 9 is outside the cache's \[0, 4\) pages", [0], [10], [[9]]),
        (TypeError, r"block_tables: expected dtype int32, got int64", [0], [10],
         np.array([table], dtype=np.int64)),
        (TypeError, r"block_tables: expected a list of lists of int", [0], [10], "pages"),
    ]
    for exception, match, prefix, extend, tables in cases:
        refused_untouched(layer, exception, match, h, prefix, extend, tables)


def test_forced_mha_where_not_exact_is_refused(config, rng):
    layer = dsattn.AttentionLayer(config, dsattn.LayerWeights.synthetic(config, 9), policy="mha",
                                  num_pages=4)
    h = random_bf16(rng, (40, config.hidden_size))
    refused_untouched(layer, ValueError, "request 0", h, [0], [40], [layer.allocate(40)],
                      out=poisoned_bf16((40, config.hidden_size)))


def test_layer_options_are_checked(config):
    w = dsattn.LayerWeights.synthetic(config, 9)
    with pytest.raises(ValueError, match="policy|per-request"):
        dsattn.AttentionLayer(config, w, policy="fastest")
    with pytest.raises(ValueError, match="kv cache format must be bf16 or fp8, got 'int4'"):
        dsattn.AttentionLayer(config, w, kv_cache="int4")
    with pytest.raises(ValueError, match="device: expected"):
        dsattn.AttentionLayer(config, w, device="tpu")
    with pytest.raises(ValueError, match="num_tokens: expected a count >= 0, got -3"):
        dsattn.AttentionLayer(config, w, num_pages=2).allocate(-3)
    with pytest.raises(ValueError, match="q_a_proj"):  # weights of another shape
        dsattn.AttentionLayer(config.replace(hidden_size=128), w)


def test_kernels_refuse_bad_tensors(rng):
    q = random_bf16(rng, (4, 2, 16))
    k = random_bf16(rng, (6, 2, 16))
    v = random_bf16(rng, (6, 2, 8))
    cu_q = np.array([0, 4], np.int32)
    cu_k = np.array([0, 6], np.int32)
    cases = [
        (TypeError, r"q: expected dtype bfloat16 .*got float32",
         lambda: dsattn.mha_prefill(q.astype(np.float32), k, v, cu_q, cu_k, 4, 0.25,
                                    out=poisoned_bf16((4, 2, 8)))),
        (ValueError, r"k: expected 3 dimensions \[total_k, heads, d_qk\], got shape \[6, 32\]",
         lambda: dsattn.mha_prefill(q, k.reshape(6, 32), v, cu_q, cu_k, 4, 0.25)),
        (TypeError, r"cu_k: expected dtype int32, got int64",
         lambda: dsattn.mha_prefill(q, k, v, cu_q, cu_k.astype(np.int64), 4, 0.25)),
        (ValueError, r"max_q is 2 but request 0 has 4 query rows",
         lambda: dsattn.mha_prefill(q, k, v, cu_q, cu_k, 2, 0.25)),
        (ValueError, r"out must have shape \[4, 2, 8\], got \[4, 2, 7\]",
         lambda: dsattn.mha_prefill(q, k, v, cu_q, cu_k, 4, 0.25, out=poisoned_bf16((4, 2, 7)))),
        (ValueError, r"q must have a unit stride in its last dimension",
         lambda: dsattn.mha_prefill(np.repeat(q, 2, axis=2)[:, :, ::2], k, v, cu_q, cu_k, 4, 0.25)),
        (ValueError, r"indices\[0, 1\] = 99 is outside the cache's \[0, 6\) slots",
         lambda: dsattn.sparse_mla(q, k[:, 0], np.array([[0, 99]] * 4, np.int32), 0.25, v_dim=8)),
        (TypeError, r"kv_cache: expected dtype bfloat16 \(or uint16 bits\) or uint8, got float32",
         lambda: dsattn.sparse_mla(q, np.zeros((6, 16), np.float32),
                                   np.zeros((4, 2), np.int32), 0.25, v_dim=8)),
        (TypeError, r"topk_length: expected dtype int32, got int64",
         lambda: dsattn.sparse_mla(q, k[:, 0], np.zeros((4, 2), np.int32), 0.25, v_dim=8,
                                   topk_length=np.zeros(4, np.int64))),
        (ValueError, r"topk_length must have shape \[4\], got \[3\]",
         lambda: dsattn.sparse_mla(q, k[:, 0], np.zeros((4, 2), np.int32), 0.25, v_dim=8,
                                   topk_length=np.zeros(3, np.int32))),
        (ValueError, r"lse: expected 2 dimensions \[n, heads\], got shape \[4\]",
         lambda: dsattn.sparse_mla(q, k[:, 0], np.zeros((4, 2), np.int32), 0.25, v_dim=8,
                                   lse=np.zeros(4, np.float32))),
        (ValueError, r"lengths\[0\] must be in \[0, 5\], got 6",
         lambda: dsattn.topk(np.zeros((1, 5), np.float32), np.array([6], np.int32), 2)),
        (ValueError, r"k: expected an int >= 1, got 0",
         lambda: dsattn.topk(np.zeros((1, 5), np.float32), np.array([5], np.int32), 0)),
        (TypeError, r"q: expected dtype float8_e4m3fn \(or uint8 bits\), got uint16",
         lambda: dsattn.indexer_scores(q, np.zeros((4, 2, 1), np.float32),
                                       np.zeros((4, 2), np.float32), np.zeros((64, 132), np.uint8),
                                       np.zeros((1, 1), np.int32), 64, cu_q,
                                       np.array([4], np.int32), scores=np.zeros((4, 4), np.float32))),
    ]
    for exception, match, call in cases:
        with pytest.raises(exception, match=match):
            call()


def test_kernel_outputs_stay_untouched_when_refused(rng):
    scores = rng.standard_normal((2, 8)).astype(np.float32)
    out = np.full((2, 3), -7, np.int32)
    with pytest.raises(ValueError, match=r"lengths\[1\]"):
        dsattn.topk(scores, np.array([8, 9], np.int32), 3, out=out)
    assert (out == -7).all()
