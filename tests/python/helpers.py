"""Inputs, bf16 bit handling and the tolerance scheme shared by the dsattn Python tests."""

import numpy as np

import dsattn

# bf16 NaN: outputs are filled with it before a call, so that an element the call does not write
# is caught.
BF16_NAN = 0x7FC0

# Two bf16 results agree to bf16 rounding: a few units in the last place of the largest value.
BF16_AGREEMENT = 1.0 / 64

# Default atol of the tolerance scheme (reference/compare.h): 1e-3 of the reference's largest
# magnitude.
RELATIVE_ATOL = 1e-3


def small_config(index_topk=32, **fields):
    """Every dimension of the model shrunk (as the C++ layer tests' small_config), the indexer
    keeping its real head dim (Hadamard and FP8 blocks of 128)."""
    base = dict(
        hidden_size=96,
        num_heads=2,
        q_lora_rank=48,
        kv_lora_rank=64,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        index_n_heads=4,
        index_head_dim=128,
        index_topk=index_topk,
    )
    base.update(fields)
    return dsattn.AttentionConfig(**base)


def random_bf16(rng, shape, std=1.0):
    """uint16 bf16 bits of uniform values with standard deviation `std` (never all zero)."""
    values = rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), size=shape).astype(np.float32) * std
    return dsattn.float32_to_bf16(values)


def poisoned_bf16(shape):
    return np.full(shape, BF16_NAN, dtype=np.uint16)


def f64(bits):
    """bf16 bits (uint16) as float64."""
    return dsattn.bf16_to_float32(np.ascontiguousarray(bits)).astype(np.float64)


def round_bf16(values):
    """float values rounded to bf16, back as float64 (a bf16 store of an f32 result)."""
    return f64(dsattn.float32_to_bf16(np.ascontiguousarray(values, dtype=np.float32)))


def relative_difference(a_bits, b_bits):
    """max |a - b| / max |b| of two bf16 arrays."""
    a, b = f64(a_bits), f64(b_bits)
    scale = np.abs(b).max()
    diff = np.abs(a - b).max()
    return diff / scale if scale > 0 else diff


def assert_within_tolerance(out, ref, plain, what):
    """FlashAttention's scheme (reference/compare.h): out is finite and
    max|out - ref| <= 2 * max|plain - ref| + RELATIVE_ATOL * max|ref|, where `plain` is the same
    computation in the output's precision (f32 arithmetic, bf16 storage)."""
    out, ref, plain = (np.asarray(x, dtype=np.float64) for x in (out, ref, plain))
    assert out.shape == ref.shape == plain.shape, (out.shape, ref.shape, plain.shape)
    assert np.isfinite(out).all(), f"{what}: non-finite output at {np.argwhere(~np.isfinite(out))[:5]}"
    error = np.abs(out - ref)
    plain_error = np.abs(plain - ref).max()
    bound = 2 * plain_error + RELATIVE_ATOL * np.abs(ref).max()
    worst = np.unravel_index(np.argmax(error), error.shape)
    assert error.max() <= bound, (
        f"{what}: max error {error.max():.3g} at {worst} (out {out[worst]:.6g}, ref "
        f"{ref[worst]:.6g}) exceeds 2 * {plain_error:.3g} + atol = {bound:.3g}"
    )
