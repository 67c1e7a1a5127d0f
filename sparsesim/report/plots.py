"""Report figures (matplotlib, Agg): each function takes result frames and returns PNG bytes.

Figures are rendered to bytes so the HTML page can embed them as data URIs and the Markdown
page can write them next to itself; nothing here touches the file system.
"""

from __future__ import annotations

import io
import math
import re
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, TwoSlopeNorm  # noqa: E402

from sparsesim.report.peaks import Roof  # noqa: E402

# How many layer groups a stacked bar shows before lumping the rest into "other": more than
# ~10 colours stop being distinguishable in a legend.
TOP_LAYERS = 10
# Figure resolution: a trade between crispness and the size of the self-contained HTML page.
DPI = 90
OTHER = "other"
PLAN_COLORS = plt.get_cmap("tab10").colors
LAYER_COLORS = plt.get_cmap("tab20").colors
# slower than dense red, as fast white, faster green
SPEEDUP_CMAP = LinearSegmentedColormap.from_list("speedup", ["#b2182b", "#f4a582", "#ffffff", "#a6dba0", "#1b7837"])


def png(fig: plt.Figure) -> bytes:
    """Render and close a figure. Layouts are set explicitly by each figure: automatic tight
    layouts measure every tick label again and cost more than the drawing itself."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)
    return buf.getvalue()


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
    """Stacked bars of where time (or energy) goes, per device x plan, relative to dense."""
    stack = layer_stack(per_op, metric, top_n)
    n_dev, n_plan = len(devices), len(plans)
    width = 0.8 / n_plan
    width_in = max(8.0, 0.3 * n_dev * n_plan + 2.0)
    fig, ax = plt.subplots(figsize=(width_in, 4.6))
    fig.subplots_adjust(left=1.0 / width_in, right=0.99, top=0.97, bottom=0.36)
    groups = list(stack.columns)
    colors = {g: ((0.75, 0.75, 0.75) if g == OTHER else LAYER_COLORS[i % len(LAYER_COLORS)]) for i, g in enumerate(groups)}
    for j, plan in enumerate(plans):
        xs = np.arange(n_dev) + (j - (n_plan - 1) / 2) * width
        bottom = np.zeros(n_dev)
        for g in groups:
            vals = np.array([stack[g].get((dev, plan), np.nan) for dev in devices], dtype=float)
            vals = np.nan_to_num(vals)
            ax.bar(xs, vals, width * 0.92, bottom=bottom, color=colors[g], edgecolor="white", linewidth=0.3,
                   label=g if j == 0 else None)
            bottom += vals
        for x, total in zip(xs, bottom):
            if total > 0:
                ax.text(x, total, _short_plan(plan), rotation=90, ha="center", va="bottom", fontsize=6.5, color="#333")
    ax.axhline(1.0, color="#444", linewidth=0.8, linestyle="--")
    ax.set_xticks(np.arange(n_dev))
    ax.set_xticklabels(devices, fontsize=8, rotation=20, ha="right")
    ax.set_ylabel(f"{label} relative to dense\non the same device")
    top = max(1.0, float(np.nanmax(stack.sum(axis=1).to_numpy()))) if len(stack) else 1.0
    ax.set_ylim(0, top * 1.22)
    ax.legend(fontsize=7.5, ncol=min(4, len(groups)), loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def _short_plan(plan: str) -> str:
    return plan.replace("unstructured", "unstr").replace("channel", "chan")


def speedup_heatmap(summary: pd.DataFrame, devices: Sequence[str], plans: Sequence[str], title: str = "") -> bytes:
    """Device x plan speedup over dense on the same device, diverging around 1x (log scale)."""
    grid = np.full((len(devices), len(plans)), np.nan)
    for i, dev in enumerate(devices):
        for j, plan in enumerate(plans):
            row = summary[(summary["device"] == dev) & (summary["plan"] == plan)]
            if len(row):
                grid[i, j] = float(row["speedup_vs_dense"].iloc[0])
    logs = np.log2(np.where(grid > 0, grid, np.nan))
    span = max(0.25, float(np.nanmax(np.abs(logs)))) if np.isfinite(logs).any() else 1.0
    width_in = 0.95 * len(plans) + 2.6
    fig, ax = plt.subplots(figsize=(width_in, 0.36 * len(devices) + 1.4))
    fig.subplots_adjust(left=1.6 / width_in, right=1 - 0.55 / width_in, top=0.9, bottom=0.1)
    im = ax.imshow(logs, cmap=SPEEDUP_CMAP, norm=TwoSlopeNorm(0.0, -span, span), aspect="auto")
    for i in range(len(devices)):
        for j in range(len(plans)):
            v = grid[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}x", ha="center", va="center", fontsize=8.5,
                        color="black" if abs(logs[i, j]) < 0.7 * span else "white")
    ax.set_xticks(range(len(plans)))
    ax.set_xticklabels([_short_plan(p) for p in plans], fontsize=8)
    ax.set_yticks(range(len(devices)))
    ax.set_yticklabels(devices, fontsize=8)
    cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    ticks = [t for t in range(-8, 9) if abs(t) <= span]
    cb.set_ticks(ticks)
    cb.set_ticklabels([f"{2.0 ** t:g}x" for t in ticks])
    cb.ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return png(fig)


MAIN_MEMORY = ("dram", "offchip", "memory", "hbm")


def rooflines(per_op: pd.DataFrame, roofs: Mapping[str, Sequence[Roof]], devices: Sequence[str],
              plans: Sequence[str]) -> bytes:
    """One roofline per device: each op at (executed FLOP per byte, executed FLOP/s), dense and sparse.

    An op with DRAM traffic sits at FLOP per DRAM byte (filled marker); one whose data stays in
    cache has no DRAM intensity and is placed by its traced operand bytes (`op_bytes`, hollow).
    """
    fig, axes = _device_grid(len(devices), panel=(4.4, 3.5), min_width=7.5, extra_height=0.5)
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
        for k, c in enumerate(compute):
            y = np.minimum(c.value, main.value * x) if main else np.full_like(x, c.value)
            ax.plot(x, y, color="#222", linewidth=1.4 if k == 0 else 0.8, linestyle="-" if k == 0 else ":")
            ax.text(x[-1], c.value * 1.08, c.label, fontsize=6.5, va="bottom", ha="right", color="#222")
        top = compute[0].value if compute else None
        for m in memory:
            if m is main and compute:
                continue
            y = np.minimum(m.value * x, top) if top else m.value * x
            ax.plot(x, y, color="#1f5fa8", linewidth=0.8, linestyle="--")
        for m in memory:
            xm = x[12]
            ax.text(xm, m.value * xm * 1.15, f"{m.label} {m.value / 1e9:.4g} GB/s", fontsize=6, color="#1f5fa8",
                    va="bottom")
        for plan in plans:
            sel = (d["plan"] == plan).to_numpy()
            if not sel.any():
                continue
            marker = "o" if plan == "dense" else "^"
            for hollow in (False, True):
                s = sel & (in_cache == hollow)
                if s.any():
                    ax.scatter(ai[s], perf[s], s=16 if plan == "dense" else 12, marker=marker,
                               facecolors="none" if hollow else colors[plan], edgecolors=colors[plan],
                               linewidths=0.8 if hollow else 0, alpha=0.8 if plan == "dense" else 0.6,
                               label=plan if not hollow or not (sel & ~in_cache).any() else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        if len(perf) and compute:
            ax.set_ylim(min(float(perf.min()) / 3, compute[-1].value / 10), compute[0].value * 3)
        ax.set_title(dev, fontsize=9)
        ax.set_xlabel("FLOP per byte", fontsize=7)
        ax.set_ylabel("achieved FLOP/s", fontsize=7)
        ax.tick_params(labelsize=6.5)
        ax.grid(alpha=0.25, which="major")
    handles, labels = [], []
    for ax in axes.flat[:len(devices)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    return png(fig)


def _device_grid(n: int, *, panel: tuple[float, float], min_width: float, extra_height: float):
    """A grid of up to three small log-log panels a row, one per device, with margins for a
    shared legend at the bottom; unused panels hidden."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(panel[0] * cols, min_width), panel[1] * rows + extra_height),
                             squeeze=False)
    h = fig.get_figheight()
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - 0.3 / h, bottom=0.85 / h, wspace=0.28,
                        hspace=0.55 if rows > 1 else 0.2)
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
        ax.set_xlabel("offered load (requests/s); dotted: saturation", fontsize=7)
        ax.set_ylabel("latency (ms)", fontsize=7)
        ax.set_yscale("log")
        ax.tick_params(labelsize=6.5)
        ax.grid(alpha=0.25)
        ax.legend(fontsize=6, frameon=False)
    return png(fig)


def pareto_front(points: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, title: str,
                 chosen: Mapping[str, float] | None = None, baselines: pd.DataFrame | None = None) -> bytes:
    """Accuracy against a cost: every trial, the front highlighted, uniform baselines and the chosen plan."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    fig.subplots_adjust(left=0.14, right=0.97, top=0.9, bottom=0.14)
    if "on_front" in points:
        rest, front = points[~points["on_front"].astype(bool)], points[points["on_front"].astype(bool)]
    else:
        rest, front = points.iloc[0:0], points
    if len(rest):
        ax.scatter(rest[x], rest[y], s=10, color="#bbb", label="trial", linewidths=0)
    f = front.sort_values(x)
    ax.plot(f[x], f[y], marker="o", markersize=4, color="#d62728", label="Pareto front")
    if baselines is not None and len(baselines):
        ax.scatter(baselines[x], baselines[y], marker="s", s=18, color="#1f77b4", label="uniform plans", zorder=4)
        if "plan" in baselines:
            for bx, by, label in zip(baselines[x], baselines[y], baselines["plan"]):
                ax.annotate(str(label), (bx, by), fontsize=5.5, color="#1f4f84", xytext=(3, -7),
                            textcoords="offset points")
    if chosen and x in chosen and y in chosen:
        ax.scatter([chosen[x]], [chosen[y]], s=90, marker="*", color="#2ca02c", zorder=5, label="chosen plan")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, frameon=False)
    return png(fig)
