"""Each kernel against its formula in float64 on small random inputs, with poisoned outputs, under
the tolerance scheme (a plain f32 implementation with bf16 storage sets the error budget)."""

import numpy as np
import pytest

import dsattn
from helpers import assert_within_tolerance, f64, poisoned_bf16, random_bf16, round_bf16

PAGE = 64


def attention(q, k, v, scale, visible, dtype):
    """softmax(scale * q . k) v over keys [0, visible) of one head, in `dtype` arithmetic."""
    s = (q.astype(dtype) @ k[:visible].astype(dtype).T) * dtype(scale)
    p = np.exp(s - s.max())
    return (p / p.sum()) @ v[:visible].astype(dtype)


def mha_formula(q, k, v, cu_q, cu_k, scale, dtype):
    out = np.zeros((q.shape[0], q.shape[1], v.shape[2]))
    for b in range(len(cu_q) - 1):
        n_q, n_k = cu_q[b + 1] - cu_q[b], cu_k[b + 1] - cu_k[b]
        for i in range(n_q):
            for h in range(q.shape[1]):
                out[cu_q[b] + i, h] = attention(q[cu_q[b] + i, h], k[cu_k[b]:cu_k[b + 1], h],
                                                v[cu_k[b]:cu_k[b + 1], h], scale, n_k - n_q + i + 1,
                                                dtype)
    return out


def test_mha_prefill_matches_formula(rng):
    heads, d_qk, d_v = 2, 48, 32
    n_q, n_k = [3, 1, 7], [5, 1, 7]  # with a prefix, single token, no prefix
    cu_q = np.concatenate([[0], np.cumsum(n_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(n_k)]).astype(np.int32)
    q = random_bf16(rng, (cu_q[-1], heads, d_qk))
    k = random_bf16(rng, (cu_k[-1], heads, d_qk))
    v = random_bf16(rng, (cu_k[-1], heads, d_v))
    scale = d_qk**-0.5
    out = poisoned_bf16((cu_q[-1], heads, d_v))
    assert dsattn.mha_prefill(q, k, v, cu_q, cu_k, max(n_q), scale, out=out) is out
    ref = mha_formula(f64(q), f64(k), f64(v), cu_q, cu_k, scale, np.float64)
    plain = round_bf16(mha_formula(f64(q), f64(k), f64(v), cu_q, cu_k, scale, np.float32))
    assert_within_tolerance(f64(out), ref, plain, "mha_prefill")
    allocated = dsattn.mha_prefill(q, k, v, cu_q, cu_k, max(n_q), scale)
    np.testing.assert_array_equal(allocated, out)

    # The log-sum-exp beside the output: ln sum_j exp(scale * q . k_j) over the visible keys.
    lse_ref = np.empty((cu_q[-1], q.shape[1]))
    for b in range(len(n_q)):
        for i in range(n_q[b]):
            row = cu_q[b] + i
            keys = f64(k)[cu_k[b]:cu_k[b] + n_k[b] - n_q[b] + i + 1]
            logits = scale * np.einsum("hd,jhd->hj", f64(q)[row], keys)
            mx = logits.max(axis=1)
            lse_ref[row] = mx + np.log(np.exp(logits - mx[:, None]).sum(axis=1))
    with_lse, lse = dsattn.mha_prefill(q, k, v, cu_q, cu_k, max(n_q), scale, return_lse=True)
    np.testing.assert_array_equal(with_lse, out)
    assert lse.dtype == np.float32 and lse.shape == (cu_q[-1], q.shape[1])
    np.testing.assert_allclose(lse, lse_ref, rtol=0, atol=1e-4)
    given = np.full((cu_q[-1], q.shape[1]), np.nan, np.float32)
    assert dsattn.mha_prefill(q, k, v, cu_q, cu_k, max(n_q), scale, lse=given) is not None
    np.testing.assert_array_equal(given, lse)


def test_masked_mha_prefill_attends_to_the_selected_keys(rng):
    """selection_mask from top-k positions, then mha_prefill under that key mask: each row's
    softmax over its selected keys only, as sparse attention over the same keys."""
    heads, d_qk, d_v = 2, 48, 32
    n_q, n_k = [4, 9], [40, 9]
    cu_q = np.concatenate([[0], np.cumsum(n_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(n_k)]).astype(np.int32)
    q = random_bf16(rng, (cu_q[-1], heads, d_qk))
    k = random_bf16(rng, (cu_k[-1], heads, d_qk))
    v = random_bf16(rng, (cu_k[-1], heads, d_v))
    scale = d_qk**-0.5
    topk = 6
    selected = np.full((cu_q[-1], topk), -1, np.int32)
    for b in range(len(n_q)):
        for i in range(n_q[b]):
            visible = n_k[b] - n_q[b] + i + 1
            pick = rng.choice(visible, size=min(topk, visible), replace=False)
            selected[cu_q[b] + i, :len(pick)] = pick
    mask = dsattn.selection_mask(selected, words=2)
    assert mask.shape == (cu_q[-1], 2) and mask.dtype == np.int32
    for row in range(cu_q[-1]):
        bits = [p for p in range(64) if (int(mask[row, p // 32]) >> (p % 32)) & 1]
        assert bits == sorted(p for p in selected[row] if p >= 0)
    out, lse = dsattn.mha_prefill(q, k, v, cu_q, cu_k, max(n_q), scale, key_mask=mask,
                                  return_lse=True)
    ref = np.zeros((cu_q[-1], heads, d_v))
    for b in range(len(n_q)):
        for i in range(n_q[b]):
            row = cu_q[b] + i
            keys = np.sort(selected[row][selected[row] >= 0]) + cu_k[b]
            for h in range(heads):
                logits = scale * f64(k)[keys, h] @ f64(q)[row, h]
                p = np.exp(logits - logits.max())
                ref[row, h] = p @ f64(v)[keys, h] / p.sum()
                expected_lse = logits.max() + np.log(p.sum())
                assert abs(lse[row, h] - expected_lse) < 1e-4
    np.testing.assert_allclose(f64(out), ref, rtol=0, atol=2e-2)
    with pytest.raises(ValueError, match="selection_mask needs words or out"):
        dsattn.selection_mask(selected)


def quantize_rows(values, block=128):
    """FP8 rows: e4m3(values / scale) then one f32 scale per block, scale = max(amax, 1e-4) / 448;
    returns the bytes and what they dequantise to."""
    n, width = values.shape
    scales = np.maximum(np.abs(values.reshape(n, width // block, block)).max(axis=2), 1e-4) / 448
    scales = scales.astype(np.float32)
    e4m3 = dsattn.float32_to_fp8_e4m3(
        np.ascontiguousarray((values.reshape(n, -1, block) / scales[:, :, None]).reshape(n, width),
                             dtype=np.float32))
    dequantised = (dsattn.fp8_e4m3_to_float32(e4m3).reshape(n, -1, block)
                   * scales[:, :, None]).reshape(n, width).astype(np.float64)
    return np.concatenate([e4m3, scales.view(np.uint8)], axis=1), dequantised


def sparse_formula(q, keys, indices, d_v, scale, dtype):
    out = np.zeros((q.shape[0], q.shape[1], d_v))
    for t in range(q.shape[0]):
        chosen = indices[t][indices[t] >= 0]
        if len(chosen) == 0:
            continue
        for h in range(q.shape[1]):
            out[t, h] = attention(q[t, h], keys[chosen], keys[chosen, :d_v], scale, len(chosen),
                                  dtype)
    return out


@pytest.mark.parametrize("cache", ["bf16", "fp8"])
def test_sparse_mla_matches_formula(rng, cache):
    n, heads, d_v, d_rope, slots, topk = 5, 3, 128, 16, 40, 12
    d_qk = d_v + d_rope
    q = random_bf16(rng, (n, heads, d_qk))
    latent = random_bf16(rng, (slots, d_qk))
    indices = np.stack([rng.permutation(slots)[:topk] for _ in range(n)]).astype(np.int32)
    indices[1, 5:] = -1  # a row with unused slots
    indices[3, :] = -1  # a row with none: zeros
    if cache == "bf16":
        kv_cache, keys = latent, f64(latent)
    else:
        quantised, c_kv = quantize_rows(dsattn.bf16_to_float32(np.ascontiguousarray(latent[:, :d_v])))
        kv_cache = np.concatenate([quantised, latent[:, d_v:].view(np.uint8)], axis=1)
        assert kv_cache.shape == (slots, d_v + 4 * d_v // 128 + 2 * d_rope)
        keys = np.concatenate([c_kv, f64(latent[:, d_v:])], axis=1)
    scale = d_qk**-0.5
    out = poisoned_bf16((n, heads, d_v))
    assert dsattn.sparse_mla(q, kv_cache, indices, scale, out=out) is out
    ref = sparse_formula(f64(q), keys, indices, d_v, scale, np.float64)
    plain = round_bf16(sparse_formula(f64(q), keys, indices, d_v, scale, np.float32))
    assert_within_tolerance(f64(out), ref, plain, f"sparse_mla ({cache} cache)")
    assert (f64(out)[3] == 0).all()
    allocated = dsattn.sparse_mla(q, kv_cache, indices, scale, v_dim=d_v)
    np.testing.assert_array_equal(allocated, out)

    # The log-sum-exp beside the output: ln sum_j exp(scale * q . k_j) over the valid indices,
    # -inf for the row without one. The FP8 cache's keys as the kernels read them: dequantised and
    # rounded to bf16.
    keys_read = round_bf16(keys) if cache == "fp8" else keys
    lse_ref = np.full((n, heads), -np.inf)
    for t in range(n):
        chosen = indices[t][indices[t] >= 0]
        if len(chosen):
            logits = scale * np.einsum("hd,jd->hj", f64(q)[t], keys_read[chosen])
            mx = logits.max(axis=1)
            lse_ref[t] = mx + np.log(np.exp(logits - mx[:, None]).sum(axis=1))
    with_lse, lse = dsattn.sparse_mla(q, kv_cache, indices, scale, v_dim=d_v, return_lse=True)
    np.testing.assert_array_equal(with_lse, out)
    assert lse.dtype == np.float32 and lse.shape == (n, heads)
    assert np.isneginf(lse[3]).all()
    np.testing.assert_allclose(lse, lse_ref, rtol=0, atol=1e-4)
    given = np.full((n, heads), np.nan, np.float32)
    assert dsattn.sparse_mla(q, kv_cache, indices, scale, v_dim=d_v, lse=given) is not None
    np.testing.assert_array_equal(given, lse)

    # topk_length: each row reads only its first entries, as the lists cut there with -1 do.
    lengths = np.array([topk, 3, 0, 7, 12], np.int32)
    cut = indices.copy()
    for t in range(n):
        cut[t, lengths[t]:] = -1
    np.testing.assert_array_equal(
        dsattn.sparse_mla(q, kv_cache, indices, scale, v_dim=d_v, topk_length=lengths),
        dsattn.sparse_mla(q, kv_cache, cut, scale, v_dim=d_v))
    with pytest.raises(ValueError, match=r"topk_length\[0\] = 13 is outside \[0, 12\]"):
        dsattn.sparse_mla(q, kv_cache, indices, scale, v_dim=d_v,
                          topk_length=np.full(n, topk + 1, np.int32))


def indexer_formula(q, q_scale, weights, keys, tables, cu_q, context_lens, max_k, dtype):
    """Scores with -inf past each row's visible keys and NaN where nothing is written."""
    scores = np.full((q.shape[0], max_k), np.nan)
    d = q.shape[2]
    qd = (q.reshape(q.shape[0], q.shape[1], -1, 128) * q_scale[..., None]).reshape(q.shape)
    for b in range(len(context_lens)):
        n_q, n_k = cu_q[b + 1] - cu_q[b], context_lens[b]
        slot = lambda s: tables[b, s // PAGE] * PAGE + s % PAGE  # noqa: E731
        k = np.stack([keys[slot(s)] for s in range(n_k)]).astype(dtype)
        for i in range(n_q):
            row = cu_q[b] + i
            visible = n_k - n_q + i + 1
            logits = qd[row].astype(dtype) @ k[:visible].T  # [heads, visible]
            scores[row, :visible] = weights[row].astype(dtype) @ np.maximum(logits, 0)
            scores[row, visible:n_k] = -np.inf
    assert d % 128 == 0
    return scores


def test_indexer_scores_match_formula(rng):
    heads, d = 4, 128
    n_q, context = [3, 1], [70, 5]  # a key range over two pages, and a short one
    cu_q = np.concatenate([[0], np.cumsum(n_q)]).astype(np.int32)
    context_lens = np.array(context, dtype=np.int32)
    tables = np.array([[3, 0], [1, -1]], dtype=np.int32)  # unused entries need not be pages
    slots = 4 * PAGE
    key_values = rng.standard_normal((slots, d)).astype(np.float32)
    key_cache, keys = quantize_rows(key_values)
    q_values = rng.standard_normal((cu_q[-1] * heads, d)).astype(np.float32)
    q_bytes, _ = quantize_rows(q_values)
    q = np.ascontiguousarray(q_bytes[:, :d]).reshape(cu_q[-1], heads, d)
    q_scale = np.ascontiguousarray(q_bytes[:, d:]).view(np.float32).reshape(cu_q[-1], heads, 1)
    weights = rng.standard_normal((cu_q[-1], heads)).astype(np.float32)
    max_k = 72
    scores = np.full((cu_q[-1], max_k), np.nan, dtype=np.float32)
    got = dsattn.indexer_scores(q, q_scale, weights, key_cache, tables, PAGE, cu_q, context_lens,
                                scores=scores)
    assert got is scores
    q_f = dsattn.fp8_e4m3_to_float32(np.ascontiguousarray(q)).astype(np.float64)
    args = (q_f, q_scale.astype(np.float64), weights, keys, tables, cu_q, context, max_k)
    ref = indexer_formula(*args, np.float64)
    plain = indexer_formula(*args, np.float32)
    finite = np.isfinite(ref)
    assert_within_tolerance(scores[finite], ref[finite], plain[finite], "indexer_scores")
    np.testing.assert_array_equal(scores[np.isneginf(ref)], -np.inf)
    assert np.isnan(scores[np.isnan(ref)]).all()  # columns past a request's keys: untouched

    # Rows seeing at most skip_rows_up_to keys are not written.
    skipped = np.full((cu_q[-1], max_k), np.nan, dtype=np.float32)
    dsattn.indexer_scores(q, q_scale, weights, key_cache, tables, PAGE, cu_q, context_lens,
                          skip_rows_up_to=68, scores=skipped)
    assert np.isnan(skipped[0]).all() and np.isnan(skipped[3]).all()  # 68 and 5 visible keys
    rows = np.isfinite(ref[1:3])
    assert_within_tolerance(skipped[1:3][rows], ref[1:3][rows], plain[1:3][rows],
                            "indexer_scores with skipped rows")
    # The same keys page-major (each page's values, then its scales): the same scores.
    pages = key_cache.reshape(-1, PAGE, key_cache.shape[1])
    paged = np.concatenate([pages[:, :, :d].reshape(len(pages), -1),
                            pages[:, :, d:].reshape(len(pages), -1)], axis=1).reshape(slots, -1)
    again = np.full((cu_q[-1], max_k), np.nan, dtype=np.float32)
    dsattn.indexer_scores(q, q_scale, weights, paged, tables, PAGE, cu_q, context_lens,
                          scores=again, key_layout="page-major")
    np.testing.assert_array_equal(again, scores)
    allocated = dsattn.indexer_scores(q, q_scale, weights, key_cache, tables, PAGE, cu_q,
                                      context_lens)
    assert allocated.shape == (cu_q[-1], 70)
    # An allocated output starts at -inf: cells the op does not write read as "not selectable".
    np.testing.assert_array_equal(allocated, np.where(np.isnan(scores), -np.inf, scores)[:, :70])


def topk_formula(scores, lengths, k):
    out = np.full((scores.shape[0], k), -1, dtype=np.int32)
    for r, n in enumerate(lengths):
        if n <= k:
            chosen = np.arange(n)
        else:
            # Largest first, the lower position first among equals; NaN below every number.
            keyed = np.where(np.isnan(scores[r, :n]), -np.inf, scores[r, :n])
            order = sorted(range(n), key=lambda s: (-keyed[s], np.isnan(scores[r, s]), s))
            chosen = np.sort(order[:k])
        out[r, :len(chosen)] = chosen
    return out


def test_topk_matches_formula(rng):
    rows, n, k = 6, 300, 16
    scores = rng.standard_normal((rows, n)).astype(np.float32)
    scores[1, 40:80] = 2.5  # ties across the boundary: lower positions win
    scores[2, ::3] = np.nan
    lengths = np.array([300, 200, 250, 16, 3, 0], dtype=np.int32)
    out = np.full((rows, k), 12345, dtype=np.int32)
    assert dsattn.topk(scores, lengths, k, out=out) is out
    np.testing.assert_array_equal(out, topk_formula(scores, lengths, k))
    np.testing.assert_array_equal(dsattn.topk(scores, lengths, k), out)
    strided = np.full((rows, 2 * n), np.nan, dtype=np.float32)
    strided[:, :n] = scores
    np.testing.assert_array_equal(dsattn.topk(strided[:, :n], lengths, k), out)


@pytest.mark.parametrize("cache", ["bf16", "fp8"])
def test_write_latent_writes_exactly_the_given_slots(rng, cache):
    n, rank, rope, num_slots = 6, 256, 32, 40
    latent = random_bf16(rng, (n, rank + rope))
    slots = rng.permutation(num_slots)[:n].astype(np.int32)
    if cache == "bf16":
        store = poisoned_bf16((num_slots, rank + rope))
        expected_rows = latent
    else:
        store = np.full((num_slots, rank + 4 * rank // 128 + 2 * rope), 0x7F, np.uint8)
        quantised, _ = quantize_rows(dsattn.bf16_to_float32(np.ascontiguousarray(latent[:, :rank])))
        expected_rows = np.concatenate([quantised, latent[:, rank:].view(np.uint8)], axis=1)
    before = store.copy()
    assert dsattn.write_latent(latent, slots, store, rank) is store
    np.testing.assert_array_equal(store[slots], expected_rows)
    untouched = np.setdiff1d(np.arange(num_slots), slots)
    np.testing.assert_array_equal(store[untouched], before[untouched])
    bad = slots.copy()
    bad[2] = num_slots
    with pytest.raises(ValueError, match=rf"slots\[2\] = {num_slots} is outside the cache's \[0, {num_slots}\)"):
        dsattn.write_latent(latent, bad, store, rank)
    bad[2] = slots[0]
    with pytest.raises(ValueError, match=r"slots\[2\] = .* is given twice"):
        dsattn.write_latent(latent, bad, store, rank)
    np.testing.assert_array_equal(store[untouched], before[untouched])


def test_write_index_keys_and_map_positions_to_slots(rng):
    keys = rng.integers(0, 255, (3, 132), dtype=np.uint8)
    store = np.zeros((64, 132), np.uint8)
    slots = np.array([5, 63, 17], np.int32)
    dsattn.write_index_keys(keys, slots, store)
    np.testing.assert_array_equal(store[slots], keys)
    assert not store[np.setdiff1d(np.arange(64), slots)].any()
    # Page-major, pages of 16: slot s's values at 128 * (s % 16) of its page, its scale after
    # the page's 16 values.
    paged = np.zeros((64, 132), np.uint8)
    dsattn.write_index_keys(keys, slots, paged, page_size=16, key_layout="page-major")
    with pytest.raises(ValueError, match="page_size: the page-major layout needs"):
        dsattn.write_index_keys(keys, slots, paged, key_layout="page-major")
    pages = paged.reshape(4, 16 * 132)
    for key, s in zip(keys, slots):
        page, offset = divmod(int(s), 16)
        np.testing.assert_array_equal(pages[page, 128 * offset:128 * (offset + 1)], key[:128])
        np.testing.assert_array_equal(pages[page, 2048 + 4 * offset:2048 + 4 * (offset + 1)],
                                      key[128:])
    assert np.count_nonzero(paged) == np.count_nonzero(keys)
    with pytest.raises(ValueError, match="whole pages of 48 slots, got 64"):
        dsattn.write_index_keys(keys, slots, paged, page_size=48, key_layout="page-major")

    page = 16
    tables = np.array([[3, 0, 2], [1, 4, 5]], np.int32)
    indices = np.array([[0, 17, 40, -1], [5, 16, 47, 33]], np.int32)
    row_request = np.array([0, 1], np.int32)
    expected = np.where(indices >= 0,
                        tables[row_request[:, None], np.maximum(indices, 0) // page] * page
                        + np.maximum(indices, 0) % page, -1)
    assert dsattn.map_positions_to_slots(indices, row_request, tables, page) is indices
    np.testing.assert_array_equal(indices, expected)


def hadamard(n):
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


@pytest.mark.parametrize("rotate", [False, True])
def test_quantize_index_keys_matches_formula(rng, rotate):
    n, d = 5, 128
    keys = random_bf16(rng, (n, d), 2.0)
    before = keys.copy()
    rows = dsattn.quantize_index_keys(keys, rotate=rotate)
    assert rows.dtype == np.uint8 and rows.shape == (n, d + 4)
    np.testing.assert_array_equal(keys, before)  # the caller's keys stay as they are
    scales = rows[:, d:].copy().view(np.float32)
    values = dsattn.fp8_e4m3_to_float32(np.ascontiguousarray(rows[:, :d])).astype(np.float64)
    dequantised = values * scales
    if rotate:
        # The rotation in f32 rounded to bf16, then e4m3 (3 mantissa bits): within half an e4m3
        # step of the rotated keys, plus the bf16 rounding.
        rotated = f64(keys) @ hadamard(d).T / np.sqrt(d)
        np.testing.assert_allclose(scales[:, 0], np.abs(rotated).max(axis=1) / 448, rtol=1e-2)
        err = np.abs(dequantised - rotated)
        assert (err <= np.abs(rotated) * (2.0**-4 + 2.0**-8) + scales * 2.0**-9).all()
        assert not np.allclose(dequantised, f64(keys), atol=0.1)  # it did rotate
    else:
        want, _ = quantize_rows(f64(keys).astype(np.float32))
        np.testing.assert_array_equal(rows, want)

    # Into a caller's buffer: a window of wider rows, written in place.
    store = np.full((n, 140), 7, np.uint8)
    assert dsattn.quantize_index_keys(keys, store[:, 4:136], rotate=rotate) is not None
    np.testing.assert_array_equal(store[:, 4:136], rows)
    assert (store[:, :4] == 7).all() and (store[:, 136:] == 7).all()
    with pytest.raises(ValueError, match=r"rows must have shape"):
        dsattn.quantize_index_keys(keys, np.zeros((n, 131), np.uint8))


def test_topk_slots_is_topk_then_the_slot_map(rng):
    rows, n, k, page = 5, 300, 40, 16
    scores = rng.standard_normal((rows, n)).astype(np.float32)
    lengths = np.array([300, 41, 40, 7, 0], np.int32)
    tables = rng.permutation(64).astype(np.int32)[: 2 * 19].reshape(2, 19)
    row_request = np.array([0, 1, 1, 0, 1], np.int32)
    positions = dsattn.topk(scores, lengths, k)
    expected = np.where(positions >= 0,
                        tables[row_request[:, None], np.maximum(positions, 0) // page] * page
                        + np.maximum(positions, 0) % page, -1)
    slots = dsattn.topk_slots(scores, lengths, k, row_request, tables, page)
    np.testing.assert_array_equal(slots, expected)
    assert (slots[3, 7:] == -1).all() and (slots[4] == -1).all()
    given = np.full((rows, k), 99, np.int32)
    assert dsattn.topk_slots(scores, lengths, k, row_request, tables, page, out=given) is given
    np.testing.assert_array_equal(given, expected)


@pytest.mark.parametrize("cache", ["bf16", "fp8"])
def test_cache_writes_skip_slot_minus_one(rng, cache):
    latent = random_bf16(rng, (3, 576))
    if cache == "bf16":
        table = np.zeros((5, 576), dtype=np.uint16)
    else:
        table = np.zeros((5, 656), dtype=np.uint8)
    dsattn.write_latent(latent, np.array([3, -1, 0], dtype=np.int32), table, 512)
    assert (table != 0).any(axis=1).tolist() == [True, False, False, True, False]
    keys = rng.integers(1, 255, size=(2, 132), dtype=np.uint8)
    key_cache = np.zeros((4, 132), dtype=np.uint8)
    dsattn.write_index_keys(keys, np.array([-1, 2], dtype=np.int32), key_cache)
    np.testing.assert_array_equal(key_cache[2], keys[1])
    assert not key_cache[[0, 1, 3]].any()
    with pytest.raises(ValueError, match=r"slots\[1\] = -2 is outside the cache's \[0, 4\) slots"):
        dsattn.write_index_keys(keys, np.array([0, -2], dtype=np.int32), key_cache)
