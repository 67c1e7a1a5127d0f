"""GPU tensor-core family: how a GPU runs dense, 2:4, unstructured, block and channel-pruned GEMMs.

The model, per GEMM (all constants from the device file):

* Dense: output tiles of the device's GEMM tile (clamped to the problem, in MMA granules) are
  spread over the SMs in waves (wave quantisation; split-K when the tiles fill less than one
  wave, as cuBLAS does); a tile takes its MACs at the per-SM tensor peak times the dense GEMM
  efficiency. Memory: each tile streams its A rows and W columns from
  L2; DRAM sees each operand once if it fits in L2, else once per band of tiles a wave covers.
  latency = max(compute, memory) + launch overhead. A batch-1 GEMV is bound by weight bytes.
* 2:4 (1:2 for tf32) on sparse tensor cores: only for an N:M mask the device's ratio covers and
  only when the sparse operand meets the kernel's alignment rules; math at the sparse peak times
  the sparse-kernel efficiency, weight bytes = compressed values + 2-bit metadata, plus (for a
  linear, run through torch's semi-structured tensors) the layout kernels torch launches around
  the sparse GEMM: padding the activations to the kernel's multiple of rows and copying the
  result out when padded or when the library does not fuse the transpose. The sparse kernels
  get no split-K (torch's default algorithm). Anything else runs dense with `fallback=True` and
  a `why` naming the rule that failed.
* Unstructured: CSR SpMM on CUDA cores at a Sputnik-like fraction of the CUDA-core peak, per
  nonzero, plus value and index traffic. Slower than dense until very high sparsity.
* Block rxc: BSR, on tensor cores (each block padded to the MMA shape, so small blocks waste
  most of the MMA) or on CUDA cores, whichever is faster.
* Channel pruning: exactly the dense cost of the smaller GEMM.
* Attention: two dense tensor-core GEMMs (QK^T and PV) with flash-style traffic (Q, K, V, O once).
* Memory ops: bytes / achievable DRAM bandwidth + launch overhead. Unknown ops: the same, flagged.

Energy: MACs x pJ/MAC (dtype) + bytes per level x pJ/B + metadata bytes + static power x latency.
Gating is not modelled on GPUs; only the sparse kernels skip work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from sparsesim.cost import register_cost
from sparsesim.cost.common import (
    EnergyInputs,
    GemmWork,
    build_cost,
    ceil_div,
    check_flags,
    check_fraction,
    check_positive,
    check_whole,
    gemm_work,
    memory_op_cost,
)
from sparsesim.cost.record import ALONE, Cost, RunContext
from sparsesim.hw.devices import Device, quantity, register_family, setting
from sparsesim.core.ir import GemmShape, Op
from sparsesim.sparsity.patterns import nm_pattern
from sparsesim.sparsity.records import LayerSparsity, Pattern

MODEL = "gpu-tiles-v1"
# split-K keeps at least this many K steps per split: CUTLASS's multistage mainloop needs a few
# steps in flight (3-4 pipeline stages) to hide its global-memory latency
SPLIT_K_MIN_STEPS = 4
# split-K partial sums are accumulated in fp32
PARTIAL_BYTES = 4
# BSR index width when block counts must be estimated: cuSPARSE uses 32-bit indices/offsets
CSR_INDEX_BYTES = 4
# Spatha runs each V x M block's 4 selected columns as 2:4 on the sparse tensor cores (VENOM §5)
VNM_HW_N, VNM_HW_M = 2, 4
# a dtype without tensor cores is costed at the first of these the device has (16-bit first:
# the usual deployment dtypes), flagged as a fallback
TENSOR_FALLBACK_DTYPES = ("fp16", "bf16", "tf32")


@register_family("gpu")
@dataclass(frozen=True)
class GpuParams:
    """Device-file fields of a GPU (SI units after loading). See accelerators/a100-sxm4-80gb.toml."""

    sm_count: float = quantity("count")
    clock: float = quantity("frequency")
    tensor_peak: Mapping[str, float] = quantity("flop_rate", per_dtype=True)
    sparse_tensor_peak: Mapping[str, float] = quantity("flop_rate", per_dtype=True)
    sparse_ratio: Mapping[str, str] = setting()
    cuda_core_peak: float = quantity("flop_rate")
    fp32_uses_tf32: bool = setting()
    fp32_conv_uses_tf32: bool = setting()
    dram_bandwidth: float = quantity("bandwidth")
    dram_efficiency: float = quantity("ratio")
    l2_bandwidth: float = quantity("bandwidth")
    l2_size: float = quantity("bytes")
    l2_resident_fraction: float = quantity("ratio")
    smem_per_sm: float = quantity("bytes")
    memory_capacity: float = quantity("bytes")
    launch_overhead: float = quantity("time")
    gemm_tile_m: float = quantity("count")
    gemm_tile_n: float = quantity("count")
    gemm_tile_k: float = quantity("count")
    mma_m: float = quantity("count")
    mma_n: float = quantity("count")
    mma_k_bytes: float = quantity("bytes")
    sparse_row_multiple: Mapping[str, float] = quantity("count", per_dtype=True)
    sparse_col_multiple: Mapping[str, float] = quantity("count", per_dtype=True)
    dense_pad_multiple: Mapping[str, float] = quantity("count", per_dtype=True)
    sparse_fused_transpose: bool = setting()
    dense_gemm_efficiency: float = quantity("ratio")
    sparse_gemm_efficiency: float = quantity("ratio")
    csr_efficiency: float = quantity("ratio")
    bsr_efficiency: float = quantity("ratio")
    mac_energy: Mapping[str, float] = quantity("energy", per_dtype=True)
    dram_energy: float = quantity("energy_per_byte")
    l2_energy: float = quantity("energy_per_byte")
    smem_energy: float = quantity("energy_per_byte")
    static_power: float = quantity("power")
    tdp: float = quantity("power")
    # V:N:M through Spatha (VENOM): per dtype it runs, its efficiency on the sparse tensor
    # cores; a device without the table has no V:N:M kernel (runs V:N:M masks as N:M or dense)
    vnm_gemm_efficiency: Mapping[str, float] = quantity("ratio", per_dtype=True, default={})

    def validate(self) -> str | None:
        """Cross-field checks; a message naming the field, or None. Never raises.
        (The loader has already rejected negative and non-finite quantities.)"""
        problem = check_flags(self, "fp32_uses_tf32", "fp32_conv_uses_tf32", "sparse_fused_transpose")
        if problem:
            return problem
        if not isinstance(self.sparse_ratio, dict):
            return "field 'sparse_ratio': value must be a table of dtype = \"N:M\""
        for dt, ratio in self.sparse_ratio.items():
            if _parse_ratio(ratio) is None:
                return f"field 'sparse_ratio.{dt}': {ratio!r} is not an N:M ratio like \"2:4\""
            if dt not in self.sparse_tensor_peak:
                return f"field 'sparse_ratio.{dt}': no sparse_tensor_peak.{dt}"
            for table in ("sparse_row_multiple", "sparse_col_multiple", "dense_pad_multiple"):
                if dt not in getattr(self, table):
                    return f"field '{table}': missing dtype {dt!r} (sparse_ratio lists it)"
        for dt in self.sparse_tensor_peak:
            if dt not in self.sparse_ratio:
                return f"field 'sparse_ratio': missing dtype {dt!r} (sparse_tensor_peak lists it)"
            if dt not in self.tensor_peak:
                return f"field 'tensor_peak': missing dtype {dt!r} (sparse_tensor_peak lists it)"
        for name in ("fp32_uses_tf32", "fp32_conv_uses_tf32"):
            if getattr(self, name) and "tf32" not in self.tensor_peak:
                return f"field '{name}': true, but there is no tensor_peak.tf32"
        for dt in list(self.tensor_peak) + ["fp32"]:
            if dt not in self.mac_energy:
                return f"field 'mac_energy': missing dtype {dt!r}"
        return (check_fraction(self, "dram_efficiency", "l2_resident_fraction", "dense_gemm_efficiency",
                               "sparse_gemm_efficiency", "csr_efficiency", "bsr_efficiency")
                or check_whole(self, "sm_count", "gemm_tile_m", "gemm_tile_n", "gemm_tile_k", "mma_m", "mma_n",
                               "mma_k_bytes", "sparse_row_multiple", "sparse_col_multiple", "dense_pad_multiple")
                or check_positive(self, "tensor_peak", "sparse_tensor_peak", "cuda_core_peak", "dram_bandwidth",
                                  "l2_bandwidth", "clock")
                or _check_vnm(self))


def _check_vnm(p: GpuParams) -> str | None:
    """Spatha runs V:N:M as 2:4 on the sparse tensor cores: each dtype it lists needs them."""
    for dt, eff in p.vnm_gemm_efficiency.items():
        if _parse_ratio(p.sparse_ratio.get(dt)) != (VNM_HW_N, VNM_HW_M):
            return (f"field 'vnm_gemm_efficiency.{dt}': Spatha runs V:N:M as {VNM_HW_N}:{VNM_HW_M} on sparse "
                    f"tensor cores, but sparse_ratio.{dt} is {p.sparse_ratio.get(dt)!r}")
        if not 0 < eff <= 1:
            return f"field 'vnm_gemm_efficiency.{dt}': must be in (0, 1], got {eff:g}"
    return None


def _parse_ratio(text: Any) -> tuple[int, int] | None:
    if not isinstance(text, str):
        return None
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        return None
    n, m = int(parts[0]), int(parts[1])
    return (n, m) if 0 < n < m else None


# ----------------------------------------------------------------------------- compute units

@dataclass(frozen=True)
class _Unit:
    """Where a dtype's GEMM runs: tensor cores or CUDA cores, at which dtype's rate and energy."""

    dtype: str              # the dtype whose peak and MAC energy apply (fp32 may run as tf32)
    peak: float             # dense FLOP/s
    tensor_cores: bool
    note: str = ""          # non-empty when the op's dtype had to be mapped


def compute_unit(p: GpuParams, dtype: str, conv: bool = False) -> _Unit:
    """Tensor cores when the device lists the dtype (fp32 via tf32 only if the device says so,
    separately for matmuls and convolutions: PyTorch's defaults differ), else fp32 CUDA cores for
    fp32/fp64, else the widest supported tensor dtype as a flagged fallback."""
    if dtype == "fp32":
        if p.fp32_conv_uses_tf32 if conv else p.fp32_uses_tf32:
            return _Unit("tf32", p.tensor_peak["tf32"], True)
        return _Unit("fp32", p.cuda_core_peak, False)
    if dtype in p.tensor_peak:
        return _Unit(dtype, p.tensor_peak[dtype], True)
    if dtype == "fp64":
        return _Unit("fp32", p.cuda_core_peak, False, "fp64 costed at the fp32 CUDA-core rate")
    for alt in TENSOR_FALLBACK_DTYPES:
        if alt in p.tensor_peak:
            return _Unit(alt, p.tensor_peak[alt], True, f"no {dtype} tensor cores on this GPU: costed as {alt}")
    return _Unit("fp32", p.cuda_core_peak, False, f"no {dtype} support: costed on fp32 CUDA cores")


def _energy(p: GpuParams, macs: float, dtype: str, dram: float, l2: float, *, metadata: float = 0.0) -> EnergyInputs:
    """The GPU's action counts: MACs at `dtype`'s energy, DRAM bytes (metadata apart, also read
    from DRAM), and L2 bytes, each of which also crosses shared memory on its way to the cores."""
    return EnergyInputs(
        macs=macs, mac_energy_j=p.mac_energy[dtype],
        bytes_by_level={"dram": dram, "l2": l2, "smem": l2},
        energy_per_byte={"dram": p.dram_energy, "l2": p.l2_energy, "smem": p.smem_energy},
        static_power_w=p.static_power, metadata_bytes=metadata, metadata_energy_per_byte=p.dram_energy,
    )


# ----------------------------------------------------------------------------- tiling

@dataclass(frozen=True)
class Tiling:
    """How a GEMM's output is cut into threadblock tiles and scheduled over the SMs."""

    tile_m: int
    tile_n: int
    k_padded: int
    tiles_m: int
    tiles_n: int
    tiles: int      # threadblocks: output tiles x split_k
    waves: int
    wave_m: int
    wave_n: int
    sms: int
    split_k: int = 1

    @property
    def k_per_tile(self) -> int:
        return ceil_div(self.k_padded, self.split_k)

    @property
    def wave_efficiency(self) -> float:
        """Useful fraction of the SM-time the waves occupy (1.0 = no quantisation loss)."""
        return self.tiles / (self.waves * self.sms) if self.waves else 1.0


def tiling(p: GpuParams, g: GemmShape, dtype_bytes: float, *, split_k: bool = False) -> Tiling:
    """Tile the M x N output: the device tile, shrunk for small dims to whole MMA granules
    (so a GEMV uses a thin tile rather than a mostly-empty 128-row one); waves over the SMs.
    With `split_k` (cuBLAS does it for dense GEMMs that fill less than one wave) K is split in
    powers of two while the threadblocks still fit in one wave and each split keeps
    SPLIT_K_MIN_STEPS steps of K.

    A wave is taken to cover a near-square patch of tiles (the threadblock swizzle CUTLASS and
    cuBLAS use); that patch sets how often an operand larger than L2 is re-read from DRAM.
    """
    sms = int(p.sm_count)
    k_step = max(int(p.gemm_tile_k), mma_k(p, dtype_bytes))
    tm = min(int(p.gemm_tile_m), _round_up(max(g.m, 1), int(p.mma_m)))
    tn = min(int(p.gemm_tile_n), _round_up(max(g.n, 1), int(p.mma_n)))
    kp = _round_up(max(g.k, 1), k_step) if g.k > 0 else 0
    tiles_m, tiles_n = ceil_div(max(g.m, 1), tm), ceil_div(max(g.n, 1), tn)
    out_tiles = tiles_m * tiles_n * g.batch * g.groups
    s = 1
    while split_k and out_tiles * s * 2 <= sms and kp // (k_step * s * 2) >= SPLIT_K_MIN_STEPS:
        s *= 2
    tiles = out_tiles * s
    waves = ceil_div(tiles, sms)
    wave_m = min(tiles_m, max(1, math.isqrt(sms)))
    wave_n = min(tiles_n, max(1, sms // wave_m))
    return Tiling(tm, tn, kp, tiles_m, tiles_n, tiles, waves, wave_m, wave_n, sms, s)


def _round_up(x: int, mult: int) -> int:
    return ceil_div(x, mult) * mult


def mma_k(p: GpuParams, dtype_bytes: float) -> int:
    """K elements one MMA instruction consumes at this element width (at least 1)."""
    return max(1, int(p.mma_k_bytes // dtype_bytes))


@dataclass(frozen=True)
class _GemmTime:
    compute_s: float
    dram_bytes: float
    l2_bytes: float
    metadata_dram_bytes: float
    tiling: Tiling


def _gemm_time(
    p: GpuParams,
    g: GemmShape,
    dtype_bytes: float,
    *,
    tile_rate: float,
    a_bytes: float,
    w_bytes: float,
    c_bytes: float,
    w_meta_bytes: float = 0.0,
    split_k: bool = False,
) -> _GemmTime:
    """Compute time (waves x per-tile time at `tile_rate` FLOP/s per SM) and traffic of a GEMM.

    `w_bytes` is the stored second operand (compressed for sparse kernels). Each output tile
    reads its band of A (K x tile_m) and W (K x tile_n) through L2; DRAM reads an operand once
    if it fits in `l2_resident_fraction` of L2, else once per wave-band that needs it. Split-K partial sums
    (fp32) are written and read back through L2. `dram_bytes` leaves out the weight's metadata,
    which `metadata_dram_bytes` gives (read as often as the values).
    """
    t = tiling(p, g, dtype_bytes, split_k=split_k)
    per_tile = 2.0 * t.tile_m * t.tile_n * t.k_per_tile / tile_rate if tile_rate > 0 else math.inf
    compute = t.waves * per_tile if g.macs > 0 else 0.0
    a_reads = _dram_reads(p, a_bytes, t.tiles_n, t.wave_n)
    w_total = w_bytes + w_meta_bytes
    w_reads = _dram_reads(p, w_total, t.tiles_m, t.wave_m)
    dram = a_bytes * a_reads + w_bytes * w_reads + c_bytes
    l2 = a_bytes * t.tiles_n + w_total * t.tiles_m + c_bytes
    if t.split_k > 1:
        l2 += 2 * (t.split_k - 1) * g.m * g.n * g.batch * g.groups * PARTIAL_BYTES
    return _GemmTime(compute, dram, l2, w_meta_bytes * w_reads, t)


def _dram_reads(p: GpuParams, nbytes: float, tiles: int, tiles_per_wave: int) -> int:
    """Times an operand is read from DRAM: once if it fits the resident share of L2, else once
    per band of `tiles_per_wave` tiles (of `tiles` along the other output dimension) a wave covers."""
    return 1 if nbytes <= p.l2_size * p.l2_resident_fraction else ceil_div(tiles, tiles_per_wave)


def _dram_bw(p: GpuParams) -> float:
    """The DRAM bandwidth kernels reach (peak x efficiency)."""
    return p.dram_bandwidth * p.dram_efficiency


def _memory_s(p: GpuParams, dram: float, l2: float) -> float:
    return max(dram / _dram_bw(p), l2 / p.l2_bandwidth)


# ----------------------------------------------------------------------------- kernels

def _dense(op: Op, work: GemmWork, device: Device, *, why: str = "", fallback: bool = False,
           kernel: str = "dense") -> Cost:
    """Dense tensor-core (or CUDA-core) GEMM(s) of `work`; ignores any zeros in the weight."""
    p: GpuParams = device.params
    unit = compute_unit(p, work.dtype, conv=op.kind == "conv")
    eff = p.dense_gemm_efficiency
    tile_rate = unit.peak / p.sm_count * eff
    if op.kind == "attention":
        # flash-style: Q, K, V read once and O written once; the two GEMMs run back to back
        times = [_gemm_time(p, g, work.dtype_bytes, tile_rate=tile_rate, a_bytes=0, w_bytes=0, c_bytes=0)
                 for g in work.gemms]
        compute = sum(t.compute_s for t in times)
        dram = l2 = work.dense_bytes
        tl = times[0].tiling
    else:
        g = work.gemms[0]
        gt = _gemm_time(p, g, work.dtype_bytes, tile_rate=tile_rate, a_bytes=work.a_bytes,
                        w_bytes=work.w_bytes, c_bytes=work.c_bytes, split_k=True)
        compute, dram, l2, tl = gt.compute_s, gt.dram_bytes, gt.l2_bytes, gt.tiling
    memory = _memory_s(p, dram, l2)
    parts = [why] if why else []
    if unit.note:
        parts.append(unit.note)
    shape = " + ".join(f"{g.m}x{g.n}x{g.k}" + (f" x{g.batch * g.groups}" if g.batch * g.groups > 1 else "")
                       for g in work.gemms)
    where = "tensor cores" if unit.tensor_cores else "CUDA cores"
    parts.append(_describe(f"dense {shape} {unit.dtype} on {where}", compute, memory, p.launch_overhead, tl))
    return build_cost(
        device=device, model=MODEL, compute_s=compute, memory_s=memory, overhead_s=p.launch_overhead,
        energy=_energy(p, float(work.macs), unit.dtype, dram, l2),
        kernel=kernel, why="; ".join(parts), flops_executed=float(work.flops), peak_flops=unit.peak,
        memory_bytes=work.w_bytes if op.weight is not None else 0.0,
        fallback=fallback or bool(unit.note),
        details={"waves": tl.waves, "tiles": tl.tiles, "wave_efficiency": tl.wave_efficiency,
                 "split_k": tl.split_k},
    )


def _describe(what: str, compute: float, memory: float, overhead: float, tl: Tiling) -> str:
    lead = "memory" if memory > compute else "compute"
    if overhead > max(compute, memory):
        lead = "launch overhead"
    sk = f" x split-K {tl.split_k}" if tl.split_k > 1 else ""
    q = f", {tl.tiles // tl.split_k} tiles{sk} in {tl.waves} wave(s) ({tl.wave_efficiency:.0%} full)" if tl.tiles else ""
    return f"{what}: {lead}-bound (compute {compute * 1e6:.3g} us, memory {memory * 1e6:.3g} us{q})"


def nm_support(p: GpuParams, dtype: str, pattern: Pattern, layer: LayerSparsity,
               conv: bool = False) -> tuple[str | None, str]:
    """(sparse-core dtype, "") when the sparse tensor cores can run this N:M mask, else (None, reason)."""
    unit = compute_unit(p, dtype, conv)
    sdt = unit.dtype
    if not unit.tensor_cores:
        flag = "fp32_conv_uses_tf32" if conv else "fp32_uses_tf32"
        return None, (f"{dtype} runs on CUDA cores on this device ({flag} = false): no sparse tensor cores; "
                      "trace the model in fp16/bf16 to use them")
    ratio = _parse_ratio(p.sparse_ratio.get(sdt)) if sdt in p.sparse_tensor_peak else None
    if ratio is None:
        return None, f"no sparse tensor-core support for {sdt} on this GPU"
    sn, sm = ratio
    n, m = pattern.n, pattern.m
    # a mask fits sn:sm if every group of sm along K keeps <= sn: measured, or implied by n:m
    structural = (m == sm and n <= sn) or (sm % m == 0 and n * sm // m <= sn)
    if not (layer.stats.conforms_nm(sn, sm) or structural):
        return None, f"{n}:{m} mask does not fit the {sn}:{sm} sparse tensor cores support for {sdt}"
    return sdt, ""


def alignment_problem(p: GpuParams, sdt: str, g: GemmShape) -> str:
    """'' when the sparse operand (N x K weight) meets the kernel's multiples, else the broken rule."""
    rm, cm = int(p.sparse_row_multiple[sdt]), int(p.sparse_col_multiple[sdt])
    bad = []
    if g.n < rm or g.n % rm:
        bad.append(f"N={g.n} must be a multiple of {rm}")
    if g.k < cm or g.k % cm:
        bad.append(f"K={g.k} must be a multiple of {cm}")
    return "; ".join(bad)


def _nm_sparse(op: Op, work: GemmWork, layer: LayerSparsity, device: Device, sdt: str,
               note: str) -> Cost:
    """2:4 (1:2 tf32) GEMM on sparse tensor cores, with the library's layout kernels."""
    p: GpuParams = device.params
    g = work.gemms[0]
    # torch's semi-structured linear pads and copies around the GEMM; a 2:4 convolution
    # (TensorRT/cuDNN implicit GEMM) reads its input in place and writes its output directly
    torch_linear = op.kind == "linear"
    pad = int(p.dense_pad_multiple[sdt]) if torch_linear else 1
    m_pad = _round_up(g.m, pad)
    gp = GemmShape(m=m_pad, n=g.n, k=g.k, batch=g.batch, groups=g.groups)
    a_pad = work.a_bytes * m_pad / g.m if g.m else 0.0
    c_pad = work.c_bytes * m_pad / g.m if g.m else 0.0
    ratio = _parse_ratio(p.sparse_ratio[sdt])
    assert ratio is not None, "nm_support and validate() accept only parseable ratios"
    sn, sm = ratio
    hw = layer.pattern if (layer.pattern.n, layer.pattern.m) == (sn, sm) else nm_pattern(sn, sm)
    values, meta = _stored(layer, "nm", work, hw)
    tile_rate = p.sparse_tensor_peak[sdt] / p.sm_count * p.sparse_gemm_efficiency
    gt = _gemm_time(p, gp, work.dtype_bytes, tile_rate=tile_rate, a_bytes=a_pad, w_bytes=values,
                    c_bytes=c_pad, w_meta_bytes=meta)
    # layout kernels torch launches around the sparse GEMM (torch/sparse/semi_structured.py):
    # pad the dense operand to the kernel's multiple of rows; copy the result out when it was
    # padded (narrow) or when the library does not fuse the result transpose into the GEMM
    extra_kernels, extra_bytes, extra_why = 0, 0.0, []
    if m_pad != g.m:
        extra_kernels += 1
        extra_bytes += work.a_bytes + a_pad
        extra_why.append(f"M={g.m} padded to {m_pad}")
    if m_pad != g.m or (torch_linear and not p.sparse_fused_transpose):
        extra_kernels += 1
        extra_bytes += c_pad + work.c_bytes
        extra_why.append("result copied out" + ("" if p.sparse_fused_transpose else " (transpose not fused)"))
    # the 2-bit metadata streams from DRAM with the values (`gt.dram_bytes` leaves it out)
    memory = _memory_s(p, gt.dram_bytes + gt.metadata_dram_bytes, gt.l2_bytes)
    extra_s = extra_kernels * p.launch_overhead + extra_bytes / _dram_bw(p)
    overhead = p.launch_overhead + extra_s
    dram = gt.dram_bytes + extra_bytes
    parts = [note] if note else []
    parts.append(_describe(f"{sn}:{sm} sparse tensor cores {gp.m}x{gp.n}x{gp.k} {sdt} (values {values / 1e6:.3g} MB"
                           f" + metadata {meta / 1e6:.3g} MB)", gt.compute_s, memory, overhead, gt.tiling))
    if extra_why:
        parts.append("layout kernels: " + ", ".join(extra_why) + f" (+{extra_s * 1e6:.3g} us)")
    macs = gp.macs * sn / sm
    return build_cost(
        device=device, model=MODEL, compute_s=gt.compute_s, memory_s=memory, overhead_s=overhead,
        energy=_energy(p, macs, sdt, dram, gt.l2_bytes, metadata=gt.metadata_dram_bytes),
        kernel=f"{sn}:{sm} sparse tensor core", why="; ".join(parts), flops_executed=2.0 * macs,
        peak_flops=p.sparse_tensor_peak[sdt] * sn / sm, memory_bytes=values + meta, metadata_bytes=meta,
        fallback=bool(note),
        details={"waves": gt.tiling.waves, "tiles": gt.tiling.tiles, "layout_s": extra_s, "m_padded": m_pad},
    )


def _stored(layer: LayerSparsity, fmt: str, work: GemmWork, pattern: Pattern | None = None) -> tuple[float, float]:
    """(values, metadata) bytes of the weight as the kernel stores it in `fmt` (for `pattern`,
    default the layer's); the layer's own figures when it is already stored that way."""
    pattern = pattern or layer.pattern
    if layer.format == fmt and pattern == layer.pattern:
        return float(layer.value_bytes), float(layer.metadata_bytes)
    from sparsesim.sparsity.formats import format_bytes

    size = format_bytes(fmt, layer.stats, value_bytes=work.dtype_bytes, pattern=pattern)
    return float(size.values), float(size.metadata)


def _sparse_traffic(p: GpuParams, g: GemmShape, work: GemmWork, values: float, meta: float) -> tuple[float, float, float]:
    """(DRAM bytes without metadata, L2 bytes, memory seconds) of a CSR/BSR SpMM: the activations
    are read once per band of output columns a wave covers, like the dense kernel (`_gemm_time`);
    the sparse weight (values + metadata) streams once from DRAM and once per tile row via L2."""
    t = tiling(p, g, work.dtype_bytes)
    a_reads = _dram_reads(p, work.a_bytes, t.tiles_n, t.wave_n)
    dram = work.a_bytes * a_reads + values + work.c_bytes
    l2 = work.a_bytes * t.tiles_n + (values + meta) * t.tiles_m + work.c_bytes
    return dram, l2, _memory_s(p, dram + meta, l2)


def _csr(op: Op, work: GemmWork, layer: LayerSparsity, device: Device, note: str = "",
         dense_lat: float | None = None) -> Cost:
    """CSR SpMM on CUDA cores (Sputnik-like): time per nonzero at a fraction of the CUDA-core peak.
    `dense_lat` (for the comparison in the why) is the dense kernel's latency when the caller has it."""
    p: GpuParams = device.params
    g = work.gemms[0]
    st = layer.stats
    nnz = st.nnz  # the whole (N * groups) x K weight; every activation row meets every nonzero
    macs = float(g.m) * g.batch * nnz
    rate = p.cuda_core_peak * p.csr_efficiency
    compute = 2.0 * macs / rate
    values, meta = _stored(layer, "csr", work)
    # activations: Sputnik stages the rows of A a CTA needs (traffic as in `_sparse_traffic`)
    dram, l2, memory = _sparse_traffic(p, g, work, values, meta)
    if dense_lat is None:
        dense_lat = _dense(op, work, device).latency_s
    lat_est = max(compute, memory) + p.launch_overhead
    verdict = (f"{dense_lat / lat_est:.2f}x dense" if lat_est > 0 else "")
    parts = [note] if note else []
    parts.append(f"CSR SpMM on CUDA cores at {st.density:.3g} density: {nnz} nonzeros at "
                 f"{p.csr_efficiency:.0%} of the {p.cuda_core_peak / 1e12:.3g} TFLOP/s CUDA-core peak "
                 f"(compute {compute * 1e6:.3g} us, memory {memory * 1e6:.3g} us), {verdict}")
    if dense_lat < lat_est:
        parts.append("dense tensor cores would be faster; CSR pays only at very high sparsity")
    return build_cost(
        device=device, model=MODEL, compute_s=compute, memory_s=memory, overhead_s=p.launch_overhead,
        energy=_energy(p, macs, "fp32", dram, l2, metadata=meta),
        kernel="csr", why="; ".join(parts), flops_executed=2.0 * macs, peak_flops=p.cuda_core_peak,
        memory_bytes=values + meta, metadata_bytes=meta, fallback=bool(note),
        details={"dense_latency_s": dense_lat, "nnz": float(nnz)},
    )


def _bsr(op: Op, work: GemmWork, layer: LayerSparsity, device: Device) -> Cost:
    """BSR SpMM: nonzero r x c blocks on tensor cores (padded to the MMA shape) or CUDA cores."""
    p: GpuParams = device.params
    g = work.gemms[0]
    st = layer.stats
    r, c = layer.pattern.block
    measured = st.nonzero_blocks(r, c)
    total_blocks = ceil_div(st.rows, r) * ceil_div(st.cols, c)
    # not measured for this block size: the pattern's density of whole blocks
    nb = measured if measured is not None else min(total_blocks, math.ceil(st.density * total_blocks))
    unit = compute_unit(p, work.dtype, conv=op.kind == "conv")
    if measured is not None:
        values, meta = _stored(layer, "bsr", work)
    else:  # the same BSR layout as formats.format_bytes, from the estimated block count
        values = nb * r * c * work.dtype_bytes
        meta = (nb + ceil_div(st.rows, r) + 1) * CSR_INDEX_BYTES
    reps = g.batch  # a shared weight meets every batch's activation rows
    # tensor cores: a block is padded to whole MMA tiles (rows -> mma_m, K -> mma_k)
    r_pad, c_pad = _round_up(r, int(p.mma_m)), _round_up(c, mma_k(p, work.dtype_bytes))
    tc_macs = float(g.m) * nb * r_pad * c_pad * reps
    tc_s = 2.0 * tc_macs / (unit.peak * p.bsr_efficiency) if unit.tensor_cores else math.inf
    exact_macs = float(g.m) * nb * r * c * reps
    cc_s = 2.0 * exact_macs / (p.cuda_core_peak * p.csr_efficiency)
    on_tc = tc_s <= cc_s
    compute = tc_s if on_tc else cc_s
    dram, l2, memory = _sparse_traffic(p, g, work, values, meta)
    where = (f"tensor cores (blocks padded {r}x{c} -> {r_pad}x{c_pad}, {r * c / (r_pad * c_pad):.0%} of each MMA used)"
             if on_tc else "CUDA cores (blocks too small for tensor cores)")
    why = (f"BSR {r}x{c}: {nb} of {total_blocks} blocks nonzero ({nb / max(total_blocks, 1):.2g}) on {where}: "
           f"compute {compute * 1e6:.3g} us, memory {memory * 1e6:.3g} us")
    return build_cost(
        device=device, model=MODEL, compute_s=compute, memory_s=memory, overhead_s=p.launch_overhead,
        energy=_energy(p, tc_macs if on_tc else exact_macs, unit.dtype if on_tc else "fp32", dram, l2,
                       metadata=meta),
        kernel=f"bsr {r}x{c}" + (" tensor core" if on_tc else " cuda core"), why=why,
        flops_executed=2.0 * exact_macs, peak_flops=unit.peak if on_tc else p.cuda_core_peak,
        memory_bytes=values + meta, metadata_bytes=meta,
        details={"nonzero_blocks": float(nb), "tensor_core_s": tc_s, "cuda_core_s": cc_s},
    )


def _nm(op: Op, work: GemmWork, layer: LayerSparsity, device: Device) -> Cost:
    """N:M: sparse tensor cores when the ratio and alignment rules allow, else the best fallback."""
    p: GpuParams = device.params
    pat = layer.pattern
    sdt, reason = nm_support(p, work.dtype, pat, layer, conv=op.kind == "conv")
    if sdt is not None:
        if op.kind not in ("linear", "conv") or op.weight is None:
            reason = f"{pat.label} on sparse tensor cores needs a weight operand ({op.kind} has none)"
        else:
            bad = alignment_problem(p, sdt, work.gemms[0])
            if not bad:
                ratio = p.sparse_ratio[sdt]
                note = "" if ratio == f"{pat.n}:{pat.m}" else f"{pat.label} runs as {ratio} (the only N:M ratio the sparse tensor cores support for {sdt}); its extra zeros are stored"
                return _nm_sparse(op, work, layer, device, sdt, note)
            return _dense(op, work, device, fallback=True,
                          why=f"{pat.label} not run on sparse tensor cores: {bad} ({sdt} sparse-kernel alignment); ran dense")
    # the mask cannot use the sparse tensor cores: the faster of dense and CSR
    dense = _dense(op, work, device, fallback=True, why=f"{pat.label}: {reason}; ran dense")
    if op.weight is None:
        return dense
    csr = _csr(op, work, layer, device, note=f"{pat.label}: {reason}; ran as unstructured CSR",
               dense_lat=dense.latency_s)
    return csr if csr.latency_s < dense.latency_s else dense


def vnm_support(p: GpuParams, dtype: str, op: Op, layer: LayerSparsity, g: GemmShape) -> str:
    """'' when Spatha can run this V:N:M layer, else the rule that fails (one line)."""
    pat = layer.pattern
    v, m = pat.block
    if op.kind not in ("linear", "conv") or op.weight is None:
        return f"V:N:M needs a weight operand ({op.kind} has none)"
    unit = compute_unit(p, dtype, conv=op.kind == "conv")
    if not unit.tensor_cores or unit.dtype not in p.vnm_gemm_efficiency:
        have = ", ".join(sorted(p.vnm_gemm_efficiency)) or "none on this device"
        return f"no Spatha V:N:M kernel for {dtype} (vnm_gemm_efficiency lists {have})"
    bad = []
    if g.n % v:
        bad.append(f"N={g.n} weight rows are not whole {v}-row blocks")
    if g.k % m:
        bad.append(f"K={g.k} is not whole groups of {m}")
    return "; ".join(bad)


def _spatha(op: Op, work: GemmWork, layer: LayerSparsity, device: Device) -> Cost:
    """V:N:M GEMM through Spatha: each V x M block's 4 selected activation columns are gathered
    and the block runs as 2:4 on the sparse tensor cores, so the GEMM's K shrinks to K * 4 / M
    (VENOM, Castro et al. SC'23, arXiv 2310.02065, §5). The whole activation still crosses DRAM
    once (different row blocks select different columns); L2 sees each tile's gathered band."""
    p: GpuParams = device.params
    g = work.gemms[0]
    pat = layer.pattern
    sdt = compute_unit(p, work.dtype, conv=op.kind == "conv").dtype
    k_sel = ceil_div(g.k * VNM_HW_M, pat.m)
    gs = GemmShape(m=g.m, n=g.n, k=k_sel, batch=g.batch, groups=g.groups)
    values, meta = _stored(layer, "vnm", work)
    a_sel = work.a_bytes * k_sel / g.k if g.k else 0.0
    eff = p.vnm_gemm_efficiency[sdt]
    tile_rate = p.sparse_tensor_peak[sdt] / p.sm_count * eff
    gt = _gemm_time(p, gs, work.dtype_bytes, tile_rate=tile_rate, a_bytes=a_sel, w_bytes=values,
                    c_bytes=work.c_bytes, w_meta_bytes=meta)
    # every activation column is selected by some row block: A crosses DRAM whole at least once
    dram = gt.dram_bytes + max(0.0, work.a_bytes - a_sel)
    memory = _memory_s(p, dram + gt.metadata_dram_bytes, gt.l2_bytes)
    macs = gs.macs * VNM_HW_N / VNM_HW_M
    why = _describe(f"{pat.label} via Spatha on {VNM_HW_N}:{VNM_HW_M} sparse tensor cores: K={g.k} -> {k_sel} "
                    f"selected columns, {gs.m}x{gs.n}x{k_sel} {sdt} at {eff:.0%} (values {values / 1e6:.3g} MB + "
                    f"metadata {meta / 1e6:.3g} MB)", gt.compute_s, memory, p.launch_overhead, gt.tiling)
    return build_cost(
        device=device, model=MODEL, compute_s=gt.compute_s, memory_s=memory, overhead_s=p.launch_overhead,
        energy=_energy(p, macs, sdt, dram, gt.l2_bytes, metadata=gt.metadata_dram_bytes),
        kernel=f"{pat.label} Spatha sparse tensor core", why=why, flops_executed=2.0 * macs,
        peak_flops=p.sparse_tensor_peak[sdt] * VNM_HW_N / VNM_HW_M, memory_bytes=values + meta,
        metadata_bytes=meta, details={"waves": gt.tiling.waves, "tiles": gt.tiling.tiles, "k_selected": k_sel},
    )


def _vnm(op: Op, work: GemmWork, layer: LayerSparsity, device: Device) -> Cost:
    """V:N:M: Spatha when the device lists it and the shape is whole blocks; otherwise the mask
    runs as what it also is, an N:M mask (2:4 sparse tensor cores when it fits, else dense/CSR)."""
    p: GpuParams = device.params
    reason = vnm_support(p, work.dtype, op, layer, work.gemms[0])
    if not reason:
        return _spatha(op, work, layer, device)
    as_nm = _nm(op, work, layer, device)
    return replace(as_nm, fallback=True, why=f"{layer.pattern.label} not run by Spatha: {reason}; as N:M: {as_nm.why}")


def _unstructured(op: Op, work: GemmWork, layer: LayerSparsity, device: Device) -> Cost:
    """Unstructured: CSR SpMM when the weight is stored as CSR, else dense."""
    if op.weight is None:
        return _dense(op, work, device, fallback=True, why="unstructured sparsity on a weightless op: ran dense")
    if layer.format == "dense":
        return _dense(op, work, device, fallback=True,
                      why=f"unstructured at density {layer.stats.density:.4g} is stored dense "
                          "(CSR would be larger): ran dense")
    return _csr(op, work, layer, device)


def _block(op: Op, work: GemmWork, layer: LayerSparsity, device: Device) -> Cost:
    if op.weight is None:
        return _dense(op, work, device, fallback=True, why="block sparsity on a weightless op: ran dense")
    return _bsr(op, work, layer, device)


# the GPU's rule per sparse pattern kind (dense and op-shrinking kinds run the dense kernel)
SPARSE_KERNELS: dict[str, Callable[[Op, GemmWork, LayerSparsity, Device], Cost]] = {
    "nm": _nm,
    "vnm": _vnm,
    "unstructured": _unstructured,
    "block": _block,
}


# ----------------------------------------------------------------------------- entry point

@register_cost("gpu")
def gpu_cost(op: Op, layer: LayerSparsity | None, device: Device, context: RunContext = ALONE) -> Cost:
    """Cost of one op on a GPU (see the module docstring for the model).

    Every op fetches its weights from off-chip memory once, whatever the run `context`.
    """
    p: GpuParams = device.params
    if not op.is_matmul or op.gemm is None:
        return memory_op_cost(op, device, model=MODEL, bandwidth=_dram_bw(p), overhead_s=p.launch_overhead,
                              energy_per_byte_j=p.dram_energy, static_power_w=p.static_power)
    work = gemm_work(op, layer)
    if layer is None or layer.pattern.spec.is_dense:
        return _dense(op, work, device)
    if layer.pattern.spec.shrinks_op:
        g0, g1 = op.gemm, work.gemms[0]
        return _dense(op, work, device, kernel="dense (channel-pruned)",
                      why=f"channel pruning: {g0.n}x{g0.k} weight -> {g1.n}x{g1.k}, a smaller dense GEMM")
    kernel = SPARSE_KERNELS.get(layer.pattern.kind)
    if kernel is None:
        return _dense(op, work, device, fallback=True,
                      why=f"{layer.pattern.label}: no GPU kernel for {layer.pattern.kind} patterns: ran dense")
    return kernel(op, work, layer, device)
