"""The largest published decoders, on the meta device (no weights allocated): Llama-3 70B, the
405B-class Llama-3.1, Mixtral-8x22B and DeepSeek-V3. Shapes are the released config.json files;
building and tracing go through `models.hf` (Llama) and `models.moe` (grouped expert GEMMs), so
these recipes trace and cost exactly like their smaller siblings.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from sparsesim.core.errors import WorkloadError
from sparsesim.tracing.models import check_positive
from sparsesim.tracing.models.hf import (
    ATTN_IMPLEMENTATION,
    _decoder_inputs,
    _instantiate,
    build_llama,
)
from sparsesim.tracing.models.moe import EXPERTS_IMPLEMENTATION, build_moe

# meta-llama/Meta-Llama-3-70B config.json
LLAMA3_70B = dict(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, vocab=128256)
# meta-llama/Llama-3.1-405B config.json (Llama 3 Herd of Models, Table 3: 126 layers, 16384 wide)
LLAMA3_405B = dict(hidden=16384, intermediate=53248, layers=126, heads=128, kv_heads=8, vocab=128256)
# mistralai/Mixtral-8x22B-v0.1 config.json: 8 experts, 2 per token, 141B parameters
MIXTRAL_8X22B = dict(hidden=6144, intermediate=16384, layers=56, heads=48, kv_heads=8, vocab=32768,
                     experts=8, top_k=2, max_positions=65536)
# deepseek-ai/DeepSeek-V3 config.json (DeepSeek-V3 technical report, §4.2: 61 layers, the first
# 3 dense; 1 shared + 256 routed experts, 8 per token, in 8 groups of which 4 are used; MLA with
# q_lora_rank 1536 and a 512-wide compressed KV); 671B parameters
DEEPSEEK_V3 = dict(hidden=7168, intermediate=18432, moe_intermediate=2048, layers=61, heads=128, kv_heads=128,
                   vocab=129280, experts=256, shared_experts=1, top_k=8, groups=8, topk_groups=4, first_dense=3,
                   kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128,
                   max_positions=163840)


def build_llama3_70b(phase: str = "prefill", batch: int = 1, seq: int = 128, kv: int = 0, dtype: str = "bf16",
                     device: str = "meta", seed: int = 0, layers: int = 0) -> tuple[nn.Module, dict]:
    """`layers` overrides the depth (0 = the config's)."""
    return build_llama(phase, batch, seq, kv, dtype, device, seed=seed, **_depth(LLAMA3_70B, layers))


def build_llama3_405b(phase: str = "prefill", batch: int = 1, seq: int = 128, kv: int = 0, dtype: str = "bf16",
                     device: str = "meta", seed: int = 0, layers: int = 0) -> tuple[nn.Module, dict]:
    """`layers` overrides the depth (0 = the config's)."""
    return build_llama(phase, batch, seq, kv, dtype, device, seed=seed, **_depth(LLAMA3_405B, layers))


def _depth(shape: dict[str, int], layers: int) -> dict[str, int]:
    check_positive(layers=layers or 1)
    return {**shape, "layers": layers or shape["layers"]}


def build_mixtral_8x22b(phase: str = "prefill", batch: int = 1, seq: int = 128, kv: int = 0, dtype: str = "bf16",
                        device: str = "meta", seed: int = 0, layers: int = 0) -> tuple[nn.Module, dict]:
    return build_moe("mixtral", MIXTRAL_8X22B, phase, batch, seq, kv, dtype, device, seed, layers)


def build_deepseek_v3(phase: str = "prefill", batch: int = 1, seq: int = 128, kv: int = 0, dtype: str = "bf16",
                      device: str = "meta", seed: int = 0, layers: int = 0) -> tuple[nn.Module, dict]:
    """Prefill only, as DeepSeek-V2-Lite (`models.moe`): the latent-attention KV cache is not
    modelled for decode. `layers` overrides the depth (0 = 61)."""
    import transformers as tf

    if phase != "prefill" or kv:
        raise WorkloadError("deepseek-v3: prefill without a KV cache only (phase=prefill, kv=0); "
                            "its latent-attention cache is not modelled for decode")
    s: dict[str, Any] = dict(DEEPSEEK_V3)
    if layers:
        check_positive(layers=layers)
        s["layers"] = layers
    implementations: dict[str, Any] = {"attn_implementation": ATTN_IMPLEMENTATION,
                                       "experts_implementation": EXPERTS_IMPLEMENTATION}
    config = tf.DeepseekV3Config(
        hidden_size=s["hidden"], intermediate_size=s["intermediate"], moe_intermediate_size=s["moe_intermediate"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        vocab_size=s["vocab"], n_routed_experts=s["experts"], n_shared_experts=s["shared_experts"],
        num_experts_per_tok=s["top_k"], n_group=s["groups"], topk_group=s["topk_groups"],
        first_k_dense_replace=s["first_dense"], kv_lora_rank=s["kv_lora_rank"], q_lora_rank=s["q_lora_rank"],
        qk_rope_head_dim=s["qk_rope_head_dim"], qk_nope_head_dim=s["qk_nope_head_dim"],
        v_head_dim=s["v_head_dim"], max_position_embeddings=s["max_positions"],
        **implementations)
    model = _instantiate(tf.DeepseekV3ForCausalLM, config, dtype, device, seed)
    return model, _decoder_inputs(model, config, phase, batch, seq, kv, dtype, device, seed)
