"""Measure dense vs sparse kernels and eager vs compiled BERT-base on an NVIDIA GPU, and append the
figures to the validation table (with the date and the GPU's name).

    python benchmarks/gpu_measure.py                      # full grid, appends to the packaged gpu_measured.csv
    python benchmarks/gpu_measure.py --quick --dry-run    # a few shapes, print only
    python benchmarks/gpu_measure.py --dtypes fp16,int8 --no-bert --out my_gpu.csv

For every (shape, dtype) of the grid it times, with CUDA events, the dense matmul (cuBLAS; int8
through torch._int_mm, fp8 e4m3 through torch._scaled_mm) and:
  * 2:4 semi-structured sparsity through both libraries torch's eager semi-structured linear
    offers: cuSPARSELt (torch._cslt_sparse_mm) and CUTLASS (torch._sparse_semi_structured_linear;
    compute capability 8.x only), rows of runtime `eager`;
  * 2:4 through cuSPARSELt called directly with its own algorithm search, replayed from a CUDA
    graph against the dense GEMM replayed the same way: no per-op host work, the rows of runtime
    `engine` (what an inference engine calling the library gets);
  * unstructured sparsity through CSR (torch.sparse_csr_tensor @ dense, cuSPARSE SpMM);
  * block sparsity through BSR (torch.sparse_bsr_tensor @ dense).
Then int4 weight-only GEMMs through torch's tinygemm kernel against bf16 cuBLAS at Llama-3-8B's
decode shapes, graphed, as op-rate rows of runtime `compiled`. Then the board's power and SM
clock (nvidia-smi) while bf16 GEMMs of 8192 and 16384 cubed, dense and 2:4, run back to back for
a few seconds, printed for the log: whether a large GEMM runs at the power limit, and whether
the 2:4 one runs at a higher clock. Then two kernel-rate probes, printed for the log: a small
kernel's GPU cost inside a replayed CUDA graph, and elementwise kernels with and without a
transcendental function (GELU, exp, SiLU) against a copy of the same tensor. Then bf16 linears against the
same linears deployed as torchao's dynamic int8 (per-token quantisation, torch._int_mm, two
scalings: `dynamic_int8_fn`), eager and compiled, at BERT-base and SAM shapes, as op-rate rows
whose workload is the 16-bit GEMM (the model adds its quantisation kernels). Then BERT-base (random weights, fp16, sequence 384) at two batch sizes, eager and under
torch.compile(mode="max-autotune"), dense and with every encoder Linear 2:4: one runtime-ratio
row (eager / compiled) and one speedup row per runtime; and SAM's ViT-H image encoder (bf16,
batch 8): dense throughput and the speedup of 2:4 on its MLP linears (torchao's SAM case), per
runtime. Those whole-model rows are what tells where whole PyTorch models lose time the model
does not see (the validation notes in the README).
Rows are appended one by one as they are measured (a run cut short keeps every case), and
`--budget-s` / `--gemm-budget-s` stop starting new cases in time to end inside a GPU lease;
`--shapes` times your own GEMMs (`--runtimes engine` only the graphed library calls) and
`--case-prefix holdout-` marks rows that
benchmarks/fit_gpu_measured.py must leave out. Each row records the GPU's device-file name (or its own name when no file matches), the runtime,
dtype, shape or workload, the kernel library, dense and sparse median times, the measured value,
the date and the software versions; `sparsesim validate --published` then reports the model's
error on them. A case the GPU or torch cannot run is skipped with the reason printed.

Without a CUDA GPU the script exits with status 2 and a message; `--cpu-smoke` runs the dense,
CSR and BSR code paths on the CPU with tiny shapes to check the script itself (nothing written).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sparsesim.fidelity.gpu_validation import (
    TABLE_COLUMNS,
    append_rows,
    direction_of,
    measured_table_path,
    predict_case,
)

DTYPES = ("fp16", "bf16", "int8", "fp8")
TORCH_FLOAT = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# (M, N, K): the published cases, LLM decode (GEMV) and prefill shapes, and square GEMMs; SlideSparse's
# "small M (64-512): 0.5-1.05x" is read as small square GEMMs (validation table), and the skinny
# reading (N = K = 4096) is timed too, so one run settles which the model should follow
SHAPES_FULL = [
    (64, 64, 64), (128, 128, 128), (256, 256, 256), (512, 512, 512), (3072, 3072, 10240), (13008, 4096, 1024), (1, 4096, 4096), (8, 4096, 4096), (32, 4096, 4096),
    (64, 4096, 4096), (128, 4096, 4096), (512, 4096, 4096), (1024, 1024, 1024), (2048, 2048, 2048),
    (4096, 4096, 4096), (8192, 8192, 8192), (2048, 11008, 4096), (2048, 4096, 11008), (16384, 768, 768),
    (16384, 3072, 768), (32, 21504, 7168),
]
SHAPES_QUICK = [(3072, 3072, 10240), (1, 4096, 4096), (4096, 4096, 4096)]
CSR_SPARSITIES = (0.5, 0.9, 0.95, 0.99)
BSR_CASES = ((16, 0.5), (32, 0.5), (32, 0.9), (64, 0.75))
# BERT-base runs: (batch, sequence)
BERT_CASES = ((16, 384), (256, 384))
BERT_QUICK = ((16, 384),)
# a timed sample lasts about this long; one case's samples at most MAX_CASE_MS in total
SAMPLE_MS = 2.0
MAX_CASE_MS = 3000.0
# device-file stem for the GPU names torch reports (lower-cased substrings, all must match)
KNOWN_GPUS = (
    (("a100", "sxm4", "80gb"), "a100-sxm4-80gb"),
    (("h100", "hbm3"), "h100-sxm5"),
    (("h100", "sxm"), "h100-sxm5"),
    (("orin",), "jetson-agx-orin"),
    (("h200",), "h200"),
)
# int4 weight-only GEMMs (torch's tinygemm, aten._weight_int4pack_mm) against the bf16 GEMM of the same
# shape: Llama-3-8B's decode layers (q/o, k/v, the fused qkv of gpt-fast, gate/up, down) at 1 and
# 16 tokens, each as an op-rate row (2MNK / time) under the compiled runtime (graphed calls)
INT4_LAYERS = ((4096, 4096), (1024, 4096), (6144, 4096), (14336, 4096), (4096, 14336))
INT4_TOKENS = (1, 16)
# BERT-base linears at batch 16 x 128 tokens and SAM ViT-h's MLP linears at 16,384 tokens
DYNAMIC_INT8_SHAPES = ((2048, 768, 768), (2048, 3072, 768), (2048, 768, 3072), (16384, 5120, 1280),
                       (16384, 1280, 5120))
INT4_GROUP = 64           # torchao's int4 weight-only benchmark of Llama-3-8B (published.md §2.3)
INT4_INNER_K_TILES = 8    # torchao's default int4 layout
# 2:4 libraries of torch's semi-structured tensors: (model kernel name, force CUTLASS?)
SPARSE_LIBRARIES = (("cusparselt", False), ("cutlass-24", True))


class Deadline:
    """Wall-clock budgets: a run on a lent GPU ends well inside its lease and keeps what it measured."""

    def __init__(self, total_s: float | None) -> None:
        self.end = time.monotonic() + total_s if total_s else math.inf

    def left(self) -> float:
        return self.end - time.monotonic()

    def passed(self, need_s: float = 0.0) -> bool:
        return self.left() < need_s

    def section(self, budget_s: float | None) -> Deadline:
        """A sub-budget that ends at the earlier of its own end and this one's."""
        sub = Deadline(budget_s)
        sub.end = min(sub.end, self.end)
        return sub


@dataclass
class Timing:
    median_ms: float
    spread: float  # (p90 - p10) / median over the repeats


def device_file_name(gpu_name: str) -> str:
    low = gpu_name.lower()
    for words, stem in KNOWN_GPUS:
        if all(w in low for w in words):
            return stem
    return re.sub(r"[^a-z0-9]+", "-", low).strip("-")


def parse_shape(text: str) -> tuple[int, int, int]:
    """'MxNxK' -> (M, N, K)."""
    parts = text.strip().lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SystemExit(f"gpu_measure: a shape is MxNxK with positive integers, got {text!r}")
    m, n, k = (int(p) for p in parts)
    return m, n, k


def time_ms(fn: Callable[[], object], *, repeats: int, inner: int, cuda: bool) -> Timing:
    """Median time of one call: `repeats` samples, each timing up to `inner` back-to-back calls
    (fewer for slow calls, so a sample lasts about SAMPLE_MS and the grid stays minutes long)."""
    for _ in range(3):
        fn()
    if cuda:
        torch.cuda.synchronize()
    one = _once_ms(fn, cuda)
    inner = max(1, min(inner, int(SAMPLE_MS / max(one, 1e-3))))
    if one * inner * repeats > MAX_CASE_MS:
        repeats = max(5, int(MAX_CASE_MS / (one * inner)))
    samples = []
    if cuda:
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / inner)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) * 1e3 / inner)
    samples.sort()
    med = statistics.median(samples)
    p10, p90 = samples[len(samples) // 10], samples[(len(samples) * 9) // 10 - (1 if len(samples) >= 10 else 0)]
    return Timing(med, (p90 - p10) / med if med > 0 else 0.0)


def _once_ms(fn: Callable[[], object], cuda: bool) -> float:
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def mask_24(w: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest-magnitude weights of every 4 along K."""
    n, k = w.shape
    groups = w.abs().reshape(n, k // 4, 4)
    idx = groups.topk(2, dim=-1).indices
    m = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return m.reshape(n, k)


def mask_unstructured(w: torch.Tensor, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(w.shape, generator=gen, device="cpu").to(w.device) >= sparsity


def mask_blocks(w: torch.Tensor, b: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    n, k = w.shape
    keep = torch.rand((n // b, k // b), generator=gen, device="cpu") >= sparsity
    return keep.repeat_interleave(b, 0).repeat_interleave(b, 1).to(w.device)


def row(*, gpu: str, runtime: str, dtype: str, pattern: str, kernel: str, dense: Timing, sparse: Timing | None,
        source: str, shape: tuple[int, int, int] | None = None, workload: str = "", quantity: str = "speedup",
        ref_runtime: str = "", name: str = "") -> dict:
    """One validation-table row (TABLE_COLUMNS). speedup: dense / sparse time; runtime_ratio:
    `dense` under `runtime` / `sparse` under `ref_runtime` (same plan)."""
    ref = sparse if sparse is not None else dense
    value = dense.median_ms / ref.median_ms
    m, n, k = shape if shape is not None else ("", "", "")
    what = workload or f"{m}x{n}x{k}"
    return {
        "case": name or f"measured-{runtime}-{kernel or 'dense'}-{what}-{dtype}-{pattern}",
        "device": gpu, "runtime": runtime, "dtype": dtype, "workload": workload, "M": m, "N": n, "K": k,
        "kernel": kernel, "pattern": pattern, "phase": "forward", "quantity": quantity,
        "dense_ms": f"{dense.median_ms:.5g}", "sparse_ms": f"{ref.median_ms:.5g}" if sparse is not None else "",
        "measured": f"{value:.4g}", "ref_runtime": ref_runtime, "direction": direction_of(value),
        "source": f"{source}; spread {max(dense.spread, ref.spread):.0%}", "conf": "M",
        "date_added": _dt.datetime.now(_dt.UTC).date().isoformat(),
    }


# ----------------------------------------------------------------------------- kernels

def dense_fn(x: torch.Tensor, w: torch.Tensor, dtype: str) -> Callable[[], object]:
    """The dense GEMM x @ w^T at `dtype` (cuBLAS): int8 through torch._int_mm, fp8 e4m3 through
    torch._scaled_mm (per-tensor scales of 1), 16-bit through torch.nn.functional.linear."""
    if dtype == "int8":
        wt = w.t()  # (K, N) column-major: cuBLASLt's int8 GEMM wants the TN layout
        return lambda: torch._int_mm(x, wt)
    if dtype == "fp8":
        one = torch.ones((), device=x.device)
        wt = w.t()
        return lambda: torch._scaled_mm(x, wt, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    return lambda: torch.nn.functional.linear(x, w)


def operands(m: int, n: int, k: int, dtype: str, dev: torch.device, gen: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen)
    if dtype == "int8":
        return (x * 20).clamp(-127, 127).to(torch.int8).to(dev), (w * 20).clamp(-127, 127).to(torch.int8).to(dev)
    if dtype == "fp8":
        return x.to(dev).to(torch.float8_e4m3fn), w.to(dev).to(torch.float8_e4m3fn)
    dt = TORCH_FLOAT[dtype]
    return x.to(dev, dt), w.to(dev, dt)


def semi_structured_fn(x: torch.Tensor, w: torch.Tensor, *, force_cutlass: bool) -> Callable[[], object]:
    """A 2:4 linear through torch's semi-structured tensors on one library; checked against dense
    for floating dtypes."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
    pruned = prune_24(w)
    try:
        ws = to_sparse_semi_structured(pruned)
    finally:  # a class attribute: the models below convert with torch's default library
        SparseSemiStructuredTensor._FORCE_CUTLASS = False
    if pruned.is_floating_point() and pruned.element_size() >= 2:
        ref = torch.nn.functional.linear(x, pruned)
        out = torch.nn.functional.linear(x, ws)
        if not torch.allclose(out.float(), ref.float(), rtol=5e-2, atol=5e-1):
            raise ValueError("2:4 result differs from the dense result")
    return lambda: torch.nn.functional.linear(x, ws)


def prune_24(w: torch.Tensor) -> torch.Tensor:
    """`w` with the 2:4 mask applied, in its own dtype (8-bit tensors are masked through fp32: torch
    has no fp8 multiply)."""
    if w.element_size() == 1:
        return (w.float() * mask_24(w.float())).to(w.dtype)
    return w * mask_24(w)


def cslt_operands(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.dtype | None]:
    """(compressed 2:4 weight, X^T with its rows padded to 16, output dtype) for torch._cslt_sparse_mm:
    16 is the largest row multiple cuSPARSELt asks of a dense operand (fp8/int8); fp8 writes bf16."""
    packed = torch._cslt_compress(prune_24(w))
    pad = (-x.shape[0]) % 16
    xt = (torch.cat([x, x.new_zeros((pad, x.shape[1]))]) if pad else x).t()
    return packed, xt, torch.bfloat16 if w.dtype == torch.float8_e4m3fn else None


def cusparselt_direct_fn(x: torch.Tensor, w: torch.Tensor) -> Callable[[], object]:
    """A 2:4 GEMM W @ X^T called on cuSPARSELt directly (torch._cslt_sparse_mm, no tensor subclass),
    with the algorithm cuSPARSELt's own search picks: what an engine or a benchmark calling the
    library gets."""
    packed, xt, out_dtype = cslt_operands(x, w)
    try:
        alg = int(torch._cslt_sparse_mm_search(packed, xt, out_dtype=out_dtype))
    except (RuntimeError, AttributeError) as e:  # the search is deprecated in newer torch: the default algorithm
        print(f"cuSPARSELt algorithm search unavailable ({type(e).__name__}); algorithm 0")
        alg = 0
    return lambda: torch._cslt_sparse_mm(packed, xt, out_dtype=out_dtype, alg_id=alg)


def diagnose_cusparselt(x: torch.Tensor, w: torch.Tensor, dname: str, shape: tuple[int, int, int],
                       rep: dict) -> None:
    """Print (not recorded) where an eager 2:4 call's time goes: cuSPARSELt called directly without a
    graph (host work of each call included), and graphed with algorithm 0 (torch's subclass default)
    instead of the searched one."""
    try:
        direct = time_ms(cusparselt_direct_fn(x, w), **rep)
        packed, xt, out_dtype = cslt_operands(x, w)
        alg0 = time_ms(graphed(lambda: torch._cslt_sparse_mm(packed, xt, out_dtype=out_dtype, alg_id=0)), **rep)
        print(f"diagnose cusparselt {dname} {shape[0]}x{shape[1]}x{shape[2]}: direct eager {direct.median_ms:.4g} ms, "
              f"graphed alg 0 {alg0.median_ms:.4g} ms", flush=True)
    except (RuntimeError, NotImplementedError, ValueError, TypeError, AttributeError) as e:
        _skip(f"diagnose cusparselt {dname} {shape}", e)


def graphed(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` captured once in a CUDA graph: its replay costs no per-op host work (what compiled and
    engine runtimes do), so a timed replay is the kernel's GPU time."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def csr_fn(w: torch.Tensor, xt: torch.Tensor, sparsity: float, gen: torch.Generator) -> Callable[[], object]:
    ws = (w * mask_unstructured(w, sparsity, gen)).to_sparse_csr()
    return lambda: torch.mm(ws, xt)


def bsr_fn(w: torch.Tensor, xt: torch.Tensor, b: int, sparsity: float, gen: torch.Generator) -> Callable[[], object]:
    ws = (w * mask_blocks(w, b, sparsity, gen)).to_sparse_bsr((b, b))
    return lambda: torch.mm(ws, xt)


def _skip(what: str, e: BaseException) -> None:
    print(f"skip {what}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")


def measure_gemms(args: argparse.Namespace, *, gpu: str, source: str, cuda: bool, deadline: Deadline,
                  emit: Callable[[dict], None]) -> None:
    """Every (shape, dtype) of the grid, shapes outermost so a budget cut keeps every dtype of the
    shapes it reached. Eager rows time the torch calls as a model makes them (host dispatch in the
    gaps between kernels); engine rows replay dense cuBLAS and cuSPARSELt called directly (its own
    algorithm search) from CUDA graphs."""
    dev = torch.device("cuda" if cuda else "cpu")
    shapes = [(8, 64, 128), (64, 128, 256)] if args.cpu_smoke else (SHAPES_QUICK if args.quick else SHAPES_FULL)
    if args.shapes:
        shapes = [parse_shape(t) for t in args.shapes.split(",") if t.strip()]
    dtypes = ["fp32"] if args.cpu_smoke else [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES and not (args.cpu_smoke and d == "fp32"):
            raise SystemExit(f"gpu_measure: unknown dtype {d!r} (use {', '.join(DTYPES)})")
    runtimes = {r.strip() for r in args.runtimes.split(",") if r.strip()}
    if not runtimes or runtimes - {"eager", "engine"}:
        raise SystemExit(f"gpu_measure: --runtimes {args.runtimes!r}: use eager, engine or both")
    gen = torch.Generator().manual_seed(0)
    rep = {"repeats": args.repeats, "inner": args.inner, "cuda": cuda}
    for m, n, k in shapes:
        for dname in dtypes:
            if deadline.passed():
                print(f"budget spent: GEMMs stop before {m}x{n}x{k} {dname}")
                return
            bytes_per = 1 if dname in ("int8", "fp8") else (4 if dname == "fp32" else 2)
            need = (m * k + n * k * 3 + m * n * 2) * bytes_per
            if cuda and need > 0.6 * torch.cuda.mem_get_info()[0]:
                print(f"skip {m}x{n}x{k} {dname}: needs {need / 1e9:.1f} GB")
                continue
            try:
                x, w = operands(m, n, k, dname, dev, gen)
                dense = time_ms(dense_fn(x, w, dname), **rep)
            except (RuntimeError, NotImplementedError, ValueError, TypeError, AttributeError) as e:
                _skip(f"dense {m}x{n}x{k} {dname}", e)
                continue
            # (runtime, pattern, kernel, builder of the timed call, dense timing it is compared with)
            cases: list[tuple[str, str, str, Callable[[], Callable[[], object]]]] = []
            if cuda:
                for lib, force in SPARSE_LIBRARIES:
                    cases.append(("eager", "2:4", lib,
                                  lambda force=force, x=x, w=w: semi_structured_fn(x, w, force_cutlass=force)))
                cases.append(("engine", "2:4", "cusparselt", lambda x=x, w=w: graphed(cusparselt_direct_fn(x, w))))
            if dname in TORCH_FLOAT:  # torch's CSR/BSR matmuls take floating dtypes only
                xt = x.t().contiguous()
                for sp in CSR_SPARSITIES:
                    cases.append(("eager", f"unstructured:{sp:g}", "cusparse-csr",
                                  lambda sp=sp, w=w, xt=xt: csr_fn(w, xt, sp, gen)))
                for b, sp in BSR_CASES:
                    if n % b == 0 and k % b == 0:
                        cases.append(("eager", f"block{b}x{b}:{sp:g}", "bsr",
                                      lambda b=b, sp=sp, w=w, xt=xt: bsr_fn(w, xt, b, sp, gen)))
            if cuda and args.diagnose and dname in ("fp16", "int8", "fp8"):
                diagnose_cusparselt(x, w, dname, (m, n, k), rep)
            cases = [c for c in cases if c[0] in runtimes]
            dense_engine: Timing | None = None
            for runtime, pattern, kernel, build in cases:
                if deadline.passed():
                    break
                try:
                    if runtime == "engine" and dense_engine is None:
                        dense_engine = time_ms(graphed(dense_fn(x, w, dname)), **rep)
                    sparse = time_ms(build(), **rep)
                except (RuntimeError, NotImplementedError, ValueError, TypeError, AttributeError) as e:
                    _skip(f"{runtime} {kernel} {pattern} {m}x{n}x{k} {dname}", e)
                    continue
                finally:
                    if cuda:
                        torch.cuda.empty_cache()
                base = dense_engine if runtime == "engine" and dense_engine is not None else dense
                r = row(gpu=gpu, runtime=runtime, dtype=dname, pattern=pattern, kernel=kernel, dense=base,
                        sparse=sparse, source=source, shape=(m, n, k))
                emit(r)
                print(f"{runtime:<6} {kernel:<14} {pattern:<18} {dname} {m}x{n}x{k}: dense {r['dense_ms']} ms, "
                      f"sparse {r['sparse_ms']} ms, {r['measured']}x", flush=True)


def tinygemm_fn(x: torch.Tensor, w: torch.Tensor) -> Callable[[], object]:
    """x @ w^T with w quantised to int4 in groups of INT4_GROUP along K (a bf16 scale and zero per
    group and column) through torch's tinygemm kernel (aten._weight_int4pack_mm), as torchao's
    default int4 layout calls it. torch 2.5+ packs a uint8 [N, K/2] tensor; older torch an int32 [N, K]."""
    n, k = w.shape
    wg = w.float().reshape(n, k // INT4_GROUP, INT4_GROUP)
    lo, hi = wg.amin(dim=2, keepdim=True), wg.amax(dim=2, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=1e-6)
    q = ((wg - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    zero = lo + 8 * scale  # tinygemm dequantises (q - 8) * scale + zero
    scales_and_zeros = torch.stack([scale.squeeze(2), zero.squeeze(2)], dim=2).transpose(0, 1).contiguous()
    scales_and_zeros = scales_and_zeros.to(torch.bfloat16)
    try:
        packed = torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), INT4_INNER_K_TILES)
    except RuntimeError:
        packed = torch._convert_weight_to_int4pack(q, INT4_INNER_K_TILES)
    xb = x.to(torch.bfloat16)
    out = torch._weight_int4pack_mm(xb, packed, INT4_GROUP, scales_and_zeros)
    ref = xb.float() @ ((q.reshape(n, k // INT4_GROUP, INT4_GROUP) - 8) * scale + zero).reshape(n, k).t().to(x.device)
    if not torch.allclose(out.float(), ref, rtol=0.05, atol=0.05 * float(ref.abs().max())):
        # the time does not depend on the values: keep it, say so
        print("note: tinygemm's result disagrees with this script's dequantisation (zero-point convention?)")
    return lambda: torch._weight_int4pack_mm(xb, packed, INT4_GROUP, scales_and_zeros)


def op_rate_row(*, gpu: str, dtype: str, kernel: str, timing: Timing, shape: tuple[int, int, int],
                source: str, runtime: str = "compiled", deployed_from: str = "") -> dict:
    """One op-rate row (2MNK / time) of a dense or weight-only GEMM under `runtime`. With
    `deployed_from`, a 16-bit linear of that dtype deployed at `dtype` (the row's workload is
    the 16-bit GEMM, so the model costs the deployment's quantisation kernels too)."""
    m, n, k = shape
    workload = f"gemm:M={m},N={n},K={k},dtype={deployed_from}" if deployed_from else ""
    r = row(gpu=gpu, runtime=runtime, dtype=dtype, pattern="dense", kernel=kernel, dense=timing, sparse=None,
            source=source, shape=None if workload else shape, workload=workload, quantity="op_rate")
    what = f"deployed-{dtype}" if deployed_from else dtype
    r.update(measured=f"{2.0 * m * n * k / (timing.median_ms * 1e-3):.5g}", direction="-",
             case=f"measured-{runtime}-{kernel}-{m}x{n}x{k}-{what}-dense-op-rate")
    return r


def measure_int4(*, gpu: str, source: str, deadline: Deadline, rep: dict, emit: Callable[[dict], None]) -> None:
    """tinygemm int4 and cuBLAS bf16 at Llama-3-8B's decode shapes, graphed: the op rates the int4
    decode cases (validation table) rest on."""
    gen = torch.Generator().manual_seed(0)
    for n, k in INT4_LAYERS:
        for m in INT4_TOKENS:
            if deadline.passed():
                print(f"budget spent: int4 GEMMs stop before {m}x{n}x{k}")
                return
            x, w = operands(m, n, k, "bf16", torch.device("cuda"), gen)
            builds: tuple[tuple[str, str, Callable[[], Callable[[], object]]], ...] = (
                ("bf16", "cublas", lambda x=x, w=w: dense_fn(x, w, "bf16")),
                ("int4", "tinygemm", lambda x=x, w=w: tinygemm_fn(x, w)))
            for dtype, kernel, build in builds:
                try:
                    timing = time_ms(graphed(build()), **rep)
                except (RuntimeError, NotImplementedError, ValueError, TypeError, AttributeError) as e:
                    _skip(f"{kernel} {m}x{n}x{k} {dtype}", e)
                    continue
                r = op_rate_row(gpu=gpu, dtype=dtype, kernel=kernel, timing=timing, shape=(m, n, k), source=source)
                emit(r)
                print(f"compiled {kernel:<9} {dtype} {m}x{n}x{k}: {timing.median_ms * 1e3:.4g} us, "
                      f"{2.0 * n * k * (0.5 if dtype == 'int4' else 2) / (timing.median_ms * 1e-3) / 1e9:.4g} GB/s "
                      f"of weights", flush=True)


# ----------------------------------------------------------------------------- power

POWER_SHAPES = (8192, 16384)
POWER_SECONDS = 3.0   # long enough for the board's power management to settle on a clock
NVIDIA_SMI_QUERY = ("nvidia-smi", "--query-gpu=power.draw,clocks.sm,power.limit", "--format=csv,noheader,nounits")


def nvidia_smi_sample() -> tuple[float, float, float] | None:
    """(board power W, SM clock MHz, power limit W) now, or None where nvidia-smi cannot say."""
    try:
        out = subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=5, check=True).stdout
        watts, mhz, limit = (float(v) for v in out.splitlines()[0].split(","))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return watts, mhz, limit


def sustained_power(fn: Callable[[], object], seconds: float) -> tuple[float, list[tuple[float, float, float]]]:
    """(calls per second, nvidia-smi samples) while `fn` runs back to back for `seconds`; the
    samples start after a third of it, once the board's power management has settled."""
    samples: list[tuple[float, float, float]] = []
    calls, start = 0, time.monotonic()
    torch.cuda.synchronize()
    while time.monotonic() - start < seconds:
        for _ in range(4):
            fn()
        calls += 4
        if time.monotonic() - start > seconds / 3:
            got = nvidia_smi_sample()
            if got:
                samples.append(got)
        torch.cuda.synchronize()
    return calls / (time.monotonic() - start), samples


def measure_power(*, deadline: Deadline) -> None:
    """Board power and SM clock while square bf16 GEMMs run back to back for a few seconds, dense
    (cuBLAS) and 2:4 (cuSPARSELt, its own algorithm search): whether a large GEMM holds the board
    at its power limit, at what clock, and whether the 2:4 GEMM (half the multiply-adds) runs at
    a higher one (printed for the log, not a table row; the device files' energy and clock fields
    are checked against it)."""
    gen = torch.Generator().manual_seed(0)
    for size in POWER_SHAPES:
        x, w = operands(size, size, size, "bf16", torch.device("cuda"), gen)
        for label, build in (("dense", lambda x=x, w=w: dense_fn(x, w, "bf16")),
                             ("2:4", lambda x=x, w=w: cusparselt_direct_fn(x, w))):
            if deadline.passed(POWER_SECONDS + 5):
                print(f"budget spent: power samples stop before {label} {size} cubed")
                return
            try:
                rate, samples = sustained_power(build(), POWER_SECONDS)
            except (RuntimeError, NotImplementedError, ValueError, TypeError, AttributeError) as e:
                _skip(f"power {label} {size} cubed", e)
                continue
            tflops = 2.0 * size ** 3 * rate / 1e12
            what = f"power: {label} bf16 {size} cubed: {tflops:.4g} dense-equivalent TFLOP/s"
            if not samples:
                print(f"{what}; nvidia-smi gave no samples", flush=True)
                continue
            watts = statistics.median(s[0] for s in samples)
            mhz = statistics.median(s[1] for s in samples)
            print(f"{what} at {watts:.0f} W (limit {samples[0][2]:.0f} W), SM clock {mhz:.0f} MHz, "
                  f"{len(samples)} samples", flush=True)


# ----------------------------------------------------------------------------- kernel-rate probes

# Two assumptions of the model that whole-model runs cannot separate, timed on their own (printed
# for the log, not table rows):
#  * the GPU-side cost of one small kernel replayed from a CUDA graph (runtime.compiled and
#    runtime.engine kernel_launch, assumed 2.5 us on every GPU file): the replay time of a graph of
#    GRAPH_KERNELS tiny kernels less that of a graph of one, per kernel; and the same kernels
#    launched one by one from Python (eager's per-op host cost);
#  * whether an elementwise kernel with a transcendental function (exact GELU's erf, exp, SiLU)
#    streams at a copy's DRAM rate or is held back by its instructions: SAM's MLP GELU ran at ~0.6
#    of the H200's DRAM peak in this script's profile, where the model streams every elementwise
#    kernel at the copy rate (dram_efficiency). Read and write bytes over the kernel's time, and
#    the ratio to the copy of the same tensor.
GRAPH_KERNELS = 256
PROBE_ELEMENTS = 8 * 4096 * 5120  # SAM ViT-H's MLP hidden activations at batch 8
SMOKE_ELEMENTS = 1 << 16
PROBE_OPS: tuple[tuple[str, Callable[[torch.Tensor, torch.Tensor], object]], ...] = (
    ("copy", lambda x, out: out.copy_(x)),
    ("scale", lambda x, out: torch.mul(x, 2.0, out=out)),
    ("exp", lambda x, out: torch.exp(x, out=out)),
    ("silu", lambda x, out: torch.nn.functional.silu(x)),
    ("gelu-erf", lambda x, out: torch.nn.functional.gelu(x)),
    ("gelu-tanh", lambda x, out: torch.nn.functional.gelu(x, approximate="tanh")),
)


def graph_kernel_cost_us(x: torch.Tensor, rep: dict) -> tuple[float, float, float]:
    """(GPU time per kernel inside a replayed CUDA graph, host + GPU time per kernel launched one
    by one, time of one replayed graph of a single kernel), us: from graphs of 1 and GRAPH_KERNELS
    in-place adds on a tiny tensor. The last is the floor of this script's graphed (engine)
    timings: below it a call's time is the host's replay, not the kernel."""
    def body(n: int) -> Callable[[], object]:
        def run() -> None:
            for _ in range(n):
                x.add_(1.0)
        return run

    one = time_ms(graphed(body(1)), **rep).median_ms
    many = time_ms(graphed(body(GRAPH_KERNELS)), **rep).median_ms
    eager = time_ms(body(GRAPH_KERNELS), **rep).median_ms
    return (many - one) / (GRAPH_KERNELS - 1) * 1e3, eager / GRAPH_KERNELS * 1e3, one * 1e3


def elementwise_rates(elements: int, dtype: torch.dtype, dev: torch.device, rep: dict) -> list[tuple[str, float, float]]:
    """(op, ms, GB/s of reads plus writes) for each PROBE_OPS kernel over one tensor."""
    x = torch.randn(elements, device=dev, dtype=torch.float32).to(dtype)
    out = torch.empty_like(x)
    moved = 2.0 * x.numel() * x.element_size()
    rates = []
    for name, op in PROBE_OPS:
        t = time_ms(lambda op=op: op(x, out), **rep).median_ms
        rates.append((name, t, moved / (t * 1e-3) / 1e9))
    return rates


def measure_probes(*, cuda: bool, deadline: Deadline, rep: dict) -> None:
    """Print the kernel-rate probes (see above)."""
    if deadline.passed(10):
        print("budget spent: kernel-rate probes skipped")
        return
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16
    try:
        if cuda:
            graph_us, eager_us, single_us = graph_kernel_cost_us(torch.zeros(1024, device=dev), rep)
            print(f"probe: a small kernel replayed from a CUDA graph costs {graph_us:.3g} us on the GPU "
                  f"({GRAPH_KERNELS} in one graph); launched one by one from Python {eager_us:.3g} us; "
                  f"a graph of one replays in {single_us:.3g} us (the floor of this script's engine rows)", flush=True)
        elements = PROBE_ELEMENTS if cuda else SMOKE_ELEMENTS
        rates = elementwise_rates(elements, dtype, dev, rep)
    except (RuntimeError, NotImplementedError, ValueError, TypeError, AttributeError) as e:
        _skip("kernel-rate probes", e)
        return
    copy_rate = rates[0][2]
    for name, ms, rate in rates:
        print(f"probe: elementwise {name} bf16 x {elements}: "
              f"{ms * 1e3:.4g} us, {rate:.4g} GB/s read + written, {rate / copy_rate:.2f} of the copy's rate", flush=True)


# ----------------------------------------------------------------------------- dynamic int8

def dynamic_int8_fn(x: torch.Tensor, w: torch.Tensor) -> Callable[[], object]:
    """x @ w^T as torchao 0.7's int8_dynamic_activation_int8_weight runs it, op for op (the
    sequence the model's quantisation kernels come from, cost/families/dynamic_quant.py): int8
    weights with a symmetric scale per output channel, made once; per call, a symmetric scale per
    token from each row's min and max (range -127..127, eps 1e-5), x * (1 / scale) rounded,
    clamped and cast to int8, torch._int_mm (int32 out), times the row scales, times the column
    scales. Checked against the 16-bit product."""
    wf = w.float()
    w_scale = (wf.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-5)
    w_t = (wf / w_scale).round().clamp(-127, 127).to(torch.int8).contiguous().t()
    col_scale = w_scale.t().to(x.dtype)

    def run() -> torch.Tensor:
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        lo = torch.minimum(x.amin(dim=1, keepdim=True), zero)
        hi = torch.maximum(x.amax(dim=1, keepdim=True), zero)
        scale = (torch.maximum(-lo, hi) / 127).clamp(min=1e-5)
        q = torch.clamp(torch.round(x * scale.reciprocal()), -127, 127).to(torch.int8)
        return (torch._int_mm(q, w_t) * scale) * col_scale

    ref = x.float() @ wf.t()
    if not torch.allclose(run().float(), ref, rtol=0.05, atol=0.05 * float(ref.abs().max())):
        raise ValueError("the dynamic int8 linear disagrees with the 16-bit product")
    return run


def measure_dynamic_int8(args: argparse.Namespace, *, gpu: str, source: str, deadline: Deadline, rep: dict,
                         emit: Callable[[dict], None]) -> None:
    """A bf16 linear against the same linear deployed as torchao's dynamic int8, eager (op by op)
    and compiled (torch.compile, replayed from a CUDA graph), at BERT-base and SAM ViT-h linear
    shapes: op-rate rows the model predicts with its quantisation kernels."""
    gen = torch.Generator().manual_seed(0)
    for m, n, k in DYNAMIC_INT8_SHAPES:
        x, w = operands(m, n, k, "bf16", torch.device("cuda"), gen)
        for runtime in ("eager", "compiled"):
            if deadline.passed():
                print(f"budget spent: dynamic int8 stops before {runtime} {m}x{n}x{k}")
                return
            try:
                bf16, dyn = dense_fn(x, w, "bf16"), dynamic_int8_fn(x, w)
                if runtime == "compiled":
                    bf16, dyn = graphed(bf16), graphed(torch.compile(dyn))
                timings = {"bf16": time_ms(bf16, **rep), "int8": time_ms(dyn, **rep)}
            except (RuntimeError, NotImplementedError, ValueError, TypeError, AttributeError) as e:
                _skip(f"dynamic int8 {runtime} {m}x{n}x{k}", e)
                continue
            for dtype, timing in timings.items():
                emit(op_rate_row(gpu=gpu, dtype=dtype, kernel="cublas", timing=timing, shape=(m, n, k), source=source,
                                 runtime=runtime, deployed_from="bf16" if dtype == "int8" else ""))
            print(f"{runtime:<8} dynamic int8 {m}x{n}x{k}: bf16 {timings['bf16'].median_ms * 1e3:.4g} us, "
                  f"int8 {timings['int8'].median_ms * 1e3:.4g} us", flush=True)


# ----------------------------------------------------------------------------- BERT-base

def bert_model(batch: int, seq: int, dev: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, dict]:
    """BERT-base (BertModel, random weights, eager attention as the 2:4 tutorial's transformers ran it)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(attn_implementation="eager")
    model = BertModel(config).to(dev, dtype).eval()
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=dev)
    return model, {"input_ids": ids}


def sparsify_encoder_linears(model: torch.nn.Module) -> None:
    """Every Linear inside the encoder layers: 2:4 mask and a semi-structured weight (as the tutorial)."""
    from torch.sparse import to_sparse_semi_structured

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layer." in f".{name}":
            w = mod.weight.detach()
            mod.weight = torch.nn.Parameter(to_sparse_semi_structured(w * mask_24(w)), requires_grad=False)


def measure_bert(args: argparse.Namespace, *, gpu: str, source: str, deadline: Deadline) -> list[dict]:
    rep = {"repeats": max(5, args.repeats // 3), "inner": 1, "cuda": True}
    rows: list[dict] = []
    dev = torch.device("cuda")
    cases = BERT_QUICK if args.quick else BERT_CASES
    if args.bert_batches:
        cases = tuple((int(b), BERT_CASES[0][1]) for b in args.bert_batches.split(","))
    for batch, seq in cases:
        workload = f"bert-base:batch={batch},seq={seq},device=meta,attn=eager"
        times: dict[tuple[str, str], Timing] = {}
        for plan in ("dense", "2:4"):
            if deadline.passed():
                print(f"budget spent: BERT-base stops before {plan} batch {batch}")
                break
            try:
                model, inputs = bert_model(batch, seq, dev, torch.float16)
                if plan == "2:4":
                    sparsify_encoder_linears(model)
                with torch.inference_mode():
                    times[(plan, "eager")] = time_ms(lambda m=model, i=inputs: m(**i), **rep)
                    if deadline.passed(args.compile_need_s):
                        print(f"budget: BERT-base {plan} batch {batch} not compiled ({deadline.left():.0f} s left)")
                        continue
                    compiled = torch.compile(model, mode=args.compile_mode)
                    times[(plan, "compiled")] = time_ms(lambda c=compiled, i=inputs: c(**i), **rep)
            except Exception as e:
                _skip(f"BERT-base {plan} batch {batch}", e)
            finally:
                torch.cuda.empty_cache()
        if ("dense", "eager") in times and ("dense", "compiled") in times:
            rows.append(row(gpu=gpu, runtime="eager", ref_runtime="compiled", dtype="fp16", pattern="dense",
                            kernel="", dense=times[("dense", "eager")], sparse=times[("dense", "compiled")],
                            source=source, workload=workload, quantity="runtime_ratio",
                            name=f"measured-bert-base-bs{batch}-eager-vs-compiled"))
        for rt in ("eager", "compiled"):
            if ("dense", rt) in times and ("2:4", rt) in times:
                rows.append(row(gpu=gpu, runtime=rt, dtype="fp16", pattern="2:4", kernel="",
                                dense=times[("dense", rt)], sparse=times[("2:4", rt)], source=source,
                                workload=workload, name=f"measured-bert-base-bs{batch}-{rt}-2:4"))
        for r in rows[-3:]:
            print(f"{r['case']:<48} {r['quantity']:<14} {r['measured']}")
    return rows


# ----------------------------------------------------------------------------- SAM ViT-h

SAM_BATCH = 8  # torchao's figures are at batch 32; 8 keeps the global blocks' bias tensors small


def measure_sam(args: argparse.Namespace, *, gpu: str, source: str, deadline: Deadline) -> list[dict]:
    """SAM's ViT-H image encoder (transformers' SamVisionModel, random weights, bf16, 1024x1024):
    dense throughput and the speedup of 2:4 on the MLP linears only (torchao's SAM case), eager
    and under torch.compile(mode="max-autotune")."""
    from torch.sparse import to_sparse_semi_structured

    from sparsesim.tracing.models.hf import build_sam_vit_h

    rep = {"repeats": max(5, args.repeats // 3), "inner": 1, "cuda": True}
    workload = f"sam-vit-h:batch={SAM_BATCH}"
    plan = "plans/sam-vit-h-mlp-2of4.toml"
    times: dict[tuple[str, str], Timing] = {}
    for sparse in (False, True):
        if deadline.passed():
            print(f"budget spent: SAM stops before {'2:4 MLP' if sparse else 'dense'}")
            break
        try:
            model, inputs = build_sam_vit_h(batch=SAM_BATCH, dtype="bf16", device="cpu")
            model = model.cuda()
            inputs = {k: v.cuda() for k, v in inputs.items()}
            if sparse:
                for name, mod in model.named_modules():
                    if isinstance(mod, torch.nn.Linear) and ".mlp.lin" in name:
                        w = mod.weight.detach()
                        mod.weight = torch.nn.Parameter(to_sparse_semi_structured(w * mask_24(w)), requires_grad=False)
            with torch.inference_mode():
                times[(plan if sparse else "dense", "eager")] = time_ms(lambda m=model, i=inputs: m(**i), **rep)
                if deadline.passed(args.compile_need_s):
                    print(f"budget: SAM {'2:4 MLP' if sparse else 'dense'} not compiled ({deadline.left():.0f} s left)")
                    continue
                compiled = torch.compile(model, mode=args.compile_mode)
                times[(plan if sparse else "dense", "compiled")] = time_ms(lambda c=compiled, i=inputs: c(**i), **rep)
        except Exception as e:
            _skip(f"SAM ViT-h {'2:4 MLP' if sparse else 'dense'}", e)
        finally:
            torch.cuda.empty_cache()
    rows: list[dict] = []
    for rt in ("eager", "compiled"):
        if ("dense", rt) in times:
            r = row(gpu=gpu, runtime=rt, dtype="bf16", pattern="dense", kernel="", dense=times[("dense", rt)],
                    sparse=None, source=source, workload=workload, quantity="throughput",
                    name=f"measured-sam-vit-h-bs{SAM_BATCH}-{rt}-dense-throughput")
            r.update(measured=f"{SAM_BATCH / (times[('dense', rt)].median_ms / 1e3):.4g}", direction="-")
            rows.append(r)
        if ("dense", rt) in times and (plan, rt) in times:
            rows.append(row(gpu=gpu, runtime=rt, dtype="bf16", pattern=plan, kernel="", dense=times[("dense", rt)],
                            sparse=times[(plan, rt)], source=source, workload=workload,
                            name=f"measured-sam-vit-h-bs{SAM_BATCH}-{rt}-mlp-2:4"))
    for r in rows:
        print(f"{r['case']:<48} {r['quantity']:<14} {r['measured']}")
    return rows


def measure(args: argparse.Namespace, emit: Callable[[dict], None]) -> None:
    cuda = not args.cpu_smoke
    if cuda:
        gpu_name = torch.cuda.get_device_name(0)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays fp32, as the device files assume
        cap = torch.cuda.get_device_capability(0)
        versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}, sm_{cap[0]}{cap[1]}"
    else:
        gpu_name = "cpu-smoke"
        versions = f"torch {torch.__version__}, CPU smoke run"
    target = args.device_name or device_file_name(gpu_name)
    day = _dt.datetime.now(_dt.UTC).date().isoformat()
    source = f"benchmarks/gpu_measure.py on {gpu_name} ({versions}), {day}"
    if cuda:
        source += f"; compiled = torch.compile(mode={args.compile_mode!r})"
    print(f"# {source}; device file: {target}", flush=True)
    deadline = Deadline(args.budget_s)
    measure_gemms(args, gpu=target, source=source, cuda=cuda, deadline=deadline.section(args.gemm_budget_s), emit=emit)
    if cuda and not args.no_int4:
        measure_int4(gpu=target, source=source, deadline=deadline,
                     rep={"repeats": args.repeats, "inner": args.inner, "cuda": cuda}, emit=emit)
    if cuda and not args.no_power:
        measure_power(deadline=deadline)
    if not args.no_probes:
        measure_probes(cuda=cuda, deadline=deadline, rep={"repeats": args.repeats, "inner": args.inner, "cuda": cuda})
    if cuda and not args.no_dynamic_int8:
        measure_dynamic_int8(args, gpu=target, source=source, deadline=deadline,
                             rep={"repeats": args.repeats, "inner": args.inner, "cuda": cuda}, emit=emit)
    if cuda and not args.no_bert:
        for r in measure_bert(args, gpu=target, source=source, deadline=deadline):
            emit(r)
    if cuda and not args.no_sam:
        for r in measure_sam(args, gpu=target, source=source, deadline=deadline):
            emit(r)


def _print_predictions(rows: list[dict]) -> None:
    from sparsesim.core.errors import SparsesimError
    from sparsesim.hw.devices import load_device

    try:
        device = load_device(rows[0]["device"])
    except (SparsesimError, ImportError) as e:
        print(f"# no prediction: {e}")
        return
    print(f"# predicted on {device.name}:")
    for r in rows:
        try:
            p = predict_case({k: str(v) for k, v in r.items()}, device)
        except (SparsesimError, ImportError) as e:
            print(f"{r['case']:<60} not predicted: {e}")
            continue
        print(f"{r['case']:<60} measured {float(r['measured']):8.4g}  predicted {p['predicted']:8.4g}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="table to append to, row by row (default: the packaged gpu_measured.csv)")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated: {','.join(DTYPES)}")
    ap.add_argument("--quick", action="store_true", help="three shapes and one BERT batch only")
    ap.add_argument("--no-bert", action="store_true", help="skip the eager vs compiled BERT-base runs")
    ap.add_argument("--bert-batches", default="", help="comma-separated BERT-base batch sizes (default: 16,256; --quick: 16)")
    ap.add_argument("--no-sam", action="store_true", help="skip the SAM ViT-h image encoder runs")
    ap.add_argument("--no-dynamic-int8", action="store_true",
                    help="skip the bf16 vs dynamic int8 (torchao's scheme) linears, eager and compiled")
    ap.add_argument("--no-int4", action="store_true",
                    help="skip the int4 weight-only (tinygemm) vs bf16 GEMMs at Llama-3-8B's decode shapes")
    ap.add_argument("--no-power", action="store_true",
                    help="skip the board power and SM clock samples under sustained large GEMMs")
    ap.add_argument("--no-probes", action="store_true",
                    help="skip the kernel-rate probes (a small kernel's cost in a CUDA graph; elementwise rates)")
    ap.add_argument("--shapes", default="", help="comma-separated MxNxK GEMMs instead of the built-in grid")
    ap.add_argument("--runtimes", default="eager,engine",
                    help="comma-separated GEMM runtimes to time (eager: torch's calls; engine: graphed library calls)")
    ap.add_argument("--case-prefix", default="",
                    help="prefix of every case name (e.g. 'holdout-': rows benchmarks/fit_gpu_measured.py leaves out)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--inner", type=int, default=10, help="back-to-back calls per timed sample")
    ap.add_argument("--device-name", default=None, help="device-file name to record (default: from the GPU name)")
    ap.add_argument("--dry-run", action="store_true", help="measure and print, write nothing")
    ap.add_argument("--compile-mode", default="max-autotune",
                    help="torch.compile mode of the compiled runs (reduce-overhead: CUDA graphs, no GEMM autotuning)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new cases after this many seconds")
    ap.add_argument("--gemm-budget-s", type=float, default=None, help="of which the GEMM grid takes at most this many")
    ap.add_argument("--compile-need-s", type=float, default=120.0,
                    help="compile a model only with at least this many budget seconds left")
    ap.add_argument("--diagnose", action="store_true",
                    help="also print eager-direct and algorithm-0 cuSPARSELt timings (not recorded)")
    ap.add_argument("--cpu-smoke", action="store_true", help="check this script's dense/CSR/BSR paths on the CPU")
    args = ap.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_measure: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
              "this script measures NVIDIA GPU kernels, so nothing was measured or written. "
              "Run it on a machine with an NVIDIA GPU and a CUDA build of torch.", file=sys.stderr)
        return 2
    rows: list[dict] = []
    write = not (args.dry_run or args.cpu_smoke)
    path = args.out or measured_table_path()

    def emit(r: dict) -> None:
        assert set(r) == set(TABLE_COLUMNS)
        if args.case_prefix:
            r["case"] = f"{args.case_prefix}{r['case']}"
        rows.append(r)
        if write:  # row by row: a run cut short keeps every case it measured
            append_rows([r], path)

    measure(args, emit)
    if not rows:
        print("gpu_measure: no case could be measured; nothing written", file=sys.stderr)
        return 1
    if not args.cpu_smoke:
        _print_predictions(rows)
    if not write:
        print(f"# {len(rows)} rows measured; not written ({'dry run' if args.dry_run else 'cpu smoke run'})")
        return 0
    print(f"# appended {len(rows)} rows to {path}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
