"""DecodeStep on the CPU: steps driven by lengths and block tables in the caller's tensors give the
layer's own decode and verify under policy "mla" bit for bit, across index_topk; lengths and pages
outside the cache are made harmless and reported by check(); bad arguments are refused."""

import numpy as np
import pytest

import dsattn
from helpers import random_bf16, small_config

PROMPTS = [5, 30, 45]  # contexts below, crossing (30 -> 33) and above index_topk = 32
MAX_CONTEXT = 64


def twin_layers(kv_cache, page_size, seed=21):
    """Two layers with the same weights and the same prompts prefilled, and their tables."""
    c = small_config(32, kv_lora_rank=128)  # FP8 rows need blocks of 128
    w = dsattn.LayerWeights.synthetic(c, seed)
    rng = np.random.default_rng(seed)
    prompt = random_bf16(rng, (sum(PROMPTS), c.hidden_size))
    layers, tables = [], []
    for _ in range(2):
        layer = dsattn.AttentionLayer(c, w, kv_cache=kv_cache, policy="mla", num_pages=32,
                                      page_size=page_size)
        t = [layer.allocate(MAX_CONTEXT) for _ in PROMPTS]
        layer.prefill(prompt, [0] * len(PROMPTS), PROMPTS, t)
        layers.append(layer)
        tables.append(t)
    return c, layers, tables


@pytest.mark.parametrize("kv_cache,page_size", [("bf16", 16), ("fp8", 64)])
@pytest.mark.parametrize("tokens", [1, 2])
def test_steps_match_the_layers_decode(rng, kv_cache, page_size, tokens):
    c, (eager, stepped), (eager_tables, step_tables) = twin_layers(kv_cache, page_size)
    step = stepped.decode_step(len(PROMPTS), MAX_CONTEXT, tokens_per_request=tokens)
    assert step.max_pages == -(-MAX_CONTEXT // page_size)
    assert not step.warm
    block_tables = np.array(step_tables, dtype=np.int32)
    context = list(PROMPTS)
    for s in range(4):
        hidden = random_bf16(rng, (len(PROMPTS) * tokens, c.hidden_size))
        if tokens == 1:
            expected = eager.decode(hidden, context, eager_tables).out
        else:
            expected = eager.verify(hidden, context, tokens, eager_tables).out
        out = np.full_like(hidden, 0x7FC0)  # NaN bits: every row must be written
        got = step.run(hidden, np.array(context, dtype=np.int32), block_tables, out=out)
        assert got is out
        np.testing.assert_array_equal(out, expected, err_msg=f"step {s}")
        context = [n + tokens for n in context]
    assert step.warm
    step.check()


def test_bad_lengths_and_pages_are_reported_not_followed(rng):
    c, (_, layer), (_, tables) = twin_layers("bf16", 16)
    step = layer.decode_step(len(PROMPTS), MAX_CONTEXT)
    block_tables = np.array(tables, dtype=np.int32)
    hidden = random_bf16(rng, (len(PROMPTS), c.hidden_size))
    for lengths in ([-2, 30, 45], [5, MAX_CONTEXT, 45]):
        out = step.run(hidden, np.array(lengths, dtype=np.int32), block_tables)
        assert out.shape == hidden.shape
        with pytest.raises(ValueError, match="prefix length was below -1 or left no room"):
            step.check()
        step.check()  # the record was cleared
    bad = block_tables.copy()
    bad[1, 1] = layer.num_pages  # a page the request reads
    bad[2, 3] = -5  # the page its new token falls on (position 45 at page size 16)
    step.run(hidden, np.array(PROMPTS, dtype=np.int32), bad)
    with pytest.raises(ValueError, match=r"block-table entry .* outside the cache's pages \[0, 32\)"):
        step.check()
    # Entries past a request's context are never read: no fault.
    unused = block_tables.copy()
    unused[0, 3] = 10**6
    step.run(hidden, np.array(PROMPTS, dtype=np.int32), unused)
    step.check()


def test_bad_arguments_are_refused(rng):
    c, (_, layer), (_, tables) = twin_layers("bf16", 16)
    with pytest.raises(ValueError, match="max_context must be >= tokens_per_request"):
        layer.decode_step(3, 1, tokens_per_request=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        layer.decode_step(0, MAX_CONTEXT)
    step = layer.decode_step(len(PROMPTS), MAX_CONTEXT)
    hidden = random_bf16(rng, (len(PROMPTS), c.hidden_size))
    lengths = np.array(PROMPTS, dtype=np.int32)
    block_tables = np.array(tables, dtype=np.int32)
    with pytest.raises(ValueError, match="hidden"):
        step.run(hidden[:2], lengths, block_tables)
    with pytest.raises(ValueError, match="prefix_lens"):
        step.run(hidden, lengths[:2], block_tables)
    with pytest.raises(TypeError, match="prefix_lens"):
        step.run(hidden, lengths.astype(np.int64), block_tables)
    with pytest.raises(ValueError, match="block_tables: expected at least 4 pages a row"):
        step.run(hidden, lengths, block_tables[:, :3])
    assert not step.warm


def test_only_valid_requests_write_the_cache(rng):
    """Clamped lengths, bad pages and inactive rows (prefix -1) write nothing: on the caller's
    cache, exactly the valid requests' new slots change."""
    c = small_config(32, kv_lora_rank=128)
    w = dsattn.LayerWeights.synthetic(c, 22)
    latent = np.zeros((12, 16, c.kv_lora_rank + c.qk_rope_head_dim), dtype=np.uint16)
    index_keys = np.zeros((12, 16, 132), dtype=np.uint8)
    layer = dsattn.AttentionLayer(c, w, policy="mla", latent_cache=latent,
                                  index_key_cache=index_keys)
    tables = np.arange(12, dtype=np.int32).reshape(3, 4)
    layer.prefill(random_bf16(rng, (sum(PROMPTS), c.hidden_size)), [0, 0, 0], PROMPTS,
                  tables.tolist())
    step = layer.decode_step(3, MAX_CONTEXT)

    def written(lengths, block_tables, faults):
        before = (latent.copy(), index_keys.copy())
        hidden = random_bf16(rng, (3, c.hidden_size))  # new values: every write shows
        step.run(hidden, np.array(lengths, dtype=np.int32), block_tables)
        if faults:
            with pytest.raises(ValueError, match=faults):
                step.check()
        else:
            step.check()
        changed = set()
        for cache, old in zip((latent, index_keys), before):
            rows = (cache != old).reshape(12 * 16, -1).any(axis=1)
            changed |= set(np.flatnonzero(rows).tolist())
        return changed

    slot_of_request_1 = tables[1, 30 // 16] * 16 + 30 % 16
    assert written([-4, 30, MAX_CONTEXT], tables, "left no room") == {slot_of_request_1}
    assert written([-1, 30, -1], tables, None) == {slot_of_request_1}
    bad = tables.copy()
    bad[2, 45 // 16] = 99  # the page request 2's new token falls on
    assert written([5, 30, 45], bad, "outside the cache's pages") == {
        tables[0, 0] * 16 + 5, slot_of_request_1}
