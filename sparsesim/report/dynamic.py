"""The report's dynamic-sparsity section: what input-dependent sparsity buys per device.

Two tables per workload, read off the per-op frame (nothing is re-costed):

* expert load balance, for Mixture-of-Experts workloads: per grouped expert GEMM, how many
  experts the routing touched, the busiest expert's rows against a perfectly even split (the
  imbalance every group is padded to), rows dropped for capacity, and per device the share of
  the dense latency the expert GEMMs take and the padding they execute;
* activation sparsity, for `act:S` plans: the speedup over dense per device and whether the
  device's kernels skipped the zero activations or multiplied them (the costs' why says which).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from sparsesim.report.fmt import fmt_q, fmt_x

LOAD_FORMATS: dict[str, Callable[[Any], str]] = {"imbalance": fmt_x}
TIME_FORMATS: dict[str, Callable[[Any], str]] = {"expert_share": lambda v: f"{v:.0%}", "expert_latency_s": lambda v: fmt_q(v, "time"),
                         "executed_over_useful": fmt_x}
ACT_FORMATS: dict[str, Callable[[Any], str]] = {"speedup_vs_dense": fmt_x}


def _loads(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def expert_load_table(per_op: pd.DataFrame, workload: str) -> pd.DataFrame:
    """One row per grouped expert GEMM of `workload` (empty when it has none): routing facts
    that do not depend on device or plan, read from the dense plan on its first device."""
    w = per_op[(per_op["workload"] == workload) & (per_op["expert_tokens"] != "")]
    if w.empty:
        return pd.DataFrame()
    first = w[(w["plan"] == w["plan"].iloc[0]) & (w["device"] == w["device"].iloc[0])]
    rows = []
    for r in first.itertuples(index=False):
        loads = _loads(r.expert_tokens)
        total = sum(loads)
        even = total / len(loads) if loads else 0.0
        rows.append({"layer": r.weight or r.module, "experts": len(loads), "experts_touched": r.experts_touched,
                     "rows": total, "busiest_expert_rows": max(loads, default=0),
                     "imbalance": max(loads, default=0) / even if even else 1.0})
    return pd.DataFrame(rows)


def expert_time_table(per_op: pd.DataFrame, workload: str, plan: str = "dense") -> pd.DataFrame:
    """Per device: the expert GEMMs' share of the latency under `plan` and the FLOPs they
    execute over the useful ones (padding every group to the busiest expert)."""
    w = per_op[(per_op["workload"] == workload) & (per_op["plan"] == plan)]
    if w.empty or not (w["expert_tokens"] != "").any():
        return pd.DataFrame()
    rows = []
    for dev, d in w.groupby("device", sort=False):
        e = d[d["expert_tokens"] != ""]
        rows.append({"device": dev, "expert_share": e["latency_s"].sum() / d["latency_s"].sum(),
                     "expert_latency_s": e["latency_s"].sum(),
                     "executed_over_useful": e["flops_executed"].sum() / max(1.0, float(e["flops"].sum()))})
    return pd.DataFrame(rows)


def activation_table(summary: pd.DataFrame, per_op: pd.DataFrame, workload: str) -> pd.DataFrame:
    """Per device and activation-sparsity plan: speedup over dense and whether the zeros were
    skipped (no weight op of the plan reports them multiplied)."""
    sm = summary[(summary["workload"] == workload) & summary["plan"].str.contains("act:", regex=False)]
    if sm.empty:
        return pd.DataFrame()
    po = per_op[(per_op["workload"] == workload) & (per_op["weight"] != "") & (per_op["activation_density"] < 1.0)]
    rows = []
    for r in sm.itertuples(index=False):
        ops = po[(po["device"] == r.device) & (po["plan"] == r.plan)]
        multiplied = not ops.empty and not ops["activation_skipped"].all()
        rows.append({"device": r.device, "plan": r.plan, "speedup_vs_dense": r.speedup_vs_dense,
                     "zeros": "multiplied (dense kernels)" if multiplied else "skipped"})
    return pd.DataFrame(rows)
