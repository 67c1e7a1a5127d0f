"""Write a report: a self-contained HTML page, the same content as Markdown, the tables as CSV.

The HTML embeds every image as a base64 PNG data URI and styles itself inline: it loads nothing
from anywhere (no scripts, fonts or stylesheets), so it opens offline and from an e-mail. The
Markdown page references the same images as files next to it.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from sparsesim import __version__
from sparsesim.report import build, plots
from sparsesim.report.peaks import device_roofs

# Rows of the per-layer "why no speedup" table shown per (device, plan) on the page; the CSV has all.
WHY_ROWS = 3

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


# ----------------------------------------------------------------------------- number formats

_UNITS = {
    "time": ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")),
    "energy": ((1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ")),
    "bytes": ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB"), (1.0, "B")),
}
UNIT_FACTORS = {u: f for units in _UNITS.values() for f, u in units}


def fmt_q(value: Any, dim: str) -> str:
    """A quantity with an SI prefix and 4 significant digits (`1.234 ms`)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    v = float(value)
    for factor, unit in _UNITS[dim]:
        if abs(v) >= factor or factor == _UNITS[dim][-1][0]:
            return f"{_sig(v / factor)} {unit}"
    return f"{_sig(v)}"


def fmt_x(value: Any) -> str:
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{_sig(float(value))}x"


def _sig(v: float, digits: int = 4) -> str:
    if v == 0:
        return "0"
    return f"{v:.{max(0, digits - 1 - int(math.floor(math.log10(abs(v)))))}f}"


def parse_q(text: str) -> float:
    """Inverse of fmt_q / fmt_x (used by tests and by anyone reading the Markdown back)."""
    text = text.strip().replace("**", "").replace("★", "").strip()
    if text.endswith("x"):
        return float(text[:-1])
    num, _, unit = text.partition(" ")
    return float(num) * UNIT_FACTORS.get(unit, 1.0)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


# ----------------------------------------------------------------------------- figures

@dataclass
class Figure:
    name: str  # file name under images/
    caption: str
    data: bytes


@dataclass
class Section:
    """One workload's content in both renderings."""

    workload: str
    figures: dict[str, Figure] = field(default_factory=dict)


def make_figures(data: build.ReportData, progress: Callable[[int], Any] | None = None) -> dict[str, dict[str, Figure]]:
    """All figures, keyed by workload (and "_search" for fronts)."""
    figs: dict[str, dict[str, Figure]] = {}
    devs, plans = data.device_names, data.plans
    for wl in data.workloads:
        roofs = {d.name: device_roofs(d, data.dtypes.get(wl) or None) for d in data.devices}
        s = slug(wl)
        po = data.per_op[data.per_op["workload"] == wl]
        sm = data.summary[data.summary["workload"] == wl]
        f = {
            "heatmap": Figure(f"{s}-speedup.png", f"{wl}: speedup over dense on the same device",
                              plots.speedup_heatmap(sm, devs, plans, title=wl)),
            "time": Figure(f"{s}-time-by-layer.png", f"{wl}: where the time goes (top layers, relative to dense)",
                           plots.stacked_layers(po, "latency_s", "time", devs, plans)),
            "energy": Figure(f"{s}-energy-by-layer.png", f"{wl}: where the energy goes (top layers, relative to dense)",
                             plots.stacked_layers(po, "energy_j", "energy", devs, plans)),
            "roofline": Figure(f"{s}-roofline.png", f"{wl}: every op on each device's roofline: dense ●, sparse ▲; "
                               "hollow = no DRAM traffic (cache-resident), placed by its operand bytes",
                               plots.rooflines(po.assign(op_bytes=po["op_index"].map(data.op_bytes.get(wl, {}))),
                                               roofs, devs, plans)),
        }
        if data.serving is not None and len(data.serving):
            sv = data.serving[data.serving["workload"] == wl]
            if len(sv):
                f["serving"] = Figure(f"{s}-serving.png", f"{wl}: latency against offered load (dense and best plan)",
                                      plots.serving_curves(sv, [d for d in devs if d in set(sv["device"])],
                                                           [p for p in plans if p in set(sv["plan"])]))
        figs[wl] = f
        if progress is not None:
            progress(1)
    search_figs = {}
    for i, sr in enumerate(data.searches):
        t = sr.trials
        acc = "accuracy" if "accuracy" in t else None
        for cost, label in (("latency_s", "modeled latency (s)"), ("energy_j", "modeled energy (J)"),
                            ("memory_bytes", "weight memory (bytes)")):
            if acc and cost in t and t[cost].notna().any():
                name = f"search-{i}-{cost}"
                search_figs[name] = Figure(
                    f"{name}.png", f"search {sr.workload} on {sr.device}: accuracy vs {label}",
                    plots.pareto_front(t, cost, acc, label, "accuracy", f"{sr.workload} on {sr.device}",
                                       sr.chosen, sr.uniform if cost in sr.uniform else None))
    if search_figs:
        figs["_search"] = search_figs
    return figs


# ----------------------------------------------------------------------------- tables

def csv_tables(data: build.ReportData) -> dict[str, pd.DataFrame]:
    tables = {
        "summary.csv": data.summary,
        "layers.csv": data.per_op,
        "why_no_speedup.csv": build.why_no_speedup(data.per_op),
        "fallbacks.csv": build.fallbacks(data.per_op),
        "provenance.csv": build.provenance(data.devices),
    }
    if data.serving is not None:
        tables["serving.csv"] = data.serving
    if data.validation is not None:
        tables["validation.csv"] = data.validation.cases
        if len(data.validation.gpu):
            tables["validation_gpu.csv"] = data.validation.gpu
    for i, sr in enumerate(data.searches):
        tables[f"search-{i}.csv"] = sr.trials
    return tables


def write_report(data: build.ReportData, out: Path, progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Write index.html, report.md, images/ and *.csv under `out`; return what was written."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    figs = make_figures(data, progress)
    verdicts = build.verdicts(data.summary, data.per_op, data.device_names, data.plans)
    tables = csv_tables(data)
    written = []
    for name, df in tables.items():
        df.to_csv(out / name, index=False)
        written.append(name)
    for group in figs.values():
        for fig in group.values():
            (out / "images" / fig.name).write_bytes(fig.data)
            written.append(f"images/{fig.name}")
    (out / "index.html").write_text(render_html(data, figs, verdicts, tables), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(data, figs, verdicts, tables), encoding="utf-8")
    written += ["index.html", "report.md"]
    return {"out": str(out), "files": sorted(written), "verdicts": verdicts}


# ----------------------------------------------------------------------------- HTML

def _img(fig: Figure) -> str:
    b64 = base64.b64encode(fig.data).decode("ascii")
    return (f'<figure><img alt="{esc(fig.caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{esc(fig.caption)}</figcaption></figure>")


def _table(df: pd.DataFrame, formats: dict[str, Callable[[Any], str]] | None = None, classes: str = "") -> str:
    formats = formats or {}
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, row):
            if c in formats:
                cells.append(f'<td class="num">{esc(formats[c](v))}</td>')
            elif isinstance(v, (float, np.floating)):
                cells.append(f'<td class="num">{esc("–" if not math.isfinite(v) else _sig(float(v)))}</td>')
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
            cells.append(
                f"<td class='cell{' best' if best else ''}' style='background:{_speed_color(sp)}' title='{esc(r['why'])}'>"
                f"<b>{sp:.2f}x{mark}</b><br><small>{esc(fmt_q(r['latency_s'], 'time'))} · "
                f"{esc(fmt_q(r['energy_j'], 'energy'))}<br>{esc(fmt_q(r['memory_bytes'], 'bytes'))} · "
                f"{esc(str(r['bound']))}</small>{fb}</td>")
        rows.append(f"<tr><td class='nw'><b>{esc(dev)}</b></td>{''.join(cells)}</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


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
            for rs, w in zip(g["reasons"], g["dense_latency_s"].fillna(0.0)):
                for tag in (rs.split("; ") if rs else ["(no reason given)"]):
                    tag = re.sub(r"\s*\(.*\)$", "", tag)
                    weight[tag] = weight.get(tag, 0.0) + float(w)
            top = sorted(weight, key=lambda k: -weight[k])[:2]
            row[p] = f"{len(g)} layer{'s' if len(g) != 1 else ''}: " + ", ".join(top)
        rows.append(row)
    return pd.DataFrame(rows)


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
    layer_t = build.layer_table(data.per_op)
    slow = layer_t[layer_t["speedup"] < 1.0 / build.NO_SPEEDUP]
    for wl in data.workloads:
        f = figs[wl]
        sm = data.summary[data.summary["workload"] == wl]
        po = data.per_op[(data.per_op["workload"] == wl) & (data.per_op["plan"] == "dense")]
        n_ops = int(po.groupby("device").size().max()) if len(po) else 0
        parts.append(f"<h2 id='wl-{slug(wl)}'>{esc(wl)}</h2>")
        parts.append(f"<p class='meta'>{n_ops} ops, {_sig(float(po.groupby('device')['flops'].sum().max() or 0) / 1e9)} GFLOP dense.</p>")
        parts.append("<h3>Summary: device × plan</h3><p class='note'>Each cell: speedup over dense on the same "
                     "device; latency · energy; weight memory · the bound that dominates. ★ marks the best plan per device.</p>")
        parts.append(summary_html(sm, devs, plans))
        parts.append("<h3>Where time and energy go</h3>" + _img(f["time"]) + _img(f["energy"]))
        parts.append("<h3>Roofline</h3>" + _img(f["roofline"]))
        w = slow[slow["workload"] == wl]
        parts.append("<h3>Why no speedup</h3><p class='note'>Layers whose sparse time is at least "
                     f"{build.NO_SPEEDUP:.0%} of their dense time, counted per device and plan, with the reasons that "
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
        parts.append(_table(build.fallback_matrix(data.per_op, devs, plans)))
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


def front_table(sr: build.SearchResult) -> pd.DataFrame:
    cols = [c for c in ("source", "plan", "accuracy", "latency_s", "speedup_vs_dense", "energy_j", "memory_bytes")
            if c in sr.trials]
    return sr.trials[sr.trials["on_front"].astype(bool)][cols].sort_values("latency_s") if "latency_s" in cols else sr.trials[cols]


def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * float(v):.1f}%"


PCT_FORMATS = {c: _pct for c in ("median_abs_error", "p90_abs_error", "target", "latency_median_abs_error",
                                 "latency_error", "speedup_error", "abs_error")}


def validation_line(v: build.ValidationResult) -> str:
    m = v.meta
    parts = [f"From {v.source}", f"device {m.get('device', '?')} ({m.get('device_source', '')})"]
    if m.get("quick"):
        parts.append("quick grid")
    if m.get("wall_s") is not None:
        parts.append(f"{m['wall_s']} s")
    if m.get("load_average") is not None:
        parts.append(f"load average {m['load_average']:.2f} when it ran")
    return "; ".join(parts) + "."


def gpu_line(v: build.ValidationResult) -> str:
    g = v.gpu_summary
    return (f"{g.get('cases', len(v.gpu))} published cases; median |error| {_pct(g.get('median_abs_error'))}, "
            f"90th percentile {_pct(g.get('p90_abs_error'))}; direction right in {g.get('direction_right', '?')} of "
            f"{g.get('direction_cases', '?')}.")


# ----------------------------------------------------------------------------- Markdown

def _md_table(df: pd.DataFrame, formats: dict[str, Callable[[Any], str]] | None = None) -> str:
    formats = formats or {}

    def cell(c: str, v: Any) -> str:
        if c in formats:
            s = formats[c](v)
        elif isinstance(v, (float, np.floating)):
            s = "–" if not math.isfinite(v) else _sig(float(v))
        else:
            s = "" if v is None else str(v)
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(str(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
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
    })


def render_markdown(data: build.ReportData, figs: dict[str, dict[str, Figure]], verdicts: list[dict[str, Any]],
                    tables: dict[str, pd.DataFrame]) -> str:
    devs, plans = data.device_names, data.plans
    out = ["# sparsesim: which sparsity pattern pays on which hardware", "",
           f"Generated {data.created} by sparsesim {__version__}. Workloads: {', '.join(data.workloads)}; "
           f"devices: {', '.join(devs)}; plans: {', '.join(plans)}."]
    if data.command:
        out += ["", f"Command: `{data.command}`"]
    out += ["", "## Verdict", ""]
    out += [f"- {v['text']}" for v in verdicts]
    out += ["", "## Speedup at a glance", ""]
    out += [f"![{figs[w]['heatmap'].caption}](images/{figs[w]['heatmap'].name})" for w in data.workloads]
    layer_t = build.layer_table(data.per_op)
    slow = layer_t[layer_t["speedup"] < 1.0 / build.NO_SPEEDUP]
    for wl in data.workloads:
        f = figs[wl]
        sm = data.summary[data.summary["workload"] == wl]
        out += ["", f"## {wl}", "", f"### Summary: {wl}", "", _md_table(md_summary(sm), MD_SUMMARY_FORMATS), ""]
        out += [f"![{f['time'].caption}](images/{f['time'].name})", "",
                f"![{f['energy'].caption}](images/{f['energy'].name})", "",
                f"![{f['roofline'].caption}](images/{f['roofline'].name})", ""]
        w = slow[slow["workload"] == wl]
        out += ["### Why no speedup", "", _md_table(why_summary(w, devs, plans)), ""]
        detail = w.sort_values("dense_latency_s", ascending=False).groupby(["device", "plan"], sort=False).head(WHY_ROWS)
        detail = detail.sort_values(["device", "plan", "dense_latency_s"], ascending=[True, True, False])
        cols = {"device": "device", "plan": "plan", "module": "layer", "kernel": "kernel", "bound": "bound",
                "dense_latency_s": "dense", "latency_s": "sparse", "speedup": "speedup", "reasons": "reasons"}
        out += [f"The {WHY_ROWS} biggest such layers per device and plan (all of them in `why_no_speedup.csv`):", "",
                _md_table(detail[list(cols)].rename(columns=cols),
                          {"dense": lambda v: fmt_q(v, "time"), "sparse": lambda v: fmt_q(v, "time"), "speedup": fmt_x}), ""]
        if "serving" in f:
            out += [f"![{f['serving'].caption}](images/{f['serving'].name})", ""]
    if data.searches:
        out += ["## Co-design search", "", _md_table(search_summary(data), SEARCH_FORMATS), ""]
        out += [f"![{x.caption}](images/{x.name})" for x in figs.get("_search", {}).values()]
        for sr in data.searches:
            out += ["", f"### {sr.workload} on {sr.device}: the front", "", _md_table(front_table(sr), SEARCH_FORMATS), "",
                    "Chosen plan:", "",
                    _md_table(pd.DataFrame({"weight": list(sr.patterns), "pattern": list(sr.patterns.values())})), ""]
    if data.validation is not None:
        v = data.validation
        out += ["", "## Fidelity: predicted against measured", "", validation_line(v), "",
                "### Host CPU: error per pattern", "", _md_table(v.errors, PCT_FORMATS), ""]
        if len(v.crossover):
            out += ["### CSR-vs-dense crossover density", "", _md_table(v.crossover), ""]
        if len(v.gpu):
            out += ["### Published GPU figures through the GPU model", "", gpu_line(v), "", _md_table(v.gpu, PCT_FORMATS), ""]
        out += ["Every host case is in `validation.csv`.", ""]
    prov = tables["provenance.csv"]
    fitted = prov[prov["fit_date"].notna()]
    fb = tables["fallbacks.csv"]
    out += ["", "## Provenance and fallbacks", "", "### Devices", "", _md_table(device_table(data.devices)), "",
            "### Fitted parameters", "",
            _md_table(fitted[["device", "field", "value", "si_unit", "fit_date", "fit_error", "source"]]) if len(fitted)
            else "No device in this report carries fitted parameters.", "", "### Fallbacks taken", "",
            _md_table(fb, {"latency_s": lambda v: fmt_q(v, "time")}) if len(fb) else "No op fell back.", "",
            "Every device number with its source is in `provenance.csv`; every op of every run in `layers.csv`.", ""]
    return "\n".join(out)
