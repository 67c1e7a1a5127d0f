"""Channel coupling from the traced dataflow and the shrink pass, on real architectures built
from tiny configs (random weights, no downloads): `channel:0.5` must leave shapes that exist
(every matmul's inner dimensions agree), prune whole heads consistently (fused qkv, list-valued
heads, GQA/MQA), shrink consumers, attention and depthwise convolutions, and never prune an LM
head's or a classifier's outputs."""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from torch import nn

from sparsesim.core.ir import Op
from sparsesim.sparsity.coupling import channel_sets
from sparsesim.sparsity.sparsify import apply_plan, sparsify
from sparsesim.tracing.tracer import trace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
est = importlib.import_module("sparsesim.run.estimate")

IDS = torch.arange(8).reshape(1, 8) % 50


def _hf(name: str) -> tuple[nn.Module, dict, str]:
    """(model, inputs, output head weight) of a tiny transformers model."""
    import transformers as T

    torch.manual_seed(0)
    if name == "distilbert":
        c = T.DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, hidden_dim=64, max_position_embeddings=16)
        return T.DistilBertForSequenceClassification(c), {"input_ids": IDS}, "classifier.weight"
    if name == "gpt2":
        c = T.GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=4, n_positions=16)
        return T.GPT2LMHeadModel(c), {"input_ids": IDS}, "transformer.wte.weight"
    if name == "falcon":  # multi-query, fused query_key_value
        c = T.FalconConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
        return T.FalconForCausalLM(c), {"input_ids": IDS}, "transformer.word_embeddings.weight"
    if name == "t5":
        c = T.T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
        return T.T5ForConditionalGeneration(c), {"input_ids": IDS, "decoder_input_ids": IDS}, "shared.weight"
    if name == "gemma":  # multi-query attention: one K/V head
        c = T.GemmaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=1, head_dim=8)
        return T.GemmaForCausalLM(c), {"input_ids": IDS}, "model.embed_tokens.weight"
    if name == "swin":  # num_heads is a list
        c = T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
                         num_labels=5)
        return T.SwinForImageClassification(c), {"pixel_values": torch.randn(1, 3, 32, 32)}, "classifier.weight"
    if name == "whisper":
        c = T.WhisperConfig(vocab_size=50, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8,
                            max_source_positions=8, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                            eos_token_id=2, decoder_start_token_id=1, suppress_tokens=[], begin_suppress_tokens=[])
        return (T.WhisperForConditionalGeneration(c), {"input_features": torch.randn(1, 8, 16), "decoder_input_ids": IDS},
                "model.decoder.embed_tokens.weight")
    raise KeyError(name)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 project, residual add."""

    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.dw(self.expand(x)))


class MobileNetish(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = InvertedResidual(8)
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.block(self.stem(x))))


def _cnn() -> tuple[nn.Module, torch.Tensor, str]:
    torch.manual_seed(0)
    return MobileNetish().eval(), torch.randn(1, 3, 16, 16), "classifier.weight"


def _broadcastable(shapes: list[tuple[int, ...]]) -> bool:
    try:
        torch.broadcast_shapes(*shapes)
    except RuntimeError:
        return False
    return True


def check_shapes(op: Op) -> None:
    """Every matmul-like op's operands fit each other and its output (after shrinking)."""
    ins, out = op.input_shapes, op.output_shape
    name = op.aten.split(".")[1] if op.aten.count(".") == 2 else op.aten
    where = f"op {op.index} {op.aten} in {op.module}: {ins} -> {out}"
    if name in ("mm", "addmm"):
        a, b = ins[-2:]
        assert a[1] == b[0] and out == (a[0], b[1]), where
        if name == "addmm":
            assert _broadcastable([ins[0], out]), where
    elif name in ("bmm", "baddbmm"):
        a, b = ins[-2:]
        assert a[0] == b[0] and a[2] == b[1] and out == (a[0], a[1], b[2]), where
    elif name == "convolution":
        x, w = ins[0], ins[1]
        g = op.conv.groups
        if op.note == "transposed":
            assert x[1] == w[0] and out[1] == w[1] * g, where
        else:
            assert x[1] == w[1] * g and out[1] == w[0] and w[0] % g == 0, where
        assert op.gemm.groups == g and op.gemm.n * g == op.conv.out_channels, where
    elif op.kind == "attention":
        q, k, v = ins[:3]
        assert q[-1] == k[-1] and k[-2] == v[-2] and len(q) == len(k) == len(v), where
        assert all(qd % kd == 0 and vd == kd for qd, kd, vd in zip(q[:-2], k[:-2], v[:-2])), where
        assert out == q[:-1] + (v[-1],), where
        if len(ins) > 3:
            assert _broadcastable([ins[3], q[:-1] + (k[-2],)]), where
    elif op.kind == "elementwise" and len(ins) > 1:
        assert _broadcastable([*ins, out]), where


MODELS = ["distilbert", "swin", "gpt2", "falcon", "t5", "gemma", "whisper", "mobilenet"]


@pytest.fixture(scope="module")
def pruned() -> dict:
    pytest.importorskip("transformers")
    out = {}
    for name in MODELS:
        model, inputs, head = _cnn() if name == "mobilenet" else _hf(name)
        wl = trace(model.eval(), inputs, name=name)
        out[name] = (wl, sparsify(wl, "channel:0.5"), head)
    return out


@pytest.mark.slow  # builds eight transformers models (~15 s with the import)
@pytest.mark.parametrize("name", MODELS)
def test_channel_half_leaves_shapes_that_exist(pruned, name):
    wl, sw, head = pruned[name]
    assert len(sw.ops) == len(wl.ops)
    for op in sw.ops:
        check_shapes(op)
    for op in sw.ops:  # each weight op is as small as its layer says
        layer = sw.sparsity_of(op)
        if layer is not None and layer.pattern.kind == "channel" and op.kind == "linear":
            assert op.weight_shape == (layer.stats.kept_rows, layer.stats.kept_cols), op
    assert sum(op.flops for op in sw.ops) < sum(op.flops for op in wl.ops)  # something was pruned
    # the output head (LM vocabulary, classifier) keeps every output
    assert sw.layers[head].stats.kept_rows >= sw.layers[head].stats.rows - 1  # (an all-zero padding row)
    heads = [(a, b) for a, b in zip(wl.ops, sw.ops) if a.weight == head and a.gemm is not None]
    assert heads and all(a.gemm.n == b.gemm.n for a, b in heads), f"{name}: {head} lost outputs"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["distilbert", "swin", "gpt2", "falcon", "t5", "gemma", "whisper"])
def test_attention_runs_the_kept_heads(pruned, name):
    wl, sw, _ = pruned[name]
    dense = {op.index: op for op in wl.ops if op.kind == "attention"}
    assert dense
    for op in sw.ops:
        if op.index in dense:
            assert op.flops < dense[op.index].flops and op.gemm.batch < dense[op.index].gemm.batch, op


@pytest.mark.slow
def test_fused_qkv_prunes_the_same_heads_of_q_k_and_v(pruned):
    wl, _, _ = pruned["gpt2"]
    masks = apply_plan(wl, "channel:0.5")
    rows = masks["transformer.h.0.attn.c_attn.weight"].t().any(dim=1)  # Conv1D is stored K x N
    q, k, v = rows.reshape(3, 4, 8).any(dim=2)  # 3 x heads
    assert torch.equal(q, k) and torch.equal(k, v) and int(q.sum()) == 2
    assert masks["transformer.h.0.attn.c_attn.weight"].t().reshape(3, 4, 8, -1).any(-1).any(-1).eq(q).all()
    cols = masks["transformer.h.0.attn.c_proj.weight"].t().any(dim=0)  # c_proj reads the kept heads
    assert torch.equal(cols, q.repeat_interleave(8))


@pytest.mark.slow
def test_mqa_prunes_query_heads_and_keeps_the_kv_head(pruned):
    _, sw, _ = pruned["gemma"]
    p = "model.layers.0.self_attn."
    assert sw.layers[p + "q_proj.weight"].stats.kept_rows == 16  # 2 of 4 query heads, as labelled
    assert sw.layers[p + "k_proj.weight"].pattern.kind == "dense"  # the one K/V head stays
    assert sw.layers[p + "v_proj.weight"].pattern.kind == "dense"
    assert sw.layers[p + "o_proj.weight"].stats.kept_cols == 16
    _, fsw, _ = pruned["falcon"]
    qkv = fsw.layers["transformer.h.0.self_attention.query_key_value.weight"].stats
    assert (qkv.rows, qkv.kept_rows) == (48, 32)  # 4 query heads + k + v -> 2 query heads + k + v


@pytest.mark.slow
def test_consumers_lose_their_inputs(pruned):
    _, sw, _ = pruned["t5"]
    for part in ("encoder.block.0.layer.0.SelfAttention.o", "encoder.block.0.layer.1.DenseReluDense.wo"):
        st = sw.layers[part + ".weight"].stats
        assert st.kept_cols == st.cols // 2 and st.kept_rows == st.rows  # residual stream kept
    _, wsw, _ = pruned["whisper"]
    c1, c2 = wsw.layers["model.encoder.conv1.weight"].stats, wsw.layers["model.encoder.conv2.weight"].stats
    assert c1.kept_rows == c1.rows // 2 and c2.kept_cols == c2.cols // 2  # conv -> conv


@pytest.mark.slow
def test_depthwise_conv_shrinks_compute_and_bytes_together(pruned):
    wl, sw, _ = pruned["mobilenet"]
    dw = next(op for op in wl.ops if op.kind == "conv" and op.conv.groups > 1)
    small = next(op for op in sw.ops if op.index == dw.index)
    assert small.conv.groups == dw.conv.groups // 2 and small.flops == dw.flops // 2
    layer = sw.layers[dw.weight]
    assert layer.format_bytes == layer.stats.size * 4 // 2
    assert small.bytes_moved < dw.bytes_moved
    # the residual stream (stem -> block -> head) keeps its channels; expand and depthwise shrink
    assert sw.layers["stem.0.weight"].pattern.kind == "dense"
    assert sw.layers["block.project.0.weight"].stats.kept_cols == 16


def test_transposed_conv_prunes_its_output_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 1))
    wl = trace(model, torch.randn(1, 3, 8, 8))
    sw = sparsify(wl, "channel:0.5")
    t = sw.layers["2.weight"].stats  # stored Cin x Cout x kh x kw: rows are the 6 output channels
    assert (t.rows, t.kept_rows, t.cols, t.kept_cols) == (6, 3, 8 * 9, 4 * 9)
    assert sw.layers["4.weight"].stats.kept_cols == 3
    for op in sw.ops:
        check_shapes(op)
    masks = apply_plan(wl, "channel:0.5")
    m = masks["2.weight"]
    assert m.shape == (8, 6, 3, 3) and int(m.any(dim=(0, 2, 3)).sum()) == 3 and int(m.any(dim=(1, 2, 3)).sum()) == 4


@pytest.mark.slow
def test_head_pruned_attention_costs_less_in_compare(pruned):
    wl, _, _ = pruned["distilbert"]
    # (on a GPU a tiny attention fills one wave either way: the CPU shows the kept heads)
    per_op = est.compare_tables(wl, "xeon-sapphire-rapids", ["dense", "channel:0.5"]).per_op
    attn = per_op[per_op["kind"] == "attention"].set_index("plan")["latency_s"]
    assert attn["channel:0.5"] < attn["dense"]
    totals = per_op.groupby("plan")["latency_s"].sum()
    assert totals["channel:0.5"] < totals["dense"]


def test_channel_sets_name_the_coupled_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 10))
    sets = {s.name: s for s in channel_sets(trace(model, torch.randn(1, 1, 10, 10)))}
    assert set(sets) == {"0", "3", "6"}  # the logits (8) are the output: never a set
    assert (sets["0"].channels, sets["0"].producers, sets["0"].consumers) == (4, ("0.weight",), ("3.weight",))
    assert sets["3"].consumers == ("6.weight",) and sets["6"].consumers == ("8.weight",)
    assert all(s.unit_rows == 1 for s in sets.values())
