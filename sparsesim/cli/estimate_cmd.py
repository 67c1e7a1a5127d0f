"""`sparsesim estimate WORKLOAD --device DEV --plan PLAN`: per-op table, totals, bound and why."""

from __future__ import annotations

import argparse
from typing import Any

from sparsesim.cli.common import (
    add_criterion_argument,
    add_deployment_arguments,
    add_device_argument,
    add_workload_argument,
    deployment,
    document_sources,
    workload_spec,
)
from sparsesim.core import textfmt

NAME = "estimate"
HELP = "latency, energy and memory of a workload under a sparsity plan on one device, op by op"

# per-op fields the document carries (the rest repeat the header)
OP_FIELDS = ("op_index", "kind", "module", "call_index", "weight", "pattern", "density", "kernel",
             "fallback", "latency_s", "energy_j", "memory_bytes", "metadata_bytes", "bytes_dram",
             "bound", "utilization", "flops", "flops_executed", "compute_s", "memory_s", "overhead_s",
             "why")
WHY_WIDTH = 90


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_workload_argument(p, help="recipe (resnet50, bert-base:batch=8,seq=128), recipe/plan file, "
                                  "single op (gemm:M=4096,N=4096,K=4096,dtype=fp16) or module.path:factory")
    add_device_argument(p)
    p.add_argument("--plan", default="dense",
                   help="pattern (dense, 2:4, unstructured:0.9, block4x4:0.5, channel:0.5) or plan file")
    add_criterion_argument(p)
    add_deployment_arguments(p)


def cache_parts(args: argparse.Namespace) -> tuple[Any, ...] | None:
    return document_sources(args, args.device, [args.plan])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sparsesim.run import results
    from sparsesim.run.estimate import compare_tables, plan_label

    tables = compare_tables(workload_spec(args), [args.device], [args.plan], criterion=args.criterion, **deployment(args))
    label = plan_label(args.plan)
    ops = results.rows_where(tables.per_op_columns, "plan", label)
    row = results.records(tables.summary_columns)[0]
    return {
        "workload": row["workload"],
        "device": row["device"],
        "family": row["family"],
        "runtime": row["runtime"],
        "plan": label,
        "device_file": row["device_file"],
        "model": row["model"],
        "totals": {**results.totals(ops), "latency_s": row["latency_s"], "energy_j": row["energy_j"],
                   "memory_bytes": row["memory_bytes"]},
        "speedup_vs_dense": row["speedup_vs_dense"],
        "energy_vs_dense": row["energy_vs_dense"],
        "memory_vs_dense": row["memory_vs_dense"],
        "bound": row["bound"],
        "why": row["why"],
        "ops": results.records(ops, OP_FIELDS),
    }


def render(doc: dict[str, Any]) -> str:
    t = doc["totals"]
    total = t["latency_s"] or 1.0
    rows = [
        (o["op_index"], textfmt.clip(o["module"] or "-", 40), o["kind"], o["pattern"], o["kernel"],
         textfmt.fmt_si(o["latency_s"], "s"), f"{o['latency_s'] / total:.1%}", o["bound"],
         "yes" if o["fallback"] else "", textfmt.clip(o["why"], WHY_WIDTH))
        for o in doc["ops"]
    ]
    head = (f"{doc['workload']} on {doc['device']} ({doc['family']}, {doc['device_file']}), "
            f"runtime {doc['runtime']}, plan {doc['plan']}")
    body = textfmt.text_table(rows, ("#", "module", "kind", "pattern", "kernel", "latency", "share",
                                     "bound", "fallback", "why"))
    foot = [
        f"total latency  {textfmt.fmt_si(t['latency_s'], 's')}   "
        f"({textfmt.fmt_ratio(doc['speedup_vs_dense'])} vs dense on this device)",
        f"total energy   {textfmt.fmt_si(t['energy_j'], 'J')}",
        f"weight memory  {textfmt.fmt_si(t['memory_bytes'], 'B')} "
        f"(metadata {textfmt.fmt_si(t['metadata_bytes'], 'B')})",
        f"device memory  {textfmt.fmt_fit(t)}",
        f"fallback ops   {t['fallback_ops']}",
        f"bound          {doc['bound']}",
        f"why            {doc['why']}",
    ]
    return "\n".join([head, "", body, "", *foot])
