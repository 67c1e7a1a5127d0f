"""Ops real models run beyond the common ones: each costed against torch's flop counter or an
analytic reference (never a silent 0), and weights behind RNNs, weight_norm, prune, a 2:4
checkpoint or torch.compile still found, sparsified and labelled."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sparsesim.core.errors import SparsesimWarning
from sparsesim.run.estimate import estimate
from sparsesim.run.fit import op_working_bytes
from sparsesim.sparsity.patterns import parse_pattern
from sparsesim.sparsity.plans import Plan, load_plan
from sparsesim.sparsity.sparsify import apply_plan, sparsify
from sparsesim.tracing.tracer import trace


def _torch_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*inputs)
    return fc.get_total_flops()


def test_lstm_layers_are_two_gemms_with_their_weights():
    steps, batch, inp, hid, layers = 5, 2, 16, 32, 2
    m = nn.LSTM(inp, hid, num_layers=layers, batch_first=True)
    wl = trace(m, (torch.randn(batch, steps, inp),))
    assert wl.summary()["unknown_ops"] == 0
    rnn = [op for op in wl.ops if "rnn" in op.aten]
    assert [op.weight for op in rnn] == ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"]
    # analytic: per layer 2 x steps x batch x 4H x (input + hidden)
    expected = sum(2 * steps * batch * 4 * hid * (k + hid) for k in (inp, hid))
    assert sum(op.flops for op in rnn) == expected
    sw = sparsify(wl, load_plan("2:4"))
    assert {w: ly.pattern.label for w, ly in sw.layers.items()} == {w: "2:4" for w in
                                                                    ("weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1")}
    masks = apply_plan(m, "2:4")
    assert set(masks) == {"weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"}
    assert float((m.weight_hh_l1 == 0).float().mean()) == pytest.approx(0.5)


def test_gru_unsafe_split_is_a_view_and_flops_match_torch():
    m = nn.GRU(16, 32, batch_first=True)
    x = torch.randn(2, 5, 16)
    wl = trace(m, (x,))
    assert wl.summary()["unknown_ops"] == 0
    mm_flops = sum(op.flops for op in wl.ops if op.kind == "linear")
    assert mm_flops == _torch_flops(m, x)


def test_embedding_bag_charges_the_gathered_rows_only():
    rows, dim, bags, per_bag = 100_000, 64, 8, 4
    m = nn.EmbeddingBag(rows, dim, mode="sum")
    wl = trace(m, (torch.randint(0, rows, (bags, per_bag)),))
    (op,) = wl.ops if len(wl.ops) == 1 else [o for o in wl.ops if "embedding_bag" in o.aten]
    assert op.kind == "embedding"
    assert op.flops == bags * per_bag * dim  # one add per gathered element
    gathered = bags * per_bag * dim * 4
    assert gathered <= op.bytes_moved < gathered + 2 * bags * dim * 4 + 1024  # far below the 25.6 MB table


def test_sparse_adjacency_is_charged_by_its_nonzeros():
    n, feat, nnz = 2000, 16, 6000
    idx = torch.randint(0, n, (2, nnz))
    adj = torch.sparse_coo_tensor(idx, torch.ones(nnz), (n, n)).coalesce()

    class GCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(feat, feat)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sparse.mm(adj, self.lin(x))

    wl = trace(GCN(), (torch.randn(n, feat),))
    (op,) = [o for o in wl.ops if "sparse" in o.aten]
    stored = adj._nnz()
    assert op.kind == "matmul" and op.flops == 2 * stored * feat
    assert op.bytes_moved < n * n * 4 / 10  # a dense 2000 x 2000 fp32 matrix would be 16 MB
    assert str(stored) in op.note


def test_dynamically_quantised_linear_is_costed_not_zero():
    m = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(64, 128)), {nn.Linear}, dtype=torch.qint8)
    wl = trace(m, (torch.randn(8, 64),))
    (op,) = [o for o in wl.ops if "linear_dynamic" in o.aten]
    assert op.kind == "linear" and op.flops == 2 * 8 * 64 * 128
    assert op.bytes_moved >= 64 * 128  # the int8 weight is read
    assert "not sparsified" in op.note
    assert any("dynamically quantised" in n for n in wl.notes)
    assert estimate(wl, "xeon-sapphire-rapids")["latency_s"].sum() > 0


def _half_quantised() -> nn.Module:
    """Linear 0 stays float; Linear 2 is dynamically quantised (torch.ao, int8 weights packed)."""
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates torch.ao.quantization in favour of torchao
        return torch.ao.quantization.quantize_dynamic(m, {"2"}, dtype=torch.qint8)


def test_a_plan_that_cannot_sparsify_a_dynamically_quantised_linear_says_so():
    m = _half_quantised()
    wl = trace(m, (torch.randn(8, 64),))
    with pytest.warns(SparsesimWarning, match=r"1 dynamically quantised linear\(s\) left dense by the plan\(s\): 2\.weight "
                      r"\(torch\.ao quantize_dynamic packs"):
        sw = sparsify(wl, "2:4")
    assert sw.layers["0.weight"].pattern.label == "2:4" and "2.weight" not in sw.layers
    # a rule naming the quantised layer is warned about, not refused as matching no layer
    only_q = Plan(name="q", rules=(("2", parse_pattern("unstructured:0.5")),))
    with pytest.warns(SparsesimWarning, match=r"left dense by the plan\(s\): 2\.weight"):
        sparsify(wl, only_q)
    excluded = Plan(name="x", default=parse_pattern("2:4"), exclude=("2",))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SparsesimWarning)  # nothing asked of the quantised layer: silent
        sparsify(wl, excluded)
        sparsify(wl, "dense")
    with pytest.warns(SparsesimWarning, match=r"plan\(s\): 2\.weight"):
        masks = apply_plan(m, "2:4")
    assert set(masks) == {"0.weight"} and float((m[0].weight == 0).float().mean()) == 0.5


@pytest.mark.parametrize(("dtype", "nbytes", "name"), [(torch.qint8, 1, "int8"), (torch.float16, 2, "fp16")])
def test_dynamically_quantised_weights_count_in_memory(dtype, nbytes, name):
    """The packed weight (int8 or fp16) is held in device memory: it is in the workload's weights
    and the run's footprint, though no plan can sparsify it."""
    m = nn.Sequential(nn.Linear(64, 128))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates torch.ao.quantization in favour of torchao
        q = torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=dtype)
    wl = trace(q, (torch.randn(8, 64),))
    (op,) = wl.ops
    assert op.flops == 2 * 8 * 64 * 128 and f"{name} weight" in op.note and wl.summary()["unknown_ops"] == 0
    assert wl.weights["0.weight"].shape == (128, 64) and wl.weights["0.weight"].dtype == name
    row = estimate(wl, "xeon-sapphire-rapids").iloc[0]
    assert row["memory_need_bytes"] == 128 * 64 * nbytes + wl.input_bytes + op_working_bytes(op)


def test_pool3d_and_weight_norm_are_known_and_weight_normed_convs_sparsify():
    pool = trace(nn.MaxPool3d(2), (torch.randn(1, 2, 4, 4, 4),))
    assert pool.ops[0].kind == "reduction" and pool.ops[0].flops == 2 * 4 * 4 * 4 * 2 // 2 * 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the hook API in favour of parametrizations
        conv = nn.utils.weight_norm(nn.Conv2d(8, 16, 3))
    wl = trace(conv, (torch.randn(1, 8, 8, 8),))
    assert wl.summary()["unknown_ops"] == 0
    wn = [o for o in wl.ops if "weight_norm" in o.aten]
    assert wn and wn[0].flops == 3 * 16 * 8 * 3 * 3
    (c,) = [o for o in wl.ops if o.kind == "conv"]
    assert c.weight == "weight_v"
    sw = sparsify(wl, load_plan("2:4"))
    assert sw.layers["weight_v"].pattern.label == "2:4"
    para = nn.utils.parametrizations.weight_norm(nn.Linear(16, 16))
    wl2 = trace(para, (torch.randn(2, 16),))
    assert [o.weight for o in wl2.ops if o.kind == "linear"] == ["parametrizations.weight.original1"]


def test_a_24_sparse_checkpoint_is_recognised_and_runs_on_sparse_tensor_cores():
    m = nn.Linear(256, 256).half()
    w = m.weight.data.view(256, 64, 4)
    keep = torch.zeros_like(w).scatter_(-1, w.abs().topk(2, dim=-1).indices, 1)
    w.mul_(keep)
    wl = trace(m, (torch.randn(64, 256).half(),))
    sw = sparsify(wl, load_plan("dense"))
    assert sw.layers["weight"].pattern.label == "2:4"
    assert estimate(sw, "a100-sxm4-80gb")["kernel"].iat[0].startswith("2:4 sparse tensor core")


def test_trace_without_a_plan_shows_a_pruned_models_density(cli, tmp_path, monkeypatch):
    (tmp_path / "prunedmodel.py").write_text(
        "import torch\nfrom torch import nn\nfrom torch.nn.utils import prune\n\n"
        "def factory():\n    torch.manual_seed(0)\n    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))\n"
        "    prune.l1_unstructured(m[0], 'weight', amount=0.75)\n    return m, (torch.randn(4, 64),)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import json

    rc, out, err = cli("trace", "prunedmodel:factory", "--json")
    assert rc == 0, err
    rows = {r["weight"]: r for r in json.loads(out)["ops"] if r["weight"]}
    assert rows["0.weight_orig"]["density"] == pytest.approx(0.25, abs=0.01)
    assert rows["2.weight"]["density"] == 1.0


def test_a_compiled_module_traces_its_original_and_says_so():
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    plain = trace(m, (torch.randn(2, 8),))
    compiled = trace(torch.compile(m), (torch.randn(2, 8),))
    assert [(o.aten, o.flops, o.weight) for o in compiled.ops] == [(o.aten, o.flops, o.weight) for o in plain.ops]
    assert compiled.notes and "torch.compile" in compiled.notes[0]


def test_library_deprecation_warnings_do_not_reach_the_user():
    class Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            warnings.warn("`past_key_values` is deprecated", FutureWarning, stacklevel=1)
            return x + 1

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trace(Noisy(), (torch.randn(2),))
    assert not [w for w in seen if issubclass(w.category, (FutureWarning, DeprecationWarning))]
