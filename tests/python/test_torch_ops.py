"""dsattn.torch_ops: every kernel as a torch.library operator. torch.library.opcheck passes on
each (schema, fake implementation, declared mutations), each equals the plain kernel bit for
bit, and a selection-plus-attention pipeline compiles with torch.compile(fullgraph=True) and
gives the eager result. On the CPU, and on CUDA where there is a GPU (skipped without PyTorch)."""

import numpy as np
import pytest

import dsattn
from helpers import random_bf16
from torch_util import to_torch

torch = pytest.importorskip("torch")
torch_ops = pytest.importorskip("dsattn.torch_ops")

PAGE, HEADS, DIM, K = 16, 4, 128, 8


def devices():
    have_cuda = torch.cuda.is_available() and dsattn.built_with_cuda()
    return ["cpu"] + (["cuda"] if have_cuda else [])


def fp8_rows(rng, n, d, device):
    """[n, d + 4 * d / 128] uint8 rows (e4m3 values, f32 scales) of random values."""
    keys = to_torch(torch, random_bf16(rng, (n, d)), device)
    return torch.ops.dsattn.quantize_index_keys(keys, False)


def selection_inputs(rng, device):
    """Two requests (3 rows over 40 keys, 2 rows over 20) with paged index keys and latents."""
    n_q, context = [3, 2], [40, 20]
    cu_q = torch.tensor([0, 3, 5], dtype=torch.int32, device=device)
    context_lens = torch.tensor(context, dtype=torch.int32, device=device)
    tables = torch.tensor([[2, 0, 5], [4, 1, 3]], dtype=torch.int32, device=device)
    slots = 6 * PAGE
    key_cache = fp8_rows(rng, slots, DIM, device)
    q_rows = fp8_rows(rng, 5 * HEADS, DIM, device)
    q_index = q_rows[:, :DIM].contiguous().view(5, HEADS, DIM)
    q_scale = q_rows[:, DIM:].contiguous().view(torch.float32).view(5, HEADS, 1)
    weights = torch.from_numpy(rng.standard_normal((5, HEADS)).astype(np.float32)).to(device)
    row_request = torch.tensor([0, 0, 0, 1, 1], dtype=torch.int32, device=device)
    lengths = torch.tensor([38, 39, 40, 19, 20], dtype=torch.int32, device=device)
    q = to_torch(torch, random_bf16(rng, (5, 2, 96)), device)
    kv = to_torch(torch, random_bf16(rng, (slots, 96)), device)
    return dict(q_index=q_index, q_scale=q_scale, weights=weights, key_cache=key_cache,
                tables=tables, cu_q=cu_q, context_lens=context_lens, row_request=row_request,
                lengths=lengths, q=q, kv=kv)


def select_and_attend(x):
    scores = torch.ops.dsattn.indexer_scores(x["q_index"], x["q_scale"], x["weights"],
                                             x["key_cache"], x["tables"], PAGE, x["cu_q"],
                                             x["context_lens"], 48)
    slots = torch.ops.dsattn.topk_slots(scores, x["lengths"], K, x["row_request"], x["tables"],
                                        PAGE)
    out, lse = torch.ops.dsattn.sparse_mla(x["q"], x["kv"], slots, 0.125, 64)
    return out.float() * 2, lse, slots


def bits(t):
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


@pytest.mark.parametrize("device", devices())
def test_each_operator_passes_opcheck_and_equals_the_kernel(rng, device):
    x = selection_inputs(rng, device)
    scores = torch.ops.dsattn.indexer_scores(x["q_index"], x["q_scale"], x["weights"],
                                             x["key_cache"], x["tables"], PAGE, x["cu_q"],
                                             x["context_lens"], 48)
    plain = dsattn.indexer_scores(x["q_index"], x["q_scale"], x["weights"], x["key_cache"],
                                  x["tables"], PAGE, x["cu_q"], x["context_lens"],
                                  scores=torch.full((5, 48), float("-inf"), device=device))
    assert torch.equal(scores, plain)
    slots = torch.ops.dsattn.topk_slots(scores, x["lengths"], K, x["row_request"], x["tables"],
                                        PAGE)
    assert torch.equal(slots, dsattn.topk_slots(scores, x["lengths"], K, x["row_request"],
                                                x["tables"], PAGE))
    positions = torch.ops.dsattn.topk(scores, x["lengths"], K)
    assert torch.equal(positions, dsattn.topk(scores, x["lengths"], K))
    out, lse = torch.ops.dsattn.sparse_mla(x["q"], x["kv"], slots, 0.125, 64)
    plain_out, plain_lse = dsattn.sparse_mla(x["q"], x["kv"], slots, 0.125, 64, return_lse=True)
    assert torch.equal(bits(out), bits(plain_out)) and torch.equal(lse, plain_lse)

    cu = torch.tensor([0, 3, 8], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 5, 10], dtype=torch.int32, device=device)
    mq = to_torch(torch, random_bf16(rng, (8, 2, 32)), device)
    mk = to_torch(torch, random_bf16(rng, (10, 2, 32)), device)
    mv = to_torch(torch, random_bf16(rng, (10, 2, 16)), device)
    mo, ml = torch.ops.dsattn.mha_prefill(mq, mk, mv, cu, cu_k, 5, 0.2)
    po, pl = dsattn.mha_prefill(mq, mk, mv, cu, cu_k, 5, 0.2, return_lse=True)
    assert torch.equal(bits(mo), bits(po)) and torch.equal(ml, pl)
    picked = torch.tensor([[0, 2], [1, -1], [0, 3], [4, 0], [2, -1], [0, 1], [3, 2], [4, -1]],
                          dtype=torch.int32, device=device)
    key_mask = torch.ops.dsattn.selection_mask(picked, 1)
    assert torch.equal(key_mask, dsattn.selection_mask(picked, 1))
    masked_o, masked_l = torch.ops.dsattn.mha_prefill(mq, mk, mv, cu, cu_k, 5, 0.2, key_mask)
    po, pl = dsattn.mha_prefill(mq, mk, mv, cu, cu_k, 5, 0.2, return_lse=True, key_mask=key_mask)
    assert torch.equal(bits(masked_o), bits(po)) and torch.equal(masked_l, pl)

    latent = to_torch(torch, random_bf16(rng, (3, 96)), device)
    new_slots = torch.tensor([7, 0, 33], dtype=torch.int32, device=device)
    cache = torch.zeros((40, 96), dtype=torch.bfloat16, device=device)
    torch.ops.dsattn.write_latent(latent, new_slots, cache, 64)
    assert torch.equal(bits(cache[new_slots.long()]), bits(latent))
    key_rows = fp8_rows(rng, 3, DIM, device)
    key_cache = torch.zeros((40, DIM + 4), dtype=torch.uint8, device=device)
    torch.ops.dsattn.write_index_keys(key_rows, new_slots, key_cache)
    assert torch.equal(key_cache[new_slots.long()], key_rows)
    mapped = positions.clone()
    torch.ops.dsattn.map_positions_to_slots(mapped, x["row_request"], x["tables"], PAGE)
    assert torch.equal(mapped, slots)

    checks = [
        (torch.ops.dsattn.indexer_scores.default,
         (x["q_index"], x["q_scale"], x["weights"], x["key_cache"], x["tables"], PAGE, x["cu_q"],
          x["context_lens"], 48)),
        (torch.ops.dsattn.topk.default, (scores, x["lengths"], K)),
        (torch.ops.dsattn.topk_slots.default,
         (scores, x["lengths"], K, x["row_request"], x["tables"], PAGE)),
        (torch.ops.dsattn.sparse_mla.default, (x["q"], x["kv"], slots, 0.125, 64)),
        (torch.ops.dsattn.mha_prefill.default, (mq, mk, mv, cu, cu_k, 5, 0.2)),
        (torch.ops.dsattn.mha_prefill.default, (mq, mk, mv, cu, cu_k, 5, 0.2, key_mask)),
        (torch.ops.dsattn.selection_mask.default, (picked, 1)),
        (torch.ops.dsattn.quantize_index_keys.default,
         (to_torch(torch, random_bf16(rng, (3, DIM)), device), True)),
        (torch.ops.dsattn.write_latent.default, (latent, new_slots, cache.clone(), 64)),
        (torch.ops.dsattn.write_index_keys.default, (key_rows, new_slots, key_cache.clone())),
        (torch.ops.dsattn.map_positions_to_slots.default,
         (positions.clone(), x["row_request"], x["tables"], PAGE)),
    ]
    for op, args in checks:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", devices())
def test_a_pipeline_compiles_with_fullgraph(rng, device):
    torch._dynamo.reset()
    x = selection_inputs(rng, device)
    expected = select_and_attend(x)
    compiled = torch.compile(select_and_attend, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    for name, a, b in zip(["out", "lse", "slots"], got, expected):
        assert torch.equal(a, b), name
