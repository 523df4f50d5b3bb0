"""A minimal Hugging Face checkpoint writer (config.json and one model.safetensors) for the
checkpoint loading tests, written from the safetensors format's definition: an 8-byte
little-endian header size, a JSON header of name -> dtype, shape and data offsets, then data."""

import json
import os
import shutil

import numpy as np

import dsattn

PREFIX = "model.layers.{}.self_attn."


def write_safetensors(path, tensors):
    """tensors: name -> (safetensors dtype string, numpy array of its bytes' element type)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, array) in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def quantize_blocks(weight_bits, block=128):
    """A bf16 [rows, cols] weight as e4m3 bits and f32 scale_inv per block x block (scale =
    amax / 448), the way DeepSeek's checkpoints store them."""
    w = dsattn.bf16_to_float32(weight_bits)
    rows, cols = w.shape
    scale_inv = np.empty(((rows + block - 1) // block, (cols + block - 1) // block), np.float32)
    values = np.empty((rows, cols), np.uint8)
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            tile = w[i * block:(i + 1) * block, j * block:(j + 1) * block]
            scale = np.float32(max(np.abs(tile).max(), 1e-4) / 448.0)
            scale_inv[i, j] = scale
            values[i * block:(i + 1) * block, j * block:(j + 1) * block] = (
                dsattn.float32_to_fp8_e4m3(np.ascontiguousarray(tile / scale)))
    return values, scale_inv


def write_checkpoint(directory, config_json, weights, layer, fp8=False):
    """Writes `weights` (name -> bf16 bits, LayerWeights.tensors() names) as layer `layer` of a
    checkpoint in `directory`, 2-D weights as block-scaled fp8 when `fp8`. Returns what each
    weight should load as (bf16 bits): itself, or its dequantisation rounded to bf16."""
    os.makedirs(directory, exist_ok=True)
    with open(config_json) as f:
        config = json.load(f)
    if fp8:
        config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                         "weight_block_size": [128, 128]}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    tensors, expected = {}, {}
    for name, bits in weights.items():
        full = PREFIX.format(layer) + name
        if fp8 and bits.ndim == 2:
            values, scale_inv = quantize_blocks(bits)
            tensors[full] = ("F8_E4M3", values)
            tensors[full + "_scale_inv"] = ("F32", scale_inv)
            scales = np.repeat(np.repeat(scale_inv, 128, 0), 128, 1)[: bits.shape[0], : bits.shape[1]]
            dequantised = dsattn.fp8_e4m3_to_float32(values) * scales
            expected[name] = dsattn.float32_to_bf16(np.ascontiguousarray(dequantised, np.float32))
        else:
            tensors[full] = ("BF16", bits)
            expected[name] = bits
    write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
    return expected


def copy_config(src, directory):
    os.makedirs(directory, exist_ok=True)
    shutil.copy(src, os.path.join(directory, "config.json"))
