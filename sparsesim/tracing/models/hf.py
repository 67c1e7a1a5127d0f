"""Hugging Face transformers models built from configs, offline, with random weights:
BERT-base (`bert-base:impl=hf`; the recipe's default is the plain-torch port in `bert.py`), GPT-2, ViT-base and Llama-style decoders (a tiny one, Llama-2-7B and -70B).

Big configs are built on the meta device (`device="meta"`): shapes and dtypes are real, no
weight is allocated. Decoders take `phase`: "prefill" runs `seq` new tokens per sequence
after `kv` cached ones; "decode" runs one new token per sequence against a KV cache of
length `kv`. For decode the cache is a transformers StaticCache sized kv + 1 and filled to
`kv`: the new key/value is written in place (index_copy_ of the new token only), as serving
engines do, rather than DynamicCache's torch.cat, which would copy the whole cache every step
and charge decode with traffic no deployment has. Prefill uses a DynamicCache (StaticCache
prefill cannot run on the meta device in transformers 5: it compares a tensor query offset);
with kv = 0 its cat writes just the new keys/values, with kv > 0 it copies the cached ones too.
Attention runs through torch's scaled_dot_product_attention (attn_implementation="sdpa").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from sparsesim.core.errors import WorkloadError
from sparsesim.tracing.models import check_llama_shape, check_positive, torch_device, torch_dtype

if TYPE_CHECKING:
    from sparsesim.tracing.models.bert import BertShape

ATTN_IMPLEMENTATION = "sdpa"
# "eager": transformers' own attention (scores materialised, then scale, mask and softmax as
# separate ops): how BERT ran before transformers 4.41 added SDPA to it (e.g. the PyTorch 2:4
# tutorial's BERT); "sdpa": one fused scaled_dot_product_attention kernel
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
PHASES = ("prefill", "decode")

# Llama-2 shapes from the released configs (meta-llama/Llama-2-7b-hf and -70b-hf config.json;
# Touvron et al. 2023, Table 1 / Section 2.2: GQA with 8 KV heads for 70B).
LLAMA2_7B = dict(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000)
LLAMA2_70B = dict(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, vocab=32000)
LLAMA2_MAX_POSITIONS = 4096
LLAMA2_RMS_EPS = 1e-5
# A Llama-architecture decoder small enough to run with real weights in tests and searches.
LLAMA_TINY = dict(hidden=64, intermediate=176, layers=2, heads=4, kv_heads=2, vocab=512)


def _instantiate(cls: type, config: Any, dtype: str, device: str, seed: int) -> nn.Module:
    dev = torch_device(device)
    dt = torch_dtype(dtype)
    if dev.type == "meta":
        with torch.device("meta"):
            model = cls(config)
    else:
        torch.manual_seed(seed)
        model = cls(config)
    return model.to(dt).eval()


def _ids(batch: int, seq: int, vocab: int, device: str, seed: int) -> torch.Tensor:
    if device == "meta":
        return torch.zeros(batch, seq, dtype=torch.long, device="meta")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


def build_hf_bert(batch: int, seq: int, dtype: str, device: str, shape: BertShape, seed: int = 0,
                  attn: str = ATTN_IMPLEMENTATION, mask: int = 0) -> tuple[nn.Module, dict]:
    """transformers' BertModel (with pooler) of `shape`; the parameters as in `bert.build_bert`,
    which checks them."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,  # type: ignore[call-arg]  # the config's typed __init__ omits the **kwargs PretrainedConfig takes
                        num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                        max_position_embeddings=shape.max_positions, attn_implementation=attn)
    model = _instantiate(BertModel, config, dtype, device, seed)
    return model, bert_inputs(batch, seq, config.vocab_size, dtype, device, seed, mask)


def bert_inputs(batch: int, seq: int, vocab: int, dtype: str, device: str, seed: int, mask: int) -> dict:
    """input_ids, and with `mask=1` the additive batch x 1 x 1 x seq padding mask (all kept)."""
    inputs = {"input_ids": _ids(batch, seq, vocab, device, seed)}
    if mask:
        inputs["attention_mask"] = torch.zeros(batch, 1, 1, seq, dtype=torch_dtype(dtype), device=torch_device(device))
    return inputs


def build_vit(batch: int = 1, image: int = 224, dtype: str = "fp32", device: str = "cpu",
              layers: int = 12, seed: int = 0) -> tuple[nn.Module, dict]:
    """ViT-B/16 image classifier (ViTForImageClassification, 1000 classes)."""
    from transformers import ViTConfig, ViTForImageClassification

    check_positive(batch=batch, image=image, layers=layers)
    config = ViTConfig(image_size=image, num_hidden_layers=layers, num_labels=1000,  # type: ignore[call-arg]  # the config's typed __init__ omits the **kwargs PretrainedConfig takes
                       attn_implementation=ATTN_IMPLEMENTATION)
    model = _instantiate(ViTForImageClassification, config, dtype, device, seed)
    return model, _pixels(batch, image, dtype, device, seed)


def _pixels(batch: int, image: int, dtype: str, device: str, seed: int) -> dict:
    """A batch of RGB images as a vision model's `pixel_values` (zeros on the meta device)."""
    dt = torch_dtype(dtype)
    if device == "meta":
        return {"pixel_values": torch.zeros(batch, 3, image, image, dtype=dt, device="meta")}
    gen = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, image, image, generator=gen).to(dt)}


# Segment Anything's ViT-H image encoder (Kirillov et al. 2023; the released sam_vit_h config:
# 32 blocks of width 1280, 16 heads, MLP 5120, 14 x 14 windowed attention with four global blocks,
# decomposed relative positions, a 256-channel neck), at SAM's 1024 x 1024 input
SAM_VIT_H: dict[str, Any] = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, mlp_dim=5120,
                 global_attn_indexes=[7, 15, 23, 31], window_size=14, patch_size=16, output_channels=256)


def build_sam_vit_h(batch: int = 1, image: int = 1024, dtype: str = "fp32", device: str = "cpu",
                    seed: int = 0) -> tuple[nn.Module, dict]:
    """SAM's ViT-H image encoder (transformers' SamVisionModel), the part of SAM that holds
    nearly all its compute; the prompt encoder and mask decoder are left out."""
    from transformers import SamVisionConfig, SamVisionModel

    check_positive(batch=batch, image=image)
    if image % 16:
        raise WorkloadError(f"parameter image={image}: must be a multiple of the 16-pixel patch")
    config = SamVisionConfig(image_size=image, **SAM_VIT_H)
    model = _instantiate(SamVisionModel, config, dtype, device, seed)
    return model, _pixels(batch, image, dtype, device, seed)


def _decoder_inputs(model: nn.Module, config: Any, phase: str, batch: int, seq: int, kv: int,
                    dtype: str, device: str, seed: int) -> dict:
    """input_ids plus a KV cache of kv + new positions whose first `kv` are filled."""
    from transformers import DynamicCache, StaticCache

    if phase not in PHASES:
        raise WorkloadError(f"parameter phase={phase!r}: use one of {', '.join(PHASES)}")
    if kv < 0:
        raise WorkloadError(f"parameter kv={kv}: must be >= 0")
    new = 1 if phase == "decode" else seq
    if phase == "decode" and kv < 1:
        raise WorkloadError("parameter kv: decode needs a KV cache of at least 1 position (kv=...)")
    check_positive(batch=batch, seq=new)
    max_pos = getattr(config, "max_position_embeddings", None) or config.n_positions
    if kv + new > max_pos:
        raise WorkloadError(f"kv + new tokens = {kv + new} exceeds the model's {max_pos} positions")
    cache: StaticCache | DynamicCache
    if phase == "decode":
        cache = StaticCache(config=config, max_cache_len=kv + new)
    else:
        cache = DynamicCache(config=config)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dt = torch_dtype(dtype)
    g = torch.Generator().manual_seed(seed)
    if kv > 0:
        for layer in range(config.num_hidden_layers):
            shape = (batch, kv_heads, kv, head_dim)
            if device == "meta":
                k, v = (torch.zeros(shape, dtype=dt, device="meta") for _ in range(2))
            else:
                k, v = (torch.randn(shape, generator=g).to(dt) for _ in range(2))
            cache.update(k, v, layer)
    inputs = {"input_ids": _ids(batch, new, config.vocab_size, device, seed),
              "past_key_values": cache, "use_cache": True}
    if kv > 0:
        dev = "meta" if device == "meta" else "cpu"
        inputs["cache_position"] = torch.arange(kv, kv + new, device=dev)
    return inputs


def build_gpt2(phase: str = "prefill", batch: int = 1, seq: int = 128, kv: int = 0,
               dtype: str = "fp32", device: str = "cpu", layers: int = 12, vocab: int = 50257,
               seed: int = 0) -> tuple[nn.Module, dict]:
    """GPT-2 small (124M) with its LM head (tied to the token embedding); Conv1D projections.
    `vocab`: 50,257 tokens as released; nanoGPT pads it to 50,304 (a multiple of 64)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    check_positive(layers=layers, vocab=vocab)
    config = GPT2Config(n_layer=layers, vocab_size=vocab, attn_implementation=ATTN_IMPLEMENTATION)  # type: ignore[call-arg]  # the config's typed __init__ omits the **kwargs PretrainedConfig takes
    model = _instantiate(GPT2LMHeadModel, config, dtype, device, seed)
    return model, _decoder_inputs(model, config, phase, batch, seq, kv, dtype, device, seed)


def build_llama(phase: str = "prefill", batch: int = 1, seq: int = 128, kv: int = 0,
                dtype: str = "fp32", device: str = "cpu", hidden: int = 64, intermediate: int = 176,
                layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = 512,
                seed: int = 0) -> tuple[nn.Module, dict]:
    """A Llama-architecture decoder (LlamaForCausalLM) of any shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    check_llama_shape(hidden, intermediate, layers, heads, kv_heads, vocab)
    config = LlamaConfig(  # type: ignore[call-arg]  # the config's typed __init__ omits the **kwargs PretrainedConfig takes
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
        max_position_embeddings=LLAMA2_MAX_POSITIONS, rms_norm_eps=LLAMA2_RMS_EPS,
        attn_implementation=ATTN_IMPLEMENTATION,
    )
    model = _instantiate(LlamaForCausalLM, config, dtype, device, seed)
    return model, _decoder_inputs(model, config, phase, batch, seq, kv, dtype, device, seed)


def build_llama_tiny(phase: str = "prefill", batch: int = 1, seq: int = 32, kv: int = 0,
                     dtype: str = "fp32", device: str = "cpu", seed: int = 0) -> tuple[nn.Module, dict]:
    return build_llama(phase, batch, seq, kv, dtype, device, seed=seed, **LLAMA_TINY)


def build_llama2_7b(phase: str = "prefill", batch: int = 1, seq: int = 128, kv: int = 0,
                    dtype: str = "fp16", device: str = "meta", seed: int = 0) -> tuple[nn.Module, dict]:
    return build_llama(phase, batch, seq, kv, dtype, device, seed=seed, **LLAMA2_7B)


def build_llama2_70b(phase: str = "prefill", batch: int = 1, seq: int = 128, kv: int = 0,
                     dtype: str = "fp16", device: str = "meta", seed: int = 0) -> tuple[nn.Module, dict]:
    return build_llama(phase, batch, seq, kv, dtype, device, seed=seed, **LLAMA2_70B)
