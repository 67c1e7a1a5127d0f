"""Predicted vs measured on the host CPU, on shapes the calibration never saw.

A grid of real kernels — shapes x densities x patterns: dense GEMM (per dtype), unstructured
(torch CSR), block (torch BSR, square blocks), channel-pruned (a smaller dense GEMM) — is timed
and each case is predicted through the normal cost path (`estimate_op` with an Op and the
LayerSparsity measured from the very mask that was timed). Reported per case: latency and
speedup over dense, measured and predicted; per pattern: the median and 90th-percentile
|predicted / measured - 1|; per shape: the density where CSR starts beating dense, measured and
predicted. A weight beyond the last-level cache (4096x1024 fp32, 16 MB) at tall-skinny M is held
out too (dense and CSR), where the dense GEMM's weight comes from DRAM. Two shapes are also run at M
that is no multiple of 8 (a batch-1 convolution's output pixels, a decode batch), where a sparse
kernel's vector steps leave columns over; those cases get summary lines of their own too. The published figures shipped with the repo are checked the same way
(`sparsesim.fidelity.gpu_validation.validate_gpu_published`).
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from sparsesim.core.errors import SparsesimError
from sparsesim.cost import estimate_op
from sparsesim.fidelity import measure
from sparsesim.fidelity.calibrate import (
    FIT_BEYOND_LLC_NK,
    FIT_BSR_LEFTOVER_M,
    FIT_BSR_M,
    FIT_CSR_M,
    FIT_DENSE_TAIL_M,
    FIT_INT8_M,
    FIT_M,
    FIT_NK,
    calibrate,
    default_out,
    gemm_op,
    layer_for,
    sparse_pattern,
)
from sparsesim.hw.devices import Device, load_device
from sparsesim.sparsity.shrink import shrink_layer_op

# ---- the VALIDATE set: no N x K and no M in common with calibrate's FIT set ----------------
VALIDATE_NK = ((768, 768), (1536, 384), (384, 1536), (1280, 640))
VALIDATE_M = (8, 32, 96, 192)
VALIDATE_INT8_M = (32, 96, 192)     # torch._int_mm needs M > 16
VALIDATE_DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
VALIDATE_BLOCKS = (4, 8, 16)
VALIDATE_BSR_DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
VALIDATE_CHANNEL_DENSITIES = (0.25, 0.5, 0.75)
# weights beyond the last-level cache, tall-skinny M (dense and CSR only: the crossover there is
# decided by where the dense GEMM's weight comes from)
VALIDATE_BEYOND_LLC_NK = ((4096, 1024),)   # 16 MB fp32
VALIDATE_BEYOND_LLC_M = (2, 8, 12)
# M that is no multiple of 8 (M mod 4 = 2, 1 and 1: 49 is a 7x7 convolution's output), on two of the
# shapes (the whole grid at each M would double validate's time)
VALIDATE_LEFTOVER_NK = ((768, 768), (1280, 640))
VALIDATE_LEFTOVER_M = (6, 13, 49)

QUICK_NK = ((768, 768), (1280, 640))
QUICK_M = (8, 96)
QUICK_DENSITIES = (0.02, 0.1, 0.3, 0.7)
QUICK_BLOCKS = (4, 16)
QUICK_CHANNEL_DENSITIES = (0.5,)
QUICK_BEYOND_LLC_M = (8,)
QUICK_LEFTOVER_NK = ((768, 768),)
QUICK_LEFTOVER_M = (13,)

# the acceptance targets (issue "Fidelity"): median |pred/meas - 1| per pattern on unseen shapes
TARGETS = {"dense": 0.15, "csr": 0.20, "bsr": 0.20}
CROSSOVER_FACTOR = 1.5
# speedup errors are judged at these densities (the range the targets are stated for)
TARGET_DENSITY_RANGE = (0.01, 0.5)
# summary lines of their own for the cases at M that is no multiple of this (the vector width)
LEFTOVER_SUMMARY_M = 8
REPEATS_FULL, REPEATS_QUICK = 9, 3



def fit_overlap() -> set:
    """Shapes or M values validate would share with calibrate's FIT set (must stay empty)."""
    nk = (set(VALIDATE_NK) | set(QUICK_NK) | set(VALIDATE_BEYOND_LLC_NK)) & (set(FIT_NK) | set(FIT_BEYOND_LLC_NK))
    ms = ((set(VALIDATE_M) | set(QUICK_M) | set(VALIDATE_BEYOND_LLC_M) | set(QUICK_BEYOND_LLC_M)
           | set(VALIDATE_LEFTOVER_M) | set(QUICK_LEFTOVER_M))
          & (set(FIT_M) | set(FIT_CSR_M) | set(FIT_BSR_M) | set(FIT_BSR_LEFTOVER_M) | set(FIT_INT8_M)
             | set(FIT_DENSE_TAIL_M)))
    return nk | ms


@dataclass(frozen=True)
class Row:
    """One validated case. `pattern` is dense | csr | bsr | channel; speedups are over the dense
    kernel of the same shape (None for dense rows)."""

    pattern: str
    dtype: str
    m: int
    n: int
    k: int
    density: float
    block: int
    measured_s: float
    predicted_s: float
    measured_speedup: float | None
    predicted_speedup: float | None

    @property
    def latency_error(self) -> float:
        return self.predicted_s / self.measured_s - 1.0

    @property
    def speedup_error(self) -> float | None:
        if self.measured_speedup is None or self.predicted_speedup is None:
            return None
        return self.predicted_speedup / self.measured_speedup - 1.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency_error"] = self.latency_error
        d["speedup_error"] = self.speedup_error
        return d


def host_device(device: str | None, *, quick_fallback: bool = True,
                say: Callable[[str], None] = lambda _m: None) -> tuple[Device, str]:
    """The calibrated host device: a name or path, `host` (`calibrate`'s default output in the user
    config directory) or, when that file does not exist yet, a quick calibration written there
    first (and said so)."""
    if device not in (None, "host"):
        return load_device(device), f"device file {device}"
    out = default_out()
    if out.is_file():
        return load_device(str(out)), f"device file {out}"
    if not quick_fallback:
        raise SparsesimError(f"no host device file at {out}: run `sparsesim calibrate` first")
    say(f"no host device file at {out}: running `sparsesim calibrate --quick` first")
    res = calibrate(None, quick=True)
    return res.device, f"device file {out} (written now by a quick calibration)"


# ----------------------------------------------------------------------------- the grid

def run_grid(device: Device, *, quick: bool, threads: int = 1,
             say: Callable[[str], None] = lambda _m: None) -> list[Row]:
    reps = REPEATS_QUICK if quick else REPEATS_FULL
    nks = QUICK_NK if quick else VALIDATE_NK
    ms = QUICK_M if quick else VALIDATE_M
    dens = QUICK_DENSITIES if quick else VALIDATE_DENSITIES
    bdens = QUICK_DENSITIES if quick else VALIDATE_BSR_DENSITIES
    blocks = QUICK_BLOCKS if quick else VALIDATE_BLOCKS
    cdens = QUICK_CHANNEL_DENSITIES if quick else VALIDATE_CHANNEL_DENSITIES
    dtypes = [dt for dt in ("fp32", "bf16", "int8") if dt in device.params.gemm_efficiency]
    if "bf16" in dtypes and not measure.bf16_supported():
        dtypes.remove("bf16")
    if "int8" in dtypes and not measure.int8_supported():
        dtypes.remove("int8")
    leftover = dict.fromkeys(QUICK_LEFTOVER_NK if quick else VALIDATE_LEFTOVER_NK,
                             QUICK_LEFTOVER_M if quick else VALIDATE_LEFTOVER_M)
    rows: list[Row] = []
    with measure.fixed_threads(threads):
        for si, (n, k) in enumerate(nks):
            say(f"shape {n}x{k}")
            w = measure.random_weight(n, k, seed=100 + si)
            for m in (*ms, *leftover.get((n, k), ())):
                dense_pred = estimate_op(gemm_op(m, n, k), None, device).latency_s
                dense_meas = measure.dense_masked(w, m, repeats=reps).median_s
                rows.append(Row("dense", "fp32", m, n, k, 1.0, 1, dense_meas, dense_pred, None, None))
                for dt in dtypes:
                    if dt == "fp32" or (dt == "int8" and m not in VALIDATE_INT8_M):
                        continue
                    t = measure.dense_linear(m, n, k, dt, repeats=reps).median_s
                    rows.append(Row("dense", dt, m, n, k, 1.0, 1, t,
                                    estimate_op(gemm_op(m, n, k, dt), None, device).latency_s, None, None))
                for d in dens:
                    mask = measure.random_mask(n, k, d, seed=si * 1000 + int(d * 1e4))
                    rows.append(_sparse_row("csr", w, mask, m, d, 1, device, dense_meas, dense_pred, reps))
                for b in blocks:
                    for d in bdens:
                        mask = measure.random_mask(n, k, d, block=(b, b), seed=si * 1000 + b + int(d * 1e4))
                        rows.append(_sparse_row("bsr", w, mask, m, d, b, device, dense_meas, dense_pred, reps))
                for d in cdens:
                    kept = max(1, round(d * n))
                    mask = torch.zeros(n, k)
                    mask[:kept] = 1.0
                    layer = layer_for(mask, sparse_pattern("channel", d), "fp32")
                    t = measure.dense_masked(w[:kept].contiguous(), m, repeats=reps).median_s
                    pred = estimate_op(shrink_layer_op(gemm_op(m, n, k), layer), layer, device).latency_s
                    rows.append(Row("channel", "fp32", m, n, k, kept / n, 1, t, pred, dense_meas / t, dense_pred / pred))
        for si, (n, k) in enumerate(VALIDATE_BEYOND_LLC_NK, start=len(nks)):
            say(f"shape {n}x{k} (weight beyond the last-level cache)")
            w = measure.random_weight(n, k, seed=100 + si)
            for m in QUICK_BEYOND_LLC_M if quick else VALIDATE_BEYOND_LLC_M:
                dense_pred = estimate_op(gemm_op(m, n, k), None, device).latency_s
                dense_meas = measure.dense_masked(w, m, repeats=reps).median_s
                rows.append(Row("dense", "fp32", m, n, k, 1.0, 1, dense_meas, dense_pred, None, None))
                for d in dens:
                    mask = measure.random_mask(n, k, d, seed=si * 1000 + int(d * 1e4))
                    rows.append(_sparse_row("csr", w, mask, m, d, 1, device, dense_meas, dense_pred, reps))
    return rows


def _sparse_row(kind: str, w: torch.Tensor, mask: torch.Tensor, m: int, d: float, b: int, device: Device,
                dense_meas: float, dense_pred: float, reps: int) -> Row:
    n, k = w.shape
    layer = layer_for(mask, sparse_pattern(kind, d, b), "fp32")
    t = measure.sparse_matmul(w * mask, m, kind, block=b, repeats=reps).median_s
    pred = estimate_op(gemm_op(m, n, k), layer, device).latency_s
    return Row(kind, "fp32", m, n, k, d, b, t, pred, dense_meas / t, dense_pred / pred)


# ----------------------------------------------------------------------------- summaries

def _stats(errors: Sequence[float]) -> dict[str, float | int | None]:
    if not errors:
        return {"cases": 0, "median_abs_error": None, "p90_abs_error": None}
    a = np.abs(np.asarray(errors, dtype=float))
    return {"cases": int(a.size), "median_abs_error": float(np.median(a)), "p90_abs_error": float(np.percentile(a, 90))}


def error_summary(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """Per pattern: the error the targets are stated on (dense: latency; csr/bsr/channel:
    speedup over dense at densities 0.01-0.5) plus the latency error of every case."""
    lo, hi = TARGET_DENSITY_RANGE
    out: dict[str, dict[str, Any]] = {}
    groups = [(pat, pat, [r for r in rows if r.pattern == pat]) for pat in ("dense", "csr", "bsr", "channel")]
    groups += [(f"{pat} M%{LEFTOVER_SUMMARY_M}", pat, [r for r in rows if r.pattern == pat and r.m % LEFTOVER_SUMMARY_M])
               for pat in ("dense", "csr", "bsr")]
    for key, pat, sub in groups:
        if not sub:
            continue
        if pat == "dense":
            judged = [r.latency_error for r in sub]
            metric = "latency"
        else:
            judged = [r.speedup_error for r in sub if lo <= r.density <= hi + 1e-9 and r.speedup_error is not None]
            metric = "speedup" + (" (density 0.01-0.5)" if pat in ("csr", "bsr") else "")
        s: dict[str, Any] = {"metric": metric, **_stats(judged), "latency": _stats([r.latency_error for r in sub])}
        target = TARGETS.get(key)
        s["target"] = target
        s["met"] = None if target is None or s["median_abs_error"] is None else bool(s["median_abs_error"] <= target)
        out[key] = s
    return out


def _crossing(densities: Sequence[float], speedups: Sequence[float]) -> float | None:
    """The density where speedup falls through 1 (log-log interpolation); None if never on the grid."""
    pts = sorted(zip(densities, speedups))
    if pts and pts[0][1] < 1.0:
        return pts[0][0]  # slower than dense already at the sparsest point measured
    for (d0, s0), (d1, s1) in itertools.pairwise(pts):
        if s0 >= 1.0 > s1:
            x0, x1, y0, y1 = math.log(d0), math.log(d1), math.log(s0), math.log(s1)
            return math.exp(x0 + (0.0 - y0) * (x1 - x0) / (y1 - y0))
    return None


def crossovers(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per (shape, M): the CSR-vs-dense crossover density, measured and predicted."""
    out = []
    keys = sorted({(r.n, r.k, r.m) for r in rows if r.pattern == "csr"})
    for n, k, m in keys:
        sub = sorted((r for r in rows if r.pattern == "csr" and (r.n, r.k, r.m) == (n, k, m)), key=lambda r: r.density)
        dens = [r.density for r in sub]
        meas = _crossing(dens, [r.measured_speedup for r in sub])  # type: ignore[misc]
        pred = _crossing(dens, [r.predicted_speedup for r in sub])  # type: ignore[misc]
        ratio = pred / meas if meas and pred else None
        ok = ratio is not None and 1 / CROSSOVER_FACTOR <= ratio <= CROSSOVER_FACTOR
        if meas is None and pred is None:
            ok = True  # neither crosses on the grid: agreement
        out.append({"n": n, "k": k, "m": m, "measured": meas, "predicted": pred, "ratio": ratio, "within_target": ok})
    return out


GPU_COLUMNS = ("case", "device", "runtime", "dtype", "workload", "M", "N", "K", "kernel", "pattern", "phase",
               "quantity", "measured", "measured_low", "measured_high", "predicted", "abs_error", "direction", "predicted_direction",
               "direction_right", "kernel_used", "fallback", "source", "conf")


def gpu_published(*, measured: bool = False) -> dict[str, Any]:
    """The published figures (or, `measured`, this project's own GPU measurements from
    benchmarks/gpu_measure.py) through the model (sparsesim.fidelity.gpu_validation), each case with
    its device, runtime, dtype, shape and source, the error summary against the targets and, per
    (device, runtime, kernel, dtype), the median error and the directions right."""
    from sparsesim.fidelity.gpu_validation import (
        HOLDOUT_PREFIX,
        TARGET_MEDIAN,
        TARGET_P90,
        measured_table_path,
        summary,
        validate_gpu_published,
    )

    df = validate_gpu_published(table=measured_table_path() if measured else None)
    groups = []
    # measured rows are fitted to (benchmarks/fit_gpu_measured.py) or held out of every fit
    rows_of = df["case"].astype(str).str.startswith(HOLDOUT_PREFIX).map({True: "holdout", False: "fitted"})
    keyed = df.assign(kernel=df["kernel"].replace("", "(runtime picks)"),
                      rows=rows_of if measured else "published")
    for (device, runtime, kernel, dtype, kind), sub in keyed.groupby(["device", "runtime", "kernel", "dtype", "rows"],
                                                                    sort=True):
        groups.append({"device": device, "runtime": runtime, "kernel": kernel, "dtype": dtype, "rows": kind,
                       **_error_counts(sub)})
    sets = [{"rows": kind, **_error_counts(sub)} for kind, sub in keyed.groupby("rows", sort=True)] if measured else []
    rows = []
    for rec in df.to_dict(orient="records"):
        rows.append({c: _clean(rec.get(c)) for c in GPU_COLUMNS})
    s = summary(df)
    return {"available": True, "title": "measured on this project's GPU runs" if measured else "published figures",
            "reference": "measured" if measured else "published",
            "rows": rows, "groups": groups, "sets": sets, "cases": s["cases"], "with_speedup": s["with_value"],
            "median_abs_error": _clean(s["median_abs_error"]), "p90_abs_error": _clean(s["p90_abs_error"]),
            "direction_right": s["direction_right"], "direction_cases": s["direction_cases"],
            "range_cases": s["range_cases"], "inside_range": s["inside_range"],
            "energy_cases": s["energy_cases"], "energy_within": s["energy_within"],
            "energy_worst_ratio": _clean(s["energy_worst_ratio"]), "energy_factor": s["energy_factor"],
            "target_median": TARGET_MEDIAN, "target_p90": TARGET_P90, "targets_met": s["targets_met"]}


def _error_counts(sub: Any) -> dict[str, Any]:
    """Cases, median |error| and directions right of some rows of the validation frame."""
    directional = sub[sub["direction"] != "-"]
    err = sub["abs_error"].dropna()
    return {"cases": len(sub), "median_abs_error": _clean(err.median()) if len(err) else None,
            "direction_right": int(directional["direction_right"].sum()), "direction_cases": len(directional)}


def _clean(v: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def validate(device: str | None = None, *, quick: bool = False, threads: int = 1,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the validation grid and return the JSON-able document `sparsesim validate` prints."""
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    dev, where = host_device(device, say=say)
    if dev.family != "cpu":
        raise SparsesimError(f"validate --device {device}: family {dev.family!r}; the host grid needs a 'cpu' device")
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = run_grid(dev, quick=quick, threads=threads, say=say)
    summary = error_summary(rows)
    cross = crossovers(rows)
    cross_ok = sum(1 for c in cross if c["within_target"])
    fitted = {k: {"fit_date": p.fit_date, "fit_error": p.fit_error} for k, p in dev.fitted().items()}
    return {
        "device": dev.name,
        "device_source": where,
        "description": dev.description,
        "threads": threads,
        "quick": quick,
        "load_average": load_before,
        "wall_s": round(time.perf_counter() - t0, 2),
        "fitted_fields": len(fitted),
        "summary": summary,
        "crossover": {"cases": cross, "within_target": cross_ok, "total": len(cross), "factor": CROSSOVER_FACTOR},
        "rows": [r.as_dict() for r in rows],
        "gpu_published": gpu_published(),
    }


# ----------------------------------------------------------------------------- text

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.0f}%"


def _apct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _t(s: float) -> str:
    return f"{s * 1e6:.1f}us" if s < 1e-3 else f"{s * 1e3:.2f}ms"


def render(doc: dict[str, Any], *, cases: bool = True) -> str:
    lines = [f"validate: {doc['description']} ({doc['device_source']}), {doc['threads']} thread(s), "
             f"load average {doc['load_average']}, {doc['wall_s']} s"]
    if cases:
        lines.append("")
        lines.append(f"{'pattern':8} {'dtype':5} {'M':>4} {'N':>5} {'K':>5} {'density':>7} {'blk':>3} "
                     f"{'measured':>9} {'predicted':>9} {'err':>6} {'meas x':>7} {'pred x':>7} {'err':>6}")
        for r in doc["rows"]:
            ms, ps = r["measured_speedup"], r["predicted_speedup"]
            lines.append(
                f"{r['pattern']:8} {r['dtype']:5} {r['m']:4d} {r['n']:5d} {r['k']:5d} {r['density']:7.3f} "
                f"{r['block']:3d} {_t(r['measured_s']):>9} {_t(r['predicted_s']):>9} {_pct(r['latency_error']):>6} "
                f"{'-' if ms is None else f'{ms:.2f}':>7} {'-' if ps is None else f'{ps:.2f}':>7} "
                f"{_pct(r['speedup_error']):>6}")
    lines.append("")
    lines.append(f"{'pattern':10} {'judged on':32} {'cases':>5} {'median':>7} {'p90':>7} {'target':>7} {'met':>4}"
                 f"   latency median/p90")
    for pat, s in doc["summary"].items():
        met = "-" if s["met"] is None else ("yes" if s["met"] else "NO")
        lat = s["latency"]
        lines.append(f"{pat:10} {s['metric']:32} {s['cases']:5d} {_apct(s['median_abs_error']):>7} "
                     f"{_apct(s['p90_abs_error']):>7} {_apct(s['target']):>7} {met:>4}   "
                     f"{_apct(lat['median_abs_error'])}/{_apct(lat['p90_abs_error'])}")
    cr = doc["crossover"]
    lines.append("")
    lines.append(f"CSR-vs-dense crossover density (target: predicted within {cr['factor']}x of measured): "
                 f"{cr['within_target']}/{cr['total']} within")
    for c in cr["cases"] if cases else ():
        fm = "none<=0.9" if c["measured"] is None else f"{c['measured']:.3f}"
        fp = "none<=0.9" if c["predicted"] is None else f"{c['predicted']:.3f}"
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}"
        lines.append(f"  {c['n']}x{c['k']} M={c['m']:<4d} measured {fm:>9}  predicted {fp:>9}  ratio {ratio:>5}  "
                     f"{'ok' if c['within_target'] else 'MISS'}")
    lines.append("")
    lines.append(render_published(doc["gpu_published"], cases=cases))
    return "\n".join(lines)


def _shape(r: dict[str, Any]) -> str:
    if r.get("workload"):
        return str(r["workload"])
    return f"{r['M']}x{r['N']}x{r['K']}" + (" training" if r.get("phase") == "training" else "")


def _value(q: str, v: float | None) -> str:
    if v is None:
        return "-"
    if q == "energy":
        return f"{v * 1e3:.3g} mJ"
    if q == "op_rate":
        return f"{v / 1e9:.4g} GOP/s"
    return f"{v:.4g}/s" if q == "throughput" else f"{v:.2f}x"


def _published(r: dict[str, Any]) -> str:
    lo, hi = r.get("measured_low"), r.get("measured_high")
    if lo is not None and hi is not None and lo != hi:
        return f"{_value(r['quantity'], lo)}-{_value(r['quantity'], hi)}"
    return _value(r["quantity"], r["measured"])


def render_published(g: dict[str, Any], *, cases: bool = True) -> str:
    """The published cases as a table (case, device, runtime, dtype, shape, plan, kernel, quantity,
    published, predicted, error, direction) and the summary against the targets."""
    ref = g.get("reference", "published")
    short = {"published": "pub", "measured": "meas"}.get(ref, ref)
    lines = [f"{g.get('title', 'published figures')}: {g['cases']} case(s); speed: {g['with_speedup']} with a "
             f"{ref} value, median |pred/{short} - 1| {_apct(g['median_abs_error'])} "
             f"(target {_apct(g.get('target_median'))}), "
             f"p90 {_apct(g['p90_abs_error'])} (target {_apct(g.get('target_p90'))}); "
             f"direction right {g['direction_right']}/{g['direction_cases']}"
             + (f"; inside the {ref} range {g['inside_range']}/{g['range_cases']}" if g.get("range_cases") else "")
             + (f"; energy within {g['energy_factor']:g}x of the measured figure {g['energy_within']}/"
                f"{g['energy_cases']} (worst {g['energy_worst_ratio']:.2f}x)" if g.get("energy_cases") else "")]
    from sparsesim.core.textfmt import text_table

    for x in g.get("sets", []):
        lines.append(f"  {x['rows']} rows: {x['cases']} case(s), median |pred/{short} - 1| "
                     f"{_apct(x['median_abs_error'])}, direction right {x['direction_right']}/{x['direction_cases']}")
    if g.get("groups") and len(g["groups"]) > 1:
        split = bool(g.get("sets"))
        lines.append(text_table([(x["device"], x["runtime"], x["kernel"], x["dtype"],
                                  *((x.get("rows", ""),) if split else ()), x["cases"],
                                  _apct(x["median_abs_error"]), f"{x['direction_right']}/{x['direction_cases']}")
                                 for x in g["groups"]],
                                ("device", "runtime", "kernel", "dtype", *(("rows",) if split else ()), "cases",
                                 "median |err|", "direction right"),
                                indent="  "))
    if not cases:
        return "\n".join(lines)
    rows = []
    for r in g["rows"]:
        kernel = r.get("kernel") or "(runtime picks)"
        rows.append((str(r["case"])[:48], r["device"], r["runtime"], r["dtype"], _shape(r)[:40], r["pattern"],
                     kernel, r["quantity"], _published(r),
                     _value(r["quantity"], r["predicted"]), _apct(r["abs_error"]), r["direction"],
                     r["predicted_direction"], "yes" if r["direction_right"] else "NO"))
    lines.append(text_table(rows, ("case", "device", "runtime", "dtype", "shape", "plan", "kernel", "quantity",
                                   ref, "predicted", "|err|", "direction", "predicted", "ok"), indent="  "))
    lines.append("  sources:")
    by_source: dict[str, list[str]] = {}
    for r in g["rows"]:  # a measured run's rows share one source, but for their timing spread
        by_source.setdefault(f"{str(r['source']).split('; spread ')[0]} [{r['conf']}]", []).append(str(r["case"]))
    for source, names in by_source.items():
        lines.append(f"    {names[0]}: {source}" if len(names) == 1 else f"    {len(names)} cases: {source}")
    return "\n".join(lines)
