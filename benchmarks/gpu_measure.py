"""Measure dense vs sparse matmuls on an NVIDIA GPU and append the figures to the GPU validation table.

    python benchmarks/gpu_measure.py                      # full grid, appends to the packaged table
    python benchmarks/gpu_measure.py --quick --dry-run    # a few shapes, print only
    python benchmarks/gpu_measure.py --backend cutlass --out my_gpu.csv

For every (shape, dtype) of the grid it times, with CUDA events, the dense matmul and:
  * 2:4 semi-structured sparsity (torch.sparse.to_sparse_semi_structured; cuSPARSELt or CUTLASS),
  * unstructured sparsity through CSR (torch.sparse_csr_tensor @ dense, cuSPARSE SpMM),
  * block sparsity through BSR (torch.sparse_bsr_tensor @ dense; Triton or cuSPARSE kernels).
Each row records the GPU's device-file name (or its own name when no file matches), dtype,
M x N x K (activation rows, weight rows, weight cols), dense and sparse median times, the speedup,
the pattern, the date and the software versions; `sparsesim validate` then reports the GPU
model's error on them. A case the GPU or torch cannot run is skipped with the reason printed.

Without a CUDA GPU the script exits with status 2 and a message; `--cpu-smoke` runs the dense,
CSR and BSR code paths on the CPU with tiny shapes to check the script itself (nothing written).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sparsesim.fidelity.gpu_validation import (  # noqa: E402
    TABLE_COLUMNS,
    append_rows,
    direction_of,
    predict_case,
    published_table_path,
)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# (M, N, K): the published cases, LLM decode (GEMV) and prefill shapes, and square GEMMs
SHAPES_FULL = [
    (3072, 3072, 10240), (13008, 4096, 1024), (1, 4096, 4096), (8, 4096, 4096), (32, 4096, 4096),
    (128, 4096, 4096), (512, 4096, 4096), (2048, 4096, 4096), (4096, 4096, 4096), (8192, 8192, 8192),
    (2048, 11008, 4096), (2048, 4096, 11008), (16384, 768, 768), (16384, 3072, 768),
]
SHAPES_QUICK = [(3072, 3072, 10240), (1, 4096, 4096), (4096, 4096, 4096)]
CSR_SPARSITIES = (0.5, 0.9, 0.95, 0.99)
BSR_CASES = ((16, 0.5), (32, 0.5), (32, 0.9), (64, 0.75))
# a timed sample lasts about this long; one case's samples at most MAX_CASE_MS in total
SAMPLE_MS = 2.0
MAX_CASE_MS = 3000.0
# device-file stem for the GPU names torch reports (lower-cased substrings, all must match)
KNOWN_GPUS = (
    (("a100", "sxm4", "80gb"), "a100-sxm4-80gb"),
    (("h100", "hbm3"), "h100-sxm5"),
    (("h100", "sxm"), "h100-sxm5"),
    (("orin",), "jetson-agx-orin"),
)


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
        import time

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
    import time

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


def _row(gpu: str, dtype: str, m: int, n: int, k: int, dense: Timing, sparse: Timing, pattern: str,
         kind: str, source: str) -> dict:
    speed = dense.median_ms / sparse.median_ms
    return {
        "case": f"measured-{kind}-{m}x{n}x{k}-{dtype}-{pattern}",
        "device": gpu, "dtype": dtype, "M": m, "N": n, "K": k,
        "dense_ms": f"{dense.median_ms:.5g}", "sparse_ms": f"{sparse.median_ms:.5g}",
        "measured_speedup": f"{speed:.4g}", "pattern": pattern, "phase": "forward",
        "direction": direction_of(speed), "source": f"{source}; {kind}; spread {max(dense.spread, sparse.spread):.0%}",
        "conf": "M", "date_added": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
    }


def measure(args: argparse.Namespace) -> list[dict]:
    cuda = not args.cpu_smoke
    dev = torch.device("cuda" if cuda else "cpu")
    if cuda:
        gpu_name = torch.cuda.get_device_name(0)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays fp32, as the device files assume
        cap = torch.cuda.get_device_capability(0)
        versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}, sm_{cap[0]}{cap[1]}"
    else:
        gpu_name = "cpu-smoke"
        versions = f"torch {torch.__version__}, CPU smoke run"
    target = args.device_name or device_file_name(gpu_name)
    backend = _set_backend(args.backend)
    source = f"benchmarks/gpu_measure.py on {gpu_name} ({versions})"
    shapes = [(8, 64, 128), (64, 128, 256)] if args.cpu_smoke else (SHAPES_QUICK if args.quick else SHAPES_FULL)
    dtypes = ["fp32"] if args.cpu_smoke else args.dtypes.split(",")
    gen = torch.Generator().manual_seed(0)
    rows: list[dict] = []
    print(f"# {source}; device file: {target}; 2:4 backend: {backend}")
    for dname in dtypes:
        if dname not in DTYPES:
            raise SystemExit(f"gpu_measure: unknown dtype {dname!r} (use {', '.join(DTYPES)})")
        dt = DTYPES[dname]
        for m, n, k in shapes:
            need = (m * k + n * k * 3 + m * n * 2) * torch.finfo(dt).bits // 8
            if cuda and need > 0.6 * torch.cuda.mem_get_info()[0]:
                print(f"skip {m}x{n}x{k} {dname}: needs {need / 1e9:.1f} GB")
                continue
            x = torch.randn(m, k, generator=gen).to(dev, dt)
            w = torch.randn(n, k, generator=gen).to(dev, dt)
            xt = x.t().contiguous()
            rep = dict(repeats=args.repeats, inner=args.inner, cuda=cuda)
            dense_linear = time_ms(lambda: torch.nn.functional.linear(x, w), **rep)
            dense_mm = time_ms(lambda: torch.mm(w, xt), **rep)
            cases: list[tuple[str, str, Callable[[], Callable[[], object]], Timing]] = []
            if cuda and dname != "fp32":
                cases.append(("2:4", f"2:4 {backend}", lambda: _semi_structured(x, w), dense_linear))
            for sp in CSR_SPARSITIES:
                cases.append((f"unstructured:{sp:g}", "csr", lambda sp=sp: _csr(w, xt, sp, gen), dense_mm))
            for b, sp in BSR_CASES:
                if n % b == 0 and k % b == 0:
                    cases.append((f"block{b}x{b}:{sp:g}", "bsr", lambda b=b, sp=sp: _bsr(w, xt, b, sp, gen), dense_mm))
            for pattern, kind, build, dense_t in cases:
                try:
                    fn = build()
                    sparse_t = time_ms(fn, **rep)
                except (RuntimeError, NotImplementedError, ValueError, TypeError) as e:
                    print(f"skip {kind} {pattern} {m}x{n}x{k} {dname}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                    continue
                finally:
                    if cuda:
                        torch.cuda.empty_cache()
                row = _row(target, dname, m, n, k, dense_t, sparse_t, pattern, kind, source)
                rows.append(row)
                print(f"{kind:<16} {pattern:<18} {dname} {m}x{n}x{k}: dense {row['dense_ms']} ms, "
                      f"sparse {row['sparse_ms']} ms, {row['measured_speedup']}x")
            del x, w, xt
    return rows


def _set_backend(name: str) -> str:
    from torch.sparse import SparseSemiStructuredTensor

    if name == "cutlass":
        SparseSemiStructuredTensor._FORCE_CUTLASS = True
    elif name == "cusparselt":
        SparseSemiStructuredTensor._FORCE_CUTLASS = False
    return "cutlass" if SparseSemiStructuredTensor._FORCE_CUTLASS else "cusparselt (cutlass if unavailable)"


def _semi_structured(x: torch.Tensor, w: torch.Tensor) -> Callable[[], object]:
    from torch.sparse import to_sparse_semi_structured

    pruned = w * mask_24(w)
    ws = to_sparse_semi_structured(pruned)
    ref = torch.nn.functional.linear(x, pruned)
    out = torch.nn.functional.linear(x, ws)
    if not torch.allclose(out.float(), ref.float(), rtol=5e-2, atol=5e-1):
        raise ValueError("2:4 result differs from the dense result")
    return lambda: torch.nn.functional.linear(x, ws)


def _csr(w: torch.Tensor, xt: torch.Tensor, sparsity: float, gen: torch.Generator) -> Callable[[], object]:
    ws = (w * mask_unstructured(w, sparsity, gen)).to_sparse_csr()
    return lambda: torch.mm(ws, xt)


def _bsr(w: torch.Tensor, xt: torch.Tensor, b: int, sparsity: float, gen: torch.Generator) -> Callable[[], object]:
    ws = (w * mask_blocks(w, b, sparsity, gen)).to_sparse_bsr((b, b))
    return lambda: torch.mm(ws, xt)


def _print_predictions(rows: list[dict]) -> None:
    from sparsesim.hw.devices import load_device
    from sparsesim.core.errors import SparsesimError

    try:
        device = load_device(rows[0]["device"])
    except SparsesimError as e:
        print(f"# no prediction: {e}")
        return
    print(f"# predicted on {device.name}:")
    for r in rows:
        p = predict_case({k: str(v) for k, v in r.items()}, device)
        print(f"{r['case']:<60} measured {float(r['measured_speedup']):6.3f}x  predicted {p['predicted_speedup']:6.3f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="table to append to (default: the packaged gpu_published.csv)")
    ap.add_argument("--dtypes", default="fp16,bf16,fp32", help="comma-separated: fp16,bf16,fp32")
    ap.add_argument("--quick", action="store_true", help="three shapes only")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--inner", type=int, default=10, help="back-to-back calls per timed sample")
    ap.add_argument("--backend", choices=("default", "cutlass", "cusparselt"), default="default",
                    help="2:4 backend of torch.sparse semi-structured tensors")
    ap.add_argument("--device-name", default=None, help="device-file name to record (default: from the GPU name)")
    ap.add_argument("--dry-run", action="store_true", help="measure and print, write nothing")
    ap.add_argument("--cpu-smoke", action="store_true", help="check this script's dense/CSR/BSR paths on the CPU")
    args = ap.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_measure: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
              "this script measures NVIDIA GPU kernels, so nothing was measured or written. "
              "Run it on a machine with an NVIDIA GPU and a CUDA build of torch.", file=sys.stderr)
        return 2
    rows = measure(args)
    if not rows:
        print("gpu_measure: no case could be measured; nothing written", file=sys.stderr)
        return 1
    assert all(set(r) == set(TABLE_COLUMNS) for r in rows)
    if not args.cpu_smoke:
        _print_predictions(rows)
    if args.dry_run or args.cpu_smoke:
        print(f"# {len(rows)} rows measured; not written ({'dry run' if args.dry_run else 'cpu smoke run'})")
        return 0
    path = append_rows(rows, args.out or published_table_path())
    print(f"# appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
