"""The GPU tensor-core model: roofline invariants, properties, and the published behaviours
(published.md §2-3) it must reproduce without being fitted to them."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsesim.core.ir import DTYPE_BYTES, GemmShape, Op
from sparsesim.cost import ALONE, estimate_op
from sparsesim.cost.families.gpu import compute_unit, kernel_env
from sparsesim.cost.families.gpu_machine import tiling
from sparsesim.fidelity.gpu_validation import gemm_op, layer_for, validate_gpu_published
from sparsesim.hw.devices import load_device
from sparsesim.run.estimate import cost_one
from sparsesim.sparsity.patterns import parse_pattern
from sparsesim.sparsity.records import LayerSparsity, Pattern
from sparsesim.sparsity.shrink import shrink_layer_op
from sparsesim.sparsity.stats import measure_stats

GPUS = ("a100-sxm4-80gb", "h100-sxm5", "jetson-agx-orin")
DEV = {name: load_device(name) for name in GPUS}
A100 = DEV["a100-sxm4-80gb"]


def cost(dev, m, n, k, pattern="dense", dtype="fp16", runtime="", kernel=""):
    op = gemm_op(m, n, k, dtype)
    layer = None if pattern == "dense" else layer_for("weight", n, k, parse_pattern(pattern), dtype)
    return cost_one(shrink_layer_op(op, layer), layer, dev, runtime=runtime, kernel=kernel)


def speedup(dev, m, n, k, pattern, dtype="fp16", runtime="", kernel=""):
    return (cost(dev, m, n, k, "dense", dtype, runtime).latency_s
            / cost(dev, m, n, k, pattern, dtype, runtime, kernel).latency_s)


def launch(dev):
    return kernel_env(dev, ALONE).launch


# ----------------------------------------------------------------------------- invariants

dims = st.integers(min_value=1, max_value=8192)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=dims, n=dims, k=dims, dtype=st.sampled_from(["fp16", "bf16", "fp32", "int8"]),
       dev=st.sampled_from(GPUS))
def test_dense_roofline_bound(m, n, k, dtype, dev):
    d = DEV[dev]
    p = d.params
    c = cost(d, m, n, k, "dense", dtype)
    db = DTYPE_BYTES[dtype]
    flops = 2.0 * m * n * k
    compulsory = (m * k + n * k + m * n) * db
    bound = max(flops / compute_unit(p, dtype).peak, compulsory / p.dram_bandwidth)
    assert c.latency_s >= bound, (c.latency_s, bound, c.why)
    assert c.latency_s >= launch(d)
    assert c.bound in ("compute", "memory", "overhead")
    assert c.energy_j >= p.static_power * c.latency_s


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mi=st.integers(1, 256), ni=st.integers(1, 128), ki=st.integers(1, 128), dev=st.sampled_from(GPUS))
def test_sparse_24_roofline_bound(mi, ni, ki, dev):
    """2:4 can at best double the math rate and halve the weight bytes, never beat that bound."""
    d = DEV[dev]
    p = d.params
    m, n, k = mi * 16, ni * 32, ki * 64  # aligned for every device's 2:4 kernel
    c = cost(d, m, n, k, "2:4")
    assert c.kernel.startswith("2:4 sparse tensor core") and not c.fallback, c.why
    flops = 2.0 * m * n * k
    sparse_bytes = (m * k + m * n) * 2 + c.memory_bytes
    bound = max(flops / p.sparse_tensor_peak["fp16"], sparse_bytes / p.dram_bandwidth)
    assert c.latency_s >= bound
    assert c.energy_j >= p.static_power * c.latency_s


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16), dev=st.sampled_from(GPUS))
def test_dense_time_ignores_zeros(density, seed, dev):
    """A dense-pattern weight costs the same whatever zeros its mask happens to hold."""
    n, k, m = 256, 512, 384
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, k, generator=g) < density).to(torch.uint8)
    stats = measure_stats(mask)
    layer = LayerSparsity("weight", Pattern("dense"), stats, "dense", n * k * 2, n * k * 2, 0)
    op = gemm_op(m, n, k, "fp16")
    with_stats = estimate_op(op, layer, DEV[dev])
    without = estimate_op(op, None, DEV[dev])
    assert with_stats.latency_s == without.latency_s
    assert with_stats.energy_j == without.energy_j


@pytest.mark.parametrize("dev", GPUS)
@pytest.mark.parametrize("m,n,k,sparsity", [(4096, 4096, 4096, 0.5), (8, 11008, 4096, 0.25), (197, 768, 3072, 0.75)])
def test_channel_pruning_equals_smaller_dense_op(dev, m, n, k, sparsity):
    d = DEV[dev]
    layer = layer_for("weight", n, k, parse_pattern(f"channel:{sparsity}"), "fp16")
    pruned = estimate_op(shrink_layer_op(gemm_op(m, n, k, "fp16"), layer), layer, d)
    st_ = layer.stats
    small = estimate_op(gemm_op(m, st_.kept_rows, st_.kept_cols, "fp16"), None, d)
    assert pruned.latency_s == small.latency_s
    assert pruned.energy_j == small.energy_j
    assert dict(pruned.bytes_by_level) == dict(small.bytes_by_level)
    assert not pruned.fallback and "channel pruning" in pruned.why


def test_channel_pruning_by_half_is_close_to_2x():
    s = speedup(A100, 8192, 8192, 8192, "channel:0.5")
    assert 1.7 <= s <= 2.1, f"channel:0.5 on a large GEMM: {s:.2f}x (expected close to 2x)"


@pytest.mark.parametrize("dev", GPUS)
@pytest.mark.parametrize("pattern", ["dense", "2:4", "1:4", "4:8", "unstructured:0.9", "unstructured:0.99",
                                     "block4x4:0.5", "block32x32:0.75", "channel:0.5"])
def test_energy_covers_static_power(dev, pattern):
    d = DEV[dev]
    c = cost(d, 1024, 2048, 1024, pattern)
    assert c.energy_j >= d.params.static_power * c.latency_s
    assert c.latency_s > 0 and 0 <= c.utilization <= 1


# ----------------------------------------------------------------------------- published behaviour

def test_pytorch_tutorial_linear_24_on_a100():
    """nn.Linear(10240 -> 3072), x = 3072 x 10240, fp16: published 0.870 -> 0.630 ms, 1.382x
    (torch's CUTLASS backend, eager)."""
    s = speedup(A100, 3072, 3072, 10240, "2:4", runtime="eager", kernel="cutlass-24")
    assert 1.15 <= s <= 1.7, f"predicted {s:.3f}x vs published 1.382x (PyTorch 2:4 tutorial, A100): must be well under 2x"
    assert abs(s / 1.382 - 1) <= 0.20, f"predicted {s:.3f}x vs published 1.382x: error {abs(s / 1.382 - 1):.1%} > 20%"


def test_torchao_training_linear_24_on_a100():
    """torchao 2:4 training linear (M,K,N) = (13008,1024,4096): published 1.6608 -> 1.3420 ms, 1.24x."""
    from sparsesim.fidelity.gpu_validation import load_table, predict_case

    row = next(r for r in load_table() if r["case"].startswith("torchao-training"))
    s = predict_case(row, A100)["predicted"]
    err = abs(s / 1.2376 - 1)
    assert 1.0 < s < 1.7, f"predicted {s:.3f}x vs published 1.238x (torchao README)"
    assert err <= 0.20, f"predicted {s:.3f}x vs published 1.238x: error {err:.1%}"


@pytest.mark.parametrize("dev", ["a100-sxm4-80gb", "h100-sxm5"])
def test_batch1_gemv_24_gives_no_speedup(dev):
    """pytorch#111339: 4096x4096 weight, 1x4096 input: no speedup (forum: 2:4 decode ~12% slower)."""
    d = DEV[dev]
    s = speedup(d, 1, 4096, 4096, "2:4")
    c = cost(d, 1, 4096, 4096, "2:4")
    assert s <= 1.10, f"{dev}: batch-1 GEMV 2:4 predicted {s:.3f}x, published: no speedup (pytorch#111339)"
    assert "padded" in c.why, c.why


@pytest.mark.parametrize("dev", GPUS)
def test_large_gemm_24_faster_but_well_under_2x(dev):
    s = speedup(DEV[dev], 8192, 8192, 8192, "2:4")
    assert 1.1 <= s <= 1.75, f"{dev}: 8192^3 fp16 2:4 predicted {s:.3f}x; published: faster, well under 2x (<= 1.7x ceiling)"


@pytest.mark.parametrize("dev", ["a100-sxm4-80gb", "h100-sxm5"])
def test_csr_90pct_slower_than_dense_and_crossover_above_95pct(dev):
    """A Sputnik-like CSR kernel (the engine's) against dense: slower at 90%, faster only above 95%."""
    d = DEV[dev]

    def speedup(d, m, n, k, pattern):
        return globals()["speedup"](d, m, n, k, pattern, runtime="engine", kernel="sputnik")

    s90 = speedup(d, 4096, 4096, 4096, "unstructured:0.9")
    assert s90 < 1, f"{dev}: CSR at 90% sparsity predicted {s90:.2f}x; cuSPARSE guidance: slower than dense below 95%"
    assert cost(d, 4096, 4096, 4096, "unstructured:0.9").kernel.startswith("csr")
    # bisect the sparsity where CSR starts to beat dense
    lo, hi = 0.5, 0.9999
    assert speedup(d, 4096, 4096, 4096, f"unstructured:{hi}") > 1
    for _ in range(20):
        mid = (lo + hi) / 2
        if speedup(d, 4096, 4096, 4096, f"unstructured:{mid}") > 1:
            hi = mid
        else:
            lo = mid
    assert hi > 0.95, f"{dev}: CSR beats dense from {hi:.3f} sparsity; guidance says only above ~95%"


def test_block_sparsity_depends_on_block_size():
    """Bigger blocks run faster, yet half the blocks of a 4096^3 GEMM are still slower than
    cuBLAS: torch's BSR kernel multiplies one block row at a time (measured on an H200: 16x16
    blocks 0.06x, 32x32 0.14x, 64x64 at 75% 0.36x of dense; validation_data/gpu_measured.csv)."""
    small = speedup(A100, 4096, 4096, 4096, "block4x4:0.5")
    big = speedup(A100, 4096, 4096, 4096, "block32x32:0.5")
    assert small < big < 1, f"block4x4 {small:.2f}x, block32x32 {big:.2f}x"
    assert "tensor cores" in cost(A100, 4096, 4096, 4096, "block32x32:0.5").why


def test_24_decode_gemv_runs_a_whole_tile_unless_the_runtime_searches():
    """torch calls one default configuration of its 2:4 libraries: its CTA tile covers 128 tokens
    whatever M is, so a decode GEMV computes a mostly empty tile; an engine's algorithm search
    picks a thin tile and the compressed weight streams at the DRAM rate. Whole Llama-2-7B decode
    in eager PyTorch is then no faster with 2:4 (pytorch#111339 and the RTX 4090 decode report,
    published.md §2.5, say so)."""
    from sparsesim.run.estimate import compare_tables

    eager = cost(A100, 1, 11008, 4096, "2:4", runtime="eager", kernel="cusparselt")
    engine = cost(A100, 1, 11008, 4096, "2:4", runtime="engine", kernel="cusparselt")
    assert eager.bound == "compute" and engine.bound == "memory", (eager.why, engine.why)
    assert eager.details["compute_s"] > 8 * engine.details["compute_s"]
    t = compare_tables("llama2-7b:phase=decode,kv=128", [A100], ["dense", "2:4"], runtime="eager")
    assert t.summary.set_index("plan").loc["2:4", "speedup_vs_dense"] < 1.0
    # at a prefill's M the tile is full either way: the runtimes agree on the GEMM
    big = [cost(A100, 4096, 11008, 4096, "2:4", runtime=rt, kernel="cusparselt") for rt in ("compiled", "engine")]
    assert big[0].details["compute_s"] == pytest.approx(big[1].details["compute_s"], rel=0.02)


def test_torchs_cutlass_24_kernel_has_no_fp8():
    """torch builds its CUTLASS 2:4 kernel for int8, fp16, bf16 and tf32, cuSPARSELt for fp8 too
    (torch/sparse/semi_structured.py): forced, CUTLASS at fp8 falls back to dense and says why;
    left to pick, the runtime takes cuSPARSELt."""
    h100 = DEV["h100-sxm5"]
    forced = cost(h100, 16, 4096, 4096, "2:4", dtype="fp8", runtime="eager", kernel="cutlass-24")
    assert forced.fallback and "no fp8 kernel" in forced.why
    picked = cost(h100, 16, 4096, 4096, "2:4", dtype="fp8", runtime="eager")
    assert "cusparselt" in picked.kernel, picked.why


# published GEMM cases whose direction the model does not reproduce yet (none since 2026-12-05,
# when SlideSparse's H100 was read as a PCIe part: its 2048^3 break-even is the A100's, 128 tiles of
# 128x256 in two waves on fewer than 128 SMs; the 1024^3 fp8 slowdown since cuBLAS picks a smaller
# CTA tile for small problems while the sm90 sparse kernel keeps its 128x256 tile). Listed so a
# change that breaks one must name it.
KNOWN_DIRECTION_MISSES: set[str] = set()


def test_published_gemm_cases_direction():
    """Every GEMM case of the published table (the whole-model ones are in test_runtime) comes out
    in the direction its source reports, but for the known misses listed above."""
    df = validate_gpu_published(["a100-sxm4-80gb", "h100-sxm5", "h100-pcie"])
    gemm = df[df["workload"] == ""]
    assert len(gemm) >= 20
    table = gemm[["case", "measured", "predicted", "direction", "predicted_direction"]].to_string()
    wrong = set(gemm.loc[~gemm["direction_right"], "case"])
    assert wrong == KNOWN_DIRECTION_MISSES, table


# ----------------------------------------------------------------------------- fallbacks

def test_misaligned_24_runs_dense_and_says_why():
    c = cost(A100, 4096, 1000, 4096, "2:4")
    d = cost(A100, 4096, 1000, 4096, "dense")
    assert c.fallback and c.kernel.startswith("dense")
    assert "N=1000 must be a multiple of 32" in c.why
    assert c.latency_s == d.latency_s
    k_bad = cost(A100, 4096, 4096, 4000, "2:4")
    assert k_bad.fallback and "K=4000 must be a multiple of 64" in k_bad.why


def test_14_runs_as_24_and_48_falls_back():
    c14 = cost(A100, 4096, 4096, 4096, "1:4")
    assert c14.fallback and c14.kernel.startswith("2:4 sparse tensor core") and "runs as 2:4" in c14.why
    c48 = cost(A100, 4096, 4096, 4096, "4:8")
    assert c48.fallback and "does not fit the 2:4" in c48.why
    assert c48.latency_s <= cost(A100, 4096, 4096, 4096, "dense").latency_s


def test_fp32_has_no_sparse_tensor_cores_unless_tf32():
    c = cost(A100, 4096, 4096, 4096, "2:4", dtype="fp32")
    assert c.fallback and "fp32_uses_tf32" in c.why
    assert "CUDA cores" in cost(A100, 4096, 4096, 4096, "dense", dtype="fp32").why


def test_fp8_on_a100_is_flagged():
    c = cost(A100, 1024, 1024, 1024, "dense", dtype="fp8")
    assert c.fallback and "fp8" in c.why
    h = cost(DEV["h100-sxm5"], 1024, 1024, 1024, "dense", dtype="fp8")
    assert not h.fallback


def _op(kind, aten, **kw):
    base = dict(index=0, kind=kind, aten=aten, module="m", call_index=0, dtype="fp16",
                input_shapes=((64, 1024),), output_shape=(64, 1024), flops=0, bytes_moved=4 * 64 * 1024 * 2)
    base.update(kw)
    return Op(**base)


def test_unknown_op_is_a_flagged_memory_op():
    c = estimate_op(_op("unknown", "aten.weird_op.default"), None, A100)
    assert c.fallback and "no formula for aten.weird_op.default" in c.why
    p = A100.params
    assert c.latency_s == pytest.approx(4 * 64 * 1024 * 2 / (p.dram_bandwidth * p.dram_efficiency) + launch(A100))


def test_memory_op_is_bytes_over_bandwidth_plus_launch():
    c = estimate_op(_op("elementwise", "aten.add.Tensor"), None, A100)
    p = A100.params
    assert not c.fallback and c.kernel == "memory"
    assert c.latency_s == pytest.approx(c.bytes_by_level["dram"] / (p.dram_bandwidth * p.dram_efficiency)
                                        + launch(A100))


def test_attention_is_two_dense_gemms():
    b, h, lq, lk, d = 8, 12, 384, 384, 64
    g = GemmShape(m=lq, n=lk, k=d, batch=b * h)
    op = _op("attention", "aten._scaled_dot_product_flash_attention.default", gemm=g,
             flops=2 * 2 * b * h * lq * lk * d, input_shapes=((b, h, lq, d),) * 3, output_shape=(b, h, lq, d))
    c = estimate_op(op, None, A100)
    assert c.flops_executed == op.flops
    assert c.kernel == "flash attention" and not c.fallback
    assert c.latency_s >= op.flops / A100.params.tensor_peak["fp16"]


def test_dense_gemv_is_memory_bound_on_weights():
    c = cost(A100, 1, 4096, 4096, "dense")
    assert c.bound == "memory", c.why
    assert c.bytes_by_level["dram"] >= 4096 * 4096 * 2


def test_wave_quantisation_shows_in_latency():
    """One tile more than the SMs can hold costs a whole extra wave at the device tile; the
    library then picks a quarter-size tile (5 waves of them), so the tail costs a quarter wave."""
    p = A100.params
    sms = int(p.sm_count)
    full = cost(A100, 128 * sms, 128, 8192)
    spill = cost(A100, 128 * sms + 1, 128, 8192)
    assert tiling(p, GemmShape(m=128 * sms + 1, n=128, k=8192), 2.0).waves == 2
    assert full.details["waves"] == 1 and spill.details["waves"] == 5
    assert 1.2 * full.latency_s > spill.latency_s > 1.05 * full.latency_s


def test_small_gemm_spreads_over_more_sms_with_smaller_tiles():
    """cuBLAS-like tile choice: a GEMM of one device tile runs as several smaller tiles, while the
    2:4 kernel on Hopper keeps its 128x256 tile (why small sparse GEMMs lose to dense there)."""
    h100 = DEV["h100-sxm5"]
    small = cost(h100, 113, 241, 257)
    assert small.details["tiles"] == 4, small.why
    big = cost(h100, 1024, 1024, 1024, "2:4", dtype="fp8")
    assert cost(h100, 1024, 1024, 1024, dtype="fp8").latency_s < big.latency_s


# ----------------------------------------------------------------------------- validation table

def test_validation_table_rows_cite_sources():
    from sparsesim.fidelity.gpu_validation import load_table

    rows = load_table()
    assert len(rows) >= 4
    for r in rows:
        assert r["source"].strip() and r["conf"].strip() and r["date_added"].strip(), r["case"]
        load_device(r["device"])


def test_validation_table_errors_name_file_and_row(tmp_path):
    from sparsesim.core.errors import WorkloadError
    from sparsesim.fidelity.gpu_validation import TABLE_COLUMNS, load_table, published_table_path

    text = published_table_path().read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([text[0], text[1].replace(",3072,3072,10240,", ",3072,x,10240,")]) + "\n")
    with pytest.raises(WorkloadError, match=r"bad.csv:2 .*column N"):
        load_table(bad)
    short = tmp_path / "short.csv"
    short.write_text(",".join(TABLE_COLUMNS[:-1]) + "\n")
    with pytest.raises(WorkloadError, match="date_added"):
        load_table(short)
    rt = tmp_path / "runtime.csv"
    rt.write_text("\n".join([text[0], text[1].replace(",eager,", ",jit,", 1)]) + "\n")
    with pytest.raises(WorkloadError, match=r"runtime must be one of eager, compiled, engine"):
        load_table(rt)


def _measured_row(**kw):
    row = {"case": "measured-2:4-4096x4096x4096-fp16", "device": "h100-sxm5", "runtime": "eager", "dtype": "fp16",
           "workload": "", "M": 4096, "N": 4096, "K": 4096, "kernel": "cusparselt", "pattern": "2:4",
           "phase": "forward", "quantity": "speedup", "dense_ms": "0.2", "sparse_ms": "0.16", "measured": "1.25",
           "ref_runtime": "", "direction": "faster", "source": "test", "conf": "M", "date_added": "2026-11-22"}
    row.update(kw)
    return row


def test_appended_rows_are_validated_and_unknown_gpus_kept(tmp_path):
    from sparsesim.core.errors import WorkloadError
    from sparsesim.fidelity.gpu_validation import TABLE_COLUMNS, append_rows

    table = tmp_path / "table.csv"
    table.write_text(",".join(TABLE_COLUMNS) + "\n")
    row = _measured_row()
    other = _measured_row(case="measured-on-an-unknown-gpu", device="nvidia-geforce-rtx-4090")
    append_rows([row, other], table)
    df = validate_gpu_published(table=table)
    h = df[df["case"] == row["case"]].iloc[0]
    assert h["predicted"] > 1 and h["direction_right"]
    assert h["abs_error"] == pytest.approx(abs(h["predicted"] / 1.25 - 1))
    u = df[df["device"] == "nvidia-geforce-rtx-4090"].iloc[0]
    assert math.isnan(u["predicted"]) and "not predicted" in u["why"] and not u["direction_right"]
    only_h100 = validate_gpu_published(["h100-sxm5"], table=table)
    assert list(only_h100["case"]) == [row["case"]]
    with pytest.raises(WorkloadError, match="quantity"):
        append_rows([_measured_row(quantity="speed")], table)


# ----------------------------------------------------------------------------- the GPU measurement script

def _measure_module():
    return _benchmark_module("gpu_measure")


def test_gpu_measure_helpers():
    gm = _measure_module()
    assert gm.device_file_name("NVIDIA A100-SXM4-80GB") == "a100-sxm4-80gb"
    assert gm.device_file_name("NVIDIA H100 80GB HBM3") == "h100-sxm5"
    assert gm.device_file_name("NVIDIA A100 80GB PCIe") == "nvidia-a100-80gb-pcie"  # no file: kept, not predicted
    w = torch.randn(64, 128)
    m = gm.mask_24(w)
    assert m.shape == w.shape and bool((m.reshape(64, 32, 4).sum(-1) == 2).all())
    kept = (w.abs() * m).reshape(64, 32, 4).sum(-1)
    assert bool((kept >= (w.abs() * ~m).reshape(64, 32, 4).sum(-1)).all())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_gpu_measure_without_gpu_exits_2_and_writes_nothing(capsys, tmp_path):
    gm = _measure_module()
    out = tmp_path / "t.csv"
    assert gm.main(["--out", str(out)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("dev", list(DEV.values()), ids=GPUS)
def test_24_moves_its_metadata_from_dram(dev):
    # a batch-1 2:4 GEMV streams the compressed values and the metadata: neither the off-chip
    # bytes nor the memory time may leave the metadata out
    n = k = 4096
    c = cost(dev, 1, n, k, "2:4")
    assert c.kernel.startswith("2:4 sparse tensor core")
    p = dev.params
    values = n * k // 2 * DTYPE_BYTES["fp16"]
    assert c.metadata_bytes > 0
    assert c.bytes_by_level["dram"] >= values
    dram_bw = p.dram_bandwidth * p.dram_efficiency
    assert c.details["memory_s"] >= (values + c.metadata_bytes) / dram_bw


def test_gpu_measure_cpu_smoke_rows_fit_the_table(tmp_path):
    """The script's non-GPU paths (dense, CSR, BSR on the CPU) produce rows the table accepts."""
    import argparse

    from sparsesim.fidelity.gpu_validation import append_rows, load_table

    gm = _measure_module()
    args = argparse.Namespace(cpu_smoke=True, quick=True, dtypes="fp32", repeats=3, inner=1, device_name=None,
                              no_bert=True, budget_s=None, gemm_budget_s=None, diagnose=False, no_probes=True,
                              compile_mode="max-autotune", shapes="", runtimes="eager,engine")
    rows: list[dict] = []
    gm.measure(args, rows.append)
    assert rows and all(r["runtime"] == "eager" and r["quantity"] == "speedup" for r in rows)
    assert {r["kernel"] for r in rows} == {"cusparse-csr", "bsr"}
    table = tmp_path / "t.csv"
    append_rows(rows, table)
    assert len(load_table(table)) == len(rows)
    assert all("cpu-smoke" in r["source"] and r["date_added"] for r in rows)


def test_gpu_measure_int4_op_rate_rows_fit_the_table_and_are_predicted(tmp_path):
    """The int4 (tinygemm) and bf16 op-rate rows the script writes are table rows that the model
    predicts through the forced kernel: 2MNK over the kernel's time."""
    from sparsesim.fidelity.gpu_validation import append_rows, load_table, predict_case

    gm = _measure_module()
    rows = [gm.op_rate_row(gpu="a100-sxm4-80gb", dtype=dt, kernel=k, timing=gm.Timing(0.02, 0.1),
                           shape=(1, 4096, 4096), source="test") for dt, k in (("bf16", "cublas"), ("int4", "tinygemm"))]
    table = tmp_path / "t.csv"
    append_rows(rows, table)
    assert len(load_table(table)) == 2
    assert float(rows[0]["measured"]) == pytest.approx(2 * 4096 * 4096 / 20e-6, rel=1e-4)  # 5 digits kept
    for r in rows:
        p = predict_case({k: str(v) for k, v in r.items()}, A100)
        assert p["predicted"] == pytest.approx(2 * 4096 * 4096 / (p["predicted_dense_ms"] * 1e-3))
        assert r["kernel"] in p["kernel_used"]


def test_gpu_measure_probes_print_elementwise_rates_against_a_copy(capsys):
    """The kernel-rate probes' CPU path: every elementwise op is timed over one tensor and its rate
    printed as a fraction of the copy's (the CUDA-graph probe needs a GPU)."""
    gm = _measure_module()
    gm.measure_probes(cuda=False, deadline=gm.Deadline(None), rep={"repeats": 3, "inner": 1, "cuda": False})
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("probe: elementwise")]
    assert [ln.split()[2] for ln in lines] == [name for name, _ in gm.PROBE_OPS]
    assert "1.00 of the copy's rate" in lines[0]
    assert all(float(ln.split(" GB/s")[0].rsplit(" ", 1)[1]) > 0 for ln in lines)


def test_sparse_tile_waves_explain_the_a100_dip_at_2048():
    """cuSPARSELt's 128x256 tile: 2048^3 is 128 tiles, two waves on 108 SMs (59% full), while
    cuBLAS's smaller tiles fill them; at 1024^3 and 4096^3 the waves fill as well as dense's."""
    speed = {}
    for s in (1024, 2048, 4096):
        sparse = cost_one(gemm_op(s, s, s, "fp16"), layer_for("weight", s, s, parse_pattern("2:4"), "fp16"), A100, runtime="engine", kernel="cusparselt")
        dense = cost_one(gemm_op(s, s, s, "fp16"), None, A100, runtime="engine")
        speed[s] = dense.latency_s / sparse.latency_s
        if s == 2048:
            assert sparse.details["waves"] == 2 and sparse.details["tiles"] == 128
    assert speed[2048] < 1.1 < speed[1024] < speed[4096]
    # torch's CUTLASS kernel keeps CUTLASS's 128x128 tile of the device file (256 tiles, 3 waves)
    cutlass = cost_one(gemm_op(2048, 2048, 2048, "fp16"), layer_for("weight", 2048, 2048, parse_pattern("2:4"), "fp16"), A100, runtime="eager",
                       kernel="cutlass-24")
    assert cutlass.details["tiles"] == 256


def test_gpu_measure_stops_at_its_budget(capsys):
    """A run on a lent GPU ends inside its lease: past the budget no new case starts."""
    import argparse

    gm = _measure_module()
    args = argparse.Namespace(cpu_smoke=True, quick=True, dtypes="fp32", repeats=3, inner=1, device_name=None,
                              no_bert=True, budget_s=None, gemm_budget_s=1e-9, diagnose=False, no_probes=False,
                              compile_mode="max-autotune", shapes="", runtimes="eager,engine")
    rows: list[dict] = []
    gm.measure(args, rows.append)
    assert rows == [] and "budget spent: GEMMs stop before" in capsys.readouterr().out


# ----------------------------------------------------------------------------- measured on an H200

H200 = load_device("h200")


def test_h200_extends_the_h100_runtime_field_by_field():
    """h200.toml sets a few runtime fields over the H100 file's: the rest are inherited."""
    h100 = DEV["h100-sxm5"]
    eager, base = H200.runtime("eager")[1], h100.runtime("eager")[1]
    assert eager.host_dispatch == base.host_dispatch and eager.kernels == base.kernels
    assert eager.kernel_dispatch["cusparselt"] == pytest.approx(330e-6)
    assert base.kernel_dispatch["cusparselt"] == pytest.approx(30e-6)
    assert eager.serial_dispatch == ("cusparselt",) and not base.serial_dispatch
    # the per-kernel table merges entry by entry: the H100's Sparse-Marlin host time is inherited
    assert eager.kernel_dispatch == {"bsr": pytest.approx(220e-6), "cusparse-csr": pytest.approx(5e-6),
                                     "cusparselt": pytest.approx(330e-6), "sparse-marlin": pytest.approx(30e-6),
                                     "tinygemm": pytest.approx(30e-6)}
    assert H200.params.dram_bandwidth > h100.params.dram_bandwidth
    assert H200.provenance["sparse_gemm_efficiency"].fit_date == "2026-12-04"


def test_torch_has_no_cutlass_24_kernels_on_hopper():
    """torch's CUTLASS 2:4 kernels are built for compute capability 8.x (measured on an H200:
    'Supported only on GPUs with compute capability 8.x'): eager and compiled on Hopper offer
    cuSPARSELt only, while the A100 keeps both."""
    for dev in (DEV["h100-sxm5"], H200):
        for rt in ("eager", "compiled"):
            assert not dev.runtime(rt)[1].offers("cutlass-24") and dev.runtime(rt)[1].offers("cusparselt")
    assert A100.runtime("eager")[1].offers("cutlass-24")


def test_measured_runtime_flip_of_a_24_gemm_on_the_h200():
    """Measured on an H200 at 4096^3 fp16: 2:4 through torch's eager semi-structured linear is
    0.21x of dense (each call sets up a cuSPARSELt plan on the host), the same kernel called
    directly from a CUDA graph 1.47x. The model gets the sign of both."""
    eager = speedup(H200, 4096, 4096, 4096, "2:4", runtime="eager", kernel="cusparselt")
    engine = speedup(H200, 4096, 4096, 4096, "2:4", runtime="engine", kernel="cusparselt")
    assert eager < 1 < 1.1 < engine < 2, (eager, engine)


def test_a_forced_csr_kernel_runs_where_the_plan_would_store_dense():
    """At 50% density CSR is larger than dense, so the plan's format chooser stores it dense; a
    user who forces cuSPARSE's CSR (torch converts whatever the density) gets its cost."""
    free = cost(A100, 4096, 4096, 4096, "unstructured:0.5")
    forced = cost(A100, 4096, 4096, 4096, "unstructured:0.5", runtime="eager", kernel="cusparse-csr")
    assert free.kernel.startswith("dense") and "stored dense" in free.why
    assert forced.kernel == "csr (cusparse)" and not forced.fallback
    assert forced.latency_s > 10 * free.latency_s  # measured on an H200: 0.01x of dense


def test_kernel_dispatch_table_errors_name_the_field(tmp_path):
    from sparsesim.core.errors import DeviceFileError

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nextends = "h200"\ndescription = "x"\n'
                   'runtime.eager.kernel_dispatch = { value = 3, unit = "us", source = "test" }\n')
    with pytest.raises(DeviceFileError, match=r"runtime.eager.kernel_dispatch' must be a table of kernel = quantity"):
        load_device(str(bad))


def test_validate_measured_prints_the_h200_runs():
    from sparsesim.fidelity.validate import gpu_published, render_published

    doc = gpu_published(measured=True)
    assert doc["cases"] >= 400 and {r["device"] for r in doc["rows"]} == {"h200"}
    text = render_published(doc, cases=False)
    assert text.startswith("measured on this project's GPU runs")
    groups = {(g["runtime"], g["kernel"], g["dtype"], g["rows"]): g for g in doc["groups"]}
    assert groups[("engine", "cusparselt", "fp8", "fitted")]["cases"] >= 21
    holdout = [r for r in doc["rows"] if str(r["case"]).startswith("holdout-")]
    assert len(holdout) >= 200  # shapes the fits never saw (fit_gpu_measured.py leaves them out)
    # the fitted and the held-out rows are summed up apart
    sets = {x["rows"]: x for x in doc["sets"]}
    assert sets["holdout"]["cases"] == len(holdout) and sets["fitted"]["cases"] == doc["cases"] - len(holdout)
    assert "  holdout rows: " in text and "  fitted rows: " in text


def test_eager_24_host_time_on_the_h200_adds_to_a_long_kernel():
    """Measured on an H200: 4096x14336x4096 fp16 2:4 takes 0.50 ms from a CUDA graph and 1.46 ms
    eager, so the eager call's setup does not hide behind the kernel (serial_dispatch);
    the H100 file, without that measurement, overlaps it."""
    eager = cost(H200, 4096, 14336, 4096, "2:4", runtime="eager", kernel="cusparselt")
    engine = cost(H200, 4096, 14336, 4096, "2:4", runtime="engine", kernel="cusparselt")
    rt = H200.runtime("eager")[1]
    assert eager.latency_s >= engine.latency_s + rt.kernel_dispatch["cusparselt"]
    assert "the device waits for" in eager.why
    h100 = cost(DEV["h100-sxm5"], 4096, 14336, 4096, "2:4", runtime="eager", kernel="cusparselt")
    assert h100.details["host_serial_s"] == 0 and h100.details["host_s"] > 0
    assert "the device waits for" not in h100.why


def _memory_op(kind, inputs, out, dtype="bf16"):
    import math as _m

    from sparsesim.core.ir import DTYPE_BYTES as _B

    nbytes = (sum(_m.prod(s) for s in inputs) + _m.prod(out)) * _B[dtype]
    return Op(index=0, kind=kind, aten=f"aten::{kind}", module="x", call_index=0, dtype=dtype,
              input_shapes=tuple(inputs), output_shape=out, flops=0, bytes_moved=nbytes)


def test_eager_generic_kernels_on_the_h200_copy_and_innermost_broadcast_slower():
    """Profiled on an H200 (SAM ViT-H, eager): permuted tensors made contiguous move at ~36% of
    the streaming rate, broadcasting bias adds at ~15% (torch's generic elementwise kernel);
    a contiguous elementwise op streams at the full rate, and under torch.compile (generated,
    fused kernels) none of this applies."""
    contiguous = _memory_op("elementwise", [(128, 4096, 4096), (128, 4096, 4096)], (128, 4096, 4096))
    broadcast = _memory_op("elementwise", [(128, 64, 64, 64, 1), (128, 64, 64, 1, 64)], (128, 64, 64, 64, 64))
    copy = _memory_op("copy", [(128, 64, 64, 64, 64)], (128, 64, 64, 64, 64))
    p = H200.params
    bw = p.dram_bandwidth * p.dram_efficiency

    def mem(op, dev=H200, runtime="eager"):
        return cost_one(op, None, dev, runtime=runtime).details["memory_s"]

    assert mem(contiguous) == pytest.approx(contiguous.bytes_moved / bw, rel=1e-6)
    assert mem(broadcast) == pytest.approx(broadcast.bytes_moved / (bw * p.broadcast_elementwise_efficiency), rel=1e-6)
    assert mem(copy) == pytest.approx(copy.bytes_moved / (bw * p.strided_copy_efficiency), rel=1e-6)
    assert "generic kernel" in cost_one(copy, None, H200, runtime="eager").why
    mask = _memory_op("elementwise", [(16, 12, 384, 384), (16, 1, 1, 384)], (16, 12, 384, 384))
    assert mem(mask) == pytest.approx(mask.bytes_moved / bw, rel=1e-6)  # outer-axis broadcast: contiguous
    assert mem(copy, runtime="compiled") <= copy.bytes_moved / bw * 1.000001
    jetson = DEV["jetson-agx-orin"].params  # a file that sets neither keeps the streaming rate
    assert mem(broadcast, DEV["jetson-agx-orin"]) == pytest.approx(
        broadcast.bytes_moved / (jetson.dram_bandwidth * jetson.dram_efficiency), rel=1e-6)


def _benchmark_module(name):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_h200_fitted_fields_are_what_the_fit_script_gives(capsys):
    """The h200 file's fitted constants are reproducible from the packaged measurements: the fit
    script, run again, lands within its grid step of each value."""
    import re

    fit = _benchmark_module("fit_gpu_measured")
    assert fit.main(["--device", "h200"]) == 0
    got = {}
    for line in capsys.readouterr().out.splitlines():
        m = re.match(r"(\S+) = ([\d.]+)( us)?", line)
        if m:
            got[m[1]] = float(m[2]) * (1e-6 if m[3] else 1.0)
    eager = H200.runtime("eager")[1]
    have = {"sparse_gemm_efficiency": H200.params.sparse_gemm_efficiency,
            "dense_dtype_efficiency.int8": H200.params.dense_dtype_efficiency["int8"],
            "runtime.eager.kernel_dispatch.cusparselt": eager.kernel_dispatch["cusparselt"],
            "runtime.eager.masked_attention_rate": eager.masked_attention_rate,
            "cusparse_csr_efficiency": H200.params.cusparse_csr_efficiency,
            "bsr_efficiency": H200.params.bsr_efficiency,
            "runtime.eager.kernel_dispatch.cusparse-csr": eager.kernel_dispatch["cusparse-csr"],
            "runtime.eager.kernel_dispatch.bsr": eager.kernel_dispatch["bsr"],
            "conv_cuda_core_efficiency": H200.params.conv_cuda_core_efficiency,
            "sparse_kernel_fixed.cusparselt": H200.params.sparse_kernel_fixed["cusparselt"],
            "sparse_stream_efficiency.bf16": H200.params.sparse_stream_efficiency["bf16"]}
    assert set(got) == set(have)
    for name, value in have.items():
        assert got[name] == pytest.approx(value, rel=0.05), name
        assert H200.provenance[name].fit_date in ("2026-12-04", "2026-12-05"), name


def test_gpu_profile_without_a_gpu_says_so(capsys):
    prof = _benchmark_module("gpu_profile")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    assert prof.main(["sam-vit-h"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_gpu_chain_without_a_gpu_says_so(capsys):
    chain = _benchmark_module("gpu_chain")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    assert chain.main([]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_fit_script_bad_input_is_one_line(tmp_path, capsys):
    fit = _benchmark_module("fit_gpu_measured")
    bad = tmp_path / "bad.csv"
    bad.write_text("case,device\nx,h200\n")
    assert fit.main(["--table", str(bad)]) == 2
    assert fit.main(["--device", "no-such-gpu"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv: validation table lacks column" in err and "unknown device 'no-such-gpu'" in err


def test_a_dtype_can_carry_its_own_dense_efficiency():
    """cuBLASLt's dense int8 GEMM on Hopper reaches a smaller share of its peak than fp8 of the
    same peak (measured on an H200): the device file says so per dtype; other dtypes keep the
    device's dense_gemm_efficiency."""
    import dataclasses

    h100 = DEV["h100-sxm5"]
    p = h100.params
    assert p.dense_dtype_efficiency["int8"] < p.dense_gemm_efficiency and "fp8" not in p.dense_dtype_efficiency
    big = (8192, 8192, 8192)
    int8, fp8 = cost(h100, *big, dtype="int8"), cost(h100, *big, dtype="fp8")
    assert int8.latency_s > 1.5 * fp8.latency_s  # one peak, two efficiencies
    assert "fp8" not in A100.params.dense_dtype_efficiency and "int8" not in A100.params.dense_dtype_efficiency
    bad = dataclasses.replace(p, dense_dtype_efficiency={"int4": 0.5})
    assert "dense_dtype_efficiency" in (bad.validate() or "")
    assert "dense_dtype_efficiency" in (dataclasses.replace(p, dense_dtype_efficiency={"int8": 1.5}).validate() or "")


def _conv_op(c_in: int, dtype: str = "bf16") -> Op:
    import torch.nn as nn

    from sparsesim.tracing.tracer import trace

    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    conv = nn.Conv2d(c_in, 256, 3, padding=1, device="meta", dtype=tdt)
    wl = trace(conv, torch.empty((8, c_in, 128, 128), device="meta", dtype=tdt), name="conv")
    return next(op for op in wl.ops if op.kind == "conv")


def test_conv_whose_channels_miss_the_tensor_core_vector_runs_on_cuda_cores_unless_the_runtime_pads():
    """An RGB stem (3 input channels) does not fill cuDNN's 16-byte channel vectors: eager and
    compiled torch run it on the CUDA cores (seen in the H200 SAM profile), a vendor engine pads
    the channels and keeps the tensor cores; 8 bf16 channels fill a vector."""
    from sparsesim.cost import estimate_op
    from sparsesim.cost.record import RunContext

    stem, wide = _conv_op(3), _conv_op(8)
    eager = estimate_op(stem, None, H200, RunContext(runtime="eager"))
    engine = estimate_op(stem, None, H200, RunContext(runtime="engine"))
    assert "CUDA-core implicit GEMM" in eager.why and "3 input channels" in eager.why
    assert "CUDA-core" not in engine.why
    assert eager.latency_s > 3 * engine.latency_s
    assert "CUDA-core" not in estimate_op(wide, None, H200, RunContext(runtime="eager")).why
    # fp32 (tf32 convolutions) needs 4-channel vectors: 8 channels fill them, 3 do not
    assert "CUDA-core" not in estimate_op(_conv_op(8, "fp32"), None, H200, RunContext(runtime="eager")).why
    assert "CUDA-core" in estimate_op(_conv_op(3, "fp32"), None, H200, RunContext(runtime="eager")).why


def _bmm_op(n: int):
    from sparsesim.tracing.tracer import trace

    class Einsum(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.matmul(a, b)

    a = torch.empty((14, 44800, 80), device="meta", dtype=torch.bfloat16)
    b = torch.empty((14, 80, n), device="meta", dtype=torch.bfloat16)
    return next(op for op in trace(Einsum(), (a, b), name="einsum").ops if op.kind == "matmul")


def test_gemm_whose_rows_miss_the_16_byte_vector_runs_the_alignment_tolerant_kernel():
    """SAM's window relative-position einsum (N = 14 at bf16: 28-byte rows) ran cuBLAS's
    cutlass_80_wmma kernel at about a third of the aligned rate in the H200 profile; N = 16 fills
    the vectors, and a vendor engine pads the channels."""
    from sparsesim.cost.record import RunContext

    eager = RunContext(runtime="eager")
    odd, even = estimate_op(_bmm_op(14), None, H200, eager), estimate_op(_bmm_op(16), None, H200, eager)
    assert "N = 14 (28 B)" in odd.why and "alignment-tolerant" not in even.why
    assert "alignment" in [r.code for r in odd.reasons]
    assert odd.latency_s > 2.5 * even.latency_s
    # profiled: 78.9 us eager, 85.5 us compiled
    assert odd.latency_s == pytest.approx(82e-6, rel=0.1)
    engine = estimate_op(_bmm_op(14), None, H200, RunContext(runtime="engine"))
    assert "alignment-tolerant" not in engine.why and engine.latency_s < odd.latency_s / 2


def test_gpt2s_released_vocabulary_misses_the_vector_and_a_padded_one_fills_it():
    """GPT-2's 50,257-token LM head has rows of 100,514 bytes at bf16: under torch.compile it runs
    the alignment-tolerant kernel; nanoGPT's 50,304 fills whole vectors (a multiple of 64). A
    trace on the meta device carries the recipe's `vocab` into the LM head's N."""
    from sparsesim.cost.record import RunContext
    from sparsesim.tracing.workloads import load_workload

    def head(vocab: int) -> Op:
        wl = load_workload(f"gpt2:device=meta,layers=1,seq=64,vocab={vocab}")
        return next(op for op in wl.ops if op.kind == "linear" and op.gemm and op.gemm.n == vocab)

    compiled = RunContext(runtime="compiled")
    released, padded = estimate_op(head(50257), None, A100, compiled), estimate_op(head(50304), None, A100, compiled)
    assert "N = 50257" in released.why and "alignment-tolerant" not in padded.why
    assert released.latency_s > 2 * padded.latency_s


def test_cusparselt_bf16_streams_a_few_token_gemms_weight_slower_than_fp16():
    """Measured on the H200: cuSPARSELt's bf16 2:4 kernels take about twice its fp16 kernels' time
    on a decode GEMM (1 x 4096 x 4096: 19.6 against 10.9 us) and the same time on a large one, so
    bf16 2:4 decode is slower than dense where fp16 breaks even."""
    dec16 = cost(H200, 1, 4096, 4096, "2:4", runtime="engine", kernel="cusparselt", dtype="fp16")
    dec = cost(H200, 1, 4096, 4096, "2:4", runtime="engine", kernel="cusparselt", dtype="bf16")
    big16 = cost(H200, 4096, 4096, 4096, "2:4", runtime="engine", kernel="cusparselt", dtype="fp16")
    big = cost(H200, 4096, 4096, 4096, "2:4", runtime="engine", kernel="cusparselt", dtype="bf16")
    assert dec.latency_s > 1.6 * dec16.latency_s and "stream the compressed weight" in dec.why
    assert big.latency_s == pytest.approx(big16.latency_s, rel=0.02)
    assert dec.latency_s == pytest.approx(19.6e-6, rel=0.15)


def test_sparse_kernel_prologue_adds_once_per_call_and_is_stated():
    """cuSPARSELt's per-call prologue (fitted on the H200's 2048 x 2048 x K sweep) adds the same
    time to a one-wave GEMM and to a long one, and the cost says so."""
    small = cost(H200, 2048, 2048, 512, "2:4", runtime="engine", kernel="cusparselt")
    fixed = H200.params.sparse_kernel_fixed["cusparselt"]
    assert fixed > 0 and "prologue" in small.why
    without = dataclasses.replace(H200, params=dataclasses.replace(H200.params, sparse_kernel_fixed={}))
    bare = cost(without, 2048, 2048, 512, "2:4", runtime="engine", kernel="cusparselt")
    assert small.latency_s - bare.latency_s == pytest.approx(fixed, rel=1e-6)
    assert "prologue" not in bare.why


def test_eager_elementwise_on_a_strided_view_runs_the_generic_kernel():
    """SAM un-pads its windows by slicing ([:, :64, :64]) and adds the residual and normalises the
    strided view in place: eager torch runs those through its generic kernel (the H200 profile:
    residual adds at ~0.9 TB/s, layer norms slower still, a contiguous GELU at 3.1 TB/s), at the
    layout-copy rate; a contiguous add streams, and a compiling runtime fuses both."""
    import torch.nn as nn

    from sparsesim.cost.record import RunContext
    from sparsesim.tracing.tracer import trace

    class Unpad(nn.Module):
        def forward(self, padded: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
            return shortcut + padded[:, :64, :64, :]

    class Plain(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    big, small = torch.randn(2, 70, 70, 64), torch.randn(2, 64, 64, 64)
    strided = next(o for o in trace(Unpad(), (big, small), name="unpad").ops if o.kind == "elementwise")
    plain = next(o for o in trace(Plain(), (small, small), name="plain").ops if o.kind == "elementwise")
    assert strided.strided and not plain.strided
    eager = RunContext(runtime="eager")
    slow, fast = estimate_op(strided, None, H200, eager), estimate_op(plain, None, H200, eager)
    assert "generic kernel" in slow.why and "generic kernel" not in fast.why
    assert strided.bytes_moved == plain.bytes_moved and slow.latency_s > fast.latency_s
    assert "generic kernel" not in estimate_op(strided, None, H200, RunContext(runtime="compiled")).why


def test_gpu_measure_dynamic_int8_runs_torchaos_sequence_and_its_rows_are_predicted(tmp_path):
    """The script's torchao-style dynamic int8 linear (run here on the CPU, where torch._int_mm
    exists too) matches the 16-bit product; its op-rate rows name the 16-bit GEMM as their
    workload, so the model costs the deployment with its quantisation kernels, eager and compiled."""
    import torch

    from sparsesim.fidelity.gpu_validation import append_rows, load_table, predict_case

    gm = _measure_module()
    gen = torch.Generator().manual_seed(0)
    x, w = gm.operands(64, 128, 256, "bf16", torch.device("cpu"), gen)
    y = gm.dynamic_int8_fn(x, w)()
    assert y.dtype == torch.bfloat16 and y.shape == (64, 128)
    rows = [gm.op_rate_row(gpu="a100-sxm4-80gb", dtype=dt, kernel="cublas", timing=gm.Timing(0.05, 0.1),
                           shape=(2048, 3072, 768), source="test", runtime=rt, deployed_from=src)
            for rt in ("eager", "compiled") for dt, src in (("bf16", ""), ("int8", "bf16"))]
    table = tmp_path / "t.csv"
    append_rows(rows, table)
    assert len(load_table(table)) == len(rows)
    for r in rows:
        p = predict_case({k: str(v) for k, v in r.items()}, A100)
        assert p["predicted"] > 0
        if r["dtype"] == "int8":
            assert r["workload"] == "gemm:M=2048,N=3072,K=768,dtype=bf16"
            # the same GEMM specified at int8 (operands already int8) pays no quantisation
            native = gm.op_rate_row(gpu="a100-sxm4-80gb", dtype="int8", kernel="cublas", timing=gm.Timing(0.05, 0.1),
                                    shape=(2048, 3072, 768), source="test", runtime=r["runtime"])
            bare = predict_case({k: str(v) for k, v in native.items()}, A100)
            assert p["predicted_dense_ms"] > bare["predicted_dense_ms"]
