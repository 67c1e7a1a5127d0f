"""Tables the HTML and Markdown pages both show, shaped from the report data."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import sparsesim.report.build as build
from sparsesim.report.fmt import fmt_q, fmt_x
from sparsesim.report.inputs import SearchResult, ValidationResult

# Rows of the per-layer "why no speedup" table shown per (device, plan) on the page; the CSV has all.
WHY_ROWS = 3


def why_summary(t: pd.DataFrame, devices: Sequence[str], plans: Sequence[str]) -> pd.DataFrame:
    """Per device x sparse plan: how many layers gained nothing, and the reason weighted by their dense time."""
    rows = []
    for dev in devices:
        row = {"device": dev}
        for p in plans:
            if p == "dense":
                continue
            g = t[(t["device"] == dev) & (t["plan"] == p)]
            if not len(g):
                row[p] = "all layers faster"
                continue
            weight: dict[str, float] = {}
            for tags, w in zip(g["reason_tags"], g["dense_latency_s"].fillna(0.0)):
                for tag in (tags or ("(no reason given)",)):
                    weight[tag] = weight.get(tag, 0.0) + float(w)
            top = sorted(weight, key=lambda k: -weight[k])[:2]
            row[p] = f"{len(g)} layer{'s' if len(g) != 1 else ''}: " + ", ".join(top)
        rows.append(row)
    return pd.DataFrame(rows)


def device_table(devices: Sequence[Any]) -> pd.DataFrame:
    return pd.DataFrame([{"device": d.name, "family": d.family, "description": d.description,
                          "file": _short_path(d.path), "numbers": len(d.provenance), "fitted": len(d.fitted())}
                         for d in devices])


def _short_path(p: str) -> str:
    parts = Path(p).parts
    for anchor in ("accelerators",):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor):])
    return p


def search_summary(data: build.ReportData) -> pd.DataFrame:
    rows = []
    for sr in data.searches:
        c = sr.chosen
        rows.append({"workload": sr.workload, "device": sr.device, **{k: v for k, v in sr.extra.items()
                                                                     if k in ("algorithm", "target speedup",
                                                                              "target max_accuracy_drop", "dense accuracy")},
                     "chosen accuracy": c.get("accuracy"), "chosen speedup": c.get("speedup_vs_dense"),
                     "chosen latency": c.get("latency_s"), "best uniform plan": c.get("uniform_plan"),
                     "uniform accuracy": c.get("uniform_accuracy"), "front points": len(sr.trials)})
    return pd.DataFrame(rows)


SEARCH_FORMATS = {"chosen latency": lambda v: fmt_q(v, "time"), "chosen speedup": fmt_x,
                  "latency_s": lambda v: fmt_q(v, "time"), "energy_j": lambda v: fmt_q(v, "energy"),
                  "memory_bytes": lambda v: fmt_q(v, "bytes"), "speedup_vs_dense": fmt_x}


def front_table(sr: SearchResult) -> pd.DataFrame:
    cols = [c for c in ("source", "plan", "accuracy", "latency_s", "speedup_vs_dense", "energy_j", "memory_bytes")
            if c in sr.trials]
    return sr.trials[sr.trials["on_front"].astype(bool)][cols].sort_values("latency_s") if "latency_s" in cols else sr.trials[cols]


def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * float(v):.1f}%"


PCT_FORMATS = {c: _pct for c in ("median_abs_error", "p90_abs_error", "target", "latency_median_abs_error",
                                 "latency_error", "speedup_error", "abs_error")}


def validation_line(v: ValidationResult) -> str:
    m = v.meta
    parts = [f"From {v.source}", f"device {m.get('device', '?')} ({m.get('device_source', '')})"]
    if m.get("quick"):
        parts.append("quick grid")
    if m.get("wall_s") is not None:
        parts.append(f"{m['wall_s']} s")
    if m.get("load_average") is not None:
        parts.append(f"load average {m['load_average']:.2f} when it ran")
    return "; ".join(parts) + "."


def gpu_line(v: ValidationResult) -> str:
    g = v.gpu_summary
    energy = (f" Energy within {g.get('energy_factor', 2):g}x of the measured figure in {g['energy_within']} of "
              f"{g['energy_cases']}." if g.get("energy_cases") else "")
    return (f"{g.get('cases', len(v.gpu))} published cases; speed: median |error| {_pct(g.get('median_abs_error'))}, "
            f"90th percentile {_pct(g.get('p90_abs_error'))}; direction right in {g.get('direction_right', '?')} of "
            f"{g.get('direction_cases', '?')}.{energy}")


TRAINING_FORMATS = {"train FLOPs vs dense": fmt_x, "time": lambda v: fmt_q(v, "time"), "time vs dense": fmt_x,
                    "energy": lambda v: fmt_q(v, "energy"), "energy vs dense": fmt_x,
                    "peak memory": lambda v: fmt_q(v, "bytes"), "peak memory vs dense": fmt_x}


def training_table(tr: pd.DataFrame) -> pd.DataFrame:
    """One row per (device, method) of a workload's training section."""
    return pd.DataFrame({
        "device": tr["device"], "method": tr["method"], "sparsity": tr["sparsity"], "distribution": tr["distribution"],
        "train FLOPs vs dense": tr["train_flops_vs_dense"], "time": tr["time_s"], "time vs dense": tr["time_vs_dense"],
        "energy": tr["energy_j"], "energy vs dense": tr["energy_vs_dense"], "peak memory": tr["peak_memory_bytes"],
        "peak memory vs dense": tr["peak_memory_vs_dense"], "why": tr["why"],
    })


def training_line(tr: pd.DataFrame) -> str:
    """What the training section ran, in one sentence."""
    first = tr.iloc[0]
    dense = tr[tr["method"] == "dense"].iloc[0]
    return (f"{int(dense['steps']):,} dense steps ({first['storage']} storage); every sparse method at "
            f"{tr[tr['method'] != 'dense']['sparsity'].max():g} sparsity except 2:4; theoretical FLOPs skip the zeros, "
            "time, energy and memory are what the device's kernels give. Command: "
            f"sparsesim train {first['workload']} --methods {','.join(dict.fromkeys(tr['method']))} "
            f"--sparsity {build.TRAINING_SPARSITY:g} --distribution {build.TRAINING_DISTRIBUTION}")
