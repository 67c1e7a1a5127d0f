"""Result tables: column definitions, per-op rows from `Cost` records, per (device, plan) totals,
speedup over dense on the same device, the dominant bound, the top "why", and JSON conversion.

Every table sparsesim prints, saves or reports comes through here, so the column names and
their meaning are defined once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from sparsesim.core.ir import Op
from sparsesim.cost.record import Cost, Reason
from sparsesim.run.fit import MemoryFit
from sparsesim.sparsity.records import LayerSparsity

if TYPE_CHECKING:
    import pandas as pd

# a table as columns: name -> one value per row (what the cost path builds; `frame` makes a
# DataFrame of it where one is wanted)
Columns = dict[str, list[Any]]

# memory level the cost models use for off-chip traffic (`Cost.bytes_by_level` key)
DRAM_LEVEL = "dram"

# one row per (workload, plan, device, op)
PER_OP_COLUMNS: dict[str, str] = {
    "workload": "workload name",
    "plan": "plan as given (a pattern spelling such as 2:4, a plan file, or a Plan's name)",
    "device": "device name (the device file's `name`)",
    "family": "hardware family whose cost model ran",
    "runtime": "runtime the model ran under (eager, compiled, engine; the device file's default unless chosen)",
    "op_index": "position of the op in the traced workload",
    "kind": "op kind (linear, conv, matmul, attention, elementwise, ...)",
    "module": "owning module path",
    "call_index": "how many times that module had been called before (0 = first call)",
    "weight": "parameter the plan sparsifies ('' for weightless ops)",
    "pattern": "pattern the plan gave the weight ('dense' when none)",
    "density": "kept fraction of the weight measured from its mask (1.0 when dense)",
    "expert_tokens": "rows routed to each expert of a grouped expert GEMM, after capacity drops ('' for other ops)",
    "activation_density": "fraction of nonzero input activations (measured, or set by an act:S plan; 1.0 when dense)",
    "activation_skipped": "whether the kernel skipped the zero input activations (False: it multiplied them)",
    "experts_touched": "experts of a grouped expert GEMM that got rows, whose weights are read (0 for other ops)",
    "kernel": "what ran (dense, 2:4 sparse tensor core, csr, bsr 4x4, ...)",
    "fallback": "True when the requested pattern could not be exploited and a fallback ran",
    "latency_s": "modeled latency of the op",
    "energy_j": "modeled energy of the op (actions x energy per action + static power x latency)",
    "memory_bytes": "weight footprint on the device (values + metadata)",
    "metadata_bytes": "sparse-format metadata part of memory_bytes",
    "bytes_dram": "bytes moved to/from off-chip memory",
    "bound": "what set the latency: compute, memory or overhead",
    "utilization": "executed FLOPs over latency x peak",
    "flops": "dense FLOPs of the op as traced",
    "flops_executed": "FLOPs the kernel actually executed (skipped zeros not counted)",
    "compute_s": "compute term of the latency (Cost.details['compute_s'], see split_latency)",
    "memory_s": "memory term of the latency (Cost.details['memory_s'], see split_latency)",
    "overhead_s": "fixed overhead term (launch, configuration), see split_latency",
    "why": "the cost model's explanation of the latency",
    "cost_reasons": "the causes of the cost as data (Cost.reasons: tuples of Reason(code, value))",
    "memory_need_bytes": "device memory the run holds: weights as stored under the plan + example inputs "
                         "(with the KV cache) + the largest one-op activation working set",
    "memory_capacity_bytes": "the device's memory_capacity (NaN when its file gives none)",
    "fits": "True when memory_need_bytes <= memory_capacity_bytes, False when the run does not fit "
            "(its latency is then not achievable on one device), None when the capacity is unknown",
    "device_file": "the device file the numbers came from",
    "model": "the cost model that produced the row",
}

# one row per (workload, device, plan)
SUMMARY_COLUMNS: dict[str, str] = {
    "workload": "workload name",
    "device": "device name",
    "family": "hardware family",
    "runtime": "runtime the model ran under (eager, compiled, engine)",
    "plan": "plan as given",
    "latency_s": "sum of per-op latencies (ops run one after another)",
    "energy_j": "sum of per-op energies",
    "memory_bytes": "weight footprint: each distinct weight counted once (values + metadata)",
    "metadata_bytes": "metadata part of memory_bytes",
    "bytes_dram": "off-chip bytes moved, all ops",
    "speedup_vs_dense": "dense latency / this latency, same workload and device (>1 = faster)",
    "energy_vs_dense": "this energy / dense energy, same workload and device (<1 = saves energy)",
    "memory_vs_dense": "this footprint / dense footprint (<1 = smaller)",
    "fallback_ops": "ops whose requested pattern ran as a fallback",
    "sparse_ops": "ops the plan gave a non-dense pattern",
    "bound": "bound holding the largest share of latency",
    "why": "top reason: the explanation holding the largest share of latency among the ops the "
           "plan touched (all ops for dense)",
    "top_why": "the why of the kernel holding the largest share of latency, without the share",
    "top_share": "that kernel's share of the latency of the ops in scope",
    "flops": "dense FLOPs",
    "flops_executed": "FLOPs executed",
    "memory_need_bytes": "device memory the run holds: weights as stored under the plan + example inputs "
                         "(with the KV cache) + the largest one-op activation working set",
    "memory_capacity_bytes": "the device's memory_capacity (NaN when its file gives none)",
    "fits": "True when memory_need_bytes <= memory_capacity_bytes, False when the run does not fit "
            "(its latency is then not achievable on one device), None when the capacity is unknown",
    "device_file": "the device file the numbers came from",
    "model": "the cost model that produced the rows",
}

@dataclass(frozen=True)
class PlanTotals:
    """A plan's totals on one device, as the summary table computes them."""

    latency_s: float
    energy_j: float
    memory_bytes: float
    fallback_ops: int


def plan_totals(ops: Sequence[Op], costs: Sequence[Cost]) -> PlanTotals:
    """Sums over ops (ops run one after another); the footprint counts each distinct weight
    once, at its largest per-op footprint (as `summarize` does)."""
    footprint: dict[str, float] = {}
    for op, c in zip(ops, costs):
        if op.weight:
            footprint[op.weight] = max(footprint.get(op.weight, 0.0), float(c.memory_bytes))
    return PlanTotals(latency_s=float(sum(c.latency_s for c in costs)),
                      energy_j=float(sum(c.energy_j for c in costs)),
                      memory_bytes=float(sum(footprint.values())),
                      fallback_ops=sum(1 for c in costs if c.fallback))


def split_latency(cost: Cost) -> tuple[float, float, float]:
    """(compute_s, memory_s, overhead_s) of a Cost, for overlap-aware simulation.

    Family models built on `cost.common.build_cost` put `compute_s`, `memory_s` and `overhead_s`
    in `Cost.details`. When a model gives none of them, the whole latency is attributed to the
    term named by `Cost.bound` (a compute-bound op becomes pure compute, and so on), which is
    the conservative choice: it leaves nothing to overlap within the op. Terms are clipped to the
    latency, and the overhead is whatever the larger of compute and memory leaves of it, so that
    max(compute, memory) + overhead == latency always holds.
    """
    lat = cost.latency_s
    d = cost.details
    if "compute_s" in d or "memory_s" in d:
        c = min(max(float(d.get("compute_s", 0.0)), 0.0), lat)
        m = min(max(float(d.get("memory_s", 0.0)), 0.0), lat)
    elif cost.bound == "compute":
        c, m = lat, 0.0
    elif cost.bound == "memory":
        c, m = 0.0, lat
    else:
        c, m = 0.0, 0.0
    return c, m, lat - max(c, m)


def op_columns(ops: Sequence[Op], layers: Sequence[LayerSparsity | None]) -> dict[str, list]:
    """The per-op columns that depend on the op and its sparsity only (not on the device)."""
    return {
        "op_index": [op.index for op in ops],
        "kind": [op.kind for op in ops],
        "module": [op.module for op in ops],
        "call_index": [op.call_index for op in ops],
        "weight": [op.weight or "" for op in ops],
        "pattern": [ly.pattern.label if ly is not None else "dense" for ly in layers],
        "density": [ly.stats.density if ly is not None else 1.0 for ly in layers],
        "expert_tokens": [",".join(map(str, op.expert_tokens)) for op in ops],
        "experts_touched": [sum(1 for x in op.expert_tokens if x) for op in ops],
        "activation_density": [op.activation_density for op in ops],
        "flops": [op.flops for op in ops],
    }


def cost_columns(costs: Sequence[Cost]) -> dict[str, list]:
    """The per-op columns read off the Cost records."""
    memo: dict[int, tuple[float, float, float]] = {}
    splits = []
    for c in costs:  # memoised costs repeat: split each distinct record once
        sp = memo.get(id(c))
        if sp is None:
            sp = memo[id(c)] = split_latency(c)
        splits.append(sp)
    return {
        "kernel": [c.kernel for c in costs],
        "activation_skipped": [c.details.get("activation_density_used", 1.0) < 1.0 for c in costs],
        "fallback": [bool(c.fallback) for c in costs],
        "latency_s": [c.latency_s for c in costs],
        "energy_j": [c.energy_j for c in costs],
        "memory_bytes": [c.memory_bytes for c in costs],
        "metadata_bytes": [c.metadata_bytes for c in costs],
        "bytes_dram": [float(c.bytes_by_level.get(DRAM_LEVEL, 0.0)) for c in costs],
        "bound": [c.bound for c in costs],
        "utilization": [c.utilization for c in costs],
        "flops_executed": [c.flops_executed for c in costs],
        "compute_s": [s[0] for s in splits],
        "memory_s": [s[1] for s in splits],
        "overhead_s": [s[2] for s in splits],
        "why": [c.why for c in costs],
        "cost_reasons": [c.reasons for c in costs],
        "model": [c.model for c in costs],
    }


def fit_columns(fit: MemoryFit) -> dict[str, Any]:
    """The memory-fit columns of one (plan, device) block (scalars, repeated over its ops)."""
    cap = fit.capacity_bytes
    return {"memory_need_bytes": fit.need_bytes, "memory_capacity_bytes": math.nan if cap is None else cap,
            "fits": fit.fits}


def per_op_columns(blocks: Iterable[Mapping[str, Any]]) -> Columns:
    """Concatenate column blocks (dicts of equal-length lists, or scalars repeated over the
    block) into the per-op table's columns."""
    cols: Columns = {c: [] for c in PER_OP_COLUMNS}
    for b in blocks:
        n = max((len(v) for v in b.values() if isinstance(v, list)), default=0)
        for c in PER_OP_COLUMNS:
            v = b[c]
            cols[c].extend(v if isinstance(v, list) else [v] * n)
    return cols


def n_rows(cols: Columns) -> int:
    return len(next(iter(cols.values()), []))


def take(cols: Columns, rows: Sequence[int]) -> Columns:
    """The rows `rows` (indices, in that order) of a column table."""
    return {c: [v[i] for i in rows] for c, v in cols.items()}


def rows_where(cols: Columns, column: str, value: Any) -> Columns:
    """The rows of a column table whose `column` equals `value`."""
    return take(cols, [i for i, v in enumerate(cols[column]) if v == value])


def frame(cols: Columns, columns: Iterable[str]) -> pd.DataFrame:
    """A column table as a DataFrame with `columns` in that order (pandas is imported here, so
    a run that only prints needs none)."""
    import pandas as pd

    return pd.DataFrame({c: cols[c] for c in columns})


def as_columns(table: Columns | pd.DataFrame) -> Columns:
    """A column table, from a DataFrame or as it is."""
    if isinstance(table, dict):
        return table
    return {c: table[c].tolist() for c in table.columns}


_KEYS = ("workload", "device", "plan")


def _sum(values: Sequence[Any]) -> Any:
    """Exact sum: integers stay integers, floats are summed without rounding drift."""
    if all(type(v) is int or type(v) is bool for v in values):
        return sum(values)
    return math.fsum(values)


def _footprint(cols: Columns, column: str, rows: Sequence[int]) -> float:
    # a weight used by several ops (tied embeddings, a module called twice) is stored once, at
    # its largest per-op footprint
    per_weight: dict[str, float] = {}
    weight, value = cols["weight"], cols[column]
    for i in rows:
        if weight[i] != "":
            per_weight[weight[i]] = max(per_weight.get(weight[i], -math.inf), float(value[i]))
    return math.fsum(per_weight.values())


def _top(rows: Sequence[int], labels: Sequence[Any], latency: Sequence[float]) -> tuple[Any, float, int] | None:
    """The label whose rows hold the largest summed latency (ties: the first to appear), that
    sum and its number of rows."""
    sums: dict[Any, list[float]] = {}
    for i in rows:
        sums.setdefault(labels[i], []).append(latency[i])
    best = None
    for label, lats in sums.items():
        total = math.fsum(lats)
        if best is None or total > best[1]:
            best = (label, total, len(lats))
    return best


def _ratio(a: float, b: float) -> float:
    """a / b as a table gives it: 0/0 and anything with NaN is NaN, x/0 is +-inf."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if b == 0:
        return math.nan if a == 0 else math.copysign(math.inf, a)
    return a / b


def summarize(per_op: Columns) -> Columns:
    """One row per (workload, device, plan), in order of first appearance, with totals, ratios
    to dense, dominant bound and top why (`SUMMARY_COLUMNS`).

    The ratios need the dense plan's rows for the same workload and device in `per_op`; where
    they are absent the ratio columns are NaN. The top why looks at the ops the plan touched
    (all ops when it touched none), takes the (kernel, bound) class holding the most of their
    latency and quotes the explanation of its slowest op. One pass to group the rows, then plain
    sums per group: no pandas, so a printed estimate does not import it.
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(zip(*(per_op[k] for k in _KEYS))):
        groups.setdefault(key, []).append(i)
    lat, pattern, why = per_op["latency_s"], per_op["pattern"], per_op["why"]
    kernel_bound = list(zip(per_op["kernel"], per_op["bound"]))
    out: Columns = {c: [] for c in SUMMARY_COLUMNS}
    for key, rows in groups.items():
        first = rows[0]
        touched = [i for i in rows if pattern[i] != "dense"]
        for c, v in zip(_KEYS, key):
            out[c].append(v)
        for c in ("family", "runtime", "device_file", "memory_need_bytes", "memory_capacity_bytes", "fits"):
            out[c].append(per_op[c][first])
        for c in ("latency_s", "energy_j", "bytes_dram", "flops", "flops_executed"):
            out[c].append(_sum([per_op[c][i] for i in rows]))
        out["fallback_ops"].append(sum(1 for i in rows if per_op["fallback"][i]))
        out["sparse_ops"].append(len(touched))
        out["model"].append(",".join(sorted({per_op["model"][i] for i in rows})))
        out["memory_bytes"].append(_footprint(per_op, "memory_bytes", rows))
        out["metadata_bytes"].append(_footprint(per_op, "metadata_bytes", rows))
        top_bound = _top(rows, per_op["bound"], lat)
        out["bound"].append(top_bound[0] if top_bound else "")
        scope = touched or rows
        total = math.fsum(lat[i] for i in scope)
        top = _top(scope, kernel_bound, lat)
        if total <= 0 or top is None:
            out["why"].append("")
            out["top_why"].append("")
            out["top_share"].append(math.nan)
            continue
        (kernel, bound), top_lat, top_ops = top
        slowest = max((i for i in scope if kernel_bound[i] == (kernel, bound)), key=lambda i: lat[i])
        out["top_why"].append(why[slowest])
        out["top_share"].append(top_lat / total)
        out["why"].append(f"{why[slowest]} [{top_lat / total:.0%} of the latency of the {len(scope)} "
                          f"op(s) in scope: {top_ops} {kernel} op(s), {bound}-bound]")
    return _add_dense_ratios(out)


def _add_dense_ratios(summary: Columns) -> Columns:
    """speedup_vs_dense, energy_vs_dense and memory_vs_dense against the dense row of the same
    workload and device (NaN where there is none)."""
    dense = {(w, d): i for i, (w, d, p) in enumerate(zip(*(summary[k] for k in _KEYS))) if p == "dense"}
    lat, energy, mem = summary["latency_s"], summary["energy_j"], summary["memory_bytes"]
    nan = math.nan
    for i, key in enumerate(zip(summary["workload"], summary["device"])):
        j = dense.get(key)
        summary["speedup_vs_dense"].append(nan if j is None else _ratio(lat[j], lat[i]))
        summary["energy_vs_dense"].append(nan if j is None else _ratio(energy[i], energy[j]))
        summary["memory_vs_dense"].append(nan if j is None else _ratio(mem[i], mem[j]))
    return summary


class FitTotals(TypedDict):
    """Whether one block's model fits its device (`totals`)."""

    memory_need_bytes: float
    memory_capacity_bytes: float | None
    fits: bool | None


class Totals(FitTotals):
    """Totals of one (workload, device, plan) block (`totals`)."""

    latency_s: float
    energy_j: float
    memory_bytes: float
    metadata_bytes: float
    bytes_dram: float
    flops: float
    flops_executed: float
    fallback_ops: int


def totals(per_op: Columns | pd.DataFrame) -> Totals:
    """Totals of one (workload, device, plan) block: the keys every --json document carries."""
    cols = as_columns(per_op)
    n = n_rows(cols)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(zip(*(cols[k] for k in _KEYS))):
        groups.setdefault(key, []).append(i)
    return {
        "latency_s": math.fsum(cols["latency_s"]),
        "energy_j": math.fsum(cols["energy_j"]),
        "memory_bytes": math.fsum(_footprint(cols, "memory_bytes", rows) for rows in groups.values()),
        "metadata_bytes": math.fsum(_footprint(cols, "metadata_bytes", rows) for rows in groups.values()),
        "bytes_dram": math.fsum(cols["bytes_dram"]),
        "flops": float(_sum(cols["flops"])),
        "flops_executed": float(_sum(cols["flops_executed"])),
        "fallback_ops": sum(1 for f in cols["fallback"] if f),
        **_fit_totals(cols, n),
    }


def _fit_totals(cols: Columns, n: int) -> FitTotals:
    if n == 0:
        return {"memory_need_bytes": 0.0, "memory_capacity_bytes": None, "fits": None}
    cap = float(cols["memory_capacity_bytes"][0])
    fits = cols["fits"][0]
    return {"memory_need_bytes": float(cols["memory_need_bytes"][0]),
            "memory_capacity_bytes": cap if math.isfinite(cap) else None,
            "fits": None if fits is None else bool(fits)}


def records(table: Columns | pd.DataFrame, fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows (of `fields`, default all columns) as plain-JSON dicts (numpy scalars unwrapped,
    NaN/inf as None)."""
    if not isinstance(table, dict):
        df = table if fields is None else table[list(fields)]
        return [{k: jsonable(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
    names = list(table) if fields is None else list(fields)
    return [{k: jsonable(v) for k, v in zip(names, row)} for row in zip(*(table[k] for k in names))]


def jsonable(v: Any) -> Any:
    if isinstance(v, Reason):
        return {"code": v.code, "value": jsonable(v.value)}
    if isinstance(v, tuple):
        return [jsonable(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def reason_text(reasons: Iterable[Reason]) -> str:
    """'memory_bound; metadata=0.125': a Reason tuple as one table cell."""
    return "; ".join(r.code + (f"={r.value:.3g}" if math.isfinite(r.value) else "") for r in reasons)


def speedup_map(summary: Columns | pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """{device: {plan: speedup_vs_dense}} as compare's --json gives it."""
    cols = as_columns(summary)
    out: dict[str, dict[str, float | None]] = {}
    for dev, plan, s in zip(cols["device"], cols["plan"], cols["speedup_vs_dense"]):
        out.setdefault(str(dev), {})[str(plan)] = jsonable(s)
    return out
