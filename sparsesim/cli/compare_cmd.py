"""`sparsesim compare WORKLOAD --devices a,b --plans dense,2:4,...`: every device x plan, with the
speedup over dense on the same device and why."""

from __future__ import annotations

import argparse
from typing import Any

from sparsesim.cli.common import (
    add_cluster_argument,
    add_criterion_argument,
    add_deployment_arguments,
    add_workload_argument,
    deployment,
    document_sources,
    render_user_devices,
    user_devices_joining,
    workload_spec,
)
from sparsesim.core import textfmt

NAME = "compare"
HELP = "compare sparsity plans across devices: latency, speedup over dense, energy, memory and why"

ROW_FIELDS = ("device", "family", "runtime", "plan", "latency_s", "speedup_vs_dense", "energy_j", "energy_vs_dense",
              "memory_bytes", "memory_vs_dense", "fallback_ops", "sparse_ops", "bound", "why",
              "memory_need_bytes", "memory_capacity_bytes", "fits", "device_file", "model")
WHY_WIDTH = 100


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sparsesim.run import DEFAULT_PLANS

    add_workload_argument(p)
    p.add_argument("--devices", default=None,
                   help="comma-separated device names or .toml paths (default: every built-in device and "
                        "your own, e.g. the calibrated host)")
    p.add_argument("--plans", default=",".join(DEFAULT_PLANS),
                   help=f"comma-separated patterns or plan files (default: {','.join(DEFAULT_PLANS)})")
    add_criterion_argument(p)
    add_deployment_arguments(p)
    add_cluster_argument(p)


def _plans(text: str) -> list[str]:
    # "block4x4:0.5" holds no comma, so commas separate plans
    return [p.strip() for p in text.split(",") if p.strip()]


def cache_parts(args: argparse.Namespace) -> tuple[Any, ...] | None:
    return document_sources(args, args.devices, _plans(args.plans))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sparsesim.run import results
    from sparsesim.run.estimate import compare_tables

    plans = _plans(args.plans)
    # the summary as columns: printing it needs no pandas
    summary = compare_tables(workload_spec(args), args.devices, plans, criterion=args.criterion, **deployment(args),
                             dask_scheduler=args.dask_scheduler).summary_columns
    return {
        "workload": str(summary["workload"][0]) if results.n_rows(summary) else args.workload,
        "plans": plans,
        "devices": list(dict.fromkeys(summary["device"])),
        "rows": results.records(summary, ROW_FIELDS),
        "speedup_vs_dense": results.speedup_map(summary),
        "user_devices": user_devices_joining(args.devices),
    }


def render(doc: dict[str, Any]) -> str:
    out = [f"{doc['workload']}: {len(doc['plans'])} plan(s) x {len(doc['devices'])} device(s); "
           "speedup, energy and memory are relative to dense on the same device",
           *render_user_devices(doc.get("user_devices", [])), ""]
    for dev in doc["devices"]:
        rows = [r for r in doc["rows"] if r["device"] == dev]
        out.append(f"{dev} ({rows[0]['family']}, {rows[0]['device_file']}), runtime {rows[0]['runtime']}")
        fit = [textfmt.fit_note(r) for r in rows]
        out.append(textfmt.text_table(
            [(r["plan"], textfmt.fmt_si(r["latency_s"], "s"), textfmt.fmt_ratio(r["speedup_vs_dense"]),
              textfmt.fmt_si(r["energy_j"], "J"), textfmt.fmt_ratio(r["energy_vs_dense"]),
              textfmt.fmt_si(r["memory_bytes"], "B"), textfmt.fmt_ratio(r["memory_vs_dense"]),
              r["fallback_ops"] or "", r["bound"], f"{note.upper()}: " * bool(note) + textfmt.clip(r["why"], WHY_WIDTH))
             for r, note in zip(rows, fit)],
            ("plan", "latency", "speedup", "energy", "x dense", "memory", "x dense", "fallback", "bound", "why"),
            indent="  ",
        ))
        out.append("")
    return "\n".join(out).rstrip()
