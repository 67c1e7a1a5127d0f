"""Plans: glob rules, uniform plans, TOML and saved plans, sparsify on real and meta weights,
apply_plan, head pruning of attention projections, and clear errors on bad plans."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from sparsesim.core.errors import MaskError, PlanError
from sparsesim.core.ir import GemmShape, Op, Workload
from sparsesim.sparsity.formats import format_bytes
from sparsesim.sparsity.patterns import parse_pattern
from sparsesim.sparsity.plans import Plan, load_plan, save_plan, uniform_plan
from sparsesim.sparsity.sparsify import apply_plan, sparsify
from sparsesim.sparsity.stats import measure_stats
from sparsesim.tracing.tracer import trace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


class Block(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.attention = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.attention(x))


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16),
                         nn.Unflatten(1, (1, 16)), Block(16), nn.Flatten(), nn.Linear(16, 8))


def _trace(model: nn.Module | None = None):
    model = model or _net()
    return trace(model, torch.randn(2, 3, 4, 4), name="net")


WEIGHTS = ["0.weight", "3.weight", "5.attention.weight", "5.mlp.0.weight", "5.mlp.2.weight", "7.weight"]


def test_uniform_plan_sparsifies_every_linear_and_conv():
    sw = sparsify(_trace(), "2:4")
    assert list(sw.layers) == WEIGHTS
    for _name, layer in sw.layers.items():
        assert layer.pattern == parse_pattern("2:4") and layer.format == "nm"
        assert layer.stats.conforms_nm(2, 4) and not layer.stats.analytic
        size = format_bytes("nm", layer.stats, value_bytes=4, pattern=layer.pattern)
        assert (layer.format_bytes, layer.value_bytes, layer.metadata_bytes) == (size.total, size.values, size.metadata)
    assert sw.plan_name == "2:4"
    op = next(op for op in sw.ops if op.weight == "3.weight")
    assert sw.sparsity_of(op) is sw.layers["3.weight"]


def test_glob_rules_first_match_wins_and_default():
    plan = Plan("mix", rules=(("*.mlp.*", parse_pattern("2:4")), ("5.*", parse_pattern("unstructured:0.9"))),
                default=parse_pattern("channel:0.5"))
    sw = sparsify(_trace(), plan)
    labels = {w: l.pattern.label for w, l in sw.layers.items()}
    # 7 is the classifier (the model's output): channel pruning never removes its outputs; 3 feeds
    # a residual add, so only its columns (the conv's pruned channels) go
    assert labels == {"0.weight": "channel:0.5", "3.weight": "channel:0.5", "5.attention.weight": "unstructured:0.9",
                      "5.mlp.0.weight": "2:4", "5.mlp.2.weight": "2:4", "7.weight": "dense"}
    assert (sw.layers["3.weight"].stats.kept_rows, sw.layers["3.weight"].stats.kept_cols) == (16, 64)
    # module names match too (no ".weight" suffix needed)
    assert plan.pattern_for("x.weight", "5.mlp.0") == parse_pattern("2:4")


def test_exclude_forces_dense():
    plan = uniform_plan("2:4", exclude=["0.*", "7"])
    sw = sparsify(_trace(), plan)
    assert sw.layers["0.weight"].pattern.kind == "dense" and sw.layers["7.weight"].format == "dense"
    assert sw.layers["3.weight"].pattern.kind == "nm"


def test_glob_matching_nothing_is_an_error():
    plan = Plan("bad", rules=(("*.decoder.*", parse_pattern("2:4")),))
    with pytest.raises(PlanError) as e:
        sparsify(_trace(), plan)
    msg = str(e.value)
    assert "'*.decoder.*'" in msg and "matches no layer" in msg and "0.weight" in msg
    with pytest.raises(PlanError, match="'nothing.here'"):
        apply_plan(_net(), uniform_plan("2:4", exclude=["nothing.here"]))


def test_toml_plan(tmp_path):
    f = tmp_path / "plan.toml"
    f.write_text('name = "mlp24"\ndefault = "unstructured:0.5"\nexclude = ["7.*"]\n'
                 '[rules]\n"*.mlp.*" = "2:4"\n"*.attention*" = "dense"\n')
    plan = load_plan(str(f))
    assert plan.name == "mlp24" and plan.rules[0] == ("*.mlp.*", parse_pattern("2:4"))
    sw = sparsify(_trace(), plan)
    assert sw.layers["5.mlp.2.weight"].pattern.label == "2:4"
    assert sw.layers["5.attention.weight"].pattern.kind == "dense"
    assert sw.layers["0.weight"].pattern.label == "unstructured:0.5"
    assert sw.layers["7.weight"].pattern.kind == "dense"
    flat = tmp_path / "flat.toml"
    flat.write_text('"*.mlp.*" = "1:4"\n"3.*" = "block2x2:0.5"\n')
    p2 = load_plan(flat)
    assert [g for g, _ in p2.rules] == ["*.mlp.*", "3.*"] and p2.name == "flat"


@pytest.mark.parametrize("text,needle", [
    ('"*.mlp.*" = "3:2"\n', "'*.mlp.*'"),
    ('[rules]\n"*.mlp.*" = 24\n', "'*.mlp.*'"),
    ('exclude = "x"\n', "'exclude'"),
    ('"*.mlp.*" = \n', "plan.toml"),
])
def test_bad_toml_plans(tmp_path, text, needle):
    f = tmp_path / "plan.toml"
    f.write_text(text)
    with pytest.raises(PlanError) as e:
        load_plan(str(f))
    assert needle in str(e.value)


def test_missing_plan_file_and_bad_pattern():
    with pytest.raises(PlanError, match="nope.toml"):
        load_plan("nope.toml")
    with pytest.raises(PlanError, match="'3:3'"):
        load_plan("3:3")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_load_round_trip(tmp_path, suffix):
    model = _net()
    plan = Plan("rt", rules=(("*.mlp.*", parse_pattern("2:4")), ("3.*", parse_pattern("block2x2:0.5"))))
    masks = apply_plan(model, plan)
    assert set(masks) == {"5.mlp.0.weight", "5.mlp.2.weight", "3.weight"}
    w = model.get_parameter("5.mlp.0.weight")
    assert torch.equal(w != 0, masks["5.mlp.0.weight"] != 0)  # applied in place
    path = save_plan(tmp_path / f"p{suffix}", plan, masks)
    loaded = load_plan(str(path))
    assert loaded == plan  # rules, default, exclude, name (masks not compared)
    assert set(loaded.masks) == set(masks)
    for k in masks:
        assert torch.equal(loaded.masks[k].bool(), masks[k].bool())
    # the loaded masks are used as given (not rebuilt) and give the same stats on a fresh model
    fresh = _trace(_net(seed=1))
    a, b = sparsify(fresh, loaded), sparsify(_trace(model), plan)
    for k in masks:
        assert a.layers[k].stats == b.layers[k].stats


def test_saved_plan_with_a_bad_mask_names_the_layer(tmp_path):
    plan = uniform_plan("2:4")
    bad_nm = torch.ones(16, 128)
    with pytest.raises(MaskError, match=r"'3\.weight'.*breaks 2:4 at row 0, group 0"):
        sparsify(_trace(), Plan("p", default=plan.default, masks={"3.weight": bad_nm}))
    with pytest.raises(MaskError, match=r"'3\.weight'.*shape \(16, 8\) != weight shape \(16, 128\)"):
        sparsify(_trace(), Plan("p", default=plan.default, masks={"3.weight": torch.ones(16, 8)}))
    with pytest.raises(PlanError, match="'nope.weight'"):
        sparsify(_trace(), Plan("p", masks={"nope.weight": torch.ones(2, 2)}))
    f = tmp_path / "x.pt"
    torch.save({"some": torch.ones(1)}, f)
    with pytest.raises(PlanError, match="not a plan"):
        load_plan(str(f))


def _corrupt_plan(tmp_path, kind: str):
    import json

    from safetensors.torch import save_file

    p = tmp_path / ("x.pt" if kind.startswith("pt-") else "x.safetensors")
    if kind in ("pt-garbage", "st-garbage"):
        p.write_bytes(b"garbage")
    elif kind == "st-meta-not-json":
        save_file({"w": torch.ones(2, 2)}, str(p), metadata={"sparsesim.plan": "not json"})
    elif kind == "st-meta-a-list":
        save_file({"w": torch.ones(2, 2)}, str(p), metadata={"sparsesim.plan": json.dumps([1, 2])})
    elif kind == "pt-no-plan":
        torch.save({"format": "sparsesim-plan", "version": 1}, p)
    elif kind == "pt-masks-a-list":
        torch.save({"format": "sparsesim-plan", "version": 1, "plan": {"default": "2:4"}, "masks": [1]}, p)
    return p


@pytest.mark.parametrize("kind, needle", [
    ("st-garbage", "not a readable .safetensors file"),
    ("st-meta-not-json", "metadata is not JSON"),
    ("st-meta-a-list", "must be a table of rules, got list"),
    ("pt-garbage", "torch.load"),
    ("pt-no-plan", "must be a table of rules"),
    ("pt-masks-a-list", "'masks' must map"),
])
def test_corrupt_saved_plans_name_the_file(tmp_path, kind, needle):
    p = _corrupt_plan(tmp_path, kind)
    with pytest.raises(PlanError, match=needle) as exc:
        load_plan(str(p))
    assert str(p) in str(exc.value) and "\n" not in str(exc.value)


def test_dense_plan_picks_up_prune_masks_and_zeros():
    model = _net()
    prune.l1_unstructured(model[3], "weight", amount=0.75)
    with torch.no_grad():
        model[7].weight[:, :8] = 0
    wl = trace(model, torch.randn(2, 3, 4, 4))
    sw = sparsify(wl, "dense")
    # a workload naming the pruned parameter as named_parameters() spells it
    op3 = Op(index=0, kind="linear", aten="aten.mm", module="3", call_index=0, dtype="fp32",
             input_shapes=((2, 128), (128, 16)), output_shape=(2, 16), flops=2 * 2 * 128 * 16, bytes_moved=0,
             gemm=GemmShape(2, 16, 128), weight="3.weight_orig", weight_shape=(16, 128))
    l3 = sparsify(Workload("pruned", (op3,), model=model), "dense").layers["3.weight_orig"]
    assert l3.pattern.kind == "unstructured" and l3.stats.density == pytest.approx(0.25)
    l7 = sw.layers["7.weight"]
    assert l7.pattern.label == "unstructured:0.5" and l7.stats.kept_cols == 8
    assert l7.format == "dense"  # CSR of a half-empty fp32 matrix is not smaller than dense
    assert sw.layers["0.weight"].pattern.kind == "dense"
    masks = apply_plan(model, "dense")
    assert set(masks) == {"3.weight_orig", "7.weight"}
    assert measure_stats(masks["3.weight_orig"]).density == pytest.approx(0.25)


def test_activation_criterion_uses_traced_norms():
    wl = _trace()
    a = sparsify(wl, "unstructured:0.5", criterion="activation")
    b = sparsify(wl, "unstructured:0.5")
    assert a.layers["3.weight"].stats.nnz == b.layers["3.weight"].stats.nnz
    with pytest.raises(PlanError, match="criterion 'random'"):
        sparsify(wl, "2:4", criterion="random")
    no_norms = trace(_net(), torch.randn(2, 3, 4, 4), measure_activations=False)
    with pytest.raises(PlanError, match="'0.weight'.*activation norms"):
        sparsify(no_norms, "2:4", criterion="activation")


def test_meta_device_uses_analytic_stats():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64))
    wl = trace(model, torch.randn(4, 64, device="meta"))
    sw = sparsify(wl, "unstructured:0.9")
    real = sparsify(trace(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64)), torch.randn(4, 64)),
                    "unstructured:0.9")
    for k, layer in sw.layers.items():
        assert layer.stats.analytic and layer.format == "csr"
        assert layer.stats.nnz == real.layers[k].stats.nnz  # same rounding rule
        assert layer.format_bytes == real.layers[k].format_bytes
    with pytest.raises(MaskError, match="meta"):
        apply_plan(model, "2:4")


class Attn(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        hd = d // heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.heads, self.kv, self.hd = heads, kv_heads, hd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        rep = self.heads // self.kv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))


class Mlp(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(d, 3 * d), nn.Linear(d, 3 * d), nn.Linear(3 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.relu(self.gate_proj(x)) * self.up_proj(x))


class TinyDecoder(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_attention_heads=heads, num_key_value_heads=kv_heads)
        self.self_attn = Attn(d, heads, kv_heads)
        self.mlp = Mlp(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.self_attn(x))


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_channel_on_attention_prunes_whole_heads_and_shrinks_consumer(kv_heads):
    torch.manual_seed(0)
    model = TinyDecoder(kv_heads=kv_heads)
    hd = 8
    with torch.no_grad():  # make query head 1 the strongest (and its K/V head under MHA)
        model.self_attn.q_proj.weight[hd:2 * hd] *= 20
    wl = trace(model, torch.randn(1, 5, 32))
    sw = sparsify(wl, "channel:0.5")
    q, k, v, o = (sw.layers[f"self_attn.{n}_proj.weight"] for n in "qkvo")
    assert q.stats.kept_rows == 16 and o.stats.kept_cols == 16
    if kv_heads == 4:  # MHA: whole heads of q, k and v together
        assert k.stats.kept_rows == v.stats.kept_rows == 16
    else:  # GQA: query heads pruned within each K/V group, K/V heads kept
        assert k.pattern.kind == v.pattern.kind == "dense" and k.stats.kept_rows == 16
    attn = [op for op in sw.ops if op.kind == "attention"]
    assert len(attn) == 1 and attn[0].gemm.batch == 2  # the attention op runs 2 of 4 heads
    dense_attn = next(op for op in wl.ops if op.kind == "attention")
    assert attn[0].flops == dense_attn.flops // 2
    masks = apply_plan(wl, "channel:0.5")
    qm = masks["self_attn.q_proj.weight"]
    assert qm[hd:2 * hd].all()  # the strongest query head kept
    assert set(qm.reshape(-1, hd * 32).sum(1).tolist()) <= {0.0, float(hd * 32)}  # whole heads only
    if kv_heads == 2:
        kept = qm.reshape(4, -1).any(1).reshape(2, 2)
        assert kept.sum(1).tolist() == [1, 1]  # one query head per K/V group
    om = masks["self_attn.o_proj.weight"]
    assert torch.equal(om.any(dim=0), qm.any(dim=1))  # the consumer keeps the kept heads' columns
    # o_proj's outputs feed gate/up (no residual here): its rows go too, and their columns
    gate, up, down = (sw.layers[f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
    assert o.stats.kept_rows == 16 and gate.stats.kept_cols == up.stats.kept_cols == 16
    assert gate.stats.kept_rows == up.stats.kept_rows == 48 and down.stats.kept_cols == 48
    assert down.stats.kept_rows == 32  # the model's output keeps every channel
    assert torch.equal(masks["mlp.gate_proj.weight"].any(dim=1), masks["mlp.up_proj.weight"].any(dim=1))
    assert torch.equal(masks["mlp.down_proj.weight"].any(dim=0), masks["mlp.up_proj.weight"].any(dim=1))
    with torch.device("meta"):
        meta_model = TinyDecoder(kv_heads=kv_heads)
    msw = sparsify(trace(meta_model, torch.randn(1, 5, 32, device="meta")), "channel:0.5")
    for name in [f"self_attn.{n}_proj.weight" for n in "qkvo"] + [f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")]:
        a, r = msw.layers[name], sw.layers[name]
        assert (a.stats.kept_rows, a.stats.kept_cols, a.stats.nnz) == (r.stats.kept_rows, r.stats.kept_cols, r.stats.nnz)
        assert a.format_bytes == r.format_bytes and a.pattern == r.pattern
    assert [(op.module, op.gemm) for op in msw.ops if op.gemm] == [(op.module, op.gemm) for op in sw.ops if op.gemm]


def test_channel_patterns_need_a_trace_for_apply_plan():
    with pytest.raises(PlanError, match="traced"):
        apply_plan(TinyDecoder(), "channel:0.5")


def test_residual_safe_variant_keeps_consumer_rows(tmp_path):
    f = tmp_path / "structured.toml"
    f.write_text('default = "channel:0.5"\n"*.o_proj" = "dense"\n"*.down_proj" = "dense"\n')
    sw = sparsify(trace(TinyDecoder(), torch.randn(1, 3, 32)), load_plan(f))
    o, down = sw.layers["self_attn.o_proj.weight"], sw.layers["mlp.down_proj.weight"]
    assert (o.stats.kept_rows, o.stats.kept_cols) == (32, 16) and o.pattern.label == "channel:0.5"
    assert (down.stats.kept_rows, down.stats.kept_cols) == (32, 48) and o.format == "dense"
    assert o.format_bytes == 32 * 16 * 4


def test_partial_head_masks_rejected():
    model = TinyDecoder(kv_heads=4)
    masks = apply_plan(trace(model, torch.randn(1, 3, 32)), "channel:0.5")
    plan = Plan("p", default=parse_pattern("channel:0.5"), masks={"self_attn.q_proj.weight": masks["self_attn.q_proj.weight"]})
    with pytest.raises(PlanError, match="only some of"):
        sparsify(trace(TinyDecoder(kv_heads=4), torch.randn(1, 3, 32)), plan)


@pytest.mark.slow
def test_gpt2_conv1d_masks_run_along_k():
    from sparsesim.tracing.workloads import load_workload

    wl = load_workload("gpt2:layers=1,seq=8")
    sw = sparsify(wl, "2:4")
    layer = sw.layers["transformer.h.0.mlp.c_fc.weight"]
    assert layer.stats.rows == 3072 and layer.stats.cols == 768 and layer.stats.conforms_nm(2, 4)
    masks = apply_plan(wl.model, Plan("g", rules=(("*.c_fc", parse_pattern("2:4")),)))
    m = masks["transformer.h.0.mlp.c_fc.weight"]  # stored K x N like the Conv1D weight
    assert m.shape == (768, 3072) and (m.t().reshape(3072, -1, 4).sum(-1) == 2).all()
