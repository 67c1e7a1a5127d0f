"""BERT-base (and BERT-large) in plain torch: Hugging Face's `BertModel` (encoder + pooler), module for module.

`bert-base` is the workload most runs start from, and importing transformers takes ~3 s of a
cold `compare` on two cores. This port has the same module names, parameter names and shapes,
the same aten ops in the same order (so the same traced workload) and the same outputs from
the same state dict as `transformers.BertModel` (tests/test_bert_port.py checks all three
against transformers when it is installed). Weights are initialised as transformers does
(normal(0, 0.02) for linears and embeddings, zero biases, unit LayerNorms, a zero padding row).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparsesim.core.errors import WorkloadError
from sparsesim.tracing.models import check_positive, torch_device, torch_dtype


@dataclass(frozen=True)
class BertShape:
    """bert-base-uncased's config.json (transformers' BertConfig defaults)."""

    vocab: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 512
    type_vocab: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02


class BertEmbeddings(nn.Module):
    position_ids: torch.Tensor
    token_type_ids: torch.Tensor

    def __init__(self, s: BertShape, device: torch.device | str) -> None:
        super().__init__()
        # given an (uninitialised) _weight, nn.Embedding skips its own init: normal_ on the meta
        # device would import torch._dynamo (~1.8 s)
        def table(rows: int) -> torch.Tensor:
            return torch.empty(rows, s.hidden, device=device)

        self.word_embeddings = nn.Embedding(s.vocab, s.hidden, padding_idx=s.pad_token_id, _weight=table(s.vocab))
        self.position_embeddings = nn.Embedding(s.max_positions, s.hidden, _weight=table(s.max_positions))
        self.token_type_embeddings = nn.Embedding(s.type_vocab, s.hidden, _weight=table(s.type_vocab))
        self.LayerNorm = nn.LayerNorm(s.hidden, eps=s.layer_norm_eps, device=device)
        self.dropout = nn.Dropout(0.1)
        self.register_buffer("position_ids", torch.arange(s.max_positions).expand((1, -1)).to(device), persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(self.position_ids.size(), dtype=torch.long).to(device), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch, seq = input_ids.size()
        position_ids = self.position_ids[:, :seq]
        # transformers gathers the all-zero token types through the position ids (its #5664 fix)
        token_type_ids = torch.gather(self.token_type_ids.expand(position_ids.shape[0], -1), dim=1, index=position_ids)
        token_type_ids = token_type_ids.expand(batch, seq)
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    def __init__(self, s: BertShape, attn: str, device: torch.device | str) -> None:
        super().__init__()
        self.head_size = s.hidden // s.heads
        self.scaling = self.head_size ** -0.5
        self.attn = attn
        self.query = nn.Linear(s.hidden, s.hidden, device=device)
        self.key = nn.Linear(s.hidden, s.hidden, device=device)
        self.value = nn.Linear(s.hidden, s.hidden, device=device)
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        lead = hidden.shape[:-1]
        shape = (*lead, -1, self.head_size)
        q = self.query(hidden).view(*shape).transpose(1, 2)
        k = self.key(hidden).view(*shape).transpose(1, 2)
        v = self.value(hidden).view(*shape).transpose(1, 2)
        if self.attn == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=self.scaling,
                                                 is_causal=False)
        else:  # transformers' eager_attention_forward
            scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling
            if mask is not None:
                scores = scores + mask
            out = torch.matmul(self.dropout(F.softmax(scores, dim=-1)), v)
        out = out.transpose(1, 2).contiguous()
        return out.reshape(*lead, -1).contiguous()


class BertResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): BertSelfOutput and BertOutput."""

    def __init__(self, s: BertShape, d_in: int, device: torch.device | str) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, s.hidden, device=device)
        self.LayerNorm = nn.LayerNorm(s.hidden, eps=s.layer_norm_eps, device=device)
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    def __init__(self, s: BertShape, attn: str, device: torch.device | str) -> None:
        super().__init__()
        self.self = BertSelfAttention(s, attn, device)
        self.output = BertResidualOutput(s, s.hidden, device)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(hidden, mask), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, s: BertShape, device: torch.device | str) -> None:
        super().__init__()
        self.dense = nn.Linear(s.hidden, s.intermediate, device=device)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden))


class BertLayer(nn.Module):
    def __init__(self, s: BertShape, attn: str, device: torch.device | str) -> None:
        super().__init__()
        self.attention = BertAttention(s, attn, device)
        self.intermediate = BertIntermediate(s, device)
        self.output = BertResidualOutput(s, s.intermediate, device)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.attention(hidden, mask)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, s: BertShape, attn: str, device: torch.device | str) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(s, attn, device) for _ in range(s.layers))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, mask)
        return hidden


class BertPooler(nn.Module):
    def __init__(self, s: BertShape, device: torch.device | str) -> None:
        super().__init__()
        self.dense = nn.Linear(s.hidden, s.hidden, device=device)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


@dataclass(frozen=True)
class BertOutputs:
    """The two outputs of transformers' BaseModelOutputWithPooling that an encoder run uses."""
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor


class BertModel(nn.Module):
    """transformers' BertModel (with pooler) for encoder inference: input_ids and an optional
    additive batch x 1 x 1 x seq attention mask, as `build_bert` passes it."""

    def __init__(self, s: BertShape = BertShape(), attn: str = "sdpa", device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.shape = s
        self.embeddings = BertEmbeddings(s, device)
        self.encoder = BertEncoder(s, attn, device)
        self.pooler = BertPooler(s, device)

    def reset_parameters(self, seed: int = 0) -> None:
        """transformers' BertPreTrainedModel._init_weights (and the two index buffers). Each
        normal(0, 0.02) weight draws from its own generator (seed, its index), so the weights
        are filled on all intra-op threads at once and still do not depend on the thread count."""
        std = self.shape.initializer_range
        emb = self.embeddings
        emb.position_ids.copy_(torch.arange(emb.position_ids.shape[-1]).expand((1, -1)))
        emb.token_type_ids.zero_()
        drawn: list[torch.Tensor] = []
        for m in self.modules():
            if isinstance(m, nn.Linear):
                drawn.append(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                drawn.append(m.weight)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        def draw(i: int) -> None:  # normal_ runs on one thread and releases the GIL
            with torch.no_grad():  # grad mode is per thread
                drawn[i].normal_(0.0, std, generator=torch.Generator().manual_seed(seed * 100_003 + i))

        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
            list(pool.map(draw, range(len(drawn))))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()

    @classmethod
    def build(cls, s: BertShape, attn: str, device: str, dtype: torch.dtype, seed: int = 0) -> BertModel:
        """On `device` ("cpu": initialised weights; "meta": shapes only) in `dtype`, allocating
        and initialising each weight once, in its own dtype (transformers initialises in fp32 and
        casts: the same distribution; nn.Linear's kaiming init would run first otherwise)."""
        model = cls(s, attn, torch.device("meta")).to(dtype)
        if device == "meta":
            return model
        # torch.empty by shape, not Module.to_empty: empty_like of a meta tensor runs torch's
        # Python reference implementation, which imports sympy (~0.4 s)
        for m in model.modules():
            for name, p in m._parameters.items():
                if p is not None:
                    m._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device), p.requires_grad)
            for name, b in m._buffers.items():
                if b is not None:
                    m._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)
        with torch.no_grad():
            model.reset_parameters(seed)
        return model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> BertOutputs:
        hidden = self.encoder(self.embeddings(input_ids), attention_mask)
        return BertOutputs(hidden, self.pooler(hidden))


IMPLEMENTATIONS = ("torch", "hf")  # this port; transformers' BertModel


def build_bert(batch: int = 1, seq: int = 128, dtype: str = "fp32", device: str = "cpu",
               layers: int = 12, seed: int = 0, attn: str = "sdpa", mask: int = 0, impl: str = "torch"
               ) -> tuple[nn.Module, dict]:
    """BERT-base encoder (BertModel with pooler), bert-base-uncased shapes; `attn` picks the
    attention implementation (sdpa: one fused scaled_dot_product_attention; eager: scores
    materialised, then scale, mask and softmax as separate ops, as BERT ran in transformers
    before 4.41). With `mask=1` the inputs carry a padding mask, as a tokenizer's padded batch
    does (SQuAD at a fixed length): an extra elementwise op per layer in eager attention. It is
    the additive batch x 1 x 1 x seq form transformers builds from a 0/1 mask (all positions
    kept), so tracing on the meta device needs no look at its values. `impl="hf"` builds
    transformers' BertModel instead of this port (the same trace, ~3 s more to import)."""
    return _build(BertShape(layers=layers), batch, seq, dtype, device, seed, attn, mask, impl)


def build_bert_large(batch: int = 1, seq: int = 384, dtype: str = "fp32", device: str = "cpu",
                     layers: int = 24, seed: int = 0, attn: str = "sdpa", mask: int = 0, impl: str = "torch"
                     ) -> tuple[nn.Module, dict]:
    """BERT-large encoder (bert-large-uncased's config.json: hidden 1024, 24 layers, 16 heads,
    4096 intermediate; 335M), the model of MLPerf's BERT-99 and of NVIDIA's 2:4 claims; the
    parameters as in `build_bert`."""
    return _build(BertShape(hidden=1024, layers=layers, heads=16, intermediate=4096), batch, seq, dtype, device,
                  seed, attn, mask, impl)


def _build(shape: BertShape, batch: int, seq: int, dtype: str, device: str, seed: int, attn: str, mask: int,
           impl: str) -> tuple[nn.Module, dict]:
    from sparsesim.tracing.models import hf

    check_positive(batch=batch, seq=seq, layers=shape.layers)
    if attn not in hf.ATTN_IMPLEMENTATIONS:
        raise WorkloadError(f"parameter attn={attn!r}: use one of {', '.join(hf.ATTN_IMPLEMENTATIONS)}")
    if impl not in IMPLEMENTATIONS:
        raise WorkloadError(f"parameter impl={impl!r}: use one of {', '.join(IMPLEMENTATIONS)}")
    if seq > shape.max_positions:
        raise WorkloadError(f"parameter seq={seq}: BERT has {shape.max_positions} positions")
    if mask not in (0, 1):
        raise WorkloadError(f"parameter mask={mask}: use 0 (no padding mask) or 1")
    if impl == "hf":
        return hf.build_hf_bert(batch, seq, dtype, device, shape, seed, attn, mask)
    dev = torch_device(device)
    model = BertModel.build(shape, attn, dev.type, torch_dtype(dtype), seed).eval()
    return model, hf.bert_inputs(batch, seq, shape.vocab, dtype, device, seed, mask)
