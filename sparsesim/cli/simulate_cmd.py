"""`sparsesim simulate WORKLOAD --device DEV [--qps N]`: whole-model discrete-event simulation:
compute/transfer overlap, batch stream (and FPGA layer pipeline), serving under Poisson arrivals."""

from __future__ import annotations

import argparse
from typing import Any

from sparsesim.cli.common import (
    add_criterion_argument,
    add_deployment_arguments,
    add_device_argument,
    add_workload_argument,
    deployment,
    workload_spec,
)
from sparsesim.core import textfmt

NAME = "simulate"
HELP = "simulate a workload on a device: overlap, stream throughput, serving p50/p99 at a request rate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sparsesim.run.simulate import DEFAULT_REQUESTS, DEFAULT_STREAM

    add_workload_argument(p)
    add_device_argument(p)
    p.add_argument("--plan", default="dense", help="pattern or plan file (default dense)")
    p.add_argument("--qps", type=float, default=None, help="serve Poisson arrivals at this many requests/s")
    p.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="requests to serve (with --qps)")
    p.add_argument("--stream", type=int, default=DEFAULT_STREAM, help="inputs in the throughput stream")
    p.add_argument("--max-batch", type=int, default=1,
                   help="serve up to this many waiting requests together (default 1: no batching); "
                        "needs a recipe with a batch parameter")
    p.add_argument("--no-overlap", action="store_true", help="no weight-fetch/compute overlap between ops")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival process")
    add_criterion_argument(p)
    add_deployment_arguments(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sparsesim.run.simulate import simulate

    res = simulate(workload_spec(args), args.device, args.plan, qps=args.qps, requests=args.requests,
                   overlap=not args.no_overlap, seed=args.seed, stream=args.stream, max_batch=args.max_batch,
                   criterion=args.criterion, **deployment(args))
    doc = res.to_dict()
    doc["totals"] = {"latency_s": doc["latency_s"], "energy_j": doc["energy_j"],
                     "memory_bytes": doc["memory_bytes"]}
    return doc


def render(doc: dict[str, Any]) -> str:
    s = lambda v: textfmt.fmt_si(v, "s")
    lines = [
        f"{doc['workload']} on {doc['device']} ({doc['family']}, {doc['device_file']}), runtime {doc['runtime']}, "
        f"plan {doc['plan']}, "
        f"overlap {'on' if doc['overlap'] else 'off'}",
        "",
        f"one inference      {s(doc['latency_s'])}  (sum of per-op estimates {s(doc['serial_latency_s'])}; "
        f"compute {s(doc['sum_compute_s'])}, memory {s(doc['sum_memory_s'])}, overhead {s(doc['sum_overhead_s'])}; "
        f"weight fetch hidden {s(doc['prefetched_s'])})",
        f"stream of {doc['stream_inputs']:<8} {s(doc['stream_makespan_s'])}  -> {doc['throughput_ips']:.4g} inferences/s, "
        f"{doc['samples_per_s']:.4g} samples/s (batch {doc['batch']})",
        f"energy             {textfmt.fmt_si(doc['energy_j'], 'J')} per inference",
        f"weight memory      {textfmt.fmt_si(doc['memory_bytes'], 'B')}",
        f"device memory      {textfmt.fmt_fit(doc)}",
    ]
    p = doc.get("pipeline")
    if p:
        lines.append(
            f"layer pipeline     {int(p['stages'])} stages, the PE array split among them by work, a whole input "
            f"per stage: first input out after {s(p['first_latency_s'])}, then one every {s(p['interval_s'])} "
            f"-> {p['throughput_ips']:.4g} inferences/s")
    v = doc.get("serving")
    if v:
        batching = ("no batching" if v["max_batch"] == 1
                    else f"batches of up to {v['max_batch']} (mean {v['mean_batch']:.2f})")
        lines += [
            "",
            f"serving at {v['qps']:g} req/s, {v['requests']} requests (seed {doc['seed']}), service time {s(v['service_s'])}, "
            f"{batching}, "
            f"load {v['offered_load']:.2f}{' (OVERLOADED: queue grows without bound)' if v['saturated'] else ''}",
            f"  latency p50 {s(v['p50_s'])}, p99 {s(v['p99_s'])}, mean {s(v['mean_latency_s'])} "
            f"(mean wait {s(v['mean_wait_s'])}; M/D/1 theory "
            f"{s(v['predicted_mean_wait_s']) if v['predicted_mean_wait_s'] is not None else ('n/a with batching' if v['max_batch'] > 1 else 'unbounded at load >= 1')})",
            f"  throughput {v['throughput_rps']:.4g} req/s, utilisation {v['utilization']:.1%}, "
            f"saturation {v['saturation_rps']:.4g} req/s",
        ]
    return "\n".join(lines)
