"""Activation sparsity as a plan pattern (`act:S`, `P+act:S`): grammar, what sparsify does with
it, and which devices turn it into time (zero-skipping engines) and which say they cannot."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from sparsesim.hw.devices import load_device
from sparsesim.run.estimate import compare, cost_workload, resolve_workload, sparsify_cached
from sparsesim.sparsity.kinds.base import PatternError
from sparsesim.sparsity.patterns import parse_pattern

GEMM = "gemm:M={m},N=2048,K=2048,dtype=fp16"


@pytest.mark.parametrize("text,act,kind", [("act:0.5", 0.5, "act"), ("2:4+act:0.4", 0.6, "nm"),
                                           ("unstructured:0.9+act:0.25", 0.75, "unstructured"),
                                           ("dense+act:0.3", 0.7, "act")])
def test_grammar(text, act, kind):
    p = parse_pattern(text)
    assert p.act == pytest.approx(act) and p.kind == kind
    assert parse_pattern(p.label) == p


@pytest.mark.parametrize("bad", ["act:1", "act:x", "act:0.5+act:0.2", "2:4+act:0.5+act:0.1", "act:"])
def test_bad_spellings_are_pattern_errors(bad):
    with pytest.raises(PatternError):
        parse_pattern(bad)


def test_sparsify_sets_activation_density_and_keeps_weights():
    wl = resolve_workload(GEMM.format(m=64))
    sw = sparsify_cached(wl, "act:0.5")
    (op,) = [o for o in sw.ops if o.weight]
    assert op.activation_density == pytest.approx(0.5)
    assert sw.layers[op.weight].stats.density > 0.9999 and sw.layers[op.weight].format == "dense"  # stray fp16 zeros
    sw24 = sparsify_cached(wl, "2:4+act:0.5")
    (op24,) = [o for o in sw24.ops if o.weight]
    assert op24.activation_density == pytest.approx(0.5)
    assert sw24.layers[op24.weight].stats.density == pytest.approx(0.5)
    # the dense plan leaves the traced (unmeasured) density alone
    assert next(o for o in sparsify_cached(wl, "dense").ops if o.weight).activation_density == 1.0


def test_measured_zeros_are_kept_when_sparser():
    wl = resolve_workload(GEMM.format(m=16))
    ops = tuple(dataclasses.replace(o, activation_density=0.1) if o.weight else o for o in wl.ops)
    relu = dataclasses.replace(wl, ops=ops)
    (op,) = [o for o in sparsify_cached(relu, "act:0.5").ops if o.weight]
    assert op.activation_density == pytest.approx(0.1)


def test_zero_skipping_engine_gains_dense_gpu_says_why():
    s = compare(GEMM.format(m=256), ["alveo-u250", "h100-sxm5"], ["dense", "act:0.5"])
    fpga = s[(s.device.str.contains("U250", case=False)) & (s.plan == "act:0.5")].iloc[0]
    gpu = s[(s.device.str.contains("H100", case=False)) & (s.plan == "act:0.5")].iloc[0]
    assert fpga.speedup_vs_dense > 1.3
    assert gpu.speedup_vs_dense == pytest.approx(1.0)
    assert "not exploited" in gpu.why and "not exploited" not in fpga.why


@pytest.mark.parametrize("device", ["alveo-u250", "zcu102", "s4-antoum", "h100-sxm5", "xeon-sapphire-rapids",
                                    "arm-cortex-a78"])
def test_activation_sparsity_never_slows_any_batch(device):
    dev = load_device(device)
    for m in (1, 8, 64):
        wl = resolve_workload(GEMM.format(m=m))
        lat = [sum(c.latency_s for c in cost_workload(sparsify_cached(wl, plan), dev))
               for plan in ("dense", "act:0.4", "act:0.5", "act:0.9")]
        assert all(b <= a * (1 + 1e-9) for a, b in itertools.pairwise(lat)), (device, m, lat)


BIG = "gemm:M={m},N=8192,K=8192,dtype=fp16"  # 134 MB of weight: streaming it dominates a GEMV


def _gemv_costs(device: str, plan: str, m: int, **deploy: str):
    wl = resolve_workload(BIG.format(m=m))
    return [c for op, c in zip(wl.ops, cost_workload(sparsify_cached(wl, plan), load_device(device), **deploy))
            if op.weight]


@pytest.mark.parametrize("device,deploy", [("h100-sxm5", {"runtime": "compiled"}),
                                           ("a100-sxm4-80gb", {"runtime": "eager"}),
                                           ("xeon-sapphire-rapids", {"kernel": "act-gemv"})])
def test_activation_sparse_gemv_reads_the_union_of_kept_inputs(device, deploy):
    """GPU (TEAL) and CPU activation-sparse GEMVs read the weight rows of the input channels
    some row keeps: 1 - (1 - d)^M of them in expectation; a memory-bound GEMV gains about
    1/d at M = 1, and the gain falls with the batch to none, never below dense."""
    gains = []
    for m in (1, 2, 4, 8, 16, 64):
        (dense,) = _gemv_costs(device, "dense", m, **deploy)
        (sparse,) = _gemv_costs(device, "act:0.5", m, **deploy)
        gains.append(dense.latency_s / sparse.latency_s)
        if m == 1:
            assert sparse.kernel.startswith(("teal", "act-gemv")), sparse.kernel
        if "active_inputs" in sparse.details:  # the skipping kernel ran (not the dense one)
            assert sparse.details["active_inputs"] == pytest.approx(1 - 0.5 ** m, rel=1e-3), (device, m)
            assert sparse.details["activation_density_used"] == pytest.approx(0.5)
    assert gains[0] > 1.5, gains  # memory-bound: half the weight read
    assert all(g >= 1 - 1e-9 for g in gains), gains
    assert all(b <= a * (1 + 1e-9) for a, b in itertools.pairwise(gains)), gains
    assert gains[-1] == pytest.approx(1.0, rel=1e-2), gains


def test_cpu_framework_runtime_multiplies_the_zeros_unless_a_runtime_offers_the_kernel():
    (eager,) = _gemv_costs("xeon-sapphire-rapids", "act:0.5", 1)
    assert "not exploited" in eager.why and eager.kernel == "dense"
    (forced,) = _gemv_costs("xeon-sapphire-rapids", "act:0.5", 1, kernel="act-gemv")
    assert forced.kernel == "act-gemv" and "not exploited" not in forced.why
