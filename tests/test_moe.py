"""Mixture-of-Experts: grouped expert GEMMs traced with their FLOPs, weights and routed rows;
routing models (measured, uniform, Zipf, capacity factor) and what they cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsesim.core.errors import WorkloadError
from sparsesim.cost.common import gemm_work
from sparsesim.hw.devices import load_device
from sparsesim.run.estimate import cost_workload, sparsify_cached
from sparsesim.tracing.flops import T, grouped_mm_formula
from sparsesim.tracing.models.moe import MIXTRAL_TINY, build_moe
from sparsesim.tracing.routing import (
    Routing,
    expected_distinct,
    parse_routing,
    route,
    sample_loads,
)
from sparsesim.tracing.tracer import trace

# a Mixtral-shaped MoE, small enough for meta and CPU alike
SHAPE = dict(MIXTRAL_TINY, hidden=64, intermediate=96, layers=2, experts=8, top_k=2)


def _grouped(wl):
    return [op for op in wl.ops if op.is_grouped]


def _meta(phase="prefill", batch=1, seq=32, kv=0, shape=SHAPE):
    model, inputs = build_moe("mixtral", shape, phase, batch, seq, kv, "bf16", "meta")
    return trace(model, inputs, name="moe-meta")


def test_grouped_mm_formula_counts_each_row_once():
    # 64 rows of K=32 against 8 experts of 32 x 48: each row meets one expert, not all 8
    w = grouped_mm_formula(T((64, 32), 2), T((8, 32, 48), 2), T((8,), 4), out=T((64, 48), 2))
    assert w.kind == "linear" and w.flops == 2 * 64 * 32 * 48


def test_meta_trace_counts_expert_flops_and_weights():
    wl = _meta(seq=32)
    h, i, e, k = SHAPE["hidden"], SHAPE["intermediate"], SHAPE["experts"], SHAPE["top_k"]
    g = _grouped(wl)
    assert len(g) == 2 * SHAPE["layers"]  # gate_up and down per layer
    rows = 32 * k
    assert sum(op.flops for op in g) == SHAPE["layers"] * 2 * rows * (h * 2 * i + i * h)
    for op in g:
        assert op.experts == e and op.top_k == k and sum(op.expert_tokens) == rows
        assert op.weight is not None and len(op.weight_shape) == 3
        assert op.weight in wl.weights and wl.weights[op.weight].shape[0] == e
    assert wl.summary()["unknown_ops"] == 0
    # every expert weight is in the model's weight memory
    experts = {n: p.numel() for n, p in wl.model.named_parameters() if ".experts." in n}
    assert len(experts) == 2 * SHAPE["layers"] and set(experts) <= set(wl.weights)


def test_measured_routing_matches_the_router():
    model, inputs = build_moe("mixtral", SHAPE, "prefill", 2, 24, 0, "fp32", "cpu")
    seen = []
    for layer in model.model.layers:
        layer.mlp.gate.register_forward_hook(lambda m, a, out: seen.append(out[-1].reshape(-1)))
    wl = trace(model, inputs, name="moe-real")
    counts = [tuple(np.bincount(idx.numpy(), minlength=SHAPE["experts"]).tolist()) for idx in seen]
    g = _grouped(wl)
    assert [op.routing for op in g] == ["measured"] * len(g)
    assert [op.expert_tokens for op in g] == [c for c in counts for _ in range(2)]
    assert route(wl, "measured").ops == wl.ops


def test_measured_routing_needs_real_weights():
    with pytest.raises(WorkloadError, match="measured"):
        route(_meta(), "measured")


def test_decode_batch_one_reads_exactly_k_experts():
    wl = _meta("decode", 1, kv=16)
    for op in _grouped(wl):
        assert op.gemm.groups == SHAPE["top_k"] and op.gemm.m == 1
        n, k = op.gemm.n, op.gemm.k
        assert gemm_work(op).w_bytes == SHAPE["top_k"] * n * k * 2  # bf16


@pytest.mark.parametrize("experts,top_k,batch", [(8, 2, 4), (64, 8, 16), (128, 8, 64)])
def test_distinct_experts_match_the_closed_form(experts, top_k, batch):
    draws = [np.count_nonzero(sample_loads(Routing(seed=s), experts, top_k, batch)) for s in range(400)]
    p = 1 - top_k / experts
    expected = expected_distinct(experts, top_k, batch)
    assert expected == pytest.approx(experts * (1 - p ** batch))
    # 400 draws: the mean is within 5 standard errors of the closed form
    assert abs(np.mean(draws) - expected) < 5 * np.std(draws) / np.sqrt(len(draws)) + 1e-9
    assert expected_distinct(experts, top_k, 1) == pytest.approx(top_k)


def test_skew_concentrates_load():
    uni = sample_loads(parse_routing("uniform"), 64, 6, 4096)
    skew = [sample_loads(parse_routing(f"zipf:{a}"), 64, 6, 4096) for a in (0.5, 1.0, 1.5)]
    assert all(x.sum() == 4096 * 6 for x in [uni, *skew])
    maxima = [uni.max()] + [x.max() for x in skew]
    assert maxima == sorted(maxima) and maxima[-1] > maxima[0]
    # the expected number of distinct experts is largest under uniform routing (a concave sum)
    d_uni = np.mean([np.count_nonzero(sample_loads(Routing(seed=s), 64, 6, 8)) for s in range(200)])
    d_skew = np.mean([np.count_nonzero(sample_loads(Routing("zipf", 1.2, seed=s), 64, 6, 8)) for s in range(200)])
    assert d_skew < d_uni


def test_skew_never_lowers_prefill_latency():
    wl = _meta(seq=256, shape=dict(SHAPE, hidden=512, intermediate=1024))
    dev = load_device("h100-sxm5")
    lat = []
    for spec in ("uniform", "zipf:0.8", "zipf:1.6"):
        sw = sparsify_cached(route(wl, spec), "dense")
        lat.append(sum(c.latency_s for c, op in zip(cost_workload(sw, dev), sw.ops) if op.is_grouped))
    assert lat == sorted(lat) and lat[-1] > lat[0]


def test_capacity_factor_drops_rows_and_pads_every_expert():
    wl = route(_meta(seq=64), "zipf:1.5+cf:1.0")
    for op in _grouped(wl):
        cap = int(np.ceil(64 * 2 / 8))
        assert op.gemm.groups == 8 and op.gemm.m == cap
        assert max(op.expert_tokens) <= cap and op.dropped_rows > 0
        assert sum(op.expert_tokens) + op.dropped_rows == 64 * 2
        assert op.routing == "zipf:1.5+cf:1"


@pytest.mark.parametrize("bad", ["zipf", "zipf:x", "normal", "uniform+cf:0", "uniform+cf:"])
def test_bad_routing_is_one_clear_error(bad):
    with pytest.raises(WorkloadError, match="routing"):
        parse_routing(bad)


def test_recipe_takes_routing():
    from sparsesim.tracing.workloads import load_workload

    wl = load_workload("mixtral-tiny:seq=16,routing=zipf:1.2")
    assert wl.params["routing"] == "zipf:1.2"
    assert all(op.routing == "zipf:1.2" for op in _grouped(wl))
    with pytest.raises(WorkloadError, match="routing"):
        load_workload("mixtral-tiny:routing=normal")


def test_grouped_gemm_costs_on_every_family():
    wl = _meta("decode", 4, kv=16)
    sw = sparsify_cached(wl, "dense")
    for name in ("h100-sxm5", "xeon-sapphire-rapids", "s4-antoum", "alveo-u250"):
        costs = cost_workload(sw, load_device(name))
        g = [c for c, op in zip(costs, sw.ops) if op.is_grouped]
        assert g and all(c.latency_s > 0 for c in g)


def test_expert_weights_take_weight_patterns():
    wl = trace(*build_moe("mixtral", SHAPE, "prefill", 1, 16, 0, "fp32", "cpu"), name="moe")
    sw = sparsify_cached(wl, "2:4")
    w = _grouped(wl)[0].weight
    assert sw.layers[w].pattern.label == "2:4" and sw.layers[w].stats.density == pytest.approx(0.5)
    assert torch.is_tensor(wl.model.get_parameter(w))


def test_cli_routing_flag_routes_the_recipe(capsys):
    import json

    from sparsesim.cli import main

    rc = main(["compare", "mixtral-tiny:seq=16", "--devices", "h100-sxm5", "--plans", "dense",
               "--routing", "zipf:1.2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and "routing=zipf:1.2" in out["workload"]
    assert main(["compare", "mixtral-tiny", "--devices", "h100-sxm5", "--routing", "normal"]) == 2
    assert "routing" in capsys.readouterr().err


def test_channel_plans_leave_expert_tensors_whole():
    wl = trace(*build_moe("mixtral", SHAPE, "prefill", 1, 16, 0, "fp32", "cpu"), name="moe")
    for plan in ("channel:0.5", "channel:0.5+act:0.5"):
        sw = sparsify_cached(wl, plan)
        for dense_op, op in zip(_grouped(wl), _grouped(sw.workload)):
            assert op.gemm == dense_op.gemm  # the down projection still writes the whole residual stream
            assert not sw.layers[op.weight].pattern.spec.shrinks_op
