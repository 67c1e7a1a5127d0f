"""PyTorch's CPU int8 deployment on this host, measured against the model: torch.ao's
`quantize_dynamic` turns each nn.Linear into quantized::linear_dynamic, which finds its fp32
input's range, quantises it and scales the int32 sums back to fp32 inside the one op (the
runtime's `dynamic_quant_scheme = "quantized-linear"`, `cost/families/dynamic_quant.py`).

    .venv/bin/python benchmarks/cpu_dynamic_int8.py [--device host|PATH] [--reps 15]

Prints, for single linears and for a two-layer fp32 BERT-base, the measured fp32 and int8
latencies, the model's (the calibrated host under its eager runtime; a quick calibration first if
there is none), their errors, and the int8 speedups measured and predicted; then where the int8
BERT's time goes by op (torch.profiler against the model), and a quantised linear with its weight
kept in L2 against the same shape with its weights from beyond it. One torch thread; times are
medians of `--reps` runs after warm-up, all taken in this one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from sparsesim.fidelity.validate import host_device
from sparsesim.hw.devices import Device
from sparsesim.run.estimate import compare_tables
from sparsesim.tracing.models.bert import build_bert
from sparsesim.tracing.retype import retype
from sparsesim.tracing.workloads import load_workload

LINEARS = ((1, 768, 768), (8, 768, 768), (32, 768, 768), (128, 768, 768), (128, 3072, 768), (128, 768, 3072),
           (512, 768, 768), (64, 4096, 1024))
BERT_SEQS = (32, 128)


def median_s(fn: Callable[..., object], reps: int, *args: object, **kwargs: object) -> float:
    """The median time of `fn(*args, **kwargs)` over `reps` calls after three warm-up calls."""
    for _ in range(3):
        fn(*args, **kwargs)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quantised(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():  # torch.ao.quantization warns that it is deprecated
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def predicted_s(spec: str, device: Device, dtype: str) -> float:
    """The model's eager latency of `spec` (an fp32 model) deployed at `dtype` ("" as built)."""
    workload = load_workload(spec)
    if dtype:
        workload = retype(workload, dtype)  # a deployment: the linears quantise their input per call
    per_op = compare_tables(workload, [device], ["dense"], runtime="eager").per_op
    return float(per_op["latency_s"].sum())


def row(name: str, meas: tuple[float, float], pred: tuple[float, float]) -> str:
    (mf, mq), (pf, pq) = meas, pred
    err = [p / m - 1 for p, m in ((pf, mf), (pq, mq))]
    return (f"{name:<28} {mf * 1e6:>10.0f} {pf * 1e6:>10.0f} {err[0]:>+6.0%} {mq * 1e6:>10.0f} {pq * 1e6:>10.0f} "
            f"{err[1]:>+6.0%} {mf / mq:>7.2f} {pf / pq:>7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="host", help="calibrated CPU device (default: host)")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    device, where = host_device(args.device, say=print)
    print(f"{device.description}; {where}; torch {torch.__version__}, 1 thread, median of {args.reps}")
    print(f"{'case':<28} {'fp32 us':>10} {'pred':>10} {'err':>6} {'int8 us':>10} {'pred':>10} {'err':>6} "
          f"{'meas x':>7} {'pred x':>7}")
    errors: list[float] = []
    for m, n, k in LINEARS:
        lin = torch.nn.Sequential(torch.nn.Linear(k, n)).eval()
        q = quantised(lin)
        x = torch.randn(m, k)
        with torch.no_grad():
            meas = (median_s(lin, args.reps, x), median_s(q, args.reps, x))
        spec = f"gemm:M={m},N={n},K={k},dtype=fp32"
        pred = (predicted_s(spec, device, ""), predicted_s(spec, device, "int8"))
        errors.append(abs(pred[1] / meas[1] - 1))
        print(row(f"linear {m}x{n}x{k}", meas, pred))
    for seq in BERT_SEQS:
        model, inputs = build_bert(batch=1, seq=seq, dtype="fp32", layers=2)
        model.eval()
        with torch.no_grad():
            fp32 = median_s(model, args.reps, **inputs)
            int8 = median_s(quantised(model), args.reps, **inputs)
        spec = f"bert-base:batch=1,seq={seq},dtype=fp32,layers=2,device=meta"
        pred = (predicted_s(spec, device, ""), predicted_s(spec, device, "int8"))
        errors.append(abs(pred[1] / int8 - 1))
        print(row(f"bert-base layers=2 seq={seq}", (fp32, int8), pred))
    print(f"int8 latency: median |pred/meas - 1| {statistics.median(errors):.1%}, worst {max(errors):.1%} "
          f"over {len(errors)} cases")
    profile_bert(device, PROFILED_SEQ)
    cold_weights(args.reps)


# the ops of the profiled int8 BERT, as torch.profiler names them and as the model's ops are
# recognised (kind, or a piece of the aten name)
PROFILED_SEQ = 128
PROFILED_OPS = (("linear", "quantized::linear_dynamic", ("kind", "linear")),
                ("attention", "aten::_scaled_dot_product_flash_attention_for_cpu", ("kind", "attention")),
                ("gelu", "aten::gelu", ("aten", "gelu")),
                ("layer norm", "aten::native_layer_norm", ("aten", "native_layer_norm")),
                ("add", "aten::add", ("aten", "aten.add.")))
PROFILED_FORWARDS = 5


def profile_bert(device: Device, seq: int) -> None:
    """Where the int8 model's time goes, measured (torch.profiler's self CPU time per op, per
    forward) against the model's time for the same ops."""
    from torch.profiler import ProfilerActivity, profile

    model, inputs = build_bert(batch=1, seq=seq, dtype="fp32", layers=2)
    q = quantised(model.eval())
    with torch.no_grad():
        for _ in range(3):
            q(**inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(PROFILED_FORWARDS):
                q(**inputs)
    measured = {e.key: (e.self_cpu_time_total / PROFILED_FORWARDS * 1e-6, e.count // PROFILED_FORWARDS)
                for e in prof.key_averages()}
    workload = retype(load_workload(f"bert-base:batch=1,seq={seq},dtype=fp32,layers=2,device=meta"), "int8")
    per_op = compare_tables(workload, [device], ["dense"], runtime="eager").per_op
    aten = {op.index: op.aten for op in workload.ops}
    per_op = per_op.assign(aten=per_op["op_index"].map(aten).fillna(""))
    print(f"\nint8 bert-base layers=2 seq={seq}, per forward (torch.profiler self CPU time):")
    print(f"{'ops':<12} {'calls':>5} {'measured us':>12} {'predicted us':>13} {'err':>6}")
    for label, key, (column, match) in PROFILED_OPS:
        meas_s, calls = measured.get(key, (0.0, 0))
        rows = per_op[per_op["kind"] == match] if column == "kind" else per_op[per_op["aten"].str.contains(match, regex=False)]
        pred_s = float(rows["latency_s"].sum())
        err = f"{pred_s / meas_s - 1:>+6.0%}" if meas_s else "     -"
        print(f"{label:<12} {calls:>5} {meas_s * 1e6:>12.0f} {pred_s * 1e6:>13.0f} {err}")


COLD_SHAPES = ((128, 768, 768), (128, 3072, 768))
COLD_WEIGHTS = 24  # enough distinct weights that each call's comes from beyond L2


def cold_weights(reps: int) -> None:
    """A quantised linear with its weight kept in L2 (one weight called over and over) against
    the same shape with COLD_WEIGHTS different weights called in turn, as a model calls them."""
    print(f"\nquantised linear, one weight against {COLD_WEIGHTS} in turn (per call):")
    for m, n, k in COLD_SHAPES:
        linears = [quantised(torch.nn.Sequential(torch.nn.Linear(k, n)).eval()) for _ in range(COLD_WEIGHTS)]
        x = torch.randn(m, k)
        with torch.no_grad():
            hot = median_s(_each, reps, linears[:1] * COLD_WEIGHTS, x) / COLD_WEIGHTS
            cold = median_s(_each, reps, linears, x) / COLD_WEIGHTS
        print(f"linear {m}x{n}x{k}: {hot * 1e6:.0f} us with one weight, {cold * 1e6:.0f} us in turn ({cold / hot:.2f}x)")


def _each(modules: list[torch.nn.Module], x: torch.Tensor) -> None:
    for module in modules:
        module(x)


if __name__ == "__main__":
    main()
