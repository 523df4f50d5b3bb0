"""dsattn: DeepSeek Sparse Attention (DeepSeek-V3.2's MLA with a lightning indexer choosing the
top-2048 keys per query), along the cheapest exact path per request, from Python.

Tensors go in and out through DLPack without copies: NumPy, PyTorch, CuPy, on the CPU or a CUDA
device. NumPy has no bfloat16 or float8, so bf16 arguments also take uint16 arrays of bf16 bits
(see float32_to_bf16 and bf16_to_float32) and fp8 e4m3 ones uint8 arrays.

Errors: bad arguments and configurations raise ValueError (wrong dtypes TypeError) naming the
argument, what was expected and what was given; a full cache raises CacheFull, a bad
checkpoint CheckpointError, what this build cannot run NotImplementedError, CUDA failures
RuntimeError.
"""

from ._core import (
    AttentionConfig,
    CacheFull,
    CheckpointError,
    ForwardPlan,
    LayerWeights,
    bf16_to_float32,
    built_with_cuda,
    cuda_device_count,
    float32_to_bf16,
    float32_to_fp8_e4m3,
    fp8_e4m3_to_float32,
    plan,
    predict_costs,
)
from .kernels import (
    indexer_scores,
    map_positions_to_slots,
    mha_prefill,
    quantize_index_keys,
    selection_mask,
    sparse_mla,
    topk,
    topk_slots,
    write_index_keys,
    write_latent,
)
from .layer import AttentionLayer, DecodeStep, LayerOutput

__version__ = "0.1.0"

__all__ = [
    "AttentionConfig",
    "AttentionLayer",
    "CacheFull",
    "CheckpointError",
    "DecodeStep",
    "ForwardPlan",
    "LayerOutput",
    "LayerWeights",
    "bf16_to_float32",
    "built_with_cuda",
    "cuda_device_count",
    "float32_to_bf16",
    "float32_to_fp8_e4m3",
    "fp8_e4m3_to_float32",
    "indexer_scores",
    "map_positions_to_slots",
    "mha_prefill",
    "plan",
    "predict_costs",
    "quantize_index_keys",
    "selection_mask",
    "sparse_mla",
    "topk",
    "topk_slots",
    "write_index_keys",
    "write_latent",
]
