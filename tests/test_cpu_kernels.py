"""CPU kernels by runtime: the mobile engine's sparse 1x1-conv SpMM on the Arm file, the per-call
weight-packing pass of a single-threaded BLAS beyond the last-level cache, and published figures
given as a range (no timing here)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sparsesim.core.ir import ConvGeometry, GemmShape, Op
from sparsesim.cost.families.cpu import JIT_SPMM, SPMM, spmm_tiles
from sparsesim.fidelity import measure
from sparsesim.fidelity.gpu_validation import TABLE_COLUMNS, measured_range, range_error, validate_gpu_published
from sparsesim.hw.devices import load_device
from sparsesim.run.estimate import cost_one
from sparsesim.sparsity.records import Pattern
from tests.op_cases import device_with, layer_of

ARM = "arm-cortex-a78"


def conv(cin: int, cout: int, hw: int, *, kernel: int = 1, groups: int = 1, dtype: str = "fp32") -> Op:
    """A stride-1 convolution over an hw x hw image, as the tracer records it (implicit GEMM)."""
    pad = kernel // 2
    geom = ConvGeometry(cin, cout, (kernel, kernel), (1, 1), (pad, pad), (1, 1), groups, (hw, hw), (hw, hw))
    m, n, k = hw * hw, cout // groups, cin // groups * kernel * kernel
    return Op(0, "conv", "aten.convolution", "conv", 0, dtype, ((1, cin, hw, hw), (cout, cin // groups, kernel, kernel)),
              (1, cout, hw, hw), 2 * m * n * k * groups, 4 * (m * k + n * k + m * n),
              GemmShape(m, n, k, groups=groups), geom, "fc.weight", (cout, cin // groups * kernel * kernel))


def sparse_layer(rows: int, cols: int, sparsity: float, dtype: str = "fp32"):
    mask = measure.random_mask(rows, cols, 1 - sparsity, seed=3)
    return layer_of(mask, Pattern("unstructured", 1 - sparsity), dtype)


def test_spatial_tiles_follow_the_kernel_ladder():
    assert spmm_tiles(49, 32) == [32, 16, 1]
    assert spmm_tiles(196, 32) == [32] * 6 + [4]
    assert spmm_tiles(3136, 32) == [32] * 98
    assert sum(spmm_tiles(12544 + 7, 32)) == 12544 + 7


def test_engine_runs_sparse_pointwise_convs_with_the_spmm_kernel_and_eager_does_not():
    arm = load_device(ARM)
    op = conv(384, 64, 14)
    layer = sparse_layer(64, 384, 0.8)
    dense = cost_one(op, None, arm, runtime="engine").latency_s
    engine = cost_one(op, layer, arm, runtime="engine")
    assert engine.kernel == SPMM and not engine.fallback
    assert 1.3 < dense / engine.latency_s < 1 / 0.2  # faster, but not the FLOP ratio
    eager = cost_one(op, layer, arm, runtime="eager")
    assert eager.kernel != SPMM and eager.latency_s >= dense * (1 - 1e-9)


def test_spmm_cost_follows_the_nonzeros():
    arm = load_device(ARM)
    op = conv(512, 512, 28)
    t = {s: cost_one(op, sparse_layer(512, 512, s), arm, runtime="engine").latency_s for s in (0.5, 0.75, 0.9)}
    assert t[0.5] > t[0.75] > t[0.9]
    # per-nonzero work: halving the nonzeros (0.5 -> 0.75 sparsity) nearly halves the time
    assert t[0.75] / t[0.5] == pytest.approx(0.5, rel=0.15)


def test_remainder_tiles_cost_the_value_offset_chain():
    """49 positions = 32 + 16 + 1: the 1-wide tile pays the whole per-nonzero chain for one lane's
    work, so a 7x7 layer costs more per position than a 8x8 one (64 = 2 x 32); one core, so the
    tiles' spread over the cores does not enter."""
    arm = device_with(ARM, cores=1)
    per_pos = {}
    for hw in (7, 8):
        c = cost_one(conv(960, 160, hw), sparse_layer(160, 960, 0.8), arm, runtime="engine")
        assert c.kernel == SPMM
        per_pos[hw] = c.details["compute_s"] / (hw * hw)
    assert per_pos[7] > per_pos[8] * 1.1


def test_spmm_serves_only_pointwise_ungrouped_convs():
    arm = load_device(ARM)
    for op, layer in ((conv(64, 64, 14, kernel=3), sparse_layer(64, 576, 0.8)),
                      (conv(64, 64, 14, kernel=3, groups=64), sparse_layer(64, 9, 0.8))):
        c = cost_one(op, layer, arm, runtime="engine")
        assert c.fallback and c.kernel == "dense (fallback)" and SPMM in c.why


def test_a_device_without_spmm_figures_has_no_spmm_kernel():
    xeon = device_with("xeon-sapphire-rapids", spmm_tile_m=0.0)
    c = cost_one(conv(384, 64, 14), sparse_layer(64, 384, 0.8), xeon, runtime="engine")
    assert c.kernel not in (SPMM, JIT_SPMM) and c.fallback


def linear(tokens: int, n: int, k: int) -> Op:
    return Op(0, "linear", "aten.addmm", "fc", 0, "fp32", ((tokens, k), (n, k)), (tokens, n), 2 * tokens * n * k,
              4 * (tokens * k + n * k + tokens * n), GemmShape(tokens, n, k), None, "fc.weight", (n, k))


def test_the_xeon_engine_runs_sparse_linears_with_the_jit_kernel_and_eager_with_torch_csr():
    """BERT-base's FFN linear (128 tokens, 3072 x 768) on the Xeon: the engine's compiled sparse
    GEMM gains with sparsity, never beyond 1/density, and is far faster than torch's CSR kernel
    (an index chain per nonzero) that eager PyTorch runs."""
    xeon = load_device("xeon-sapphire-rapids")
    op = linear(128, 3072, 768)
    dense = cost_one(op, None, xeon, runtime="engine").latency_s
    speed = {}
    for s in (0.7, 0.8, 0.9, 0.95):
        c = cost_one(op, sparse_layer(3072, 768, s), xeon, runtime="engine")
        assert c.kernel == JIT_SPMM and not c.fallback, c.why
        speed[s] = dense / c.latency_s
        assert speed[s] <= 1 / (1 - s)
    assert speed[0.7] < speed[0.8] < speed[0.9] < speed[0.95]
    assert speed[0.9] > 2
    eager = cost_one(op, sparse_layer(3072, 768, 0.9), xeon, runtime="eager")
    assert eager.kernel not in (SPMM, JIT_SPMM)
    assert eager.latency_s > 2 * cost_one(op, sparse_layer(3072, 768, 0.9), xeon, runtime="engine").latency_s


def test_the_jit_kernel_spreads_output_rows_over_the_cores_and_xnnpack_takes_no_linears():
    xeon = load_device("xeon-sapphire-rapids")
    layer = sparse_layer(3072, 768, 0.9)
    c = cost_one(linear(8, 3072, 768), layer, xeon, runtime="engine")
    assert c.kernel == JIT_SPMM and "56 core(s)" in c.why  # one 8-token tile, rows over every core
    one_core = cost_one(linear(8, 3072, 768), layer, device_with("xeon-sapphire-rapids", cores=1), runtime="engine")
    assert one_core.details["compute_s"] == pytest.approx(56 * c.details["compute_s"], rel=1e-6)
    arm = load_device(ARM)
    a = cost_one(linear(128, 3072, 768), layer, arm, runtime="engine")
    assert a.kernel != SPMM and f"{SPMM} runs 1x1 convolutions only" in a.why


def test_forced_kernel_is_the_only_choice():
    arm = load_device(ARM)
    c = cost_one(conv(384, 64, 14), sparse_layer(64, 384, 0.8), arm, runtime="eager", kernel=SPMM)
    assert c.kernel == SPMM


def test_weight_pack_pass_adds_the_weight_stream_beyond_the_llc():
    """A 16 MB fp32 weight on a CPU with a 4 MB LLC: with the per-call pack pass the dense GEMM
    at M = 16 takes its FMA time plus the weight read from DRAM, not the larger of the two."""
    off = device_with(ARM, weight_pack_pass={"value": False, "source": "test"}, cores=1)
    on = device_with(ARM, weight_pack_pass={"value": True, "source": "test"}, cores=1)
    from sparsesim.fidelity.calibrate import gemm_op

    op = gemm_op(16, 4096, 1024)
    a, b = cost_one(op, None, off), cost_one(op, None, on)
    stream = 4096 * 1024 * 4 / on.params.dram_bandwidth
    assert b.latency_s - a.latency_s == pytest.approx(min(stream, a.details["compute_s"]), rel=0.02)
    assert b.details["pack_s"] == pytest.approx(stream)


def test_measured_ranges_parse_and_score():
    assert measured_range("1.3..2.4") == (1.3, 2.4)
    assert measured_range("1.5") == (1.5, 1.5)
    for bad in ("2.4..1.3", "a..b", "1..2..3", "nan", "0..1"):
        assert measured_range(bad) is None
    assert range_error(1.8, 1.3, 2.4) == 0.0
    assert range_error(1.0, 1.3, 2.4) == pytest.approx(1 - 1.0 / 1.3)
    assert range_error(3.0, 1.3, 2.4) == pytest.approx(3.0 / 2.4 - 1)


def test_a_range_row_is_scored_against_its_range(tmp_path):
    from sparsesim.fidelity.gpu_validation import append_rows, summary

    table = tmp_path / "table.csv"
    table.write_text(",".join(TABLE_COLUMNS) + "\n")
    row = {"case": "pointwise-80", "device": ARM, "runtime": "engine", "dtype": "fp32", "M": 196, "N": 160,
           "K": 960, "pattern": "unstructured:0.8", "phase": "forward", "quantity": "speedup",
           "measured": "1.1..1.2", "direction": "faster", "source": "test", "conf": "D"}
    append_rows([row], table)
    df = validate_gpu_published(table=table)
    r = df.iloc[0]
    assert (r["measured_low"], r["measured_high"]) == (1.1, 1.2)
    assert r["measured"] == pytest.approx(math.sqrt(1.1 * 1.2))
    assert r["abs_error"] == pytest.approx(range_error(r["predicted"], 1.1, 1.2))
    s = summary(df)
    assert s["range_cases"] == 1 and s["with_value"] == 0
    assert s["inside_range"] == int(r["abs_error"] == 0)


def test_published_xnnpack_cases_land_inside_the_published_range():
    df = validate_gpu_published([ARM])
    xnn = df[df["case"].str.startswith("xnnpack-")]
    assert len(xnn) >= 3
    for _, r in xnn.iterrows():
        assert 1.3 <= r["predicted"] <= 2.4, r["why"]
        assert SPMM in r["kernel_used"] or SPMM in r["why"]
    # more zeros, more speed (the kernel pays per nonzero)
    assert list(xnn.sort_values("pattern")["predicted"]) == sorted(xnn["predicted"])


def test_cli_accepts_cpu_kernel_names():
    import argparse

    from sparsesim.cli.common import deployment
    from sparsesim.core.errors import SparsesimError

    ns = argparse.Namespace(runtime="engine", kernel=SPMM, dtype="")
    assert deployment(ns)["kernel"] == SPMM
    with pytest.raises(SparsesimError, match="xnnpack-spmm"):
        deployment(argparse.Namespace(runtime="", kernel="nope", dtype=""))


def test_effective_llc_is_the_largest_footprint_copying_near_the_llc_rate(monkeypatch):
    """The search over footprints (the copies themselves are replaced by a cache that holds 8 MiB)."""
    mib = 2**20
    monkeypatch.setattr(measure, "copy_bandwidth", lambda nbytes, repeats=3: 60e9 if 2 * nbytes <= 8 * mib else 20e9)
    assert measure.effective_llc_bytes(32 * mib, 60e9, 20e9, floor=mib) == 8 * mib
    monkeypatch.setattr(measure, "copy_bandwidth", lambda nbytes, repeats=3: 20e9)
    assert measure.effective_llc_bytes(32 * mib, 60e9, 20e9, floor=mib) == mib


def test_summary_scores_energy_apart_from_speed():
    """Energy rows are held to their factor-of-2 band, not counted in the speed median and p90."""
    import pandas as pd

    from sparsesim.fidelity.gpu_validation import ENERGY_FACTOR, RESULT_COLUMNS, summary

    def row(case, quantity, measured, predicted, direction="-"):
        r = dict.fromkeys(RESULT_COLUMNS, "")
        r.update(case=case, quantity=quantity, measured=measured, measured_low=measured, measured_high=measured,
                 predicted=predicted, abs_error=abs(predicted / measured - 1), direction=direction,
                 direction_right=True)
        return r

    df = pd.DataFrame([row("s1", "speedup", 1.5, 1.5, "faster"), row("s2", "throughput", 100.0, 110.0),
                       row("e1", "energy", 2.0, 1.2), row("e2", "energy", 1.5, 0.5)], columns=RESULT_COLUMNS)
    s = summary(df)
    assert s["with_value"] == 2 and s["median_abs_error"] == pytest.approx(0.05)
    assert s["energy_cases"] == 2 and s["energy_within"] == 1 and s["energy_factor"] == ENERGY_FACTOR
    assert s["energy_worst_ratio"] == pytest.approx(1 / 3)
    assert not s["targets_met"]                       # one energy outside 2x
    assert summary(df[df["case"] != "e2"])["targets_met"]


def test_few_row_gemms_run_as_one_gemv_per_row():
    """A BLAS runs up to `gemv_rows_max` activation rows as one unpacked GEMV each (every row
    streams the whole weight: 2 and 3 rows take 2x and 3x one row's time), then packs."""
    from sparsesim.fidelity.calibrate import gemm_op

    dev = device_with(ARM, weight_pack_pass={"value": True, "source": "test"},
                      gemv_rows_max={"value": 3, "unit": "1", "source": "test"}, cores=1)
    t = {m: cost_one(gemm_op(m, 4096, 1024), None, dev) for m in (1, 2, 3, 4)}
    one = t[1].latency_s - dev.params.call_overhead
    for m in (2, 3):
        assert t[m].latency_s - dev.params.call_overhead == pytest.approx(m * one, rel=1e-6)
        assert f"run as {m} GEMVs" in t[m].why and t[m].details["pack_s"] == 0
    assert t[4].details["pack_s"] > 0 and "GEMVs" not in t[4].why
    # a row count that is not a whole number >= 1 is refused, naming the field
    from sparsesim.core.errors import SparsesimError

    for bad in (0, 2.5):
        with pytest.raises(SparsesimError, match="gemv_rows_max"):
            device_with(ARM, gemv_rows_max={"value": bad, "unit": "1", "source": "test"})
    # the default (a device file that says nothing): only a one-row GEMM is a GEMV
    plain = device_with(ARM, weight_pack_pass={"value": True, "source": "test"}, cores=1)
    assert cost_one(gemm_op(2, 4096, 1024), None, plain).details["pack_s"] > 0


def test_calibration_reads_the_gemv_rows_off_the_beyond_llc_timings():
    from sparsesim.fidelity.calibrate import FIT_BEYOND_LLC_NK, Case, gemv_rows_max

    n, k = FIT_BEYOND_LLC_NK[0]

    def cases(times):
        return [Case("dense", "fp32", m, n, k, 1.0, 1, s) for m, s in times.items()]

    assert gemv_rows_max(cases({1: 7.5, 2: 15.7, 3: 23.7, 4: 21.6, 16: 32.3})) == 3   # this host, 8192x4096
    assert gemv_rows_max(cases({1: 7.5, 2: 9.0, 3: 9.5, 4: 10.0})) == 1                # packs from 2 rows
    assert gemv_rows_max(cases({1: 7.5, 4: 21.6})) == 1                                # 2 rows not timed


def _edge(full_mib: float, none_mib: float, **more):
    return device_with(ARM, cores=1, llc_full_bytes={"value": full_mib, "unit": "MiB", "source": "test"},
                       llc_none_bytes={"value": none_mib, "unit": "MiB", "source": "test"}, **more)


def test_the_llc_soft_edge_blends_the_llc_and_dram_rates_between_its_two_footprints():
    """A GEMV re-streaming its weight (one activation row, a loop of calls): below llc_full_bytes
    the LLC serves all of it, from llc_none_bytes on DRAM does, and between the share falls
    linearly; the stream rate is the harmonic blend and the bytes split between the levels.
    Without the fields the edge is hard at l3_bytes, as before."""
    from sparsesim.cost.families.cpu import llc_share, traffic
    from sparsesim.cost.record import ALONE

    dev = _edge(2, 6)  # l3_bytes 4 MiB in the middle
    p, mib = dev.params, 2**20
    assert llc_share(p, 1.5 * mib) == 1.0 and llc_share(p, 7 * mib) == 0.0
    assert llc_share(p, 4 * mib) == pytest.approx(0.5)
    t = traffic(p, 4 * mib, 0.0, ALONE)
    assert t.bytes_by_level == pytest.approx({"l3": 2 * mib, "dram": 2 * mib})
    assert t.seconds == pytest.approx(2 * mib / p.l3_bandwidth + 2 * mib / p.dram_bandwidth)
    assert "at the LLC's edge: 50% from l3" in t.where
    rates = [4 * 2**20 / traffic(p, w * mib, 0.0, ALONE).seconds for w in (1.9, 3, 4, 5, 6.1)]
    assert rates == sorted(rates, reverse=True) and rates[0] == pytest.approx(p.l3_bandwidth * 4 / 1.9, rel=1e-9)
    hard = load_device(ARM).params
    assert llc_share(hard, 4 * mib) == 1.0 and llc_share(hard, 4 * mib + 1) == 0.0


def test_a_packing_blas_holds_the_weight_twice_at_the_llc_edge():
    """With a per-call pack pass the weight and its packed copy share the cache: a 1.5 MiB weight
    (3 MiB with the copy, on a 2-6 MiB edge) is packed at a slower rate than it is read alone."""
    from sparsesim.fidelity.calibrate import gemm_op

    dev = _edge(2, 6, weight_pack_pass={"value": True, "source": "test"})
    w = 1.5 * 2**20 / 4
    c = cost_one(gemm_op(16, int(w // 384), 384), None, dev)
    weight = int(w // 384) * 384 * 4
    assert c.details["pack_s"] > weight / dev.params.l3_bandwidth * 1.1


def test_the_llc_edge_fit_recovers_a_ramp_and_the_file_checks_its_order():
    from sparsesim.core.errors import DeviceFileError
    from sparsesim.fidelity.calibrate import LLC_EDGE_FOOTPRINTS, fit_llc_edge

    llc = 16.0
    ramp = [(f * llc, min(1.0, max(0.0, (28 - f * llc) / 18))) for f in LLC_EDGE_FOOTPRINTS]
    lo, hi, err = fit_llc_edge(ramp, llc)
    assert (lo, hi) == (10.0, 28.0) and err == pytest.approx(0.0, abs=1e-12)
    assert fit_llc_edge([(f * llc, 1.0 if f <= 1 else 0.0) for f in LLC_EDGE_FOOTPRINTS], llc)[2] < 0.2
    with pytest.raises(DeviceFileError, match="llc_full_bytes <= l3_bytes <= llc_none_bytes"):
        _edge(5, 6)


def test_the_jit_kernel_runs_stride_one_convolutions_of_any_kernel_but_not_strided_ones():
    """A direct sparse convolution: a 3x3 stride-1 convolution runs `jit-spmm` (each nonzero's
    kernel offset is a load offset into the padded input; the slab it reads is the input
    channels x tile, not the im2col K x tile), a stride-2 one stays dense and says why."""
    xeon = load_device("xeon-sapphire-rapids")
    c = cost_one(conv(128, 128, 28, kernel=3), sparse_layer(128, 1152, 0.9), xeon, runtime="engine")
    assert c.kernel == JIT_SPMM and not c.fallback and "32 KiB activation slab in l1" in c.why
    dense = cost_one(conv(128, 128, 28, kernel=3), None, xeon, runtime="engine")
    assert 1 < dense.latency_s / c.latency_s <= 1 / 0.1
    geom = ConvGeometry(128, 128, (3, 3), (2, 2), (1, 1), (1, 1), 1, (28, 28), (14, 14))
    strided = Op(0, "conv", "aten.convolution", "conv", 0, "fp32", ((1, 128, 28, 28), (128, 128, 3, 3)),
                 (1, 128, 14, 14), 2 * 196 * 128 * 1152, 0, GemmShape(196, 128, 1152), geom, "fc.weight",
                 (128, 1152))
    s = cost_one(strided, sparse_layer(128, 1152, 0.9), xeon, runtime="engine")
    assert s.fallback and f"{JIT_SPMM} runs stride-1 ungrouped convolutions only" in s.why


@pytest.mark.parametrize("kernel", [SPMM, JIT_SPMM])
def test_a_forced_spmm_kernel_on_a_device_without_its_figures_falls_back_and_says_why(kernel):
    xeon = device_with("xeon-sapphire-rapids", spmm_tile_m=0.0)
    c = cost_one(conv(384, 64, 14), sparse_layer(64, 384, 0.8), xeon, runtime="engine", kernel=kernel)
    assert c.fallback and f"{kernel} was forced, but this device file describes no SpMM kernel" in c.why


def test_a_row_may_name_a_plan_file_for_some_layers(tmp_path):
    """A case that sparsifies only some layers names a plan file: one beside the table first, the
    packaged one from a table written elsewhere; a GEMM row (no layers to name) is refused."""
    from sparsesim.core.errors import WorkloadError
    from sparsesim.fidelity.gpu_validation import append_rows, load_table, table_plan

    assert Path(table_plan("plans/sam-vit-h-mlp-2of4.toml")).is_file()
    table = tmp_path / "table.csv"
    table.write_text(",".join(TABLE_COLUMNS) + "\n")
    (tmp_path / "ffn.toml").write_text('[rules]\n"encoder.layer.*.intermediate.dense" = "unstructured:0.9"\n')
    row = {"case": "ffn-only", "device": "xeon-sapphire-rapids", "runtime": "engine", "dtype": "fp32",
           "workload": "bert-base:batch=2,seq=64,layers=2,device=meta", "pattern": "ffn.toml", "phase": "forward",
           "quantity": "speedup", "measured": "1.1", "direction": "faster", "source": "test", "conf": "D"}
    append_rows([row, dict(row, case="uniform", pattern="unstructured:0.9")], table)
    assert load_table(table)[0]["plan"] == str(tmp_path / "ffn.toml")
    ffn, uniform = validate_gpu_published(table=table)["predicted"]
    assert 1.0 < ffn < uniform  # one of a layer's six linears sparse: some of the whole plan's gain
    with pytest.raises(WorkloadError, match="needs a workload"):
        append_rows([dict(row, case="gemm", workload="", M=8, N=64, K=64)], table)
