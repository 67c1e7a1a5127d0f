"""Result tables: column definitions, per-op rows from `Cost` records, per (device, plan) totals,
speedup over dense on the same device, the dominant bound, the top "why", and JSON conversion.

Every table sparsesim prints, saves or reports comes through here, so the column names and
their meaning are defined once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from sparsesim.core.ir import Op
from sparsesim.cost.record import Cost, Reason
from sparsesim.run.fit import MemoryFit
from sparsesim.sparsity.records import LayerSparsity

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


def per_op_frame(blocks: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Concatenate column blocks (dicts of equal-length lists, or scalars repeated over the
    block) into the per-op table, building one DataFrame at the end."""
    cols: dict[str, list] = {c: [] for c in PER_OP_COLUMNS}
    for b in blocks:
        n = max((len(v) for v in b.values() if isinstance(v, list)), default=0)
        for c in PER_OP_COLUMNS:
            v = b[c]
            cols[c].extend(v if isinstance(v, list) else [v] * n)
    return pd.DataFrame(cols)


_KEYS = ["workload", "device", "plan"]


def _footprint(df: pd.DataFrame, column: str, keys: list[str]) -> pd.Series:
    # a weight used by several ops (tied embeddings, a module called twice) is stored once
    w = df[df["weight"] != ""]
    per_weight = w.groupby(keys + ["weight"], sort=False)[column].max()
    return per_weight.groupby(level=list(range(len(keys))), sort=False).sum()


def _top_by(df: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    """Per group of `keys`: the values of `columns` with the largest summed latency, that sum
    (`latency_s`) and the number of ops (`ops`) in it; indexed by `keys`."""
    s = df.groupby(keys + columns, sort=False)["latency_s"].agg(["sum", "size"]).reset_index()
    s = s.rename(columns={"sum": "latency_s", "size": "ops"})
    s = s.sort_values("latency_s", ascending=False, kind="stable").drop_duplicates(keys)
    return s.set_index(keys)


def summarize(per_op: pd.DataFrame) -> pd.DataFrame:
    """One row per (workload, device, plan) with totals, ratios to dense, dominant bound and top why.

    The ratios need the dense plan's rows for the same workload and device in `per_op`; where
    they are absent the ratio columns are NaN. The top why looks at the ops the plan touched
    (all ops when it touched none), takes the (kernel, bound) class holding the most of their
    latency and quotes the explanation of its slowest op. Vectorised: whole-table group-bys.
    """
    keys = _KEYS
    df = per_op.assign(_touched=per_op["pattern"] != "dense")
    g = df.groupby(keys, sort=False)
    out = g.agg(
        family=("family", "first"),
        runtime=("runtime", "first"),
        latency_s=("latency_s", "sum"),
        energy_j=("energy_j", "sum"),
        bytes_dram=("bytes_dram", "sum"),
        fallback_ops=("fallback", "sum"),
        sparse_ops=("_touched", "sum"),
        flops=("flops", "sum"),
        flops_executed=("flops_executed", "sum"),
        device_file=("device_file", "first"),
        model=("model", lambda s: ",".join(sorted(set(s)))),
        memory_need_bytes=("memory_need_bytes", "first"),
        memory_capacity_bytes=("memory_capacity_bytes", "first"),
        fits=("fits", "first"),
    )
    out["memory_bytes"] = _footprint(df, "memory_bytes", keys).reindex(out.index).fillna(0.0)
    out["metadata_bytes"] = _footprint(df, "metadata_bytes", keys).reindex(out.index).fillna(0.0)
    out["bound"] = _top_by(df, keys, ["bound"])["bound"].reindex(out.index).fillna("")
    any_touched = g["_touched"].transform("any")
    scope = df[df["_touched"] | ~any_touched]
    top = _top_by(scope, keys, ["kernel", "bound"])
    slowest = scope.sort_values("latency_s", ascending=False, kind="stable").drop_duplicates(keys + ["kernel", "bound"])
    slowest_why = slowest.set_index(keys + ["kernel", "bound"])["why"]
    scope_g = scope.groupby(keys, sort=False)["latency_s"]
    scope_lat, scope_n = scope_g.sum(), scope_g.size()
    texts, tops, shares = [], [], []
    for k in out.index:
        total = float(scope_lat.get(k, 0.0))
        if total <= 0 or k not in top.index:
            texts.append("")
            tops.append("")
            shares.append(math.nan)
            continue
        t = top.loc[k]
        why = slowest_why[(*k, t["kernel"], t["bound"])]
        tops.append(why)
        shares.append(float(t["latency_s"]) / total)
        texts.append(f"{why} [{t['latency_s'] / total:.0%} of the latency of the {int(scope_n[k])} "
                     f"op(s) in scope: {int(t['ops'])} {t['kernel']} op(s), {t['bound']}-bound]")
    out["why"] = texts
    # the same as fields: the top kernel's own why and its share of the latency in scope
    out["top_why"] = tops
    out["top_share"] = shares
    out = out.reset_index()
    out["fallback_ops"] = out["fallback_ops"].astype(int)
    out["sparse_ops"] = out["sparse_ops"].astype(int)
    return add_dense_ratios(out)


def add_dense_ratios(summary: pd.DataFrame) -> pd.DataFrame:
    """speedup_vs_dense, energy_vs_dense and memory_vs_dense against the dense row of the same
    workload and device."""
    dense = summary[summary["plan"] == "dense"].set_index(["workload", "device"])
    idx = pd.MultiIndex.from_frame(summary[["workload", "device"]])
    d_lat = dense["latency_s"].reindex(idx).to_numpy()
    d_en = dense["energy_j"].reindex(idx).to_numpy()
    d_mem = dense["memory_bytes"].reindex(idx).to_numpy()
    out = summary.copy()
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 (a weightless workload) is NaN
        out["speedup_vs_dense"] = d_lat / out["latency_s"].to_numpy()
        out["energy_vs_dense"] = out["energy_j"].to_numpy() / d_en
        out["memory_vs_dense"] = out["memory_bytes"].to_numpy() / d_mem
    return out[list(SUMMARY_COLUMNS)]


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


def totals(per_op: pd.DataFrame) -> Totals:
    """Totals of one (workload, device, plan) block: the keys every --json document carries."""
    return {
        "latency_s": float(per_op["latency_s"].sum()),
        "energy_j": float(per_op["energy_j"].sum()),
        "memory_bytes": float(_footprint(per_op, "memory_bytes", _KEYS).sum()),
        "metadata_bytes": float(_footprint(per_op, "metadata_bytes", _KEYS).sum()),
        "bytes_dram": float(per_op["bytes_dram"].sum()),
        "flops": float(per_op["flops"].sum()),
        "flops_executed": float(per_op["flops_executed"].sum()),
        "fallback_ops": int(per_op["fallback"].sum()),
        **_fit_totals(per_op),
    }


def _fit_totals(per_op: pd.DataFrame) -> FitTotals:
    if per_op.empty:
        return {"memory_need_bytes": 0.0, "memory_capacity_bytes": None, "fits": None}
    first = per_op.iloc[0]
    cap = float(first["memory_capacity_bytes"])
    fits = first["fits"]
    return {"memory_need_bytes": float(first["memory_need_bytes"]),
            "memory_capacity_bytes": cap if math.isfinite(cap) else None,
            "fits": None if fits is None else bool(fits)}


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain-JSON dicts (numpy scalars unwrapped, NaN/inf as None)."""
    return [{k: jsonable(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


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


def speedup_map(summary: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """{device: {plan: speedup_vs_dense}} as compare's --json gives it."""
    out: dict[str, dict[str, float | None]] = {}
    for dev, plan, s in summary[["device", "plan", "speedup_vs_dense"]].itertuples(index=False):
        out.setdefault(str(dev), {})[str(plan)] = jsonable(s)
    return out
