"""Tracer and per-op formulas against hand-computed shapes, FLOPs and bytes."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsesim.core.errors import TraceError
from sparsesim.core.ir import ConvGeometry, GemmShape
from sparsesim.tracing.flops import T, classify, is_metadata_op
from sparsesim.tracing.tracer import trace

aten = torch.ops.aten


# one torch thread for the whole file (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


class One(nn.Module):
    """A model that is one named layer, so names are predictable."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _conv_op(conv: nn.Conv2d, shape: tuple[int, ...]):
    torch.manual_seed(0)
    wl = trace(One(conv), (torch.randn(shape),))
    ops = [op for op in wl.ops if op.kind == "conv"]
    assert len(ops) == 1
    return ops[0]


# ------------------------------------------------------------------ formulas, pure

def test_mm_formula_exact():
    w = classify(aten.mm.default, (T((3, 8), 4), T((8, 5), 4)), T((3, 5), 4))
    assert w.kind == "matmul"
    assert w.gemm == GemmShape(m=3, n=5, k=8)
    assert w.flops == 2 * 3 * 5 * 8 == 240
    assert w.bytes_moved == (24 + 40 + 15) * 4


def test_bmm_formula_exact():
    w = classify(aten.bmm.default, (T((6, 4, 8), 2), T((6, 8, 3), 2)), T((6, 4, 3), 2))
    assert w.gemm == GemmShape(m=4, n=3, k=8, batch=6)
    assert w.flops == 2 * 6 * 4 * 3 * 8
    assert w.bytes_moved == (6 * 32 + 6 * 24 + 6 * 12) * 2


def test_pointwise_softmax_norm_and_unknown_classification():
    x = T((4, 10), 4)
    add = classify(aten.add.Tensor, (x, x), x)
    assert (add.kind, add.flops, add.bytes_moved) == ("elementwise", 40, 3 * 160)
    sm = classify(aten._softmax.default, (x, -1, False), x)
    assert (sm.kind, sm.flops, sm.bytes_moved) == ("softmax", 5 * 40, 320)
    emb = classify(aten.embedding.default, (T((1000, 16), 4), T((2, 3), 8)), T((2, 3, 16), 4))
    # indices read, only the 6 gathered rows read, output written: the table is not streamed
    assert (emb.kind, emb.bytes_moved) == ("embedding", 48 + 2 * 6 * 16 * 4)
    nz = classify(aten.nonzero.default, (x,), T((7, 2), 8))
    assert nz.kind == "unknown" and nz.bytes_moved == 160 + 112


def test_interpolation_is_memory_bound_elementwise():
    """F.interpolate (SAM's relative-position tables) is costed, not left unknown: bytes in and
    out, a multiply-add per blended input."""
    x, y = T((1, 80, 27), 2), T((1, 80, 127), 2)
    lin = classify(aten.upsample_linear1d.default, (x, [127], False), y)
    assert (lin.kind, lin.flops, lin.bytes_moved) == ("elementwise", 4 * 80 * 127, 2 * 80 * (27 + 127))
    near = classify(aten.upsample_nearest2d.default, (T((1, 3, 4, 4), 4), [8, 8]), T((1, 3, 8, 8), 4))
    assert (near.kind, near.flops) == ("elementwise", 3 * 64)


def test_view_ops_are_metadata():
    for op in (aten.view.default, aten.t.default, aten.transpose.int, aten.expand.default,
               aten.detach.default, aten.permute.default, aten._unsafe_view.default):
        assert is_metadata_op(op), op
    for op in (aten.add.Tensor, aten.mm.default, aten.clone.default):
        assert not is_metadata_op(op), op


# ------------------------------------------------------------------ convolutions, traced

def test_conv_plain_exact():
    op = _conv_op(nn.Conv2d(3, 16, 3, padding=1), (2, 3, 32, 32))
    assert op.output_shape == (2, 16, 32, 32)
    assert op.gemm == GemmShape(m=2 * 32 * 32, n=16, k=3 * 9, batch=1, groups=1)
    assert op.flops == 2 * 2048 * 16 * 27 == 1_769_472
    # input 2x3x32x32, weight 16x3x3x3, bias 16, output 2x16x32x32, fp32
    assert op.bytes_moved == (6144 + 432 + 16 + 32768) * 4
    assert op.weight == "layer.weight" and op.weight_shape == (16, 3, 3, 3)
    assert op.weight_matrix == (16, 27)
    assert op.conv == ConvGeometry(in_channels=3, out_channels=16, kernel=(3, 3), stride=(1, 1),
                                   padding=(1, 1), dilation=(1, 1), groups=1, input_spatial=(32, 32),
                                   output_spatial=(32, 32))


def test_conv_strided_exact():
    op = _conv_op(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), (1, 8, 15, 15))
    # out = floor((15 + 2 - 3) / 2) + 1 = 8
    assert op.output_shape == (1, 16, 8, 8)
    assert op.gemm == GemmShape(m=64, n=16, k=72)
    assert op.flops == 2 * 64 * 16 * 72 == 147_456
    assert op.conv.stride == (2, 2)


def test_conv_dilated_exact():
    op = _conv_op(nn.Conv2d(4, 4, 3, dilation=2, bias=False), (1, 4, 10, 10))
    # effective kernel 5: out = 10 - 5 + 1 = 6
    assert op.output_shape == (1, 4, 6, 6)
    assert op.gemm == GemmShape(m=36, n=4, k=36)
    assert op.flops == 10_368
    assert op.conv.dilation == (2, 2)


def test_conv_grouped_exact():
    op = _conv_op(nn.Conv2d(8, 16, 3, groups=4, padding=1, bias=False), (1, 8, 6, 6))
    assert op.gemm == GemmShape(m=36, n=4, k=18, groups=4)
    assert op.flops == 2 * 36 * 4 * 18 * 4 == 20_736
    assert op.weight_shape == (16, 2, 3, 3) and op.conv.groups == 4


def test_conv_depthwise_exact():
    op = _conv_op(nn.Conv2d(8, 8, 3, groups=8, padding=1, bias=False), (1, 8, 5, 5))
    assert op.gemm == GemmShape(m=25, n=1, k=9, groups=8)
    assert op.flops == 2 * 25 * 9 * 8 == 3600
    assert op.weight_matrix == (8, 9)


def test_conv_activation_norms_per_group():
    conv = nn.Conv2d(4, 6, 1, groups=2, bias=False)
    x = torch.arange(1.0, 1 + 4 * 3).reshape(1, 4, 3, 1)
    wl = trace(One(conv), (x,))
    norms = wl.activation_norms["layer.weight"]
    assert norms.shape == (6, 2, 1, 1)
    per_ch = x.pow(2).sum(dim=(0, 2, 3)).sqrt()
    # output channels 0..2 read input channels 0,1; 3..5 read 2,3
    assert torch.allclose(norms[0, :, 0, 0], per_ch[:2]) and torch.allclose(norms[5, :, 0, 0], per_ch[2:])


# ------------------------------------------------------------------ linear

def test_linear_exact_and_activation_measurement():
    lin = nn.Linear(16, 8)
    x = torch.randn(2, 5, 16)
    x[..., ::2] = 0.0  # exactly half the activation is zero
    wl = trace(One(lin), (x,))
    (op,) = wl.weight_ops()
    assert op.kind == "linear" and op.module == "layer" and op.weight == "layer.weight"
    assert op.gemm == GemmShape(m=10, n=8, k=16)
    assert op.flops == 2 * 10 * 8 * 16 == 2560
    assert op.weight_shape == (8, 16)
    assert op.activation_measured and op.activation_density == 0.5
    norms = wl.activation_norms["layer.weight"]
    assert norms.shape == (1, 16)
    assert torch.allclose(norms[0], x.reshape(10, 16).norm(dim=0))
    assert wl.weights["layer.weight"].shape == (8, 16) and not wl.weights["layer.weight"].on_meta


def test_square_linear_is_not_mistaken_for_transposed():
    wl = trace(One(nn.Linear(8, 8, bias=False)), (torch.randn(3, 8),))
    (op,) = wl.weight_ops()
    assert op.note == "" and wl.activation_norms["layer.weight"].shape == (1, 8)


def test_meta_linear_not_measured():
    with torch.device("meta"):
        m = One(nn.Linear(16, 8))
        x = torch.empty(4, 16)
    wl = trace(m, (x,))
    (op,) = wl.weight_ops()
    assert op.weight == "layer.weight" and op.activation_density == 1.0 and not op.activation_measured
    assert wl.activation_norms == {} and wl.on_meta


# ------------------------------------------------------------------ attention

class Attn(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=False)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_attention_is_one_op_exact(device):
    q = torch.randn(2, 4, 6, 8, device=device)
    k = torch.randn(2, 4, 10, 8, device=device)
    v = torch.randn(2, 4, 10, 8, device=device)
    wl = trace(Attn(), (q, k, v))
    kinds = [op.kind for op in wl.ops]
    # CPU runs one fused aten op, meta decomposes into bmm/softmax: either way exactly one op
    assert kinds == ["attention"], kinds
    (op,) = wl.ops
    assert op.gemm == GemmShape(m=6, n=10, k=8, batch=8)
    assert op.flops == 2 * 8 * 6 * 10 * 8 * 2 == 15_360  # QK^T and PV
    assert op.bytes_moved == (384 + 640 + 640 + 384) * 4
    assert op.input_shapes == ((2, 4, 6, 8), (2, 4, 10, 8), (2, 4, 10, 8))


# ------------------------------------------------------------------ attribution

class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        x = self.act(self.fc(x))
        x = self.fc(x)  # the same module, second call
        x = x.view(2, 6).t().contiguous()  # view/t are metadata; contiguous copies
        return x * 2.0


def test_call_index_and_root_name():
    wl = trace(Shared(), (torch.randn(3, 4),))
    fc_ops = [op for op in wl.ops if op.module == "fc"]
    assert [(op.kind, op.call_index, op.weight) for op in fc_ops] == [
        ("linear", 0, "fc.weight"), ("linear", 1, "fc.weight")]
    assert [op.aten for op in wl.ops] == [
        "aten.addmm.default", "aten.relu.default", "aten.addmm.default", "aten.clone.default",
        "aten.mul.Tensor"]
    # the root is spelled as named_modules() spells it: "" (not the class name)
    assert wl.ops[-1].module == ""
    assert wl.summary()["unknown_ops"] == 0


def test_unknown_op_is_recorded_and_counted():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.nonzero(x)

    wl = trace(Odd(), (torch.tensor([0.0, 1.0, 2.0]),))
    assert [op.kind for op in wl.ops] == ["unknown"]
    s = wl.summary()
    assert s["unknown_ops"] == 1 and s["unknown_aten"] == ["aten.nonzero.default"]


def test_module_names_and_weights_match_named_modules():
    from sparsesim.tracing.models.resnet import build_resnet18

    model, x = build_resnet18(image=32)
    wl = trace(model, x)
    names = {n for n, _ in model.named_modules()}
    params = dict(model.named_parameters())
    assert all(op.module in names for op in wl.ops)
    assert all(op.weight in params for op in wl.weight_ops())
    # ReLU is shared inside each BasicBlock: its second call in a block has call_index 1
    relu = [op.call_index for op in wl.ops if op.module == "layer1.0.relu"]
    assert relu == [0, 1]


def test_forward_that_raises_gives_trace_error():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(4, 4)

        def forward(self, x):
            return self.inner(x.reshape(5, 7))

    with pytest.raises(TraceError, match=r"broken: forward raised RuntimeError.*"):
        trace(Broken(), (torch.randn(2, 3),), name="broken")


def test_not_a_module():
    with pytest.raises(TraceError, match="expected a torch.nn.Module"):
        trace(lambda x: x, (torch.randn(2),))


def test_torch_transformer_layers_are_not_hidden_by_the_fast_path():
    m = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2).eval()
    wl = trace(m, (torch.randn(2, 5, 32),))
    weights = [op.weight for op in wl.weight_ops()]
    assert weights == [f"layers.{i}.{w}" for i in range(2) for w in (
        "self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight")]
    assert wl.weight_ops()[0].weight_shape == (96, 32)
    assert wl.summary()["by_kind"]["attention"] == 2 and wl.summary()["unknown_ops"] == 0
    assert torch.backends.mha.get_fastpath_enabled()  # restored after the trace


def test_pruned_weights_are_attributed_to_weight_orig_and_picked_up():
    from torch.nn.utils import prune

    from sparsesim.sparsity.sparsify import sparsify

    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    prune.l1_unstructured(m[0], "weight", amount=0.75)
    wl = trace(m, torch.randn(4, 64))
    assert [op.weight for op in wl.ops if op.weight] == ["0.weight_orig", "2.weight"]
    layers = sparsify(wl, "dense").layers
    assert layers["0.weight_orig"].pattern.kind == "unstructured"
    assert layers["0.weight_orig"].stats.density == pytest.approx(0.25)
    assert layers["2.weight"].pattern.kind == "dense"


def test_16_bit_cpu_gemms_and_convs_run_wide_but_record_the_16_bit_model():
    """A 16-bit model's convolutions and GEMMs run on fp32 copies on the CPU (its 16-bit kernels
    are many times slower); the ops keep their 16-bit dtype and bytes, and the activation
    densities match a plain 16-bit forward's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(),
                          nn.Linear(16, 4)).half()
    x = torch.randn(2, 3, 8, 8).half()
    seen: dict[str, float] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, name=name: seen.__setitem__(
        name, float(torch.count_nonzero(a[0])) / a[0].numel())) for name, m in model.named_modules()
        if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    wl = trace(model, (x,))
    gemms = [op for op in wl.ops if op.kind in ("conv", "linear")]
    assert [op.dtype for op in gemms] == ["fp16"] * 3
    assert all(w.dtype == "fp16" for w in wl.weights.values())
    linears = {op.module: op.activation_density for op in gemms if op.kind == "linear"}
    assert linears == pytest.approx({f"{k}": v for k, v in seen.items()}, abs=1e-3)
    assert gemms[1].bytes_moved == 2 * (2 * 288 + 288 * 16 + 16 + 2 * 16)   # fp16 input, weight, bias, output
    # the widened kernel returns what the 16-bit one does, at 16 bits
    from sparsesim.tracing.tracer import _run_op

    a, b = torch.randn(5, 7).half(), torch.randn(7, 3).half()
    out = _run_op(aten.mm.default, (a, b), {})
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), torch.mm(a, b).float(), rtol=1e-2, atol=1e-2)
