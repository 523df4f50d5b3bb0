"""Tensors of the caller's framework: their shapes, and new outputs beside them.

dsattn takes NumPy, PyTorch and CuPy tensors (anything with ``__dlpack__``) without copying.
An output the caller does not pass is allocated in the framework and on the device of a
reference input, so that ``out = f(x)`` gives back what ``x`` is. Frameworks are looked up in
``sys.modules`` only: dsattn never imports PyTorch or CuPy itself.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

# DLPack device types (dlpack.h): host memory, CUDA memory, pinned host memory.
_DL_CPU, _DL_CUDA_HOST = 1, 3

# Storage dtype -> NumPy dtype (bf16 travels as its uint16 bit patterns).
_NUMPY_DTYPES = {"bf16": np.uint16, "f32": np.float32, "i32": np.int32, "u8": np.uint8}


def shape_of(tensor: Any, name: str, dims: str) -> tuple[int, ...]:
    """The shape of argument `name`, which must have as many dimensions as `dims` names.

    `dims` is the expected shape as written in messages, e.g. "[tokens, hidden_size]".
    """
    shape = getattr(tensor, "shape", None)
    if shape is None or not hasattr(tensor, "__dlpack_device__"):
        raise TypeError(
            f"{name}: expected a tensor (NumPy, PyTorch, CuPy or any DLPack array), "
            f"got {type(tensor).__name__}"
        )
    shape = tuple(int(s) for s in shape)
    ndim = dims.count(",") + 1
    if len(shape) != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {dims}, got shape {list(shape)}")
    return shape


def empty_like(reference: Any, shape: Sequence[int], dtype: str, fill: float | None = None) -> Any:
    """A new tensor of `shape` and `dtype` ('bf16', 'f32', 'i32' or 'u8') in the framework and on
    the device of `reference`, uninitialised or filled with `fill`."""
    shape = tuple(int(s) for s in shape)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(reference, torch.Tensor):
        torch_dtype = {
            "bf16": torch.bfloat16,
            "f32": torch.float32,
            "i32": torch.int32,
            "u8": torch.uint8,
        }[dtype]
        if fill is None:
            return torch.empty(shape, dtype=torch_dtype, device=reference.device)
        return torch.full(shape, fill, dtype=torch_dtype, device=reference.device)
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(reference, cupy.ndarray):
        with reference.device:
            out = cupy.empty(shape, dtype=_NUMPY_DTYPES[dtype])
            if fill is not None:
                out.fill(fill)
            return out
    device_type, _ = reference.__dlpack_device__()
    if int(device_type) not in (_DL_CPU, _DL_CUDA_HOST):
        raise ValueError(
            f"out: dsattn allocates outputs for NumPy, PyTorch and CuPy; pass one for "
            f"{type(reference).__name__} tensors on a device"
        )
    if fill is None:
        return np.empty(shape, dtype=_NUMPY_DTYPES[dtype])
    return np.full(shape, fill, dtype=_NUMPY_DTYPES[dtype])


def int_list(values: Any, name: str, minimum: int) -> list[int]:
    """`values` (a sequence of int, or a 1-D integer tensor) as a list of ints >= `minimum`."""
    if hasattr(values, "tolist") and hasattr(values, "shape"):
        if len(values.shape) != 1:
            raise ValueError(
                f"{name}: expected one value per request (1 dimension), got shape "
                f"{list(values.shape)}"
            )
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name}: expected a sequence of int, got {type(values).__name__}")
    result = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}[{i}]: expected an int, got {type(v).__name__}")
        if v < minimum:
            raise ValueError(f"{name}[{i}]: expected a value >= {minimum}, got {v}")
        result.append(int(v))
    return result
