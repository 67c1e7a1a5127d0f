"""FPGA family: dense cycles = SCALE-Sim's closed form, zero skipping slowed by the busiest PE,
buffer-driven off-chip traffic, strict device files, energy invariants."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from op_cases import device_with, layer_of, linear

from sparsesim.core.errors import DeviceFileError
from sparsesim.core.ir import DTYPE_BYTES, ConvGeometry, GemmShape, Op
from sparsesim.cost import estimate_op
from sparsesim.cost.common import run_dtype
from sparsesim.cost.families.fpga import busy_rows, offchip_traffic
from sparsesim.cost.record import RunContext
from sparsesim.hw.devices import load_device
from sparsesim.sparsity.records import Pattern
from sparsesim.sparsity.shrink import shrink_layer_op
from sparsesim.sparsity.stats import measure_stats


def conv(size: int, cin: int, cout: int, kernel: int, stride: int, pad: int, dtype: str = "int8") -> Op:
    out = (size + 2 * pad - kernel) // stride + 1
    m, n, k = out * out, cout, cin * kernel * kernel
    geo = ConvGeometry(cin, cout, (kernel, kernel), (stride, stride), (pad, pad), (1, 1), 1, (size, size), (out, out))
    return Op(0, "conv", "aten.convolution", "conv", 0, dtype, ((1, cin, size, size),), (1, cout, out, out),
              2 * m * n * k, 0, GemmShape(m, n, k), geo, "conv.weight", (cout, cin, kernel, kernel))


U250 = load_device("alveo-u250")
ZCU = load_device("zcu102")


def test_builtin_devices_load_with_sources():
    for dev in (U250, ZCU):
        assert dev.family == "fpga"
        assert all(p.source for p in dev.provenance.values())
    assert U250.params.offchip_bandwidth == pytest.approx(77e9)
    assert U250.params.dataflow == "output_stationary" and ZCU.params.dataflow == "weight_stationary"


def test_array_must_fit_the_dsps():
    with pytest.raises(DeviceFileError, match="needs 32768 DSPs but dsp_total is 11508"):
        device_with("alveo-u250", pe_rows=256, pe_cols=256)
    with pytest.raises(DeviceFileError, match="field 'dataflow'"):
        device_with("zcu102", dataflow="row_stationary")
    with pytest.raises(DeviceFileError, match="design_dtype"):
        device_with("zcu102", design_dtype="fp8")


@pytest.mark.parametrize("dev,expected", [
    # conv 3x3, 64->64 on 56x56 (pad 1): M = 3136, N = 64, K = 576
    # OS 128x128: 25*1 folds x (128+128+576-2) - 1 = 20749
    ("alveo-u250", 20749),
    # WS 64x64: ceil(576/64)*ceil(64/64) = 9 folds x (128+64+3136-2) - 1 = 29933
    ("zcu102", 29933),
])
def test_dense_conv_cycles_are_scalesims(dev, expected):
    c = estimate_op(conv(56, 64, 64, 3, 1, 1), None, load_device(dev))
    assert c.details["cycles"] == expected
    assert c.details["dense_cycles"] == expected
    assert c.details["compute_s"] == pytest.approx(expected / load_device(dev).params.clock)


def test_batch_and_groups_are_repeated_gemms():
    # 4 x (ceil(100/128)*ceil(300/128) = 3 folds x (254+200) cycles) - 1 = 5447
    c = estimate_op(linear(100, 300, 200, batch=4), None, U250)
    assert c.details["cycles"] == 4 * 3 * 454 - 1


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 4096), n=st.integers(1, 2048), k=st.integers(1, 4096),
       dtype=st.sampled_from(["int8", "fp16", "fp32"]), dev=st.sampled_from(["alveo-u250", "zcu102"]))
def test_roofline_invariant(m, n, k, dtype, dev):
    d = load_device(dev)
    c = estimate_op(linear(m, n, k, dtype), None, d)
    peak = 2 * c.details["array_rows"] * c.details["array_cols"] * d.params.clock
    compulsory = (m * k + n * k + m * n) * DTYPE_BYTES[dtype]
    assert c.latency_s >= 2 * m * n * k / peak * (1 - 1e-12)
    # every operand is read once, from DRAM or from the on-chip buffer it stayed in
    assert c.details["onchip_bytes"] + c.bytes_by_level["dram"] >= compulsory * (1 - 1e-12)
    assert c.latency_s >= c.bytes_by_level["dram"] / d.params.offchip_bandwidth * (1 - 1e-12)
    assert c.energy_j >= d.params.static_power * c.latency_s
    assert 0 <= c.utilization <= 1


def _random_mask(rows: int, cols: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rows, cols, generator=g) < density


@settings(max_examples=25, deadline=None)
@given(density=st.floats(0.02, 1.0), extra=st.floats(0.0, 0.9), seed=st.integers(0, 2**16),
       dev=st.sampled_from(["alveo-u250", "zcu102"]), act=st.floats(0.05, 1.0))
def test_more_skippable_zeros_never_slower(density, extra, seed, dev, act):
    d = load_device(dev)
    op = linear(512, 300, 640, act=act)
    mask = _random_mask(300, 640, density, seed)
    fewer = mask & _random_mask(300, 640, 1 - extra, seed + 1)   # a superset of the zeros
    a = estimate_op(op, layer_of(mask, Pattern("unstructured", max(density, 1e-3))), d)
    b = estimate_op(op, layer_of(fewer, Pattern("unstructured", max(density, 1e-3))), d)
    assert b.details["cycles"] <= a.details["cycles"]
    assert b.latency_s <= a.latency_s * (1 + 1e-12)
    # more activation zeros never slower either
    c = estimate_op(linear(512, 300, 640, act=act * 0.5), layer_of(mask, Pattern("unstructured", max(density, 1e-3))), d)
    assert c.latency_s <= a.latency_s * (1 + 1e-12)


@pytest.mark.parametrize("dev", ["alveo-u250", "zcu102"])
def test_busiest_row_sets_the_pace(dev):
    d = load_device(dev)
    rows, cols, per_row = 256, 1024, 64          # density 1/16
    balanced = torch.zeros(rows, cols, dtype=torch.bool)
    for r in range(rows):
        balanced[r, (torch.arange(per_row) * 16 + r) % cols] = True
    skewed = torch.zeros(rows, cols, dtype=torch.bool)
    skewed[0, :] = True                           # one full row ...
    left = rows * per_row - cols                  # ... and the rest spread evenly over the others
    for i in range(left):
        skewed[1 + i % (rows - 1), (i // (rows - 1)) * 16 + (i % 16)] = True
    assert int(skewed.sum()) == int(balanced.sum())
    op = linear(4096, rows, cols)
    pat = Pattern("unstructured", 1 / 16)
    cb = estimate_op(op, layer_of(balanced, pat), d)
    cs = estimate_op(op, layer_of(skewed, pat), d)
    dense = estimate_op(op, None, d)
    assert cb.details["cycles"] < dense.details["cycles"]
    assert cs.details["cycles"] > cb.details["cycles"]
    assert "imbalance" in cs.why


def test_busy_rows_interpolates_between_mean_and_max():
    stats = measure_stats(_random_mask(1024, 512, 0.1, 3))
    top, typical = busy_rows(stats, 32)
    assert top == stats.row_nnz_max
    assert stats.row_nnz_mean <= typical <= top
    assert busy_rows(stats, 4096) == (top, top)


@pytest.mark.parametrize("dev", ["alveo-u250", "zcu102"])
def test_channel_pruning_is_the_smaller_dense_op(dev):
    d = load_device(dev)
    mask = torch.zeros(256, 512, dtype=torch.bool)
    mask[:128, :] = True                          # half the output channels kept
    layer = layer_of(mask, "channel:0.5")
    pruned = estimate_op(shrink_layer_op(linear(1024, 256, 512), layer), layer, d)
    small = estimate_op(linear(1024, 128, 512), None, d)
    assert pruned.details["cycles"] == small.details["cycles"]
    assert pruned.latency_s == pytest.approx(small.latency_s)
    assert pruned.energy_j == pytest.approx(small.energy_j)


def test_fully_pruned_layer_costs_only_its_overhead():
    mask = torch.zeros(64, 128, dtype=torch.bool)
    layer = layer_of(mask, "channel:0.99")
    c = estimate_op(shrink_layer_op(linear(256, 64, 128), layer), layer, U250)
    assert c.details["cycles"] == 0
    assert c.bound == "overhead"
    assert c.latency_s == pytest.approx(U250.params.layer_overhead / U250.params.clock)


def test_structured_patterns_skip_on_a_skipping_design():
    mask = torch.zeros(256, 512, dtype=torch.bool)
    mask[:, 0::2] = True                          # 2:4 conforming, perfectly balanced
    op = linear(2048, 256, 512)
    c = estimate_op(op, layer_of(mask, "2:4"), U250)
    dense = estimate_op(op, None, U250)
    assert c.kernel == "zero-skipping PE array" and not c.fallback
    # OS 128x128: the K stream halves, fill/drain does not: (254+256)/(254+512)
    assert c.details["cycles"] / dense.details["cycles"] == pytest.approx((254 + 256) / (254 + 512), rel=1e-3)


def test_a_design_without_skipping_runs_dense_and_says_so():
    d = device_with("zcu102", skip_weight_zeros=False)
    mask = _random_mask(256, 512, 0.1, 0)
    op = linear(512, 256, 512)
    c = estimate_op(op, layer_of(mask, "unstructured:0.9"), d)
    assert c.fallback and "does not skip zero weights" in c.why
    assert c.details["cycles"] == estimate_op(op, None, d).details["cycles"]


def test_activation_skipping_only_where_the_device_says():
    op_dense_act, op_sparse_act = linear(1024, 256, 512, act=1.0), linear(1024, 256, 512, act=0.4)
    assert estimate_op(op_sparse_act, None, U250).details["cycles"] < estimate_op(op_dense_act, None, U250).details["cycles"]
    assert estimate_op(op_sparse_act, None, ZCU).details["cycles"] == estimate_op(op_dense_act, None, ZCU).details["cycles"]


def test_dsp_packing_shrinks_the_array_for_wider_dtypes():
    i8 = estimate_op(linear(1024, 1024, 1024, "int8"), None, U250)
    f32 = estimate_op(linear(1024, 1024, 1024, "fp32"), None, U250)
    # fp32 needs 5 DSPs per MAC against 0.5 for int8: 128 columns -> floor(128 * 0.1) = 12
    assert f32.details["array_cols"] == 12 and i8.details["array_cols"] == 128
    assert f32.latency_s > 5 * i8.latency_s
    assert run_dtype("fp8", U250.params.dsp_per_mac) == ("int8", True)
    assert run_dtype("tf32", U250.params.dsp_per_mac) == ("fp32", False)  # same-width float: a conversion
    assert estimate_op(linear(64, 64, 64, "fp8"), None, U250).fallback


def test_buffer_overflow_rereads_operands():
    assert offchip_traffic(10, 20, 5, 100) == (35, 1)
    # buffer 20: halves of 10; holding weights (1 chunk) re-reads activations once -> 10 + 20 + 5
    assert offchip_traffic(10, 20, 5, 20) == (35, 1)
    # weights 40 in 4 chunks -> 40 + 4*20 + 5 = 125; activations 20 in 2 chunks -> 20 + 2*40 + 5 = 105
    assert offchip_traffic(40, 20, 5, 20) == (105, 2)
    big = estimate_op(linear(8192, 4096, 4096, "fp16"), None, ZCU)
    assert big.details["rereads"] > 1
    assert big.bytes_by_level["dram"] > (8192 * 4096 * 2 + 4096 * 4096 * 2 + 8192 * 4096 * 2)


def test_conv_reads_its_real_input_not_the_im2col_matrix():
    c = estimate_op(conv(56, 64, 64, 3, 1, 1), None, U250)
    real = 64 * 56 * 56 + 64 * 576 + 64 * 56 * 56        # input + weight + output, int8
    assert c.details["onchip_bytes"] == pytest.approx(real)
    # alone, the op's weight is the model: pinned on chip with its activations, nothing crosses DRAM
    assert c.bytes_by_level["dram"] == 0 and c.details["weights_pinned"] == 1
    # in a model too big for the buffer the weight streams in; the activations still stay on chip
    big = estimate_op(conv(56, 64, 64, 3, 1, 1), None, U250, RunContext(model_weight_bytes=1e9))
    assert big.bytes_by_level["dram"] == pytest.approx(64 * 576)


def test_memory_ops_and_unknown_ops():
    add = Op(1, "elementwise", "aten.add", "relu", 0, "int8", ((1, 1000),), (1, 1000), 1000, 3000)
    c = estimate_op(add, None, ZCU)
    assert c.bound in ("memory", "overhead") and not c.fallback
    unk = Op(2, "unknown", "aten.weird", "m", 0, "int8", ((10,),), (10,), 0, 20)
    u = estimate_op(unk, None, ZCU)
    assert u.fallback and "no formula" in u.why


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 2048), n=st.integers(1, 1024), k=st.integers(1, 2048), density=st.floats(0.01, 1.0),
       seed=st.integers(0, 1000))
def test_energy_at_least_static_and_skipping_saves_mac_energy(m, n, k, density, seed):
    mask = _random_mask(n, k, density, seed)
    if not mask.any():
        return
    op = linear(m, n, k)
    for d in (U250, ZCU):
        sp = estimate_op(op, layer_of(mask, Pattern("unstructured", density)), d)
        dn = estimate_op(op, None, d)
        assert sp.energy_j >= d.params.static_power * sp.latency_s
        assert sp.details["energy_compute_j"] <= dn.details["energy_compute_j"] * (1 + 1e-9)
        assert math.isfinite(sp.energy_j)


# ----------------------------------------------------------------------------- FPGA energy: fabric gap, clocked idle

PJ = 1e-12


def test_fabric_gap_scales_every_on_chip_action_not_dram():
    """An executed MAC, its operand reads, an on-chip byte and a metadata byte cost the device's
    fabric_energy_factor times the ASIC figures of the file; a DRAM byte does not."""
    asic = device_with("alveo-u250", fabric_energy_factor=1.0, gated_fraction=0.0)
    fpga = device_with("alveo-u250", gated_fraction=0.0)
    gap = fpga.params.fabric_energy_factor
    assert gap > 1
    mask = _random_mask(512, 1024, 0.3, 7)
    layer = layer_of(mask, Pattern("unstructured", 0.3))
    op = linear(256, 512, 1024)
    for ctx in (RunContext(), RunContext(model_weight_bytes=1e9)):  # weights on chip / streamed from DRAM
        a, f = estimate_op(op, layer, asic, ctx), estimate_op(op, layer, fpga, ctx)
        assert f.latency_s == a.latency_s
        executed = f.flops_executed / 2
        per_mac = fpga.params.mac_energy["int8"] + fpga.params.operand_energy
        assert per_mac == pytest.approx((0.3 + 1.66) * PJ)
        assert f.details["energy_compute_j"] == pytest.approx(gap * executed * per_mac)
        assert f.details["energy_compute_j"] == pytest.approx(gap * a.details["energy_compute_j"])
        assert f.details["energy_metadata_j"] == pytest.approx(gap * a.details["energy_metadata_j"])
        sram = f.bytes_by_level["sram"] * fpga.params.sram_energy
        dram = f.bytes_by_level["dram"] * fpga.params.dram_energy
        assert a.details["energy_memory_j"] == pytest.approx(sram + dram)
        assert f.details["energy_memory_j"] == pytest.approx(gap * sram + dram)
    # an op without a GEMM reads the same block RAM
    pool = Op(1, "elementwise", "aten.add", "add", 0, "int8", ((1, 4096),), (1, 4096), 4096, 3 * 4096)
    assert (estimate_op(pool, None, fpga).details["energy_memory_j"]
            == pytest.approx(gap * estimate_op(pool, None, asic).details["energy_memory_j"]))


def test_clocked_idle_pe_cycles_cost_energy():
    """The array is clocked for the op's whole latency: PE cycles without a MAC (the systolic
    fill, the per-layer setup, DRAM stalls) cost gated_fraction of an executed MAC."""
    p = U250.params
    op = linear(256, 512, 1024)
    slow_setup = device_with("alveo-u250", layer_overhead=10 * p.layer_overhead)
    fast = estimate_op(op, None, U250)
    slow = estimate_op(op, None, slow_setup)
    assert slow.latency_s > fast.latency_s and slow.flops_executed == fast.flops_executed
    per_mac = p.fabric_energy_factor * (p.mac_energy["int8"] + p.operand_energy)
    for c in (fast, slow):
        clocked = c.details["array_rows"] * c.details["array_cols"] * c.latency_s * p.clock
        assert c.details["clocked_pe_cycles"] == pytest.approx(clocked)
        executed = c.flops_executed / 2
        assert clocked > executed
        idle = p.gated_fraction * (clocked - executed)
        assert c.details["energy_compute_j"] == pytest.approx((executed + idle) * per_mac)
    assert slow.details["energy_compute_j"] > fast.details["energy_compute_j"]
    # without clocked-idle energy the two would cost the same MAC energy
    a = estimate_op(op, None, device_with("alveo-u250", gated_fraction=0.0))
    b = estimate_op(op, None, device_with("alveo-u250", gated_fraction=0.0, layer_overhead=10 * p.layer_overhead))
    assert b.details["energy_compute_j"] == pytest.approx(a.details["energy_compute_j"])


def test_load_imbalance_costs_clocked_energy_on_row_interleaved_pes():
    """Same nonzeros, one PE given more: the others idle, clocked, until it finishes."""
    ese = load_device("ese-xcku060")
    op = linear(1, 4096, 512, "fp16")
    even = torch.zeros(4096, 512, dtype=torch.bool)
    even[:, ::8] = True                                  # 64 nonzeros per row
    skew = even.clone()
    skew[0, :] = True                                    # row 0 full: +448 nonzeros ...
    skew[1:449, 0] = False                               # ... taken from 448 other rows
    assert int(skew.sum()) == int(even.sum())
    c_even = estimate_op(op, layer_of(even, "unstructured:0.875", "fp16"), ese)
    c_skew = estimate_op(op, layer_of(skew, "unstructured:0.875", "fp16"), ese)
    assert c_skew.flops_executed == pytest.approx(c_even.flops_executed)
    assert c_skew.details["cycles"] > c_even.details["cycles"]
    assert c_skew.details["energy_compute_j"] > c_even.details["energy_compute_j"]


def test_fpga_energy_fields_are_checked():
    with pytest.raises(DeviceFileError, match="gated_fraction"):
        device_with("zcu102", gated_fraction=1.5)
    with pytest.raises(DeviceFileError, match="fabric_energy_factor"):
        device_with("zcu102", fabric_energy_factor=0)
