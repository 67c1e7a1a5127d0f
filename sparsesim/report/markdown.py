"""The report as Markdown: the same content as the HTML page, images as files under images/."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

import sparsesim.report.analysis as analysis
import sparsesim.report.build as build
import sparsesim.report.dynamic as dynamic
from sparsesim import __version__
from sparsesim.core.textfmt import fit_note
from sparsesim.report.figures import Figure
from sparsesim.report.fmt import fmt_q, fmt_x, sig
from sparsesim.report.tables import (
    PCT_FORMATS,
    SEARCH_FORMATS,
    TRAINING_FORMATS,
    WHY_ROWS,
    device_table,
    front_table,
    gpu_line,
    search_summary,
    training_line,
    training_table,
    validation_line,
    why_summary,
)

MD_TITLE = "# sparsesim: which sparsity pattern pays on which hardware"


def md_escape(text: Any) -> str:
    """Text from names the user chose (workloads, devices, layers) with HTML made inert: Markdown
    renderers pass raw HTML such as <script> through to the page."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def md_code(text: str) -> str:
    """`text` as an inline code span whose fence is longer than any backtick run inside it."""
    run = max((len(r) for r in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    return f"{fence} {text} {fence}" if run else f"`{text}`"


def _md_table(df: pd.DataFrame, formats: Mapping[str, Callable[[Any], str]] | None = None) -> str:
    formats = formats or {}

    def cell(c: str, v: Any) -> str:
        if c in formats:
            s = formats[c](v)
        elif isinstance(v, (float, np.floating)):
            s = "–" if not math.isfinite(v) else sig(float(v))
        else:
            s = "" if v is None else str(v)
        return md_escape(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(md_escape(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(c, v) for c, v in zip(df.columns, row)) + " |")
    return "\n".join(lines)


MD_SUMMARY_FORMATS = {
    "latency": lambda v: fmt_q(v, "time"), "speedup vs dense": fmt_x, "energy": lambda v: fmt_q(v, "energy"),
    "energy vs dense": fmt_x, "memory": lambda v: fmt_q(v, "bytes"), "best": lambda v: "★" if v else "",
}


def md_summary(sm: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "device": sm["device"], "plan": sm["plan"], "latency": sm["latency_s"],
        "speedup vs dense": sm["speedup_vs_dense"], "energy": sm["energy_j"], "energy vs dense": sm["energy_vs_dense"],
        "memory": sm["memory_bytes"], "bound": sm["bound"], "fallback ops": sm["fallback_ops"], "best": sm["best"],
        "device memory": [fit_note(r) or ("fits" if r.get("fits") else "capacity not given")
                          for r in sm.to_dict("records")],
    })


def _dynamic_md(data: build.ReportData, wl: str) -> list[str]:
    """The dynamic-sparsity section of one workload (`report.dynamic`), empty when it has none."""
    loads = dynamic.expert_load_table(data.per_op, wl)
    times = dynamic.expert_time_table(data.per_op, wl)
    act = dynamic.activation_table(data.summary, data.per_op, wl)
    if loads.empty and act.empty:
        return []
    out = ["### Dynamic sparsity", ""]
    if not loads.empty:
        out += ["Expert load balance (rows per grouped expert GEMM; imbalance = busiest expert over an even split, "
                "the size every expert's GEMM is padded to):", "", _md_table(loads, dynamic.LOAD_FORMATS), ""]
    if not times.empty:
        out += ["What the routing costs per device (dense plan):", "",
                _md_table(times, dynamic.TIME_FORMATS), ""]
    if not act.empty:
        out += ["Activation sparsity per device:", "", _md_table(act, dynamic.ACT_FORMATS), ""]
    return out


def render_markdown(data: build.ReportData, figs: dict[str, dict[str, Figure]], verdicts: list[dict[str, Any]],
                    tables: dict[str, pd.DataFrame]) -> str:
    devs, plans = data.device_names, data.plans
    e = md_escape
    out = [MD_TITLE, "",
           f"Generated {data.created} by sparsesim {__version__}. Workloads: {e(', '.join(data.workloads))}; "
           f"devices: {e(', '.join(devs))}; plans: {e(', '.join(plans))}."]
    if data.command:
        out += ["", f"Command: {md_code(data.command)}"]
    out += ["", "## Verdict", ""]
    out += [f"- {e(v['text'])}" for v in verdicts]
    out += ["", "## Speedup at a glance", ""]
    out += [f"![{e(figs[w]['heatmap'].caption)}](images/{figs[w]['heatmap'].name})" for w in data.workloads]
    layer_t = analysis.layer_table(data.per_op)
    slow = layer_t[layer_t["speedup"] < 1.0 / analysis.NO_SPEEDUP]
    for wl in data.workloads:
        f = figs[wl]
        sm = data.summary[data.summary["workload"] == wl]
        out += ["", f"## {e(wl)}", "", f"### Summary: {e(wl)}", "", _md_table(md_summary(sm), MD_SUMMARY_FORMATS), ""]
        out += [f"![{e(f['time'].caption)}](images/{f['time'].name})", "",
                f"![{e(f['energy'].caption)}](images/{f['energy'].name})", "",
                f"![{e(f['roofline'].caption)}](images/{f['roofline'].name})", ""]
        w = slow[slow["workload"] == wl]
        out += ["### Why no speedup", "", _md_table(why_summary(w, devs, plans)), ""]
        detail = w.sort_values("dense_latency_s", ascending=False).groupby(["device", "plan"], sort=False).head(WHY_ROWS)
        detail = detail.sort_values(["device", "plan", "dense_latency_s"], ascending=[True, True, False])
        cols = {"device": "device", "plan": "plan", "module": "layer", "kernel": "kernel", "bound": "bound",
                "dense_latency_s": "dense", "latency_s": "sparse", "speedup": "speedup", "reasons": "reasons"}
        out += [f"The {WHY_ROWS} biggest such layers per device and plan (all of them in `why_no_speedup.csv`):", "",
                _md_table(detail[list(cols)].rename(columns=cols),
                          {"dense": lambda v: fmt_q(v, "time"), "sparse": lambda v: fmt_q(v, "time"), "speedup": fmt_x}), ""]
        out += _dynamic_md(data, wl)
        if "serving" in f:
            out += [f"![{e(f['serving'].caption)}](images/{f['serving'].name})", ""]
        if "training" in f and data.training is not None:
            tr = data.training[data.training["workload"] == wl]
            out += ["### Training: the whole run per method and device", "", e(training_line(tr)), "",
                    f"![{e(f['training'].caption)}](images/{f['training'].name})", "",
                    _md_table(training_table(tr), TRAINING_FORMATS), ""]
    if data.searches:
        out += ["## Co-design search", "", _md_table(search_summary(data), SEARCH_FORMATS), ""]
        out += [f"![{e(x.caption)}](images/{x.name})" for x in figs.get("_search", {}).values()]
        for sr in data.searches:
            out += ["", f"### {e(sr.workload)} on {e(sr.device)}: the front", "", _md_table(front_table(sr), SEARCH_FORMATS), "",
                    "Chosen plan:", "",
                    _md_table(pd.DataFrame({"weight": list(sr.patterns), "pattern": list(sr.patterns.values())})), ""]
    if data.validation is not None:
        v = data.validation
        out += ["", "## Fidelity: predicted against measured", "", e(validation_line(v)), "",
                "### Host CPU: error per pattern", "", _md_table(v.errors, PCT_FORMATS), ""]
        if len(v.crossover):
            out += ["### CSR-vs-dense crossover density", "", _md_table(v.crossover), ""]
        if len(v.gpu):
            out += ["### Published GPU figures through the GPU model", "", e(gpu_line(v)), "", _md_table(v.gpu, PCT_FORMATS), ""]
        out += ["Every host case is in `validation.csv`.", ""]
    prov = tables["provenance.csv"]
    fitted = prov[prov["fit_date"].notna()]
    fb = tables["fallbacks.csv"]
    out += ["", "## Provenance and fallbacks", "", "### Devices", "", _md_table(device_table(data.devices)), "",
            "### Fitted parameters", "",
            _md_table(fitted[["device", "field", "value", "si_unit", "fit_date", "fit_error", "source"]]) if len(fitted)
            else "No device in this report carries fitted parameters.", "", "### Fallbacks taken", "",
            _md_table(fb, {"latency_s": lambda v: fmt_q(v, "time")}) if len(fb) else "No op fell back.", "",
            "Every device number with its source is in `provenance.csv`; every op of every run in `layers.csv.gz` (gzip-compressed CSV).", ""]
    return "\n".join(out)
