"""Marlin's striped partition: why a few-token int4 GEMM does not stream at the DRAM rate.

Marlin and Sparse-Marlin (Frantar, Castro et al.; the kernels torchao and vLLM ship, read from
vLLM 0.9.2 `csrc/quantization/marlin/dense/marlin_cuda_kernel.cu` and
`csrc/quantization/marlin/sparse/marlin_24_cuda_kernel.cu`) launch one thread block per SM. The
K x N weight is cut into tiles of `tile_k` x `tile_n`; taken column slice by column slice (all of
K for `tile_n` outputs), the tiles are dealt out in equal consecutive runs ("stripes") of `iters`
tiles, one per block, so a column slice is usually shared by several blocks. Those blocks then sum
their partial outputs one after another in L2: each waits on a lock for its predecessor, reads the
partial sums, adds its own, writes them and releases the lock (`barrier_acquire`,
`global_reduce`, `barrier_release`). That chain runs after the stripes have streamed, so it adds
to the kernel's time; a narrow layer (few column slices) is shared by many blocks and waits most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparsesim.cost.common import ceil_div

# thread configurations as (tile_k, tile_n), in the order the kernels try them: the first whose
# tile divides K and N runs (the dense kernel's small_batch_thread_configs and
# large_batch_thread_configs; marlin_cuda_2_4 has one per batch size and requires it). Up to 16
# tokens count as a small batch. A tile holds at most 4 blocks of 16 tokens; more tokens run
# `parallel` copies of the partition side by side (at most MAX_PARALLEL, more in further launches)
SMALL_BATCH_TOKENS = 16
DENSE_CONFIGS = {True: ((128, 128), (128, 64), (64, 256), (64, 128)),
                 False: ((64, 256), (128, 128), (64, 128), (128, 64))}
SPARSE_CONFIGS = {True: ((128, 128),), False: ((64, 256),)}
TOKENS_PER_TILE = 64
MAX_PARALLEL = 16
# K per "k block" of the tile: 16 for the dense kernel's m16n8k16 MMA, 32 for the sparse kernel's
# m16n8k32 sparse MMA; a stripe is rounded up to whole quantisation groups (group_size / 16 k
# blocks of 16) so that no stripe starts inside a group
GROUP_K_BLOCK = 16
# 4-bit weights (the kernels' int4 path; vLLM also builds 8-bit ones, not modelled here)
WEIGHT_BITS = 4
# 256 threads a block (marlin_24_cuda_kernel.cu THREADS; the dense kernel's 128-wide and 256-wide
# configurations; its 64-wide ones run 128). One block per SM at most, so this only enters the
# residency check of `latency_bound_bandwidth`
WARPS = 8
# the kernels' 4-stage cp.async pipeline keeps `STAGES - 2` tiles in flight ("we are double
# buffering", the kernel's own comment)
STAGES = 4
# L2 round trips per hand-off in the reduction chain: the lock's acquire load sees the
# predecessor's release, the partial sums are loaded, and the fence before the release waits
# for this block's writes to reach L2
REDUCE_L2_ROUND_TRIPS = 3
# one int32 lock per column slice in the kernels' workspace
LOCK_BYTES = 4


@dataclass(frozen=True)
class Stripes:
    """How one Marlin call spreads a GEMM over the SMs."""

    tile_m: int        # tokens per tile
    tile_n: int        # outputs per column slice
    tile_k: int        # K per tile
    iters: int         # tiles per stripe (one stripe per block)
    blocks: int        # blocks with a stripe (at most the SMs)
    chain: int         # most blocks sharing one column slice: chain - 1 serial reductions
    launches: int      # kernel launches (more tokens than MAX_PARALLEL copies take)

    @property
    def reductions(self) -> int:
        return max(self.chain - 1, 0)


def config(tokens: int, n: int, k: int, *, sparse: bool, group_size: int) -> tuple[int, int] | str:
    """(tile_k, tile_n) the kernel runs for this shape, or why it cannot run it (its TORCH_CHECKs:
    the tile must divide K and N, the quantisation group must divide K)."""
    if group_size > 0 and k % group_size:
        return f"K = {k} is not a multiple of the quantisation group ({group_size})"
    configs = (SPARSE_CONFIGS if sparse else DENSE_CONFIGS)[tokens <= SMALL_BATCH_TOKENS]
    for tile_k, tile_n in configs:
        if k % tile_k == 0 and n % tile_n == 0:
            return tile_k, tile_n
    tiles = " or ".join(f"{tk} x {tn}" for tk, tn in configs)
    return f"{'Sparse-Marlin' if sparse else 'Marlin'} tiles K x N in {tiles}: {k} x {n} does not divide"


def workspace_bytes(n: int) -> int:
    """Bytes of the lock workspace a Marlin call over `n` outputs takes: an int32 lock per column
    slice of the narrowest tile for each of the MAX_PARALLEL copies (vLLM's and torchao's
    marlin_24_workspace: (n / min_thread_n) x max_parallel ints, min_thread_n 128)."""
    narrowest = min(tile_n for configs in SPARSE_CONFIGS.values() for _, tile_n in configs)
    return ceil_div(n, narrowest) * MAX_PARALLEL * LOCK_BYTES


def padded_shape(n: int, k: int, *, group_size: int) -> tuple[int, int]:
    """(N, K) of a dense layer padded with zeros to the narrowest configuration both batch sizes'
    lists hold (128 x 64), its K also to whole quantisation groups: the smallest shape at least
    (n, k) the dense kernel runs for any number of tokens. An engine that pads its layers' channels
    (`pads_channels`) stores a layer the kernel's checks refuse this way rather than at 16 bits."""
    tile_k, tile_n = min(set(DENSE_CONFIGS[True]) & set(DENSE_CONFIGS[False]), key=lambda t: (t[1], t[0]))
    k_multiple = math.lcm(tile_k, group_size) if group_size > 0 else tile_k
    return ceil_div(n, tile_n) * tile_n, ceil_div(k, k_multiple) * k_multiple


def stripes(tokens: int, n: int, k: int, sms: int, *, sparse: bool, group_size: int,
            tile: tuple[int, int] | None = None) -> Stripes:
    """The partition `marlin_cuda` / `marlin_cuda_2_4` make for `tokens` x `n` outputs over `k`
    with the (tile_k, tile_n) `config` picks (a shape it rejects is partitioned with the first)."""
    if tile is None:
        picked = config(tokens, n, k, sparse=sparse, group_size=group_size)
        tile = picked if isinstance(picked, tuple) else \
            (SPARSE_CONFIGS if sparse else DENSE_CONFIGS)[tokens <= SMALL_BATCH_TOKENS][0]
    tile_k, tile_n = tile
    tile_m = min(TOKENS_PER_TILE, ceil_div(max(tokens, 1), 16) * 16)
    chunks = ceil_div(max(tokens, 1), TOKENS_PER_TILE)
    parallel = min(chunks, MAX_PARALLEL)
    k_tiles = ceil_div(max(k, 1), tile_k)
    columns = ceil_div(max(n, 1), tile_n) * parallel
    thread_k_blocks = tile_k // (2 * GROUP_K_BLOCK if sparse else GROUP_K_BLOCK)
    align = max(1, group_size // GROUP_K_BLOCK // thread_k_blocks) if group_size > 0 else 1
    iters = ceil_div(ceil_div(k_tiles * columns, max(sms, 1)), align) * align
    blocks = ceil_div(k_tiles * columns, iters)
    # the stripes repeat every `iters` columns at most: the longest chain is among the first ones
    chain = max(((c * k_tiles + k_tiles - 1) // iters) - (c * k_tiles) // iters + 1
                for c in range(min(columns, iters)))
    return Stripes(tile_m, tile_n, tile_k, iters, blocks, chain, ceil_div(chunks, MAX_PARALLEL))


def partition(tokens: int, n: int, k: int, sms: int, *, sparse: bool, group_size: int) -> Stripes | str:
    """The stripes of the configuration the kernel picks, or why it cannot run the shape."""
    tile = config(tokens, n, k, sparse=sparse, group_size=group_size)
    if isinstance(tile, str):
        return tile
    return stripes(tokens, n, k, sms, sparse=sparse, group_size=group_size, tile=tile)


def compute_s(s: Stripes, tile_rate: float) -> float:
    """Math time: every block runs its stripe of `iters` tiles at `tile_rate` FLOP/s (an SM's
    share of the tensor rate), the longest stripe setting the time, in each launch."""
    return s.launches * s.iters * 2.0 * s.tile_m * s.tile_n * s.tile_k / tile_rate if tile_rate > 0 else float("inf")


def reduction_s(s: Stripes, l2_latency: float) -> float:
    """Time of the serial reduction chain that follows the stripes."""
    return s.reductions * REDUCE_L2_ROUND_TRIPS * l2_latency


def stage_bytes(s: Stripes, *, sparse: bool, group_size: int, scale_bytes: float) -> float:
    """Weight bytes (values, 2:4 metadata, group scales) one pipeline stage of a block loads."""
    elems = s.tile_k * s.tile_n
    values = elems * WEIGHT_BITS / 8 / (2 if sparse else 1)
    meta = elems / 2 * 2 / 8 if sparse else 0.0      # 2 bits per kept value
    scales = s.tile_n * scale_bytes * s.tile_k / group_size if group_size > 0 else 0.0
    return values + meta + scales


def in_flight_bytes(s: Stripes, *, sparse: bool, group_size: int, scale_bytes: float) -> float:
    """Bytes a block keeps on their way from DRAM (Little's law with `latency_bound_bandwidth`)."""
    return (STAGES - 2) * stage_bytes(s, sparse=sparse, group_size=group_size, scale_bytes=scale_bytes)


def describe_stripes(s: Stripes, sms: int, seconds: float) -> str:
    share = f"{s.blocks} of {sms} SMs stream stripes of {s.iters} tiles ({s.tile_k}x{s.tile_n})"
    if s.reductions:
        share += (f"; up to {s.chain} blocks share a column slice: {s.reductions} serial reduction(s) in L2 "
                  f"(+{seconds * 1e6:.3g} us)")
    if s.launches > 1:
        share += f"; {s.launches} launches"
    return "Marlin stripes: " + share
