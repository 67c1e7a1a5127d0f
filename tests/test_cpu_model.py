"""The CPU SIMD cost model: invariants on the built-in CPU devices (no timing here)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from sparsesim.core.errors import DeviceFileError
from sparsesim.core.ir import Op
from sparsesim.cost import estimate_op
from sparsesim.cost.families.cpu import lanes, peak_flops, residency
from sparsesim.fidelity.calibrate import gemm_op, layer_for
from sparsesim.fidelity.measure import random_mask
from sparsesim.hw.devices import load_device, parse_device_file
from sparsesim.sparsity.records import Pattern
from sparsesim.sparsity.shrink import shrink_layer_op

CPUS = ("xeon-sapphire-rapids", "arm-cortex-a78")


@pytest.fixture(scope="module", params=CPUS)
def cpu(request):
    return load_device(request.param)


def test_builtin_cpus_load_strictly_with_sources():
    for name in CPUS:
        dev = load_device(name)
        assert dev.family == "cpu"
        assert all(p.source.strip() for p in dev.provenance.values())


def test_amx_peak_exceeds_avx512_peak_on_sapphire_rapids():
    p = load_device("xeon-sapphire-rapids").params
    # AMX bf16 (512 MAC/cycle/core) vs AVX-512 fp32 (2 ports x 16 lanes)
    assert peak_flops(p, "bf16") == pytest.approx(2 * 512 * 56 * 2.0e9)
    assert peak_flops(p, "fp32") == pytest.approx(2 * 16 * 2 * 56 * 2.0e9)
    assert lanes(load_device("arm-cortex-a78").params, "int8") == 16  # 128-bit SDOT


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=hs.integers(1, 2048), n=hs.integers(1, 4096), k=hs.integers(1, 4096),
       dtype=hs.sampled_from(["fp32", "bf16", "int8", "fp16"]))
def test_dense_roofline_invariant(cpu, m, n, k, dtype):
    op = gemm_op(m, n, k, dtype)
    c = estimate_op(op, None, cpu)
    p = cpu.params
    dt = dtype if dtype in p.gemm_efficiency else "fp32"
    assert c.latency_s >= 2 * m * n * k / peak_flops(p, dt) * (1 - 1e-9)
    ((_level, nbytes),) = c.bytes_by_level.items()
    bw = residency(p, nbytes).bandwidth
    assert c.latency_s >= nbytes / bw * (1 - 1e-9)
    assert c.latency_s >= p.call_overhead
    assert c.energy_j >= p.static_power * c.latency_s
    assert 0.0 <= c.utilization <= 1.0


def test_gemv_is_memory_bound_and_wide_gemm_compute_bound(cpu):
    assert estimate_op(gemm_op(1, 8192, 8192), None, cpu).bound == "memory"
    assert estimate_op(gemm_op(2048, 4096, 4096), None, cpu).bound == "compute"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=hs.integers(0, 10_000), density=hs.floats(0.005, 0.9), keep=hs.floats(0.0, 1.0),
       m=hs.sampled_from([1, 3, 8, 16, 33, 64, 200]))
def test_more_zeros_never_slower_for_unstructured(cpu, seed, density, keep, m):
    """Removing nonzeros from a mask (a superset -> subset) never makes the CSR kernel slower."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(64, 96, generator=g) < density).float()
    drop = (torch.rand(64, 96, generator=g) < keep).float()
    sub = mask * drop
    op = gemm_op(m, 64, 96)
    big = estimate_op(op, layer_for(mask, Pattern("unstructured", max(mask.mean().item(), 1e-9)), "fp32"), cpu)
    small = estimate_op(op, layer_for(sub, Pattern("unstructured", max(sub.mean().item(), 1e-9)), "fp32"), cpu)
    assert small.latency_s <= big.latency_s * (1 + 1e-12)
    assert small.energy_j <= big.energy_j * (1 + 1e-12)


def test_unstructured_pays_in_proportion_to_density_at_wide_m(cpu):
    op = gemm_op(512, 2048, 2048)
    t = {}
    for d in (0.02, 0.04, 0.08):
        mask = random_mask(2048, 2048, d, seed=1)
        t[d] = estimate_op(op, layer_for(mask, Pattern("unstructured", d), "fp32"), cpu).latency_s
    assert t[0.04] / t[0.02] == pytest.approx(2.0, rel=0.15)
    assert t[0.08] / t[0.04] == pytest.approx(2.0, rel=0.15)
    dense = estimate_op(op, None, cpu).latency_s
    assert t[0.02] < dense  # high sparsity pays on a CPU


def test_small_m_underuses_lanes(cpu):
    """Below the vector width the per-nonzero cost does not shrink with M: lanes idle."""
    cpu = _no_choice(cpu)
    mask = random_mask(512, 512, 0.1, seed=2)
    layer = layer_for(mask, Pattern("unstructured", 0.1), "fp32")
    c1 = estimate_op(gemm_op(1, 512, 512), layer, cpu)
    c2 = estimate_op(gemm_op(2, 512, 512), layer, cpu)
    assert c2.latency_s == pytest.approx(c1.latency_s, rel=0.05)
    assert c1.details["lane_use"] < 1.0
    assert "lanes" in c1.why


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.75])
def test_channel_pruning_equals_smaller_dense_op(cpu, keep):
    n, k, m = 1024, 768, 96
    kept = int(n * keep)
    mask = torch.zeros(n, k)
    mask[:kept] = 1.0
    layer = layer_for(mask, Pattern("channel", keep), "fp32")
    c = estimate_op(shrink_layer_op(gemm_op(m, n, k), layer), layer, cpu)
    small = estimate_op(gemm_op(m, kept, k), None, cpu)
    assert c.latency_s == pytest.approx(small.latency_s, rel=1e-9)
    assert c.energy_j == pytest.approx(small.energy_j, rel=1e-9)
    assert "channel" in c.kernel and not c.fallback


def _no_choice(dev):
    """The same device with a runtime that runs whatever sparse kernel it is given (like torch)."""
    return dataclasses.replace(dev, params=dataclasses.replace(dev.params, picks_faster_kernel=False))


def test_block_and_nm_kernels_named_and_costed(cpu):
    cpu = _no_choice(cpu)
    op = gemm_op(128, 512, 512)
    bmask = random_mask(512, 512, 0.2, block=(4, 4), seed=3)
    cb = estimate_op(op, layer_for(bmask, Pattern("block", 0.2, block=(4, 4)), "fp32"), cpu)
    assert cb.kernel == "bsr 4x4" and cb.metadata_bytes > 0
    nm = torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(512, 128)
    cn = estimate_op(op, layer_for(nm, Pattern("nm", 0.5, n=2, m=4), "fp32"), cpu)
    assert cn.kernel.startswith("2:4") and "no N:M hardware" in cn.why
    dense = estimate_op(op, None, cpu)
    assert cn.latency_s > 0.5 * dense.latency_s  # no hardware help: 2:4 is no 2x on a CPU


def test_runtime_that_chooses_runs_dense_when_sparse_is_slower(cpu):
    """A nearly dense weight (stray zeros) is not run as CSR by a DeepSparse/XNNPACK-class runtime."""
    op = gemm_op(128, 512, 512)
    mask = torch.ones(512, 512)
    mask[0, :3] = 0.0
    layer = layer_for(mask, Pattern("unstructured", mask.mean().item()), "fp32")
    dense = estimate_op(op, None, cpu)
    chosen = estimate_op(op, layer, cpu)
    assert cpu.params.picks_faster_kernel
    assert chosen.fallback and chosen.kernel == "dense (fallback)" and "csr" in chosen.why
    assert chosen.latency_s == pytest.approx(dense.latency_s)
    forced = estimate_op(op, layer, _no_choice(cpu))
    assert forced.kernel == "csr" and forced.latency_s > dense.latency_s


def test_unsupported_dtype_falls_back_to_fp32_and_says_so():
    arm = load_device("arm-cortex-a78")  # no bf16 on Armv8.2
    c = estimate_op(gemm_op(64, 256, 256, "bf16"), None, arm)
    assert c.fallback and "bf16" in c.why


def test_memory_and_unknown_ops():
    dev = load_device("xeon-sapphire-rapids")
    base = dict(index=0, aten="aten.add.Tensor", module="m", call_index=0, dtype="fp32",
                input_shapes=((1024, 1024),), output_shape=(1024, 1024), flops=1 << 20, bytes_moved=8 << 20)
    c = estimate_op(Op(kind="elementwise", **base), None, dev)
    assert c.bound in ("memory", "overhead") and not c.fallback
    u = estimate_op(Op(kind="unknown", **base), None, dev)
    assert u.fallback and "unknown" in u.why


def _corrupt(tmp_path: Path, old: str, new: str) -> Path:
    src = Path(load_device("xeon-sapphire-rapids").path).read_text()
    assert old in src
    p = tmp_path / "bad.toml"
    p.write_text(src.replace(old, new, 1))
    return p


@pytest.mark.parametrize("old,new,field", [
    ('clock = { value = 2.0, unit = "GHz"', 'clock = { value = 2.0, unit = "GB/s"', "clock"),
    ('[gemm_efficiency]\nfp32 = { value = 0.8', '[gemm_efficiency]\nfp32 = { value = 1.8', "gemm_efficiency.fp32"),
    ('"4x4" = {', '"4by4" = {', "bsr_vector_cycles.4by4"),
    ('cores = {', 'cpus = { value = 1, unit = "1", source = "x" }\ncores = {', "cpus"),
])
def test_corrupted_cpu_file_names_the_field(tmp_path, old, new, field):
    with pytest.raises(DeviceFileError, match=field.replace(".", r"\.")):
        parse_device_file(_corrupt(tmp_path, old, new))


def test_missing_half_m_entry_is_reported(tmp_path):
    p = _corrupt(tmp_path, 'int8 = { value = 16, unit = "1"', 'int4 = { value = 16, unit = "1"')
    with pytest.raises(DeviceFileError, match="gemm_half_m"):
        parse_device_file(p)


def test_cost_is_pure(cpu):
    op = gemm_op(64, 512, 512)
    mask = random_mask(512, 512, 0.1, seed=4)
    layer = layer_for(mask, Pattern("unstructured", 0.1), "fp32")
    a, b = estimate_op(op, layer, cpu), estimate_op(op, layer, cpu)
    assert a == b
    assert math.isfinite(a.latency_s) and dataclasses.is_dataclass(a)


def test_a_model_larger_than_the_last_level_cache_streams_its_weights_from_dram():
    from sparsesim.cost import RunContext

    dev = load_device("xeon-sapphire-rapids")
    p = dev.params
    op = gemm_op(1, 4096, 4096, "fp16")  # a decode GEMV: 32 MiB of weights, fits the L2s alone
    alone = estimate_op(op, None, dev)
    small_model = estimate_op(op, None, dev, RunContext(model_weight_bytes=p.l3_bytes / 2))
    big_model = estimate_op(op, None, dev, RunContext(model_weight_bytes=p.l3_bytes * 100))
    weight_bytes = 4096 * 4096 * 2
    assert "dram" not in alone.bytes_by_level and small_model.latency_s == alone.latency_s
    assert big_model.bytes_by_level["dram"] == weight_bytes
    assert big_model.latency_s >= weight_bytes / p.dram_bandwidth > alone.latency_s
    assert "streamed from dram" in big_model.why


def test_estimate_keeps_a_cache_sized_model_resident_and_streams_a_large_one():
    from sparsesim.run.estimate import estimate

    small = estimate("gemm:M=1,N=4096,K=4096,dtype=fp16", "xeon-sapphire-rapids")
    assert small["bytes_dram"].sum() == 0  # 32 MiB of weights: the whole model fits the caches
    big = estimate("gemm:M=1,N=32768,K=32768,dtype=fp16", "xeon-sapphire-rapids")
    assert big["bytes_dram"].sum() == 32768 * 32768 * 2  # 2 GiB: streamed from DRAM


def test_a_weight_stored_dense_runs_the_dense_kernel():
    """Unstructured at low sparsity is stored dense (CSR would be larger): the CPU has no index
    structure to walk, so it runs dense and says why, never a CSR kernel with zero index bytes."""
    from sparsesim.hw.devices import load_device
    from sparsesim.run.estimate import cost_workload, resolve_workload, sparsify_cached

    sw = sparsify_cached(resolve_workload("gemm:M=64,N=512,K=512,dtype=fp32"), "unstructured:0.1")
    (layer,) = sw.layers.values()
    assert layer.format == "dense"
    for device in ("xeon-sapphire-rapids", "arm-cortex-a78"):
        (cost,) = [c for op, c in zip(sw.ops, cost_workload(sw, load_device(device))) if op.weight]
        assert cost.kernel == "dense (fallback)" and "stored dense" in cost.why and cost.metadata_bytes == 0


def _with_bsr_values(dev, cycles: float):
    """The device with the same per-value BSR cost for every listed block shape."""
    values = {key: cycles for key in dev.params.bsr_vector_cycles}
    return dataclasses.replace(dev, params=dataclasses.replace(dev.params, bsr_value_cycles=values))


@pytest.mark.parametrize("block", [4, 16])
def test_bsr_per_value_cost_does_not_grow_with_m(block):
    """MKL's BSR kernel pays a fixed cost per stored value (load, broadcast, M-loop entry) whatever
    M is: it adds the same time at M=8 and M=128, and so weighs most at small M."""
    dev = _no_choice(load_device("xeon-sapphire-rapids"))
    p = dev.params
    mask = random_mask(512, 512, 0.2, block=(block, block), seed=5)
    layer = layer_for(mask, Pattern("block", 0.2, block=(block, block)), "fp32")
    values = int(mask.sum().item())
    added, shares = [], []
    for m in (8, 128):
        op = gemm_op(m, 512, 512)
        base = estimate_op(op, layer, _with_bsr_values(dev, 0.0))
        more = estimate_op(op, layer, _with_bsr_values(dev, 4.0))
        added.append(more.latency_s - base.latency_s)
        shares.append(added[-1] / more.latency_s)
        assert "4 fixed" in more.why
    expected = values * 4.0 / (p.clock * p.cores)
    assert added == pytest.approx([expected, expected], rel=1e-6)
    assert shares[0] > shares[1]


def test_builtin_cpus_without_bsr_value_figures_cost_as_before():
    dev = _no_choice(load_device("xeon-sapphire-rapids"))
    assert dev.params.bsr_value_cycles == {}
    mask = random_mask(512, 512, 0.2, block=(8, 8), seed=6)
    layer = layer_for(mask, Pattern("block", 0.2, block=(8, 8)), "fp32")
    op = gemm_op(32, 512, 512)
    assert estimate_op(op, layer, dev).latency_s == estimate_op(op, layer, _with_bsr_values(dev, 0.0)).latency_s


def test_bsr_value_cycles_need_the_vector_shapes(tmp_path):
    extra = ('\n[bsr_value_cycles]\n"4x4" = { value = 1.5, unit = "cycles", source = "x" }\n')
    p = _corrupt(tmp_path, "[mac_energy]", extra + "\n[mac_energy]")
    with pytest.raises(DeviceFileError, match="bsr_value_cycles"):
        parse_device_file(p)
    src = p.read_text().replace(extra, extra + '"8x8" = { value = 1.5, unit = "cycles", source = "x" }\n'
                                '"16x16" = { value = 4.5, unit = "cycles", source = "x" }\n')
    p.write_text(src)
    assert parse_device_file(p).params.bsr_value_cycles["16x16"] == pytest.approx(4.5)


def test_bsr_output_pass_has_its_own_figure_and_csr_keeps_its_own():
    """torch's BSR path passes over the output more than its CSR path: with `bsr_row_cycles` set,
    a BSR layer pays it per output row and vector step instead of `sparse_row_cycles`; CSR is
    untouched, and without the figure BSR pays what CSR does."""
    from sparsesim.cost.families.cpu import output_row_cycles

    dev = _no_choice(load_device("xeon-sapphire-rapids"))
    p = dev.params
    assert output_row_cycles(p, "block") == p.sparse_row_cycles
    more = dataclasses.replace(dev, params=dataclasses.replace(p, bsr_row_cycles=p.sparse_row_cycles + 10.0))
    assert output_row_cycles(more.params, "block") == p.sparse_row_cycles + 10.0
    assert output_row_cycles(more.params, "unstructured") == p.sparse_row_cycles
    m, n = 64, 512
    op = gemm_op(m, n, 512)
    bmask = random_mask(n, 512, 0.02, block=(4, 4), seed=7)
    blayer = layer_for(bmask, Pattern("block", 0.02, block=(4, 4)), "fp32")
    steps = math.ceil(m / lanes(p, "fp32"))
    added = estimate_op(op, blayer, more).latency_s - estimate_op(op, blayer, dev).latency_s
    assert added == pytest.approx(n * steps * 10.0 / (p.clock * p.cores), rel=1e-6)
    cmask = random_mask(n, 512, 0.02, seed=7)
    clayer = layer_for(cmask, Pattern("unstructured", 0.02), "fp32")
    assert estimate_op(op, clayer, more).latency_s == estimate_op(op, clayer, dev).latency_s


def _with_bsr_columns(dev, columns: float, cycles: float):
    """The device with BSR vector steps of `columns` M columns and `cycles` per leftover column."""
    return dataclasses.replace(dev, params=dataclasses.replace(dev.params, bsr_vector_columns=columns,
                                                               bsr_column_cycles=cycles))


def test_bsr_columns_split_m_into_whole_steps_and_leftover_columns():
    from sparsesim.cost.families.cpu import BsrColumns, bsr_columns

    p = load_device("xeon-sapphire-rapids").params
    nl = lanes(p, "fp32")
    assert bsr_columns(p, 9, nl) == BsrColumns(9 / nl, 0)  # no figure: fractional steps, nothing left over
    four = _with_bsr_columns(load_device("xeon-sapphire-rapids"), 4.0, 1.0).params
    assert [bsr_columns(four, m, nl).leftover for m in (8, 9, 10, 11, 12, 1, 3)] == [0, 1, 2, 3, 0, 1, 3]
    assert bsr_columns(four, 11, nl).vec == pytest.approx(8 / nl)
    assert bsr_columns(four, 3, nl).vec == 0.0


@pytest.mark.parametrize("block", [4, 16])
def test_bsr_leftover_columns_cost_one_at_a_time(block):
    """With vector steps of 4 columns, M = 9, 10, 11 pay the vector steps of M = 8 plus 1, 2, 3
    leftover columns at `bsr_column_cycles` per stored value each; M = 12 pays whole steps only.
    The activation stream and output stores are M's own (compared with the vector rates at zero)."""
    dev = _with_bsr_columns(_no_choice(load_device("xeon-sapphire-rapids")), 4.0, 3.0)
    p = dev.params
    mask = random_mask(512, 512, 0.2, block=(block, block), seed=5)
    layer = layer_for(mask, Pattern("block", 0.2, block=(block, block)), "fp32")
    values = int(mask.sum().item())
    plain = _with_bsr_columns(dev, 0.0, 0.0)
    no_vec = dataclasses.replace(plain, params=dataclasses.replace(
        plain.params, bsr_vector_cycles={k: 0.0 for k in p.bsr_vector_cycles}))

    def vector_s(m: int, device) -> float:
        return estimate_op(gemm_op(m, 512, 512), layer, device).details["compute_s"] - \
            estimate_op(gemm_op(m, 512, 512), layer, no_vec).details["compute_s"]

    for m, left in ((9, 1), (10, 2), (11, 3), (12, 0)):
        got = estimate_op(gemm_op(m, 512, 512), layer, dev)
        expected = vector_s(m - left, plain) + values * left * 3.0 / (p.clock * p.cores)
        assert vector_s(m, dev) == pytest.approx(expected, rel=1e-9)
        assert ("leftover column" in got.why) == bool(left)
    # leftover columns at about a step's cost each: M = 11 slower than M = 12
    assert estimate_op(gemm_op(11, 512, 512), layer, dev).latency_s > estimate_op(gemm_op(12, 512, 512), layer, dev).latency_s


def test_builtin_cpus_without_bsr_columns_cost_as_before():
    """No `bsr_vector_columns` in a built-in file: M = 9 costs the fractional steps between M = 8
    and M = 16 exactly as before (vector work linear in M), with nothing left over."""
    for name in CPUS:
        dev = _no_choice(load_device(name))
        assert dev.params.bsr_vector_columns == 0.0 and dev.params.bsr_column_cycles == 0.0
        mask = random_mask(512, 512, 0.2, block=(8, 8), seed=6)
        layer = layer_for(mask, Pattern("block", 0.2, block=(8, 8)), "fp32")
        t = {m: estimate_op(gemm_op(m, 512, 512), layer, dev) for m in (9, 10, 11)}
        assert "leftover" not in t[9].why
        # the vector work, the activation stream and the output stores (one step for 9..16) are linear in M
        c = {m: cost.details["compute_s"] for m, cost in t.items()}
        assert c[10] - c[9] == pytest.approx(c[11] - c[10], rel=1e-9)


def _with_csr_passes(dev, register: float, width: float):
    """The device with a CSR kernel that keeps `register` columns of M in registers and runs a
    wider M in passes of `width` columns."""
    return dataclasses.replace(dev, params=dataclasses.replace(dev.params, csr_register_columns=register,
                                                               csr_pass_columns=width))


def test_csr_passes_split_a_wide_m():
    from sparsesim.cost.families.cpu import csr_passes

    p = load_device("xeon-sapphire-rapids").params
    assert csr_passes(p, 200) == [200]  # no figure: one walk whatever M is
    q = _with_csr_passes(load_device("xeon-sapphire-rapids"), 32.0, 16.0).params
    assert csr_passes(q, 32) == [32] and csr_passes(q, 7) == [7]
    assert csr_passes(q, 33) == [16, 16, 1] and csr_passes(q, 48) == [16, 16, 16]
    assert csr_passes(q, 49) == [16, 16, 16, 1]


def test_csr_wider_than_the_registers_walks_the_nonzeros_once_per_pass():
    """Up to the register width the CSR kernel costs what it did without the figures; beyond it
    each pass walks the nonzeros again, so a pass of one column costs a whole index chain: M = 49
    (four passes) costs more than M = 48 (three), and M = 33 about what M = 48 does."""
    dev = _no_choice(load_device("xeon-sapphire-rapids"))
    passes = _with_csr_passes(dev, 32.0, 16.0)
    mask = random_mask(512, 512, 0.1, seed=3)
    layer = layer_for(mask, Pattern("unstructured", 0.1), "fp32")
    nnz = int(mask.sum().item())
    lat = {m: estimate_op(gemm_op(m, 512, 512), layer, passes) for m in (8, 32, 33, 48, 49)}
    for m in (8, 32):
        assert lat[m].latency_s == estimate_op(gemm_op(m, 512, 512), layer, dev).latency_s
        assert "passes" not in lat[m].why
    assert "4 passes" in lat[49].why and lat[49].latency_s > lat[48].latency_s
    p = passes.params
    floor_s = nnz * p.sparse_nnz_cycles / (p.clock * p.cores)
    # the one-column pass of M = 49 is the index chain's floor (a 16-column pass is not cheaper)
    assert lat[49].details["compute_s"] - lat[48].details["compute_s"] == pytest.approx(
        floor_s, rel=0.05)
    assert lat[33].latency_s == pytest.approx(lat[48].latency_s, rel=0.1)


# fields that come together: (name, unit) of each, a pair the file check refuses and the field its
# error names, the field the error names when the first comes alone, and a pair it takes
PAIRED_FIELDS = [
    (("bsr_vector_columns", "1"), ("bsr_column_cycles", "cycles"), (2.5, 1.0), "bsr_vector_columns",
     "bsr_column_cycles", (4.0, 1.2)),
    (("csr_register_columns", "1"), ("csr_pass_columns", "1"), (16.0, 32.0), "csr_pass_columns",
     "csr_pass_columns", (32.0, 16.0)),
]


@pytest.mark.parametrize("first,second,bad,bad_names,alone_names,good", PAIRED_FIELDS)
def test_paired_fields_come_together_and_are_checked(tmp_path, first, second, bad, bad_names, alone_names, good):
    def line(field: tuple[str, str], value: float) -> str:
        return f'{field[0]} = {{ value = {value}, unit = "{field[1]}", source = "x" }}\n'

    with pytest.raises(DeviceFileError, match=alone_names):
        _with_fields(tmp_path, line(first, good[0]))
    with pytest.raises(DeviceFileError, match=bad_names):
        _with_fields(tmp_path, line(first, bad[0]) + line(second, bad[1]))
    dev = _with_fields(tmp_path, line(first, good[0]) + line(second, good[1]))
    assert (getattr(dev.params, first[0]), getattr(dev.params, second[0])) == pytest.approx(good)


def _with_fields(tmp_path, lines: str):
    """The Sapphire Rapids file with top-level `lines` added, parsed strictly."""
    return parse_device_file(_corrupt(tmp_path, "family = \"cpu\"\n", "family = \"cpu\"\n" + lines))


def _with_gemm_tile(dev, tile: float, tail: float):
    """The device with an fp32 dense register tile of `tile` rows along M whose tail tiles take `tail`
    of a full tile's time (the other dtypes untouched)."""
    p = dev.params
    return dataclasses.replace(dev, params=dataclasses.replace(
        p, gemm_tile_m={**p.gemm_tile_m, "fp32": tile}, gemm_tail_cost={**p.gemm_tail_cost, "fp32": tail}))


def test_gemm_rows_split_m_into_tiles_and_halving_tail_tiles():
    from sparsesim.cost.families.cpu import gemm_rows

    plain = load_device("xeon-sapphire-rapids").params
    assert gemm_rows(plain, "fp32", 11).rows == 11.0 and gemm_rows(plain, "fp32", 11).tiles == ()
    p = _with_gemm_tile(load_device("xeon-sapphire-rapids"), 4.0, 0.9).params
    assert gemm_rows(p, "fp32", 11).tiles == (4, 4, 2, 1) and gemm_rows(p, "fp32", 11).tail == (2, 1)
    # a tail tile (2 or 1 rows) takes 0.9 x 4 = 3.6 rows' time; whole tiles their own rows
    got = {m: gemm_rows(p, "fp32", m).rows for m in (1, 3, 8, 9, 10, 11, 12, 49)}
    assert got == pytest.approx({1: 1.0, 3: 7.2, 8: 8.0, 9: 11.6, 10: 11.6, 11: 15.2, 12: 12.0, 49: 51.6})
    # a tail tile never takes less than its own rows at the full tile's pace
    cheap = _with_gemm_tile(load_device("xeon-sapphire-rapids"), 8.0, 0.3).params
    assert gemm_rows(cheap, "fp32", 13).rows == pytest.approx(8 + 4 + 2.4)
    assert gemm_rows(p, "int8", 11).rows == 11.0  # no tile for that dtype


def test_builtin_cpus_without_gemm_tiles_cost_as_before():
    """No `gemm_tile_m` in a built-in file: the efficiency is exactly eff x M / (M + half_m) at every
    M, and nothing in the why speaks of tiles."""
    from sparsesim.cost.families.cpu import gemm_efficiency

    for name in CPUS:
        dev = load_device(name)
        p = dev.params
        assert p.gemm_tile_m == {} and p.gemm_tail_cost == {}
        for dt in p.gemm_efficiency:
            for m in range(1, 41):
                assert gemm_efficiency(p, dt, m) == p.gemm_efficiency[dt] * m / (m + p.gemm_half_m[dt])
        assert "tile" not in estimate_op(gemm_op(13, 768, 768), None, dev).why


def test_dense_tail_tiles_cost_nearly_a_full_tile():
    """With tiles of 4 rows whose tails take 0.9 of a tile: M = 9 and 10 take one tile more than M = 8,
    M = 11 two, and M = 12 (whole tiles) less than M = 11; the compute of M rows is that of the rows'
    worth of time `gemm_rows` gives, and the why says so."""
    base = load_device("xeon-sapphire-rapids")
    dev = _with_gemm_tile(base, 4.0, 0.9)
    t = {m: estimate_op(gemm_op(m, 768, 768), None, dev) for m in (8, 9, 10, 11, 12)}
    plain = {m: estimate_op(gemm_op(m, 768, 768), None, base) for m in (8, 12)}
    assert t[8].latency_s == plain[8].latency_s and t[12].latency_s == plain[12].latency_s
    assert t[9].latency_s == pytest.approx(t[10].latency_s, rel=1e-9)
    assert t[8].latency_s < t[9].latency_s < t[11].latency_s and t[12].latency_s < t[11].latency_s
    assert "narrower tile(s) of 2/1 row(s)" in t[11].why and "tile" not in t[12].why


def test_sparse_speedups_and_channel_pruning_use_the_tiled_dense_cost():
    """The dense cost a sparse kernel's speedup and the runtime's fall-back compare against is the
    tiled one, and a channel-pruned op still costs exactly its smaller dense GEMM."""
    dev = _with_gemm_tile(_no_choice(load_device("xeon-sapphire-rapids")), 4.0, 0.9)
    op = gemm_op(13, 768, 768)
    mask = random_mask(768, 768, 0.1, seed=9)
    layer = layer_for(mask, Pattern("unstructured", 0.1), "fp32")
    dense = estimate_op(op, None, dev)
    assert estimate_op(op, layer, dev).details["dense_latency_s"] == dense.latency_s
    chooser = dataclasses.replace(dev, params=dataclasses.replace(dev.params, picks_faster_kernel=True))
    dense_layer = layer_for(random_mask(768, 768, 0.9, seed=9), Pattern("unstructured", 0.9), "fp32")
    fell_back = estimate_op(op, dense_layer, chooser)
    assert fell_back.kernel == "dense (fallback)" and fell_back.latency_s == dense.latency_s
    keep = torch.zeros(768, 768)
    keep[:384] = 1.0
    channel = layer_for(keep, Pattern("channel", 0.5), "fp32")
    pruned = estimate_op(shrink_layer_op(op, channel), channel, dev)
    assert pruned.latency_s == pytest.approx(estimate_op(gemm_op(13, 384, 768), None, dev).latency_s, rel=1e-12)


def test_gemm_tile_comes_with_its_tail_cost_and_is_a_power_of_two(tmp_path):
    tile = "[gemm_tile_m]\nfp32 = {{ value = {t}, unit = \"1\", source = \"x\" }}\n"
    tail = "[gemm_tail_cost]\nfp32 = {{ value = {c}, unit = \"1\", source = \"x\" }}\n"
    with pytest.raises(DeviceFileError, match="gemm_tail_cost"):
        _with_tables(tmp_path, tile.format(t=4.0))
    with pytest.raises(DeviceFileError, match=r"gemm_tile_m\.fp32"):
        _with_tables(tmp_path, tile.format(t=6.0) + tail.format(c=0.9))
    with pytest.raises(DeviceFileError, match=r"gemm_tail_cost\.fp32"):
        _with_tables(tmp_path, tile.format(t=4.0) + tail.format(c=1.5))
    dev = _with_tables(tmp_path, tile.format(t=4.0) + tail.format(c=0.9))
    assert dev.params.gemm_tile_m == {"fp32": 4.0} and dev.params.gemm_tail_cost == {"fp32": pytest.approx(0.9)}


def _with_tables(tmp_path, tables: str):
    """The Sapphire Rapids file with TOML `tables` appended, parsed strictly."""
    src = Path(load_device("xeon-sapphire-rapids").path).read_text()
    p = tmp_path / "tiles.toml"
    p.write_text(src + "\n" + tables)
    return parse_device_file(p)


def test_a_transcendental_function_costs_its_evaluation_where_the_device_times_it():
    """GELU over a BERT MLP's output: memory traffic alone without a figure; with the host's
    cycles an element (a calibrated host measures them) the evaluation outlasts the traffic, and
    an add, which has no figure, stays its traffic."""
    import dataclasses

    from sparsesim.cost import estimate_op
    from sparsesim.hw.devices import load_device
    from sparsesim.tracing.workloads import load_workload

    ops = load_workload("bert-base:batch=1,seq=128,dtype=fp32,layers=1,device=meta").ops
    gelu = next(op for op in ops if op.aten == "aten.gelu.default")
    add = next(op for op in ops if op.aten == "aten.add.Tensor")
    plain = load_device("xeon-sapphire-rapids")
    timed = dataclasses.replace(plain, params=dataclasses.replace(plain.params, function_cycles={"gelu": 10.0}))
    before, after = estimate_op(gelu, None, plain), estimate_op(gelu, None, timed)
    assert before.details["compute_s"] == 0 and "gelu evaluated" not in before.why
    expected = 128 * 3072 * 10.0 / (plain.params.clock * plain.params.cores)
    assert after.details["compute_s"] == pytest.approx(expected)
    assert after.latency_s > before.latency_s and after.bound == "compute" and "compute-bound" in after.why
    assert estimate_op(add, None, timed).latency_s == estimate_op(add, None, plain).latency_s
    # a layer norm's two row reductions and scaled shift are timed the same way
    norm = next(op for op in ops if op.aten == "aten.native_layer_norm.default")
    normed = dataclasses.replace(plain, params=dataclasses.replace(plain.params,
                                                                   function_cycles={"native_layer_norm": 10.0}))
    assert estimate_op(norm, None, normed).latency_s > estimate_op(norm, None, plain).latency_s


def test_a_fused_attention_evaluates_exp_on_every_score_where_the_device_times_it():
    import dataclasses

    from sparsesim.hw.devices import load_device
    from sparsesim.tracing.workloads import load_workload

    ops = load_workload("bert-base:batch=1,seq=128,dtype=fp32,layers=1,device=meta").ops
    attn = next(op for op in ops if op.kind == "attention")
    plain = load_device("xeon-sapphire-rapids")
    timed = dataclasses.replace(plain, params=dataclasses.replace(plain.params, function_cycles={"exp": 2.0}))
    before, after = estimate_op(attn, None, plain), estimate_op(attn, None, timed)
    scores = 12 * 128 * 128
    extra = scores * 2.0 / (plain.params.clock * plain.params.cores)
    assert after.details["compute_s"] == pytest.approx(before.details["compute_s"] + extra)
    assert f"exp on {scores:,} scores" in after.why and "exp on" not in before.why
