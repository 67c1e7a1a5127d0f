"""Mixture-of-Experts decoders from transformers, built from configs offline: Mixtral, Qwen3-MoE
and DeepSeek-V2 (shared + routed experts, multi-head latent attention).

transformers runs their experts as grouped GEMMs (`experts_implementation="grouped_mm"`), which
the tracer records one op per expert tensor with the rows routed to each expert
(`sparsesim.tracing.routing`). Big configs are built on the meta device; a tiny Mixtral with
real random weights lets the real router route real inputs (routing `measured`). Inputs and
phases (prefill, decode with a static KV cache) are those of `models.hf`.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from sparsesim.core.errors import WorkloadError
from sparsesim.tracing.models import check_positive
from sparsesim.tracing.models.hf import ATTN_IMPLEMENTATION, _decoder_inputs, _instantiate

EXPERTS_IMPLEMENTATION = "grouped_mm"
ARCHS = ("mixtral", "qwen3_moe", "deepseek_v2")

# mistralai/Mixtral-8x7B-v0.1 config.json (Jiang et al. 2024, Table 1)
MIXTRAL_8X7B = dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=32000,
                    experts=8, top_k=2, max_positions=32768)
# Qwen/Qwen3-30B-A3B config.json: 128 experts, 8 per token, expert FFN 768 wide
QWEN3_30B_A3B = dict(hidden=2048, intermediate=6144, moe_intermediate=768, layers=48, heads=32, kv_heads=4,
                     head_dim=128, vocab=151936, experts=128, top_k=8, max_positions=40960)
# deepseek-ai/DeepSeek-V2-Lite config.json (DeepSeekMoE: 2 shared + 64 routed experts, 6 per
# token, the first layer dense; MLA with a 512-wide compressed KV)
DEEPSEEK_V2_LITE = dict(hidden=2048, intermediate=10944, moe_intermediate=1408, layers=27, heads=16, kv_heads=16,
                        vocab=102400, experts=64, shared_experts=2, top_k=6, first_dense=1, kv_lora_rank=512,
                        qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, max_positions=163840)
# a Mixtral small enough to run with real weights in tests
MIXTRAL_TINY = dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=512, experts=8, top_k=2,
                    max_positions=4096)


def _config(arch: str, s: dict[str, Any]) -> Any:
    import transformers as tf

    common = dict(hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
                  num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], vocab_size=s["vocab"],
                  num_experts_per_tok=s["top_k"], max_position_embeddings=s["max_positions"],
                  attn_implementation=ATTN_IMPLEMENTATION, experts_implementation=EXPERTS_IMPLEMENTATION)
    if arch == "mixtral":
        return tf.MixtralConfig(num_local_experts=s["experts"], **common)
    if arch == "qwen3_moe":
        common["head_dim"] = s["head_dim"]
        return tf.Qwen3MoeConfig(num_experts=s["experts"], moe_intermediate_size=s["moe_intermediate"],
                                 norm_topk_prob=True, **common)
    if arch == "deepseek_v2":
        return tf.DeepseekV2Config(n_routed_experts=s["experts"], n_shared_experts=s["shared_experts"],
                                   moe_intermediate_size=s["moe_intermediate"], first_k_dense_replace=s["first_dense"],
                                   kv_lora_rank=s["kv_lora_rank"], q_lora_rank=None,
                                   qk_rope_head_dim=s["qk_rope_head_dim"], qk_nope_head_dim=s["qk_nope_head_dim"],
                                   v_head_dim=s["v_head_dim"], **common)
    raise WorkloadError(f"parameter arch={arch!r}: use one of {', '.join(ARCHS)}")


def _model_class(arch: str) -> type:
    import transformers as tf

    return {"mixtral": tf.MixtralForCausalLM, "qwen3_moe": tf.Qwen3MoeForCausalLM,
            "deepseek_v2": tf.DeepseekV2ForCausalLM}[arch]


def build_moe(arch: str, shape: dict[str, Any], phase: str = "prefill", batch: int = 1, seq: int = 128,
              kv: int = 0, dtype: str = "bf16", device: str = "meta", seed: int = 0,
              layers: int = 0) -> tuple[nn.Module, dict]:
    """A MoE decoder of architecture `arch` and `shape` (a dict like MIXTRAL_8X7B); `layers`
    overrides the depth (0 = the config's)."""
    s = dict(shape)
    if layers:
        check_positive(layers=layers)
        s["layers"] = layers
    config = _config(arch, s)
    model = _instantiate(_model_class(arch), config, dtype, device, seed)
    return model, _decoder_inputs(model, config, phase, batch, seq, kv, dtype, device, seed)


def build_mixtral_8x7b(phase: str = "prefill", batch: int = 1, seq: int = 128, kv: int = 0, dtype: str = "bf16",
                       device: str = "meta", seed: int = 0, layers: int = 0) -> tuple[nn.Module, dict]:
    return build_moe("mixtral", MIXTRAL_8X7B, phase, batch, seq, kv, dtype, device, seed, layers)


def build_qwen3_30b_a3b(phase: str = "prefill", batch: int = 1, seq: int = 128, kv: int = 0, dtype: str = "bf16",
                        device: str = "meta", seed: int = 0, layers: int = 0) -> tuple[nn.Module, dict]:
    return build_moe("qwen3_moe", QWEN3_30B_A3B, phase, batch, seq, kv, dtype, device, seed, layers)


def build_deepseek_v2_lite(phase: str = "prefill", batch: int = 1, seq: int = 128, kv: int = 0,
                           dtype: str = "bf16", device: str = "meta", seed: int = 0,
                           layers: int = 0) -> tuple[nn.Module, dict]:
    """Prefill only: its multi-head latent attention caches a compressed latent, which the
    static KV cache `models.hf` fills for decode does not lay out."""
    if phase != "prefill" or kv:
        raise WorkloadError("deepseek-v2-lite: prefill without a KV cache only (phase=prefill, kv=0); "
                            "its latent-attention cache is not modelled for decode")
    return build_moe("deepseek_v2", DEEPSEEK_V2_LITE, phase, batch, seq, kv, dtype, device, seed, layers)


def build_mixtral_tiny(phase: str = "prefill", batch: int = 1, seq: int = 32, kv: int = 0, dtype: str = "fp32",
                       device: str = "cpu", seed: int = 0) -> tuple[nn.Module, dict]:
    return build_moe("mixtral", MIXTRAL_TINY, phase, batch, seq, kv, dtype, device, seed)
