"""Collect everything a hardware comparison report shows, as plain frames and records.

Stages (each optional past the first): compare workloads x devices x plans (per-op and summary
frames), serving curves from the simulator, search fronts read from a search's output
directory, and a validation table (a `validate --json` file, or a quick validation run).
Nothing here draws or writes; `render` turns a `ReportData` into files.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from sparsesim.devices import Device
from sparsesim.errors import SparsesimError
from sparsesim.estimate import DEFAULT_PLANS as STANDARD_PLANS

__all__ = ["STANDARD_PLANS", "DEFAULT_WORKLOADS", "ReportData", "collect", "resolve_devices"]

# The main job: the three model families people ask about, Llama in both inference phases.
DEFAULT_WORKLOADS = (
    "resnet50",
    "bert-base",
    "llama2-7b:phase=prefill,batch=1,seq=512",
    "llama2-7b:phase=decode,batch=1,kv=2048",
)
# Offered load as a fraction of the dense plan's single-stream capacity (1 / latency): a curve
# from light load to just below saturation, where queueing makes p99 climb.
SERVING_LOADS = (0.2, 0.5, 0.7, 0.85, 0.95)
SERVING_REQUESTS = 400
# A layer whose sparse time is at least this fraction of its dense time gained nothing worth
# having and goes into the "why no speedup" table.
NO_SPEEDUP = 1.0 / 1.1


class ReportError(SparsesimError):
    """A report input (search directory, validation file) is missing or malformed."""


@dataclass
class SearchResult:
    """One search's outcome as the report shows it."""

    source: str
    workload: str
    device: str
    trials: pd.DataFrame  # one row per trial: accuracy, latency_s, speedup_vs_dense, ..., on_front
    chosen: dict[str, Any]
    uniform: pd.DataFrame  # uniform baselines (and dense) with the same columns
    extra: dict[str, Any] = field(default_factory=dict)
    patterns: dict[str, str] = field(default_factory=dict)  # the chosen plan: weight -> pattern


@dataclass
class ValidationResult:
    """A `sparsesim validate` document as tables: error per pattern, crossovers, every case,
    and the published GPU figures through the GPU model."""

    source: str
    meta: dict[str, Any]
    errors: pd.DataFrame
    crossover: pd.DataFrame
    cases: pd.DataFrame
    gpu: pd.DataFrame
    gpu_summary: dict[str, Any]


@dataclass
class ReportData:
    workloads: list[str]
    devices: list[Device]
    plans: list[str]
    per_op: pd.DataFrame
    summary: pd.DataFrame
    serving: pd.DataFrame | None = None
    searches: list[SearchResult] = field(default_factory=list)
    validation: ValidationResult | None = None
    command: str = ""
    created: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    dtypes: dict[str, set[str]] = field(default_factory=dict)  # matmul dtypes per workload (roofline roofs)
    op_bytes: dict[str, dict[int, float]] = field(default_factory=dict)  # traced operand bytes per op index

    @property
    def device_names(self) -> list[str]:
        return [d.name for d in self.devices]


def resolve_devices(names: Sequence[str] | None) -> list[Device]:
    """Device names or files; every built-in device when none are given."""
    from sparsesim.estimate import resolve_devices as resolve

    devs = resolve(list(names) if names else None)
    if not devs:
        raise ReportError("no device files found: accelerators/ is empty and no --devices were given")
    return devs


def collect(workloads: Sequence[Any], devices: Sequence[Device], plans: Sequence[str], *,
            serving: bool = False, search_dirs: Sequence[str | Path] = (),
            validation: str | Path | None = None, run_validation: bool = False,
            progress: Callable[[int], Any] | None = None, stage: Callable[[str], Any] | None = None,
            command: str = "") -> ReportData:
    """Run the comparison (and the optional stages) and return everything the report shows."""
    from sparsesim.estimate import resolve_workload

    # read the given result files first: a bad path fails before minutes of work, not after
    searches = [r for d in search_dirs for r in read_search_dir(Path(d))]
    given_validation = read_validation(Path(validation)) if validation is not None else None
    timings: dict[str, float] = {}
    dtypes: dict[str, set[str]] = {}
    op_bytes: dict[str, dict[int, float]] = {}
    per_op_frames, summary_frames = [], []
    t0 = time.perf_counter()
    for spec in workloads:
        if stage is not None:
            stage(f"compare {workload_label(spec)}")
        wl = resolve_workload(spec)
        per_op, summary = compare_frames(wl, devices, plans, progress=progress)
        label = workload_label(spec)
        dtypes[label] = {op.dtype for op in wl.ops if op.is_matmul}
        op_bytes[label] = {op.index: float(op.bytes_moved) for op in wl.ops}
        per_op_frames.append(per_op.assign(workload=label))
        summary_frames.append(summary.assign(workload=label))
        timings[f"compare {label}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
    per_op = pd.concat(per_op_frames, ignore_index=True)
    summary = mark_best(pd.concat(summary_frames, ignore_index=True))
    data = ReportData([workload_label(w) for w in workloads], list(devices), list(plans), per_op, summary,
                      command=command, created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      timings=timings, dtypes=dtypes, op_bytes=op_bytes)
    if serving:
        if stage is not None:
            stage("serving curves")
        t0 = time.perf_counter()
        data.serving = serving_frame(per_op, summary, progress=progress)
        timings["serving"] = time.perf_counter() - t0
    data.searches = searches
    if given_validation is not None:
        data.validation = given_validation
    elif run_validation:
        if stage is not None:
            stage("validate (quick)")
        t0 = time.perf_counter()
        data.validation = run_quick_validation()
        timings["validation"] = time.perf_counter() - t0
    return data


def workload_label(spec: Any) -> str:
    """How a workload is named in the report: its spec string as given, or a Workload's name."""
    return spec.strip() if isinstance(spec, str) else str(getattr(spec, "name", spec))


def compare_frames(workload: Any, devices: Sequence[Device], plans: Sequence[str],
                   progress: Callable[[int], Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-op and per-(device, plan) frames for one workload, from one pass of the estimate module."""
    from sparsesim.estimate import compare_tables

    tables = compare_tables(workload, list(devices), list(plans))
    if progress is not None:
        progress(len(devices) * len(plans))
    return tables.per_op, tables.summary


def mark_best(summary: pd.DataFrame) -> pd.DataFrame:
    """Add `best`: the plan with the highest speedup over dense per (workload, device)."""
    s = summary.copy()
    s["best"] = False
    for _, g in s.groupby(["workload", "device"], sort=False):
        ok = g["speedup_vs_dense"].astype(float)
        if ok.notna().any():
            s.loc[ok.idxmax(), "best"] = True
    return s


# ----------------------------------------------------------------------------- per layer

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
    t["reasons"] = [reasons(r) for r in t.itertuples(index=False)]
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


def reasons(r: Any) -> str:
    """Name the causes a layer gained little, from the Cost columns (the model's own `why` stays beside)."""
    out = []
    why = str(getattr(r, "why", "") or "").lower()
    if bool(getattr(r, "fallback", False)):
        out.append(f"fallback: ran as {r.kernel}")
    elif getattr(r, "pattern", "") not in ("", "dense") and str(getattr(r, "kernel", "")).lower() == "dense":
        out.append("pattern not exploited")
    bound = getattr(r, "bound", "")
    if bound == "memory":
        out.append("memory bound")
    elif bound == "overhead":
        out.append("overhead bound")
    meta, mem = float(getattr(r, "metadata_bytes", 0) or 0), float(getattr(r, "memory_bytes", 0) or 0)
    if mem > 0 and meta / mem >= 0.1:
        out.append(f"metadata overhead ({meta / mem:.0%} of weight bytes)")
    for word, tag in (("pad", "padding"), ("imbalance", "load imbalance"), ("minimum", "minimum shape"),
                      ("align", "alignment"), ("unsupported", "unsupported pattern"), ("wave", "wave quantisation")):
        if word in why and tag not in out:
            out.append(tag)
    speed = getattr(r, "speedup", float("nan"))
    if not out and speed == speed and speed < 1:
        out.append("sparse kernel slower than dense")
    return "; ".join(out)


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
    import dataclasses

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


# ----------------------------------------------------------------------------- verdicts

def verdicts(summary: pd.DataFrame, per_op: pd.DataFrame, devices: Sequence[str],
             plans: Sequence[str]) -> list[dict[str, Any]]:
    """Per device: the plan with the best geometric-mean speedup over the workloads, and for every
    plan its speedup range, the kernel that ran most of the sparsified layers, their dominant bound
    and the cost model's top reason."""
    out = []
    for dev in devices:
        s = summary[(summary["device"] == dev) & (summary["plan"] != "dense")]
        if not len(s):
            continue
        per_plan = []
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
                             "why": short_why(str(worst["why"]))})
        if not per_plan:
            continue
        best = max(per_plan, key=lambda r: r["geomean"])
        out.append({"device": dev, "family": str(s["family"].iloc[0]), "best_plan": best["plan"],
                    "best_speedup": best["geomean"], "plans": per_plan, "text": verdict_text(dev, best, per_plan)})
    return out


_SHARE = re.compile(r"\s*\(\d+% of the latency of \d+ op\(s\)\)\s*$")


def short_why(why: str, limit: int = 160) -> str:
    """The model's top reason without its latency-share suffix, cut at a clause boundary."""
    why = _SHARE.sub("", why or "").strip()
    if len(why) <= limit:
        return why
    cut = why[:limit]
    k = max(cut.rfind("; "), cut.rfind(", "))
    return (cut[:k] if k > limit // 2 else cut.rsplit(" ", 1)[0]) + " …"


def verdict_text(dev: str, best: dict[str, Any], per_plan: list[dict[str, Any]]) -> str:
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
    return f"{dev}: {head}. " + "; ".join(parts) + "."


def summary_records(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """The summary numbers as plain JSON records (what `--json` prints and the tables show)."""
    cols = ["workload", "device", "family", "plan", "latency_s", "speedup_vs_dense", "energy_j",
            "energy_vs_dense", "memory_bytes", "fallback_ops", "bound", "best", "why"]
    recs = []
    for r in summary[[c for c in cols if c in summary.columns]].to_dict("records"):
        recs.append({k: _plain(v) for k, v in r.items()})
    return recs


def frame_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in r.items()} for r in df.to_dict("records")]


def _plain(v: Any) -> Any:
    """Plain JSON: numpy scalars unwrapped, NaN/inf as None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# ----------------------------------------------------------------------------- serving

def serving_frame(per_op: pd.DataFrame, summary: pd.DataFrame, progress: Callable[[int], Any] | None = None,
                  loads: Iterable[float] = SERVING_LOADS, requests: int = SERVING_REQUESTS) -> pd.DataFrame:
    """Latency against offered load per (workload, device), for dense and the device's best plan.

    One simulated inference per plan gives the service time; Poisson arrivals at each rate then
    queue in front of it. Rates are fractions of each plan's saturation rate, so both curves run
    from light load to just below the point where the slower plan's queue grows without bound.
    """
    from sparsesim.simulate import serve, simulate_frame

    rows = []
    for (wl, dev), s in summary.groupby(["workload", "device"], sort=False):
        plans = ["dense"]
        best = s[s["best"].astype(bool)]
        if len(best) and best["plan"].iloc[0] != "dense":
            plans.append(str(best["plan"].iloc[0]))
        service = {}
        for plan in plans:
            ops = per_op[(per_op["workload"] == wl) & (per_op["device"] == dev) & (per_op["plan"] == plan)]
            if len(ops):
                service[plan] = simulate_frame(ops, stream=1).latency_s
        if not service or min(service.values()) <= 0:
            continue
        rates = sorted({f / t for f in loads for t in service.values()})
        for plan, t in service.items():
            for qps in rates:
                if qps * t >= max(loads):
                    continue  # at saturation the queue (and p99) grows with the number of requests
                st = serve(t, qps, requests, seed=0)
                rows.append({"workload": wl, "device": dev, "plan": plan, "qps": qps, "load": qps * t,
                             "service_s": t, "p50_s": st.p50_s, "p99_s": st.p99_s,
                             "throughput_qps": st.throughput_rps, "saturation_qps": st.saturation_rps})
            if progress is not None:
                progress(1)
    return pd.DataFrame(rows, columns=["workload", "device", "plan", "qps", "load", "service_s", "p50_s", "p99_s",
                                       "throughput_qps", "saturation_qps"])


# ----------------------------------------------------------------------------- search

def read_search_dir(path: Path) -> list[SearchResult]:
    """Read a search's output directory (the JSON the search writes)."""
    if not path.is_dir():
        raise ReportError(f"--search {path}: not a directory")
    files = sorted(path.glob("*.json"))
    if not files:
        raise ReportError(f"--search {path}: no .json result in it")
    out = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ReportError(f"{f}: not a readable JSON document ({e})") from None
        if isinstance(doc, dict) and "front" in doc:
            out.append(search_result(doc, str(f)))
    if not out:
        raise ReportError(f"--search {path}: no JSON file in it holds a search result (a 'front')")
    return out


def search_result(doc: dict[str, Any], source: str) -> SearchResult:
    """A `sparsesim search` result document (search.json): the front, uniform baselines, the chosen plan."""
    front = pd.DataFrame(doc.get("front") or [])
    trials = pd.DataFrame(doc.get("trials") or [])
    if len(trials):
        trials = pd.concat([trials.assign(on_front=False), front.assign(on_front=True)], ignore_index=True)
    else:
        trials = front.assign(on_front=True)
    uniform = pd.DataFrame(doc.get("uniform") or [])
    if isinstance(doc.get("dense"), dict):
        uniform = pd.concat([pd.DataFrame([{**doc["dense"], "plan": "dense"}]), uniform], ignore_index=True)
    chosen = {k: doc[k] for k in ("accuracy", "latency_s", "speedup_vs_dense", "energy_j", "memory_bytes",
                                  "chosen_source", "uniform_plan", "uniform_accuracy", "uniform_latency_s") if k in doc}
    patterns = {}
    if isinstance(doc.get("chosen"), dict) and isinstance(doc["chosen"].get("patterns"), dict):
        patterns = dict(doc["chosen"]["patterns"])
    extra = {k: v for k, v in doc.items() if k in ("algorithm", "signal", "seed", "evaluated", "wall_s")}
    if isinstance(doc.get("target"), dict):
        extra.update({f"target {k}": v for k, v in doc["target"].items() if v is not None})
    if isinstance(doc.get("dense"), dict) and "accuracy" in doc["dense"]:
        extra["dense accuracy"] = doc["dense"]["accuracy"]
    return SearchResult(source, str(doc.get("workload", "")), str(doc.get("device", "")), trials, chosen, uniform,
                        extra, patterns)


# ----------------------------------------------------------------------------- validation

def read_validation(path: Path) -> ValidationResult:
    """A `sparsesim validate --json` document."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"--validation {path}: not a readable JSON document ({e})") from None
    return validation_result(doc, str(path))


def validation_result(doc: dict[str, Any], source: str) -> ValidationResult:
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or not isinstance(doc.get("summary"), dict):
        raise ReportError(f"{source}: not a `sparsesim validate --json` document (no 'rows' and 'summary')")
    meta = {k: v for k, v in doc.items() if isinstance(v, (int, float, str, bool)) or v is None}
    errors = []
    for pattern, e in doc["summary"].items():
        if isinstance(e, dict):
            lat = e.get("latency") if isinstance(e.get("latency"), dict) else {}
            errors.append({"pattern": pattern, "metric": e.get("metric"), "cases": e.get("cases"),
                           "median_abs_error": e.get("median_abs_error"), "p90_abs_error": e.get("p90_abs_error"),
                           "target": e.get("target"), "met": e.get("met"),
                           "latency_median_abs_error": lat.get("median_abs_error")})
    cross = doc.get("crossover") if isinstance(doc.get("crossover"), dict) else {}
    gpu = doc.get("gpu_published") if isinstance(doc.get("gpu_published"), dict) else {}
    return ValidationResult(
        source, meta, pd.DataFrame(errors), pd.DataFrame(cross.get("cases") or []), pd.DataFrame(doc["rows"]),
        pd.DataFrame(gpu.get("rows") or []),
        {k: v for k, v in gpu.items() if k != "rows" and (isinstance(v, (int, float, str, bool)) or v is None)})


def run_quick_validation() -> ValidationResult:
    """Run the quick validation grid on this host (as `sparsesim validate --quick`) and read it."""
    from sparsesim.validate import validate

    return validation_result(validate(quick=True), "sparsesim validate --quick (run for this report)")
