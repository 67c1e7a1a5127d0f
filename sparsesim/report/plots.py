"""Report figures (matplotlib, Agg): each function takes result frames and returns PNG bytes.

Figures are rendered to bytes so the HTML page can embed them as data URIs and the Markdown
page can write them next to itself; nothing here touches the file system. Each figure is a
`matplotlib.figure.Figure` of its own (no pyplot global state), so figures can be drawn from
several threads or processes and none leaks.
"""

from __future__ import annotations

import io
import math
import re
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LinearSegmentedColormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sparsesim.cost.roofline import Roof

# How many layer groups a stacked bar shows before lumping the rest into "other": more than
# ~10 colours stop being distinguishable in a legend.
TOP_LAYERS = 10
# Figure resolution: a trade between crispness and the size of the self-contained HTML page.
DPI = 90
OTHER = "other"
PLAN_COLORS = colormaps["tab10"].colors  # type: ignore[attr-defined]
# tab20 without its two greys, which are kept for "other"
LAYER_COLORS = tuple(c for i, c in enumerate(colormaps["tab20"].colors) if i not in (14, 15))  # type: ignore[attr-defined]
OTHER_COLOR = (0.75, 0.75, 0.75)
# smallest text on a figure, in points (at DPI 90 about 10 px: readable in a browser at 100%)
MIN_FONT = 8
# slower than dense red, as fast white, faster green
SPEEDUP_CMAP = LinearSegmentedColormap.from_list("speedup", ["#b2182b", "#f4a582", "#ffffff", "#a6dba0", "#1b7837"])


def png(fig: Figure) -> bytes:
    """Render a figure. Layouts are set explicitly by each figure: automatic tight layouts
    measure every tick label again and cost more than the drawing itself."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def layer_colors(groups: Sequence[str]) -> dict[str, tuple]:
    """A colour per layer group that depends on the group's name only (a hash into the palette),
    so a layer keeps its colour across workloads and figures; two groups of one figure that hash
    alike take the next free colours, in name order."""
    out: dict[str, tuple] = {}
    used: set[int] = set()
    for g in sorted(groups, key=lambda g: (zlib.crc32(g.encode()) % len(LAYER_COLORS), g)):
        if g == OTHER:
            out[g] = OTHER_COLOR
            continue
        i = zlib.crc32(g.encode()) % len(LAYER_COLORS)
        while i in used and len(used) < len(LAYER_COLORS):
            i = (i + 1) % len(LAYER_COLORS)
        used.add(i)
        out[g] = LAYER_COLORS[i]
    return out


def plan_colors(plans: Sequence[str]) -> dict[str, tuple]:
    return {p: PLAN_COLORS[i % len(PLAN_COLORS)] for i, p in enumerate(plans)}


_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)")


def layer_group(module: str, kind: str, weighted: bool = True) -> str:
    """Group repeated blocks (`layers.3.mlp` -> `layers.*.mlp`) so a 32-layer model stacks readably;
    weightless ops (activations, norms, adds) go into one group per kind."""
    if not weighted:
        return f"all {kind} ops"
    name = _INDEX.sub("*", module or "")
    return f"{name} ({kind})" if name else f"({kind})"


def layer_stack(per_op: pd.DataFrame, metric: str, top_n: int = TOP_LAYERS) -> pd.DataFrame:
    """Rows (device, plan), columns top-N layer groups + other: `metric` relative to dense on the device."""
    weighted = per_op["weight"].fillna("").astype(str) != ""
    df = per_op.assign(group=[layer_group(m, k, w) for m, k, w in zip(per_op["module"], per_op["kind"], weighted)])
    table = df.groupby(["device", "plan", "group"], sort=False)[metric].sum().unstack("group", fill_value=0.0)
    dense = df[df["plan"] == "dense"].groupby("device", sort=False)[metric].sum()
    denom = np.array([dense.get(dev, np.nan) for dev, _ in table.index])
    rel = table.div(denom, axis=0)
    # rank groups by their mean share of the dense total across devices
    share = rel.xs("dense", level="plan").mean() if "dense" in rel.index.get_level_values("plan") else rel.mean()
    top = list(share.sort_values(ascending=False).index[:top_n])
    rest = [c for c in rel.columns if c not in top]
    out = rel[top].copy()
    if rest:
        out[OTHER] = rel[rest].sum(axis=1)
    return out


def stacked_layers(per_op: pd.DataFrame, metric: str, label: str, devices: Sequence[str],
                   plans: Sequence[str], top_n: int = TOP_LAYERS) -> bytes:
    """Stacked bars of where time (or energy) goes, per device x plan, relative to dense. Each
    bar is labelled with its plan under the axis (readable size); devices label the groups."""
    stack = layer_stack(per_op, metric, top_n)
    n_dev, n_plan = len(devices), len(plans)
    width = 0.8 / n_plan
    width_in = max(8.0, 0.32 * n_dev * n_plan + 2.0)
    fig = Figure(figsize=(width_in, 5.6))
    ax = fig.subplots()
    fig.subplots_adjust(left=1.0 / width_in, right=0.99, top=0.97, bottom=0.47)
    groups = list(stack.columns)
    colors = layer_colors(groups)
    bar_x, bar_label = [], []
    for j, plan in enumerate(plans):
        xs = np.arange(n_dev) + (j - (n_plan - 1) / 2) * width
        bottom = np.zeros(n_dev)
        for g in groups:
            vals = np.array([stack[g].get((dev, plan), np.nan) for dev in devices], dtype=float)
            vals = np.nan_to_num(vals)
            ax.bar(xs, vals, width * 0.92, bottom=bottom, color=colors[g], edgecolor="white", linewidth=0.3,
                   label=g if j == 0 else None)
            bottom += vals
        bar_x += list(xs)
        bar_label += [_short_plan(plan)] * n_dev
    ax.axhline(1.0, color="#444", linewidth=0.8, linestyle="--")
    ax.xaxis.remove_overlapping_locs = False  # the middle bar's label sits at the device's tick
    ax.set_xticks(bar_x, minor=True)
    ax.set_xticklabels(bar_label, minor=True, rotation=90, fontsize=MIN_FONT)
    ax.set_xticks(np.arange(n_dev))
    ax.set_xticklabels(devices, fontsize=9)
    longest = max((len(b) for b in bar_label), default=4)
    ax.tick_params(axis="x", which="major", length=0, pad=6 + 5.2 * longest)
    ax.set_ylabel(f"{label} relative to dense\non the same device", fontsize=9)
    ax.tick_params(axis="y", labelsize=MIN_FONT)
    top = max(1.0, float(np.nanmax(stack.sum(axis=1).to_numpy()))) if len(stack) else 1.0
    ax.set_ylim(0, top * 1.08)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=MIN_FONT, ncol=min(3, len(groups)), loc="lower center",
               bbox_to_anchor=(0.5, 0.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def _short_plan(plan: str) -> str:
    return plan.replace("unstructured", "unstr").replace("channel", "chan")


def speedup_span(summary: pd.DataFrame) -> float:
    """Half-width (log2) of the one speedup colour scale every heatmap of a report shares, so a
    colour means the same speedup in every figure: the largest |log2 speedup| in the results."""
    sp = summary["speedup_vs_dense"].astype(float).to_numpy() if len(summary) else np.array([])
    sp = sp[np.isfinite(sp) & (sp > 0)]
    return max(0.25, float(np.abs(np.log2(sp)).max())) if len(sp) else 1.0


def speedup_heatmap(summary: pd.DataFrame, devices: Sequence[str], plans: Sequence[str], title: str = "",
                    span: float | None = None) -> bytes:
    """Device x plan speedup over dense on the same device, diverging around 1x (log scale);
    `span` (see `speedup_span`) fixes the colour scale so figures can share it."""
    grid = np.full((len(devices), len(plans)), np.nan)
    for i, dev in enumerate(devices):
        for j, plan in enumerate(plans):
            row = summary[(summary["device"] == dev) & (summary["plan"] == plan)]
            if len(row):
                grid[i, j] = float(row["speedup_vs_dense"].iloc[0])
    logs = np.log2(np.where(grid > 0, grid, np.nan))
    if span is None:
        span = max(0.25, float(np.nanmax(np.abs(logs)))) if np.isfinite(logs).any() else 1.0
    width_in = 0.95 * len(plans) + 2.6
    fig = Figure(figsize=(width_in, 0.36 * len(devices) + 1.4))
    ax = fig.subplots()
    fig.subplots_adjust(left=1.6 / width_in, right=1 - 0.55 / width_in, top=0.9, bottom=0.1)
    im = ax.imshow(logs, cmap=SPEEDUP_CMAP, norm=TwoSlopeNorm(0.0, -span, span), aspect="auto")
    for i in range(len(devices)):
        for j in range(len(plans)):
            v = grid[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}x", ha="center", va="center", fontsize=8.5,
                        color="black" if abs(logs[i, j]) < 0.7 * span else "white")
    ax.set_xticks(range(len(plans)))
    ax.set_xticklabels([_short_plan(p) for p in plans], fontsize=MIN_FONT)
    ax.set_yticks(range(len(devices)))
    ax.set_yticklabels(devices, fontsize=MIN_FONT)
    cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    ticks = [t for t in range(-8, 9) if abs(t) <= span] or [0]
    cb.set_ticks(ticks)
    cb.set_ticklabels([f"{2.0 ** t:g}x" for t in ticks])
    cb.ax.tick_params(labelsize=MIN_FONT)
    if title:
        ax.set_title(title, fontsize=10)
    return png(fig)


MAIN_MEMORY = ("dram", "offchip", "memory", "hbm")


def rooflines(per_op: pd.DataFrame, roofs: Mapping[str, Sequence[Roof]], devices: Sequence[str],
              plans: Sequence[str]) -> bytes:
    """One roofline per device: each op at (executed FLOP per byte, executed FLOP/s), dense and sparse.

    An op with DRAM traffic sits at FLOP per DRAM byte (filled marker); one whose data stays in
    cache has no DRAM intensity and is placed by its traced operand bytes (`op_bytes`, hollow).
    The roofs are named in a legend under each panel (never on top of the points); the marker
    shapes, fills and plan colours in one legend under the figure.
    """
    fig, axes = _device_grid(len(devices), panel=(4.4, 4.3), min_width=7.5, extra_height=0.9, hspace=0.95)
    colors = plan_colors(plans)
    for ax, dev in zip(axes.flat, devices):
        d = per_op[(per_op["device"] == dev) & (per_op["flops_executed"] > 0) & (per_op["latency_s"] > 0)]
        dram = d["bytes_dram"].to_numpy(dtype=float)
        operand = d["op_bytes"].to_numpy(dtype=float) if "op_bytes" in d else np.zeros(len(d))
        in_cache = dram <= 0
        denom = np.where(in_cache, operand, dram)
        ok = denom > 0
        d, in_cache, denom = d[ok], in_cache[ok], denom[ok]
        ai = d["flops_executed"].to_numpy(dtype=float) / denom
        perf = d["flops_executed"].to_numpy(dtype=float) / d["latency_s"].to_numpy(dtype=float)
        compute = sorted((r for r in roofs.get(dev, ()) if r.kind == "compute"), key=lambda r: -r.value)
        memory = [r for r in roofs.get(dev, ()) if r.kind == "memory"]
        main = next((m for m in memory if any(k in m.label.lower() for k in MAIN_MEMORY)), None)
        main = main or (max(memory, key=lambda r: r.value) if memory else None)
        lo_x = float(ai.min()) / 3 if len(ai) else 1e-1
        hi_x = float(ai.max()) * 3 if len(ai) else 1e4
        if compute and main:
            ridge = compute[0].value / main.value
            lo_x, hi_x = min(lo_x, ridge / 100), max(hi_x, ridge * 10)
        x = np.logspace(math.log10(max(lo_x, 1e-4)), math.log10(hi_x), 200)
        roof_handles = []
        for k, c in enumerate(compute):
            y = np.minimum(c.value, main.value * x) if main else np.full_like(x, c.value)
            label = c.label + (f" (with {main.label} {main.value / 1e9:.4g} GB/s)" if main and k == 0 else "")
            roof_handles += ax.plot(x, y, color="#222", linewidth=1.4 if k == 0 else 0.8,
                                    linestyle="-" if k == 0 else ":", label=label)
        top = compute[0].value if compute else None
        for m in memory:
            if m is main and compute:
                continue
            y = np.minimum(m.value * x, top) if top else m.value * x
            roof_handles += ax.plot(x, y, color="#1f5fa8", linewidth=0.8, linestyle="--",
                                    label=f"{m.label} {m.value / 1e9:.4g} GB/s")
        for plan in plans:
            sel = (d["plan"] == plan).to_numpy()
            if not sel.any():
                continue
            marker = "o" if plan == "dense" else "^"
            for hollow in (False, True):
                s = sel & (in_cache == hollow)
                if s.any():
                    px, py = distinct_points(ai[s], perf[s])
                    ax.scatter(px, py, s=16 if plan == "dense" else 12, marker=marker,
                               facecolors="none" if hollow else colors[plan], edgecolors=colors[plan],
                               linewidths=0.8 if hollow else 0, alpha=0.8 if plan == "dense" else 0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.minorticks_off()  # the grid is drawn at the decades; thousands of minor ticks cost seconds
        if len(perf) and compute:
            ax.set_ylim(min(float(perf.min()) / 3, compute[-1].value / 10), compute[0].value * 3)
        ax.set_title(dev, fontsize=9)
        ax.set_xlabel("FLOP per byte", fontsize=MIN_FONT)
        ax.set_ylabel("achieved FLOP/s", fontsize=MIN_FONT)
        ax.tick_params(labelsize=MIN_FONT)
        ax.grid(alpha=0.25, which="major")
        if roof_handles:
            ax.legend(handles=roof_handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7,
                      frameon=False, ncol=1)
    fig.legend(handles=_marker_legend(plans, colors), loc="lower center", ncol=min(4, len(plans) + 3),
               fontsize=MIN_FONT, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return png(fig)


def distinct_points(x: np.ndarray, y: np.ndarray, digits: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The points of a log-log scatter that differ at `digits` decimals of their logarithms (0.1 %
    of a decade at 3: no visible difference); a model's repeated layers draw one marker each."""
    if len(x) < 2:
        return x, y
    keys = np.unique(np.round(np.log10(np.c_[x, y]), digits), axis=0)
    return 10.0 ** keys[:, 0], 10.0 ** keys[:, 1]


def _marker_legend(plans: Sequence[str], colors: Mapping[str, tuple]) -> list[Line2D]:
    """Legend entries for what the roofline markers mean: shape (dense or sparse), fill (DRAM
    traffic or cache-resident) and colour (plan)."""
    out = [Line2D([], [], marker="o", linestyle="", color="#555", label="dense op"),
           Line2D([], [], marker="^", linestyle="", color="#555", label="sparse-plan op"),
           Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="#555",
                  label="hollow: no DRAM traffic (by operand bytes)")]
    out += [Line2D([], [], marker="s", linestyle="", color=colors[p], label=p) for p in plans]
    return out


def _device_grid(n: int, *, panel: tuple[float, float], min_width: float, extra_height: float,
                 hspace: float = 0.55):
    """A grid of up to three small log-log panels a row, one per device, with margins for a
    shared legend at the bottom; unused panels hidden."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(max(panel[0] * cols, min_width), panel[1] * rows + extra_height))
    axes = fig.subplots(rows, cols, squeeze=False)
    h = fig.get_figheight()
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - 0.3 / h, bottom=(0.85 + extra_height) / h, wspace=0.28,
                        hspace=hspace if rows > 1 else 0.2)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def serving_curves(serving: pd.DataFrame, devices: Sequence[str], plans: Sequence[str]) -> bytes:
    """p50 / p99 latency against offered load, per device, for the plans simulated."""
    fig, axes = _device_grid(len(devices), panel=(4.2, 3.0), min_width=6.0, extra_height=0.4)
    colors = plan_colors(plans)
    for ax, dev in zip(axes.flat, devices):
        d = serving[serving["device"] == dev]
        for plan in plans:
            p = d[d["plan"] == plan].sort_values("qps")
            if not len(p):
                continue
            ax.plot(p["qps"], p["p50_s"] * 1e3, marker="o", markersize=3, color=colors[plan], label=f"{plan} p50")
            ax.plot(p["qps"], p["p99_s"] * 1e3, marker="^", markersize=3, linestyle="--", color=colors[plan],
                    label=f"{plan} p99")
            if "saturation_qps" in p:
                ax.axvline(float(p["saturation_qps"].iloc[0]), color=colors[plan], linestyle=":", linewidth=0.9)
        ax.set_title(dev, fontsize=9)
        ax.set_xlabel("offered load (requests/s); dotted: saturation", fontsize=MIN_FONT)
        ax.set_ylabel("latency (ms)", fontsize=MIN_FONT)
        ax.set_yscale("log")
        ax.tick_params(labelsize=MIN_FONT)
        ax.grid(alpha=0.25)
        ax.legend(fontsize=7, frameon=False)
    return png(fig)


def front_2d(points: pd.DataFrame, x: str, y: str) -> pd.Series:
    """Whether each point is on the Pareto front of these two objectives only (x lower is
    better, y higher is better): no other point is at least as good on both and better on one."""
    xs, ys = points[x].to_numpy(dtype=float), points[y].to_numpy(dtype=float)
    on = np.ones(len(points), dtype=bool)
    for i in range(len(points)):
        better = (xs <= xs[i]) & (ys >= ys[i]) & ((xs < xs[i]) | (ys > ys[i]))
        on[i] = np.isfinite(xs[i]) and np.isfinite(ys[i]) and not better.any()
    return pd.Series(on, index=points.index)


def pareto_front(points: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, title: str,
                 chosen: Mapping[str, float] | None = None, baselines: pd.DataFrame | None = None) -> bytes:
    """Accuracy against one cost: every trial, the front of these two objectives highlighted (a
    point dominated here is grey, whatever the other objectives say), uniform baselines and the
    chosen plan. Points carry no text (it would be cut at the edges); the tables name them."""
    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.14, right=0.97, top=0.9, bottom=0.14)
    pts = points[points[x].notna() & points[y].notna()]
    on = front_2d(pts, x, y) if len(pts) else pd.Series(dtype=bool)
    rest, front = pts[~on], pts[on]
    if len(rest):
        ax.scatter(rest[x], rest[y], s=10, color="#bbb", label="dominated plan", linewidths=0)
    f = front.sort_values(x)
    ax.plot(f[x], f[y], marker="o", markersize=4, color="#d62728", label=f"Pareto front ({ylabel} vs {xlabel.split(' (')[0]})")
    if baselines is not None and len(baselines):
        ax.scatter(baselines[x], baselines[y], marker="s", s=18, color="#1f77b4", label="uniform plans", zorder=4)
    if chosen and x in chosen and y in chosen:
        ax.scatter([chosen[x]], [chosen[y]], s=90, marker="*", color="#2ca02c", zorder=5, label="chosen plan")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=MIN_FONT)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=MIN_FONT, frameon=False)
    return png(fig)


def training_bars(training: pd.DataFrame, devices: Sequence[str], methods: Sequence[str]) -> bytes:
    """Whole-run training time per device and method (log scale), and peak memory per method
    stacked by component (weights, optimizer, activations, ...; the same on every device)."""
    from sparsesim.train.memory import COMPONENTS

    fig = Figure(figsize=(11.5, 3.9))
    ax_t, ax_m = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    fig.subplots_adjust(left=0.07, right=0.99, top=0.9, bottom=0.3, wspace=0.28)
    colors = plan_colors(methods)
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(devices))
    lowest = math.inf
    for i, m in enumerate(methods):
        d = training[training["method"] == m].set_index("device")
        vals = [float(d["time_s"].get(dev, np.nan)) / 3600.0 for dev in devices]
        lowest = min([lowest] + [v for v in vals if v > 0])
        ax_t.bar(x + (i - (len(methods) - 1) / 2) * width, vals, width, color=colors[m], label=m)
    ax_t.set_yscale("log")
    if math.isfinite(lowest):  # log bars need a floor below the shortest one
        ax_t.set_ylim(bottom=10 ** math.floor(math.log10(lowest)))
    ax_t.set_xticks(x)
    ax_t.set_xticklabels(devices, rotation=25, ha="right", fontsize=MIN_FONT)
    ax_t.set_ylabel("time of the whole run (hours)", fontsize=MIN_FONT)
    ax_t.set_title("training time per device", fontsize=9)
    ax_t.tick_params(labelsize=MIN_FONT)
    ax_t.grid(axis="y", alpha=0.25)
    ax_t.legend(fontsize=MIN_FONT, frameon=False, ncol=min(len(methods), 5))
    first = training.drop_duplicates("method").set_index("method")
    bottom = np.zeros(len(methods))
    comp_colors = LAYER_COLORS
    for j, c in enumerate(COMPONENTS):
        gb = np.array([float(first[f"memory_{c}_bytes"].get(m, 0.0)) / 1e9 for m in methods])
        if not gb.any():
            continue
        ax_m.bar(np.arange(len(methods)), gb, 0.6, bottom=bottom, color=comp_colors[(2 * j) % len(comp_colors)],
                 label=c)
        bottom += gb
    ax_m.set_xticks(np.arange(len(methods)))
    ax_m.set_xticklabels(methods, rotation=25, ha="right", fontsize=MIN_FONT)
    ax_m.set_ylabel("peak memory (GB)", fontsize=MIN_FONT)
    ax_m.set_title("peak memory per method (any device)", fontsize=9)
    ax_m.tick_params(labelsize=MIN_FONT)
    ax_m.grid(axis="y", alpha=0.25)
    ax_m.legend(fontsize=MIN_FONT, loc="lower right", ncol=2, framealpha=0.85)
    return png(fig)
