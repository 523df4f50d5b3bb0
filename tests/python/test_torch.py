"""PyTorch tensors on the CPU: zero-copy in and out, outputs allocated as torch tensors
(skipped where PyTorch is not installed)."""

import numpy as np
import pytest

import dsattn
from helpers import random_bf16, small_config
from torch_util import to_bits, to_torch

torch = pytest.importorskip("torch")


def test_layer_takes_and_returns_torch_tensors(rng):
    c = small_config()
    w = dsattn.LayerWeights.synthetic(c, 3)
    hidden = random_bf16(rng, (12, c.hidden_size))
    numpy_layer = dsattn.AttentionLayer(c, w, num_pages=4)
    expected = numpy_layer.prefill(hidden, [0], [12], [numpy_layer.allocate(12)]).out
    layer = dsattn.AttentionLayer(c, w, num_pages=4)
    result = layer.prefill(to_torch(torch, hidden, "cpu"), [0], [12], [layer.allocate(12)])
    assert isinstance(result.out, torch.Tensor) and result.out.dtype == torch.bfloat16
    np.testing.assert_array_equal(to_bits(torch, result.out), expected)
    out = torch.full((12, c.hidden_size), float("nan"), dtype=torch.bfloat16)
    layer2 = dsattn.AttentionLayer(c, w, num_pages=4)
    assert layer2.prefill(to_torch(torch, hidden, "cpu"), [0], [12], [layer2.allocate(12)],
                          out=out).out is out
    np.testing.assert_array_equal(to_bits(torch, out), expected)


def test_weights_as_torch_views(rng):
    w = dsattn.LayerWeights.synthetic(small_config(), 3)
    as_numpy, as_torch = w.tensors("numpy"), w.tensors("torch")
    for name, t in as_torch.items():
        assert t.dtype == torch.bfloat16 and t.device.type == "cpu"
        assert t.data_ptr() == as_numpy[name].ctypes.data, name
    copied = dsattn.LayerWeights.from_tensors(small_config(), as_torch)
    for name, t in copied.tensors().items():
        np.testing.assert_array_equal(t, as_numpy[name])
