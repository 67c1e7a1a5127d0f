"""Kernel times without the per-replay floor: dense (cuBLAS) and 2:4 (cuSPARSELt, its own algorithm
search) GEMMs captured CHAIN times back to back in one CUDA graph, against the same call replayed
alone from its own graph (how gpu_measure.py's engine rows time it).

    python benchmarks/gpu_chain.py [--shapes 2048x2048x512,...] [--dtypes fp8,fp16] [--out DIR]

A graph replayed alone pays a launch of its own (about 6 us on the H200 behind gVisor), so the
engine rows of small GEMMs time that floor rather than the kernel; a chain of CHAIN kernels in one
graph pays it once. The chain's time per call is what a model's kernels cost back to back, and
its line against K at one wave separates a kernel's fixed time from its K loop. Prints one line
per (shape, dtype) and writes them to DIR/chain.txt. Without a CUDA GPU it exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHAIN = 16
SHAPES = "1024x1024x1024,2048x2048x512,2048x2048x1024,2048x2048x2048,2048x2048x4096,2048x2048x8192,4096x4096x4096"


def per_call_ms(fn: Callable[[], object], calls: int) -> float:
    """Median time of one replay of `fn` (captured `calls` times in one graph), divided by `calls`."""
    from gpu_measure import graphed, time_ms

    def chain() -> None:
        for _ in range(calls):
            fn()

    return time_ms(graphed(chain), repeats=15, inner=3, cuda=True).median_ms / calls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--dtypes", default="fp8,fp16")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_chain: no CUDA GPU visible", file=sys.stderr)
        return 2
    from gpu_measure import cusparselt_direct_fn, dense_fn, operands, parse_shape

    lines = [f"# benchmarks/gpu_chain.py on {torch.cuda.get_device_name()} (torch {torch.__version__}); "
             f"chain of {CHAIN} calls in one CUDA graph vs one call per graph; times per call in us"]
    print(lines[0], flush=True)
    gen = torch.Generator().manual_seed(0)
    for text in args.shapes.split(","):
        m, n, k = parse_shape(text)
        for dname in args.dtypes.split(","):
            try:
                x, w = operands(m, n, k, dname, torch.device("cuda"), gen)
                dense, sparse = dense_fn(x, w, dname), cusparselt_direct_fn(x, w)
                t = {name: (per_call_ms(fn, 1), per_call_ms(fn, CHAIN)) for name, fn in (("dense", dense),
                                                                                          ("sparse", sparse))}
            except (RuntimeError, ValueError, TypeError) as e:
                print(f"skip {text} {dname}: {type(e).__name__}: {e}", flush=True)
                continue
            line = (f"{dname:5} {m}x{n}x{k}: dense alone {t['dense'][0] * 1e3:.2f}, chained {t['dense'][1] * 1e3:.2f}; "
                    f"cusparselt alone {t['sparse'][0] * 1e3:.2f}, chained {t['sparse'][1] * 1e3:.2f}; speedup alone "
                    f"{t['dense'][0] / t['sparse'][0]:.3f}x, chained {t['dense'][1] / t['sparse'][1]:.3f}x")
            print(line, flush=True)
            lines.append(line)
            torch.cuda.empty_cache()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "chain.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
