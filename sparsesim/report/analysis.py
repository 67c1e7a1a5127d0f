"""What the report concludes from the result frames: per-layer comparisons against dense and the
reasons a layer gained nothing, every fallback, device provenance, and the per-device verdict.
Every sentence is built from the numbers; nothing here is hand-written per device."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sparsesim.core.errors import SparsesimError
from sparsesim.core.textfmt import fit_note
from sparsesim.cost.record import REASONS
from sparsesim.hw.devices import Device

# A layer whose sparse time is at least this fraction of its dense time gained nothing worth
# having and goes into the "why no speedup" table.
NO_SPEEDUP = 1.0 / 1.1


def layer_table(per_op: pd.DataFrame) -> pd.DataFrame:
    """Each op of each sparse plan next to the same op dense on the same device, with reasons."""
    key = ["workload", "device", "op_index"]
    dense = per_op[per_op["plan"] == "dense"][key + ["latency_s", "energy_j"]].rename(
        columns={"latency_s": "dense_latency_s", "energy_j": "dense_energy_j"})
    sparse = per_op[(per_op["plan"] != "dense") & (per_op["weight"].fillna("") != "")]
    t = sparse.merge(dense, on=key, how="left")
    t["speedup"] = t["dense_latency_s"] / t["latency_s"].where(t["latency_s"] > 0)
    totals = dense.groupby(["workload", "device"])["dense_latency_s"].sum().rename("dense_total_s")
    t = t.merge(totals, left_on=["workload", "device"], right_index=True, how="left")
    t["share_of_dense"] = t["dense_latency_s"] / t["dense_total_s"]
    t["time_lost_s"] = t["latency_s"] - t["dense_latency_s"] * t["density"].clip(lower=0.0)
    tags = [reason_tags(r) for r in t.itertuples(index=False)]
    t["reason_tags"] = [tuple(tag for tag, _ in rs) for rs in tags]
    t["reasons"] = ["; ".join(text for _, text in rs) for rs in tags]
    return t


def why_no_speedup(per_op: pd.DataFrame, top: int | None = None) -> pd.DataFrame:
    """Layers where a sparse plan bought (almost) nothing, biggest dense time first."""
    t = layer_table(per_op)
    t = t[t["speedup"] < 1.0 / NO_SPEEDUP].sort_values(["workload", "device", "plan", "dense_latency_s"],
                                                       ascending=[True, True, True, False])
    if top is not None:
        t = t.groupby(["workload", "device", "plan"], sort=False).head(top)
    cols = ["workload", "device", "plan", "module", "weight", "kind", "pattern", "kernel", "fallback", "bound",
            "dense_latency_s", "latency_s", "speedup", "share_of_dense", "metadata_bytes", "memory_bytes",
            "reasons", "why"]
    return t[[c for c in cols if c in t.columns]].reset_index(drop=True)


# Thresholds above which a cost the model quotes is named as a reason in the report: small
# effects are present in almost every op and would drown the ones that matter.
METADATA_NOTED = 0.10  # metadata bytes as a fraction of the stored weight
IMBALANCE_NOTED = 1.10  # busiest row / mean row of a zero-skipping engine
WAVE_FILL_NOTED = 0.75  # fraction of the last GPU wave's SMs in use


def reason_tags(r: Any) -> list[tuple[str, str]]:
    """The causes a layer gained little, as (tag, text) pairs: read from the op's structured
    `cost_reasons` (Cost.reasons) and columns, never from the model's `why` prose (which stays
    beside them in the tables). Small effects below the NOTED thresholds are left out."""
    out: list[tuple[str, str]] = []
    codes = {x.code: x.value for x in (getattr(r, "cost_reasons", ()) or ())}
    if "fallback" in codes:
        out.append((REASONS["fallback"], f"fallback: ran as {r.kernel}"))
    elif getattr(r, "pattern", "") not in ("", "dense") and str(getattr(r, "kernel", "")).lower() == "dense":
        out.append((REASONS["not_exploited"], REASONS["not_exploited"]))
    for code in ("memory_bound", "overhead_bound", "padding", "alignment", "unsupported"):
        if code in codes:
            out.append((REASONS[code], REASONS[code]))
    meta = codes.get("metadata", 0.0)
    if meta >= METADATA_NOTED:
        out.append((REASONS["metadata"], f"metadata overhead ({meta:.0%} of weight bytes)"))
    if codes.get("imbalance", 0.0) >= IMBALANCE_NOTED:
        out.append((REASONS["imbalance"], f"load imbalance (busiest row {codes['imbalance']:.2f}x the mean)"))
    fill = codes.get("wave_fill", 1.0)
    if fill < WAVE_FILL_NOTED:
        out.append((REASONS["wave_fill"], f"wave quantisation (waves {fill:.0%} full)"))
    speed = float(getattr(r, "speedup", float("nan")))
    if not out and speed == speed:
        bound = str(getattr(r, "bound", ""))
        tag = "sparse kernel slower than dense" if speed < 1 else f"small gain, {bound}-bound"
        out.append((tag, tag))
    return out


def reasons(r: Any) -> str:
    """`reason_tags` as one table cell."""
    return "; ".join(text for _, text in reason_tags(r))


def fallbacks(per_op: pd.DataFrame) -> pd.DataFrame:
    """Every fallback taken, per workload, device, plan and kernel: how many ops, their time, and
    the cost model's most frequent reason (shapes stripped of the per-op numbers it quotes)."""
    cols = ["workload", "device", "plan", "kernel", "ops", "latency_s", "why"]
    f = per_op[per_op["fallback"].astype(bool)]
    if not len(f):
        return pd.DataFrame(columns=cols)
    rows = []
    for (wl, dev, plan, kernel), g in f.groupby(["workload", "device", "plan", "kernel"], sort=False):
        rows.append({"workload": wl, "device": dev, "plan": plan, "kernel": kernel, "ops": len(g),
                     "latency_s": float(g["latency_s"].sum()), "why": short_why(str(g["why"].mode().iloc[0]), 220)})
    return pd.DataFrame(rows, columns=cols)


def fallback_matrix(per_op: pd.DataFrame, devices: Sequence[str], plans: Sequence[str]) -> pd.DataFrame:
    """Ops that fell back, per device x plan, summed over the workloads."""
    f = per_op[per_op["fallback"].astype(bool)]
    counts = f.groupby(["device", "plan"]).size()
    return pd.DataFrame([{"device": d, **{p: int(counts.get((d, p), 0)) for p in plans}} for d in devices])


def provenance(devices: Sequence[Device]) -> pd.DataFrame:
    """Every device field with its source, unit and (for fitted values) fit date and error."""
    rows = []
    for d in devices:
        for fieldname, p in d.provenance.items():
            rows.append({"device": d.name, "family": d.family, "file": d.path, "field": fieldname,
                         "value": _param_value(d, fieldname), "si_unit": _si_unit(d, fieldname),
                         "unit_in_file": p.unit, "source": p.source,
                         "fit_date": p.fit_date, "fit_error": p.fit_error})
    return pd.DataFrame(rows, columns=["device", "family", "file", "field", "value", "si_unit", "unit_in_file", "source",
                                       "fit_date", "fit_error"])


SI_UNITS = {"count": "", "ratio": "", "frequency": "Hz", "flop_rate": "FLOP/s", "bandwidth": "B/s", "bytes": "B",
            "time": "s", "energy": "J", "energy_per_byte": "J/B", "power": "W", "per_cycle": "1/cycle",
            "cycles": "cycles"}


def _si_unit(device: Device, fieldname: str) -> str:
    """The SI unit the loader converted a field to (device files may spell it TFLOP/s, GB/s, ...)."""
    name = fieldname.partition(".")[0]
    for f in dataclasses.fields(device.params):
        if f.name == name:
            return SI_UNITS.get(f.metadata.get("dim") or "", "")
    return ""


def _param_value(device: Device, fieldname: str) -> Any:
    name, _, dtype = fieldname.partition(".")
    v = getattr(device.params, name, None)
    if dtype and isinstance(v, dict):
        v = v.get(dtype)
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return v


def verdicts(summary: pd.DataFrame, per_op: pd.DataFrame, devices: Sequence[str],
             plans: Sequence[str], searches: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Per device: the plan with the best geometric-mean speedup over the workloads, and for every
    plan its speedup range, the kernel that ran most of the sparsified layers, their dominant bound
    and the cost model's top reason; the runs that do not fit in the device's memory; and what is
    known of accuracy (a search on this device, or nothing: then the verdict says so)."""
    out = []
    for dev in devices:
        unfit = [{"workload": r["workload"], "plan": r["plan"], "note": fit_note(r)}
                 for r in summary[summary["device"] == dev].to_dict("records") if fit_note(r)]
        s = summary[(summary["device"] == dev) & (summary["plan"] != "dense")]
        if not len(s):
            continue
        per_plan: list[dict[str, Any]] = []
        for plan in plans:
            p = s[s["plan"] == plan]
            if not len(p):
                continue
            sp = p["speedup_vs_dense"].astype(float).to_numpy()
            sp = sp[np.isfinite(sp) & (sp > 0)]
            if not len(sp):
                continue
            geo = float(np.exp(np.log(sp).mean()))
            worst = p.loc[p["speedup_vs_dense"].astype(float).idxmin()]
            touched = per_op[(per_op["device"] == dev) & (per_op["plan"] == plan) & (per_op["pattern"] != "dense")]
            kernel = bound = ""
            if len(touched):
                kernel = str(touched.groupby("kernel")["latency_s"].sum().idxmax())
                bound = str(touched.groupby("bound")["latency_s"].sum().idxmax())
            per_plan.append({"plan": plan, "geomean": geo, "min": float(sp.min()), "max": float(sp.max()),
                             "fallback_ops": int(p["fallback_ops"].sum()), "kernel": kernel, "bound": bound,
                             "why": short_why(str(worst.get("top_why", worst["why"])))})
        if not per_plan:
            continue
        best = max(per_plan, key=lambda r: r["geomean"])
        # channel pruning removes whole channels (the costliest in accuracy): name the best plan that keeps them too
        keeping = [r for r in per_plan if not removes_channels(r["plan"])]
        keep = max(keeping, key=lambda r: r["geomean"]) if keeping and removes_channels(best["plan"]) else None
        accuracy = [search_accuracy(sr) for sr in searches if sr.device == dev]
        text = verdict_text(dev, best, per_plan, keep)
        if float(best["geomean"]) > 1.0:
            text += " " + accuracy_text(str(best["plan"]), accuracy)
        if unfit:
            text += " Does not fit in device memory: " + "; ".join(
                f"{u['workload']} {u['plan']} ({u['note']})" for u in unfit) + "."
        out.append({"device": dev, "family": str(s["family"].iloc[0]), "best_plan": best["plan"],
                    "best_speedup": best["geomean"], "keep_channels_plan": keep["plan"] if keep else None,
                    "keep_channels_speedup": keep["geomean"] if keep else None, "plans": per_plan,
                    "accuracy_assessed": bool(accuracy), "accuracy": accuracy, "does_not_fit": unfit,
                    "text": text})
    return out


def search_accuracy(sr: Any) -> dict[str, Any]:
    """What a search on a device measured: its chosen plan's accuracy and speedup, and the best
    uniform plan's accuracy at the same budget."""
    c = sr.chosen
    return {"workload": sr.workload, "source": sr.source, "accuracy": c.get("accuracy"),
            "speedup": c.get("speedup_vs_dense"), "uniform_plan": c.get("uniform_plan"),
            "uniform_accuracy": c.get("uniform_accuracy"), "dense_accuracy": sr.extra.get("dense accuracy")}


def accuracy_text(plan: str, accuracy: Sequence[dict[str, Any]]) -> str:
    """The accuracy side of a recommendation: the searches' measured figures, or a plain statement
    that the ranking is by modeled latency alone."""
    if not accuracy:
        cost = (" Channel pruning removes whole channels and usually costs the most accuracy."
                if removes_channels(plan) else "")
        return (f"Accuracy is not assessed: {plan} is ranked by modeled latency alone.{cost} "
                "`sparsesim search WORKLOAD --device DEVICE` measures it.")
    parts = []
    for a in accuracy:
        line = f"a search on {a['workload']} chose a plan at accuracy {_num(a['accuracy'])}"
        if a.get("dense_accuracy") is not None:
            line += f" (dense {_num(a['dense_accuracy'])})"
        if a.get("speedup") is not None:
            line += f", {float(a['speedup']):.2f}x"
        if a.get("uniform_plan"):
            line += f"; uniform {a['uniform_plan']} reached {_num(a['uniform_accuracy'])} in the same budget"
        parts.append(line)
    return "Accuracy measured: " + "; ".join(parts) + "."


def _num(v: Any) -> str:
    try:
        return f"{float(v):.4f}"
    except (TypeError, ValueError):
        return "?"


def short_why(why: str, limit: int = 160) -> str:
    """A model's why cut at a clause boundary (pass a per-op why or the summary's `top_why`)."""
    why = (why or "").strip()
    if len(why) <= limit:
        return why
    cut = why[:limit]
    k = max(cut.rfind("; "), cut.rfind(", "))
    return (cut[:k] if k > limit // 2 else cut.rsplit(" ", 1)[0]) + " …"


def removes_channels(plan: str) -> bool:
    """Whether a plan prunes whole channels (a uniform channel pattern)."""
    from sparsesim.sparsity.patterns import parse_pattern

    try:
        return parse_pattern(plan).spec.shrinks_op
    except SparsesimError:  # a plan file, not a pattern spelling: its layers may mix patterns
        return False


def verdict_text(dev: str, best: dict[str, Any], per_plan: list[dict[str, Any]],
                 keep: dict[str, Any] | None = None) -> str:
    """One sentence per device, every number from the results."""
    parts = []
    for r in sorted(per_plan, key=lambda r: -r["geomean"]):
        rng = "" if math.isclose(r["min"], r["max"], rel_tol=0.02) else f"{r['min']:.2f}–{r['max']:.2f}x over the workloads; "
        how = ", ".join(x for x in (r["kernel"], f"{r['bound']}-bound" if r["bound"] else "") if x)
        if r["fallback_ops"]:
            how += f"; {r['fallback_ops']} ops fell back"
        if r["geomean"] >= 1.0:
            parts.append(f"{r['plan']} gives {r['geomean']:.2f}x ({rng}{how})")
        else:
            parts.append(f"{r['plan']} is {1 / r['geomean']:.2f}x slower ({rng}{how})")
    head = (f"use {best['plan']} ({best['geomean']:.2f}x)" if best["geomean"] > 1.0 else "no plan beats dense")
    if keep is not None and best["geomean"] > 1.0:
        head += (f"; keeping every channel, {keep['plan']} ({keep['geomean']:.2f}x)" if keep["geomean"] > 1.0
                 else "; no plan that keeps every channel beats dense")
    return f"{dev}: {head}. " + "; ".join(parts) + "."
