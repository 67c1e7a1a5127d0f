"""Llama as gpt-fast writes it: the model torchao's LLM benchmarks run (torchao/_models/llama/model.py).

It differs from Hugging Face's `LlamaForCausalLM` in what a cost model sees:
- one fused `wqkv` projection per layer instead of separate q, k and v (a 6,144-output GEMM
  for Llama-3-8B where Hugging Face runs 4,096 + 1,024 + 1,024);
- a KV cache preallocated to the sequence limit (rounded up to 8, `setup_caches`) that every
  step attends over in full, a boolean mask hiding the positions not yet written;
- grouped-query attention by `repeat_interleave` of the cached keys and values (a copy);
- RoPE applied in fp32 on interleaved pairs.
Weights are random (normal(0, 0.02)); on the meta device nothing is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparsesim.core.errors import WorkloadError
from sparsesim.tracing.models import check_llama_shape, check_positive, torch_device, torch_dtype

PHASES = ("prefill", "decode")
# gpt-fast's setup_caches rounds the sequence limit up to a multiple of this
CACHE_MULTIPLE = 8


@dataclass(frozen=True)
class GptFastShape:
    """A Llama shape as gpt-fast's `ModelArgs` holds it (the sizes come from the recipe)."""

    dim: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    # Llama-3's RoPE base and RMSNorm epsilon (torchao's transformer_configs); they change values,
    # not the ops or their sizes
    rope_base: float = 500000.0
    norm_eps: float = 1e-5


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """gpt-fast's RoPE: interleaved pairs rotated in fp32."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    fc = freqs_cis.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack([xs[..., 0] * fc[..., 0] - xs[..., 1] * fc[..., 1],
                       xs[..., 1] * fc[..., 0] + xs[..., 0] * fc[..., 1]], -1)
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    k_cache: torch.Tensor
    v_cache: torch.Tensor

    def __init__(self, s: GptFastShape, batch: int, max_seq: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = s.heads, s.kv_heads, s.dim // s.heads
        self.wqkv = nn.Linear(s.dim, (s.heads + 2 * s.kv_heads) * self.head_dim, bias=False)
        self.wo = nn.Linear(s.dim, s.dim, bias=False)
        cache = (batch, s.kv_heads, max_seq, self.head_dim)
        self.register_buffer("k_cache", torch.zeros(cache), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache), persistent=False)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor, mask: torch.Tensor,
                input_pos: torch.Tensor) -> torch.Tensor:
        bsz, seqlen, dim = x.shape
        kv_size = self.kv_heads * self.head_dim
        q, k, v = self.wqkv(x).split([dim, kv_size, kv_size], dim=-1)
        q = apply_rotary_emb(q.view(bsz, seqlen, self.heads, self.head_dim), freqs_cis)
        k = apply_rotary_emb(k.view(bsz, seqlen, self.kv_heads, self.head_dim), freqs_cis)
        v = v.view(bsz, seqlen, self.kv_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        self.k_cache[:, :, input_pos] = k
        self.v_cache[:, :, input_pos] = v
        rep = self.heads // self.kv_heads
        keys = self.k_cache.repeat_interleave(rep, dim=1)
        values = self.v_cache.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=0.0)
        return self.wo(y.transpose(1, 2).contiguous().view(bsz, seqlen, dim))


class FeedForward(nn.Module):
    def __init__(self, s: GptFastShape) -> None:
        super().__init__()
        self.w1 = nn.Linear(s.dim, s.intermediate, bias=False)
        self.w3 = nn.Linear(s.dim, s.intermediate, bias=False)
        self.w2 = nn.Linear(s.intermediate, s.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, s: GptFastShape, batch: int, max_seq: int) -> None:
        super().__init__()
        self.attention = Attention(s, batch, max_seq)
        self.feed_forward = FeedForward(s)
        self.attention_norm = RMSNorm(s.dim, s.norm_eps)
        self.ffn_norm = RMSNorm(s.dim, s.norm_eps)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor, mask: torch.Tensor,
                input_pos: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), freqs_cis, mask, input_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    freqs_cis: torch.Tensor
    causal_mask: torch.Tensor

    def __init__(self, s: GptFastShape, batch: int, max_seq: int) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(s.vocab, s.dim)
        self.layers = nn.ModuleList(TransformerBlock(s, batch, max_seq) for _ in range(s.layers))
        self.norm = RMSNorm(s.dim, s.norm_eps)
        self.output = nn.Linear(s.dim, s.vocab, bias=False)
        half = s.dim // s.heads // 2
        freqs = 1.0 / (s.rope_base ** (torch.arange(0, half).float() / half))
        angles = torch.outer(torch.arange(max_seq).float(), freqs)
        self.register_buffer("freqs_cis", torch.stack([angles.cos(), angles.sin()], -1), persistent=False)
        self.register_buffer("causal_mask", torch.tril(torch.ones(max_seq, max_seq, dtype=torch.bool)),
                             persistent=False)

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        mask = self.causal_mask[None, None, input_pos]
        freqs_cis = self.freqs_cis[input_pos]
        x = self.tok_embeddings(idx)
        for layer in self.layers:
            x = layer(x, freqs_cis, mask, input_pos)
        return self.output(self.norm(x))


def build_gptfast_llama(phase: str = "decode", batch: int = 1, seq: int = 1, kv: int = 0, max_seq: int = 0,
                        dtype: str = "bf16", device: str = "meta", hidden: int = 64, intermediate: int = 176,
                        layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = 512, seed: int = 0
                        ) -> tuple[nn.Module, dict]:
    """A Llama as gpt-fast writes it (torchao's benchmark model), of any shape (the recipe names
    Llama-3-8B's; the defaults are a tiny one, as `hf.build_llama`'s). decode: `seq` new tokens at
    position `kv`; prefill: `seq` tokens from position 0. The cache holds `max_seq` positions
    (default: those the step reaches), rounded up to a multiple of 8 as gpt-fast's
    `setup_caches` does."""
    if phase not in PHASES:
        raise WorkloadError(f"parameter phase={phase!r}: use one of {', '.join(PHASES)}")
    check_positive(batch=batch, seq=seq)
    check_llama_shape(hidden, intermediate, layers, heads, kv_heads, vocab)
    start = kv if phase == "decode" else 0
    if start < 0 or max_seq < 0:
        raise WorkloadError(f"parameters kv={kv}, max_seq={max_seq}: must not be negative")
    limit = max(max_seq, start + seq)
    if max_seq and max_seq < start + seq:
        raise WorkloadError(f"parameter max_seq={max_seq}: the step reaches position {start + seq}")
    limit = -(-limit // CACHE_MULTIPLE) * CACHE_MULTIPLE
    dev = torch_device(device)
    torch.manual_seed(seed)
    with torch.device(dev):
        model = Transformer(GptFastShape(hidden, intermediate, layers, heads, kv_heads, vocab), batch, limit)
    if dev.type != "meta":
        for p in model.parameters():
            nn.init.normal_(p, 0.0, 0.02) if p.dim() > 1 else nn.init.ones_(p)
    # every floating tensor in the model's dtype, the RoPE table and the caches too (torchao's
    # precompute_freqs_cis and KVCache take the model's dtype)
    model = model.to(dtype=torch_dtype(dtype)).eval()
    idx = torch.randint(0, model.tok_embeddings.num_embeddings, (batch, seq),
                        generator=torch.Generator().manual_seed(seed)).to(dev)
    input_pos = torch.arange(start, start + seq, device=dev)
    return model, {"idx": idx, "input_pos": input_pos}
