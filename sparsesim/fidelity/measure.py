"""Real kernel timings on the host CPU with torch: the measurements `calibrate` fits and
`validate` checks against. Every figure is the median of repeated timed calls after warm-ups,
with torch's thread count fixed (and recorded) for the whole run.

Layouts follow how each kernel is used: a dense linear layer is `F.linear(x, W)` with x of
M x K; a sparse weight is applied as `W_sparse @ xT` with xT = x^T of K x M (the layout
torch's CSR/BSR CPU kernels take; the output is Y^T). torch's CPU BSR kernel takes square
blocks only.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}
# a timed sample should last at least this long, so timer resolution and call jitter stay small
MIN_SAMPLE_S = 2e-4


@dataclass(frozen=True)
class Timing:
    """The median of `repeats` samples (seconds per call) and their spread."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    calls_per_sample: int
    clock: str = "wall"

    @property
    def spread(self) -> float:
        return (self.max_s - self.min_s) / self.median_s if self.median_s > 0 else 0.0


@contextlib.contextmanager
def fixed_threads(threads: int) -> Iterator[int]:
    """Run with torch's intra-op threads fixed; restore the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def time_call(fn: Callable[[], object], *, repeats: int = 7, warmup: int = 2) -> Timing:
    """Median seconds per call. Short calls are batched so each sample lasts >= MIN_SAMPLE_S.

    With one torch thread the kernel runs on the calling thread, so its CPU time
    (CLOCK_THREAD_CPUTIME_ID) is the kernel's time even when other processes share the cores and
    preempt it; wall-clock time would count their slices too. With more threads the kernel's
    work is spread over pool threads and only wall-clock time sees it.
    """
    single = torch.get_num_threads() == 1
    clock = time.thread_time if single else time.perf_counter
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    calls = max(1, int(MIN_SAMPLE_S / one))
    samples = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(calls):
            fn()
        samples.append((clock() - t0) / calls)
    return Timing(statistics.median(samples), min(samples), max(samples), repeats, calls,
                  "thread-cpu" if single else "wall")


# ----------------------------------------------------------------------------- masks

def random_mask(rows: int, cols: int, density: float, *, block: tuple[int, int] = (1, 1),
                seed: int = 0) -> torch.Tensor:
    """A 0/1 float mask keeping exactly round(density x #blocks) randomly chosen r x c blocks."""
    r, c = block
    if rows % r or cols % c:
        raise ValueError(f"a {rows}x{cols} matrix does not tile into {r}x{c} blocks")
    br, bc = rows // r, cols // c
    g = torch.Generator().manual_seed(seed)
    keep = round(density * br * bc)
    flat = torch.zeros(br * bc)
    flat[torch.randperm(br * bc, generator=g)[:keep]] = 1.0
    m = flat.view(br, bc)
    if block != (1, 1):
        m = m.repeat_interleave(r, 0).repeat_interleave(c, 1)
    return m


def random_weight(rows: int, cols: int, *, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.randn(rows, cols, generator=g)


# ----------------------------------------------------------------------------- kernels

def dense_linear(m: int, n: int, k: int, dtype: str = "fp32", *, repeats: int = 7, seed: int = 0) -> Timing:
    """Y = x @ W^T for x of M x K, W of N x K (torch._int_mm for int8, which needs M > 16)."""
    g = torch.Generator().manual_seed(seed)
    if dtype == "int8":
        x = torch.randint(-8, 8, (m, k), dtype=torch.int8, generator=g)
        wt = torch.randint(-8, 8, (k, n), dtype=torch.int8, generator=g)
        return time_call(lambda: torch._int_mm(x, wt), repeats=repeats)
    td = TORCH_DTYPES[dtype]
    x = torch.randn(m, k, generator=g).to(td)
    w = torch.randn(n, k, generator=g).to(td)
    return time_call(lambda: torch.nn.functional.linear(x, w), repeats=repeats)


def dense_masked(weight: torch.Tensor, m: int, *, repeats: int = 7, seed: int = 0) -> Timing:
    """The dense baseline of a sparse case: the same (masked) weight run as a dense linear."""
    x = torch.randn(m, weight.shape[1], generator=torch.Generator().manual_seed(seed))
    return time_call(lambda: torch.nn.functional.linear(x, weight), repeats=repeats)


def sparse_matmul(weight: torch.Tensor, m: int, layout: str, *, block: int = 1, repeats: int = 7,
                  seed: int = 0) -> Timing:
    """W_sparse @ xT with W in CSR (`layout="csr"`) or BSR with square `block` x `block` blocks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that sparse CSR support is beta
        if layout == "csr":
            ws = weight.to_sparse_csr()
        elif layout == "bsr":
            ws = weight.to_sparse_bsr((block, block))
        else:
            raise ValueError(f"unknown sparse layout {layout!r}")
        xt = torch.randn(weight.shape[1], m, generator=torch.Generator().manual_seed(seed))
        return time_call(lambda: ws @ xt, repeats=repeats)


def copy_bandwidth(nbytes: int, *, repeats: int = 7) -> float:
    """Bytes/s of a tensor copy of `nbytes` (read + write counted), so the smallest cache level
    holding 2 x nbytes decides it."""
    a = torch.ones(max(1, nbytes // 4), dtype=torch.float32)
    b = torch.empty_like(a)
    t = time_call(lambda: b.copy_(a), repeats=repeats)
    return 2 * a.numel() * 4 / t.median_s


def read_bandwidth(nbytes: int, *, repeats: int = 7) -> float:
    """Bytes/s at which one core streams a weight of `nbytes` through a GEMV (one activation row
    times a 4096-column fp32 weight): a read-only stream with two FLOPs per four bytes, so memory
    decides it. This is how a weight beyond the cache comes in (a GEMV, a BLAS's packing pass);
    a copy's concurrent read and write streams move more bytes per second from DRAM than this."""
    k = 4096
    n = max(1, nbytes // (4 * k))
    w = torch.ones(n, k, dtype=torch.float32)
    x = torch.ones(1, k, dtype=torch.float32)
    t = time_call(lambda: torch.nn.functional.linear(x, w), repeats=repeats)
    return n * k * 4 / t.median_s


def effective_llc_bytes(llc_bytes: int, llc_bw: float, dram_bw: float, *, floor: int, repeats: int = 3) -> int:
    """The largest copy footprint (both arrays) up to `llc_bytes` that still copies nearer the LLC
    rate than the DRAM rate (above their geometric mean): the share of a last-level cache one core
    really gets when other cores or tenants use it too. Footprints halve down from `llc_bytes`
    to `floor`; returns `floor` if none holds."""
    cut = (llc_bw * dram_bw) ** 0.5
    size = llc_bytes
    while size > floor:
        if copy_bandwidth(size // 2, repeats=repeats) >= cut:
            return size
        size //= 2
    return floor


# the functions a calibrated host times (`CpuParams.function_cycles`), keyed by their aten names:
# the transcendental ones, softmax over rows of SOFTMAX_ROW elements, and layer norm (two
# reductions and a scaled shift per row) over rows of NORM_ROW, a hidden size's order
SOFTMAX_ROW = 128
NORM_ROW = 1024
FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu, "sigmoid": torch.sigmoid,
    "tanh": torch.tanh, "exp": torch.exp, "erf": torch.erf, "sin": torch.sin, "cos": torch.cos,
    "log": torch.log, "rsqrt": torch.rsqrt,
    "_softmax": lambda x: torch.softmax(x.view(-1, SOFTMAX_ROW), dim=-1),
    "native_layer_norm": lambda x: torch.nn.functional.layer_norm(x.view(-1, NORM_ROW), (NORM_ROW,)),
}


def function_elements(elements: int) -> int:
    """`elements` rounded down to whole rows of every row-wise function (at least one row)."""
    row = max(SOFTMAX_ROW, NORM_ROW)
    return max(row, elements // row * row)


def function_seconds(name: str, elements: int, *, repeats: int = 7) -> float:
    """Seconds per fp32 element of function `name` (FUNCTIONS): the time between calls over
    `function_elements(elements)` and 4 x as many (inputs in [0.5, 1.5)), so the call's fixed
    cost cancels; both sizes should fit the cache level the caller means to time."""
    fn = FUNCTIONS[name]
    small = function_elements(elements)
    times = []
    for n in (small, 4 * small):
        x = torch.rand(n, dtype=torch.float32) + 0.5
        times.append(time_call(lambda: fn(x), repeats=repeats).median_s)  # noqa: B023 (timed at once)
    return max(0.0, (times[1] - times[0]) / (3 * small))


def call_overhead(*, repeats: int = 9) -> float:
    """Seconds of a dense linear on a 1 x 8 x 8 problem: torch dispatch + BLAS call, no work."""
    return dense_linear(1, 8, 8, "fp32", repeats=repeats).median_s


def int8_supported() -> bool:
    try:
        torch._int_mm(torch.ones(32, 32, dtype=torch.int8), torch.ones(32, 32, dtype=torch.int8))
        return True
    except (RuntimeError, AttributeError):
        return False


def bf16_supported() -> bool:
    try:
        torch.nn.functional.linear(torch.ones(4, 8, dtype=torch.bfloat16), torch.ones(8, 8, dtype=torch.bfloat16))
        return True
    except RuntimeError:
        return False


# ----------------------------------------------------------------------------- the host

class CpuInfo(TypedDict):
    """What `cpu_info` reads: model name, flags, clock (MHz) and cache bytes per level."""

    model: str
    flags: list[str]
    mhz: float
    caches: dict[str, int]


def cpu_info() -> CpuInfo:
    """CPU model name, flags, clock and cache sizes as Linux reports them (empty where absent)."""
    info: CpuInfo = {"model": "unknown CPU", "flags": [], "mhz": 0.0, "caches": {}}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "model name" and info["model"] == "unknown CPU":
            info["model"] = val
        elif key == "flags" and not info["flags"]:
            info["flags"] = val.split()
        elif key == "cpu MHz" and not info["mhz"]:
            info["mhz"] = float(val)
    caches: dict[str, int] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")) if base.is_dir() else []:
        try:
            level = (idx / "level").read_text().strip()
            kind = (idx / "type").read_text().strip()
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1], 1)
        caches[f"l{level}"] = int(size.rstrip("KMG")) * mult
    info["caches"] = caches
    return info
