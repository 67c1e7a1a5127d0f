"""Fit a GPU device file's kernel constants to this project's own measurements of that GPU, and print the fit.

    python benchmarks/fit_gpu_measured.py [--device h200] [--table PATH]

benchmarks/gpu_measure.py times dense and sparse kernels on a real GPU and appends rows to the
measured table (validation_data/gpu_measured.csv). Several constants of the GPU model are
properties of the software on that GPU rather than of the chip, and each is fitted here to the rows
it governs, with the rest of the model in the loop (tiling, waves, memory, launches), in this order
(each fit sees the ones before it):

* `sparse_kernel_fixed.cusparselt`: the time a cuSPARSELt call takes beyond a dense GEMM of the same
  tiles whatever its size (its prologue), from the same engine rows as the efficiency below; the
  2048 x 2048 x K sweep shows it directly: time against K has an intercept 2.3 us (fp8) and 2.6 us
  (fp16) above cuBLAS's.
* `sparse_gemm_efficiency`: the share of the 2:4 sparse tensor-core peak cuSPARSELt reaches, from
  the engine rows (cuSPARSELt called directly, its own algorithm search, replayed from a CUDA
  graph) at fp16/bf16/fp8 whose dense GEMM takes over FLOOR_MS (below it a graph replay's own
  launch cost is what was timed). int8 is left out here: its dense baseline (torch._int_mm) is a
  different cuBLASLt path, fitted next.
* `sparse_stream_efficiency.bf16`: the share of the DRAM rate cuSPARSELt's bf16 kernels stream a
  compressed weight at, from the bf16 engine rows of FEW_TOKENS tokens or fewer (all of them:
  a dense GEMM of a few tokens takes less than FLOOR_MS, but the graph launch it then times is
  the fp16 rows' too, which the model meets) with the efficiency above held. Only those rows
  depend on it: on a compute-bound GEMM bf16 and fp16 take the same time.
* `dense_dtype_efficiency.int8`: the share of the int8 tensor peak that dense baseline reaches,
  from the int8 engine rows with the sparse efficiency above held.
* `runtime.eager.kernel_dispatch.cusparselt`: the per-call host time of an eager 2:4 linear (torch's
  semi-structured tensor subclass and the cuSPARSELt plan it sets up on every call), from the
  eager cuSPARSELt rows.
* `cusparse_csr_efficiency`: cuSPARSE's CSR SpMM rate (torch.sparse CSR @ dense), eager rows of
  RATE_FIT_MIN_WORK multiply-adds and more.
* `bsr_efficiency`: torch's Triton BSR kernel (bsr_dense_mm), likewise.
* `runtime.eager.kernel_dispatch.cusparse-csr` and `.bsr`: the per-call host time of those two
  framework ops, from the rows below RATE_FIT_MIN_WORK (after the rates are fitted).
* `runtime.eager.masked_attention_rate`: the share of the unmasked fused attention's rate that
  torch's SDPA reaches with an `attn_mask`, from the attention kernel times of the eager SAM
  profile (PROFILED_ATTENTION: a kernel time per call, not a table row).
* `conv_cuda_core_efficiency`: the share of the CUDA-core peak cuDNN's implicit_convolve_sgemm
  reaches on a convolution whose input channels leave the tensor cores out, from SAM's patch
  embedding in the same profile (PROFILED_CONV).

Each fit minimises the median |log(predicted / measured)| over its rows on a grid and prints the
value, the median and 90th-percentile |pred/meas - 1| after the fit, and the date, for the
device file's `fit_date` / `fit_error` fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import math
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sparsesim.core.errors import SparsesimError
from sparsesim.core.ir import DTYPE_BYTES, Op
from sparsesim.cost import estimate_op
from sparsesim.cost.record import RunContext
from sparsesim.fidelity.gpu_validation import HOLDOUT_PREFIX, load_table, measured_table_path, predict_case
from sparsesim.hw.devices import Device, load_device
from sparsesim.hw.runtimes import Runtimes
from sparsesim.tracing.flops import T, attention_work

# a dense GEMM replayed alone from a CUDA graph takes at least ~6 us on the measured H200: below
# this the engine rows time the graph launch, not the kernels
FLOOR_MS = 0.02
# M x N x K of the CSR/BSR rows whose kernel rates are fitted (2048 cubed and up): on smaller GEMMs
# an eager torch sparse matmul is dominated by its per-call host work (the Python launch of the
# Triton BSR kernel, cuSPARSE's descriptors), which these rates do not describe
RATE_FIT_MIN_WORK = 2**33
# tokens (M) of the GEMMs whose time is the compressed weight streaming from DRAM: an LLM's decode
FEW_TOKENS = 128


@dataclass(frozen=True)
class Fit:
    field: str
    unit: str
    grid: Iterable[float]
    selects: Callable[[Mapping[str, str]], bool]


def with_value(device: Device, field: str, value: float) -> Device:
    """`device` with one parameter (or `runtime.<name>.<field>`) set to `value`."""
    if field.startswith("runtime."):
        _, name, fname, *kernel = field.split(".")
        rts: Runtimes = device.runtimes
        by_name = dict(rts.by_name)
        new: object = value
        if kernel:  # runtime.<name>.kernel_dispatch.<kernel>: one entry of a per-kernel table
            new = {**getattr(by_name[name], fname), kernel[0]: value}
        by_name[name] = dataclasses.replace(by_name[name], **{fname: new})
        return dataclasses.replace(device, runtimes=dataclasses.replace(rts, by_name=by_name))
    name, _, dtype = field.partition(".")
    new_param: object = {**getattr(device.params, name), dtype: value} if dtype else value  # <table>.<dtype>
    return dataclasses.replace(device, params=dataclasses.replace(device.params, **{name: new_param}))


def log_errors(device: Device, rows: list[dict[str, str]]) -> list[float]:
    out = []
    for r in rows:
        try:
            pred = predict_case(r, device)["predicted"]
        except SparsesimError:
            continue
        if pred > 0 and math.isfinite(pred):
            out.append(abs(math.log(pred / float(r["measured"]))))
    return out


def fits() -> tuple[Fit, ...]:
    large = lambda r: float(r["dense_ms"]) >= FLOOR_MS
    big = lambda r: int(r["M"]) * int(r["N"]) * int(r["K"]) >= RATE_FIT_MIN_WORK
    return (
        Fit("sparse_kernel_fixed.cusparselt", "us", np.arange(0.0, 8.01, 0.25) * 1e-6,
            lambda r: r["runtime"] == "engine" and r["kernel"] == "cusparselt" and r["dtype"] != "int8" and large(r)),
        Fit("sparse_gemm_efficiency", "", np.arange(0.20, 0.905, 0.01),
            lambda r: r["runtime"] == "engine" and r["kernel"] == "cusparselt" and r["dtype"] != "int8" and large(r)),
        Fit("sparse_stream_efficiency.bf16", "", np.arange(0.20, 1.0001, 0.01),
            lambda r: r["runtime"] == "engine" and r["kernel"] == "cusparselt" and r["dtype"] == "bf16"
            and 0 < int(r["M"] or 0) <= FEW_TOKENS),
        Fit("dense_dtype_efficiency.int8", "", np.arange(0.20, 0.905, 0.01),
            lambda r: r["runtime"] == "engine" and r["kernel"] == "cusparselt" and r["dtype"] == "int8" and large(r)),
        Fit("runtime.eager.kernel_dispatch.cusparselt", "us", np.arange(0.0, 1500.0, 10.0) * 1e-6,
            lambda r: r["runtime"] == "eager" and r["kernel"] == "cusparselt" and not r["workload"]),
        Fit("cusparse_csr_efficiency", "", np.geomspace(0.002, 0.3, 120),
            lambda r: r["kernel"] == "cusparse-csr" and big(r)),
        Fit("bsr_efficiency", "", np.geomspace(0.005, 0.9, 120), lambda r: r["kernel"] == "bsr" and big(r)),
        Fit("runtime.eager.kernel_dispatch.cusparse-csr", "us", np.arange(0.0, 1000.0, 5.0) * 1e-6,
            lambda r: r["kernel"] == "cusparse-csr" and not big(r)),
        Fit("runtime.eager.kernel_dispatch.bsr", "us", np.arange(0.0, 1000.0, 5.0) * 1e-6,
            lambda r: r["kernel"] == "bsr" and not big(r)),
    )


# the cuDNN fused-attention kernel torch ran for SAM ViT-H's global blocks (relative-position bias
# as attn_mask), eager, batch 8, bf16: 14.112 ms over 4 calls, benchmarks/gpu_logs/
# h200-2026-12-04-profile-sam-vit-h-ops-by-shape.txt (aten::_cudnn_attention_forward, its shapes)
PROFILED_ATTENTION = {"q": (8, 16, 4096, 80), "mask": (8, 16, 4096, 4096), "dtype": "bf16", "seconds": 14.112e-3 / 4}


def profiled_attention_op() -> Op:
    """The profiled call as the tracer records a scaled_dot_product_attention with attn_mask."""
    a = PROFILED_ATTENTION
    elem = DTYPE_BYTES[str(a["dtype"])]
    q, mask = T(tuple(a["q"]), elem), T(tuple(a["mask"]), elem)
    work = attention_work(q, q, q, q, mask)
    return Op(0, work.kind, "aten._scaled_dot_product_cudnn_attention", "attn", 0, str(a["dtype"]),
              (q.shape, q.shape, q.shape, mask.shape), q.shape, work.flops, work.bytes_moved, work.gemm,
              masked=work.masked)


# SAM ViT-H's patch embedding (3 input channels, 16x16 stride-16 kernel, 1280 outputs), eager, batch 8,
# bf16: cuDNN ran implicit_convolve_sgemm (CUDA cores), 3.448 ms in the eager profile above (3.615 ms
# in the compiled one, benchmarks/gpu_logs/h200-2026-12-04-profile-sam-vit-h-compiled-kernels.txt)
PROFILED_CONV = {"input": (8, 3, 1024, 1024), "weight": (1280, 3, 16, 16), "stride": 16, "dtype": "bf16",
                 "seconds": 3.448e-3}


def profiled_conv_op() -> Op:
    """The profiled convolution as the tracer records it (traced from a torch Conv2d on the meta device)."""
    import torch

    from sparsesim.tracing.tracer import trace

    c = PROFILED_CONV
    w = tuple(c["weight"])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[str(c["dtype"])]
    conv = torch.nn.Conv2d(w[1], w[0], tuple(w[2:]), stride=int(c["stride"]), device="meta", dtype=dtype)
    wl = trace(conv, torch.empty(tuple(c["input"]), device="meta", dtype=dtype), name="patch_embed")
    return next(op for op in wl.ops if op.kind == "conv")


@dataclass(frozen=True)
class ProfiledFit:
    """A constant fitted to one profiled kernel: the op as traced, its time, the value's grid."""

    field: str
    op: Callable[[], Op]
    seconds: float
    grid: Iterable[float]


PROFILED_FITS = (
    ProfiledFit("runtime.eager.masked_attention_rate", profiled_attention_op, float(PROFILED_ATTENTION["seconds"]),
                np.arange(0.30, 1.0001, 0.01)),
    ProfiledFit("conv_cuda_core_efficiency", profiled_conv_op, float(PROFILED_CONV["seconds"]),
                np.arange(0.05, 1.0001, 0.01)),
)


def profiled_log_error(device: Device, fit: ProfiledFit, op: Op, value: float) -> float:
    """|log(predicted / profiled)| of the profiled call `op` under eager with `fit.field` at `value`."""
    latency = estimate_op(op, None, with_value(device, fit.field, value), RunContext(runtime="eager")).latency_s
    return abs(math.log(latency / fit.seconds))


def current_value(device: Device, field: str) -> float:
    """The device's value of `field` (a parameter or `runtime.<name>.<field>`)."""
    if field.startswith("runtime."):
        _, name, fname = field.split(".")
        return float(getattr(device.runtime(name)[1], fname))
    return float(getattr(device.params, field))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="h200")
    ap.add_argument("--table", default=None, help="measured table (default: the packaged gpu_measured.csv)")
    args = ap.parse_args(argv)
    try:
        device = load_device(args.device)
        # holdout rows (gpu_measure.py --case-prefix holdout-) check the fit and never enter it
        table = [r for r in load_table(args.table or measured_table_path())
                 if r["device"] == device.name and not r["case"].startswith(HOLDOUT_PREFIX)]
    except SparsesimError as e:
        print(f"fit_gpu_measured: {e}", file=sys.stderr)
        return 2
    if not table:
        print(f"fit_gpu_measured: no measured rows for {device.name}", file=sys.stderr)
        return 1
    today = _dt.date.today().isoformat()
    for fit in fits():
        rows = [r for r in table if fit.selects(r) and r["quantity"] == "speedup"]
        before = log_errors(device, rows)
        best = min(fit.grid, key=lambda v: statistics.median(log_errors(with_value(device, fit.field, float(v)), rows)))
        device = with_value(device, fit.field, float(best))  # later fits see this one
        errs = [math.expm1(e) for e in log_errors(device, rows)]
        shown = f"{best * 1e6:.0f} us" if fit.unit == "us" else f"{best:.3g}"
        print(f"{fit.field} = {shown} (fit {today} on {len(rows)} rows: median |pred/meas - 1| "
              f"{statistics.median(errs):.3f}, p90 {float(np.quantile(errs, 0.9)):.3f}; before "
              f"{math.expm1(statistics.median(before)):.3f})", flush=True)
    for pf in PROFILED_FITS:
        op, before = pf.op(), current_value(device, pf.field)
        best = min(pf.grid, key=lambda v: profiled_log_error(device, pf, op, float(v)))
        print(f"{pf.field} = {best:.3g} (fit {today} on 1 profiled kernel: |pred/meas - 1| "
              f"{math.expm1(profiled_log_error(device, pf, op, float(best))):.3f}; before "
              f"{math.expm1(profiled_log_error(device, pf, op, before)):.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
