"""Reference outputs of Hugging Face transformers' own DeepSeek-V3.2 and GLM-5 attention.

Builds a tiny `DeepseekV32ForCausalLM` and a tiny `GlmMoeDsaForCausalLM` (two layers, random
weights rounded to bf16), saves each with `save_pretrained` (the config.json and safetensors
that transformers v5 writes), and runs every layer's attention in float64 on seeded hidden
states for prompts below, at and above index_topk. The layer tests read these files
(tests/layer/hf_reference_test.cpp): dsattn must read the checkpoint as transformers wrote it
and compute the same attention.

    python tests/data/hf/make_reference.py   # writes deepseek_v32/ and glm_moe_dsa/ here

Made with transformers 5.25.0 and torch 2.15.0 (CPU). Each folder holds the checkpoint and
reference.safetensors with, per prompt length L and layer l:
    L{L}.x{l}     [L, hidden] bf16    the attention input (after the input norm)
    L{L}.y{l}     [L, hidden] f32     the attention output (o_proj applied), computed in float64
    L{L}.topk{l}  [L, topk]   f32     the key positions transformers' indexer selected (layer 0;
                                      GLM's layer 1 reuses them: IndexShare)
"""

from __future__ import annotations

import copy
import os

import torch
from safetensors.torch import save_file
from transformers import DeepseekV32Config, DeepseekV32ForCausalLM, GlmMoeDsaConfig
from transformers import GlmMoeDsaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
TOPK = 16
LENGTHS = [12, 16, 40]  # below, at and above index_topk

COMMON = dict(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=32,
    moe_intermediate_size=16,
    num_hidden_layers=2,
    num_key_value_heads=4,
    num_attention_heads=4,
    n_routed_experts=4,
    n_shared_experts=1,
    num_experts_per_tok=2,
    first_k_dense_replace=1,
    q_lora_rank=32,
    kv_lora_rank=64,
    qk_rope_head_dim=16,
    index_n_heads=4,
    index_head_dim=128,
    index_topk=TOPK,
    max_position_embeddings=4096,
)


def deepseek() -> torch.nn.Module:
    config = DeepseekV32Config(
        **COMMON,
        qk_nope_head_dim=32,
        v_head_dim=32,
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 40.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
    )
    return DeepseekV32ForCausalLM(config)


def glm() -> torch.nn.Module:
    # Layer 1 shares layer 0's top-k (IndexShare); the per-head sizes are GLM's in miniature
    # (v wider than the nope part of q/k).
    config = GlmMoeDsaConfig(
        **COMMON,
        qk_nope_head_dim=48,
        v_head_dim=64,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        indexer_types=["full", "shared"],
    )
    return GlmMoeDsaForCausalLM(config)


def bf16_round(model: torch.nn.Module) -> None:
    """Rounds every parameter to bf16 (the checkpoint's precision), norms away from one."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * (torch.rand(p.shape, generator=g) * 2 - 1))
                if name.endswith("bias"):
                    p.sub_(1)
            else:
                bound = p.shape[-1] ** -0.5 * 3**0.5
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
            p.copy_(p.to(torch.bfloat16).to(p.dtype))


def run(name: str, model: torch.nn.Module) -> None:
    out_dir = os.path.join(HERE, name)
    torch.manual_seed(0)
    bf16_round(model)
    # A bf16 copy is saved; the model itself goes to float64 from float32, so that its buffers
    # (RoPE's inverse frequencies) keep their float32 values rather than bf16 ones.
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(out_dir)
    model.to(torch.float64).eval()
    layers = model.model.layers
    rotary = model.model.rotary_emb
    g = torch.Generator().manual_seed(11)
    tensors = {}
    for L in LENGTHS:
        positions = torch.arange(L).unsqueeze(0)
        # cos and sin in float64 (transformers' rotary forward takes angles in float32).
        angles = positions[..., None].double() * rotary.inv_freq.double()
        emb = torch.cat((angles, angles), dim=-1)
        cos_sin = (emb.cos() * rotary.attention_scaling, emb.sin() * rotary.attention_scaling)
        mask = torch.full((L, L), float("-inf"), dtype=torch.float64).triu(1)[None, None]
        prev = None
        for l, layer in enumerate(layers):
            x = (torch.rand(1, L, model.config.hidden_size, generator=g) * 2 - 1) * 3**0.5
            x = x.to(torch.bfloat16).to(torch.float64)
            attn = layer.self_attn
            selected = []
            hook = None
            if attn.indexer is not None:  # record the indexer's selection
                hook = attn.indexer.register_forward_hook(lambda m, i, o: selected.append(o))
            extra = {"prev_topk_indices": prev} if name == "glm_moe_dsa" else {}
            with torch.no_grad():
                y = attn(
                    hidden_states=x,
                    position_embeddings=cos_sin,
                    attention_mask=mask,
                    position_ids=positions,
                    **extra,
                )[0]
            if hook is not None:
                hook.remove()
            topk = selected[0] if selected else prev
            prev = topk
            tensors[f"L{L}.x{l}"] = x[0].to(torch.bfloat16).contiguous()
            tensors[f"L{L}.y{l}"] = y[0].to(torch.float32).contiguous()
            tensors[f"L{L}.topk{l}"] = topk[0].to(torch.float32).clone()
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"))
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    run("deepseek_v32", deepseek())
    run("glm_moe_dsa", glm())
