"""Every figure of a report, rendered to PNG bytes once and shared by the HTML and Markdown pages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sparsesim.report.build as build
import sparsesim.report.plots as plots
from sparsesim.cost.roofline import device_roofs
from sparsesim.report.fmt import slug


@dataclass
class Figure:
    name: str  # file name under images/
    caption: str
    data: bytes


def make_figures(data: build.ReportData, progress: Callable[[int], Any] | None = None) -> dict[str, dict[str, Figure]]:
    """All figures, keyed by workload (and "_search" for fronts)."""
    figs: dict[str, dict[str, Figure]] = {}
    span = plots.speedup_span(data.summary)  # one colour scale for every workload's heatmap
    for wl in data.workloads:
        figs[wl] = _workload_figures(data, wl, span)
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


def _workload_figures(data: build.ReportData, wl: str, span: float) -> dict[str, Figure]:
    """One workload's figures: drawn, or read back from the disk cache when the frames, devices
    and plans they are drawn from are unchanged (drawing is most of a warm report's time)."""
    from sparsesim.core import diskcache

    po = data.per_op[data.per_op["workload"] == wl]
    sm = data.summary[data.summary["workload"] == wl]
    sv = data.serving[data.serving["workload"] == wl] if data.serving is not None and len(data.serving) else None
    tr = data.training[data.training["workload"] == wl] if data.training is not None and len(data.training) else None
    key = diskcache.key(
        "figures", wl, tuple(d.key for d in data.devices), tuple(data.device_names), tuple(data.plans), span,
        build.frame_part(po), build.frame_part(sm), build.frame_part(sv), build.frame_part(tr),
        repr(sorted(data.dtypes.get(wl, ()))), repr(sorted(data.op_bytes.get(wl, {}).items())),
    ) if diskcache.enabled() else None
    return diskcache.remembered("figures", key, lambda: _draw(data, wl, span, po, sm, sv, tr),
                                lambda v: isinstance(v, dict))


def _draw(data: build.ReportData, wl: str, span: float, po: Any, sm: Any, sv: Any, tr: Any) -> dict[str, Figure]:
    devs, plans = data.device_names, data.plans
    roofs = {d.name: device_roofs(d, data.dtypes.get(wl) or None) for d in data.devices}
    s = slug(wl)
    f = {
        "heatmap": Figure(f"{s}-speedup.png", f"{wl}: speedup over dense on the same device",
                          plots.speedup_heatmap(sm, devs, plans, title=wl, span=span)),
        "time": Figure(f"{s}-time-by-layer.png", f"{wl}: where the time goes (top layers, relative to dense)",
                       plots.stacked_layers(po, "latency_s", "time", devs, plans)),
        "energy": Figure(f"{s}-energy-by-layer.png", f"{wl}: where the energy goes (top layers, relative to dense)",
                         plots.stacked_layers(po, "energy_j", "energy", devs, plans)),
        "roofline": Figure(f"{s}-roofline.png", f"{wl}: every op on each device's roofline (markers and roofs in the legends)",
                           plots.rooflines(po.assign(op_bytes=po["op_index"].map(data.op_bytes.get(wl, {}))),
                                           roofs, devs, plans)),
    }
    if sv is not None and len(sv):
        f["serving"] = Figure(f"{s}-serving.png", f"{wl}: latency against offered load (dense and best plan)",
                              plots.serving_curves(sv, [d for d in devs if d in set(sv["device"])],
                                                   [p for p in plans if p in set(sv["plan"])]))
    if tr is not None and len(tr):
        f["training"] = Figure(f"{s}-training.png", f"{wl}: whole training run, time per device and method; "
                               "peak memory per method by component",
                               plots.training_bars(tr, [d for d in devs if d in set(tr["device"])],
                                                   list(dict.fromkeys(tr["method"]))))
    return f
