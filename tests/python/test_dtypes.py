"""bf16 and fp8 e4m3 conversions against their definitions, computed here in float64."""

import numpy as np

import dsattn


def e4m3_table():
    """The value of every e4m3fn bit pattern, from its definition (bias 7, 3 mantissa bits, no
    infinities, 0x7f/0xff NaN)."""
    values = np.empty(256)
    for bits in range(256):
        sign = -1.0 if bits & 0x80 else 1.0
        exponent, mantissa = (bits >> 3) & 0xF, bits & 0x7
        if exponent == 0xF and mantissa == 0x7:
            values[bits] = np.nan
        elif exponent == 0:
            values[bits] = sign * mantissa / 8 * 2.0**-6
        else:
            values[bits] = sign * (1 + mantissa / 8) * 2.0 ** (exponent - 7)
    return values


def test_bf16_widening_is_the_upper_half_of_float32(rng):
    bits = rng.integers(0, 1 << 16, size=(3, 50), dtype=np.uint16)
    widened = dsattn.bf16_to_float32(bits)
    assert widened.shape == (3, 50) and widened.dtype == np.float32
    expected = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(widened.view(np.uint32), expected.view(np.uint32))


def test_float32_to_bf16_rounds_to_nearest_even(rng):
    values = (rng.standard_normal(20000) * 10.0 ** rng.integers(-30, 30, 20000)).astype(np.float32)
    # Exact ties: the lower 16 bits are 0x8000, with odd and even upper halves.
    ties = ((rng.integers(0x0080, 0x7F00, 200, dtype=np.uint32) << 16) | 0x8000).view(np.float32)
    values = np.concatenate([values, ties, -ties])
    rounded = dsattn.float32_to_bf16(values).astype(np.uint32)

    down = values.view(np.uint32) >> 16  # toward zero
    up = down + 1
    x = values.astype(np.float64)
    err_down = np.abs(x - (down << 16).view(np.float32).astype(np.float64))
    err_up = np.abs(x - (up << 16).view(np.float32).astype(np.float64))
    expected = np.where(err_down < err_up, down, up)
    expected = np.where(err_down == err_up, np.where(down % 2 == 0, down, up), expected)
    np.testing.assert_array_equal(rounded, expected)


def test_float32_to_bf16_keeps_nan_and_infinities():
    special = np.array([np.nan, np.inf, -np.inf, 3.4e38, -0.0], dtype=np.float32)
    back = dsattn.bf16_to_float32(dsattn.float32_to_bf16(special))
    assert np.isnan(back[0])
    assert back[1] == np.inf and back[2] == -np.inf
    assert back[3] == np.inf  # past bf16's largest finite value, rounding goes to infinity
    assert back[4] == 0 and np.signbit(back[4])


def test_fp8_widening_matches_the_definition():
    widened = dsattn.fp8_e4m3_to_float32(np.arange(256, dtype=np.uint8))
    np.testing.assert_array_equal(widened.astype(np.float64), e4m3_table())


def test_float32_to_fp8_rounds_to_nearest_even_and_saturates(rng):
    table = e4m3_table()
    finite = np.flatnonzero(np.isfinite(table))
    values = np.concatenate(
        [
            (rng.standard_normal(4000) * 10.0 ** rng.integers(-4, 3, 4000)).astype(np.float32),
            # Midpoints between neighbours: exact ties.
            ((np.sort(table[finite])[1:] + np.sort(table[finite])[:-1]) / 2).astype(np.float32),
            np.array([500.0, -1e6], dtype=np.float32),
        ]
    )
    got = dsattn.float32_to_fp8_e4m3(values)
    for x, bits in zip(values.astype(np.float64), got):
        clipped = np.clip(x, -448.0, 448.0)
        err = np.abs(table[finite] - clipped)
        best = finite[err == err.min()]
        # A tie goes to the even mantissa; +0 and -0 are both exact for zero.
        if len(best) > 1:
            best = best[(best & 1) == 0] if x != 0 else best
        assert bits in best, f"{x}: got {bits:#04x} = {table[bits]}, expected {best}"


def test_conversions_accept_only_their_dtype():
    for convert, wrong in [
        (dsattn.bf16_to_float32, np.zeros(3, np.float32)),
        (dsattn.float32_to_bf16, np.zeros(3, np.float64)),
        (dsattn.fp8_e4m3_to_float32, np.zeros(3, np.int8)),
        (dsattn.float32_to_fp8_e4m3, np.zeros(3, np.uint16)),
    ]:
        try:
            convert(wrong)
        except TypeError as e:
            assert "expected dtype" in str(e) and str(wrong.dtype) in str(e)
        else:
            raise AssertionError(f"{convert.__name__} accepted {wrong.dtype}")
