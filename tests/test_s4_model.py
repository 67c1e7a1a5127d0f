"""S4-style sparse engine: weight zeros skipped in supported ratios up to 32x, imbalance
penalised and reduced by the balancer, activation skipping where the device says so."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from op_cases import device_with, layer_of, linear

from sparsesim.core.errors import DeviceFileError
from sparsesim.cost import estimate_op
from sparsesim.cost.families.s4 import skip_ratio
from sparsesim.cost.record import RunContext
from sparsesim.hw.devices import load_device
from sparsesim.sparsity.records import Pattern
from sparsesim.sparsity.shrink import shrink_layer_op

S4 = load_device("s4-antoum")


def balanced_mask(rows: int, cols: int, per_row: int) -> torch.Tensor:
    """Every row keeps exactly `per_row` entries, spread evenly: imbalance 1."""
    m = torch.zeros(rows, cols, dtype=torch.bool)
    if per_row == 0:
        return m
    step = cols // per_row
    for r in range(rows):
        m[r, (torch.arange(per_row) * step + r) % cols] = True
    return m


def test_device_file_loads_and_validates():
    assert S4.family == "s4" and S4.params.max_sparsity_factor == 32
    with pytest.raises(DeviceFileError, match="64 exceeds max_sparsity_factor 32"):
        device_with("s4-antoum", supported_ratios=[1, 2, 64])
    with pytest.raises(DeviceFileError, match="must include 1"):
        device_with("s4-antoum", supported_ratios=[2, 4])
    with pytest.raises(DeviceFileError, match="balancing"):
        device_with("s4-antoum", balancing=1.5)


def test_skip_ratio_rounds_down_to_supported():
    ratios = [1, 2, 4, 8, 16, 32]
    assert skip_ratio(1 / 5, ratios, 32) == 4          # 5x is not supported: 4x
    assert skip_ratio(1 / 12, ratios, 32) == 8
    assert skip_ratio(0.25, ratios, 32) == 4           # exact ratios are kept
    assert skip_ratio(0.26, ratios, 32) == 2
    assert skip_ratio(0.7, ratios, 32) == 1
    assert skip_ratio(1 / 100, ratios, 32) == 32       # capped at the maximum factor
    assert skip_ratio(0.0, ratios, 32) == 32
    assert skip_ratio(1 / 3, [1, 3, 9], 9) == 3


def test_speedup_proportional_up_to_32x_then_flat():
    rows, cols = 64, 2048
    op = linear(4096, rows, cols)
    dense = estimate_op(op, None, S4).details["compute_s"]
    seen = {}
    for factor in (1, 2, 4, 8, 16, 32, 64, 128):
        mask = balanced_mask(rows, cols, cols // factor)
        c = estimate_op(op, layer_of(mask, Pattern("unstructured", 1 / factor)), S4)
        seen[factor] = dense / c.details["compute_s"]
    for factor in (1, 2, 4, 8, 16, 32):
        assert seen[factor] == pytest.approx(factor)
    assert seen[64] == pytest.approx(32) and seen[128] == pytest.approx(32)


def test_unsupported_ratio_rounds_down_in_the_cost():
    rows, cols = 64, 2000
    op = linear(4096, rows, cols)
    dense = estimate_op(op, None, S4).details["compute_s"]
    c = estimate_op(op, layer_of(balanced_mask(rows, cols, 400), Pattern("unstructured", 0.2)), S4)
    assert dense / c.details["compute_s"] == pytest.approx(4)
    assert "rounded down" in c.why


def test_imbalance_penalised_and_balancer_helps():
    rows, cols = 64, 2048
    op = linear(4096, rows, cols)
    even = balanced_mask(rows, cols, 64)              # 1/32 density, imbalance 1
    skew = even.clone()
    skew[0, :] = True                                 # one full row
    skew[1:, :] = balanced_mask(rows - 1, cols, 48)   # fewer elsewhere
    pat = Pattern("unstructured", 1 / 32)
    ce = estimate_op(op, layer_of(even, pat), S4)
    cs = estimate_op(op, layer_of(skew, pat), S4)
    assert cs.details["compute_s"] > ce.details["compute_s"]
    perfect = device_with("s4-antoum", balancing=1.0)
    none = device_with("s4-antoum", balancing=0.0)
    cp = estimate_op(op, layer_of(skew, pat), perfect)
    cn = estimate_op(op, layer_of(skew, pat), none)
    assert cp.details["compute_s"] < cs.details["compute_s"] < cn.details["compute_s"]
    # with no balancing the full row is the lane's whole K: no faster than dense
    assert cn.details["compute_s"] == pytest.approx(estimate_op(op, None, S4).details["compute_s"])


@settings(max_examples=20, deadline=None)
@given(density=st.floats(0.005, 1.0), extra=st.floats(0.0, 0.95), seed=st.integers(0, 2**16),
       act=st.floats(0.05, 1.0), skip_act=st.booleans())
def test_more_zeros_never_slower(density, extra, seed, act, skip_act):
    dev = device_with("s4-antoum", skip_activation_zeros=skip_act)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(128, 1024, generator=g) < density
    fewer = mask & (torch.rand(128, 1024, generator=g) >= extra)
    op = linear(256, 128, 1024, act=act)
    pat = Pattern("unstructured", density)
    a = estimate_op(op, layer_of(mask, pat), dev)
    b = estimate_op(op, layer_of(fewer, pat), dev)
    assert b.details["compute_s"] <= a.details["compute_s"] * (1 + 1e-12)
    c = estimate_op(linear(256, 128, 1024, act=act / 2), layer_of(mask, pat), dev)
    assert c.latency_s <= a.latency_s * (1 + 1e-12)
    for cost in (a, b, c):
        assert cost.energy_j >= dev.params.static_power * cost.latency_s
        assert cost.latency_s >= max(cost.details["compute_s"], cost.details["memory_s"])


def test_activation_zeros_only_where_the_device_says():
    op_half = linear(4096, 512, 512, act=0.5)
    op_full = linear(4096, 512, 512, act=1.0)
    assert estimate_op(op_half, None, S4).details["compute_s"] == estimate_op(op_full, None, S4).details["compute_s"]
    on = device_with("s4-antoum", skip_activation_zeros=True)
    assert estimate_op(op_half, None, on).details["compute_s"] == pytest.approx(
        0.5 * estimate_op(op_full, None, on).details["compute_s"])


def test_channel_pruning_is_the_smaller_dense_op():
    mask = torch.zeros(512, 1024, dtype=torch.bool)
    mask[:256] = True
    layer = layer_of(mask, "channel:0.5")
    pruned = estimate_op(shrink_layer_op(linear(2048, 512, 1024), layer), layer, S4)
    small = estimate_op(linear(2048, 256, 1024), None, S4)
    assert pruned.latency_s == pytest.approx(small.latency_s)
    assert pruned.energy_j == pytest.approx(small.energy_j)
    assert pruned.kernel == "dense MAC array"


def test_memory_bound_on_compressed_weights():
    # a GEMV of a model too big for the SRAM is memory bound: the compressed weight crosses the bus
    op = linear(1, 4096, 4096)
    mask = balanced_mask(4096, 4096, 512)             # 1/8 density
    big = RunContext(model_weight_bytes=10 * S4.params.onchip_buffer)
    sp = estimate_op(op, layer_of(mask, "unstructured:0.875"), S4, big)
    dn = estimate_op(op, None, S4, big)
    assert dn.bound == "memory" and sp.bound == "memory"
    assert sp.bytes_by_level["dram"] < dn.bytes_by_level["dram"]
    assert sp.memory_bytes == layer_of(mask, "unstructured:0.875").format_bytes
    assert sp.metadata_bytes > 0
    assert sp.latency_s < dn.latency_s


def test_nm_and_dense_density_fallbacks():
    mask = torch.zeros(256, 1024, dtype=torch.bool)
    mask[:, 0::2] = True
    op = linear(4096, 256, 1024)
    c = estimate_op(op, layer_of(mask, "2:4"), S4)
    assert c.details["skip_ratio"] == 2 and not c.fallback
    loose = torch.ones(256, 1024, dtype=torch.bool)
    loose[:, 0::4] = False                            # 25% sparse: no supported ratio
    c2 = estimate_op(op, layer_of(loose, "unstructured:0.25"), S4)
    # the engine supports the pattern; it just has no ratio to gain at this density
    assert c2.details["skip_ratio"] == 1 and "ran dense" in c2.why
    assert c2.details["compute_s"] == pytest.approx(estimate_op(op, None, S4).details["compute_s"])


def test_fp32_runs_as_the_widest_supported_dtype_and_says_so():
    c = estimate_op(linear(64, 64, 64, "fp32"), None, S4)
    assert c.fallback and "ran as bf16" in c.why
    assert not estimate_op(linear(64, 64, 64, "int8"), None, S4).fallback


def test_energy_skipping_saves_energy():
    op = linear(4096, 512, 1024)
    mask = balanced_mask(512, 1024, 64)
    sp = estimate_op(op, layer_of(mask, "unstructured:0.9375"), S4)
    dn = estimate_op(op, None, S4)
    assert sp.energy_j < dn.energy_j
    assert sp.energy_j >= S4.params.static_power * sp.latency_s
