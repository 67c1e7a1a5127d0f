"""The report as one self-contained HTML page: images as base64 PNG data URIs, inline CSS, no
scripts, fonts or anything else fetched."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

import sparsesim.report.analysis as analysis
import sparsesim.report.build as build
import sparsesim.report.dynamic as dynamic
from sparsesim import __version__
from sparsesim.core.textfmt import fit_note
from sparsesim.report.figures import Figure
from sparsesim.report.fmt import esc, fmt_q, fmt_x, sig, slug
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

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9;line-height:1.45;font-size:14px}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff;box-shadow:0 0 12px rgba(0,0,0,.06)}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:34px 0 10px;padding-bottom:4px;border-bottom:2px solid #e3e6eb}
h3{font-size:16px;margin:22px 0 8px}p.meta{color:#5b6475;margin:0 0 14px;font-size:13px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:12.5px;width:auto}
th,td{border:1px solid #dde1e7;padding:4px 8px;text-align:left;vertical-align:top;max-width:460px;overflow-wrap:break-word}
td.nw{white-space:nowrap}
.wide{overflow-x:auto;max-width:100%}
th{background:#eef1f5;font-weight:600}tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.cell{text-align:center;white-space:nowrap;min-width:86px}td.cell b{font-size:14px}
td.cell small,td small{color:#4a5160;font-size:11px}
td.best{outline:2px solid #1b7f3b;outline-offset:-2px}
.verdict{background:#f1f8f3;border:1px solid #cfe6d6;border-left:5px solid #1b7f3b;padding:10px 16px;margin:14px 0 18px}
.verdict h2{border:0;margin:4px 0 6px;font-size:18px}
.verdict ul{margin:6px 0;padding-left:20px}.verdict li{margin:3px 0}
.note{color:#5b6475;font-size:12.5px}
img{max-width:100%;height:auto;border:1px solid #eceef2;margin:6px 0}
figure{margin:8px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:10px}
.grid figure{margin:0}figcaption{font-size:12px;color:#5b6475}
details{margin:8px 0 12px}summary{cursor:pointer;font-weight:600;color:#24406e}
nav ol{margin:4px 0 0;padding-left:22px;columns:2}code{background:#f0f2f5;padding:1px 4px;border-radius:3px}
.tag{display:inline-block;background:#eef1f5;border-radius:3px;padding:0 5px;margin:1px 2px;font-size:11px}
"""


def _img(fig: Figure) -> str:
    b64 = base64.b64encode(fig.data).decode("ascii")
    return (f'<figure><img alt="{esc(fig.caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{esc(fig.caption)}</figcaption></figure>")


def _table(df: pd.DataFrame, formats: Mapping[str, Callable[[Any], str]] | None = None, classes: str = "") -> str:
    formats = formats or {}
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, row):
            if c in formats:
                cells.append(f'<td class="num">{esc(formats[c](v))}</td>')
            elif isinstance(v, (float, np.floating)):
                cells.append(f'<td class="num">{esc("–" if not math.isfinite(v) else sig(float(v)))}</td>')
            else:
                cells.append(f"<td>{esc('' if v is None or (isinstance(v, float) and v != v) else v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="wide"><table class="{classes}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _speed_color(x: float) -> str:
    """A cell background: green when faster than dense, red when slower, white at 1x."""
    if not math.isfinite(x) or x <= 0:
        return "#ffffff"
    t = max(-1.0, min(1.0, math.log2(x) / 1.5))
    if t >= 0:
        r, g, b = 255 - int(100 * t), 255 - int(25 * t), 255 - int(100 * t)
    else:
        t = -t
        r, g, b = 255 - int(10 * t), 255 - int(110 * t), 255 - int(110 * t)
    return f"#{r:02x}{g:02x}{b:02x}"


def verdict_html(verdicts: list[dict[str, Any]], plans: Sequence[str]) -> str:
    sparse = [p for p in plans if p != "dense"]
    head = "<tr><th>device</th><th>family</th><th>use</th>" + "".join(
        f"<th>{esc(p)}</th>" for p in sparse) + "<th>why a plan is slower than dense (kernel, bound: the model's top reason)</th></tr>"
    rows = []
    for v in verdicts:
        by = {r["plan"]: r for r in v["plans"]}
        cells = []
        for p in sparse:
            r = by.get(p)
            if r is None:
                cells.append("<td class='cell'>–</td>")
                continue
            rng = "" if math.isclose(r["min"], r["max"], rel_tol=0.02) else f"<br><small>{r['min']:.2f}–{r['max']:.2f}x</small>"
            best = " best" if p == v["best_plan"] and v["best_speedup"] > 1 else ""
            cells.append(f"<td class='cell{best}' style='background:{_speed_color(r['geomean'])}'>"
                         f"<b>{r['geomean']:.2f}x</b>{rng}</td>")
        slow = [r for r in v["plans"] if r["geomean"] < 1.0]
        notes = "<br>".join(f"<b>{esc(r['plan'])}</b> ({esc(r['kernel'])}, {esc(r['bound'])}-bound): {esc(r['why'])}"
                            for r in slow) or "—"
        use = esc(v["best_plan"]) if v["best_speedup"] > 1 else "dense"
        if v["best_speedup"] > 1 and not v.get("accuracy_assessed", True):
            use += "<br><small>accuracy not assessed</small>"
        if v.get("keep_channels_plan") and v["best_speedup"] > 1:
            alt = v["keep_channels_plan"] if v["keep_channels_speedup"] > 1 else "dense"
            use += f"<br><small>keeping channels: {esc(alt)}</small>"
        rows.append(f"<tr><td class='nw'><b>{esc(v['device'])}</b></td><td>{esc(v['family'])}</td><td class='nw'><b>{use}</b></td>"
                    + "".join(cells) + f"<td><small>{notes}</small></td></tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def summary_html(sm: pd.DataFrame, devices: Sequence[str], plans: Sequence[str]) -> str:
    head = "<tr><th>device</th>" + "".join(f"<th>{esc(p)}</th>" for p in plans) + "</tr>"
    rows = []
    for dev in devices:
        cells = []
        for p in plans:
            r = sm[(sm["device"] == dev) & (sm["plan"] == p)]
            if not len(r):
                cells.append("<td class='cell'>–</td>")
                continue
            r = r.iloc[0]
            sp = float(r["speedup_vs_dense"])
            best = bool(r.get("best", False))
            mark = " ★" if best else ""
            fb = f"<br><small>{int(r['fallback_ops'])} ops fell back</small>" if int(r.get("fallback_ops", 0) or 0) else ""
            unfit = fit_note(r.to_dict())
            fb += f"<br><small class='unfit'><b>{esc(unfit)}</b></small>" if unfit else ""
            cells.append(
                f"<td class='cell{' best' if best else ''}' style='background:{_speed_color(sp)}' title='{esc(r['why'])}'>"
                f"<b>{sp:.2f}x{mark}</b><br><small>{esc(fmt_q(r['latency_s'], 'time'))} · "
                f"{esc(fmt_q(r['energy_j'], 'energy'))}<br>{esc(fmt_q(r['memory_bytes'], 'bytes'))} · "
                f"{esc(str(r['bound']))}</small>{fb}</td>")
        rows.append(f"<tr><td class='nw'><b>{esc(dev)}</b></td>{''.join(cells)}</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _dynamic_html(data: build.ReportData, wl: str) -> str:
    """The dynamic-sparsity section of one workload (`report.dynamic`), empty when it has none."""
    loads = dynamic.expert_load_table(data.per_op, wl)
    times = dynamic.expert_time_table(data.per_op, wl)
    act = dynamic.activation_table(data.summary, data.per_op, wl)
    if loads.empty and act.empty:
        return ""
    out = ["<h3>Dynamic sparsity</h3>"]
    if not loads.empty:
        out.append("<p class='note'>Expert load balance: rows per grouped expert GEMM; imbalance = busiest expert "
                   "over an even split, the size every expert's GEMM is padded to.</p>" + _table(loads, dynamic.LOAD_FORMATS))
    if not times.empty:
        out.append("<p class='note'>What the routing costs per device (dense plan).</p>" + _table(
            times, dynamic.TIME_FORMATS))
    if not act.empty:
        out.append("<p class='note'>Activation sparsity per device: skipped zeros buy time, multiplied ones do not."
                   "</p>" + _table(act, dynamic.ACT_FORMATS))
    return "".join(out)


def render_html(data: build.ReportData, figs: dict[str, dict[str, Figure]], verdicts: list[dict[str, Any]],
                tables: dict[str, pd.DataFrame]) -> str:
    devs, plans = data.device_names, data.plans
    parts = ["<h1>sparsesim: which sparsity pattern pays on which hardware</h1>",
             f"<p class='meta'>Generated {esc(data.created)} by sparsesim {esc(__version__)} · "
             f"workloads: {esc(', '.join(data.workloads))} · {len(devs)} devices · plans: {esc(', '.join(plans))}"
             + (f"<br>Command: <code>{esc(data.command)}</code>" if data.command else "") + "</p>"]
    parts.append("<section class='verdict'><h2>Verdict</h2>")
    parts.append("<p class='note'>Speedup over dense on the same device, geometric mean over the workloads "
                 "(range below). Green is faster than dense, red slower; the outlined cell is the pick.</p>")
    parts.append(verdict_html(verdicts, plans))
    parts.append("<ul>" + "".join(f"<li>{esc(v['text'])}</li>" for v in verdicts) + "</ul></section>")
    toc = ["<li><a href='#glance'>Speedup at a glance</a></li>"]
    toc += [f"<li><a href='#wl-{slug(w)}'>{esc(w)}</a></li>" for w in data.workloads]
    if data.searches:
        toc.append("<li><a href='#search'>Co-design search</a></li>")
    if data.validation is not None:
        toc.append("<li><a href='#fidelity'>Fidelity</a></li>")
    toc.append("<li><a href='#provenance'>Provenance and fallbacks</a></li>")
    parts.append(f"<nav><b>Contents</b><ol>{''.join(toc)}</ol></nav>")
    parts.append("<h2 id='glance'>Speedup at a glance</h2><div class='grid'>")
    parts += [_img(figs[w]["heatmap"]) for w in data.workloads]
    parts.append("</div>")
    layer_t = analysis.layer_table(data.per_op)
    slow = layer_t[layer_t["speedup"] < 1.0 / analysis.NO_SPEEDUP]
    for wl in data.workloads:
        f = figs[wl]
        sm = data.summary[data.summary["workload"] == wl]
        po = data.per_op[(data.per_op["workload"] == wl) & (data.per_op["plan"] == "dense")]
        n_ops = int(po.groupby("device").size().max()) if len(po) else 0
        parts.append(f"<h2 id='wl-{slug(wl)}'>{esc(wl)}</h2>")
        parts.append(f"<p class='meta'>{n_ops} ops, {sig(float(po.groupby('device')['flops'].sum().max() or 0) / 1e9)} GFLOP dense.</p>")
        parts.append("<h3>Summary: device × plan</h3><p class='note'>Each cell: speedup over dense on the same "
                     "device; latency · energy; weight memory · the bound that dominates. ★ marks the best plan per device.</p>")
        parts.append(summary_html(sm, devs, plans))
        parts.append("<h3>Where time and energy go</h3>" + _img(f["time"]) + _img(f["energy"]))
        parts.append("<h3>Roofline</h3>" + _img(f["roofline"]))
        w = slow[slow["workload"] == wl]
        parts.append(_dynamic_html(data, wl))
        parts.append("<h3>Why no speedup</h3><p class='note'>Layers whose sparse time is at least "
                     f"{analysis.NO_SPEEDUP:.0%} of their dense time, counted per device and plan, with the reasons that "
                     "cover most of their dense time.</p>")
        parts.append(_table(why_summary(w, devs, plans)))
        detail = w.sort_values("dense_latency_s", ascending=False).groupby(["device", "plan"], sort=False).head(WHY_ROWS)
        detail = detail.sort_values(["device", "plan", "dense_latency_s"], ascending=[True, True, False])
        cols = {"device": "device", "plan": "plan", "module": "layer", "kernel": "kernel", "bound": "bound",
                "dense_latency_s": "dense", "latency_s": "sparse", "speedup": "speedup", "reasons": "reasons", "why": "model's why"}
        parts.append(f"<details><summary>Per layer: the {WHY_ROWS} biggest such layers per device and plan "
                     f"({len(w)} in all; every layer in why_no_speedup.csv)</summary>")
        parts.append(_table(detail[list(cols)].rename(columns=cols),
                            {"dense": lambda v: fmt_q(v, "time"), "sparse": lambda v: fmt_q(v, "time"), "speedup": fmt_x}))
        parts.append("</details>")
        if "serving" in f:
            parts.append("<h3>Serving: latency against load</h3>" + _img(f["serving"]))
        if "training" in f and data.training is not None:
            tr = data.training[data.training["workload"] == wl]
            parts.append("<h3>Training: the whole run per method and device</h3>"
                         f"<p class='note'>{esc(training_line(tr))}</p>" + _img(f["training"])
                         + _table(training_table(tr), TRAINING_FORMATS))
    if data.searches:
        parts.append("<h2 id='search'>Co-design search</h2><p class='note'>Per-layer plans searched against "
                     "accuracy; the chosen plan against the best uniform plan within the same modeled latency.</p>")
        parts.append(_table(search_summary(data), SEARCH_FORMATS))
        parts.append("<div class='grid'>" + "".join(_img(x) for x in figs.get("_search", {}).values()) + "</div>")
        for sr in data.searches:
            parts.append(f"<details><summary>{esc(sr.workload)} on {esc(sr.device)}: the front and the chosen plan "
                         f"({esc(sr.source)})</summary>" + _table(front_table(sr), SEARCH_FORMATS)
                         + _table(pd.DataFrame({"weight": list(sr.patterns), "pattern": list(sr.patterns.values())}))
                         + "</details>")
    if data.validation is not None:
        v = data.validation
        parts.append("<h2 id='fidelity'>Fidelity: predicted against measured</h2>")
        parts.append(f"<p class='meta'>{esc(validation_line(v))}</p>")
        parts.append("<h3>Host CPU: error per pattern</h3>" + _table(v.errors, PCT_FORMATS))
        if len(v.crossover):
            parts.append("<h3>CSR-vs-dense crossover density</h3>" + _table(v.crossover))
        if len(v.gpu):
            parts.append("<h3>Published GPU figures through the GPU model</h3>"
                         f"<p class='note'>{esc(gpu_line(v))}</p>" + _table(v.gpu, PCT_FORMATS))
        parts.append(f"<details><summary>Every host case ({len(v.cases)})</summary>" + _table(v.cases, PCT_FORMATS)
                     + "</details>")
    parts.append("<h2 id='provenance'>Provenance and fallbacks</h2>")
    parts.append("<h3>Devices</h3>" + _table(device_table(data.devices)))
    prov = tables["provenance.csv"]
    fitted = prov[prov["fit_date"].notna()]
    parts.append("<h3>Fitted parameters</h3>" + (_table(fitted[["device", "field", "value", "si_unit", "fit_date", "fit_error", "source"]])
                                               if len(fitted) else "<p class='note'>No device in this report carries fitted parameters.</p>"))
    fb = tables["fallbacks.csv"]
    if len(fb):
        parts.append("<h3>Fallbacks taken</h3><p class='note'>Ops whose pattern (or dtype) the device could not run "
                     "as asked, summed over the workloads; what ran instead and why below.</p>")
        parts.append(_table(analysis.fallback_matrix(data.per_op, devs, plans)))
        parts.append(f"<details><summary>Every fallback: {len(fb)} (workload, device, plan, kernel) groups</summary>"
                     + _table(fb, {"latency_s": lambda v: fmt_q(v, "time")}) + "</details>")
    else:
        parts.append("<h3>Fallbacks taken</h3><p class='note'>No op fell back.</p>")
    parts.append("<details><summary>Every device number and its source</summary>"
                 + _table(prov[["device", "field", "value", "si_unit", "unit_in_file", "source"]]) + "</details>")
    parts.append(f"<p class='note'>Tables as CSV next to this page: {esc(', '.join(tables))}. "
                 f"Results computed in {sum(data.timings.values()):.1f} s.</p>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>sparsesim report: {esc(', '.join(data.workloads))}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")
