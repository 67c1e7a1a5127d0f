"""`sparsesim trace WORKLOAD [--plan PLAN]`: the traced op table and its totals; with a plan,
each weight op's pattern, measured density, storage format and exact format bytes."""

from __future__ import annotations

import argparse
from typing import Any

from sparsesim.core.ir import DTYPE_BYTES, Op, Workload

NAME = "trace"
HELP = "trace a workload and print its ops (kind, shapes, FLOPs, weight, sparsity, format bytes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workload", help="recipe[:k=v,...], recipe .toml, gemm:M=..,N=..,K=.., or module:factory")
    parser.add_argument("--plan", default=None,
                        help="sparsity plan: a pattern (2:4, unstructured:0.9, block4x4:0.5, channel:0.5), "
                             "a plan .toml, or a saved plan with masks")
    parser.add_argument("--weights-only", action="store_true", help="list only ops that carry a weight")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sparsesim.sparsity.plans import load_plan
    from sparsesim.sparsity.sparsify import sparsify
    from sparsesim.tracing.workloads import load_workload

    wl = load_workload(args.workload)
    layers: dict[str, Any] = {}
    plan_name = "dense"
    if args.plan is not None or not wl.on_meta:
        # without a plan: the weights as they are, so zeros already there (torch.nn.utils.prune
        # masks, a 2:4 checkpoint) show with their real density and pattern
        sw = sparsify(wl, load_plan(args.plan or "dense"))
        wl = sw.workload  # the ops as the plan leaves them (channel pruning shrinks them)
        layers = dict(sw.layers)
        plan_name = sw.plan_name
    return build_doc(wl, layers, plan_name, weights_only=args.weights_only)


def _weight_bytes(wl: Workload, name: str) -> int:
    info = wl.weights[name]
    n = 1
    for d in info.shape:
        n *= d
    return int(n * DTYPE_BYTES[info.dtype])


def build_doc(wl: Workload, layers: dict[str, Any], plan_name: str, *, weights_only: bool = False) -> dict[str, Any]:
    """The trace document: one row per op plus totals; `layers` maps weight -> LayerSparsity."""
    rows = []
    for op in wl.ops:
        if weights_only and op.weight is None:
            continue
        rows.append(_row(wl, op, layers.get(op.weight) if op.weight else None))
    dense = {w: _weight_bytes(wl, w) for w in wl.weights}
    stored = {w: (layers[w].format_bytes if w in layers else b) for w, b in dense.items()}
    summary = wl.summary()
    totals = {
        "ops": summary["ops"], "by_kind": summary["by_kind"], "unknown_ops": summary["unknown_ops"],
        "unknown_aten": summary["unknown_aten"], "flops": summary["flops"],
        "bytes_moved": summary["bytes_moved"], "weight_ops": len(wl.weight_ops()),
        "weights": len(wl.weights), "weight_params": summary["weight_params"],
        "weight_bytes_dense": sum(dense.values()), "weight_bytes_stored": sum(stored.values()),
    }
    return {"workload": wl.name, "params": dict(wl.params), "plan": plan_name, "on_meta": wl.on_meta,
            "notes": list(wl.notes), "ops": rows, "totals": totals}


def _row(wl: Workload, op: Op, ls: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "index": op.index, "kind": op.kind, "aten": op.aten, "module": op.module,
        "call_index": op.call_index, "dtype": op.dtype,
        "input_shapes": [list(s) for s in op.input_shapes], "output_shape": list(op.output_shape),
        "flops": op.flops, "bytes_moved": op.bytes_moved,
        "gemm": None if op.gemm is None else {"m": op.gemm.m, "n": op.gemm.n, "k": op.gemm.k,
                                               "batch": op.gemm.batch, "groups": op.gemm.groups},
        "weight": op.weight, "weight_shape": None if op.weight_shape is None else list(op.weight_shape),
        "activation_density": op.activation_density, "activation_measured": op.activation_measured,
        "note": op.note,
        "pattern": None, "density": None, "format": None, "format_bytes": None,
        "value_bytes": None, "metadata_bytes": None, "dense_bytes": None,
    }
    if op.weight is not None:
        dense = _weight_bytes(wl, op.weight)
        row["dense_bytes"] = dense
        if ls is None:
            row.update(pattern="dense", density=1.0, format="dense", format_bytes=dense,
                       value_bytes=dense, metadata_bytes=0)
        else:
            row.update(pattern=ls.pattern.label, density=float(ls.stats.density), format=ls.format,
                       format_bytes=int(ls.format_bytes), value_bytes=int(ls.value_bytes),
                       metadata_bytes=int(ls.metadata_bytes))
    return row


def human(x: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; bytes get binary prefixes."""
    if x is None:
        return ""
    base, prefixes = (1024.0, ("", "Ki", "Mi", "Gi", "Ti")) if unit == "B" else (1000.0, ("", "k", "M", "G", "T", "P"))
    v, i = float(x), 0
    while abs(v) >= base and i < len(prefixes) - 1:
        v /= base
        i += 1
    return f"{v:.0f}{prefixes[i]}{unit}" if i == 0 else f"{v:.3g}{prefixes[i]}{unit}"


def _shapes(row: dict[str, Any]) -> str:
    ins = " ".join("x".join(map(str, s)) or "()" for s in row["input_shapes"])
    return f"{ins} -> {'x'.join(map(str, row['output_shape'])) or '()'}"


def render(doc: dict[str, Any]) -> str:
    head = ["#", "kind", "module", "call", "dtype", "shapes", "FLOPs", "act", "weight", "pattern", "density",
            "format", "bytes"]
    table = [head]
    for r in doc["ops"]:
        w = r["weight"] is not None
        table.append([
            str(r["index"]), r["kind"], r["module"] or "(root)", str(r["call_index"]), r["dtype"], _shapes(r),
            human(r["flops"]), f"{r['activation_density']:.2f}" if r["activation_measured"] else "",
            r["weight"] or "", r["pattern"] or "",
            f"{r['density']:.3f}" if w else "", r["format"] or "", human(r["format_bytes"], "B") if w else "",
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    right = {0, 3, 6, 7, 10, 12}
    lines = ["  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)).rstrip()
             for row in table]
    t = doc["totals"]
    params = ",".join(f"{k}={v}" for k, v in doc["params"].items())
    kinds = ", ".join(f"{k} {v}" for k, v in t["by_kind"].items())
    saved = 1 - t["weight_bytes_stored"] / t["weight_bytes_dense"] if t["weight_bytes_dense"] else 0.0
    lines += [
        "",
        "act = measured density (nonzero fraction) of the input activation; density = kept weight fraction",
        f"workload {doc['workload']}" + (f" ({params})" if params else "") + f", plan {doc['plan']}"
        + (" [meta device: shapes only, no weights allocated]" if doc["on_meta"] else ""),
        f"ops {t['ops']}: {kinds}",
        f"unknown ops {t['unknown_ops']}" + (f" ({', '.join(t['unknown_aten'])})" if t["unknown_aten"] else ""),
        f"total FLOPs {human(t['flops'])}, bytes moved {human(t['bytes_moved'], 'B')}",
        f"weights {t['weights']} ({human(t['weight_params'])} params) in {t['weight_ops']} weight ops: "
        f"dense {human(t['weight_bytes_dense'], 'B')}, stored {human(t['weight_bytes_stored'], 'B')} "
        f"({saved:.1%} smaller)",
        *(f"note: {n}" for n in doc.get("notes", [])),
    ]
    return "\n".join(lines)
