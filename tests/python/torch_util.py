"""bf16 bits (NumPy uint16) to and from torch.bfloat16 tensors, without rounding."""

import numpy as np


def to_torch(torch, bits, device):
    """uint16 bf16 bits -> torch.bfloat16 on `device`; int32 and float32 arrays as they are."""
    if bits.dtype == np.uint16:
        return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(bits).to(device)


def to_bits(torch, tensor):
    """torch.bfloat16 -> uint16 bf16 bits on the host; other dtypes as NumPy arrays."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()
