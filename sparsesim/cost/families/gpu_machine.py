"""The GPU as a machine: device-file fields, compute units, GEMM tiling over the SMs, traffic.

What every GPU kernel model (`gpu_kernels`) shares: where a dtype's arithmetic runs (tensor
cores or CUDA cores), how a GEMM's output is tiled and scheduled in waves (split-K where the
kernel may), how often each operand crosses L2 and DRAM (Hopper's thread-block clusters load a
tile once per cluster through TMA multicast), and the energy of those actions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sparsesim.core.ir import GemmShape, Op
from sparsesim.cost.common import (
    EnergyInputs,
    GemmWork,
    ceil_div,
    check_flags,
    check_fraction,
    check_positive,
    check_whole,
)
from sparsesim.hw.devices import quantity, register_family, setting
from sparsesim.sparsity.records import LayerSparsity, Pattern

MODEL = "gpu-tiles-v1"
# split-K keeps at least this many K steps per split: CUTLASS's multistage mainloop needs a few
# steps in flight (3-4 pipeline stages) to hide its global-memory latency
SPLIT_K_MIN_STEPS = 4
# split-K partial sums are accumulated in fp32
PARTIAL_BYTES = 4
# BSR index width when block counts must be estimated: cuSPARSE uses 32-bit indices/offsets
CSR_INDEX_BYTES = 4
# the arithmetic precisions a GPU kernel reports in Cost.details["precision"] (an index here), so
# a check can see that a sparse kernel computes at the precision of its dense baseline
PRECISIONS = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")


def precision_id(dtype: str) -> float:
    return float(PRECISIONS.index(dtype)) if dtype in PRECISIONS else -1.0


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
    # a load's round trip to DRAM, and the thread blocks an SM holds at once: with the bytes each
    # warp keeps in flight they bound what a kernel with few warps can stream (Little's law)
    dram_latency: float = quantity("time")
    max_ctas_per_sm: float = quantity("count")
    max_warps_per_sm: float = quantity("count")
    # a load that hits L2: thread blocks that hand partial sums to each other through L2 (Marlin's
    # serial reduction) wait this long per round trip
    l2_latency: float = quantity("time")
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
    # sparse kernels' own tile (sm90 sparse wgmma kernels use 128x256 warpgroup tiles); default: the dense tile
    sparse_tile_m: float = quantity("count", default=0.0)
    sparse_tile_n: float = quantity("count", default=0.0)
    # thread-block cluster size along N: a cluster loads each A tile once (TMA multicast, sm90)
    cluster_n: float = quantity("count", default=1.0)
    # Sputnik-like CSR: output columns per 1D tile and nonzeros per step of a row
    csr_tile_n: float = quantity("count", default=32.0)
    csr_chunk_k: float = quantity("count", default=32.0)
    cusparse_csr_efficiency: float = quantity("ratio", default=0.0)
    flash_llm_efficiency: float = quantity("ratio", default=0.0)
    # TEAL's activation-sparse GEMV: its CUDA-core multiply-add rate as a fraction of the peak
    # (0: the device has no such kernel)
    teal_efficiency: float = quantity("ratio", default=0.0)
    flash_llm_extract_cycles: float = quantity("cycles", default=0.0)
    # eager torch's generic elementwise kernels (TensorIterator, not vectorised) on strided or
    # broadcast operands: the share of the DRAM rate a layout copy (a permuted tensor made
    # contiguous; also an elementwise op or norm reading a strided view) and an elementwise op
    # broadcasting along its innermost axis reach (1: as fast as a contiguous stream)
    strided_copy_efficiency: float = quantity("ratio", default=1.0)
    broadcast_elementwise_efficiency: float = quantity("ratio", default=1.0)
    # V:N:M through Spatha (VENOM): per dtype it runs, its efficiency on the sparse tensor
    # cores; a device without the table has no V:N:M kernel (runs V:N:M masks as N:M or dense)
    vnm_gemm_efficiency: Mapping[str, float] = quantity("ratio", per_dtype=True, default={})
    # a dtype whose dense library GEMMs reach a different share of its peak than the others (the
    # int8 kernels of cuBLASLt on Hopper); a dtype it does not list runs at dense_gemm_efficiency
    dense_dtype_efficiency: Mapping[str, float] = quantity("ratio", per_dtype=True, default={})
    # device-side time per call a sparse library kernel takes beyond what a dense GEMM of the same
    # tiles takes (its prologue sets up the compressed operand's and the metadata's pipelines),
    # per kernel name; a kernel it does not list has none
    sparse_kernel_fixed: Mapping[str, float] = quantity("time", per_dtype=True, default={})
    # the share of the DRAM rate at which the 2:4 library's kernels of a dtype stream the compressed
    # weight and its metadata, where that differs from the device's rate (cuSPARSELt's bf16 kernels
    # on sm90 take about twice its fp16 kernels' time on a few-token GEMM, and the same time on a
    # compute-bound one); a dtype it does not list streams at the device's rate
    sparse_stream_efficiency: Mapping[str, float] = quantity("ratio", per_dtype=True, default={})
    # tensor cores take their operands in vectors of this many bytes (8 fp16 / 16 int8 / 4 tf32
    # elements), read along a row's contiguous axis. A convolution whose input channels per group
    # do not fill whole vectors (an RGB stem, C = 3) runs cuDNN's CUDA-core implicit GEMM instead,
    # at `conv_cuda_core_efficiency` of the CUDA-core peak; a library GEMM whose K or N do not (a
    # relative-position einsum with N = 14 at bf16: 28 B) runs an alignment-tolerant kernel with
    # narrow loads, at `unaligned_gemm_efficiency` of the memory and tensor rates; unless the
    # runtime pads the channels (0: no such rules)
    tensor_core_vector_bytes: float = quantity("bytes", default=0.0)
    conv_cuda_core_efficiency: float = quantity("ratio", default=0.0)
    unaligned_gemm_efficiency: float = quantity("ratio", default=0.0)
    # special-function-unit results (exp2, rcp, ...) per SM per clock: the softmax of a fused
    # attention kernel runs there (0: not modelled, the softmax is free)
    sfu_ops_per_sm_clock: float = quantity("count", default=0.0)
    # warp instructions an SM issues per clock (one per warp scheduler) and its register file: a
    # kernel whose instruction count or register use is known from its compiled code is bound by
    # the first and held to the resident blocks the second allows (0: not modelled)
    issue_per_sm_clock: float = quantity("count", default=0.0)
    registers_per_sm: float = quantity("count", default=0.0)
    # the share of the tensor peak that the previous generation's MMA instructions reach (1: the
    # device has no newer ones; Hopper's mma.sync against its wgmma)
    mma_sync_fraction: float = quantity("ratio", default=1.0)

    @staticmethod
    def kernel_names() -> tuple[str, ...]:
        """The kernels a runtime of this family may list (`runtime.<name>.kernels`, `kernel_dispatch`)."""
        from sparsesim.cost.families.gpu_kernels import KERNELS

        return tuple(KERNELS)

    def validate(self) -> str | None:
        """Cross-field checks; a message naming the field, or None. Never raises.
        (The loader has already rejected negative and non-finite quantities.)"""
        problem = check_flags(self, "fp32_uses_tf32", "fp32_conv_uses_tf32")
        if problem:
            return problem
        if not isinstance(self.sparse_ratio, dict):
            return "field 'sparse_ratio': value must be a table of dtype = \"N:M\""
        for dt, ratio in self.sparse_ratio.items():
            if parse_ratio(ratio) is None:
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
        unknown = sorted(set(self.dense_dtype_efficiency) - set(self.tensor_peak))
        if unknown:
            return f"field 'dense_dtype_efficiency': no tensor_peak for {', '.join(unknown)}"
        unknown = sorted(set(self.sparse_stream_efficiency) - set(self.sparse_tensor_peak))
        if unknown:
            return f"field 'sparse_stream_efficiency': no sparse_tensor_peak for {', '.join(unknown)}"
        unknown = sorted(set(self.sparse_kernel_fixed) - set(self.kernel_names()))
        if unknown:
            return (f"field 'sparse_kernel_fixed': unknown kernel(s) {', '.join(unknown)} "
                    f"(known: {', '.join(self.kernel_names())})")
        return (check_fraction(self, "conv_cuda_core_efficiency", "unaligned_gemm_efficiency", zero_ok=True)
                or check_fraction(self, "dram_efficiency", "l2_resident_fraction", "dense_gemm_efficiency",
                               "dense_dtype_efficiency", "sparse_stream_efficiency",
                               "sparse_gemm_efficiency", "csr_efficiency", "bsr_efficiency", "mma_sync_fraction",
                               "strided_copy_efficiency", "broadcast_elementwise_efficiency")
                or check_whole(self, "sm_count", "max_ctas_per_sm", "max_warps_per_sm", "gemm_tile_m", "gemm_tile_n", "gemm_tile_k", "mma_m", "mma_n",
                               "mma_k_bytes", "sparse_row_multiple", "sparse_col_multiple", "dense_pad_multiple")
                or check_positive(self, "tensor_peak", "sparse_tensor_peak", "cuda_core_peak", "dram_bandwidth",
                                  "l2_bandwidth", "clock", "dram_latency", "l2_latency", "max_ctas_per_sm",
                                  "max_warps_per_sm")
                or _check_vnm(self))


def _check_vnm(p: GpuParams) -> str | None:
    """Spatha runs V:N:M as 2:4 on the sparse tensor cores: each dtype it lists needs them."""
    for dt, eff in p.vnm_gemm_efficiency.items():
        if parse_ratio(p.sparse_ratio.get(dt)) != (VNM_HW_N, VNM_HW_M):
            return (f"field 'vnm_gemm_efficiency.{dt}': Spatha runs V:N:M as {VNM_HW_N}:{VNM_HW_M} on sparse "
                    f"tensor cores, but sparse_ratio.{dt} is {p.sparse_ratio.get(dt)!r}")
        if not 0 < eff <= 1:
            return f"field 'vnm_gemm_efficiency.{dt}': must be in (0, 1], got {eff:g}"
    return None


def parse_ratio(text: Any) -> tuple[int, int] | None:
    if not isinstance(text, str):
        return None
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):  # "²" is a digit to str.isdigit, not to int()
        return None
    n, m = int(parts[0]), int(parts[1])
    return (n, m) if 0 < n < m else None


# ----------------------------------------------------------------------------- compute units

@dataclass(frozen=True)
class Unit:
    """Where a dtype's GEMM runs: tensor cores or CUDA cores, at which dtype's rate and energy."""

    dtype: str              # the dtype whose peak and MAC energy apply (fp32 may run as tf32)
    peak: float             # dense FLOP/s
    tensor_cores: bool
    note: str = ""          # non-empty when the op's dtype had to be mapped


def compute_unit(p: GpuParams, dtype: str, conv: bool = False) -> Unit:
    """Tensor cores when the device lists the dtype (fp32 via tf32 only if the device says so,
    separately for matmuls and convolutions: PyTorch's defaults differ), else fp32 CUDA cores for
    fp32/fp64, else the widest supported tensor dtype as a flagged fallback."""
    if dtype == "fp32":
        if p.fp32_conv_uses_tf32 if conv else p.fp32_uses_tf32:
            return Unit("tf32", p.tensor_peak["tf32"], True)
        return Unit("fp32", p.cuda_core_peak, False)
    if dtype in p.tensor_peak:
        return Unit(dtype, p.tensor_peak[dtype], True)
    if dtype == "fp64":
        return Unit("fp32", p.cuda_core_peak, False, "fp64 costed at the fp32 CUDA-core rate")
    for alt in TENSOR_FALLBACK_DTYPES:
        if alt in p.tensor_peak:
            return Unit(alt, p.tensor_peak[alt], True, f"no {dtype} tensor cores on this GPU: costed as {alt}")
    return Unit("fp32", p.cuda_core_peak, False, f"no {dtype} support: costed on fp32 CUDA cores")


def vector_granule(p: GpuParams, dtype_bytes: float) -> int:
    """Elements one `tensor_core_vector_bytes` vector holds at this element width."""
    return max(1, round(p.tensor_core_vector_bytes / dtype_bytes))


def conv_runs_on_cuda_cores(p: GpuParams, op: Op, dtype_bytes: float, pads_channels: bool) -> bool:
    """Whether a convolution's input channels per group leave cuDNN's tensor-core kernels out:
    they are not a whole number of `tensor_core_vector_bytes` vectors and the runtime does not pad them."""
    if op.kind != "conv" or pads_channels or p.tensor_core_vector_bytes <= 0 or p.conv_cuda_core_efficiency <= 0:
        return False
    if not op.weight_shape or len(op.weight_shape) < 3:
        return False
    return int(op.weight_shape[1]) % vector_granule(p, dtype_bytes) != 0


def unaligned_gemm(p: GpuParams, op: Op, g: GemmShape, dtype_bytes: float, pads_channels: bool) -> str:
    """'' when a library GEMM's operand rows fill whole `tensor_core_vector_bytes` vectors (or
    the runtime pads them), else which do not: the activations' and the output's rows are K and N
    long, the weight's (or a matmul's second operand's) K or N (cuBLAS: 'Tensor Core Usage',
    leading dimensions and m, n, k times the element size a multiple of 16 bytes for the best
    kernels)."""
    if op.kind not in ("linear", "matmul") or pads_channels or p.tensor_core_vector_bytes <= 0 \
            or p.unaligned_gemm_efficiency <= 0:
        return ""
    granule = vector_granule(p, dtype_bytes)
    return " and ".join(f"{name} = {n} ({n * dtype_bytes:g} B)" for name, n in (("K", g.k), ("N", g.n)) if n % granule)


def dense_efficiency(p: GpuParams, dtype: str) -> float:
    """The share of `dtype`'s tensor (or CUDA-core) peak a dense library GEMM reaches."""
    return p.dense_dtype_efficiency.get(dtype, p.dense_gemm_efficiency)


def gpu_energy(p: GpuParams, macs: float, dtype: str, dram: float, l2: float, *, metadata: float = 0.0) -> EnergyInputs:
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

    def utilisation(self, g: GemmShape) -> float:
        """Share of the SM-time the waves occupy that does useful MACs: wave quantisation times
        the padding of M, N and K up to whole tiles (1.0 = none lost)."""
        if not self.waves or g.macs <= 0:
            return 1.0
        slots = self.waves * self.sms * self.tile_m * self.tile_n * self.k_per_tile
        return float(g.macs) / slots


def tiling(p: GpuParams, g: GemmShape, dtype_bytes: float, *, split_k: bool = False, sparse: bool = False,
           tile: tuple[int, int] | None = None, fixed: bool = False) -> Tiling:
    """Tile the M x N output: the device tile, shrunk for small dims to whole MMA granules
    (so a GEMV uses a thin tile rather than a mostly-empty 128-row one); waves over the SMs.
    With `sparse` the device's sparse-kernel tile applies (when it names one). With `fixed` the
    tile does not shrink: a kernel called with one configuration whatever the shape (no
    heuristic or search picks a thinner one) computes its whole tile for a GEMV too.
    With `split_k` (cuBLAS does it for dense GEMMs that fill less than one wave) K is split in
    powers of two while the threadblocks still fit in one wave and each split keeps
    SPLIT_K_MIN_STEPS steps of K.

    A wave is taken to cover a near-square patch of tiles (the threadblock swizzle CUTLASS and
    cuBLAS use); that patch sets how often an operand larger than L2 is re-read from DRAM.
    """
    sms = int(p.sm_count)
    k_step = max(int(p.gemm_tile_k), mma_k(p, dtype_bytes))
    tile_m, tile_n = tile or (int(p.gemm_tile_m), int(p.gemm_tile_n))
    if tile is None and sparse and p.sparse_tile_m and p.sparse_tile_n:
        tile_m, tile_n = int(p.sparse_tile_m), int(p.sparse_tile_n)
    tm = tile_m if fixed else min(tile_m, round_up(max(g.m, 1), int(p.mma_m)))
    tn = tile_n if fixed else min(tile_n, round_up(max(g.n, 1), int(p.mma_n)))
    kp = round_up(max(g.k, 1), k_step) if g.k > 0 else 0
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


def round_up(x: int, mult: int) -> int:
    return ceil_div(x, mult) * mult


def mma_k(p: GpuParams, dtype_bytes: float) -> int:
    """K elements one MMA instruction consumes at this element width (at least 1)."""
    return max(1, int(p.mma_k_bytes // dtype_bytes))


@dataclass(frozen=True)
class GemmTime:
    compute_s: float
    dram_bytes: float
    l2_bytes: float
    metadata_dram_bytes: float
    tiling: Tiling


def gemm_time(
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
    sparse: bool = False,
    a_dram_bytes: float | None = None,
    tile: tuple[int, int] | None = None,
    fixed_tile: bool = False,
) -> GemmTime:
    """Compute time (waves x per-tile time at `tile_rate` FLOP/s per SM) and traffic of a GEMM.

    `w_bytes` is the stored second operand (compressed for sparse kernels). Each output tile
    reads its band of A (K x tile_m) and W (K x tile_n) through L2; DRAM reads an operand once
    if it fits in `l2_resident_fraction` of L2, else once per wave-band that needs it. Split-K partial sums
    (fp32) are written and read back through L2. `dram_bytes` leaves out the weight's metadata,
    which `metadata_dram_bytes` gives (read as often as the values). `a_dram_bytes` is what A
    costs in DRAM when it is smaller than the A the tiles read (an implicit-GEMM convolution's
    tiles read the im2col matrix, `a_bytes`, but only the input feature map crosses DRAM).
    `tile` fixes a kernel's own CTA tile (M x N outputs) instead of the device's; `fixed_tile`
    keeps it whole for small M or N (see `tiling`).
    """
    if split_k and not sparse and tile is None:
        # a heuristic-driven library (cuBLAS) also picks a smaller CTA tile when the device tile
        # leaves most SMs idle; the candidate with the least time (compute or traffic) wins,
        # the device tile on ties (its L2 traffic is the lowest)
        times = [_gemm_time_at(p, g, dtype_bytes, tile_rate, a_bytes, w_bytes, c_bytes, w_meta_bytes, tile=t,
                               a_dram_bytes=a_dram_bytes)
                 for t in candidate_tiles(p)]
        return min(times, key=lambda gt: max(gt.compute_s, memory_s(p, gt.dram_bytes + gt.metadata_dram_bytes,
                                                                     gt.l2_bytes)))
    return _gemm_time_at(p, g, dtype_bytes, tile_rate, a_bytes, w_bytes, c_bytes, w_meta_bytes, split_k=split_k,
                         sparse=sparse, a_dram_bytes=a_dram_bytes, tile=tile, fixed_tile=fixed_tile)


def candidate_tiles(p: GpuParams) -> list[tuple[int, int]]:
    """The device tile, then the same tile halved along N, along M, and along both: the CTA shapes
    a GEMM library's heuristic chooses among for problems that would not fill the SMs."""
    tm, tn = int(p.gemm_tile_m), int(p.gemm_tile_n)
    halves = [(tm, tn), (tm, tn // 2), (tm // 2, tn), (tm // 2, tn // 2)]
    return [(m, n) for m, n in dict.fromkeys(halves) if m >= p.mma_m and n >= p.mma_n]


def _gemm_time_at(p: GpuParams, g: GemmShape, dtype_bytes: float, tile_rate: float, a_bytes: float, w_bytes: float,
                  c_bytes: float, w_meta_bytes: float, *, split_k: bool = True, sparse: bool = False,
                  tile: tuple[int, int] | None = None, a_dram_bytes: float | None = None,
                  fixed_tile: bool = False) -> GemmTime:
    t = tiling(p, g, dtype_bytes, split_k=split_k, sparse=sparse, tile=tile, fixed=fixed_tile)
    per_tile = 2.0 * t.tile_m * t.tile_n * t.k_per_tile / tile_rate if tile_rate > 0 else math.inf
    compute = t.waves * per_tile if g.macs > 0 else 0.0
    a_dram = a_bytes if a_dram_bytes is None else min(a_bytes, a_dram_bytes)
    a_reads = dram_reads(p, a_dram, t.tiles_n, t.wave_n)
    w_total = w_bytes + w_meta_bytes
    w_reads = dram_reads(p, w_total, t.tiles_m, t.wave_m)
    dram = a_dram * a_reads + w_bytes * w_reads + c_bytes
    # a thread-block cluster of `cluster_n` tiles along N loads each A tile once (TMA multicast)
    l2 = a_bytes * ceil_div(t.tiles_n, max(1, min(int(p.cluster_n), t.tiles_n))) + w_total * t.tiles_m + c_bytes
    if t.split_k > 1:
        l2 += 2 * (t.split_k - 1) * g.m * g.n * g.batch * g.groups * PARTIAL_BYTES
    return GemmTime(compute, dram, l2, w_meta_bytes * w_reads, t)


def feature_map_bytes(op: Op, a_bytes: float, g: GemmShape) -> float | None:
    """DRAM bytes of a convolution's input feature map (None for other ops): an implicit-GEMM
    kernel (cuDNN, CUTLASS, TensorRT) builds each tile's im2col band in shared memory from the
    feature map, so overlapping windows are re-read from L2/shared memory, not from DRAM."""
    if op.kind != "conv" or not op.input_shapes or not op.input_shapes[0]:
        return None
    elems = g.batch * g.groups * g.m * g.k
    return a_bytes * math.prod(op.input_shapes[0]) / elems if elems else None


def dram_reads(p: GpuParams, nbytes: float, tiles: int, tiles_per_wave: int) -> int:
    """Times an operand is read from DRAM: once if it fits the resident share of L2, else once
    per band of `tiles_per_wave` tiles (of `tiles` along the other output dimension) a wave covers."""
    return 1 if nbytes <= p.l2_size * p.l2_resident_fraction else ceil_div(tiles, tiles_per_wave)


def dram_bw(p: GpuParams) -> float:
    """The DRAM bandwidth kernels reach (peak x efficiency)."""
    return p.dram_bandwidth * p.dram_efficiency


def resident_blocks_per_sm(p: GpuParams, warps_per_block: int = 1, registers_per_thread: int = 0) -> int:
    """Thread blocks of `warps_per_block` warps one SM holds at once: its block slots, its warp
    slots and, when the kernel's registers per thread are known, its register file."""
    per_sm = min(int(p.max_ctas_per_sm), int(p.max_warps_per_sm) // max(warps_per_block, 1))
    if registers_per_thread > 0 and p.registers_per_sm > 0:
        per_sm = min(per_sm, int(p.registers_per_sm) // (registers_per_thread * 32 * max(warps_per_block, 1)))
    return max(per_sm, 1)


def latency_bound_bandwidth(p: GpuParams, blocks: int, bytes_in_flight: float, warps_per_block: int = 1,
                            registers_per_thread: int = 0) -> float:
    """The DRAM bandwidth a kernel of `blocks` thread blocks reaches when each keeps
    `bytes_in_flight` of loads outstanding and waits for them before issuing more (Little's law:
    bytes in flight / latency; the memory-warp parallelism of Hong & Kim, ISCA 2009). Blocks
    beyond what the SMs hold at once (`resident_blocks_per_sm`) wait for a slot and add nothing
    in flight; never above `dram_bw`."""
    per_sm = resident_blocks_per_sm(p, warps_per_block, registers_per_thread)
    resident = min(max(blocks, 1), int(p.sm_count) * per_sm)
    return min(dram_bw(p), resident * bytes_in_flight / p.dram_latency)


def closed_network_throughput(customers: int, demands: Sequence[float], delay: float) -> float:
    """Cycles per second of `customers` that each cycle through queueing stations with these
    service `demands` (seconds per visit) and a pure `delay`: exact mean-value analysis of a
    closed product-form network (Reiser & Lavenberg, JACM 1980). One customer takes the delay
    plus every demand in series; many approach the largest demand's rate."""
    queues = [0.0] * len(demands)
    rate = 0.0
    for n in range(1, max(customers, 1) + 1):
        residence = [d * (1.0 + q) for d, q in zip(demands, queues)]
        rate = n / (delay + sum(residence))
        queues = [rate * r for r in residence]
    return rate


@dataclass(frozen=True)
class LockstepTime:
    seconds: float
    blocks_per_sm: int  # the blocks the busiest SM runs at once


def lockstep_blocks_s(p: GpuParams, blocks: int, steps_per_block: int, step_bytes: float, step_instructions: float,
                      warps_per_block: int, registers_per_thread: int = 0) -> LockstepTime:
    """Time of a kernel whose blocks load a step's operands from DRAM into registers, wait for
    them, then issue the step's `step_instructions` warp instructions before the next loads (no
    software pipelining), all of a block's warps together. Each SM's resident blocks are then the
    customers of a closed network of the SM's issue slots and its share of the DRAM bandwidth,
    with the DRAM latency as a delay (`closed_network_throughput`): few blocks an SM pay the
    latency and both demands in series on every step, many hide them behind each other. The
    busiest SM sets the time; its last blocks, fewer than it holds, run with less overlap."""
    blocks = max(blocks, 1)
    sms = min(blocks, int(p.sm_count))
    busiest = ceil_div(blocks, sms)
    held = min(resident_blocks_per_sm(p, warps_per_block, registers_per_thread), busiest)
    issue = step_instructions / (p.issue_per_sm_clock * p.clock) if p.issue_per_sm_clock > 0 else 0.0
    rest = busiest % held
    # the last blocks run on the SMs that got one more round than the others; those SMs share
    # the DRAM bandwidth among fewer
    tail_sms = max(1, min(sms, blocks - sms * (busiest - rest))) if rest else sms

    def run(n: int, count: int, busy_sms: int) -> float:
        dram = step_bytes / (dram_bw(p) / busy_sms)
        return count * steps_per_block / closed_network_throughput(n, (issue, dram), p.dram_latency) if count else 0.0

    return LockstepTime(run(held, busiest - rest, sms) + run(rest, rest, tail_sms), held)


def issue_s(p: GpuParams, warp_instructions: float, blocks: int) -> float:
    """Time to issue `warp_instructions` over the SMs `blocks` thread blocks occupy, one warp
    instruction per scheduler per clock (0 when the device file gives no issue rate)."""
    if p.issue_per_sm_clock <= 0:
        return 0.0
    sms = min(max(blocks, 1), int(p.sm_count))
    return warp_instructions / (sms * p.issue_per_sm_clock * p.clock)


def memory_s(p: GpuParams, dram: float, l2: float) -> float:
    return max(dram / dram_bw(p), l2 / p.l2_bandwidth)


def describe(what: str, compute: float, memory: float, overhead: float, tl: Tiling) -> str:
    lead = "memory" if memory > compute else "compute"
    if overhead > max(compute, memory):
        lead = "launch overhead"
    sk = f" x split-K {tl.split_k}" if tl.split_k > 1 else ""
    q = f", {tl.tiles // tl.split_k} tiles{sk} in {tl.waves} wave(s) ({tl.wave_efficiency:.0%} full)" if tl.tiles else ""
    return f"{what}: {lead}-bound (compute {compute * 1e6:.3g} us, memory {memory * 1e6:.3g} us{q})"


def stored(layer: LayerSparsity, fmt: str, work: GemmWork, pattern: Pattern | None = None) -> tuple[float, float]:
    """(values, metadata) bytes of the weight as the kernel stores it in `fmt` (for `pattern`,
    default the layer's); the layer's own figures when it is already stored that way."""
    pattern = pattern or layer.pattern
    if layer.format == fmt and pattern == layer.pattern:
        return float(layer.value_bytes), float(layer.metadata_bytes)
    from sparsesim.sparsity.formats import format_bytes

    size = format_bytes(fmt, layer.stats, value_bytes=work.dtype_bytes, pattern=pattern)
    return float(size.values), float(size.metadata)


def sparse_traffic(p: GpuParams, g: GemmShape, work: GemmWork, values: float, meta: float) -> tuple[float, float, float]:
    """(DRAM bytes without metadata, L2 bytes, memory seconds) of a CSR/BSR SpMM: the activations
    are read once per band of output columns a wave covers, like the dense kernel (`gemm_time`);
    the sparse weight (values + metadata) streams once from DRAM and once per tile row via L2."""
    t = tiling(p, g, work.dtype_bytes)
    a_reads = dram_reads(p, work.a_bytes, t.tiles_n, t.wave_n)
    dram = work.a_bytes * a_reads + values + work.c_bytes
    l2 = work.a_bytes * t.tiles_n + (values + meta) * t.tiles_m + work.c_bytes
    return dram, l2, memory_s(p, dram + meta, l2)
