"""GPU kernel libraries as choices: each models one library's kernel, its rules and its costs.

| kernel | serves | what it does (source) |
|---|---|---|
| cublas | dense | cuBLAS/cuBLASLt tensor-core GEMM; split-K when the tiles fill less than a wave |
| marlin | dense int4 | int4 weight-only GEMM (Frantar et al., Marlin): 4-bit weights dequantised in registers, fp16 MMA; its work striped over every SM, the stripes sharing a column slice reduced one after another in L2 (`marlin`); the engine's dense int4 layout (vLLM's), a layer its tiles refuse padded to 128 x 64 where the engine pads channels |
| tinygemm | dense int4 | torch's int4 weight-only kernel (aten._weight_int4pack_mm, torchao's default int4 layout): bf16 scale and zero per group, the weight padded as torchao stores it (K to 1,024s, N to 8s); one block of 8 warps per 8 output columns over the whole K, loading into registers with no pipeline, so a block alternates between waiting on DRAM and issuing its compiled K loop (183 warp instructions per 1,024 weights, 64 registers a thread: 4 blocks an SM) and an SM overlaps the two only across its blocks (`lockstep_blocks_s`); the issue slots bind on Hopper and for every prefill (it dequantises the weight again for each 16 rows) |
| int8wo | dense int8 weight-only | torchao's int8_weight_only: a 16-bit GEMM over an int8 weight, converted in the GEMM's loads when the runtime fuses (TorchInductor, an engine's mixed-input GEMM), else first written out as a 16-bit copy (eager) |
| cusparselt | 2:4 | cuSPARSELt: the device file's sparse tile; split-K only under algorithm search (cusparseLtMatmulSearch); under torch the transposed result costs a copy unless the runtime lists it in `transpose_fused` (torch 2.13 fuses it) |
| cutlass-24 | 2:4 | torch's CUTLASS semi-structured kernel: the device's GEMM tile, the transposed result copied (res.t().contiguous() in torch 2.13's semi_structured.py; a strided view its consumer reads through 2.6), no split-K, no fp8 |
| sparse-marlin | 2:4 int4 | Sparse-Marlin (torchao): int4 2:4 weights on sparse tensor cores, its work striped over every SM, the stripes sharing a column slice reduced one after another in L2 (`marlin`) |
| sputnik | unstructured | CSR SpMM on CUDA cores (Gale et al. SC'20): 1D tiles of output columns, one row per subwarp |
| cusparse-csr | unstructured | cuSPARSE CSR SpMM (torch.sparse CSR @ dense), the same structure at a lower efficiency |
| flash-llm | unstructured | "load as sparse, compute as dense" (Xia et al. VLDB'24): sparse tiles expanded in shared memory, dense MMA |
| bsr | block | BSR SpMM on tensor cores (blocks padded to the MMA) or CUDA cores |

Every kernel is a pure function (op, work, layer, device, env) -> Cost, or a string saying why
it cannot run the op. `gpu.gpu_cost` tries the kernels the runtime offers for the op's pattern
and keeps the fastest (or the one `--kernel` forces). Under a framework runtime (torch: eager,
compiled) torch's semi-structured path adds its layout kernels (padding the activations,
copying the result out); under eager its Python tensor subclass adds host time per call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from sparsesim.core.ir import DTYPE_BYTES, WEIGHT_ONLY_DTYPES, GemmShape, Op, activation_dtype
from sparsesim.cost.common import GemmWork, build_cost, ceil_div
from sparsesim.cost.families import dynamic_quant, marlin
from sparsesim.cost.families.gpu_machine import (
    CSR_INDEX_BYTES,
    MODEL,
    VNM_HW_M,
    VNM_HW_N,
    GpuParams,
    Tiling,
    Unit,
    compute_unit,
    conv_runs_on_cuda_cores,
    dense_efficiency,
    describe,
    dram_bw,
    feature_map_bytes,
    gemm_time,
    gpu_energy,
    issue_s,
    latency_bound_bandwidth,
    lockstep_blocks_s,
    memory_s,
    mma_k,
    parse_ratio,
    precision_id,
    round_up,
    sparse_traffic,
    stored,
    unaligned_gemm,
    vector_granule,
)
from sparsesim.cost.record import Cost, Reason
from sparsesim.cost.sparse_inputs import active_input_fraction, skippable_inputs
from sparsesim.hw.devices import Device
from sparsesim.hw.runtimes import RuntimeParams
from sparsesim.sparsity.patterns import nm_pattern
from sparsesim.sparsity.records import LayerSparsity, Pattern

INT4 = "int4"
INT8_WEIGHT_ONLY = "int8wo"
# int4 weight-only: one fp16 scale per group of this many weights (torchao int4_weight_only's
# default group_size=128; Marlin supports groups of 128)
INT4_GROUP_SIZE = 128
SCALE_BYTES = 2
# tinygemm (aten._weight_int4pack_mm): a bf16 scale and a bf16 zero point per group of weights
# along K for every output column (its scalesAndZeros tensor is [K / group, N, 2] bf16); torchao's
# int4_weight_only benchmark of Llama-3-8B used groups of 64 (published.md §2.3)
TINYGEMM_GROUP_SIZE = 64
TINYGEMM_SCALE_ZERO_BYTES = 4
# tinygemm computes m16n8k16 MMAs with the activations padded to 16 rows: one thread block of
# TINYGEMM_WARPS warps per 16 tokens x 8 output columns, its warps striding over K and summing
# their partial sums in shared memory at the end; no split-K across blocks. Each warp loads one
# iteration's operands into registers (KTilesPerIteration = 8 k-tiles of 16: 128 K x 8 columns of
# int4 weights, 512 B, plus the bf16 scale and zero of those 8 columns' two groups of 64, 64 B),
# then dequantises and multiplies them before it issues the next loads: a block's warps move in
# lock-step between waiting on DRAM and issuing math (`lockstep_blocks_s`). PyTorch 2.6 aten/src/ATen/native/cuda/int4mm.cu:
# tinygemm_m16n8k16_chunk_kernel, launched by HANDLE_Q_GROUP(8, 8, KReductionType::None) for
# every shape
TINYGEMM_TILE = (16, 8)
TINYGEMM_WARPS = 8
TINYGEMM_K_PER_ITERATION = 128
# the packed weight holds K in runs of innerKTiles (8, torchao's default) k-tiles of 16
# (_convert_weight_to_int4pack: [N / 8][K / (innerKTiles * 16)][32][innerKTiles / 2]). torchao's
# int4 layout meets that packing by padding (TensorCoreTiledLayout.pre_process: in_features to
# a multiple of 1,024, out_features to 8; the linear pads its input to match and slices the
# output back), and leaves unquantised a layer whose K its groups do not divide
# (int4_weight_only: "Skipping quantizing weight ... not compatible with group_size")
TINYGEMM_K_PAD = TINYGEMM_WARPS * TINYGEMM_K_PER_ITERATION  # 1,024: one step of a block's 8 warps
# the kernel as compiled (that instantiation of int4mm.cu, nvcc 11.8, -arch=sm_80 and sm_90,
# ptxas -v and cuobjdump -sass, 2026-12-04): 64 registers a thread (63 on sm_90), so an SM
# holds 4 of its 256-thread blocks, not the 8 its warp slots allow; and its K loop issues 183
# warp instructions an iteration (186 on sm_90: 35 loads, 32 HFMA2 + 16 LOP3 + 15 SHF of
# dequantisation, 8 HMMA, 32 FADD folding the MMA results, address arithmetic), 1,024 weights
# a warp: about as many issue slots as the weight's bytes take at an A100's DRAM rate, more
# than they take at a Hopper's
TINYGEMM_REGISTERS = 64
TINYGEMM_INSTRUCTIONS_PER_ITERATION = 183
# Flash-LLM's Tiled-CSL format stores a 16-bit location next to each 16-bit value (Xia et al. §4)
FLASH_LLM_INDEX_BYTES = 2


@dataclass(frozen=True)
class KernelEnv:
    """What the runtime around a kernel decides: its name and parameters, the device-side cost
    of one kernel launch, and the kernel the user forced ('' = none)."""

    runtime: str
    rt: RuntimeParams
    launch: float
    forced: str = ""


KernelFn = Callable[[Op, GemmWork, "LayerSparsity | None", Device, KernelEnv], "Cost | str"]


@dataclass(frozen=True)
class GpuKernel:
    name: str
    serves: tuple[str, ...]   # pattern kinds ("dense", "nm", "unstructured", "block")
    run: KernelFn
    summary: str
    # the only dtypes it runs (empty: it says why for the ones it does not) and that in words (the
    # refusal's): a weight-only kernel is not a choice for any other dtype, so it stays out of the
    # runtime's comparison, and a forced one says why it cannot run (`refusal`, checked by the
    # picker before the kernel runs: the kernels themselves never check their dtype)
    dtypes: tuple[str, ...] = ()
    runs: str = ""

    def takes(self, dtype: str) -> bool:
        return not self.dtypes or dtype in self.dtypes

    def refusal(self, dtype: str) -> str:
        """Why the kernel does not run a GEMM at `dtype` ("" when it does)."""
        return "" if self.takes(dtype) else f"{self.runs or self.name + ' runs ' + '/'.join(self.dtypes)}, not {dtype}"


# ----------------------------------------------------------------------------- dense

def dense_cost(op: Op, work: GemmWork, device: Device, env: KernelEnv, *, why: str = "", fallback: bool = False,
               kernel: str = "dense (cublas)", unit: Unit | None = None, w_bytes: float | None = None,
               notes: tuple[Reason, ...] = ()) -> Cost:
    """Dense tensor-core (or CUDA-core) GEMM(s) of `work`; ignores any zeros in the weight.
    `unit` overrides where the arithmetic runs, `w_bytes` the stored weight (int4 + scales)."""
    p: GpuParams = device.params
    cuda_core_conv = unit is None and conv_runs_on_cuda_cores(p, op, work.dtype_bytes, env.rt.pads_channels)
    if cuda_core_conv:
        assert op.weight_shape is not None  # conv_runs_on_cuda_cores checked it
        unit = Unit("fp32", p.cuda_core_peak, False)
        granule = vector_granule(p, work.dtype_bytes)
        why = "; ".join(w for w in (why, f"{op.weight_shape[1]} input channels are not a "
                                         f"multiple of the {granule} a tensor-core convolution reads per vector and "
                                         f"{env.runtime} does not pad them: cuDNN's CUDA-core implicit GEMM at "
                                         f"{p.conv_cuda_core_efficiency:.0%} of the CUDA-core peak") if w)
    unit = unit or compute_unit(p, work.dtype, conv=op.kind == "conv")
    efficiency = p.conv_cuda_core_efficiency if cuda_core_conv else dense_efficiency(p, unit.dtype)
    tile_rate = unit.peak / p.sm_count * efficiency
    wb = work.w_bytes if w_bytes is None else w_bytes
    g = work.gemms[0]
    gt = gemm_time(p, g, work.dtype_bytes, tile_rate=tile_rate, a_bytes=work.a_bytes,
                   w_bytes=wb, c_bytes=work.c_bytes, split_k=True,
                   a_dram_bytes=feature_map_bytes(op, work.a_bytes, g))
    compute, dram, l2, tl = gt.compute_s, gt.dram_bytes, gt.l2_bytes, gt.tiling
    memory = memory_s(p, dram, l2)
    parts = [why] if why else []
    if unit.note:
        parts.append(unit.note)
    unaligned = unaligned_gemm(p, op, g, work.dtype_bytes, env.rt.pads_channels) if unit.tensor_cores else ""
    if unaligned:
        compute, memory = compute / p.unaligned_gemm_efficiency, memory / p.unaligned_gemm_efficiency
        parts.append(f"{unaligned} not whole {p.tensor_core_vector_bytes:g}-byte vectors: the library runs an "
                     f"alignment-tolerant kernel (narrow loads) at {p.unaligned_gemm_efficiency:.0%} of its rates")
        notes = (*notes, Reason("alignment", p.unaligned_gemm_efficiency))
    shape = " + ".join(f"{g.m}x{g.n}x{g.k}" + (f" x{g.batch * g.groups}" if g.batch * g.groups > 1 else "")
                       for g in work.gemms)
    where = "tensor cores" if unit.tensor_cores else "CUDA cores"
    parts.append(describe(f"dense {shape} {unit.dtype} on {where}", compute, memory, env.launch, tl))
    if not cuda_core_conv and efficiency < p.dense_gemm_efficiency:
        parts.append(f"the library's dense {unit.dtype} kernels reach {efficiency:.0%} of the {unit.dtype} peak "
                     f"(other dtypes {p.dense_gemm_efficiency:.0%}): a sparse kernel can beat them by more than its math")
        notes = (*notes, Reason("weak_dense_library", efficiency / p.dense_gemm_efficiency))
    return build_cost(
        device=device, model=MODEL, compute_s=compute, memory_s=memory, overhead_s=env.launch,
        energy=gpu_energy(p, float(work.macs), unit.dtype, dram, l2),
        kernel=kernel, why="; ".join(parts), flops_executed=float(work.flops), peak_flops=unit.peak,
        memory_bytes=wb if op.weight is not None else 0.0,
        fallback=fallback or bool(unit.note),
        details={"waves": tl.waves, "tiles": tl.tiles, "wave_efficiency": tl.wave_efficiency,
                 "sm_utilisation": tl.utilisation(work.gemms[0]), "split_k": tl.split_k,
                 "precision": precision_id(unit.dtype)},
        notes=notes,
    )


def causal_tile_fraction(lq: int, lk: int, tl: Tiling) -> float:
    """Share of the Lq x Lk score tiles a causal attention kernel computes: the tiles with any
    key at or before their last query (the mask aligned to the bottom-right corner, as
    FlashAttention does when Lq < Lk; top-left and bottom-right agree when Lq = Lk). The tiles
    wholly above the diagonal are skipped, so a long prefill does about half the work."""
    if lq <= 0 or lk <= 0:
        return 1.0
    computed = 0
    for a in range(tl.tiles_m):
        last_query = min((a + 1) * tl.tile_m, lq) - 1
        last_key = last_query + max(lk - lq, 0)
        computed += min(ceil_div(last_key + 1, tl.tile_n), tl.tiles_n)
    return computed / (tl.tiles_m * tl.tiles_n)


def padded_attention(gemms: tuple[GemmShape, ...], rt: RuntimeParams) -> tuple[GemmShape, ...]:
    """QK^T and PV as the runtime's attention kernel computes them: the head dim (QK^T's K, PV's
    N) rounded up to the `attention_head_dim_multiple` its kernels are built for (FlashAttention-2
    runs a head dim of 80 in its 96 kernel, zero-padded), the queries (M of both) and keys
    (QK^T's N, PV's K) to whole blocks of `attention_block_q` and `attention_block_k` rows (a
    196-token window runs as 256 in blocks of 128 queries and 64 keys)."""
    if len(gemms) != 2:
        return gemms
    qk, pv = gemms
    dim, bq, bk = (int(x) for x in (rt.attention_head_dim_multiple, rt.attention_block_q, rt.attention_block_k))
    lq, lk = round_up(qk.m, bq), round_up(qk.n, bk)
    return (dataclasses.replace(qk, m=lq, n=lk, k=round_up(qk.k, dim)),
            dataclasses.replace(pv, m=round_up(pv.m, bq), n=round_up(pv.n, dim), k=round_up(pv.k, bk)))


def attention_cost(op: Op, work: GemmWork, device: Device, env: KernelEnv) -> Cost:
    """A fused (flash) attention kernel: Q, K and V read once, O written once, the scores kept on
    chip; QK^T and PV run back to back on the tensor cores.

    Besides the MMAs every score computed pays an exponential on the special-function units,
    `sfu_ops_per_sm_clock` per SM per clock: far below the MMA rate, so at head dim 64-128 the
    softmax takes 25-50% of the MMA time (FlashAttention-2 §3.1, FlashAttention-3 §1). A
    FlashAttention-2-class kernel (torch's SDPA) runs the two one after the other with Ampere's
    MMA instructions, which on Hopper reach `mma_sync_fraction` of the peak; a warp-specialised
    Hopper kernel (the runtime's `attention_warp_specialised`: FlashAttention-3, a vendor
    engine's) uses the Hopper instructions and overlaps the softmax with the MMAs. A causal mask
    skips the score tiles above the diagonal (`causal_tile_fraction`); a head dim between the
    runtime's kernel sizes runs the next one up and the sequences run in whole blocks
    (`padded_attention`). An attention given a mask or bias tensor runs the runtime's masked
    kernel at its `masked_attention_rate` of that speed."""
    p: GpuParams = device.params
    unit = compute_unit(p, work.dtype)
    overlapped = env.rt.attention_warp_specialised
    mma_fraction = 1.0 if overlapped else p.mma_sync_fraction
    tile_rate = unit.peak / p.sm_count * dense_efficiency(p, unit.dtype) * mma_fraction
    gemms = padded_attention(work.gemms, env.rt)
    times = [gemm_time(p, g, work.dtype_bytes, tile_rate=tile_rate, a_bytes=0, w_bytes=0, c_bytes=0)
             for g in gemms]
    qk, tl = gemms[0], times[0].tiling
    share = causal_tile_fraction(qk.m, qk.n, tl) if op.causal else 1.0
    mma = sum(t.compute_s for t in times) * share
    scores = qk.batch * qk.groups * qk.m * qk.n * share
    sfu_rate = p.sfu_ops_per_sm_clock * p.sm_count * p.clock
    softmax = scores / sfu_rate if sfu_rate > 0 else 0.0
    compute = max(mma, softmax) if overlapped else mma + softmax
    # the masked kernel's query-block prologue and epilogue, as more of its loop's key blocks: they
    # load and write only the block's real query rows, so a block padded from a few queries pays
    # that share of it
    key_blocks = qk.n / max(env.rt.attention_block_k, 1.0)
    extra_blocks = env.rt.masked_attention_epilogue_blocks if op.masked else 0.0
    real_rows = work.gemms[0].m / qk.m if qk.m else 0.0
    epilogue = compute * extra_blocks / key_blocks * real_rows if key_blocks > 0 else 0.0
    compute += epilogue
    masked_rate = env.rt.masked_attention_rate if op.masked else 1.0
    compute /= masked_rate
    dram = l2 = work.a_bytes + work.w_bytes + work.c_bytes
    memory = memory_s(p, dram, l2)
    shape = " + ".join(f"{g.m}x{g.n}x{g.k} x{g.batch * g.groups}" for g in work.gemms)
    parts = [unit.note] if unit.note else []
    traced = work.gemms[0]
    if qk.k != traced.k:
        parts.append(f"head dim {traced.k} runs the {qk.k} kernel (kernels exist for multiples of "
                     f"{int(env.rt.attention_head_dim_multiple)})")
    if (qk.m, qk.n) != (traced.m, traced.n):
        parts.append(f"{traced.m}x{traced.n} scores run as {qk.m}x{qk.n} (whole blocks of "
                     f"{int(env.rt.attention_block_q)} queries x {int(env.rt.attention_block_k)} keys)")
    parts.append(describe(f"flash attention {shape} {unit.dtype}", compute, memory, env.launch, tl))
    how = "overlapped with" if overlapped else "after"
    detail = f"MMAs {mma * 1e6:.3g} us" + ("" if mma_fraction == 1.0 else f" at {mma_fraction:.0%} of the peak (Ampere MMA instructions)")
    if softmax > 0:
        detail += f", softmax exponentials {softmax * 1e6:.3g} us on the special-function units {how} them"
    if op.causal:
        detail += f"; causal: {share:.0%} of the score tiles"
    if epilogue > 0:
        detail += (f"; the masked kernel's query-block load and output write as {extra_blocks:g} more of its "
                   f"{key_blocks:g} key blocks (+{epilogue * 1e6:.3g} us)")
    if masked_rate < 1.0:
        detail += f"; a mask/bias tensor: the runtime's masked kernel at {masked_rate:.0%} of that rate"
    parts.append(detail)
    return build_cost(
        device=device, model=MODEL, compute_s=compute, memory_s=memory, overhead_s=env.launch,
        energy=gpu_energy(p, float(work.macs) * share, unit.dtype, dram, l2),
        kernel="flash attention", why="; ".join(parts), flops_executed=2.0 * sum(g.macs for g in gemms) * share,
        peak_flops=unit.peak,
        memory_bytes=0.0, fallback=bool(unit.note),
        details={"waves": tl.waves, "tiles": tl.tiles, "wave_efficiency": tl.wave_efficiency,
                 "sm_utilisation": tl.utilisation(qk), "split_k": tl.split_k, "precision": precision_id(unit.dtype),
                 "softmax_s": softmax, "causal_share": share},
    )


def int4_weight_bytes(work: GemmWork, grown: float = 1.0, *, group_size: int = INT4_GROUP_SIZE,
                      scale_bytes: float = SCALE_BYTES) -> float:
    """An int4 weight, `grown` times its elements by a layout's padding, with its per-group scale
    (and zero) bytes: Marlin's fp16 scale per INT4_GROUP_SIZE weights by default."""
    elems = work.w_bytes / work.dtype_bytes * grown
    return elems * work.dtype_bytes + elems / group_size * scale_bytes


def _cublas(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost | str:
    if work.dtype in WEIGHT_ONLY_DTYPES:
        return f"cuBLAS has no {work.dtype} weight-only GEMM"
    return dense_cost(op, work, device, env)


def _padded(work: GemmWork, n: int, k: int) -> tuple[GemmShape, float, float]:
    """The GEMM of `work` with its outputs padded to `n` and its K to `k` (zeros a layout stores),
    and how much each grew."""
    given = work.gemms[0]
    g = dataclasses.replace(given, n=max(n, given.n), k=max(k, given.k))
    return g, g.n / given.n, g.k / given.k


def _padding_note(grow_n: float, grow_k: float) -> tuple[Reason, ...]:
    """The padding a layout stores, as data (padded / true weight elements), when there is any."""
    return (Reason("padding", grow_n * grow_k),) if grow_n * grow_k > 1 else ()


def _marlin(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost | str:
    p: GpuParams = device.params
    unit = compute_unit(p, activation_dtype(work.dtype))
    given = work.gemms[0]
    # an engine that pads channels stores a layer Marlin's checks refuse padded to its tile (torch
    # runtimes have no dense Marlin layout: torchao's dense int4 layout is tinygemm's)
    n, k = marlin.padded_shape(given.n, given.k, group_size=INT4_GROUP_SIZE) if env.rt.pads_channels \
        else (given.n, given.k)
    g, grow_n, grow_k = _padded(work, n, k)
    striped = marlin.partition(g.m * g.batch * g.groups, g.n, g.k, int(p.sm_count), sparse=False,
                               group_size=INT4_GROUP_SIZE)
    if isinstance(striped, str):
        return striped
    w_bytes = int4_weight_bytes(work, grow_n * grow_k)
    # Marlin's MMAs are Ampere's mma.sync: on Hopper they reach `mma_sync_fraction` of the peak
    tile_rate = unit.peak / p.sm_count * dense_efficiency(p, unit.dtype) * p.mma_sync_fraction
    # the traffic of the stripes' tiles (split along K like the stripes); the math of the longest stripe
    gt = gemm_time(p, g, 2.0, tile_rate=tile_rate, a_bytes=work.a_bytes * grow_k, w_bytes=w_bytes,
                   c_bytes=work.c_bytes * grow_n, split_k=True, tile=(striped.tile_m, striped.tile_n))
    compute = marlin.compute_s(striped, tile_rate)
    bw, chain, stripe_why = _marlin_terms(p, striped, sparse=False)
    memory = max(memory_s(p, gt.dram_bytes, gt.l2_bytes), gt.dram_bytes / bw)
    overhead = env.launch * striped.launches + chain
    padded = f", padded from {given.n}x{given.k} ({env.runtime} pads channels to Marlin's tiles)" if g != given else ""
    why = describe(f"Marlin int4 weight-only {g.m}x{g.n}x{g.k}{padded}: 4-bit weights + fp16 scales per "
                   f"{INT4_GROUP_SIZE} ({w_bytes / 1e6:.3g} MB), dequantised in registers, {unit.dtype} MMA",
                   compute, memory, overhead, dataclasses.replace(gt.tiling, tiles=0)) + "; " + stripe_why
    return build_cost(
        device=device, model=MODEL, compute_s=compute, memory_s=memory, overhead_s=overhead,
        energy=gpu_energy(p, float(work.macs), unit.dtype, gt.dram_bytes, gt.l2_bytes),
        kernel="dense (marlin int4)", why=why, flops_executed=float(work.flops) * grow_n * grow_k, peak_flops=unit.peak,
        memory_bytes=w_bytes if op.weight is not None else 0.0, notes=_padding_note(grow_n, grow_k),
        details={"waves": striped.launches, "tiles": striped.blocks, "wave_efficiency": striped.blocks / p.sm_count,
                 "split_k": gt.tiling.split_k, "precision": precision_id(unit.dtype)},
    )


def _marlin_terms(p: GpuParams, striped: marlin.Stripes, *, sparse: bool) -> tuple[float, float, str]:
    """(the DRAM rate its streaming blocks reach, its serial reductions' time, why) of a Marlin partition."""
    flight = marlin.in_flight_bytes(striped, sparse=sparse, group_size=INT4_GROUP_SIZE, scale_bytes=SCALE_BYTES)
    bw = latency_bound_bandwidth(p, striped.blocks, flight, warps_per_block=marlin.WARPS)
    chain = marlin.reduction_s(striped, p.l2_latency)
    return bw, chain, marlin.describe_stripes(striped, int(p.sm_count), chain)


def _int8_weight_only(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device,
                      env: KernelEnv) -> Cost | str:
    """int8 weight-only (torchao's int8_weight_only, gpt-fast's int8): a 16-bit GEMM whose weight is
    stored int8 with a scale per output channel. A runtime that fuses elementwise ops converts
    the weight as the GEMM loads it (TorchInductor fuses `weight.to(bf16)` into the matmul; an
    engine runs a mixed-input GEMM), so the weight streams at 1 byte; eager PyTorch converts the
    whole weight to 16 bits first (a kernel of its own), multiplies by it, then scales the output
    (torchao 0.7 `_linear_fp_act_int8_weight_impl`: `mm(x, w_int8.t().to(x.dtype)) * scale`)."""
    p: GpuParams = device.params
    unit = compute_unit(p, activation_dtype(work.dtype))
    wide = dataclasses.replace(work, dtype_bytes=DTYPE_BYTES[unit.dtype])
    weights = work.w_bytes / work.dtype_bytes
    if env.rt.fuse_elementwise:
        return dense_cost(op, wide, device, env, unit=unit, w_bytes=work.w_bytes, kernel="dense (int8 weight-only)",
                          why=f"int8 weights ({work.w_bytes / 1e6:.3g} MB) converted to {unit.dtype} as the GEMM "
                              f"loads them ({env.runtime} fuses the conversion)")
    cost = dense_cost(op, wide, device, env, unit=unit, w_bytes=weights * wide.dtype_bytes,
                      kernel="dense (int8 weight-only)",
                      why=f"{env.runtime} converts the int8 weight to {unit.dtype} before the GEMM")
    # the 16-bit copy is transient: the model stores its weights int8
    cost = dataclasses.replace(cost, memory_bytes=int(work.w_bytes) if op.weight is not None else 0)
    g = work.gemms[0]
    outputs = g.m * g.n * g.batch * g.groups
    nbytes = weights * (work.dtype_bytes + wide.dtype_bytes) + outputs * 2 * wide.dtype_bytes
    return dynamic_quant.with_kernels(cost, p, env.rt, env.launch, kernels=2, nbytes=nbytes,
                                      what="2 kernel(s) (int8 weight to 16 bits, x output-channel scale)")


def _tinygemm(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost | str:
    p: GpuParams = device.params
    # torch's kernel takes bf16 activations; an int4 deployment's 16-bit activations are costed at
    # their own dtype (fp16 and bf16 run at one tensor-core rate), as for Marlin (fp16 in its paper)
    unit = compute_unit(p, activation_dtype(work.dtype))
    given = work.gemms[0]
    if given.k % TINYGEMM_GROUP_SIZE:
        return (f"torchao quantises a layer for tinygemm only when its groups of {TINYGEMM_GROUP_SIZE} divide K "
                f"(K = {given.k}): it leaves this one at 16 bits")
    g, grow_n, grow_k = _padded(work, round_up(given.n, TINYGEMM_TILE[1]), round_up(given.k, TINYGEMM_K_PAD))
    w_bytes = int4_weight_bytes(work, grow_n * grow_k, group_size=TINYGEMM_GROUP_SIZE,
                                scale_bytes=TINYGEMM_SCALE_ZERO_BYTES)
    a_bytes, c_bytes = work.a_bytes * grow_k, work.c_bytes * grow_n
    padded = f", padded from {given.n}x{given.k} as torchao's int4 layout stores it" if g != given else ""
    # written with Ampere's mma.sync (int4mm.cu's m16n8k16 inline asm): on Hopper it reaches
    # `mma_sync_fraction` of the tensor peak
    tile_rate = unit.peak / p.sm_count * dense_efficiency(p, unit.dtype) * p.mma_sync_fraction
    # one 16 x 8 tile per block whatever M is (more tokens, more blocks re-reading the weight's
    # column tiles through L2), no split-K
    gt = gemm_time(p, g, 2.0, tile_rate=tile_rate, a_bytes=a_bytes, w_bytes=w_bytes, c_bytes=c_bytes,
                   tile=TINYGEMM_TILE)
    memory = memory_s(p, gt.dram_bytes, gt.l2_bytes)
    # a block's warps share its K, 128 at a time; the padded K gives each of them the same number
    # of steps (TINYGEMM_K_PAD is TINYGEMM_WARPS x TINYGEMM_K_PER_ITERATION)
    steps = g.k // TINYGEMM_K_PAD
    step_instructions = TINYGEMM_WARPS * TINYGEMM_INSTRUCTIONS_PER_ITERATION
    # every warp runs its K loop: iterations x the instructions the compiled loop issues
    issue = issue_s(p, gt.tiling.tiles * steps * step_instructions, gt.tiling.tiles)
    compute = max(gt.compute_s, issue)
    # each warp loads one iteration's operands into registers, dequantises and multiplies them,
    # and only then issues its next loads; a block's warps start together and each runs the same
    # few iterations, so a block moves in lock-step and an SM overlaps loads and math only across
    # the blocks it holds
    lock = lockstep_blocks_s(p, gt.tiling.tiles, steps, gt.dram_bytes / (gt.tiling.tiles * steps),
                             step_instructions, TINYGEMM_WARPS, TINYGEMM_REGISTERS)
    more = ""
    if issue > gt.compute_s:
        more += (f"; issue-bound math: {gt.tiling.tiles * steps * TINYGEMM_WARPS} warp iterations x "
                 f"{TINYGEMM_INSTRUCTIONS_PER_ITERATION} instructions (dequantisation, loads, MMAs) = {issue * 1e6:.3g} us")
    if lock.seconds > max(compute, memory):
        more += (f"; loads and math in series within a block: {lock.blocks_per_sm} block(s) an SM x "
                 f"{TINYGEMM_WARPS} warps, {steps} step(s) each, {p.dram_latency * 1e9:.0f} ns DRAM latency: "
                 f"{lock.seconds * 1e6:.3g} us")
        if compute >= memory:
            compute = lock.seconds
        else:
            memory = lock.seconds
    host = framework_host(env, "tinygemm") if op.kind == "linear" else 0.0
    if host > 0:
        more += "; " + host_text(env, host, "torchao's tensor subclass")
    why = describe(f"tinygemm int4 weight-only {g.m}x{g.n}x{g.k}{padded}: 4-bit weights + bf16 scale and zero per "
                   f"{TINYGEMM_GROUP_SIZE} ({w_bytes / 1e6:.3g} MB), {unit.dtype} MMA", compute, memory, env.launch,
                   gt.tiling) + more
    return build_cost(
        device=device, model=MODEL, compute_s=compute, memory_s=memory, overhead_s=env.launch,
        energy=gpu_energy(p, float(work.macs), unit.dtype, gt.dram_bytes, gt.l2_bytes),
        kernel="dense (tinygemm int4)", why=why, flops_executed=float(work.flops) * grow_n * grow_k, peak_flops=unit.peak,
        memory_bytes=w_bytes if op.weight is not None else 0.0, notes=_padding_note(grow_n, grow_k),
        details={"waves": gt.tiling.waves, "tiles": gt.tiling.tiles, "wave_efficiency": gt.tiling.wave_efficiency,
                 "split_k": gt.tiling.split_k, "host_s": host, "precision": precision_id(unit.dtype)},
    )


# ----------------------------------------------------------------------------- 2:4

def nm_support(p: GpuParams, dtype: str, pattern: Pattern, layer: LayerSparsity,
               conv: bool = False) -> tuple[str | None, str]:
    """(sparse-core dtype, "") when the sparse tensor cores can run this N:M mask, else (None, reason)."""
    unit = compute_unit(p, activation_dtype(dtype), conv)
    sdt = unit.dtype
    if not unit.tensor_cores:
        flag = "fp32_conv_uses_tf32" if conv else "fp32_uses_tf32"
        return None, (f"{dtype} runs on CUDA cores on this device ({flag} = false): no sparse tensor cores; "
                      "trace the model in fp16/bf16 to use them")
    if unit.note:
        return None, f"{unit.note}; the sparse kernel would change the precision, so it is not used"
    ratio = parse_ratio(p.sparse_ratio.get(sdt)) if sdt in p.sparse_tensor_peak else None
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


def _nm_check(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device) -> tuple[str, str]:
    """(sparse dtype, '') when a 2:4 kernel may run the op, else ('', reason)."""
    p: GpuParams = device.params
    if layer is None:
        return "", "no sparse weight"
    if op.kind not in ("linear", "conv") or op.weight is None:
        return "", f"{layer.pattern.label} on sparse tensor cores needs a weight operand ({op.kind} has none)"
    sdt, reason = nm_support(p, work.dtype, layer.pattern, layer, conv=op.kind == "conv")
    if sdt is None:
        return "", reason
    bad = alignment_problem(p, sdt, work.gemms[0])
    if bad:
        return "", f"{bad} ({sdt} sparse-kernel alignment)"
    return sdt, ""


def _nm_sparse(op: Op, work: GemmWork, layer: LayerSparsity, device: Device, env: KernelEnv, sdt: str, *,
               library: str, kernel: str, fused_transpose: bool, adapts_tile: bool,
               tile: tuple[int, int] | None = None, split_k: bool | None = None,
               striped: marlin.Stripes | None = None) -> Cost:
    """2:4 (1:2 tf32) GEMM on sparse tensor cores by `library`, with the layout kernels a
    framework runtime launches around it and, under eager, the tensor subclass's host time.
    `split_k` (default: when the runtime searches algorithms) spreads K over otherwise idle SMs.
    `adapts_tile`: the kernel fits its CTA tile to the shape; without that (torch's CUTLASS
    kernel, cuSPARSELt's default algorithm when nothing searches) it computes its whole tile, so
    a decode GEMV computes a tile of 128 tokens for its one. `striped`: Marlin's partition of an
    int4 GEMM (its tile, the blocks that stream, the serial reductions that follow; `marlin`):
    Sparse-Marlin, the one int4 weight-only 2:4 kernel."""
    int4 = striped is not None
    p: GpuParams = device.params
    rt = env.rt
    g = work.gemms[0]
    # torch's semi-structured linear pads and copies around the GEMM; a 2:4 convolution
    # (TensorRT/cuDNN implicit GEMM) and an engine's direct library call use their own buffers
    # (Sparse-Marlin, called through torchao's own op, takes any M and writes its output in place)
    framework_linear = op.kind == "linear" and rt.framework_layouts and not int4
    pad = int(p.dense_pad_multiple[sdt]) if framework_linear else 1
    m_pad = round_up(g.m, pad)
    gp = GemmShape(m=m_pad, n=g.n, k=g.k, batch=g.batch, groups=g.groups)
    a_pad = work.a_bytes * m_pad / g.m if g.m else 0.0
    c_pad = work.c_bytes * m_pad / g.m if g.m else 0.0
    ratio = parse_ratio(p.sparse_ratio[sdt])
    assert ratio is not None, "nm_support and validate() accept only parseable ratios"
    sn, sm = ratio
    hw = layer.pattern if (layer.pattern.n, layer.pattern.m) == (sn, sm) else nm_pattern(sn, sm)
    values, meta = stored(layer, "nm", work, hw)
    if int4:
        values += values / work.dtype_bytes / INT4_GROUP_SIZE * SCALE_BYTES
    tile_rate = p.sparse_tensor_peak[sdt] / p.sm_count * p.sparse_gemm_efficiency
    if int4:
        tile_rate *= p.mma_sync_fraction  # Sparse-Marlin's mma.sp.sync, Ampere's sparse MMA
    # split-K needs the algorithm search a vendor engine runs (torch calls one default algorithm)
    split = rt.algorithm_search if split_k is None else split_k
    gt = gemm_time(p, gp, work.dtype_bytes if not int4 else 2.0, tile_rate=tile_rate, a_bytes=a_pad, w_bytes=values,
                   c_bytes=c_pad, w_meta_bytes=meta, split_k=split, sparse=True,
                   a_dram_bytes=feature_map_bytes(op, a_pad, gp), tile=tile, fixed_tile=not adapts_tile)
    extra_kernels, extra_bytes, extra_why = 0, 0.0, []
    if m_pad != g.m:
        extra_kernels += 1
        extra_bytes += work.a_bytes + a_pad
        extra_why.append(f"M={g.m} padded to {m_pad}")
    if m_pad != g.m or (framework_linear and not fused_transpose and kernel not in rt.transpose_fused):
        extra_kernels += 1
        extra_bytes += c_pad + work.c_bytes
        extra_why.append("result copied out" + ("" if fused_transpose else " (transpose not fused)"))
    if int4 and kernel in rt.zeroed_workspace:
        lock_bytes = marlin.workspace_bytes(g.n)
        extra_kernels += 1
        extra_bytes += lock_bytes
        extra_why.append(f"its {lock_bytes:,} B lock workspace allocated and zeroed ({env.runtime}'s op does it every call)")
    # the 2-bit metadata streams from DRAM with the values (`gt.dram_bytes` leaves it out); a
    # library whose kernels of this dtype stream the compressed weight more slowly takes the
    # weight's bytes as that many more at the DRAM rate
    stream = p.sparse_stream_efficiency.get(sdt, 1.0)
    slow_stream = (values + meta) * (1.0 / stream - 1.0)
    memory = memory_s(p, gt.dram_bytes + gt.metadata_dram_bytes + slow_stream, gt.l2_bytes)
    extra_s = extra_kernels * env.launch + extra_bytes / dram_bw(p)
    fixed = p.sparse_kernel_fixed.get(kernel, 0.0)
    overhead = env.launch + fixed + extra_s
    stripe_why = ""
    compute = gt.compute_s
    tl = gt.tiling
    if striped is not None:
        compute = marlin.compute_s(striped, tile_rate)
        tl = dataclasses.replace(tl, tiles=0)  # the stripes describe the partition
        bw, chain, stripe_why = _marlin_terms(p, striped, sparse=True)
        memory = max(memory, (gt.dram_bytes + gt.metadata_dram_bytes) / bw)
        overhead += chain + (striped.launches - 1) * env.launch
    dram = gt.dram_bytes + extra_bytes
    host = framework_host(env, kernel) if op.kind == "linear" else 0.0
    serial = host if kernel in rt.serial_dispatch else 0.0
    parts = [describe(f"{library}: {sn}:{sm} sparse tensor cores {gp.m}x{gp.n}x{gp.k} {sdt}"
                      f"{' int4 weights' if int4 else ''} (values {values / 1e6:.3g} MB + metadata {meta / 1e6:.3g} MB)",
                      compute, memory, overhead, tl)]
    if layer.pattern.n != sn or layer.pattern.m != sm:
        parts.append(f"{layer.pattern.label} runs as {sn}:{sm} (the only N:M ratio the sparse tensor cores "
                     f"support for {sdt}); its extra zeros are stored")
    if fixed > 0:
        parts.append(f"{library}'s prologue +{fixed * 1e6:.3g} us a call beyond a dense GEMM's")
    if stream < 1.0:
        parts.append(f"its {sdt} kernels stream the compressed weight at {stream:.0%} of the DRAM rate")
    if stripe_why:
        parts.append(stripe_why)
    if extra_why:
        parts.append("layout kernels: " + ", ".join(extra_why) + f" (+{extra_s * 1e6:.3g} us)")
    if host > 0:
        parts.append(host_text(env, host, "tensor subclass, library setup" + ("; the stream waits for it" if serial else "")))
    macs = gp.macs * sn / sm
    return build_cost(
        device=device, model=MODEL, compute_s=compute, memory_s=memory, overhead_s=overhead,
        energy=gpu_energy(p, macs, sdt, dram, gt.l2_bytes, metadata=gt.metadata_dram_bytes),
        kernel=f"{sn}:{sm} sparse tensor core ({library})", why="; ".join(parts), flops_executed=2.0 * macs,
        peak_flops=p.sparse_tensor_peak[sdt] * sn / sm, memory_bytes=values + meta, metadata_bytes=meta,
        fallback=(layer.pattern.n, layer.pattern.m) != (sn, sm),
        details={"waves": gt.tiling.waves, "tiles": gt.tiling.tiles, "wave_efficiency": gt.tiling.wave_efficiency,
                 "layout_s": extra_s, "m_padded": m_pad, "split_k": gt.tiling.split_k, "host_s": host - serial,
                 "host_serial_s": serial,
                 "precision": precision_id(sdt)},
        notes=(Reason("padding", m_pad / g.m),) if m_pad != g.m else (),
    )


def _nm_library(library: str, kernel: str, title: str, *, fused_transpose: bool, vendor_tile: bool,
                searchable: bool, dtypes: tuple[str, ...]) -> KernelFn:
    """A 2:4 tensor-core GEMM of one library on the sparse tensor-core `dtypes` it has kernels
    for (no weight-only variant). `vendor_tile`: the device's sparse tile (the vendor library's
    kernels); else the device's GEMM tile (CUTLASS's threadblock shapes, as torch's
    semi-structured linear instantiates them). `searchable`: the library has an algorithm
    search (cusparseLtMatmulSearch) that a runtime searching algorithms uses to fit the tile."""

    def run(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost | str:
        if work.dtype in WEIGHT_ONLY_DTYPES:
            return f"{title} has no {work.dtype} weight-only kernel"
        sdt, reason = _nm_check(op, work, layer, device)
        if not sdt:
            return reason
        if sdt not in dtypes:
            return f"{title} has no {sdt} kernel (it runs {', '.join(dtypes)})"
        assert layer is not None
        p: GpuParams = device.params
        tile = None if vendor_tile else (int(p.gemm_tile_m), int(p.gemm_tile_n))
        return _nm_sparse(op, work, layer, device, env, sdt, library=library, kernel=kernel,
                          fused_transpose=fused_transpose,
                          adapts_tile=searchable and env.rt.algorithm_search, tile=tile)

    return run


# the dtypes each library is built for: torch/sparse/semi_structured.py _DTYPE_SHAPE_CONSTRAINTS
# of SparseSemiStructuredTensorCUSPARSELT (int8, float8_e4m3fn, float16, bfloat16, float32 as
# tf32) and of SparseSemiStructuredTensorCUTLASS (no float8)
# torch's semi-structured linear hands both libraries the activations transposed and gets the
# N x M result back. Through torch 2.6 (torch/sparse/_semi_structured_ops.py semi_sparse_mm,
# semi_structured.py _mm) it returns that result as a transposed view, which its first consumer
# reads strided: modelled as one copy of the output. torch 2.13's semi_structured.cusparselt_mm
# asks cuSPARSELt to fuse the transpose for a linear (fuse_transpose = should_transpose_dense),
# and its cutlass_mm copies the result out (res.t().contiguous()): a runtime that lists the kernel
# in `transpose_fused` pays no copy. An engine's direct call writes its own layout.
_cusparselt = _nm_library("cusparselt", "cusparselt", "cuSPARSELt", fused_transpose=False, vendor_tile=True, searchable=True,
                          dtypes=("fp16", "bf16", "int8", "fp8", "tf32"))
_cutlass24 = _nm_library("cutlass", "cutlass-24", "torch's CUTLASS 2:4 kernel", fused_transpose=False, vendor_tile=False,
                         searchable=False, dtypes=("fp16", "bf16", "int8", "tf32"))


def _sparse_marlin(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost | str:
    sdt, reason = _nm_check(op, work, layer, device)
    if not sdt:
        return reason
    assert layer is not None
    p: GpuParams = device.params
    g = work.gemms[0]
    striped = marlin.partition(g.m * g.batch * g.groups, g.n, g.k, int(p.sm_count), sparse=True,
                               group_size=INT4_GROUP_SIZE)
    if isinstance(striped, str):
        return striped
    return _nm_sparse(op, work, layer, device, env, sdt, library="sparse-marlin", kernel="sparse-marlin",
                      fused_transpose=True, adapts_tile=True, tile=(striped.tile_m, striped.tile_n),
                      split_k=True, striped=striped)


# ----------------------------------------------------------------------------- V:N:M

def vnm_support(p: GpuParams, dtype: str, op: Op, layer: LayerSparsity, g: GemmShape) -> str:
    """'' when Spatha can run this V:N:M layer, else the rule that fails (one line)."""
    pat = layer.pattern
    v, m = pat.block
    if op.kind not in ("linear", "conv") or op.weight is None:
        return f"V:N:M needs a weight operand ({op.kind} has none)"
    unit = compute_unit(p, dtype, conv=op.kind == "conv")
    if not unit.tensor_cores or unit.note or unit.dtype not in p.vnm_gemm_efficiency:
        have = ", ".join(sorted(p.vnm_gemm_efficiency)) or "none on this device"
        return f"no Spatha V:N:M kernel for {dtype} (vnm_gemm_efficiency lists {have})"
    bad = []
    if g.n % v:
        bad.append(f"N={g.n} weight rows are not whole {v}-row blocks")
    if g.k % m:
        bad.append(f"K={g.k} is not whole groups of {m}")
    return "; ".join(bad)


def _spatha(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost | str:
    """V:N:M GEMM through Spatha: each V x M block's 4 selected activation columns are gathered
    and the block runs as 2:4 on the sparse tensor cores, so the GEMM's K shrinks to K * 4 / M
    (VENOM, Castro et al. SC'23, arXiv 2310.02065, §5). The whole activation still crosses DRAM
    once (different row blocks select different columns); L2 sees each tile's gathered band."""
    if layer is None:
        return "no sparse weight"
    p: GpuParams = device.params
    g = work.gemms[0]
    reason = vnm_support(p, work.dtype, op, layer, g)
    if reason:
        return reason
    pat = layer.pattern
    sdt = compute_unit(p, work.dtype, conv=op.kind == "conv").dtype
    k_sel = ceil_div(g.k * VNM_HW_M, pat.m)
    gs = GemmShape(m=g.m, n=g.n, k=k_sel, batch=g.batch, groups=g.groups)
    values, meta = stored(layer, "vnm", work)
    a_sel = work.a_bytes * k_sel / g.k if g.k else 0.0
    eff = p.vnm_gemm_efficiency[sdt]
    tile_rate = p.sparse_tensor_peak[sdt] / p.sm_count * eff
    gt = gemm_time(p, gs, work.dtype_bytes, tile_rate=tile_rate, a_bytes=a_sel, w_bytes=values,
                   c_bytes=work.c_bytes, w_meta_bytes=meta)
    # every activation column is selected by some row block: A crosses DRAM whole at least once
    dram = gt.dram_bytes + max(0.0, work.a_bytes - a_sel)
    memory = memory_s(p, dram + gt.metadata_dram_bytes, gt.l2_bytes)
    macs = gs.macs * VNM_HW_N / VNM_HW_M
    why = describe(f"spatha: {pat.label} on {VNM_HW_N}:{VNM_HW_M} sparse tensor cores: K={g.k} -> {k_sel} "
                   f"selected columns, {gs.m}x{gs.n}x{k_sel} {sdt} at {eff:.0%} (values {values / 1e6:.3g} MB + "
                   f"metadata {meta / 1e6:.3g} MB)", gt.compute_s, memory, env.launch, gt.tiling)
    return build_cost(
        device=device, model=MODEL, compute_s=gt.compute_s, memory_s=memory, overhead_s=env.launch,
        energy=gpu_energy(p, macs, sdt, dram, gt.l2_bytes, metadata=gt.metadata_dram_bytes),
        kernel=f"{pat.label} Spatha sparse tensor core", why=why, flops_executed=2.0 * macs,
        peak_flops=p.sparse_tensor_peak[sdt] * VNM_HW_N / VNM_HW_M, memory_bytes=values + meta,
        metadata_bytes=meta, details={"waves": gt.tiling.waves, "tiles": gt.tiling.tiles, "k_selected": k_sel,
                                      "precision": precision_id(sdt)},
    )


# ----------------------------------------------------------------------------- unstructured

def framework_host(env: KernelEnv, kernel: str) -> float:
    """Extra host time per call of a sparse kernel's framework op under this runtime (0 for a
    kernel the runtime's `kernel_dispatch` table does not name)."""
    return float(env.rt.kernel_dispatch.get(kernel, 0.0))


def host_text(env: KernelEnv, host_s: float, what: str = "") -> str:
    """The why of a sparse op's per-call host time under the runtime."""
    return f"{env.runtime}: sparse-op host time +{host_s * 1e6:.3g} us per call" + (f" ({what})" if what else "")


def _csr_like(op: Op, work: GemmWork, layer: LayerSparsity, device: Device, env: KernelEnv, *, name: str,
              kernel: str, efficiency: float) -> Cost:
    """CSR SpMM on CUDA cores, Sputnik's structure: each output row is one subwarp's work, its
    nonzeros taken `csr_chunk_k` at a time, each step reading the matching activation rows for a
    1D tile of `csr_tile_n` output columns (the M tokens). Short rows and few tokens leave lanes
    idle: the cost depends on the tokens, the rows and the nonzeros per row, not on nnz alone."""
    p: GpuParams = device.params
    g = work.gemms[0]
    st = layer.stats
    nnz = st.nnz
    rows = max(1, st.rows)
    per_row = nnz / rows
    chunk = max(1, int(p.csr_chunk_k))
    tile_n = max(1, int(p.csr_tile_n))
    # steps a row takes: whole chunks, or (rows with under one nonzero on average) the share of
    # rows that hold any nonzero at all (Poisson), since empty rows are skipped
    steps = math.ceil(per_row / chunk) if per_row >= 1 else 1.0 - math.exp(-per_row)
    row_use = per_row / (steps * chunk) if per_row > 0 else 1.0
    tokens = max(1, g.m)
    col_use = tokens / (ceil_div(tokens, tile_n) * tile_n)
    macs = float(g.m) * g.batch * nnz
    rate = p.cuda_core_peak * efficiency * row_use * col_use
    compute = 2.0 * macs / rate if rate > 0 else math.inf
    values, meta = stored(layer, "csr", work)
    dram, l2, memory = sparse_traffic(p, g, work, values, meta)
    host = framework_host(env, kernel)
    why = (f"{name}: CSR SpMM on CUDA cores, {nnz} nonzeros ({per_row:.0f} per row of {rows}) x {tokens} tokens at "
           f"{efficiency:.0%} of the {p.cuda_core_peak / 1e12:.3g} TFLOP/s CUDA-core peak, lanes used: rows "
           f"{row_use:.0%}, tokens {col_use:.0%} (compute {compute * 1e6:.3g} us, memory {memory * 1e6:.3g} us)"
           + (f"; {host_text(env, host)}" if host > 0 else ""))
    return build_cost(
        device=device, model=MODEL, compute_s=compute, memory_s=memory, overhead_s=env.launch,
        energy=gpu_energy(p, macs, "fp32", dram, l2, metadata=meta),
        kernel=f"csr ({name})", why=why, flops_executed=2.0 * macs, peak_flops=p.cuda_core_peak,
        memory_bytes=values + meta, metadata_bytes=meta,
        details={"nnz": float(nnz), "precision": precision_id(activation_dtype(work.dtype)), "host_s": host},
    )


def _unstructured_check(op: Op, layer: LayerSparsity | None, p: GpuParams | None = None, dtype: str = "", *,
                        forced: bool = False) -> str:
    """Why an unstructured kernel cannot run the op ('' when it can). A kernel the user forced runs
    even where the plan's format chooser would store the weight dense (torch converts to CSR
    whatever the density, and times it)."""
    if layer is None or op.weight is None:
        return "unstructured sparsity needs a sparse weight operand"
    if p is not None and dtype:
        unit = compute_unit(p, activation_dtype(dtype), conv=op.kind == "conv")
        if unit.note:  # no arithmetic at this dtype: a sparse kernel would change the precision
            return f"{unit.note}; a sparse kernel would change the precision, so it is not used"
    if layer.format == "dense" and not forced:
        return (f"unstructured at density {layer.stats.density:.4g} is stored dense "
                "(a sparse format would be larger)")
    return ""


def _sputnik(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost | str:
    bad = _unstructured_check(op, layer, device.params, work.dtype, forced=env.forced == "sputnik")
    if bad:
        return bad
    assert layer is not None
    return _csr_like(op, work, layer, device, env, name="sputnik", kernel="sputnik",
                     efficiency=device.params.csr_efficiency)


def _cusparse_csr(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost | str:
    bad = _unstructured_check(op, layer, device.params, work.dtype, forced=env.forced == "cusparse-csr")
    if bad:
        return bad
    p: GpuParams = device.params
    if p.cusparse_csr_efficiency <= 0:
        return "the device file gives no cusparse_csr_efficiency"
    assert layer is not None
    return _csr_like(op, work, layer, device, env, name="cusparse", kernel="cusparse-csr",
                     efficiency=p.cusparse_csr_efficiency)


def _flash_llm(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost | str:
    """Load as sparse, compute as dense: the weight streams in at its sparse size (value +
    16-bit location per nonzero), each tile is expanded into shared memory (a cost per nonzero)
    and multiplied densely on the tensor cores (the full dense MACs)."""
    bad = _unstructured_check(op, layer)
    if bad:
        return bad
    assert layer is not None
    p: GpuParams = device.params
    if p.flash_llm_efficiency <= 0:
        return "the device file gives no flash_llm_efficiency"
    unit = compute_unit(p, work.dtype, conv=op.kind == "conv")
    if not unit.tensor_cores or unit.note or work.dtype_bytes != 2:
        return f"Flash-LLM runs fp16/bf16 on tensor cores, not {work.dtype}"
    g = work.gemms[0]
    nnz = float(layer.stats.nnz)
    values = nnz * (work.dtype_bytes + FLASH_LLM_INDEX_BYTES)
    # the dense MMAs are tiled and scheduled in waves over the SMs like any GEMM (split-K for
    # skinny shapes, as Flash-LLM does), so a one-tile problem runs on one SM here as in cuBLAS
    tile_rate = unit.peak / p.sm_count * p.flash_llm_efficiency
    mma_s = gemm_time(p, g, work.dtype_bytes, tile_rate=tile_rate, a_bytes=0.0, w_bytes=0.0, c_bytes=0.0,
                      split_k=True).compute_s
    extract_s = nnz * p.flash_llm_extract_cycles / (p.sm_count * p.clock) * max(1, ceil_div(g.m, int(p.gemm_tile_n)))
    compute = mma_s + extract_s
    dram, l2, memory = sparse_traffic(p, g, work, values, 0.0)
    why = (f"flash-llm: {nnz:.0f} nonzeros loaded sparse ({values / 1e6:.3g} MB), expanded in shared memory "
           f"({extract_s * 1e6:.3g} us) and multiplied dense on tensor cores ({mma_s * 1e6:.3g} us); "
           f"memory {memory * 1e6:.3g} us")
    return build_cost(
        device=device, model=MODEL, compute_s=compute, memory_s=memory, overhead_s=env.launch,
        energy=gpu_energy(p, float(g.macs), unit.dtype, dram, l2),
        kernel="flash-llm (tensor-core unstructured)", why=why, flops_executed=2.0 * g.macs, peak_flops=unit.peak,
        memory_bytes=values, metadata_bytes=nnz * FLASH_LLM_INDEX_BYTES,
        details={"nnz": nnz, "precision": precision_id(unit.dtype)},
    )


# ----------------------------------------------------------------------------- block

def _bsr(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost | str:
    """BSR SpMM: nonzero r x c blocks on tensor cores (padded to the MMA shape) or CUDA cores. A
    BSR kernel (torch's Triton bsr_dense_mm) multiplies one block row at a time: its MMAs are the
    block's r rows tall where a dense GEMM's tile is `gemm_tile_m`, so small blocks feed the tensor
    cores that share of their rate (measured on an H200: 16x16 blocks at ~2% of the tensor peak,
    64x64 at ~6%; validation_data/gpu_measured.csv)."""
    if layer is None or op.weight is None:
        return "block sparsity needs a sparse weight operand"
    p: GpuParams = device.params
    note = compute_unit(p, activation_dtype(work.dtype), conv=op.kind == "conv").note
    if note:
        return f"{note}; a sparse kernel would change the precision, so it is not used"
    g = work.gemms[0]
    st = layer.stats
    measured = st.nonzero_blocks(*layer.pattern.block)
    # a block side longer than the weight is the weight's extent (the mask's single edge block)
    r, c = min(layer.pattern.block[0], max(st.rows, 1)), min(layer.pattern.block[1], max(st.cols, 1))
    total_blocks = ceil_div(st.rows, r) * ceil_div(st.cols, c)
    # not measured for this block size: the pattern's density of whole blocks
    nb = measured if measured is not None else min(total_blocks, math.ceil(st.density * total_blocks))
    unit = compute_unit(p, work.dtype, conv=op.kind == "conv")
    if measured is not None:
        values, meta = stored(layer, "bsr", work)
    else:  # the same BSR layout as formats.format_bytes, from the estimated block count
        values = nb * r * c * work.dtype_bytes
        meta = (nb + ceil_div(st.rows, r) + 1) * CSR_INDEX_BYTES
    reps = g.batch  # a shared weight meets every batch's activation rows
    # tensor cores: a block is padded to whole MMA tiles (rows -> mma_m, K -> mma_k)
    r_pad, c_pad = round_up(r, int(p.mma_m)), round_up(c, mma_k(p, work.dtype_bytes))
    tc_macs = float(g.m) * nb * r_pad * c_pad * reps
    rows_fill = min(1.0, r_pad / p.gemm_tile_m)
    tc_s = (2.0 * tc_macs / (unit.peak * p.bsr_efficiency * rows_fill)
            if unit.tensor_cores and not unit.note else math.inf)
    exact_macs = float(g.m) * nb * r * c * reps
    cc_s = 2.0 * exact_macs / (p.cuda_core_peak * p.csr_efficiency)
    on_tc = tc_s <= cc_s
    compute = tc_s if on_tc else cc_s
    dram, l2, memory = sparse_traffic(p, g, work, values, meta)
    host = framework_host(env, "bsr")
    where = (f"tensor cores (blocks padded {r}x{c} -> {r_pad}x{c_pad}, {r * c / (r_pad * c_pad):.0%} of each MMA used, "
             f"{r_pad}-row tiles at {rows_fill:.0%} of a {p.gemm_tile_m:g}-row GEMM tile's rate)"
             if on_tc else "CUDA cores (blocks too small for tensor cores)")
    why = (f"BSR {r}x{c}: {nb} of {total_blocks} blocks nonzero ({nb / max(total_blocks, 1):.2g}) on {where}: "
           f"compute {compute * 1e6:.3g} us, memory {memory * 1e6:.3g} us"
           + (f"; {host_text(env, host)}" if host > 0 else ""))
    return build_cost(
        device=device, model=MODEL, compute_s=compute, memory_s=memory, overhead_s=env.launch,
        energy=gpu_energy(p, tc_macs if on_tc else exact_macs, unit.dtype if on_tc else "fp32", dram, l2,
                          metadata=meta),
        kernel=f"bsr {r}x{c}" + (" tensor core" if on_tc else " cuda core"), why=why,
        flops_executed=2.0 * exact_macs, peak_flops=unit.peak if on_tc else p.cuda_core_peak,
        memory_bytes=values + meta, metadata_bytes=meta,
        details={"nonzero_blocks": float(nb), "tensor_core_s": tc_s, "cuda_core_s": cc_s, "host_s": host,
                 "precision": precision_id(unit.dtype if on_tc or not unit.note else activation_dtype(work.dtype))},
    )


def _teal(op: Op, work: GemmWork, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost | str:
    """Activation-sparse GEMV as TEAL runs it (Liu et al. 2024, "Training-Free Activation Sparsity
    in Large Language Models"; its Triton kernel in gpt-fast): the input is thresholded to zeros
    and the weight is stored input-channel major, so the kernel reads only the weight rows of the
    input channels some row of the batch keeps (`active_input_fraction`) and multiplies them on
    CUDA cores. In memory-bound decode that is the gain; as the batch grows the union of kept
    channels nears all of them and the CUDA cores fall behind the tensor cores, so the runtime
    keeps cuBLAS."""
    if not skippable_inputs(op, layer):
        return "skips zero input activations only (the plan sets none)"
    if op.kind != "linear" or op.weight is None:
        return f"runs linear layers only ({op.kind})"
    if work.dtype in WEIGHT_ONLY_DTYPES or work.dtype_bytes < 2:
        return f"reads a 16/32-bit weight, not {work.dtype}"
    p: GpuParams = device.params
    if p.teal_efficiency <= 0:
        return "the device file gives no teal_efficiency"
    g = work.gemms[0]
    rows = g.m * g.batch
    active = active_input_fraction(op.activation_density, rows)
    macs = float(rows) * g.n * g.k * active
    # CUDA-core multiply-adds with the rows' accumulators in registers; the rate matters only as
    # the batch grows (a one-row GEMV is memory-bound)
    compute = 2.0 * macs / (p.cuda_core_peak * p.teal_efficiency)
    weight = work.w_bytes * active
    dram = work.a_bytes + weight + work.c_bytes
    memory = memory_s(p, dram, dram)
    lead = "memory" if memory > compute else "compute"
    why = (f"teal: activation-sparse GEMV, {1.0 - op.activation_density:.0%} of each row's inputs zero, "
           f"{active:.0%} of the {g.k} input channels needed by the {rows} row(s): reads {weight / 1e6:.3g} of "
           f"{work.w_bytes / 1e6:.3g} MB of weight, CUDA cores; {lead}-bound (compute {compute * 1e6:.3g} us, "
           f"memory {memory * 1e6:.3g} us)")
    return build_cost(
        device=device, model=MODEL, compute_s=compute, memory_s=memory, overhead_s=env.launch,
        energy=gpu_energy(p, macs, "fp32", dram, dram),
        kernel="teal (activation-sparse gemv)", why=why, flops_executed=2.0 * macs, peak_flops=p.cuda_core_peak,
        memory_bytes=work.w_bytes, metadata_bytes=0.0,
        details={"active_inputs": active, "activation_density_used": op.activation_density,
                 "precision": precision_id(activation_dtype(work.dtype))},
    )


KERNELS: dict[str, GpuKernel] = {k.name: k for k in (
    GpuKernel("cublas", ("dense", "act"), _cublas, "cuBLAS/cuBLASLt dense tensor-core GEMM"),
    GpuKernel("marlin", ("dense", "act"), _marlin, "Marlin int4 weight-only GEMM", dtypes=(INT4,),
              runs="Marlin runs int4 weight-only GEMMs"),
    GpuKernel("int8wo", ("dense", "act"), _int8_weight_only,
              "int8 weight-only GEMM: the int8 weight converted to 16 bits in the GEMM's loads (fused) or first",
              dtypes=(INT8_WEIGHT_ONLY,), runs="runs int8 weight-only GEMMs"),
    GpuKernel("tinygemm", ("dense", "act"), _tinygemm,
              "torch's tinygemm int4 weight-only GEMM (bf16 scale + zero per group)", dtypes=(INT4,), runs="tinygemm runs int4 weight-only GEMMs"),
    GpuKernel("teal", ("act",), _teal, "TEAL activation-sparse GEMV (weight rows of kept input channels only)"),
    GpuKernel("cusparselt", ("nm",), _cusparselt, "cuSPARSELt 2:4, fused transpose, split-K under search"),
    GpuKernel("cutlass-24", ("nm",), _cutlass24, "torch's CUTLASS 2:4 kernel, result copied out"),
    GpuKernel("sparse-marlin", ("nm",), _sparse_marlin, "Sparse-Marlin int4 2:4", dtypes=(INT4,),
              runs="Sparse-Marlin runs int4 weight-only 2:4 GEMMs"),
    GpuKernel("spatha", ("vnm",), _spatha, "Spatha V:N:M on 2:4 sparse tensor cores (VENOM)"),
    GpuKernel("sputnik", ("unstructured",), _sputnik, "Sputnik-like CSR SpMM on CUDA cores"),
    GpuKernel("cusparse-csr", ("unstructured",), _cusparse_csr, "cuSPARSE CSR SpMM (torch.sparse CSR)"),
    GpuKernel("flash-llm", ("unstructured",), _flash_llm, "Flash-LLM tensor-core unstructured SpMM"),
    GpuKernel("bsr", ("block",), _bsr, "BSR SpMM on tensor or CUDA cores"),
)}
