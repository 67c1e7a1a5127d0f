"""CPU SIMD family: dense GEMM on vector (and matrix) units, sparse weights through
DeepSparse/XNNPACK-style kernels that pay per stored nonzero.

Why the sparse kernels look like this: a CSR x dense kernel walks the weight's nonzeros row by
row; for each nonzero it loads the value and its column index, broadcasts the value and
multiply-adds it into a row of the output, reading the matching row of the activation
operand — the loop over the batch/spatial dimension M is what gets vectorised. So the cost is,
per nonzero, the larger of an index-chain floor and the vector work (M / lanes vector steps plus
streaming the M-wide activation row from the cache level holding it): with M below the vector
width the floor dominates and the lanes idle, and the time scales with nnz, not with the dense
MACs. Each output row costs ceil(M / lanes) vector stores, and each call a fixed overhead.
A BSR kernel pays the index once per r x c block and runs r*c value broadcasts over the same
activation rows, which vectorises/reuses better (how much better depends on the block edge and
is a device figure). Each stored value also costs a fixed few cycles whatever M is (loading and
broadcasting it, entering its loop over M): MKL, which runs torch's CPU BSR matmul, has tuned
kernels for some block edges (2, 3, 4, 8 when timed on the calibrated AMD host, 2026-12-04) and
a generic loop for the others (5, 6, 9-24 there) that pays two to three times the tuned kernels'
per-value cost and a slower vector step, so a 16x16 BSR at M=8 takes about twice what its vector
work alone would. The BSR kernel's vector steps cover a fixed number of M columns
(`bsr_vector_columns`: 4 on that host, whatever the block edge), and the columns left over
(M mod 4) run one at a time, each costing about a whole vector step (`bsr_column_cycles` per
value): M = 9, 10, 11 take as long as M = 12, 16, 20. The dense GEMM runs M in register tiles too
(`gemm_tile_m`: 4 rows for MKL's fp32 sgemm on that host), and the rows left over in narrower tiles
(2, then 1), each taking most of a full tile's time (`gemm_tail_cost`): a 512x512 linear takes
91 us at M=8, 115 at M=9 and 10, 136 at M=11 and 117 at M=12. The CSR kernel keeps an output
row's accumulators in registers for up to `csr_register_columns` of M (32 on that host) and walks
each row's nonzeros once; a wider M runs in passes of `csr_pass_columns` (16 there), each walking
the nonzeros again and paying the index chain again, so a pass of one column costs about what a
full one does: M = 33-48 take three passes, M = 49-64 four (a 1024x1024 weight at 10%: 400-450 us
at M = 33-48, 600 at 49-64). N:M runs through an index-regular kernel: per nonzero like CSR, but the index
decode is cheaper and there are no row pointers; CPUs have no N:M hardware.
Channel pruning is a smaller dense GEMM.

Every number comes from the device file (`accelerators/*.toml`); the host's sparse and dense
efficiencies are fitted by `sparsesim calibrate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from sparsesim.core.ir import DTYPE_BYTES, Op
from sparsesim.cost.common import (
    FRAMEWORK_SPARSE_OPS,
    EnergyInputs,
    GemmWork,
    build_cost,
    ceil_div,
    channel_pruned_text,
    check_flags,
    check_fraction,
    check_positive,
    check_whole,
    gemm_work,
    memory_op_bytes,
    memory_op_cost,
)
from sparsesim.cost.families import dynamic_quant
from sparsesim.cost.families.cpu_kernels import (
    ACT_GEMV,
    CPU_KERNELS,
    JIT_SPMM,
    SPMM,
    SPMM_KERNELS,
    TORCH_KERNELS,
)
from sparsesim.cost.record import ALONE, Cost, RunContext
from sparsesim.cost.registry import register_cost, register_peaks
from sparsesim.cost.sparse_inputs import active_input_fraction, skippable_inputs
from sparsesim.hw.devices import Device, quantity, register_family, setting
from sparsesim.hw.runtimes import RuntimeParams
from sparsesim.sparsity.records import KINDS, LayerSparsity

MODEL = "cpu-simd"
# dtype a vector unit without native support for an op's dtype computes in (convert, then fp32 FMA)
FALLBACK_DTYPE = "fp32"


@register_family("cpu")
@dataclass(frozen=True)
class CpuParams:
    """Device-file fields of a CPU (SI units after loading).

    Per-core figures: l1_bytes, l2_bytes, l2_bandwidth. Whole-part figures (for the `cores`
    the kernels run on): l3_bytes, l3_bandwidth, dram_bandwidth, static_power.
    `bsr_vector_cycles` and `bsr_value_cycles` are keyed by block shape ("4x4", "16x16"); a
    missing shape uses the nearest listed block area.

    Sparse-kernel figures, in cycles of `clock`: `sparse_nnz_cycles` is the per-nonzero floor
    (value + column-index load, then the dependent activation-row load) that vector work hides
    only when M is wide enough; `sparse_vector_cycles` the cost of one vector's worth (one vector
    width of M) of multiply-add per nonzero; `sparse_row_cycles` per output row per vector step
    (writing the output row); `bsr_block_cycles` per nonzero block; `bsr_value_cycles` per stored
    value of a block whatever M is (the value's load and broadcast and its M loop's entry; which
    kernel the block edge gets decides it); `nm_nnz_cycles` the N:M
    kernel's per-nonzero floor. `bsr_vector_columns` is the number of M columns one BSR vector
    step covers and `bsr_column_cycles` the cost per stored value of each column left over
    (M mod bsr_vector_columns), run one at a time. `csr_register_columns` is the widest M the CSR
    kernel covers in one walk over the nonzeros and `csr_pass_columns` the width of each pass over
    them beyond it. `gemm_half_m` is the M at which the dense GEMM reaches half of
    `gemm_efficiency` (its per-call work that does not grow with M, in rows' worth of time);
    `gemm_tile_m` and `gemm_tail_cost` (per dtype, optional) are the rows of its register tile
    along M and the share of a full tile's time each narrower tile over the rows left over takes.
    """

    cores: float = quantity("count")
    clock: float = quantity("frequency")
    vector_bits: float = quantity("count")
    fma_ports: float = quantity("count")
    native_dtypes: list = setting()
    gemm_efficiency: dict = quantity("ratio", per_dtype=True)
    gemm_half_m: dict = quantity("count", per_dtype=True)
    l1_bytes: float = quantity("bytes")
    l2_bytes: float = quantity("bytes")
    l3_bytes: float = quantity("bytes")
    l2_bandwidth: float = quantity("bandwidth")
    l3_bandwidth: float = quantity("bandwidth")
    dram_bandwidth: float = quantity("bandwidth")
    memory_capacity: float = quantity("bytes")  # the DRAM the model runs from (run.fit)
    call_overhead: float = quantity("time")
    sparse_call_overhead: float = quantity("time")
    sparse_nnz_cycles: float = quantity("cycles")
    sparse_vector_cycles: float = quantity("cycles")
    sparse_row_cycles: float = quantity("cycles")
    bsr_block_cycles: float = quantity("cycles")
    bsr_vector_cycles: dict = quantity("cycles", per_dtype=True)
    nm_nnz_cycles: float = quantity("cycles")
    mac_energy: dict = quantity("energy", per_dtype=True)
    l1_energy: float = quantity("energy_per_byte")
    l2_energy: float = quantity("energy_per_byte")
    l3_energy: float = quantity("energy_per_byte")
    dram_energy: float = quantity("energy_per_byte")
    static_power: float = quantity("power")
    # whether the runtime picks the dense kernel when a sparse one would be slower (DeepSparse /
    # XNNPACK choose per layer; torch runs the CSR/BSR tensor it is given)
    picks_faster_kernel: bool = setting()
    matrix_macs_per_cycle: dict = quantity("per_cycle", per_dtype=True, default={})
    # the package power the part is rated to sustain (0: the file states none, as a calibrated host);
    # average power over a run stays under it (tests/test_dataflow_engines.py)
    tdp: float = quantity("power", default=0.0)
    threads: float = quantity("count", default=0.0)
    # whether the dense GEMM copies (packs) its weight into a blocked buffer on every call, in a pass
    # of its own that no FMA work overlaps (a single-threaded BLAS sgemm); false where the runtime
    # packs weights once at load (XNNPACK, oneDNN with cached weights) or other cores hide the pass
    weight_pack_pass: bool = setting(default=False)
    # the BLAS runs a GEMM of up to this many activation rows as one GEMV per row, each streaming
    # the whole weight (its small-M path; a calibrated host measures where the packed GEMM takes
    # over); 1: only one-row GEMMs run as GEMVs
    gemv_rows_max: float = quantity("count", default=1.0)
    # the last-level cache's soft edge: a working set re-streamed op after op keeps all of itself
    # in the LLC up to `llc_full_bytes` and none of itself from `llc_none_bytes` on, the share in
    # the LLC falling linearly between (non-LRU replacement, other tenants); a calibrated host
    # measures both; 0 (the default): a hard edge at l3_bytes
    llc_full_bytes: float = quantity("bytes", default=0.0)
    llc_none_bytes: float = quantity("bytes", default=0.0)
    # the SpMM kernel of an inference engine: XNNPACK's sparse 1x1 convolution over CHW activations
    # (`xnnpack-spmm`), or a JIT-compiled sparse GEMM that also runs linears (`jit-spmm`, the
    # DeepSparse/LIBXSMM class); present only where the device file describes it (spmm_tile_m > 0)
    # and a runtime offers it by name
    spmm_tile_m: float = quantity("count", default=0.0)
    spmm_vector_cycles: float = quantity("cycles", default=0.0)
    spmm_nnz_cycles: float = quantity("cycles", default=0.0)
    spmm_store_cycles: float = quantity("cycles", default=0.0)
    # per stored value of a BSR block, whatever M is (keyed like bsr_vector_cycles); a calibrated
    # host fits it per block shape; empty (the default): no per-value cost apart from the vector work
    bsr_value_cycles: dict = quantity("cycles", per_dtype=True, default={})
    # the BSR kernel's output cost per output row per vector step (as sparse_row_cycles for CSR);
    # a calibrated host fits it; 0 (the default): the same as sparse_row_cycles
    bsr_row_cycles: float = quantity("cycles", default=0.0)
    # the M columns one BSR vector step covers, and the cycles per stored value of each column left
    # over (M mod bsr_vector_columns), which the kernel runs one at a time; a calibrated host
    # measures both; 0 (the default): the vector work is M / lanes steps, fractional, nothing left over
    bsr_vector_columns: float = quantity("count", default=0.0)
    bsr_column_cycles: float = quantity("cycles", default=0.0)
    # the dense GEMM's register tile along M (activation rows): the BLAS runs M in tiles of
    # `gemm_tile_m` rows, then the rows left over in one narrower tile per set bit of the remainder
    # (4 -> 2, 1), each taking `gemm_tail_cost` of a full tile's time (its loads of the packed weight
    # do not shrink with its rows); a calibrated host fits both per dtype; absent for a dtype (the
    # default): M rows cost M rows' time
    gemm_tile_m: dict = quantity("count", per_dtype=True, default={})
    gemm_tail_cost: dict = quantity("ratio", per_dtype=True, default={})
    # the CSR kernel keeps an output row's accumulators in registers for up to
    # `csr_register_columns` of M and walks each row's nonzeros once; a wider M runs in passes of
    # `csr_pass_columns` columns, each walking the nonzeros again (index chain included); a
    # calibrated host measures both; 0 (the default): one walk whatever M is
    csr_register_columns: float = quantity("count", default=0.0)
    csr_pass_columns: float = quantity("count", default=0.0)
    # cycles one core spends evaluating a function per element (keyed by the aten function: gelu,
    # silu, exp, tanh, _softmax, native_layer_norm, ...): vectorised polynomial approximations and
    # row reductions that can outlast the op's memory traffic on a CPU; a calibrated host measures
    # them; absent for a function (the default): the op is its memory traffic alone
    function_cycles: dict = quantity("cycles", per_dtype=True, default={})

    @staticmethod
    def kernel_names() -> tuple[str, ...]:
        """The kernels a runtime of this family may list (`runtime.<name>.kernels`, `kernel_dispatch`)."""
        return CPU_KERNELS

    def validate(self) -> str | None:
        problem = check_positive(self, "cores", "clock", "vector_bits", "fma_ports", "l2_bandwidth",
                                 "l3_bandwidth", "dram_bandwidth")
        if problem:
            return problem
        if FALLBACK_DTYPE not in self.gemm_efficiency:
            return f"field 'gemm_efficiency' needs an '{FALLBACK_DTYPE}' entry (the fallback dtype)"
        problem = check_fraction(self, "gemm_efficiency") or check_whole(self, "gemv_rows_max")
        if problem:
            return problem
        for dt in self.gemm_efficiency:
            if dt not in self.gemm_half_m:
                return f"field 'gemm_half_m' lacks '{dt}' (every gemm_efficiency dtype needs one)"
            if dt not in self.mac_energy:
                return f"field 'mac_energy' lacks '{dt}' (every gemm_efficiency dtype needs one)"
        problem = _check_gemm_tiles(self)
        if problem:
            return problem
        if not self.bsr_vector_cycles:
            return "field 'bsr_vector_cycles' needs at least one block shape"
        for key in self.bsr_vector_cycles:
            if _parse_block(key) is None:
                return f"field 'bsr_vector_cycles.{key}': key must be a block shape like '4x4'"
        if self.bsr_value_cycles and set(self.bsr_value_cycles) != set(self.bsr_vector_cycles):
            return ("field 'bsr_value_cycles': needs the same block shapes as 'bsr_vector_cycles' "
                    f"(got {sorted(self.bsr_value_cycles)} and {sorted(self.bsr_vector_cycles)})")
        if self.bsr_vector_columns or self.bsr_column_cycles:
            problem = check_whole(self, "bsr_vector_columns") or check_positive(self, "bsr_column_cycles")
            if problem:
                return f"{problem} (bsr_vector_columns and bsr_column_cycles come together)"
        if self.csr_register_columns or self.csr_pass_columns:
            problem = check_whole(self, "csr_register_columns", "csr_pass_columns")
            if problem or not 0 < self.csr_pass_columns <= self.csr_register_columns:
                return (problem or "fields 'csr_register_columns' and 'csr_pass_columns': need "
                        f"0 < csr_pass_columns <= csr_register_columns (got {self.csr_pass_columns:g}, "
                        f"{self.csr_register_columns:g})")
        if self.llc_none_bytes and not 0 < self.llc_full_bytes <= self.l3_bytes <= self.llc_none_bytes:
            return ("fields 'llc_full_bytes' and 'llc_none_bytes': need 0 < llc_full_bytes <= l3_bytes <= "
                    f"llc_none_bytes (got {self.llc_full_bytes:g}, {self.l3_bytes:g}, {self.llc_none_bytes:g} bytes)")
        if self.tdp and self.static_power > self.tdp:
            return f"field 'static_power': {self.static_power:g} W exceeds tdp {self.tdp:g} W"
        problem = check_flags(self, "picks_faster_kernel", "weight_pack_pass")
        if problem:
            return problem
        if self.spmm_tile_m:
            problem = check_positive(self, "spmm_tile_m", "spmm_vector_cycles", "spmm_nnz_cycles", "spmm_store_cycles")
            if problem:
                return problem
        if not isinstance(self.native_dtypes, list) or not all(isinstance(d, str) for d in self.native_dtypes):
            return "field 'native_dtypes' must be a list of dtype strings"
        widest = max(DTYPE_BYTES.get(d, 0) for d in [FALLBACK_DTYPE, *self.native_dtypes]
                     if isinstance(d, str)) * 8
        if self.vector_bits < widest:
            return (f"field 'vector_bits': {self.vector_bits:g} bits holds no {widest}-bit lane of the widest dtype "
                    "it runs")
        return None


def _check_gemm_tiles(p: CpuParams) -> str | None:
    """`gemm_tile_m` and `gemm_tail_cost` come together per dtype; the tile is a power of two rows
    (the tail tiles halve down to one row, so they cover any remainder) and a tail tile takes a
    share of a full one's time."""
    if set(p.gemm_tile_m) != set(p.gemm_tail_cost):
        return ("fields 'gemm_tile_m' and 'gemm_tail_cost': need the same dtypes "
                f"(got {sorted(p.gemm_tile_m)} and {sorted(p.gemm_tail_cost)})")
    for dt, tile in p.gemm_tile_m.items():
        if not (tile >= 2 and tile == int(tile) and int(tile) & (int(tile) - 1) == 0):
            return f"field 'gemm_tile_m.{dt}': {tile:g} is no power of two rows of at least 2"
        if not 0 < p.gemm_tail_cost[dt] <= 1:
            return f"field 'gemm_tail_cost.{dt}': {p.gemm_tail_cost[dt]:g} is no share in (0, 1] of a full tile's time"
    return None


def _parse_block(key: str) -> tuple[int, int] | None:
    parts = key.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


# ----------------------------------------------------------------------------- machine figures

def compute_dtype(p: CpuParams, dtype: str) -> str:
    """The dtype the GEMM actually runs in: the op's own when the device has a figure for it."""
    return dtype if dtype in p.gemm_efficiency else FALLBACK_DTYPE


def lanes(p: CpuParams, dtype: str) -> float:
    """MACs per vector instruction: dot-product instructions (bf16, int8 VNNI) pack narrow
    dtypes into the 32-bit lanes; a dtype the vector unit lacks is widened to fp32."""
    width = DTYPE_BYTES[dtype] if dtype in p.native_dtypes else DTYPE_BYTES[FALLBACK_DTYPE]
    return p.vector_bits / (8 * width)


def peak_flops(p: CpuParams, dtype: str) -> float:
    """Dense peak: matrix units (AMX) where the device has them for this dtype, else
    cores x lanes x FMA ports x 2 FLOP x clock."""
    if dtype in p.matrix_macs_per_cycle:
        return 2 * p.matrix_macs_per_cycle[dtype] * p.cores * p.clock
    return 2 * lanes(p, dtype) * p.fma_ports * p.cores * p.clock


@dataclass(frozen=True)
class GemmRows:
    """How a dense GEMM runs its M activation rows: the widths of its register tiles along M (full
    tiles, then the narrower tail tiles over the rows left over; empty where the device gives no
    tile; `tile` 0) and the rows' worth of time they take."""

    tile: int
    tiles: tuple[int, ...]
    rows: float

    @property
    def tail(self) -> tuple[int, ...]:
        """The narrower tiles run over the rows left over."""
        return tuple(w for w in self.tiles if w != self.tile)


def gemm_rows(p: CpuParams, dtype: str, m: int) -> GemmRows:
    """M split as the BLAS runs it: tiles of `gemm_tile_m` rows, then one narrower tile per set bit
    of the remainder, each taking `gemm_tail_cost` of a full tile's time and never less than its own
    rows at the full tile's pace (MKL's fp32 sgemm on the calibrated AMD host: M = 9 and 10 cost
    one tile more than M = 8, M = 11 two). One row runs as a GEMV, not in tiles; without the
    figure M rows take M rows' time."""
    dt = compute_dtype(p, dtype)
    tile = int(p.gemm_tile_m.get(dt, 0))
    if not tile or m <= 1:
        return GemmRows(0, (), float(max(m, 0)))
    tiles = tuple(spmm_tiles(m, tile))
    tail = p.gemm_tail_cost[dt] * tile
    return GemmRows(tile, tiles, float(sum(w if w == tile else max(w, tail) for w in tiles)))


def gemm_efficiency(p: CpuParams, dtype: str, m: int) -> float:
    """Fraction of peak a dense GEMM kernel reaches with M activation rows: M rows of useful work
    over the rows' worth of time its tiles take (`gemm_rows`) plus the per-call work that does not
    grow with M (`gemm_half_m`, the M at half efficiency where M fills whole tiles)."""
    dt = compute_dtype(p, dtype)
    half = p.gemm_half_m[dt]
    return p.gemm_efficiency[dt] * m / (gemm_rows(p, dtype, m).rows + half) if m > 0 else p.gemm_efficiency[dt]


def llc_share(p: CpuParams, working_set: float) -> float:
    """Share of a re-streamed working set beyond L2 that the LLC serves (`llc_full_bytes`)."""
    if not p.llc_none_bytes:
        return 1.0 if working_set <= p.l3_bytes else 0.0
    if working_set <= p.llc_full_bytes:
        return 1.0
    return max(0.0, (p.llc_none_bytes - working_set) / (p.llc_none_bytes - p.llc_full_bytes))


@dataclass(frozen=True)
class Residency:
    """Where a working set lives: the level named, the bandwidth and energy per byte it is read
    at, and the share of it the LLC serves (1.0 inside the LLC or a faster level)."""

    level: str
    bandwidth: float
    energy_per_byte: float
    llc_share: float = 1.0


def residency(p: CpuParams, working_set: float) -> Residency:
    """The smallest cache level the working set fits; at the LLC's soft edge a blend of the LLC
    and DRAM (the level named is the larger share)."""
    if working_set <= p.l2_bytes * p.cores:
        return Residency("l2", p.l2_bandwidth * p.cores, p.l2_energy)
    h = llc_share(p, working_set)
    if h >= 1.0:
        return Residency("l3", p.l3_bandwidth, p.l3_energy)
    if h <= 0.0:
        return Residency("dram", p.dram_bandwidth, p.dram_energy, 0.0)
    bw = 1.0 / (h / p.l3_bandwidth + (1.0 - h) / p.dram_bandwidth)
    return Residency("l3" if h >= 0.5 else "dram", bw, h * p.l3_energy + (1.0 - h) * p.dram_energy, h)


@dataclass(frozen=True)
class Traffic:
    """Where an op's bytes come from and how long moving them takes."""

    seconds: float
    bytes_by_level: dict[str, float]
    weight_level: str
    where: str  # for the why
    weight_bandwidth: float  # bytes/s of the level the weight comes from


def traffic(p: CpuParams, weight_bytes: float, other_bytes: float, context: RunContext,
            scratch_bytes: float = 0.0) -> Traffic:
    """Weights and activations stay in the smallest cache level their working set fits when
    the op runs alone (a micro-benchmark loop) or the whole model fits in the last-level cache;
    in a model that does not, each op streams its weights from DRAM and only the activations
    (just written by the previous op) come from cache. `scratch_bytes` (a packed copy of the
    weight) share the cache without adding to the bytes moved here."""
    model_bytes = context.model_weight_bytes
    if model_bytes is None or not model_bytes > p.l3_bytes:  # warm: the working set may stay in cache
        total = weight_bytes + other_bytes
        r = residency(p, total + scratch_bytes)
        level, bw, h = r.level, r.bandwidth, r.llc_share
        if 0.0 < h < 1.0:
            return Traffic(total / bw, {"l3": h * total, "dram": (1.0 - h) * total}, level,
                           f"working set {total / 1e6:.3g} MB at the LLC's edge: {h:.0%} from l3, the rest from dram", bw)
        return Traffic(total / bw, {level: total}, level, f"working set {total / 1e6:.3g} MB in {level}", bw)
    r = residency(p, other_bytes)
    level, bw = r.level, r.bandwidth
    seconds = weight_bytes / p.dram_bandwidth + other_bytes / bw
    by_level = {"dram": weight_bytes}
    by_level[level] = by_level.get(level, 0.0) + other_bytes
    return Traffic(seconds, by_level, "dram",
                   f"weights {weight_bytes / 1e6:.3g} MB streamed from dram (the model's "
                   f"{model_bytes / 1e6:.4g} MB exceed the last-level cache), "
                   f"activations {other_bytes / 1e6:.3g} MB in {level}", p.dram_bandwidth)


def _energy_table(p: CpuParams) -> dict[str, float]:
    return {"l1": p.l1_energy, "l2": p.l2_energy, "l3": p.l3_energy, "dram": p.dram_energy}


# ----------------------------------------------------------------------------- kernels

def _dense(work: GemmWork, device: Device, context: RunContext, *, kernel: str = "dense",
           why_prefix: str = "", evaluation: tuple[float, str] = (0.0, "")) -> Cost:
    """The dense GEMM(s) of `work` on the vector/matrix units; any zeros in the weight are ignored.
    `evaluation`: seconds of function evaluation the same loops do (a fused attention's exp on
    every score) and its words for the why."""
    p: CpuParams = device.params
    dt = compute_dtype(p, work.dtype)
    peak = peak_flops(p, dt)
    compute_s = 0.0
    for g in work.gemms:
        eff = gemm_efficiency(p, work.dtype, g.m)
        compute_s += 2 * g.macs / (peak * eff) if g.macs else 0.0
    g0 = work.gemms[0] if len(work.gemms) == 1 else None
    per_row = g0 is not None and g0.batch * g0.groups == 1 and 1 < g0.m <= p.gemv_rows_max
    # a BLAS that packs the weight per call reads it once in a pass of its own before the FMA
    # loops: that pass adds to the compute, at the bandwidth of the level holding the weight and
    # its packed copy (twice the weight's footprint in the cache); a GEMV (one activation row, or
    # the per-row path below) streams the weight through its FMAs unpacked
    packs = p.weight_pack_pass and not per_row and any(g.m > 1 for g in work.gemms)
    moved = traffic(p, work.w_bytes, work.dense_bytes - work.w_bytes, context,
                    scratch_bytes=work.w_bytes if packs else 0.0)
    memory_s = moved.seconds
    bytes_by_level = dict(moved.bytes_by_level)
    rows_note = ""
    if per_row and g0 is not None:
        # the BLAS's small-M path: one unpacked GEMV per activation row, each streaming the weight
        compute_s = g0.m * 2 * g0.n * g0.k / (peak * gemm_efficiency(p, work.dtype, 1))
        memory_s = g0.m * work.w_bytes / moved.weight_bandwidth
        bytes_by_level[moved.weight_level] = bytes_by_level.get(moved.weight_level, 0.0) + (g0.m - 1) * work.w_bytes
        rows_note = (f"run as {g0.m} GEMVs, one per row, each streaming the {work.w_bytes / 1e6:.3g} MB weight "
                     f"from {moved.weight_level} (the BLAS's path up to {p.gemv_rows_max:g} rows)")
    pack_s = work.w_bytes / moved.weight_bandwidth if packs else 0.0
    compute_s += pack_s + evaluation[0]
    fallback = dt != work.dtype
    parts = [why_prefix] if why_prefix else []
    if fallback:
        parts.append(f"no {work.dtype} GEMM figure on this CPU: run as {dt}")
    m = work.gemms[0].m if work.gemms else 0
    eff0 = gemm_efficiency(p, work.dtype, m)
    parts.append(
        f"{'AMX' if dt in p.matrix_macs_per_cycle else 'SIMD'} {dt} GEMM at {eff0:.0%} of "
        f"{peak / 1e9:.4g} GFLOP/s (M={m}); {moved.where}"
    )
    split = gemm_rows(p, work.dtype, m)
    tail = split.tail if not per_row else ()
    if tail:
        tile = split.tile
        parts.append(f"M={m} runs as {m // tile} tile(s) of {tile} rows + narrower tile(s) of "
                     f"{'/'.join(map(str, tail))} row(s), each taking {p.gemm_tail_cost[dt]:.0%} of a full tile's time")
    if pack_s:
        parts.append(f"weight packed per call: {pack_s * 1e6:.3g} us from {moved.weight_level}")
    if rows_note:
        parts.append(rows_note)
    if evaluation[1]:
        parts.append(evaluation[1])
    if memory_s > compute_s:
        parts.append("memory-bound")
    return build_cost(
        device=device, model=MODEL, compute_s=compute_s, memory_s=memory_s,
        overhead_s=p.call_overhead,
        energy=EnergyInputs(
            macs=work.macs, mac_energy_j=p.mac_energy[dt],
            bytes_by_level=bytes_by_level, energy_per_byte=_energy_table(p),
            static_power_w=p.static_power,
        ),
        kernel=kernel, why="; ".join(parts), flops_executed=float(work.flops), peak_flops=peak,
        memory_bytes=work.w_bytes, fallback=fallback,
        details={"peak_flops": peak, "gemm_efficiency": eff0, "pack_s": pack_s},
    )


def _sparse(work: GemmWork, layer: LayerSparsity, device: Device, dense: Cost, context: RunContext) -> Cost:
    """CSR (unstructured), BSR (block) or index-regular (N:M) kernel: cost per stored nonzero."""
    p: CpuParams = device.params
    g = work.gemms[0]
    st = layer.stats
    dt = compute_dtype(p, work.dtype)
    nl = lanes(p, dt)
    vec = max(g.m, 1) / nl          # vector-equivalents of work per nonzero (fractional below one)
    steps = ceil_div(max(g.m, 1), int(nl))  # output-row vector stores
    reps = g.batch  # the weight is shared over groups inside st; batch repeats the whole GEMM
    # the activation operand (K x M) is streamed once per nonzero (once per block for BSR) from
    # the cache level that holds it; the output is written one vector step per row
    x = residency(p, work.a_bytes)
    x_level, x_bw = x.level, x.bandwidth
    row_bytes = g.m * work.dtype_bytes
    stream_cycles = row_bytes / x_bw * p.clock * p.cores
    out_cycles = st.rows * steps * output_row_cycles(p, layer.pattern.kind)
    # per nonzero, the index load -> dependent activation-row load chain sets a floor that the
    # vector work hides only once M fills enough lanes: below it the lanes idle
    per_nnz_work = vec * p.sparse_vector_cycles + stream_cycles
    rule = SPARSE_KERNELS.get(layer.pattern.kind, _csr_cycles)
    k = rule(p, layer, _PerNonzero(vec, per_nnz_work, stream_cycles, f"{row_bytes:g} B activation row from {x_level}",
                                   max(g.m, 1), nl))
    cycles, nnz_exec, kernel, how = k.cycles + out_cycles, k.nnz_exec, k.kernel, k.how
    if k.floor_bound:
        how += "; the per-nonzero index chain, not the vector work, sets the pace (M too small to fill the lanes)"
    compute_s = reps * cycles / (p.clock * p.cores)
    weight_bytes = work.w_values_bytes + work.w_metadata_bytes
    moved = traffic(p, weight_bytes, work.a_bytes + work.c_bytes, context)
    memory_s = moved.seconds
    level = moved.weight_level  # metadata travels with the weights
    lane_use = min(1.0, max(g.m, 1) / (steps * nl))
    macs_exec = float(nnz_exec) * g.m * reps
    speed = dense.latency_s / (max(compute_s, memory_s) + p.sparse_call_overhead)
    why = (f"{kernel}: {how}; M={g.m} fills {lane_use:.0%} of {int(nl)} {dt} lanes; "
           f"{moved.where}; {speed:.2f}x vs dense")
    return build_cost(
        device=device, model=MODEL, compute_s=compute_s, memory_s=memory_s,
        overhead_s=p.sparse_call_overhead,
        energy=EnergyInputs(
            macs=macs_exec, mac_energy_j=p.mac_energy[dt],
            # activation rows re-read from L1 once per nonzero (per block row for BSR)
            bytes_by_level={**moved.bytes_by_level, "l1": float(nnz_exec) * g.m * work.dtype_bytes * reps},
            energy_per_byte=_energy_table(p), static_power_w=p.static_power,
            metadata_bytes=work.w_metadata_bytes, metadata_energy_per_byte=_energy_table(p)[level],
        ),
        kernel=kernel, why=why, flops_executed=2 * macs_exec, peak_flops=peak_flops(p, dt),
        memory_bytes=weight_bytes, metadata_bytes=work.w_metadata_bytes,
        fallback=dt != work.dtype,
        details={"vector_steps_per_nnz": float(vec), "lane_use": lane_use, "dense_latency_s": dense.latency_s},
    )


@dataclass(frozen=True)
class _PerNonzero:
    """The vector work one stored nonzero costs at this M, as every sparse kernel sees it."""

    vec: float           # vector-equivalents of work per nonzero
    work_cycles: float   # vector steps + streaming the activation row
    stream_cycles: float  # streaming one activation row alone
    row: str             # where the activation row comes from, for the why
    m: int               # activation columns (M), for kernels that split it their own way
    lanes: float         # vector lanes `vec` is counted in


@dataclass(frozen=True)
class _KernelCycles:
    """Cycles of a sparse kernel's nonzero loop (output stores apart) and how to explain them."""

    cycles: float
    nnz_exec: float
    kernel: str
    how: str
    floor_bound: bool


def _csr_cycles(p: CpuParams, layer: LayerSparsity, w: _PerNonzero) -> _KernelCycles:
    """CSR: per nonzero, the larger of the value+index load chain and the vector work; an M wider
    than the kernel keeps in registers runs in passes, each walking the nonzeros again."""
    nnz = layer.stats.nnz
    passes = csr_passes(p, w.m)
    if len(passes) == 1:
        return _KernelCycles(nnz * max(p.sparse_nnz_cycles, w.work_cycles), nnz, "csr",
                             f"{nnz} nonzeros x max(value+index load chain, {w.vec:.3g} vector steps + {w.row})",
                             p.sparse_nnz_cycles > w.work_cycles)
    # a pass of c columns: c / M of the vector work and of the activation row's stream
    per_pass = [max(p.sparse_nnz_cycles, w.work_cycles * c / w.m) for c in passes]
    chained = sum(1 for c in passes if p.sparse_nnz_cycles >= w.work_cycles * c / w.m)
    return _KernelCycles(nnz * sum(per_pass), nnz, "csr",
                         f"M={w.m} wider than the {int(p.csr_register_columns)} columns kept in registers: "
                         f"{len(passes)} passes of up to {int(p.csr_pass_columns)} columns, each walking the "
                         f"{nnz} nonzeros (max(value+index load chain, its vector steps + its part of the {w.row}))"
                         + (f"; {chained} of them paced by the index chain" if chained else ""),
                         False)


def csr_passes(p: CpuParams, m: int) -> list[int]:
    """The columns of M each walk over a CSR row's nonzeros covers: all of M in one walk up to
    `csr_register_columns` (or without the figure), else passes of `csr_pass_columns`, the last
    one holding what is left (MKL's CSR matmul on the calibrated AMD host: M = 33-48 take three
    16-column passes, M = 49-64 four)."""
    m = max(m, 1)
    reg, width = int(p.csr_register_columns), int(p.csr_pass_columns)
    if reg <= 0 or m <= reg:
        return [m]
    full, left = divmod(m, width)
    return [width] * full + ([left] if left else [])


def _nm_cycles(p: CpuParams, layer: LayerSparsity, w: _PerNonzero) -> _KernelCycles:
    """N:M: per nonzero like CSR, with the cheaper regular index decode and no row pointers."""
    nnz = layer.stats.nnz
    return _KernelCycles(nnz * max(p.nm_nnz_cycles, w.work_cycles), nnz, f"{layer.pattern.label} index-regular",
                         f"{nnz} nonzeros x max(regular index decode, {w.vec:.3g} vector steps); "
                         "no N:M hardware on a CPU", p.nm_nnz_cycles > w.work_cycles)


def _bsr_cycles(p: CpuParams, layer: LayerSparsity, w: _PerNonzero) -> _KernelCycles:
    """BSR: the index once per r x c block, r*c value broadcasts over the same activation rows."""
    st = layer.stats
    blocks = st.nonzero_blocks(*layer.pattern.block)
    # a block side longer than the weight is the weight's extent (the mask's single edge block)
    r, c = min(layer.pattern.block[0], max(st.rows, 1)), min(layer.pattern.block[1], max(st.cols, 1))
    if blocks is None:
        blocks = math.ceil(layer.stats.nnz / (r * c))
    vcyc, key = bsr_rate(p, r, c)
    # per stored value: a fixed cost whatever M is, its vector steps over M, then the columns left
    # over run one at a time
    value = p.bsr_value_cycles.get(key, 0.0)
    cols = bsr_columns(p, w.m, w.lanes)
    per_value = value + cols.vec * vcyc + cols.leftover * p.bsr_column_cycles
    cycles = blocks * (p.bsr_block_cycles + r * c * per_value + c * w.stream_cycles)
    left = (f" + {cols.leftover} leftover column(s) one at a time ({p.bsr_column_cycles:.3g} each; "
            f"vector steps cover {int(p.bsr_vector_columns)} columns)" if cols.leftover else "")
    return _KernelCycles(cycles, blocks * r * c, f"bsr {r}x{c}",
                         f"{blocks} nonzero {r}x{c} blocks x (index + {r * c} values x ({value:.3g} fixed + "
                         f"{cols.vec:.3g} vector steps{left}) at the {key} rates)",
                         False)


# the CPU's kernel per sparse pattern kind; a kind without one runs the CSR kernel
SPARSE_KERNELS: dict[str, Callable[[CpuParams, LayerSparsity, _PerNonzero], _KernelCycles]] = {
    "unstructured": _csr_cycles,
    "nm": _nm_cycles,
    # V:N:M is N:M with shared column choices: the same index-regular kernel, per nonzero
    "vnm": _nm_cycles,
    "block": _bsr_cycles,
}


def output_row_cycles(p: CpuParams, kind: str) -> float:
    """Cycles per output row per vector step of the sparse kernel run for `kind`: torch's BSR path
    passes over the whole output more than its CSR path does (an empty BSR matmul costs about
    twice an empty CSR one per output element, whatever the block edge), so a device file may
    give BSR its own figure; without one BSR writes its output as CSR does."""
    if kind == "block" and p.bsr_row_cycles:
        return p.bsr_row_cycles
    return p.sparse_row_cycles


@dataclass(frozen=True)
class BsrColumns:
    """How a BSR kernel splits M: vector-equivalents of work (in `lanes` units) over the columns
    its vector steps cover, and the columns left over that it runs one at a time."""

    vec: float
    leftover: int


def bsr_columns(p: CpuParams, m: int, nl: float) -> BsrColumns:
    """M split as the BSR kernel runs it: whole steps of `bsr_vector_columns` columns, then the
    remainder one column at a time (MKL's BSR matmul on the calibrated AMD host: M = 9, 10, 11
    cost what 12, 16, 20 do). Without the figure, M / lanes fractional steps and no remainder."""
    m = max(m, 1)
    width = int(p.bsr_vector_columns)
    if width <= 0:
        return BsrColumns(m / nl, 0)
    left = m % width
    return BsrColumns((m - left) / nl, left)


def bsr_rate(p: CpuParams, r: int, c: int) -> tuple[float, str]:
    """Cycles per vector step of a BSR kernel with r x c blocks and the block shape whose figures
    stand for it: the listed shape, else the listed shape nearest in log block area (the kernel's
    register blocking depends on area)."""
    key = f"{r}x{c}"
    if key in p.bsr_vector_cycles:
        return p.bsr_vector_cycles[key], key
    area = math.log(r * c)
    best = min(p.bsr_vector_cycles, key=lambda k: abs(math.log(math.prod(_parse_block(k) or (1, 1))) - area))
    return p.bsr_vector_cycles[best], best


# ----------------------------------------------------------------------------- mobile SpMM



def spmm_tiles(width: int, tile: int) -> list[int]:
    """Widths of the spatial tiles an SpMM kernel runs over `width` positions: full tiles of
    `tile`, then one narrower kernel per set bit of the remainder (XNNPACK's 32/16/8/4/2/1 ladder;
    the dense GEMM's tiles along M split the same way, `gemm_rows`)."""
    tiles = [tile] * (width // tile)
    rem, w = width % tile, tile
    while rem and w > 1:
        w //= 2
        if rem >= w:
            tiles.append(w)
            rem -= w
    return tiles


def spmm_problem(op: Op, layer: LayerSparsity, kernel: str = SPMM) -> str | None:
    """Why an SpMM kernel cannot run `op` (None when it can): XNNPACK's takes 1x1 convolutions
    of stride 1, one group and no padding (a plain GEMM over the spatial positions of CHW
    activations); `jit-spmm` also takes linears (a GEMM over the tokens) and stride-1 ungrouped
    convolutions of any kernel (a direct sparse convolution over a padded input: each nonzero's
    kernel offset is one more load offset; Park et al., ICLR 2017); with an unstructured weight."""
    c = op.conv
    linear = kernel == JIT_SPMM and op.kind == "linear" and op.gemm is not None
    if not linear and (op.kind != "conv" or c is None):
        return "runs 1x1 convolutions only" if kernel == SPMM else "runs linears and convolutions only"
    if c is not None and kernel == JIT_SPMM and (any(st != 1 for st in c.stride) or c.groups != 1
                                                 or any(d != 1 for d in c.dilation)):
        return f"runs stride-1 ungrouped convolutions only (this one: stride {c.stride}, {c.groups} group(s))"
    if c is not None and kernel == SPMM and (any(k != 1 for k in c.kernel) or any(st != 1 for st in c.stride)
                                             or c.groups != 1 or any(c.padding)):
        return f"runs 1x1 stride-1 ungrouped convolutions only (this one: {'x'.join(map(str, c.kernel))} kernel, " \
               f"stride {c.stride}, {c.groups} group(s))"
    if KINDS[layer.pattern.kind].default_format != "csr":
        return f"walks a weight stored one nonzero at a time (CSR) only (not {layer.pattern.label})"
    return None


def _spmm(op: Op, work: GemmWork, layer: LayerSparsity, device: Device, dense: Cost, context: RunContext,
          kernel: str = SPMM) -> Cost:
    """XNNPACK-class sparse 1x1 convolution (and, as `jit-spmm`, a linear over its tokens):
    activations in CHW, the output computed one output
    channel x `spmm_tile_m` spatial positions at a time; per stored nonzero the kernel broadcasts
    the value, loads the input channel's row segment (the channel offset comes from the compressed
    weight) and multiply-adds it, vectorised over the spatial positions. The per-nonzero cost is
    the larger of the scalar value/offset chain (`spmm_nnz_cycles`) and the vector work of the
    tile (vectors x `spmm_vector_cycles`, or the activation stream from the cache holding the
    K x tile slab); narrower remainder tiles pay the chain for less work. Each output vector
    costs `spmm_store_cycles` (bias, clamp, store). The whole compressed weight is walked once
    per spatial tile; tiles are spread over the cores (`jit-spmm`: tiles and output rows).
    With no index chain in `jit-spmm`, `spmm_nnz_cycles` is the device's floor for its value
    broadcast and first activation load."""
    p: CpuParams = device.params
    g = work.gemms[0]
    st = layer.stats
    dt = compute_dtype(p, work.dtype)
    nl = int(lanes(p, dt))
    conv = op.conv
    # a linear's rows (tokens) are the vector dimension, laid out as a 1x1 convolution's positions
    hw = max(1, math.prod(conv.output_spatial)) if conv is not None else max(1, g.m)
    images = max(1, g.m // hw) * g.batch
    positions = "spatial" if conv is not None else "token"
    tile = int(p.spmm_tile_m)
    tiles = spmm_tiles(hw, tile)
    # the activation slab the nonzeros of one tile pick rows from (input channels x tile; a direct
    # convolution's kernel offsets shift within the same rows): in L1, else L2, else L3
    slab = (conv.in_channels if conv is not None else g.k) * tile * work.dtype_bytes
    slab_bw = math.inf if slab <= p.l1_bytes else p.l2_bandwidth if slab <= p.l2_bytes else p.l3_bandwidth / p.cores
    slab_level = "l1" if slab <= p.l1_bytes else "l2" if slab <= p.l2_bytes else "l3"
    stream = nl * work.dtype_bytes / slab_bw * p.clock  # cycles to bring one vector from the slab's level
    vcyc = max(p.spmm_vector_cycles, stream)
    per_nnz = sum(max(p.spmm_nnz_cycles, ceil_div(w, nl) * vcyc) for w in tiles)
    out_vectors = sum(ceil_div(w, nl) for w in tiles)
    nnz = st.nnz
    cycles = images * (nnz * per_nnz + st.rows * out_vectors * p.spmm_store_cycles)
    workers = min(p.cores, images * len(tiles) * (st.rows if kernel == JIT_SPMM else 1))
    compute_s = cycles / (p.clock * workers)
    weight_bytes = work.w_values_bytes + work.w_metadata_bytes
    moved = traffic(p, weight_bytes, work.a_bytes + work.c_bytes, context)
    memory_s = moved.seconds
    macs_exec = float(nnz) * g.m * g.batch
    full = sum(1 for w in tiles if w == tile)
    rem = [w for w in tiles if w != tile]
    speed = dense.latency_s / (max(compute_s, memory_s) + p.call_overhead)
    floor_bound = p.spmm_nnz_cycles > ceil_div(tile, nl) * vcyc
    why = (f"{kernel}: {nnz} nonzeros x {len(tiles)} {positions} tile(s) of {hw} positions ({full} x {tile}"
           + (f" + {'/'.join(map(str, rem))}" if rem else "") + f") x max({'value/offset chain' if kernel == SPMM else 'value broadcast + first load'} "
           f"{p.spmm_nnz_cycles:g} cycles, {ceil_div(tile, nl)} x {vcyc:.3g} cycles per {nl}-lane {dt} vector; "
           f"{slab / 1024:.3g} KiB activation slab in {slab_level})"
           + ("; the per-nonzero floor, not the vector work, sets the pace" if floor_bound else "")
           + f"; {workers:g} core(s); {moved.where}; {speed:.2f}x vs dense")
    table = _energy_table(p)
    return build_cost(
        device=device, model=MODEL, compute_s=compute_s, memory_s=memory_s, overhead_s=p.call_overhead,
        energy=EnergyInputs(
            macs=macs_exec, mac_energy_j=p.mac_energy[dt],
            # the slab is re-read once per nonzero per tile, the compressed weight once per tile
            bytes_by_level={**moved.bytes_by_level,
                            "l1": macs_exec * work.dtype_bytes + weight_bytes * len(tiles) * images},
            energy_per_byte=table, static_power_w=p.static_power,
            metadata_bytes=work.w_metadata_bytes, metadata_energy_per_byte=table[moved.weight_level],
        ),
        kernel=kernel, why=why, flops_executed=2 * macs_exec, peak_flops=peak_flops(p, dt),
        memory_bytes=weight_bytes, metadata_bytes=work.w_metadata_bytes, fallback=dt != work.dtype,
        details={"spmm_tiles": float(len(tiles)), "dense_latency_s": dense.latency_s},
    )


def _offered(device: Device, context: RunContext) -> tuple[str, Callable[[str], bool]]:
    """The runtime's name and whether it offers a CPU kernel: a forced kernel (`--kernel`) is the
    only one; an SpMM kernel needs the device's figures (forced or not) and, unforced, the runtime
    to list it by name."""
    name, rt = device.runtime(context.runtime)
    p: CpuParams = device.params

    def offers(kernel: str) -> bool:
        if kernel in SPMM_KERNELS and not p.spmm_tile_m:
            return False
        if context.kernel in CPU_KERNELS:
            return kernel == context.kernel
        if kernel in SPMM_KERNELS:
            return kernel in rt.kernels
        if kernel == ACT_GEMV:  # not a framework kernel: a runtime that has it names it
            return ACT_GEMV in rt.kernels
        return rt.offers(kernel)

    return name, offers


def _activation_sparse(op: Op, work: GemmWork, device: Device, context: RunContext) -> Cost:
    """A dense weight with sparse inputs (`act:S`): the dense kernel multiplies the zeros; an
    activation-sparse GEMV (`act-gemv`, where the runtime offers it or `--kernel` forces it)
    reads the weight rows of the input channels some row keeps (`active_input_fraction`: all
    of them soon as the batch grows) and runs the dense SIMD loop over those alone. The faster
    of the two runs."""
    dense = _dense(work, device, context)
    _, offers = _offered(device, context)
    if op.kind != "linear" or not offers(ACT_GEMV) or len(work.gemms) != 1:
        return dense
    g = work.gemms[0]
    active = active_input_fraction(op.activation_density, g.m * g.batch)
    k = max(1, round(g.k * active))
    kept = replace(work, gemms=(replace(g, k=k),), macs=g.m * g.batch * g.groups * g.n * k,
                   w_bytes=work.w_bytes * k / g.k)
    sparse = _dense(kept, device, context, kernel=ACT_GEMV, why_prefix=(
        f"{ACT_GEMV}: {1.0 - op.activation_density:.0%} of each row's inputs zero, {active:.0%} of the "
        f"{g.k} input channels needed by the {g.m * g.batch} row(s): the weight rows of those alone"))
    if sparse.latency_s >= dense.latency_s:
        return dense
    return replace(sparse, memory_bytes=dense.memory_bytes,  # the whole weight stays stored
                   details={**sparse.details, "active_inputs": active,
                            "activation_density_used": op.activation_density})


FUNCTION_KINDS = ("elementwise", "softmax", "norm")


def aten_function(aten: str) -> str:
    """The function an aten op name evaluates ('aten.gelu.default' -> 'gelu'), as
    `function_cycles` is keyed."""
    parts = aten.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "aten" else aten


def evaluation_s(p: CpuParams, fn: str, elements: int) -> float:
    """Seconds the cores spend evaluating function `fn` over `elements` (0 without a figure)."""
    return elements * p.function_cycles.get(fn, 0.0) / (p.clock * p.cores)


def function_time(p: CpuParams, op: Op) -> tuple[float, str]:
    """Seconds the cores spend evaluating the op's function over its output elements (0 for a
    function the device file has no figure for), and the words for its why."""
    fn = aten_function(op.aten)
    if op.kind not in FUNCTION_KINDS or fn not in p.function_cycles:
        return 0.0, ""
    elements = math.prod(op.output_shape)
    seconds = evaluation_s(p, fn, elements)
    return seconds, (f"{fn} evaluated at {p.function_cycles[fn]:.3g} cycles an element: {seconds * 1e6:.3g} us "
                     f"over {elements:,}")


def attention_exp_time(p: CpuParams, op: Op) -> tuple[float, str]:
    """A fused attention's softmax evaluates exp on every score (batch x heads x Lq x Lk) in the
    loops of its two GEMMs (ATen's CPU flash attention): seconds at the device's `exp` rate (none
    without a figure), and the words for its why."""
    if op.kind != "attention" or op.gemm is None or "exp" not in p.function_cycles:
        return 0.0, ""
    g = op.gemm
    scores = g.m * g.n * g.batch * g.groups
    seconds = evaluation_s(p, "exp", scores)
    return seconds, (f"softmax: exp on {scores:,} scores at {p.function_cycles['exp']:.3g} cycles each, "
                     f"{seconds * 1e6:.3g} us")


@register_peaks("cpu")
def cpu_peaks(device: Device, dtypes: set[str]) -> list[tuple[str, float]]:
    """Cores x lanes x FMA ports x clock (or the matrix unit) at each dtype, as `_dense` runs it."""
    p: CpuParams = device.params
    return [(f"peak {compute_dtype(p, dt)}", peak_flops(p, compute_dtype(p, dt))) for dt in sorted(dtypes or {"fp32"})]


@register_cost("cpu")
def cpu_cost(op: Op, layer: LayerSparsity | None, device: Device, context: RunContext = ALONE) -> Cost:
    """Cost of one op on a CPU device (see the module docstring for the kernels): the fastest
    sparse kernel the runtime offers for the op, or the dense kernel where none can run it (or,
    with `picks_faster_kernel`, where the dense one is faster)."""
    runtime, rt = device.runtime(context.runtime)
    return dynamic_quant.deployed_cost(op, rt, runtime,
                                       quantised=lambda o: _quantised_on_the_fly(o, layer, device, context, rt),
                                       plain=lambda o: _cpu_cost(o, layer, device, context))


def _quantised_on_the_fly(op: Op, layer: LayerSparsity | None, device: Device, context: RunContext,
                          rt: RuntimeParams) -> Cost:
    """An int8 linear of a deployed model under a runtime that quantises its input per call
    (`dynamic_quant`; on a CPU torch.ao's quantized linear, fbgemm or QNNPACK): the int8 GEMM
    writing what the scheme's GEMM writes, and each quantisation pass costed as every memory op
    here is (its bytes at the level they fit, and the call overhead when it is an op of its own)."""
    p: CpuParams = device.params
    work = dynamic_quant.gemm_output(gemm_work(op, layer), model_dtype=op.deployed_from,
                                     scheme=rt.dynamic_quant_scheme)
    cost = _cpu_cost(op, layer, device, context, work)
    if compute_dtype(p, op.dtype) != op.dtype:
        return cost  # no 8-bit GEMM on this CPU: it ran wide, nothing to quantise
    qt = dynamic_quant.quant_traffic(op, work, rt)
    per_call = 0.0 if qt.kernels.in_op else p.call_overhead
    seconds = qt.kernels.per_row * per_call
    levels: dict[str, float] = {}
    energy_j = 0.0
    for _, nbytes in qt.passes:
        r = residency(p, nbytes)
        seconds += per_call + nbytes / r.bandwidth
        levels[r.level] = levels.get(r.level, 0.0) + nbytes
        energy_j += nbytes * r.energy_per_byte
    return dynamic_quant.with_passes(cost, device_s=seconds, host_s=qt.kernels.kernels * rt.host_dispatch,
                                     bytes_by_level=levels, energy_j=energy_j, what=qt.what, note=qt.note)


def _cpu_cost(op: Op, layer: LayerSparsity | None, device: Device, context: RunContext,
              work: GemmWork | None = None) -> Cost:
    """`cpu_cost` at the op's own dtype; `work` overrides the GEMM's operands (what an on-the-fly
    quantised linear writes)."""
    p: CpuParams = device.params
    if op.gemm is None:
        nbytes = memory_op_bytes(op)
        r = residency(p, nbytes)
        level, bw, epb = r.level, r.bandwidth, r.energy_per_byte
        evaluation_s, note = function_time(p, op)
        return memory_op_cost(op, device, model=MODEL, bandwidth=bw, overhead_s=p.call_overhead,
                              energy_per_byte_j=epb, static_power_w=p.static_power, level=level,
                              compute_s=evaluation_s, compute_note=note)
    work = gemm_work(op, layer) if work is None else work
    if skippable_inputs(op, layer):
        return _activation_sparse(op, work, device, context)
    if layer is None or layer.pattern.spec.is_dense:
        return _dense(work, device, context, evaluation=attention_exp_time(p, op))
    if layer.pattern.spec.shrinks_op:
        return _dense(work, device, context, kernel="dense (channel-pruned)",
                      why_prefix=f"{channel_pruned_text(layer, work)} dense")
    # a sparse layer keeps the dense shape and operand sizes, so `work` also prices the dense kernel
    dense = _dense(work, device, context)
    runtime, offers = _offered(device, context)
    choices: list[Cost] = []
    reasons: list[str] = []
    torch_kernel = TORCH_KERNELS.get(layer.pattern.kind, "csr")
    if layer.format == "dense":
        # the plan stores this weight dense (its sparse format would be larger): torch's sparse
        # kernels have no index structure to walk (XNNPACK packs its own format from the weights)
        reasons.append(f"{layer.pattern.label} at density {layer.stats.density:.3g} is stored dense (its sparse "
                       f"format would be larger): no {torch_kernel} index to walk")
    elif op.kind == "conv" and not device.runtime(context.runtime)[1].sparse_convolutions:
        reasons.append(f"{torch_kernel}: {FRAMEWORK_SPARSE_OPS}")
    elif offers(torch_kernel):
        choices.append(_sparse(work, layer, device, dense, context))
    else:
        reasons.append(f"{runtime} does not offer {torch_kernel}")
    for spmm in SPMM_KERNELS:
        if context.kernel == spmm and not p.spmm_tile_m:
            reasons.append(f"{spmm} was forced, but this device file describes no SpMM kernel (no spmm_* figures)")
        if offers(spmm):
            problem = spmm_problem(op, layer, spmm)
            if problem is None:
                choices.append(_spmm(op, work, layer, device, dense, context, spmm))
            else:
                reasons.append(f"{spmm} {problem}")
    if not choices:
        return replace(dense, kernel="dense (fallback)", fallback=True,
                       why=f"{layer.pattern.label}: no sparse kernel for this op ({'; '.join(reasons)}), "
                           f"so the runtime runs the dense kernel; {dense.why}")
    sparse = min(choices, key=lambda c: c.latency_s)
    if p.picks_faster_kernel and sparse.latency_s > dense.latency_s:
        ratio = sparse.latency_s / dense.latency_s
        why = (f"{layer.pattern.label}: the {sparse.kernel} kernel would take {ratio:.2f}x the dense time, "
               "so the runtime runs the dense kernel")
        return replace(dense, kernel="dense (fallback)", fallback=True, why=f"{why}; {dense.why}")
    return sparse
