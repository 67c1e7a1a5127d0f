"""On-chip dataflow engines (S4-style, FPGA designs): what stays on chip, what spills, fused
elementwise ops in the MAC pipeline, sparsity that pays where the engine is compute bound, and
energy against the published power figures."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from op_cases import device_with, layer_of, linear

from sparsesim.cost import estimate_op
from sparsesim.cost.families.dataflow import onchip_traffic
from sparsesim.fidelity.gpu_validation import validate_gpu_published
from sparsesim.hw.devices import load_device
from sparsesim.run.estimate import cost_workload, prepare

S4 = load_device("s4-antoum")
DATAFLOW = ("s4-antoum", "alveo-u250", "zcu102")
RESNET = "resnet50:batch=8,device=meta"
# unstructured sparsity for the 1x..32x compression modes of the S4 engine
RATIOS = {1: "dense", 4: "unstructured:0.75", 8: "unstructured:0.875", 16: "unstructured:0.9375",
          32: "unstructured:0.96875"}
# the acceptance bands: throughput within 25%, energy within 2x of the published figure
THROUGHPUT_BAND, ENERGY_FACTOR = 0.25, 2.0


@pytest.fixture(scope="module")
def resnet():
    return prepare(RESNET, list(RATIOS.values()), dtype="int8")


def _run(prepared, plan, device, **kw):
    costs = cost_workload(prepared.sparse[plan], device, **kw)
    return costs, sum(c.latency_s for c in costs)


def test_traffic_rule():
    # everything fits: weights pinned, nothing crosses DRAM, all bytes on chip
    t = onchip_traffic(10, 20, 30, batch=4, buffer=100, model_weights=None)
    assert t.pinned and t.dram == 0 and t.onchip == 60 and t.microbatches == 1
    # the model's weights do not fit: the op streams its own weight; the batch is cut in micro-batches
    t = onchip_traffic(10, 200, 200, batch=8, buffer=110, model_weights=1000)
    assert not t.pinned and t.microbatches == 4 and t.weight_dram == 40 and t.spill_dram == 0
    # one sample larger than the buffer left over: its excess spills
    t = onchip_traffic(10, 200, 200, batch=1, buffer=110, model_weights=1000)
    assert t.spill_dram == pytest.approx(400 - 100) and t.dram == pytest.approx(310)
    # the weight alone fills the buffer: the caller's blocked model applies
    assert not onchip_traffic(200, 1, 1, batch=1, buffer=100, model_weights=None).fits


def test_s4_throughput_rises_with_sparsity_up_to_the_cap(resnet):
    """4x -> 32x changes throughput where the engine is compute bound (it did not when every
    elementwise op went through DRAM)."""
    lat = {r: _run(resnet, plan, S4)[1] for r, plan in RATIOS.items()}
    for lo, hi in ((1, 4), (4, 8), (8, 16), (16, 32)):
        assert lat[hi] < lat[lo] * 0.8, (lo, hi, lat)
    # beyond the engine's 32x cap nothing more is gained per layer
    assert lat[1] / lat[32] < 32


def test_fused_elementwise_costs_no_dram_trip(resnet):
    for name in DATAFLOW:
        dev = load_device(name)
        sw = resnet.sparse["unstructured:0.875"]
        costs, fused_lat = _run(resnet, "unstructured:0.875", dev)
        fused = [c for op, c in zip(sw.ops, costs) if c.details.get("fused_into", -1) >= 0]
        assert len(fused) > 100  # every BN and ReLU, and the residual adds
        assert all(c.bytes_by_level.get("dram", 0) == 0 for c in fused)
        assert all(c.latency_s == 0 for c in fused), "fused epilogues run inside the MAC pipeline"
        # the same engine without fusion pays a launch per elementwise op
        rt = dev.runtimes.by_name["engine"]
        off = dataclasses.replace(rt, fuse_elementwise=False, fuse_epilogue=False)
        unfused = dataclasses.replace(dev, runtimes=dataclasses.replace(
            dev.runtimes, by_name={**dev.runtimes.by_name, "engine": off}))
        assert _run(resnet, "unstructured:0.875", unfused)[1] > fused_lat


def test_activations_spill_when_the_buffer_is_small(resnet):
    small = device_with("s4-antoum", onchip_buffer=0.5)  # MB: less than one ResNet-50 activation
    costs, lat = _run(resnet, "unstructured:0.875", small)
    big_costs, big_lat = _run(resnet, "unstructured:0.875", S4)
    dram = sum(c.bytes_by_level.get("dram", 0) for c in costs)
    assert sum(c.bytes_by_level.get("dram", 0) for c in big_costs) == 0
    assert dram > 8 * 1e6 and lat > big_lat


@pytest.mark.parametrize("name", ("xeon-sapphire-rapids", "arm-cortex-a78"))
@pytest.mark.parametrize("runtime", ("eager", "engine"))
def test_cpu_average_power_within_tdp(resnet, name, runtime):
    """The CPU files state a TDP too: no runtime's kernels (the JIT and XNNPACK SpMMs included)
    draw more on average, nor less than the static power."""
    dev = load_device(name)
    assert dev.params.tdp > 0
    for plan in ("dense", "unstructured:0.9375"):
        costs, lat = _run(resnet, plan, dev, runtime=runtime)
        power = sum(c.energy_j for c in costs) / lat
        assert dev.params.static_power <= power <= dev.params.tdp, (plan, power)


@pytest.mark.parametrize("name", (*DATAFLOW, "ese-xcku060", "a100-sxm4-80gb", "h100-sxm5", "jetson-agx-orin"))
def test_average_power_within_tdp(resnet, name):
    """No device draws more than its TDP on average, nor less than its static power."""
    dev = load_device(name)
    for plan in ("dense", "unstructured:0.9375"):
        costs, lat = _run(resnet, plan, dev)
        power = sum(c.energy_j for c in costs) / lat
        assert dev.params.static_power <= power <= dev.params.tdp, (plan, power)


@pytest.fixture(scope="module")
def published():
    df = validate_gpu_published(["s4-antoum", "a100-sxm4-80gb"])
    return df.set_index("case")


def test_s4_mlperf_throughput_within_band(published):
    r = published.loc["mlperf-v2.1-resnet50-s4-int8-offline"]
    assert r["abs_error"] <= THROUGHPUT_BAND, r["predicted"]


@pytest.mark.parametrize("case", ["mlperf-v2.1-resnet50-s4-int8-energy", "mlperf-v2.1-resnet50-a100-trt-int8-energy"])
def test_energy_per_inference_within_2x_of_published_power(published, case):
    r = published.loc[case]
    assert 1 / ENERGY_FACTOR <= r["predicted"] / r["measured"] <= ENERGY_FACTOR, r["predicted"]


# ----------------------------------------------------------------------------- FPGA: ESE

def test_row_interleaved_pes_run_at_the_busiest_pe():
    ese = load_device("ese-xcku060")
    pes = int(ese.params.pe_rows * ese.params.pe_cols)
    op = linear(1, 4096, 512, "fp16")
    dense = estimate_op(op, None, ese)
    assert dense.details["cycles"] == (4096 // pes) * 512      # rows per PE x K, no systolic fill
    even = torch.zeros(4096, 512, dtype=torch.bool)
    even[:, ::8] = True                                        # 64 per row: perfectly balanced
    skew = even.clone()
    skew[0, :] = True                                          # one PE gets a full row
    c_even = estimate_op(op, layer_of(even, "unstructured:0.875", "fp16"), ese)
    c_skew = estimate_op(op, layer_of(skew, "unstructured:0.875", "fp16"), ese)
    assert c_even.details["cycles"] == pytest.approx(4 * 64)
    assert c_skew.details["cycles"] > c_even.details["cycles"]


@pytest.fixture(scope="module")
def ese_cases():
    return validate_gpu_published(["ese-xcku060"]).set_index("case")


def test_ese_op_rate_within_band(ese_cases):
    r = ese_cases.loc["ese-fpga17-lstm-op-rate"]
    assert r["abs_error"] <= THROUGHPUT_BAND, r["predicted"]


def test_ese_energy_within_2x_of_measured(ese_cases):
    """41 W measured: the fabric's energy gap over the ASIC per-action figures and the clocked
    array bring the model within 2x (with ASIC energies alone it predicted 0.31x)."""
    r = ese_cases.loc["ese-fpga17-lstm-energy"]
    assert 1 / ENERGY_FACTOR <= r["predicted"] / r["measured"] <= ENERGY_FACTOR, r["predicted"]


@pytest.mark.parametrize("name", ("alveo-u250", "zcu102", "ese-xcku060"))
def test_fpga_power_within_tdp_with_the_array_full(name):
    """A large dense GEMM keeps every PE busy (the most power the PE array draws), at every dtype
    the design runs: the average power stays within the TDP."""
    dev = load_device(name)
    for dtype in dev.params.dsp_per_mac:
        c = estimate_op(linear(4096, 4096, 4096, dtype), None, dev)
        assert c.bound == "compute" and c.utilization > 0.8, (dtype, c.why)
        assert dev.params.static_power < c.energy_j / c.latency_s <= dev.params.tdp, dtype
