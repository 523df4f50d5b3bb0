"""The bindings on CUDA through PyTorch: the layer and the kernels against the CPU backend, the
caller's stream, zero-copy weights, mixed devices refused. Skipped without PyTorch, a GPU, or a
CUDA build of dsattn (scripts/python_gpu_check requires the latter two)."""

import numpy as np
import pytest

import dsattn
from helpers import BF16_AGREEMENT, poisoned_bf16, random_bf16, relative_difference, small_config
from torch_util import to_bits, to_torch

pytestmark = pytest.mark.cuda
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
if not dsattn.built_with_cuda():
    pytest.skip("dsattn was built without the CUDA backend", allow_module_level=True)

CUDA = "cuda:0"


def run_batch(layer, hidden, prefix_lens, extend_lens, decode_rows, device):
    """Prefill a batch, then one decode step per request; returns both outputs as bf16 bits."""
    tables = [layer.allocate(p + e + 1) for p, e in zip(prefix_lens, extend_lens)]
    x = to_torch(torch, hidden, device) if device != "cpu" else hidden
    d = to_torch(torch, decode_rows, device) if device != "cpu" else decode_rows
    pre = layer.prefill(x, prefix_lens, extend_lens, tables)
    dec = layer.decode(d, [p + e for p, e in zip(prefix_lens, extend_lens)], tables)
    bits = [to_bits(torch, r.out) if device != "cpu" else r.out for r in (pre, dec)]
    return bits, pre.paths


@pytest.mark.parametrize("policy", ["per-request", "mla"])
@pytest.mark.parametrize("kv_cache", ["bf16", "fp8"])
def test_layer_on_cuda_matches_cpu(rng, policy, kv_cache):
    c = small_config(32, kv_lora_rank=128)
    w = dsattn.LayerWeights.synthetic(c, 12)
    hidden = random_bf16(rng, (10 + 45, c.hidden_size))  # one request within index_topk, one past
    decode_rows = random_bf16(rng, (2, c.hidden_size))
    results = {}
    for device in ["cpu", CUDA]:
        layer = dsattn.AttentionLayer(c, w, kv_cache=kv_cache, policy=policy, num_pages=8,
                                      device=device)
        assert layer.device == device
        results[device] = run_batch(layer, hidden, [0, 0], [10, 45], decode_rows, device)
    (cpu_pre, cpu_dec), cpu_paths = results["cpu"]
    (gpu_pre, gpu_dec), gpu_paths = results[CUDA]
    assert gpu_paths == cpu_paths
    assert np.isfinite(dsattn.bf16_to_float32(gpu_pre)).all()
    assert relative_difference(gpu_pre, cpu_pre) <= BF16_AGREEMENT
    assert relative_difference(gpu_dec, cpu_dec) <= BF16_AGREEMENT


def test_layer_runs_on_the_callers_stream(rng):
    c = small_config(32)
    w = dsattn.LayerWeights.synthetic(c, 13, device=CUDA)
    hidden = random_bf16(rng, (40, c.hidden_size))
    reference = dsattn.AttentionLayer(c, w, num_pages=4)
    expected = to_bits(torch, reference.prefill(to_torch(torch, hidden, CUDA), [0], [40],
                                                [reference.allocate(40)]).out)
    source = to_torch(torch, hidden, CUDA)
    for explicit in [False, True]:
        layer = dsattn.AttentionLayer(c, w, num_pages=4)
        table = layer.allocate(40)
        x = torch.full((40, c.hidden_size), float("nan"), dtype=torch.bfloat16, device=CUDA)
        stream = torch.cuda.Stream()
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            # The input is written late on `stream`: a forward on any other stream reads NaN.
            torch.cuda._sleep(100_000_000)
            x.copy_(source)
            if explicit:
                out = torch.empty_like(x)
                with torch.cuda.stream(torch.cuda.default_stream()):
                    layer.prefill(x, [0], [40], [table], out=out, stream=stream.cuda_stream)
            else:
                out = layer.prefill(x, [0], [40], [table]).out
        stream.synchronize()
        np.testing.assert_array_equal(to_bits(torch, out), expected, err_msg=f"explicit={explicit}")


def test_kernels_on_cuda_match_cpu(rng):
    heads, d_qk, d_v = 4, 192, 128
    n_q = [5, 64]
    n_k = [9, 64]
    cu_q = np.concatenate([[0], np.cumsum(n_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(n_k)]).astype(np.int32)
    q = random_bf16(rng, (cu_q[-1], heads, d_qk))
    k = random_bf16(rng, (cu_k[-1], heads, d_qk))
    v = random_bf16(rng, (cu_k[-1], heads, d_v))
    cpu = dsattn.mha_prefill(q, k, v, cu_q, cu_k, 64, d_qk**-0.5)
    g = [to_torch(torch, a, CUDA) for a in (q, k, v, cu_q, cu_k)]
    gpu = dsattn.mha_prefill(*g, 64, d_qk**-0.5)
    assert gpu.is_cuda and gpu.dtype == torch.bfloat16
    assert relative_difference(to_bits(torch, gpu), cpu) <= BF16_AGREEMENT

    slots, topk = 200, 32
    latent = random_bf16(rng, (slots, 576))
    q_mla = random_bf16(rng, (7, 16, 576))
    indices = np.stack([rng.permutation(slots)[:topk] for _ in range(7)]).astype(np.int32)
    indices[2, 10:] = -1
    cpu = dsattn.sparse_mla(q_mla, latent, indices, 576**-0.5)
    out = to_torch(torch, poisoned_bf16((7, 16, 512)), CUDA)
    dsattn.sparse_mla(*(to_torch(torch, a, CUDA) for a in (q_mla, latent, indices)), 576**-0.5,
                      out=out)
    assert relative_difference(to_bits(torch, out), cpu) <= BF16_AGREEMENT

    scores = rng.standard_normal((6, 3000)).astype(np.float32)
    lengths = np.array([3000, 2500, 2048, 100, 1, 0], dtype=np.int32)
    cpu = dsattn.topk(scores, lengths, 2048)
    gpu = dsattn.topk(to_torch(torch, scores, CUDA), to_torch(torch, lengths, CUDA), 2048)
    np.testing.assert_array_equal(gpu.cpu().numpy(), cpu)


def test_indexer_scores_on_cuda_match_cpu(rng):
    heads, d, page = 8, 128, 64
    n_q, context = [4, 1], [150, 3000]
    cu_q = np.concatenate([[0], np.cumsum(n_q)]).astype(np.int32)
    context_lens = np.array(context, dtype=np.int32)
    tables = np.stack([rng.permutation(60)[:48] for _ in range(2)]).astype(np.int32)
    key_cache = np.zeros((60 * page, 132), np.uint8)
    key_cache[:, :128] = dsattn.float32_to_fp8_e4m3(
        rng.standard_normal((60 * page, 128)).astype(np.float32))
    key_cache[:, 128:] = rng.uniform(0.01, 0.1, (60 * page, 1)).astype(np.float32).view(np.uint8)
    q = dsattn.float32_to_fp8_e4m3(rng.standard_normal((5, heads, d)).astype(np.float32))
    q_scale = rng.uniform(0.01, 0.1, (5, heads, 1)).astype(np.float32)
    weights = rng.standard_normal((5, heads)).astype(np.float32)
    args = (q, q_scale, weights, key_cache, tables)
    meta = (cu_q, context_lens)
    cpu = dsattn.indexer_scores(*args, page, *meta)
    gpu = dsattn.indexer_scores(*(to_torch(torch, a, CUDA) for a in args), page,
                                *(to_torch(torch, a, CUDA) for a in meta)).cpu().numpy()
    np.testing.assert_array_equal(np.isneginf(gpu), np.isneginf(cpu))
    finite = np.isfinite(cpu)
    np.testing.assert_allclose(gpu[finite], cpu[finite], rtol=1e-4,
                               atol=1e-5 * np.abs(cpu[finite]).max())


def test_weights_and_outputs_are_zero_copy_on_cuda(rng):
    c = small_config()
    w = dsattn.LayerWeights.synthetic(c, 14, device=CUDA)
    assert w.device == CUDA
    first, second = w.tensors("torch"), w.tensors("torch")
    for name, t in first.items():
        assert t.is_cuda and t.dtype == torch.bfloat16
        assert t.data_ptr() == second[name].data_ptr(), name
    with pytest.raises(ValueError, match="NumPy holds CPU arrays only"):
        w.tensors("numpy")
    copied = dsattn.LayerWeights.from_tensors(c, first)
    assert copied.device == CUDA
    for name, t in copied.tensors("torch").items():
        assert torch.equal(t, first[name]) and t.data_ptr() != first[name].data_ptr(), name
    layer = dsattn.AttentionLayer(c, w, num_pages=4)
    x = to_torch(torch, random_bf16(rng, (6, c.hidden_size)), CUDA)
    out = torch.full_like(x, float("nan"))
    result = layer.prefill(x, [0], [6], torch.tensor([layer.allocate(6)], dtype=torch.int32,
                                                     device=CUDA), out=out)
    assert result.out is out and torch.isfinite(out.float()).all()


def test_mixed_devices_are_refused(rng):
    c = small_config()
    layer = dsattn.AttentionLayer(c, dsattn.LayerWeights.synthetic(c, 15), num_pages=4,
                                  device=CUDA)
    hidden = random_bf16(rng, (4, c.hidden_size))
    table = [layer.allocate(4)]
    with pytest.raises(ValueError, match=r"hidden: expected a tensor on cuda:0 \(the layer's "
                                         r"device\), got one on cpu"):
        layer.prefill(hidden, [0], [4], table)
    with pytest.raises(ValueError, match=r"out: expected a tensor on cuda:0"):
        layer.prefill(to_torch(torch, hidden, CUDA), [0], [4], table, out=poisoned_bf16((4, 96)))
    q = random_bf16(rng, (4, 2, 16))
    with pytest.raises(ValueError, match=r"k: expected a tensor on cuda:0 \(q's device\), got "
                                         r"one on cpu"):
        dsattn.mha_prefill(to_torch(torch, q, CUDA), q, q, to_torch(torch, np.array([0, 4], np.int32), CUDA),
                           to_torch(torch, np.array([0, 4], np.int32), CUDA), 4, 0.25)


@pytest.mark.parametrize("kv_cache", ["bf16", "fp8"])
def test_decode_step_replays_in_a_torch_cuda_graph(rng, kv_cache):
    """A decode step captured with torch.cuda.graph and replayed with new lengths written into
    the same tensors gives the layer's eager decode under "mla" bit for bit, step after step,
    contexts crossing index_topk (29 -> 34)."""
    c = small_config(32, kv_lora_rank=128)
    w = dsattn.LayerWeights.synthetic(c, 31, device=CUDA)
    prompts, max_context, steps = [6, 29, 40, 90], 112, 6
    prompt = to_torch(torch, random_bf16(rng, (sum(prompts), c.hidden_size)), CUDA)
    layers, tables = [], []
    for _ in range(2):
        layer = dsattn.AttentionLayer(c, w, kv_cache=kv_cache, policy="mla", num_pages=32,
                                      page_size=16)
        t = [layer.allocate(max_context) for _ in prompts]
        layer.prefill(prompt, [0] * len(prompts), prompts, t)
        layers.append(layer)
        tables.append(t)
    eager, stepped = layers
    step = stepped.decode_step(len(prompts), max_context)
    static_hidden = torch.empty((len(prompts), c.hidden_size), dtype=torch.bfloat16, device=CUDA)
    static_lens = torch.tensor(prompts, dtype=torch.int32, device=CUDA)
    static_tables = torch.tensor(tables[1], dtype=torch.int32, device=CUDA)
    static_out = torch.empty_like(static_hidden)
    inputs = [to_torch(torch, random_bf16(rng, (len(prompts), c.hidden_size)), CUDA)
              for _ in range(steps)]

    # Warm-up on a side stream (torch.cuda.graph's recipe): step 0, eagerly.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        static_hidden.copy_(inputs[0])
        step.run(static_hidden, static_lens, static_tables, out=static_out)
    torch.cuda.current_stream().wait_stream(side)
    expected = eager.decode(inputs[0], prompts, tables[0]).out
    np.testing.assert_array_equal(to_bits(torch, static_out), to_bits(torch, expected))

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step.run(static_hidden, static_lens, static_tables, out=static_out)
    for s in range(1, steps):
        context = [n + s for n in prompts]
        static_lens.copy_(torch.tensor(context, dtype=torch.int32))
        static_hidden.copy_(inputs[s])
        static_out.fill_(float("nan"))
        graph.replay()
        expected = eager.decode(inputs[s], context, tables[0]).out
        np.testing.assert_array_equal(to_bits(torch, static_out), to_bits(torch, expected),
                                      err_msg=f"step {s}")
    step.check()
    # A length past max_context inside a replay is reported, not followed.
    static_lens.copy_(torch.tensor([max_context] * len(prompts), dtype=torch.int32))
    graph.replay()
    with pytest.raises(ValueError, match="left no room"):
        step.check()


def test_a_cold_decode_step_is_not_captured(rng):
    c = small_config(32)
    w = dsattn.LayerWeights.synthetic(c, 32, device=CUDA)
    layer = dsattn.AttentionLayer(c, w, policy="mla", num_pages=4)
    step = layer.decode_step(1, 64)
    hidden = torch.zeros((1, c.hidden_size), dtype=torch.bfloat16, device=CUDA)
    lens = torch.zeros(1, dtype=torch.int32, device=CUDA)
    tables = torch.tensor([layer.allocate(64)], dtype=torch.int32, device=CUDA)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(ValueError, match="run the step once outside the capture first"):
        with torch.cuda.graph(graph):
            step.run(hidden, lens, tables)
    assert not step.warm


def test_other_calls_refuse_a_capture(rng):
    """Only DecodeStep.run may be captured: a kernel call inside torch.cuda.graph raises (its
    temporaries come from the general allocator) and leaves the capture to end cleanly."""
    scores = torch.randn((4, 300), device=CUDA)
    lengths = torch.full((4,), 300, dtype=torch.int32, device=CUDA)
    expected = dsattn.topk(scores, lengths, 8)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(ValueError, match="cannot be captured in a CUDA graph"):
        with torch.cuda.graph(graph):
            dsattn.topk(scores, lengths, 8)
    assert torch.equal(dsattn.topk(scores, lengths, 8), expected)
