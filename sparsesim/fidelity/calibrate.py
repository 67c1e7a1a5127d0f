"""Fit the CPU family's parameters to real kernel timings on this host and write a device file.

What is measured (sparsesim.fidelity.measure) and what is fitted (scipy.optimize.least_squares on the
log of latency, through the normal cost path `estimate_op`):

- measured: clock, vector width and native dtypes (/proc/cpuinfo), cache sizes (sysfs), L2/L3
  copy bandwidth, the L3 share one core really gets (copies at growing footprints), the DRAM
  bandwidth a weight streams at (a GEMV over a weight of 4x the L3), per-call overhead;
- chosen by the dense fit: whether the BLAS packs its weight per call in a pass of its own
  (`weight_pack_pass`; shows on the beyond-LLC weights of the fit set);
- fitted per dtype on dense GEMMs: `gemm_efficiency`, `gemm_half_m`; for fp32, also timed at M
  that is no multiple of 4 (FIT_DENSE_TAIL_M), the rows of the register tile along M
  (`gemm_tile_m`, the candidate with the lowest error) and the share of a full tile's time each
  narrower tile over the rows left over takes (`gemm_tail_cost`), both read off each shape's own
  timings before `gemm_efficiency` and `gemm_half_m` are fitted with them;
- fitted on torch CSR matmuls: `sparse_nnz_cycles`, `sparse_vector_cycles`, `sparse_row_cycles`,
  `sparse_call_overhead`; on torch BSR matmuls: `bsr_row_cycles` (its output pass), and
  `bsr_value_cycles` and
  `bsr_vector_cycles` per block shape (FIT_BSR_M spans 4 to 256 so the per-value cost that does
  not grow with M and the vector steps that do are told apart); at M that is not a multiple of 8
  (FIT_BSR_LEFTOVER_M), how many M columns one BSR vector step covers (`bsr_vector_columns`,
  the candidate width with the lowest error) and what each column left over costs
  (`bsr_column_cycles`).

The FIT set of shapes below is disjoint from validate's (sparsesim.fidelity.validate.VALIDATE_*): a model is
judged on shapes it was not fitted to. Energy figures and the FMA port count cannot be measured
with timers; they are copied, with their sources, from a reference device file.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from scipy.optimize import least_squares

from sparsesim.core import atomic
from sparsesim.core.errors import SparsesimError
from sparsesim.core.ir import DTYPE_BYTES, GemmShape, Op
from sparsesim.core.packaged import user_device_dir
from sparsesim.cost import estimate_op
from sparsesim.fidelity import measure
from sparsesim.hw.devices import Device, load_device, parse_device_file
from sparsesim.sparsity.records import LayerSparsity, Pattern

HOST_NAME = "host"  # the calibrated device's name: found by it like a built-in device


def default_out() -> Path:
    """Where `calibrate` writes by default: the user config directory, so a wheel install works
    and `--device host` finds it from any directory."""
    return user_device_dir() / f"{HOST_NAME}.toml"
# reference device whose energy figures and FMA-port count the host file borrows (with sources)
REFERENCE_X86 = "xeon-sapphire-rapids"
REFERENCE_ARM = "arm-cortex-a78"

# ---- the FIT set (validate uses different N x K and M; see sparsesim.fidelity.validate) -------------
# M spans the GEMV (1), under-filled-vector (4), one-vector (16) and wide regimes.
FIT_NK = ((512, 512), (1024, 1024), (2048, 512), (512, 2048))
FIT_M = (1, 16, 64, 256)
FIT_INT8_M = (24, 64, 256)          # torch._int_mm needs M > 16
FIT_CSR_NK = ((512, 512), (1024, 1024), (2048, 512))
# 24-72 besides the regimes: a CSR kernel that keeps up to 32 columns of an output row in registers
# runs 24 in one walk and 33, 40, 50, 56, 72 in three to five 16-column passes, the last one
# narrow for some (widths of 8 or 64 split them otherwise), so the register width and the pass
# width can be read off them (validate's 49 is not among them)
FIT_CSR_M = (1, 4, 16, 24, 33, 40, 50, 56, 64, 72, 256)
FIT_DENSITIES = (0.01, 0.05, 0.1, 0.2, 0.5)
FIT_BSR_NK = ((512, 512), (1024, 1024))
FIT_BSR_M = (4, 16, 64, 256)
FIT_BLOCKS = (2, 4, 8, 16)
FIT_BSR_DENSITIES = (0.02, 0.1, 0.3)
# M that is no multiple of 8 (nor of 4, nor of 2 for some): the columns a BSR vector step leaves
# over (M mod 1, 2, 4 or 8 columns) differ between these, so the step's width and the leftover
# column's cost can be read off them
FIT_BSR_LEFTOVER_M = (5, 10, 23, 37)
# dense fp32 at M that is no multiple of 4 (M mod 4 = 1, 2, 3, 1; mod 8 = 5, 2, 7, 5): the rows a
# register tile along M leaves over differ between these, so the tile's rows and what each narrower
# tile over the rest costs can be read off them (validate's 6, 13, 49 are not among them)
FIT_DENSE_TAIL_M = (5, 10, 23, 37)
# weights beyond the last-level cache (32 MB fp32): the dense GEMM then streams its weight from DRAM
FIT_BEYOND_LLC_NK = ((4096, 2048),)
FIT_BEYOND_LLC_M = (1, 2, 3, 4, 16, 64)

# --quick (CI): part of the FIT shapes, fewer densities, block sizes and repeats
QUICK_DENSITIES = (0.01, 0.05, 0.2, 0.5)
QUICK_BSR_DENSITIES = (0.02, 0.2)
QUICK_BLOCKS = (4, 16)
REPEATS_FULL, REPEATS_QUICK = 9, 3
K = TypeVar("K")  # a candidate calibrate fits the model at (a width, a pair of widths)
# used only where Linux does not report them (then the device file says "assumed"): typical
# per-core L1/L2 and a shared L3 of a current server core; the clock is raised by
# `effective_clock` from the measured GEMM rate anyway
FALLBACK_CACHE_BYTES = {"l1": 32 * 1024, "l2": 512 * 1024, "l3": 8 * 1024 * 1024}
FALLBACK_CLOCK_HZ = 2.0e9


@dataclass(frozen=True)
class Case:
    """One timed kernel: what ran (kind dense|csr|bsr, dtype, M x N x K, density, block) and
    its median seconds. `layer` is the sparsity record built from the mask that was timed."""

    kind: str
    dtype: str
    m: int
    n: int
    k: int
    density: float
    block: int
    seconds: float
    layer: LayerSparsity | None = field(default=None, compare=False, repr=False)

    def op(self) -> Op:
        return gemm_op(self.m, self.n, self.k, self.dtype)


def gemm_op(m: int, n: int, k: int, dtype: str = "fp32", name: str = "probe") -> Op:
    """A linear-layer Op with a N x K weight, for probing the cost model with one GEMM."""
    db = DTYPE_BYTES[dtype]
    return Op(
        index=0, kind="linear", aten="aten.linear.default", module=name, call_index=0, dtype=dtype,
        input_shapes=((m, k), (n, k)), output_shape=(m, n), flops=2 * m * n * k,
        bytes_moved=int((m * k + n * k + m * n) * db), gemm=GemmShape(m=m, n=n, k=k),
        weight=f"{name}.weight", weight_shape=(n, k),
    )


def layer_for(mask: torch.Tensor, pattern: Pattern, dtype: str, weight: str = "probe.weight") -> LayerSparsity:
    """The LayerSparsity of a real mask, as a plan would record it (stats + default format)."""
    from sparsesim.sparsity.formats import default_format, format_bytes
    from sparsesim.sparsity.stats import measure_stats

    st = measure_stats(mask, pattern=pattern)
    fmt = default_format(pattern)
    size = format_bytes(fmt, st, value_bytes=DTYPE_BYTES[dtype], pattern=pattern)
    return LayerSparsity(weight, pattern, st, fmt, int(size.total), int(size.values), int(size.metadata))


def sparse_pattern(kind: str, density: float, block: int = 1) -> Pattern:
    if kind == "csr":
        return Pattern("unstructured", density)
    if kind == "bsr":
        return Pattern("block", density, block=(block, block))
    if kind == "channel":
        return Pattern("channel", density)
    raise ValueError(kind)


# ----------------------------------------------------------------------------- measuring

@dataclass(frozen=True)
class HostFacts:
    model: str
    clock_hz: float
    vector_bits: int
    native_dtypes: tuple[str, ...]
    caches: dict
    threads: int
    l2_bw: float
    l3_bw: float
    dram_bw: float
    call_overhead_s: float
    date: str
    nominal_hz: float = 0.0
    assumed_caches: tuple[str, ...] = ()
    memory_bytes: float = 0.0  # physical RAM (0: the OS does not say)
    sysfs_l3: int = 0  # the L3 size Linux reports (caches["l3"] is the capacity copies measure)
    gemv_rows_max: int = 1  # the most activation rows the BLAS runs as one GEMV per row
    weight_pack_pass: bool = False
    pack_errors: tuple[float, float] = (0.0, 0.0)  # dense fit error (with, without) the pack pass
    llc_edge: tuple[float, float, float] = (0.0, 0.0, 0.0)  # llc_full_bytes, llc_none_bytes, fit error
    bsr_columns: ColumnFit | None = None  # the BSR vector step's width and the errors of the widths tried
    csr_passes: PassFit | None = None  # the CSR kernel's register and pass widths, the errors of those tried
    gemm_tiles: dict[str, TileFit] = field(default_factory=dict)  # per dtype: the dense tile kept, errors
    function_s: dict[str, float] = field(default_factory=dict)  # seconds per element of each function
    function_elements: int = 0  # the smaller of the two sizes the functions were timed at


# footprints, in effective LLCs, a GEMV's weight stream is timed at to find the LLC's soft edge
LLC_EDGE_FOOTPRINTS = (0.25, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)


def fit_llc_edge(shares: Sequence[tuple[float, float]], llc: float) -> tuple[float, float, float]:
    """(llc_full_bytes, llc_none_bytes, rms error) of the linear ramp of the LLC's share over the
    footprint that best fits the measured (footprint, share) points; the ramp must hold the
    effective LLC (`llc`) inside it. A grid in eighths of `llc`: two parameters, seven points."""
    best = (llc, llc, math.inf)
    steps = [i / 8 for i in range(1, 65)]
    for lo in (f * llc for f in steps if f <= 1.0):
        for hi in (f * llc for f in steps if f >= 1.0 and f * llc > lo):
            err = math.sqrt(sum((min(1.0, max(0.0, (hi - w) / (hi - lo))) - h) ** 2 for w, h in shares) / len(shares))
            if err < best[2] - 1e-12:
                best = (lo, hi, err)
    return best


def measure_llc_edge(llc: float, dram_bw: float, *, repeats: int) -> tuple[float, float, float]:
    """Time a GEMV's weight stream at `LLC_EDGE_FOOTPRINTS` x the effective LLC; each rate gives
    the share of the stream the LLC served (1 at the in-cache rate of the smallest, 0 at the
    DRAM rate measured beyond 4x the sysfs L3), and a ramp is fitted to the shares."""
    rates = [(f * llc, measure.read_bandwidth(int(f * llc), repeats=repeats)) for f in LLC_EDGE_FOOTPRINTS]
    cached = rates[0][1]
    if cached <= dram_bw * 1.05:  # no measurable LLC rate: keep a hard edge
        return (0.0, 0.0, 0.0)
    shares = [(w, min(1.0, max(0.0, (1 / bw - 1 / dram_bw) / (1 / cached - 1 / dram_bw)))) for w, bw in rates]
    return fit_llc_edge(shares, llc)


def physical_memory() -> float:
    """The host's physical RAM in bytes, as the OS reports it (0.0 where it does not)."""
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0.0


def host_facts(threads: int, *, quick: bool) -> HostFacts:
    info = measure.cpu_info()
    flags = set(info["flags"])
    vbits = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    native = ["fp32"]
    if measure.bf16_supported() and ({"avx512_bf16", "amx_bf16"} & flags or "bf16" in flags):
        native.append("bf16")
    if {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"} & flags:
        native.append("int8")
    if {"avx512_fp16", "fphp", "asimdhp"} & flags:
        native.append("fp16")
    caches = dict(info["caches"])
    assumed = tuple(level for level in FALLBACK_CACHE_BYTES if level not in caches)
    for level in assumed:
        caches[level] = FALLBACK_CACHE_BYTES[level]
    reps = REPEATS_QUICK if quick else REPEATS_FULL
    # copies: both arrays inside L2, inside L3 (but not L2); a GEMV's weight stream 4x beyond L3
    # (weights beyond the cache are read, not copied)
    l2_bw = measure.copy_bandwidth(caches["l2"] // 4, repeats=reps)
    l3_bw = measure.copy_bandwidth(max(caches["l3"] // 8, caches["l2"] * 2), repeats=reps)
    dram_bw = measure.read_bandwidth(caches["l3"] * 4, repeats=max(2, reps // 2))
    sysfs_l3 = caches["l3"]
    if "l3" not in assumed:
        caches["l3"] = measure.effective_llc_bytes(caches["l3"], l3_bw, dram_bw, floor=caches["l2"],
                                                   repeats=max(2, reps // 2))
    edge = measure_llc_edge(float(caches["l3"]), dram_bw, repeats=max(2, reps // 2)) if "l3" not in assumed \
        else (0.0, 0.0, 0.0)
    # both sizes inside L2 (4 x elements of input and output: half of it)
    elements = measure.function_elements(caches["l2"] // (4 * 4 * 2 * 4))
    function_s = {name: measure.function_seconds(name, elements, repeats=reps) for name in measure.FUNCTIONS}
    return HostFacts(
        model=str(info["model"]), clock_hz=float(info["mhz"]) * 1e6 or FALLBACK_CLOCK_HZ, vector_bits=vbits,
        native_dtypes=tuple(native), caches=caches, threads=threads, l2_bw=l2_bw, l3_bw=l3_bw,
        dram_bw=dram_bw, call_overhead_s=measure.call_overhead(repeats=reps),
        date=_dt.date.today().isoformat(), nominal_hz=float(info["mhz"]) * 1e6, assumed_caches=assumed,
        memory_bytes=physical_memory(), sysfs_l3=sysfs_l3, llc_edge=edge, function_s=function_s,
        function_elements=elements,
    )


def gemv_rows_max(dense: Sequence[Case]) -> int:
    """The most activation rows the BLAS runs as one GEMV per row, read off the beyond-LLC
    timings: rows 2, 3, ... while each adds about a whole one-row time (at least m - 0.5 times
    it), where a packed GEMM would add far less; 1 when the timings do not show it."""
    beyond = {c.m: c.seconds for c in dense if (c.n, c.k) in FIT_BEYOND_LLC_NK and c.dtype == "fp32"}
    one = beyond.get(1)
    rows = 1
    while one and (rows + 1) in beyond and beyond[rows + 1] >= (rows + 0.5) * one:
        rows += 1
    return rows


def effective_clock(device: Device, dense: Sequence[Case]) -> float:
    """The clock the vector units really run at: /proc/cpuinfo reports a nominal figure that
    boost clocks exceed, so take the larger of it and the clock implied by the fastest dense
    GEMM measured (FLOP/s / (2 x lanes x FMA ports)) — no dtype may then exceed its peak."""
    from sparsesim.cost.families.cpu import lanes

    p = device.params
    best = p.clock
    for c in dense:
        rate = 2 * c.m * c.n * c.k / c.seconds
        best = max(best, rate / (2 * lanes(p, c.dtype) * p.fma_ports * p.cores))
    return best


def time_dense_cases(nks: Sequence[tuple[int, int]], ms: Sequence[int], dtypes: Sequence[str],
                     *, repeats: int) -> list[Case]:
    out = []
    for dt in dtypes:
        for n, k in nks:
            for m in (FIT_INT8_M if dt == "int8" else ms):
                t = measure.dense_linear(m, n, k, dt, repeats=repeats)
                out.append(Case("dense", dt, m, n, k, 1.0, 1, t.median_s))
    return out


def time_sparse_cases(kind: str, nks: Sequence[tuple[int, int]], ms: Sequence[int],
                      densities: Sequence[float], blocks: Sequence[int], *, repeats: int,
                      seed: int = 0) -> list[Case]:
    """Time CSR (kind="csr", blocks=(1,)) or BSR kernels on random masks; attach each mask's
    LayerSparsity so the model is fed exactly what was timed."""
    out = []
    for n, k in nks:
        w = measure.random_weight(n, k, seed=seed)
        for b in blocks:
            for d in densities:
                mask = measure.random_mask(n, k, d, block=(b, b), seed=seed + int(d * 1e4) + b)
                layer = layer_for(mask, sparse_pattern(kind, d, b), "fp32")
                ws = w * mask
                for m in ms:
                    t = measure.sparse_matmul(ws, m, kind, block=b, repeats=repeats)
                    out.append(Case(kind, "fp32", m, n, k, d, b, t.median_s, layer))
    return out


# ----------------------------------------------------------------------------- the device

def with_params(device: Device, **changes: Any) -> Device:
    """The same device with some parameters replaced (used to evaluate candidate fits)."""
    return dataclasses.replace(device, params=dataclasses.replace(device.params, **changes))


def predict(case: Case, device: Device) -> float:
    return estimate_op(case.op(), case.layer, device).latency_s


def rel_errors(cases: Sequence[Case], device: Device) -> np.ndarray:
    return np.array([predict(c, device) / c.seconds - 1.0 for c in cases])


def _fit(cases: Sequence[Case], device: Device, names: Sequence[str], x0: Sequence[float],
         build: Callable[[Device, np.ndarray], Device]) -> tuple[Device, float, dict[str, float]]:
    """least_squares on log(predicted / measured) over positive parameters (fitted in log space)."""
    meas = np.log([c.seconds for c in cases])

    def resid(logx: np.ndarray) -> np.ndarray:
        dev = build(device, np.exp(logx))
        return np.log([predict(c, dev) for c in cases]) - meas

    res = least_squares(resid, np.log(np.asarray(x0, dtype=float)), method="trf", loss="soft_l1", f_scale=0.1)
    fitted = build(device, np.exp(res.x))
    err = float(np.median(np.abs(rel_errors(cases, fitted))))
    return fitted, err, dict(zip(names, np.exp(res.x).tolist()))


@dataclass(frozen=True)
class TileFit:
    """The dense GEMM's register tile along M that calibrate kept for a dtype (0: none), the share
    of a full tile's time each tail tile takes, and the mean |rows read / rows predicted - 1| over
    the tail cases of every tile tried (0: M rows take M rows' time)."""

    tile: int
    tail_cost: float
    mean_errors: dict[int, float]

    @property
    def error(self) -> float:
        return self.mean_errors[self.tile]


def fit_dense_dtype(cases: Sequence[Case], device: Device, dt: str) -> tuple[Device, float]:
    """One dtype's GEMM efficiency and M at half efficiency (its register tile, if any, kept)."""

    def build(dev: Device, x: np.ndarray) -> Device:
        p = dev.params
        eff = dict(p.gemm_efficiency, **{dt: float(min(x[0], 1.0))})
        half = dict(p.gemm_half_m, **{dt: float(x[1])})
        return with_params(dev, gemm_efficiency=eff, gemm_half_m=half)

    device, err, _ = _fit(cases, device, ("eff", "half_m"), (0.5, 4.0), build)
    return device, err


def with_tile(device: Device, dt: str, tile: int, tail_cost: float) -> Device:
    """The device with `dt`'s dense register tile set (tile 0: removed)."""
    p = device.params
    tiles = {k: v for k, v in p.gemm_tile_m.items() if k != dt}
    tails = {k: v for k, v in p.gemm_tail_cost.items() if k != dt}
    if tile:
        tiles[dt], tails[dt] = float(tile), float(tail_cost)
    return with_params(device, gemm_tile_m=tiles, gemm_tail_cost=tails)


def tail_rows(cases: Sequence[Case], refs: Sequence[int]) -> list[tuple[int, float]]:
    """(M, rows' worth of time) of each case at FIT_DENSE_TAIL_M, read against its own shape's line
    through the timings at `refs` (M that fills whole tiles of every candidate): the shape's fixed
    cost (call, weight packing, whatever the cost model gets right or wrong about it) cancels."""
    by_shape: dict[tuple[int, int], dict[int, float]] = {}
    for c in cases:
        by_shape.setdefault((c.n, c.k), {})[c.m] = c.seconds
    out = []
    for t in by_shape.values():
        if not all(m in t for m in refs):
            continue
        (m0, t0), (m1, t1) = (refs[0], t[refs[0]]), (refs[1], t[refs[1]])
        per_row = (t1 - t0) / (m1 - m0)
        if per_row <= 0:
            continue
        fixed = t0 - m0 * per_row
        out += [(m, (t[m] - fixed) / per_row) for m in FIT_DENSE_TAIL_M if m in t]
    return out


def read_gemm_tile(cases: Sequence[Case], device: Device, dt: str) -> TileFit | None:
    """The dense register tile along M and its tail tiles' cost, read off the timings: per shape,
    the rows' worth of time each tail M takes (`tail_rows`); per candidate tile, the tail cost that
    best predicts them through `gemm_rows` (least_squares); the candidate with the lowest mean
    |pred/read - 1| is kept. None where the timings hold no tail M with its reference M."""
    from sparsesim.cost.families.cpu import gemm_rows

    candidates = column_candidates(device)
    widest = max(candidates)
    refs = [m for m in FIT_M if m > 1 and m % widest == 0][:2]
    read = tail_rows(cases, refs) if len(refs) == 2 else []
    if not read:
        return None
    ms = np.array([m for m, _ in read])
    rows = np.array([r for _, r in read])
    errors: dict[int, float] = {}
    tails: dict[int, float] = {}
    for tile in candidates:
        if not tile:
            errors[0] = float(np.mean(np.abs(ms / rows - 1.0)))
            continue

        def resid(x: np.ndarray, tile: int = tile) -> np.ndarray:
            p = with_tile(device, dt, tile, float(x[0])).params
            return np.array([gemm_rows(p, dt, int(m)).rows for m in ms]) / rows - 1.0

        res = least_squares(resid, [0.5], bounds=([1e-3], [1.0]))
        tails[tile] = float(res.x[0])
        errors[tile] = float(np.mean(np.abs(resid(res.x))))
    best = min(errors, key=lambda t: (round(errors[t], 6), t))
    tile, tail = best, tails.get(best, 0.0)
    # a tile whose half-wide tail tile takes no more than its own rows is the half-wide tile (whose
    # tails then take twice the share of its time): the same costs at every M, so the narrower is kept
    while tile > 2 and tail * tile <= tile / 2:
        tile, tail = tile // 2, tail * 2
    return TileFit(tile, tail, errors)


def fit_dense(cases: Sequence[Case], device: Device) -> tuple[Device, dict[str, float], dict[str, TileFit]]:
    """Per dtype: the GEMM efficiency and the M at half efficiency; where the dtype was timed at
    FIT_DENSE_TAIL_M, also its register tile along M and the tail tiles' cost."""
    errors: dict[str, float] = {}
    tiles: dict[str, TileFit] = {}
    for dt in sorted({c.dtype for c in cases}):
        sub = [c for c in cases if c.dtype == dt]
        tile = read_gemm_tile(sub, device, dt) if any(c.m in FIT_DENSE_TAIL_M for c in sub) else None
        if tile is not None:
            device = with_tile(device, dt, tile.tile, tile.tail_cost)
            tiles[dt] = tile
        device, errors[dt] = fit_dense_dtype(sub, device, dt)
    return device, errors, tiles


def fit_dense_pack(cases: Sequence[Case], device: Device
                   ) -> tuple[Device, dict[str, float], tuple[float, float], dict[str, TileFit]]:
    """`fit_dense` with and without a per-call weight-packing pass (`weight_pack_pass`); keeps the
    one whose mean |pred/meas - 1| over all dense cases is lower (the mean, not the median: the
    pass shows on the few beyond-LLC cases) and returns both means (with, without) and the tiles."""
    fits = []
    for pack in (True, False):
        dev, errs, tiles = fit_dense(cases, with_params(device, weight_pack_pass=pack))
        fits.append((float(np.mean(np.abs(rel_errors(cases, dev)))), dev, errs, tiles))
    (e_with, d_with, r_with, t_with), (e_without, d_without, r_without, t_without) = fits
    if e_with <= e_without:
        return d_with, r_with, (e_with, e_without), t_with
    return d_without, r_without, (e_with, e_without), t_without


def fit_csr(cases: Sequence[Case], device: Device) -> tuple[Device, float]:
    names = ("sparse_nnz_cycles", "sparse_vector_cycles", "sparse_row_cycles", "sparse_call_overhead")

    def build(dev: Device, x: np.ndarray) -> Device:
        return with_params(dev, **dict(zip(names, map(float, x))))

    device, err, _ = _fit(cases, device, names, (2.0, 3.0, 10.0, 5e-6), build)
    return device, err


def fit_bsr(cases: Sequence[Case], device: Device, columns: int = 0) -> tuple[Device, float]:
    """The output pass per row, and per block shape the per-value cost (fixed whatever M is) and the
    cost per vector step over M: MKL runs tuned kernels for some block edges and a generic loop
    for others, so both per-value figures are the shape's own. With `columns` (the M columns one
    vector step covers), also the cost per value of each column left over (M mod columns).

    The per-block index cost is folded into the per-value costs (`bsr_block_cycles` = 0): with a
    per-value cost of its own, each block shape's fixed cost per block is block + r x c x value,
    one figure that timings cannot split (any split fits them equally well)."""
    blocks = sorted({c.block for c in cases})
    keys = [f"{b}x{b}" for b in blocks]
    n = len(keys)

    def build(dev: Device, x: np.ndarray) -> Device:
        values = dict(zip(keys, map(float, x[1:1 + n])))
        vectors = dict(zip(keys, map(float, x[1 + n:1 + 2 * n])))
        column = float(x[1 + 2 * n]) if columns else 0.0
        return with_params(dev, bsr_block_cycles=0.0, bsr_row_cycles=float(x[0]), bsr_value_cycles=values,
                           bsr_vector_cycles=vectors, bsr_vector_columns=float(columns), bsr_column_cycles=column)

    names = ["bsr_row_cycles", *(f"value {k}" for k in keys), *(f"vector {k}" for k in keys)]
    x0 = [device.params.sparse_row_cycles] + [2.0] * n + [2.0] * n
    if columns:
        names.append("bsr_column_cycles")
        x0.append(2.0)
    device, err, _ = _fit(cases, device, names, x0, build)
    return device, err


def column_candidates(device: Device) -> list[int]:
    """Widths a vector step (BSR, columns) or register tile (dense GEMM, rows) may cover along M: the
    fp32 lanes, halved down to 2, and 0 (none: M / lanes fractional steps, M rows taking M rows'
    time; a width of 1 is the same). Powers of two, as the tail pieces halve."""
    from sparsesim.cost.families.cpu import lanes

    width, out = int(lanes(device.params, "fp32")), []
    while width >= 2:
        out.append(width)
        width //= 2
    return [*out, 0]


@dataclass(frozen=True)
class ColumnFit:
    """The BSR vector step's width calibrate kept, and the mean |pred/meas - 1| over all BSR fit
    cases of every width tried (0: no leftover columns)."""

    columns: int
    mean_errors: dict[int, float]


def fit_bsr_columns(cases: Sequence[Case], device: Device) -> tuple[Device, float, ColumnFit]:
    """`fit_bsr` at each candidate width of the vector step; keeps the one whose mean |pred/meas - 1|
    over the cases is lowest (the mean, not the median: the leftover columns show on the cases at M
    that is no multiple of the width, a minority)."""
    fits = fit_each(cases, column_candidates(device), lambda columns: fit_bsr(cases, device, columns))
    best = min(fits, key=lambda c: fits[c][0])
    return fits[best][1], fits[best][2], ColumnFit(best, {c: f[0] for c, f in fits.items()})


def fit_each(cases: Sequence[Case], candidates: Sequence[K], fit: Callable[[K], tuple[Device, float]]
             ) -> dict[K, tuple[float, Device, float]]:
    """Per candidate (in order): the mean |pred/meas - 1| over `cases` of the device `fit(candidate)`
    returns, that device and its fit error. The mean, not the median: what a candidate changes
    shows on a minority of the cases."""
    out: dict[K, tuple[float, Device, float]] = {}
    for c in candidates:
        dev, err = fit(c)
        out[c] = (float(np.mean(np.abs(rel_errors(cases, dev)))), dev, err)
    return out


def pass_candidates(device: Device) -> list[tuple[int, int]]:
    """(register columns, pass columns) a CSR kernel may use along M: register widths from the fp32
    lanes up to 8x them (powers of two), each with passes of half its width, as measured on both
    hosts calibrated (an AVX2 and an AVX-512 EPYC: 32 and 16; leaving the pass width free let noisy
    timings pick 8 where validation prefers 16); and (0, 0): one walk over the nonzeros whatever M is."""
    from sparsesim.cost.families.cpu import lanes

    nl = int(lanes(device.params, "fp32"))
    return [(nl << i, max(nl << i >> 1, 1)) for i in range(4)] + [(0, 0)]


@dataclass(frozen=True)
class PassFit:
    """The CSR kernel's register and pass widths calibrate kept, and the mean |pred/meas - 1| over
    all CSR fit cases of every pair tried ((0, 0): one walk whatever M is)."""

    register_columns: int
    pass_columns: int
    mean_errors: dict[tuple[int, int], float]


# passes are kept only when they explain the CSR timings clearly better than one walk, and a
# narrower register width only when it clearly beats a wider one: a mean error at least this much
# lower (relative). On noisy timings candidates tie within a percent, and the best of them is then
# chance (on the AMD host, 2026-12-04, 16/8 tied 32/16 at 0.134 and 0.111 in two fits of ten, both
# about 10 % below one walk; validation prefers 32/16, and the other fits kept it by 1-10 %)
PASS_MIN_GAIN = 0.05


def fit_csr_passes(cases: Sequence[Case], device: Device) -> tuple[Device, float, PassFit]:
    """`fit_csr` at each candidate (register, pass) width pair and at one walk; keeps the simplest
    whose mean |pred/meas - 1| over the cases no narrower pair beats by `PASS_MIN_GAIN` (the
    passes show on the cases wider than the register width, a minority)."""
    fits = fit_each(cases, pass_candidates(device), lambda pair: fit_csr(
        cases, with_params(device, csr_register_columns=float(pair[0]), csr_pass_columns=float(pair[1]))))
    # from the simplest model (one walk) to the one that splits the most M (the narrowest register
    # width), a model is kept only where it beats the one kept so far by PASS_MIN_GAIN: of two
    # pairs that tie on noisy timings, the one that changes fewer predictions stays
    best = (0, 0)
    for pair in sorted((c for c in fits if c[0]), key=lambda c: -c[0]):  # widest register first
        if fits[pair][0] < (1 - PASS_MIN_GAIN) * fits[best][0]:
            best = pair
    return fits[best][1], fits[best][2], PassFit(*best, {c: f[0] for c, f in fits.items()})


# ----------------------------------------------------------------------------- the file

def _q(value: float, unit: str, source: str, *, fit: tuple[str, float] | None = None) -> str:
    parts = [f"value = {_num(value)}", f'unit = "{unit}"', f"source = {_tq(source)}"]
    if fit is not None:
        parts += [f'fit_date = "{fit[0]}"', f"fit_error = {fit[1]:.4f}"]
    return "{ " + ", ".join(parts) + " }"


def _num(v: float) -> str:
    return repr(float(f"{v:.6g}"))


def _tq(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _copied(ref: Device, field_name: str, value: float, unit: str, scale: float = 1.0) -> str:
    prov = ref.provenance[field_name]
    return _q(value * scale, unit, f"copied from {Path(ref.path).name} ({prov.source})")


# the runtimes the host runs (PyTorch; calibrate times its kernels), copied from the reference file
HOST_RUNTIMES = ("eager", "compiled")


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _num(value)
    if isinstance(value, str):
        return _tq(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(_tq(v) for v in value) + "]"
    raise SparsesimError(f"{where}: calibrate copies plain values only, got {value!r}")


def runtime_lines(ref: Device) -> list[str]:
    """The host's runtimes: PyTorch's eager (the default, as calibrate times it) and compiled, each
    field copied from the reference CPU file with its source."""
    refname = Path(ref.path).name
    tables = tomllib.loads(Path(ref.path).read_text()).get("runtime", {})
    lines = ['default_runtime = { value = "eager", source = "calibrate times PyTorch eager on this host" }']
    for name in HOST_RUNTIMES:
        for key, entry in _entries(tables.get(name, {}), f"runtime.{name}"):
            parts = [f"value = {_toml_value(entry['value'], f'{ref.path}: {key}')}"]
            if "unit" in entry:
                parts.append(f"unit = {_tq(entry['unit'])}")
            source = entry["source"]
            parts.append(f"source = {_tq(f'copied from {refname} ({source})')}")
            lines.append(f"{key} = {{ {', '.join(parts)} }}")
    return lines


def _entries(table: dict[str, Any], prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """The `{ value, source }` entries of a TOML table with their dotted keys, a per-kernel or
    per-dtype table (`kernel_dispatch.<kernel>`) flattened."""
    out: list[tuple[str, dict[str, Any]]] = []
    for key, entry in table.items():
        if isinstance(entry, dict) and "value" not in entry:
            out += _entries(entry, f"{prefix}.{key}")
        else:
            out.append((f"{prefix}.{key}", entry))
    return out


def render_device_file(facts: HostFacts, device: Device, ref: Device, fit_errors: dict[str, float],
                       notes: dict[str, Any]) -> str:
    """The host's device file: measured values cite the host and date, fitted ones their fit."""
    p = device.params
    meas = f"measured on {facts.model} {facts.date} ({facts.threads} thread{'s' if facts.threads > 1 else ''})"
    fd = facts.date
    refname = Path(ref.path).name

    def cache_src(level: str) -> str:
        if level in facts.assumed_caches:
            return f"assumed: sysfs reports no {level.upper()} size on this host; a typical size taken"
        return f"sysfs /sys/devices/system/cpu/cpu0/cache, {meas}"

    l3_src = cache_src("l3")
    if facts.sysfs_l3 and facts.caches["l3"] != facts.sysfs_l3:
        l3_src = (f"measured: tensor copies keep the L3 rate up to a {facts.caches['l3'] / 2**20:.3g} MiB footprint "
                  f"(sysfs reports {facts.sysfs_l3 / 2**20:.3g} MiB, shared with other cores/tenants), {meas}")
    elif facts.sysfs_l3:
        l3_src += "; copies keep the L3 rate up to this size"
    pw, pwo = facts.pack_errors
    pack_line = (f"weight_pack_pass = {{ value = {'true' if facts.weight_pack_pass else 'false'}, source = "
                 + _tq(f"measured: the dense fit with a per-call weight-packing pass has mean error {pw:.1%}, "
                       f"without {pwo:.1%} (beyond-LLC shapes included); the better one kept, {meas}") + " }")
    nm_line = _q(p.sparse_nnz_cycles * ref.params.nm_nnz_cycles / ref.params.sparse_nnz_cycles, "cycles",
                 f"D: fitted sparse_nnz_cycles x the N:M/CSR index-cost ratio of {refname} "
                 "(torch has no CPU N:M kernel to time)")
    static_src = ref.provenance["static_power"].source
    static_line = _q(ref.params.static_power / ref.params.cores * facts.threads, "W",
                     f"D: static_power / cores of {refname} x {facts.threads} core(s) ({static_src})")
    clock_line = _q(facts.clock_hz / 1e9, "GHz",
                    f"D: effective vector clock = max(/proc/cpuinfo {facts.nominal_hz / 1e6:.0f} MHz, fastest dense "
                    f"GEMM FLOP/s / (2 x lanes x fma_ports)), {meas}")
    memory_line = (_q(facts.memory_bytes / 2**30, "GiB", f"physical RAM (sysconf SC_PHYS_PAGES x SC_PAGE_SIZE), {meas}")
                   if facts.memory_bytes > 0 else _copied(ref, "memory_capacity", ref.params.memory_capacity / 1e9, "GB"))
    native_src = _tq("/proc/cpuinfo flags (avx512_bf16, vnni) and torch support, " + meas)
    native_list = "[" + ", ".join(f'"{d}"' for d in facts.native_dtypes) + "]"
    lines = [
        f"# Generated by `sparsesim calibrate` on {facts.date}: {facts.model}, {facts.threads} thread(s).",
        "# Regenerate rather than edit; fitted values carry fit_date and fit_error (median |pred/meas - 1|",
        "# on the FIT set of shapes, which `sparsesim validate` does not reuse).",
        f"# fit cases: {notes.get('cases')}; torch {torch.__version__}",
        'name = "host"',
        'family = "cpu"',
        f"description = {_tq(f'{facts.model} (this host), {facts.threads} thread(s), calibrated {facts.date}')}",
        f"cores = {_q(facts.threads, '1', f'threads used (torch.set_num_threads), {meas}')}",
        f"threads = {_q(facts.threads, '1', f'torch.set_num_threads during calibration, {meas}')}",
        f"clock = {clock_line}",
        f"vector_bits = {_q(facts.vector_bits, '1', f'/proc/cpuinfo flags (avx512f/avx2), {meas}')}",
        f"fma_ports = {_copied(ref, 'fma_ports', p.fma_ports, '1')}",
        f"native_dtypes = {{ value = {native_list}, source = {native_src} }}",
        f"l1_bytes = {_q(facts.caches['l1'] / 1024, 'KiB', cache_src('l1'))}",
        f"l2_bytes = {_q(facts.caches['l2'] / 1024, 'KiB', cache_src('l2'))}",
        f"l3_bytes = {_q(facts.caches['l3'] / 1024**2, 'MiB', l3_src)}",
        f"l2_bandwidth = {_q(facts.l2_bw / 1e9, 'GB/s', f'tensor copy inside L2, per thread, {meas}')}",
        f"l3_bandwidth = {_q(facts.l3_bw / 1e9, 'GB/s', f'tensor copy inside L3, {meas}')}",
        f"dram_bandwidth = {_q(facts.dram_bw / 1e9, 'GB/s', f'weight stream of a GEMV (1 x 4096 fp32 activations) over a weight of 4x the sysfs L3, {meas}')}",
        f"call_overhead = {_q(facts.call_overhead_s * 1e6, 'us', f'F.linear 1x8x8, {meas}')}",
        f"memory_capacity = {memory_line}",
        pack_line,
        f"gemv_rows_max = {_q(facts.gemv_rows_max, '1', f'measured: fp32 linears over a beyond-LLC weight take about a whole one-row time more per row up to this many rows (one GEMV per row), then a packed GEMM takes over, {meas}')}",
    ]
    full, none, edge_err = facts.llc_edge
    if none:
        edge_src = (f"measured: a GEMV's weight stream at {', '.join(f'{f:g}' for f in LLC_EDGE_FOOTPRINTS)} x the "
                    f"effective LLC, each rate read as the share the LLC served; a linear ramp fitted to the shares "
                    f"(rms error {edge_err:.3f}), {meas}")
        lines += [
            f"llc_full_bytes = {_q(full / 1024**2, 'MiB', edge_src, fit=(facts.date, edge_err))}",
            f"llc_none_bytes = {_q(none / 1024**2, 'MiB', 'see llc_full_bytes', fit=(facts.date, edge_err))}",
        ]
    csr_fit = (fd, fit_errors["csr"])
    bsr_fit = (fd, fit_errors["bsr"])
    fitsrc = f"least_squares on log latency of torch CSR @ dense, {meas}"
    lines += [
        f"sparse_call_overhead = {_q(p.sparse_call_overhead * 1e6, 'us', fitsrc, fit=csr_fit)}",
        f"sparse_nnz_cycles = {_q(p.sparse_nnz_cycles, 'cycles', fitsrc, fit=csr_fit)}",
        f"sparse_vector_cycles = {_q(p.sparse_vector_cycles, 'cycles', fitsrc, fit=csr_fit)}",
        f"sparse_row_cycles = {_q(p.sparse_row_cycles, 'cycles', fitsrc, fit=csr_fit)}",
        f"bsr_block_cycles = {_q(p.bsr_block_cycles, 'cycles', 'folded into bsr_value_cycles: each block shape has a per-value cost of its own, which takes up any cost per block (timings cannot split the two)')}",
        f"bsr_row_cycles = {_q(p.bsr_row_cycles, 'cycles', f'least_squares on log latency of torch BSR @ dense (the output pass, per row and vector step; densities down to {min(FIT_BSR_DENSITIES):g} show it), {meas}', fit=bsr_fit)}",
    ]
    if p.csr_register_columns and facts.csr_passes is not None:
        tried = ", ".join(f"{r}/{w} {e:.1%}" if r else f"none {e:.1%}"
                          for (r, w), e in sorted(facts.csr_passes.mean_errors.items()))
        pass_src = (f"least_squares on log latency of torch CSR @ dense at M = {', '.join(map(str, FIT_CSR_M))}: the "
                    f"register and pass widths kept are the pair with the lowest mean |pred/meas - 1| (register/pass "
                    f"columns tried, 'none' one walk whatever M is: {tried}); an M wider than the register width runs "
                    f"in passes, each walking the nonzeros again, {meas}")
        lines += [
            f"csr_register_columns = {_q(p.csr_register_columns, '1', pass_src, fit=csr_fit)}",
            f"csr_pass_columns = {_q(p.csr_pass_columns, '1', 'see csr_register_columns', fit=csr_fit)}",
        ]
    if p.bsr_vector_columns and facts.bsr_columns is not None:
        tried = ", ".join(f"{c or 'none'} {e:.1%}" for c, e in sorted(facts.bsr_columns.mean_errors.items(), reverse=True))
        col_src = (f"least_squares on log latency of torch BSR @ dense, with M = {', '.join(map(str, FIT_BSR_LEFTOVER_M))} "
                   f"besides {', '.join(map(str, FIT_BSR_M))}: the vector step's width kept is the one with the lowest "
                   f"mean |pred/meas - 1| (widths tried, 'none' fractional steps: {tried}); the columns left over "
                   f"(M mod the width) run one at a time, {meas}")
        lines += [
            f"bsr_vector_columns = {_q(p.bsr_vector_columns, '1', col_src, fit=bsr_fit)}",
            f"bsr_column_cycles = {_q(p.bsr_column_cycles, 'cycles', 'per stored value and leftover column; see bsr_vector_columns', fit=bsr_fit)}",
        ]
    lines += [
        f"nm_nnz_cycles = {nm_line}",
        f"static_power = {static_line}",
        'picks_faster_kernel = { value = false, source = "torch runs the CSR/BSR tensor it is given (no per-layer choice); '
        'validate times exactly those kernels" }',
        f"l1_energy = {_copied(ref, 'l1_energy', ref.params.l1_energy * 1e12, 'pJ/B')}",
        f"l2_energy = {_copied(ref, 'l2_energy', ref.params.l2_energy * 1e12, 'pJ/B')}",
        f"l3_energy = {_copied(ref, 'l3_energy', ref.params.l3_energy * 1e12, 'pJ/B')}",
        f"dram_energy = {_copied(ref, 'dram_energy', ref.params.dram_energy * 1e12, 'pJ/B')}",
        *runtime_lines(ref),
        "",
        "[gemm_efficiency]",
    ]
    for dt in sorted(p.gemm_efficiency):
        src = f"least_squares on log latency of dense {dt} GEMMs, {meas}"
        lines.append(f"{dt} = {_q(p.gemm_efficiency[dt], '1', src, fit=(fd, fit_errors[dt]))}")
    lines += ["", "[gemm_half_m]"]
    for dt in sorted(p.gemm_half_m):
        src = f"least_squares on log latency of dense {dt} GEMMs over M, {meas}"
        lines.append(f"{dt} = {_q(p.gemm_half_m[dt], '1', src, fit=(fd, fit_errors[dt]))}")
    if p.gemm_tile_m:
        tile_src = {}
        for dt in sorted(p.gemm_tile_m):
            fit = facts.gemm_tiles.get(dt)
            tried = ", ".join(f"{t or 'none'} {e:.1%}" for t, e in sorted(fit.mean_errors.items(), reverse=True)) \
                if fit else "not recorded"
            tile_src[dt] = (f"dense {dt} GEMMs at M = {', '.join(map(str, FIT_DENSE_TAIL_M))}, each read as rows' worth "
                            f"of time on its own shape's line through the M that fill whole tiles (its fixed cost "
                            f"cancels); per tile tried, the tail cost fitted by least_squares, and the tile kept the "
                            f"one with the lowest mean |pred/read - 1| (rows tried, 'none' no tile: {tried}); the rows "
                            f"left over run in narrower tiles (halving), {meas}")
        tile_fit = {dt: (fd, facts.gemm_tiles[dt].error if dt in facts.gemm_tiles else fit_errors[dt])
                    for dt in p.gemm_tile_m}
        lines += ["", "[gemm_tile_m]"]
        for dt in sorted(p.gemm_tile_m):
            lines.append(f"{dt} = {_q(p.gemm_tile_m[dt], '1', tile_src[dt], fit=tile_fit[dt])}")
        lines += ["", "[gemm_tail_cost]"]
        for dt in sorted(p.gemm_tail_cost):
            src = f"share of a full tile's time each narrower tile over the rows left over takes; see gemm_tile_m.{dt}"
            lines.append(f"{dt} = {_q(p.gemm_tail_cost[dt], '1', src, fit=tile_fit[dt])}")
    lines += ["", "[bsr_vector_cycles]"]
    for key in sorted(p.bsr_vector_cycles, key=lambda s: int(s.split("x")[0])):
        lines.append(f'"{key}" = {_q(p.bsr_vector_cycles[key], "cycles", f"least_squares on log latency of torch BSR {key} @ dense, {meas}", fit=bsr_fit)}')
    if p.bsr_value_cycles:
        lines += ["", "[bsr_value_cycles]"]
        for key in sorted(p.bsr_value_cycles, key=lambda s: int(s.split("x")[0])):
            src = (f"least_squares on log latency of torch BSR {key} @ dense over M = "
                   f"{', '.join(map(str, FIT_BSR_M))} (the per-value cost that does not grow with M), {meas}")
            lines.append(f'"{key}" = {_q(p.bsr_value_cycles[key], "cycles", src, fit=bsr_fit)}')
    lines += ["", "[mac_energy]"]
    for dt in sorted(p.gemm_efficiency):
        lines.append(f"{dt} = {_copied(ref, f'mac_energy.{dt}', ref.params.mac_energy[dt] * 1e12, 'pJ')}")
    if p.function_cycles:
        n = facts.function_elements
        lines += ["", "[function_cycles]"]
        for name in sorted(p.function_cycles):
            src = (f"measured: torch's {name} over {n:,} and {4 * n:,} fp32 elements (inside L2), the time per element "
                   f"between the two (the call's fixed cost cancels) x the clock x the threads, {meas}")
            lines.append(f'"{name}" = {_q(p.function_cycles[name], "cycles", src)}')
    return "\n".join(lines) + "\n"


def function_cycles(facts: HostFacts, clock: float) -> dict[str, float]:
    """Cycles per element on one core of each timed function at `clock` (the threads share it)."""
    return {name: s * clock * facts.threads for name, s in facts.function_s.items() if s > 0}


def initial_device(facts: HostFacts, ref: Device, dtypes: Sequence[str]) -> Device:
    """A starting host device: measured facts, reference figures for what timers cannot see."""
    rp = ref.params
    params = dataclasses.replace(
        rp,
        cores=float(facts.threads), threads=float(facts.threads), clock=facts.clock_hz,
        vector_bits=float(facts.vector_bits), native_dtypes=list(facts.native_dtypes),
        gemm_efficiency={dt: 0.5 for dt in dtypes}, gemm_half_m={dt: 4.0 for dt in dtypes},
        gemm_tile_m={}, gemm_tail_cost={},
        l1_bytes=float(facts.caches["l1"]), l2_bytes=float(facts.caches["l2"]),
        l3_bytes=float(facts.caches["l3"]), l2_bandwidth=facts.l2_bw, l3_bandwidth=facts.l3_bw,
        dram_bandwidth=facts.dram_bw, call_overhead=facts.call_overhead_s,
        matrix_macs_per_cycle={}, picks_faster_kernel=False, mac_energy={dt: rp.mac_energy[dt] for dt in dtypes},
        static_power=rp.static_power / rp.cores * facts.threads,
        memory_capacity=facts.memory_bytes or rp.memory_capacity,
        llc_full_bytes=facts.llc_edge[0], llc_none_bytes=facts.llc_edge[1],
        function_cycles={},  # set once the effective clock is known (`calibrate`)
    )
    return Device("host", "cpu", f"{facts.model} (this host)", "<calibrating>", params, dict(ref.provenance))


@dataclass(frozen=True)
class CalibrationResult:
    path: str
    device: Device
    facts: HostFacts
    fit_errors: dict[str, float]
    cases: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        p = self.device.params
        return {
            "path": self.path,
            "cpu": self.facts.model,
            "date": self.facts.date,
            "threads": self.facts.threads,
            "cases": self.cases,
            "wall_s": round(self.seconds, 2),
            "fit_error": {k: round(v, 4) for k, v in self.fit_errors.items()},
            "measured": {
                "clock_ghz": round(p.clock / 1e9, 3),
                "l2_bandwidth_gbs": round(p.l2_bandwidth / 1e9, 2),
                "l3_bandwidth_gbs": round(p.l3_bandwidth / 1e9, 2),
                "dram_bandwidth_gbs": round(p.dram_bandwidth / 1e9, 2),
                "call_overhead_us": round(p.call_overhead * 1e6, 3),
                "function_cycles": {k: round(v, 3) for k, v in sorted(p.function_cycles.items())},
            },
            "fitted": {
                "gemm_efficiency": {k: round(v, 4) for k, v in p.gemm_efficiency.items()},
                "gemm_half_m": {k: round(v, 3) for k, v in p.gemm_half_m.items()},
                "gemm_tile_m": {k: int(v) for k, v in p.gemm_tile_m.items()},
                "gemm_tail_cost": {k: round(v, 3) for k, v in p.gemm_tail_cost.items()},
                "sparse_call_overhead_us": round(p.sparse_call_overhead * 1e6, 3),
                "sparse_nnz_cycles": round(p.sparse_nnz_cycles, 3),
                "sparse_vector_cycles": round(p.sparse_vector_cycles, 3),
                "sparse_row_cycles": round(p.sparse_row_cycles, 3),
                "csr_register_columns": int(p.csr_register_columns),
                "csr_pass_columns": int(p.csr_pass_columns),
                "bsr_block_cycles": round(p.bsr_block_cycles, 3),
                "bsr_row_cycles": round(p.bsr_row_cycles, 3),
                "bsr_vector_cycles": {k: round(v, 3) for k, v in p.bsr_vector_cycles.items()},
                "bsr_value_cycles": {k: round(v, 3) for k, v in p.bsr_value_cycles.items()},
                "bsr_vector_columns": int(p.bsr_vector_columns),
                "bsr_column_cycles": round(p.bsr_column_cycles, 3),
            },
        }


def reference_device(facts: HostFacts) -> Device:
    flags = measure.cpu_info()["flags"]
    name = REFERENCE_ARM if "asimd" in flags else REFERENCE_X86
    return load_device(name)


def calibrate(out: str | Path | None = None, *, quick: bool = False, threads: int = 1,
              progress: Callable[[str], None] | None = None) -> CalibrationResult:
    """Measure this host, fit the CPU model, write the device file and return what was fitted."""
    say = progress or (lambda _msg: None)
    path = Path(out) if out else default_out()
    if out is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SparsesimError(f"calibrate: cannot create {path.parent} ({e.strerror or e}); "
                                 f"use --out PATH or set SPARSESIM_CONFIG_DIR") from None
    if path.suffix != ".toml":
        raise SparsesimError(f"calibrate --out {path}: the device file must end in .toml")
    if not path.parent.is_dir():
        raise SparsesimError(f"calibrate --out {path}: directory {path.parent} does not exist")
    if path.is_dir() or not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        # checked before the timing, so a bad --out does not cost the whole measurement
        raise SparsesimError(f"calibrate --out {path}: not a writable file")
    t0 = time.perf_counter()
    reps = REPEATS_QUICK if quick else REPEATS_FULL
    with measure.fixed_threads(threads):
        say("measuring bandwidth and call overhead")
        facts = host_facts(threads, quick=quick)
        dtypes = ["fp32"]
        if "bf16" in facts.native_dtypes:
            dtypes.append("bf16")
        if measure.int8_supported() and "int8" in facts.native_dtypes:
            dtypes.append("int8")
        ref = reference_device(facts)
        device = initial_device(facts, ref, dtypes)
        say(f"timing dense GEMMs ({', '.join(dtypes)})")
        if quick:
            dense = time_dense_cases(FIT_NK[:2], FIT_M, dtypes, repeats=reps)
            dense += time_dense_cases(FIT_NK[:2], FIT_DENSE_TAIL_M, ["fp32"], repeats=reps)
            dense += time_dense_cases(FIT_BEYOND_LLC_NK, FIT_BEYOND_LLC_M[:4], ["fp32"], repeats=reps)
            say("timing CSR and BSR matmuls")
            csr = time_sparse_cases("csr", FIT_CSR_NK[:2], FIT_CSR_M, QUICK_DENSITIES, (1,), repeats=reps)
            bsr = time_sparse_cases("bsr", FIT_BSR_NK[:1], FIT_BSR_M + FIT_BSR_LEFTOVER_M, QUICK_BSR_DENSITIES,
                                    QUICK_BLOCKS, repeats=reps)
        else:
            dense = time_dense_cases(FIT_NK, FIT_M, dtypes, repeats=reps)
            dense += time_dense_cases(FIT_NK, FIT_DENSE_TAIL_M, ["fp32"], repeats=reps)
            dense += time_dense_cases(FIT_BEYOND_LLC_NK, FIT_BEYOND_LLC_M, ["fp32"], repeats=reps)
            say("timing CSR and BSR matmuls")
            csr = time_sparse_cases("csr", FIT_CSR_NK, FIT_CSR_M, FIT_DENSITIES, (1,), repeats=reps)
            bsr = time_sparse_cases("bsr", FIT_BSR_NK, FIT_BSR_M + FIT_BSR_LEFTOVER_M, FIT_BSR_DENSITIES, FIT_BLOCKS,
                                    repeats=reps)
    say("fitting")
    clock = effective_clock(device, dense)
    rows = gemv_rows_max(dense)
    device = with_params(device, clock=clock, gemv_rows_max=float(rows), function_cycles=function_cycles(facts, clock))
    facts = dataclasses.replace(facts, clock_hz=clock, gemv_rows_max=rows)
    device, errors, pack_errors, tiles = fit_dense_pack(dense, device)
    facts = dataclasses.replace(facts, weight_pack_pass=device.params.weight_pack_pass, pack_errors=pack_errors,
                                gemm_tiles=tiles)
    device, errors["csr"], passes = fit_csr_passes(csr, device)
    device, errors["bsr"], columns = fit_bsr_columns(bsr, device)
    facts = dataclasses.replace(facts, bsr_columns=columns, csr_passes=passes)
    text = render_device_file(facts, device, ref, errors, {"cases": len(dense) + len(csr) + len(bsr)})
    try:
        atomic.write_text(path, text)  # a kill or full disk never leaves half a device file
    except OSError as e:
        raise SparsesimError(f"calibrate --out {path}: cannot write ({e.strerror or e})") from None
    loaded = parse_device_file(path)  # strict round trip: what we wrote must load
    return CalibrationResult(str(path), loaded, facts, errors, len(dense) + len(csr) + len(bsr),
                             time.perf_counter() - t0)

